"""Several token secrets (PROTOCOL.md "Tokens"): any one of them is accepted,
and the server swaps them on SIGHUP."""

from __future__ import annotations

import time

from twisted.trial.unittest import SynchronousTestCase

from presence.wire.errors import ErrorCode, ProtocolError
from presence.wire.tokens import TokenVerifier, make_token, read_secret, read_secrets

OLD = b"o" * 32
NEW = b"n" * 32
OTHER = b"x" * 32


class ReadSecretsTests(SynchronousTestCase):
    def write(self, content: bytes) -> str:
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(content)
        return path

    def test_one_per_line(self) -> None:
        """One secret a line; surrounding whitespace and blank lines are
        ignored; CRLF works."""
        path = self.write(b"  first \r\n\n\tsecond\n\n")
        self.assertEqual(read_secrets(path), [b"first", b"second"])
        self.assertEqual(read_secret(path), b"first")

    def test_empty(self) -> None:
        """A file with no secret (empty, or blank lines) is refused."""
        for content in (b"", b"\n \n\t\n"):
            self.assertRaises(ValueError, read_secrets, self.write(content))


class SeveralSecretsTests(SynchronousTestCase):
    def refused(self, verifier: TokenVerifier, token: str) -> str:
        with self.assertRaises(ProtocolError) as e:
            verifier.verify(token, 1)
        self.assertEqual(e.exception.code, ErrorCode.AUTHENTICATION_FAILED)
        return e.exception.detail

    def test_any_secret_accepted(self) -> None:
        """A token signed with any of the secrets logs in; others do not."""
        verifier = TokenVerifier([NEW, OLD])
        for secret in (NEW, OLD):
            self.assertEqual(
                verifier.verify(make_token(secret, 1, [2]), 1), frozenset({2}))
        self.assertEqual(self.refused(verifier, make_token(OTHER, 1)),
                         "invalid token (InvalidSignatureError)")

    def test_other_refusals_final(self) -> None:
        """An expired token or one for another user is refused with its own
        reason, whichever secret signed it."""
        verifier = TokenVerifier([NEW, OLD])
        expired = make_token(OLD, 1, ttl=1, now=time.time() - 3600)
        self.assertEqual(self.refused(verifier, expired), "token expired")
        self.assertEqual(self.refused(verifier, make_token(OLD, 2)),
                         "token is for another user")

    def test_replace(self) -> None:
        """replace() swaps the secrets for the next logins."""
        verifier = TokenVerifier(OLD)
        token = make_token(NEW, 1)
        self.refused(verifier, token)
        verifier.replace([NEW])
        self.assertEqual(verifier.secrets, (NEW,))
        self.assertIsNone(verifier.verify(token, 1))
        self.refused(verifier, make_token(OLD, 1))

    def test_no_empty_secret(self) -> None:
        """No secret, or an empty one, is refused (and replace() keeps the
        secrets in use)."""
        self.assertRaises(ValueError, TokenVerifier, [])
        self.assertRaises(ValueError, TokenVerifier, b"")
        verifier = TokenVerifier(OLD)
        self.assertRaises(ValueError, verifier.replace, [NEW, b""])
        self.assertEqual(verifier.secrets, (OLD,))
