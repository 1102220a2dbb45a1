"""Property tests: whatever a client sends, the server answers by the contract.

The wire decoder ends every input in a valid result or a L{ProtocolError} with
a code PROTOCOL.md defines for that step; a L{LineProtocol} fed random
chunks never raises, writes only valid lines, and keeps the registry
consistent with its sessions.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import ILogObserver, LogEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from presence import wire
from presence.server.config import Config
from presence.server.lines import LineFactory, LineProtocol
from presence.test.support import line_factory
from presence.wire.errors import ErrorCode, ProtocolError
from presence.wire.messages import friends_change
from presence.wire.tokens import TokenVerifier, make_token

SETTINGS = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# -- strategies ----------------------------------------------------------------

interesting_ints = st.sampled_from(
    [0, 1, 2, 3, -1, 2**63 - 1, 2**63, 2**64, -(2**63), 10**30]
)
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | interesting_ints
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
    | st.sampled_from(["login", "ping", "pong", "bye", "status", "friends",
                       "online", "away", "busy", "invisible", "", "1"])
)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=6)
    | st.dictionaries(st.text(max_size=8), children, max_size=6),
    max_leaves=10,
)
id_lists = st.lists(st.integers(min_value=1, max_value=8), max_size=8)
field_values = {
    "type": st.sampled_from(["login", "ping", "pong", "bye", "status", "friends",
                             "nope"]) | json_values,
    "user_id": st.integers(min_value=1, max_value=8) | json_values,
    "friends": id_lists | json_values,
    "add": id_lists | json_values,
    "remove": id_lists | json_values,
    "status": st.sampled_from(["online", "away", "busy", "invisible"]) | json_values,
    "text": st.text(max_size=300) | json_values,
    "token": st.text(max_size=40) | json_values,
}
messages = st.fixed_dictionaries(
    {}, optional={k: v for k, v in field_values.items()}
) | st.dictionaries(st.text(max_size=8), json_values, max_size=5)


def expect(codes: set[ErrorCode], f: Any, *args: Any, **kwargs: Any) -> Any:
    """Call f: a result, or a ProtocolError whose code is one of C{codes}."""
    try:
        return f(*args, **kwargs)
    except ProtocolError as e:
        assert e.code in codes, (e.code, e)
        assert isinstance(e.code, ErrorCode)
        assert e.message.startswith(e.code.wording)
        return None


# -- the decoder -------------------------------------------------------------------


class DecoderFuzzTests(SynchronousTestCase):
    """presence.wire's decoding functions, on anything."""

    @SETTINGS
    @given(st.binary(max_size=300))
    def test_decode_any_bytes(self, data: bytes) -> None:
        """Any bytes decode to a dict or fail with error 3."""
        result = expect({ErrorCode.JSON_DECODING}, wire.decode_line, data)
        assert result is None or type(result) is dict

    @SETTINGS
    @given(json_values)
    def test_decode_any_json(self, value: Any) -> None:
        """Any JSON text (big ints, NaN, nesting included) decodes to the
        object it holds, or fails with error 3 when it is no object."""
        data = json.dumps(value).encode()
        result = expect({ErrorCode.JSON_DECODING}, wire.decode_line, data)
        if type(value) is not dict:
            assert result is None

    @SETTINGS
    @given(st.integers(min_value=0, max_value=2000))
    def test_deep_nesting(self, depth: int) -> None:
        """Deeply nested arrays are an object-less line (3), not a crash."""
        line = b'{"a":' + b"[" * depth + b"]" * depth + b"}"
        expect({ErrorCode.JSON_DECODING}, wire.decode_line, line)

    @SETTINGS
    @given(messages)
    def test_message_type(self, obj: dict[str, Any]) -> None:
        """The type is a string, "login" when absent, or error 13."""
        kind = expect({ErrorCode.INVALID_MESSAGE}, wire.message_type, obj)
        assert kind is None or type(kind) is str
        if "type" not in obj:
            assert kind == "login"

    @SETTINGS
    @given(json_values)
    def test_user_id(self, value: Any) -> None:
        """Only a real int in 1 .. 2**63-1 is a user id; anything else is 5."""
        uid = expect({ErrorCode.INVALID_USER_ID}, wire.user_id, value)
        valid = type(value) is int and 1 <= value <= 2**63 - 1
        assert (uid is not None) == valid
        if valid:
            assert uid == value

    @SETTINGS
    @given(json_values | id_lists, st.integers(1, 8), st.integers(1, 6))
    def test_id_set(self, value: Any, me: int, max_friends: int) -> None:
        """A list of ids, or 5 (bad id), 6 (oneself), 11 (too many)."""
        codes = {ErrorCode.INVALID_USER_ID, ErrorCode.FRIEND_WITH_YOURSELF,
                 ErrorCode.TOO_MANY_FRIENDS}
        ids = expect(codes, wire.id_set, value, "friends", me, max_friends)
        if ids is not None:
            assert type(value) is list
            assert ids == frozenset(value)
            assert me not in ids and len(ids) <= max_friends
            assert all(wire.is_user_id(i) for i in ids)

    @SETTINGS
    @given(messages, st.booleans())
    def test_status_fields(self, obj: dict[str, Any], required: bool) -> None:
        """A valid status/text change, or error 13."""
        change = expect({ErrorCode.INVALID_MESSAGE}, wire.status_fields, obj,
                        required=required)
        if change is not None:
            assert change.status is None or change.status in wire.STATUSES
            assert change.text is None or (
                type(change.text) is str and len(change.text) <= wire.MAX_TEXT
            )
            if required:
                assert change.status is not None and change.text is not None

    @SETTINGS
    @given(messages, st.integers(1, 8), st.frozensets(st.integers(1, 8)),
           st.integers(1, 6))
    def test_friends_change(self, obj: dict[str, Any], me: int,
                            current: frozenset[int], max_friends: int) -> None:
        """A new valid watch list, or 5, 6, 11 or 13."""
        current = current - {me}
        codes = {ErrorCode.INVALID_USER_ID, ErrorCode.FRIEND_WITH_YOURSELF,
                 ErrorCode.TOO_MANY_FRIENDS, ErrorCode.INVALID_MESSAGE}
        result = expect(codes, friends_change, obj, me, current, max_friends)
        if result is not None:
            assert me not in result and len(result) <= max_friends
            assert all(wire.is_user_id(i) for i in result)

    @SETTINGS
    @given(json_values | st.text(alphabet="abcXYZ-_.=", max_size=60),
           st.integers(1, 8))
    def test_token(self, token: Any, uid: int) -> None:
        """Any token value is a claim or error 10."""
        verifier = TokenVerifier(b"k" * 32)
        claim = expect({ErrorCode.AUTHENTICATION_FAILED}, verifier.verify, token, uid)
        assert claim is None or isinstance(claim, frozenset)


# -- the protocol ------------------------------------------------------------------

SECRET = b"fuzz-secret-" + b"s" * 40
VERIFIER = TokenVerifier(SECRET)
TOKENS = {uid: make_token(SECRET, uid, friends=[1, 2, 3, 4] if uid % 2 else None)
          for uid in range(1, 9)}
SERVER_TYPES = {"welcome", "presence", "ping", "pong", "error"}
FATAL_AFTER_LOGIN = {c for c in ErrorCode} - {
    ErrorCode.INVALID_USER_ID, ErrorCode.FRIEND_WITH_YOURSELF,
    ErrorCode.TOO_MANY_FRIENDS, ErrorCode.INVALID_MESSAGE,
}


small_ids = st.lists(st.integers(min_value=1, max_value=6), max_size=6)
plausible = st.one_of(
    st.fixed_dictionaries(
        {"user_id": st.integers(1, 6)},
        optional={"friends": small_ids,
                  "status": st.sampled_from(["online", "away", "busy", "invisible"]),
                  "text": st.text(max_size=10)},
    ),
    st.fixed_dictionaries(
        {"type": st.just("status"),
         "status": st.sampled_from(["online", "away", "busy", "invisible"])},
        optional={"text": st.sampled_from(["", "lunch", "x" * 256, "x" * 257])},
    ),
    st.fixed_dictionaries({"type": st.just("friends"), "friends": small_ids}),
    st.fixed_dictionaries({"type": st.just("friends")},
                          optional={"add": small_ids, "remove": small_ids}),
    st.sampled_from([{"type": "ping"}, {"type": "pong"}, {"type": "bye"}]),
)


@st.composite
def client_lines(draw: st.DrawFn) -> bytes:
    """Mostly plausible lines, with junk mixed in."""
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return draw(st.binary(max_size=60))
    if kind == 1:
        return json.dumps(draw(json_values)).encode() + b"\n"
    obj = draw(messages if kind <= 3 else plausible)
    if "user_id" in obj and type(obj["user_id"]) is int:
        token = TOKENS.get(obj["user_id"])
        if token is not None and draw(st.integers(0, 4)):
            obj["token"] = token
    terminator = draw(st.sampled_from([b"\n", b"\r\n", b"\n", b""]))
    return json.dumps(obj).encode() + terminator


actions = st.lists(
    st.tuples(
        st.integers(0, 3),  # connection
        st.sampled_from(["login", "login", "send", "send", "send", "split", "tick",
                         "lose", "pause", "resume"]),
        client_lines(),
        st.integers(0, 127),
    ),
    max_size=40,
)


class Conn:
    def __init__(self, factory: LineFactory, port: int) -> None:
        addr = IPv4Address("TCP", "192.0.2.9", port)
        self.transport = StringTransport(peerAddress=addr)
        proto = factory.buildProtocol(addr)
        assert isinstance(proto, LineProtocol)
        self.proto: LineProtocol = proto
        proto.makeConnection(self.transport)
        self.lost: bool = False
        self.out: bytes = b""
        self.fatal: bool = False

    def lose(self) -> None:
        if not self.lost:
            self.lost = True
            self.proto.connectionLost(Failure(ConnectionDone()))


class ProtocolFuzzTests(SynchronousTestCase):
    """Random chunks on a few connections to one factory."""

    def setUp(self) -> None:
        self.logged: list[LogEvent] = []

        @implementer(ILogObserver)
        def observer(event: LogEvent) -> None:
            if "log_failure" in event:
                self.logged.append(event)

        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)

    def check_output(self, conn: Conn) -> None:
        """Everything written is whole JSON lines of the server's types, with
        defined error codes, and nothing follows a fatal error."""
        data = conn.transport.value()
        new, conn.out = data[len(conn.out):], data
        if not new:
            return
        assert not conn.fatal, f"written after a fatal error: {new!r}"
        if conn.proto.session.v0 is not None:
            self.check_v0_output(conn, new)
            return
        assert new.endswith(b"\n"), new
        for raw in new.split(b"\n")[:-1]:
            message = orjson.loads(raw)
            assert type(message) is dict and message.get("type") in SERVER_TYPES
            event(f"server sent {message['type']}")
            if message["type"] == "error":
                code = ErrorCode(message["error"])
                event(f"error {int(code)}")
                assert message["msg"].startswith(code.wording)
                if conn.proto.session.user_id is None or code in FATAL_AFTER_LOGIN:
                    conn.fatal = True

    def check_v0_output(self, conn: Conn, new: bytes) -> None:
        """A v0 connection gets whole v0 values, no terminators: online
        events, the demo's pong, errors in the demo's form."""
        decoder = json.JSONDecoder()
        text, pos = new.decode(), 0
        while pos < len(text):
            value, pos = decoder.raw_decode(text, pos)
            assert type(value) is dict, value
            if "online" in value:
                assert set(value) == {"online"} and type(value["online"]) is bool
                event("v0 event")
                continue
            assert set(value) == {"msg", "error"}, value
            code = ErrorCode(value["error"])
            event(f"v0 error {int(code)}")
            if code != ErrorCode.NO_ERROR:
                assert value["msg"] == f"[server] {code.wording}", value
                if conn.proto.session.user_id is None or code in FATAL_AFTER_LOGIN:
                    conn.fatal = True
        assert not new.endswith(b"\n"), new

    def check_registry(self, factory: LineFactory, conns: list[Conn]) -> None:
        """The registry knows exactly the logged-in, open sessions."""
        registry = factory.server.registry
        live = [c for c in conns if not c.lost]
        assert factory.server.connections == {c.proto.session for c in live}
        sessions = [c.proto for c in live if c.proto.session.user_id is not None]
        assert registry.sessions == len(sessions)
        uids: dict[int, int] = {}
        for proto in sessions:
            assert proto.session.user_id is not None
            uids[proto.session.user_id] = uids.get(proto.session.user_id, 0) + 1
            claim = proto.session.claim
            friends = frozenset(proto.session.friends)
            expected = friends if claim is None else friends & claim
            assert registry.watching(proto.session) == expected
            assert proto.session.user_id not in proto.session.friends
        assert registry.users == len(uids)
        for uid in range(1, 9):
            assert registry.session_count(uid) == uids.get(uid, 0)
            if registry.is_online(uid):
                assert uid in uids

    @SETTINGS
    @given(actions, st.booleans())
    def test_random_traffic(self, steps: list[tuple[int, str, bytes, int]],
                            secure: bool) -> None:
        """No input makes the protocol raise, log an error, write something
        invalid, or leave the registry out of step with the connections."""
        clock = Clock()
        factory = line_factory(
            clock,
            Config(timeout=10, max_line=400, max_friends=5, max_sessions=2,
                   max_buffer=400, max_connections=6),
            VERIFIER if secure else None,
        )
        conns: list[Conn] = []
        ports = iter(range(10000, 20000))
        for index, action, data, n in steps:
            live = [c for c in conns if not c.lost]
            if index >= len(live):
                conn = Conn(factory, next(ports))
                conns.append(conn)
            else:
                conn = live[index]
            if action == "login":
                # A valid login: user 1..6 watching others of 1..6 (by n's bits).
                uid = n % 6 + 1
                friends = [f for f in range(1, 7) if f != uid and n & (1 << f)]
                conn.proto.dataReceived(orjson.dumps(
                    {"user_id": uid, "friends": friends, "token": TOKENS[uid]}
                ) + b"\n")
            elif action == "send":
                conn.proto.dataReceived(data)
            elif action == "split":
                for k in range(0, len(data), max(1, n % 7)):
                    conn.proto.dataReceived(data[k:k + max(1, n % 7)])
            elif action == "tick":
                clock.advance(n / 25)
            elif action == "lose":
                conn.lose()
            elif action == "pause":
                conn.proto.pauseProducing()
            elif action == "resume":
                conn.proto.resumeProducing()
            for c in conns:
                self.check_output(c)
                # A connection the server closed goes away.
                if c.transport.disconnecting:
                    c.lose()
            self.check_registry(factory, conns)
            assert not self.logged, self.logged
        # In the end every connection times out or is closed; nobody is left.
        for _ in range(25):
            clock.advance(1)
            for c in conns:
                self.check_output(c)
                if c.transport.disconnecting:
                    c.lose()
        assert all(c.lost for c in conns)
        self.check_registry(factory, conns)
        assert factory.server.registry.users == 0
