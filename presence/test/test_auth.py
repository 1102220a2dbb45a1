"""Login tokens: the verifier, the presence-token tool, and logins with tokens.

The protocol-level tests run the real front end (L{LineFactory}) on a L{task.Clock} with
L{StringTransport}s: no sockets, no sleeps.
"""

from __future__ import annotations

import contextlib
import io
import time
from pathlib import Path
from typing import Any

import jwt
import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from presence.cli import token as token_cli
from presence.server.config import Config
from presence.server.lines import LineFactory, LineProtocol
from presence.test.support import line_factory
from presence.wire.errors import ErrorCode, ProtocolError
from presence.wire.tokens import LEEWAY, TokenVerifier, make_token, read_secret

# 64 bytes: long enough that PyJWT does not warn even for HS512.
SECRET = b"0123456789abcdef" * 3 + b"test-secret-0000"
OTHER = b"fedcba9876543210" * 3 + b"other-secret-000"


def b64(data: bytes) -> str:
    import base64

    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(claims: dict[str, Any], header: dict[str, Any]) -> str:
    """A hand-made JWT with the given header and an empty signature."""
    return f"{b64(orjson.dumps(header))}.{b64(orjson.dumps(claims))}."


class VerifierTests(SynchronousTestCase):
    """L{TokenVerifier.verify}: the claim, or error 10, and nothing else."""

    def setUp(self) -> None:
        self.verifier = TokenVerifier(SECRET)

    def refused(self, token: object, uid: int = 1) -> ProtocolError:
        error = self.assertRaises(ProtocolError, self.verifier.verify, token, uid)
        self.assertEqual(error.code, ErrorCode.AUTHENTICATION_FAILED)
        return error

    def test_good_token(self) -> None:
        """A token signed with the secret, for this user, is accepted; no claim."""
        self.assertIsNone(self.verifier.verify(make_token(SECRET, 1), 1))

    def test_missing(self) -> None:
        """No token, an empty one, or a token that is not a string: error 10."""
        for token in (None, "", 42, ["a.b.c"], {"sub": "1"}, True):
            self.refused(token)

    def test_malformed(self) -> None:
        """Text that is not a JWT is refused with error 10."""
        for token in ("x", "a.b", "a.b.c", "...", "é.é.é", "\x00", "a" * 10_000,
                      make_token(SECRET, 1) + "x", make_token(SECRET, 1)[1:]):
            self.refused(token)

    def test_wrong_signature(self) -> None:
        """A token signed with another secret is refused."""
        self.refused(make_token(OTHER, 1))

    def test_tampered_claims(self) -> None:
        """Changing the claims of a signed token breaks its signature."""
        header, _, signature = make_token(SECRET, 2).split(".")
        forged = b64(orjson.dumps({"sub": "1"}))
        self.refused(f"{header}.{forged}.{signature}")

    def test_alg_none(self) -> None:
        """An unsigned token (alg none, in any spelling) is refused."""
        for alg in ("none", "None", "NONE", ""):
            self.refused(unsigned({"sub": "1"}, {"alg": alg, "typ": "JWT"}))

    def test_other_hmac_alg(self) -> None:
        """HS384 and HS512, even signed with the right secret, are refused."""
        for alg in ("HS384", "HS512"):
            token = jwt.encode({"sub": "1"}, SECRET, algorithm=alg)
            self.assertIn("InvalidAlgorithm", self.refused(token).detail)

    def test_rs256(self) -> None:
        """An RS256 token is refused, whoever's key signed it."""
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        self.refused(jwt.encode({"sub": "1"}, pem, algorithm="RS256"))

    def test_expired_beyond_leeway(self) -> None:
        """A token past its exp by more than the leeway is refused as expired."""
        token = make_token(SECRET, 1, ttl=10, now=time.time() - 10 - LEEWAY - 60)
        self.assertIn("expired", self.refused(token).detail)

    def test_expired_within_leeway(self) -> None:
        """A token past its exp by less than the 60 s leeway is accepted."""
        token = make_token(SECRET, 1, ttl=10, now=time.time() - 10 - LEEWAY / 2)
        self.assertIsNone(self.verifier.verify(token, 1))

    def test_not_yet_expired(self) -> None:
        """A token with exp in the future is accepted."""
        self.assertIsNone(self.verifier.verify(make_token(SECRET, 1, ttl=3600), 1))

    def test_bad_exp(self) -> None:
        """A signed token whose exp is not a number is refused, not a crash."""
        for exp in ("soon", 1e400, None, [1]):
            token = jwt.encode({"sub": "1", "exp": exp}, SECRET, algorithm="HS256")
            self.refused(token)

    def test_sub_mismatch(self) -> None:
        """A token for user 2 does not log in user 1."""
        self.assertIn("another user", self.refused(make_token(SECRET, 2), 1).detail)

    def test_sub_not_canonical(self) -> None:
        """sub must be the decimal string itself: "01", " 1", "1.0" are refused."""
        for sub in ("01", " 1", "1.0", "+1", "0x1"):
            self.refused(jwt.encode({"sub": sub}, SECRET, algorithm="HS256"))

    def test_sub_as_int(self) -> None:
        """A sub that is the JSON number 1, not the string "1", is refused."""
        for sub in (1, 1.0, True, None, ["1"]):
            self.refused(jwt.encode({"sub": sub}, SECRET, algorithm="HS256"))

    def test_sub_missing(self) -> None:
        """A token without sub is refused."""
        self.refused(jwt.encode({"friends": [2]}, SECRET, algorithm="HS256"))

    def test_friends_claim(self) -> None:
        """The friends claim is returned as a set of ids (duplicates merged)."""
        token = jwt.encode({"sub": "1", "friends": [3, 2, 3]}, SECRET,
                           algorithm="HS256")
        self.assertEqual(self.verifier.verify(token, 1), frozenset({2, 3}))
        self.assertEqual(
            self.verifier.verify(make_token(SECRET, 1, friends=[]), 1), frozenset()
        )

    def test_friends_claim_malformed(self) -> None:
        """A friends claim that is not a list of user ids is error 10."""
        for friends in ("2,3", 2, {"2": True}, [2, "3"], [0], [True], [2.0],
                        [2**63], [-1], [[2]]):
            token = jwt.encode({"sub": "1", "friends": friends}, SECRET,
                               algorithm="HS256")
            self.assertIn("friends claim", self.refused(token).detail)

    def test_empty_secret(self) -> None:
        """A verifier cannot be made with an empty secret."""
        self.assertRaises(ValueError, TokenVerifier, b"")


class ReadSecretTests(SynchronousTestCase):
    """L{read_secret}: the file's content, surrounding whitespace stripped."""

    def test_strips(self) -> None:
        """Whitespace and newlines around the secret are not part of it."""
        path = Path(self.mktemp())
        path.write_bytes(b"  s3cret value\n\n")
        self.assertEqual(read_secret(path), b"s3cret value")

    def test_empty(self) -> None:
        """An empty (or blank) secret file is refused."""
        path = Path(self.mktemp())
        path.write_bytes(b" \n")
        self.assertRaises(ValueError, read_secret, path)


class TokenCliTests(SynchronousTestCase):
    """presence-token prints a token the server's verifier accepts."""

    def setUp(self) -> None:
        self.secret_file = Path(self.mktemp())
        self.secret_file.write_bytes(SECRET + b"\n")

    def run_cli(self, *args: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = token_cli.main(["--secret-file", str(self.secret_file), *args])
            except SystemExit as e:
                code = int(e.code or 0)
        return code, out.getvalue(), err.getvalue()

    def test_plain(self) -> None:
        """--user alone: a token for that user, no friends claim, no exp."""
        code, out, _ = self.run_cli("--user", "1")
        self.assertEqual(code, 0)
        token = out.strip()
        self.assertIsNone(TokenVerifier(SECRET).verify(token, 1))
        claims = jwt.decode(token, SECRET, algorithms=["HS256"])
        self.assertNotIn("exp", claims)
        self.assertEqual(jwt.get_unverified_header(token)["alg"], "HS256")

    def test_friends_and_ttl(self) -> None:
        """--friends and --ttl become the friends and exp claims."""
        before = time.time()
        code, out, _ = self.run_cli("--user", "7", "--friends", "3, 2,3",
                                    "--ttl", "3600")
        self.assertEqual(code, 0)
        token = out.strip()
        self.assertEqual(TokenVerifier(SECRET).verify(token, 7), frozenset({2, 3}))
        claims = jwt.decode(token, SECRET, algorithms=["HS256"])
        self.assertEqual(claims["sub"], "7")
        self.assertEqual(claims["friends"], [2, 3])
        self.assertTrue(before + 3600 - 2 <= claims["exp"] <= time.time() + 3600)

    def test_empty_friends(self) -> None:
        """--friends "" is a claim that lets the session watch nobody."""
        code, out, _ = self.run_cli("--user", "7", "--friends", "")
        self.assertEqual(code, 0)
        self.assertEqual(TokenVerifier(SECRET).verify(out.strip(), 7), frozenset())

    def test_bad_arguments(self) -> None:
        """Bad ids, a bad ttl, oneself as friend: exit 2, nothing on stdout."""
        for args in (["--user", "0"], ["--user", "x"], ["--user", str(2**63)],
                     ["--user", "1", "--friends", "2,x"],
                     ["--user", "1", "--friends", "2,1"],
                     ["--user", "1", "--ttl", "-5"], ["--user", "1", "--ttl", "nan"],
                     []):
            code, out, err = self.run_cli(*args)
            self.assertEqual((code, out), (2, ""), args)
            self.assertTrue(err, args)

    def test_missing_secret(self) -> None:
        """A missing or empty secret file: exit 2 and a message."""
        self.secret_file.unlink()
        code, out, err = self.run_cli("--user", "1")
        self.assertEqual((code, out), (2, ""))
        self.assertIn("secret-file", err)
        self.secret_file.write_bytes(b"\n")
        code, out, err = self.run_cli("--user", "1")
        self.assertEqual((code, out), (2, ""))


# -- logins with tokens, at the protocol level -----------------------------------


class Conn:
    """One client connection over a StringTransport."""

    def __init__(self, factory: LineFactory, port: int) -> None:
        addr = IPv4Address("TCP", "192.0.2.7", port)
        self.transport = StringTransport(peerAddress=addr)
        proto = factory.buildProtocol(addr)
        assert isinstance(proto, LineProtocol)
        self.proto: LineProtocol = proto
        proto.makeConnection(self.transport)

    def send(self, obj: Any) -> None:
        data = obj if isinstance(obj, bytes) else orjson.dumps(obj) + b"\n"
        self.proto.dataReceived(data)

    def received(self) -> list[dict[str, Any]]:
        self.proto.factory.server.outbox.flush()  # the server's turn ends
        data = self.transport.value()
        self.transport.clear()
        assert data == b"" or data.endswith(b"\n"), data
        return [orjson.loads(line) for line in data.splitlines()]

    def lose(self) -> None:
        self.proto.connectionLost(Failure(ConnectionDone()))


class TokenLoginTests(SynchronousTestCase):
    """A server with a secret: what a login needs, and what a refusal leaves."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.factory = line_factory(
            self.clock, Config(max_friends=3), TokenVerifier(SECRET)
        )
        self.registry = self.factory.server.registry
        self.ports = iter(range(20000, 30000))

    def connect(self) -> Conn:
        return Conn(self.factory, next(self.ports))

    def login(self, uid: int, friends: list[int], **fields: Any) -> Conn:
        conn = self.connect()
        conn.send({"user_id": uid, "friends": friends,
                   "token": make_token(SECRET, uid), **fields})
        first = conn.received()
        self.assertEqual(first[0], {"type": "welcome", "user_id": uid, "timeout": 15})
        return conn

    def assertRefused(self, line: Any, code: ErrorCode) -> Conn:
        """The login is answered by error C{code} alone, and the connection closed."""
        conn = self.connect()
        conn.send(line)
        messages = conn.received()
        self.assertEqual(len(messages), 1, messages)
        self.assertEqual((messages[0]["type"], messages[0]["error"]),
                         ("error", int(code)), messages)
        self.assertTrue(conn.transport.disconnecting)
        conn.lose()
        return conn

    def test_good_token(self) -> None:
        """A login with a valid token is welcomed; the user is online."""
        self.login(1, [2])
        self.assertTrue(self.registry.is_online(1))

    def test_token_required(self) -> None:
        """Without a token, an otherwise perfect login is error 10."""
        self.assertRefused({"user_id": 1, "friends": [2]},
                           ErrorCode.AUTHENTICATION_FAILED)

    def test_check_order(self) -> None:
        """The first failing check answers: JSON 3, user_id 5, token 10,
        friends 5/6/11, then status 13."""
        good = make_token(SECRET, 1)
        bad = make_token(OTHER, 1)
        everything_wrong = {"user_id": 1, "token": bad, "friends": "x",
                            "status": "sleepy"}
        cases: list[tuple[Any, ErrorCode]] = [
            (b'{"user_id": 0, "token": "x", \n', ErrorCode.JSON_DECODING),
            (b"\xff\xfe\n", ErrorCode.JSON_DECODING),
            ({**everything_wrong, "user_id": 0}, ErrorCode.INVALID_USER_ID),
            ({**everything_wrong, "user_id": "1"}, ErrorCode.INVALID_USER_ID),
            ({k: v for k, v in everything_wrong.items() if k != "user_id"},
             ErrorCode.INVALID_USER_ID),
            (everything_wrong, ErrorCode.AUTHENTICATION_FAILED),
            ({**everything_wrong, "token": make_token(SECRET, 2)},
             ErrorCode.AUTHENTICATION_FAILED),
            ({**everything_wrong, "token": good}, ErrorCode.INVALID_USER_ID),
            ({**everything_wrong, "token": good, "friends": [2, 0]},
             ErrorCode.INVALID_USER_ID),
            ({**everything_wrong, "token": good, "friends": [2, 1]},
             ErrorCode.FRIEND_WITH_YOURSELF),
            ({**everything_wrong, "token": good, "friends": [2, 3, 4, 5]},
             ErrorCode.TOO_MANY_FRIENDS),
            ({**everything_wrong, "token": good, "friends": [2, 3, 4]},
             ErrorCode.INVALID_MESSAGE),
            ({"user_id": 1, "token": good, "text": "x" * 257},
             ErrorCode.INVALID_MESSAGE),
        ]
        for line, code in cases:
            with self.subTest(line=line):
                self.assertRefused(line, code)

    def test_max_friends_before_claim(self) -> None:
        """--max-friends counts the listed ids before the claim filters them."""
        token = make_token(SECRET, 1, friends=[2])
        self.assertRefused({"user_id": 1, "token": token, "friends": [2, 3, 4, 5]},
                           ErrorCode.TOO_MANY_FRIENDS)

    def test_rejected_login_never_online(self) -> None:
        """A refused login leaves no trace: the user is not online, has no
        session, and its watchers are told nothing, not even briefly."""
        watcher = self.login(9, [1])
        for token in (None, "junk", make_token(OTHER, 1), make_token(SECRET, 2),
                      make_token(SECRET, 1, ttl=1, now=time.time() - 3600)):
            self.assertRefused({"user_id": 1, "friends": [9], "token": token},
                               ErrorCode.AUTHENTICATION_FAILED)
        good = make_token(SECRET, 1)
        for line, code in (
            ({"user_id": 1, "friends": [1], "token": good},
             ErrorCode.FRIEND_WITH_YOURSELF),
            ({"user_id": 1, "friends": [2, 3, 4, 5], "token": good},
             ErrorCode.TOO_MANY_FRIENDS),
            ({"user_id": 1, "status": "gone", "token": good},
             ErrorCode.INVALID_MESSAGE),
        ):
            self.assertRefused(line, code)
        self.assertFalse(self.registry.is_online(1))
        self.assertEqual(self.registry.session_count(1), 0)
        self.assertEqual(watcher.received(), [])

    def test_rejected_login_keeps_other_session(self) -> None:
        """A refused login as a user who is online changes nothing of theirs."""
        watcher = self.login(9, [1])
        self.login(1, [9], status="away", text="lunch")
        self.assertEqual([m["status"] for m in watcher.received()], ["away"])
        self.assertRefused(
            {"user_id": 1, "status": "busy", "text": "hacked", "token": "junk"},
            ErrorCode.AUTHENTICATION_FAILED,
        )
        self.assertEqual(self.registry.status_of(1), ("away", "lunch"))
        self.assertEqual(self.registry.session_count(1), 1)
        self.assertEqual(watcher.received(), [])

    def test_friends_claim_filters(self) -> None:
        """With a friends claim, the session sees only listed ids in the claim:
        no snapshot and no live events about the others."""
        two = self.login(2, [])
        three = self.login(3, [])
        me = self.connect()
        me.send({"user_id": 1, "friends": [2, 3],
                 "token": make_token(SECRET, 1, friends=[2, 4])})
        messages = me.received()
        self.assertEqual([(m["type"], m.get("user_id")) for m in messages],
                         [("welcome", 1), ("presence", 2)])
        self.assertEqual(self.registry.watching(me.proto.session), frozenset({2}))
        three.send({"type": "status", "status": "busy"})
        two.send({"type": "status", "status": "away"})
        self.assertEqual([(m["user_id"], m["status"]) for m in me.received()],
                         [(2, "away")])
        # Changing the list later is filtered by the claim too.
        me.send({"type": "friends", "friends": [2, 4, 5]})
        self.assertEqual(self.registry.watching(me.proto.session), frozenset({2, 4}))
        self.login(5, [])
        self.login(4, [])
        self.assertEqual([m["user_id"] for m in me.received()], [4])
        three.lose()
        self.assertEqual(me.received(), [])

    def test_relogin_ignores_token(self) -> None:
        """A login line re-sent on a logged-in connection ignores its token."""
        conn = self.login(1, [2])
        conn.send({"user_id": 1, "friends": [2, 3], "token": "junk"})
        self.assertEqual(conn.received(), [{"type": "pong"}])
        self.assertFalse(conn.transport.disconnecting)
        self.assertEqual(self.registry.watching(conn.proto.session), frozenset({2, 3}))

    def test_relogin_keeps_claim(self) -> None:
        """A re-sent login cannot widen what the token's claim allows."""
        conn = self.connect()
        conn.send({"user_id": 1, "friends": [2],
                   "token": make_token(SECRET, 1, friends=[2])})
        conn.received()
        conn.send({"user_id": 1, "friends": [2, 3],
                   "token": make_token(SECRET, 1, friends=[2, 3])})
        self.assertEqual(conn.received(), [{"type": "pong"}])
        self.assertEqual(self.registry.watching(conn.proto.session), frozenset({2}))

    def test_relogin_as_other_user(self) -> None:
        """A logged-in connection cannot become another user, even with a
        valid token for that user: error 13, and it stays who it was."""
        conn = self.login(1, [])
        conn.send({"user_id": 2, "token": make_token(SECRET, 2)})
        [error] = conn.received()
        self.assertEqual(error["error"], int(ErrorCode.INVALID_MESSAGE))
        self.assertFalse(self.registry.is_online(2))
        self.assertEqual(conn.proto.session.user_id, 1)
