"""The TCP front end (also TLS and UNIX sockets): lines in, lines out.

L{LineProtocol} only frames: it splits what it reads into messages for its
L{Session} (L{presence.wire.framing}: lines, or concatenated JSON objects),
writes what the session sends, and passes the transport's backpressure on.
Everything else is the session's.

It also tells protocol v0 (the original demo's clients) from v1, once per
connection: a login that arrives as a complete JSON object with no C{\\n}
after it within L{V0_WAIT} seconds is a v0 login (PROTOCOL.md, "Protocol
v0"); any line in that time makes it v1.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IPushProducer,
    ITCPTransport,
)
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from presence import wire
from presence.server.context import Server, host_of
from presence.server.logs import format_peer
from presence.server.session import (
    IPeer,
    Session,
    login_line_too_long,
    unfinished_too_much,
)
from presence.server.writer import direct_fd
from presence.wire import keepalive
from presence.wire.errors import ProtocolError
from presence.wire.framing import LINE, Framer

# Byte values (an int to find() skips the buffer protocol).
_NL, _LBRACE, _RBRACE = 0x0A, 0x7B, 0x7D

# How long a login object may wait for its "\n" before the connection is
# taken for a v0 one (a v0 client sends nothing more until it is answered).
V0_WAIT = 0.1

# Whole reads that are a lone ping (answered by pong) or pong (no answer),
# with the answer and the line's length without its terminator.  Idle
# clients send little else, so these skip splitting and decoding.
_KEEPALIVE: dict[bytes, tuple[bytes, int]] = {
    b"%s%s" % (line, end): (answer, len(line))
    for kind, answer in (("ping", wire.PONG), ("pong", b""))
    for line in (b'{"type":"%s"}' % kind.encode(), b'{"type": "%s"}' % kind.encode())
    for end in (b"\n", b"\r\n")
}


@implementer(IPeer, IPushProducer)
class LineProtocol(Protocol):
    """One TCP (TLS, UNIX) connection: newline-framed JSON for a L{Session}."""

    factory: LineFactory
    # A TCP, TLS or UNIX transport: ITransport plus IConsumer (producers) and
    # abortConnection, which no single Twisted interface spells out.
    transport: Any

    session: Session  # from connectionMade on
    kind = "tcp"
    # Tens of thousands of these sit idle: no __dict__ (Protocol's own
    # attributes included).
    __slots__ = (
        "_counted", "_decided", "_fd", "_framer", "_held", "_max_line",
        "_v0_timer", "connected", "factory", "host", "session", "transport",
    )

    def __init__(self) -> None:
        self.connected = 0
        self.transport = None
        self.host: str | None = None
        # Our own framer only while a message is unfinished; between
        # messages (nearly always) the shared one for our limit serves.
        self._framer: Framer | None = None
        self._fd = -1  # the socket's, while writes may bypass the transport
        self._max_line = 0
        self._counted = 0  # of the framer's pending bytes, in Server.unfinished
        # v1 or v0 is decided on the first message: until then None; while
        # a login object waits for its "\n", what came since and the timer.
        self._decided = False
        self._held: list[bytes] | None = None
        self._v0_timer: IDelayedCall | None = None

    @property
    def address(self) -> str:
        # Formatted when a log line needs it, not held by every connection.
        return format_peer(self.transport.getPeer())

    # -- Protocol ------------------------------------------------------------

    def connectionMade(self) -> None:
        server = self.factory.server
        self._max_line = server.config.max_line
        if ITCPTransport.providedBy(self.transport):
            # Small writes must not wait for the peer's delayed ACK.
            self.transport.setTcpNoDelay(True)
        if server.config.heartbeat == "tcp":
            keepalive.enable(self.transport, server.config.timeout)
        self._fd = direct_fd(self.transport)
        peer: IAddress = self.transport.getPeer()
        self.host = host_of(peer)
        self.session = Session(server, self)
        self.transport.registerProducer(self, True)
        self.session.start()

    def connectionLost(self, reason: Failure | None = None) -> None:
        self._release()
        if self._v0_timer is not None and self._v0_timer.active():
            self._v0_timer.cancel()
        self.session.lost()
        # The session outlives this call (the timer heap holds it until its
        # deadline): holding it here too would make a cycle, with Twisted's
        # transport in it, that only a full collection frees (gcpolicy).
        del self.session

    def dataReceived(self, data: bytes) -> None:
        session = self.session
        if session.closing:
            return
        # Idle clients send little but keep-alives: answer a whole read that
        # is a lone ping or pong without framing and decoding it.
        keepalive = _KEEPALIVE.get(data)
        if (
            keepalive is not None
            and session.user_id is not None
            and self._framer is None
            and not session.busy
            and keepalive[1] <= self._max_line
        ):
            session.active()
            if keepalive[0]:
                session.deliver(keepalive[0])
            return
        if self._decided and self._framer is None:
            # A whole read that is one line of one object, "{...}\n" with
            # no "}" before its last (as a busy client's status change
            # nearly always is): what the framer makes of it (its own
            # shortcut), without the framer, and with no unfinished bytes
            # to account before or after it.
            n = len(data)
            if (
                2 < n <= self._max_line + 1
                and data[0] == _LBRACE
                and data.find(_RBRACE) == n - 2
                and data.find(_NL) == n - 1
            ):
                session.received([data[:-1]])
                return
        payloads: list[bytes] = []
        framer = self._framer or _shared(self._max_line)
        try:
            for payload, ending in framer.feed(data):
                if self._decided:
                    payloads.append(payload)
                elif self._v0_timer is not None:
                    # A login object waits: a line now makes it v1.
                    assert self._held is not None
                    self._held.append(payload)
                    if ending is LINE:
                        self._decide(v0=False)
                elif ending is LINE:
                    self._decided = True
                    payloads.append(payload)
                elif payload:
                    self._held = [payload]
                    self._v0_timer = session.server.clock.callLater(
                        V0_WAIT, self._decide, True
                    )
        except ProtocolError as e:
            if self._framer is None:
                _take_shared(self._max_line)  # it holds the error: not shared
            self._release()
            session.received(payloads)
            session.framing_error(e)
            return
        if self._framer is None:
            if framer.pending:
                self._framer = _take_shared(self._max_line)
        elif not framer.pending:
            self._framer = None
        # The bytes of complete messages move from the framer to the
        # session's inbox: count them out there before counting them in.
        self._count_unfinished(payloads)

    def _count_unfinished(self, payloads: list[bytes]) -> None:
        # Bound what unfinished lines cost: a shorter limit before the
        # login, and one budget for every connection together.
        server = self.factory.server
        config = server.config
        pending = self._framer.pending if self._framer is not None else 0
        grown = pending - self._counted
        server.unfinished += grown
        self._counted = pending
        session = self.session
        if payloads:
            session.received(payloads)
        if session.closing:
            return
        if session.user_id is None and pending > config.max_login_line + 1:
            session.framing_error(login_line_too_long(config.max_login_line))
        elif grown > 0 and server.unfinished > config.max_unfinished:
            session.framing_error(unfinished_too_much())
        if session.closing:
            self._release()

    def _release(self) -> None:
        """Nothing more will be read: let go of the unfinished message."""
        self._framer = None
        self.factory.server.unfinished -= self._counted
        self._counted = 0

    def _decide(self, v0: bool) -> None:
        """The login object's wait is over: v0 if no line came."""
        timer, self._v0_timer = self._v0_timer, None
        if timer is not None and timer.active():
            timer.cancel()
        self._decided = True
        if v0:
            self.session.use_v0()
        held, self._held = self._held, None
        if held:
            self.session.received(held)

    # -- IPushProducer: the transport's backpressure, for the session --------

    def pauseProducing(self) -> None:
        self.session.transport_paused()

    def resumeProducing(self) -> None:
        self.session.transport_resumed()

    def stopProducing(self) -> None:
        pass  # connectionLost follows and cleans up

    # -- IPeer ---------------------------------------------------------------

    def write(self, data: bytes) -> None:
        # writer.write_now, inlined (a call less per delivery).
        t = self.transport
        fd = self._fd
        if fd < 0 or (
            t._tempDataLen or t.dataBuffer or not t.connected or t.disconnecting
        ):
            t.write(data)
            return
        try:
            sent = _send(fd, data)
        except OSError:
            t.write(data)
            return
        if sent < len(data):
            t.write(data[sent:])

    def close(self) -> None:
        # A paused streaming producer would keep loseConnection waiting.
        self.transport.unregisterProducer()
        self.transport.loseConnection()

    def abort(self) -> None:
        self.transport.abortConnection()

    def pause_reading(self) -> None:
        self.transport.pauseProducing()

    def resume_reading(self) -> None:
        self.transport.resumeProducing()


# The direct write (a module global: one lookup; tests count its calls).
_send = os.write

# A framer between messages holds no state: one per --max-line serves every
# connection that is between messages.  A connection takes it (and a new one
# is made) when a read leaves a message unfinished.
_SHARED: dict[int, Framer] = {}


def _shared(limit: int) -> Framer:
    framer = _SHARED.get(limit)
    if framer is None:
        framer = _SHARED[limit] = Framer(limit)
    return framer


def _take_shared(limit: int) -> Framer:
    return _SHARED.pop(limit)


class LineFactory(ServerFactory):
    """Builds a L{LineProtocol} per connection, all on one L{Server}."""

    protocol = LineProtocol  # type: ignore[assignment]
    noisy = False

    def __init__(self, server: Server) -> None:
        self.server = server
