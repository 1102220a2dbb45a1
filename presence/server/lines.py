"""The TCP front end (also TLS and UNIX sockets): lines in, lines out.

L{LineProtocol} only frames: it splits what it reads into lines for its
L{Session}, writes what the session sends, and passes the transport's
backpressure on.  Everything else is the session's.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IAddress, IPushProducer, ITCPTransport
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from presence import wire
from presence.server.context import Server, describe, host_of
from presence.server.session import IPeer, Session
from presence.server.writer import supported, write_now

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

    def __init__(self) -> None:
        self.address = ""
        self.host: str | None = None
        self._chunks: list[bytes] = []
        self._pending = 0
        self._direct = False
        self._max_line = 0

    # -- Protocol ------------------------------------------------------------

    def connectionMade(self) -> None:
        server = self.factory.server
        self._max_line = server.config.max_line
        if ITCPTransport.providedBy(self.transport):
            # Small writes must not wait for the peer's delayed ACK.
            self.transport.setTcpNoDelay(True)
        self._direct = supported(self.transport)
        peer: IAddress = self.transport.getPeer()
        self.address = describe(peer)
        self.host = host_of(peer)
        self.session = Session(server, self)
        self.transport.registerProducer(self, True)
        self.session.start()

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.session.lost()

    def dataReceived(self, data: bytes) -> None:
        # Unlike LineOnlyReceiver, keep partial lines as a list of chunks: a
        # line trickling in byte by byte must not cost quadratic copying.
        session = self.session
        if session.closing:
            return
        keepalive = _KEEPALIVE.get(data)
        if (
            keepalive is not None
            and session.user_id is not None
            and not self._chunks
            and not session.busy
            and keepalive[1] <= self._max_line
        ):
            session.active()
            if keepalive[0]:
                session.deliver(keepalive[0])
            return
        if b"\n" not in data:
            self._chunks.append(data)
            self._pending += len(data)
            self._check_pending()
            return
        if self._chunks:
            self._chunks.append(data)
            data = b"".join(self._chunks)
            self._chunks = []
            self._pending = 0
        *lines, rest = data.split(b"\n")
        session.received(
            [line[:-1] if line.endswith(b"\r") else line for line in lines]
        )
        if rest and not session.closing:
            self._chunks.append(rest)
            self._pending = len(rest)
            self._check_pending()

    def _check_pending(self) -> None:
        # A line longer than the limit is refused before its end arrives; a
        # trailing "\r" may still belong to a "\r\n" terminator.
        limit = self._max_line
        if self._pending > limit + 1 or (
            self._pending == limit + 1 and not self._chunks[-1].endswith(b"\r")
        ):
            self._chunks = []
            self._pending = 0
            self.session.line_too_long()

    # -- IPushProducer: the transport's backpressure, for the session --------

    def pauseProducing(self) -> None:
        self.session.transport_paused()

    def resumeProducing(self) -> None:
        self.session.transport_resumed()

    def stopProducing(self) -> None:
        pass  # connectionLost follows and cleans up

    # -- IPeer ---------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self._direct:
            write_now(self.transport, data)
        else:
            self.transport.write(data)

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


class LineFactory(ServerFactory):
    """Builds a L{LineProtocol} per connection, all on one L{Server}."""

    protocol = LineProtocol  # type: ignore[assignment]
    noisy = False

    def __init__(self, server: Server) -> None:
        self.server = server
