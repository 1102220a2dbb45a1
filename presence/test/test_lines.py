"""The line front end (L{presence.server.lines.LineProtocol}) against the
framer it shortcuts."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.python.monkey import MonkeyPatcher
from twisted.trial.unittest import SynchronousTestCase

from presence.server.session import Session
from presence.test.support import Harness
from presence.wire.errors import ErrorCode, ProtocolError
from presence.wire.framing import Framer


class WholeLineShortcutTests(SynchronousTestCase):
    """The line front end takes a whole read of one C{{...}\\n} line without
    the framer (L{presence.server.lines.LineProtocol.dataReceived}); what
    the session is handed must be what the framer would have made of it."""

    LIMIT = 40

    def handed(self, data: bytes) -> list[bytes] | ErrorCode:
        """What a logged-in line connection hands its session for C{data}."""
        h = Harness(max_line=self.LIMIT)
        client = h.login(1)
        got: list[bytes] = []
        errors: list[ErrorCode] = []
        # (Session has slots: its class is patched, for this read only.)
        MonkeyPatcher(
            (Session, "received", lambda _, lines: got.extend(lines)),
            (Session, "framing_error", lambda _, e: errors.append(e.code)),
        ).runWithPatches(client.proto.dataReceived, data)
        return errors[0] if errors else got

    @staticmethod
    def framed(data: bytes, limit: int) -> list[bytes] | ErrorCode:
        try:
            return [payload for payload, _ in Framer(limit).feed(data)]
        except ProtocolError as e:
            return e.code

    @given(
        st.lists(
            st.sampled_from([b"{", b"}", b"\n", b"\r", b" ", b'"', b"\\", b"a", b"1"]),
            max_size=50,
        ).map(b"".join)
    )
    @settings(max_examples=500, deadline=None,
              suppress_health_check=[HealthCheck.too_slow])
    def test_as_the_framer(self, body: bytes) -> None:
        """Reads shaped like the shortcut's (and near misses) are handed on
        as the framer splits them, too long ones refused as it refuses them."""
        for data in (b"{" + body + b"}\n", b"{" + body + b"\n", body + b"\n"):
            self.assertEqual(self.handed(data), self.framed(data, self.LIMIT), data)

    def test_examples(self) -> None:
        """A status line, one over the limit, a CRLF line, two lines."""
        line = b'{"type":"status","status":"away"}'
        self.assertEqual(self.handed(line + b"\n"), [line])
        self.assertEqual(self.handed(b"{" + b" " * self.LIMIT + b"}\n"),
                         ErrorCode.LINE_TOO_LONG)
        self.assertEqual(self.handed(b'{"a":1}\r\n'), [b'{"a":1}'])
        self.assertEqual(self.handed(b'{"a":1}\n{"b":2}\n'), [b'{"a":1}', b'{"b":2}'])
