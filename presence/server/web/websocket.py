"""The WebSocket front end: text messages to and from a session.

Built on Twisted's own twisted.web.websocket (wsproto underneath), chosen by
measurement (docs/browser.rst, "Why this library").  The session core is
transport-agnostic: it is given a peer (L{WebSocketPeer}) to write to, and the
peer feeds it what the client sends:

  - C{session.received([message])}: one text message, UTF-8, without a
    trailing C{\\n} (one JSON line, as over TCP).  A binary message is passed
    on as L{BINARY}, a line that is not UTF-8, so that the session answers it
    with error 3 like any undecodable line.  A read of whole masked text
    frames is read here rather than by wsproto, while wsproto holds nothing
    of the connection (L{presence.server.web.wsframes}).
  - C{session.lost()}: the connection is gone.
  - C{session.transport_paused()} / C{session.transport_resumed()}: the
    client stopped / started reading again (the TCP transport's send buffer
    is full / drained): the session counts what it writes meanwhile and cuts
    the client off with error 14, exactly as over TCP.

and the session calls on the peer:

  - C{write(data)}: one or more JSON lines; each becomes one text message
    without its C{\\n}.  Frames are built from the bytes as they are (no
    decoding and re-encoding; one frame for all the watchers of an event,
    L{presence.server.web.wsframes}), and sent on the TCP socket at once
    while nothing is queued, as the line front end does
    (L{presence.server.writer}), else queued on the TCP transport.
  - C{close()} (a close frame, then close after flushing), C{abort()},
    C{pause_reading()}, C{resume_reading()}.

Limits: Twisted reassembles a fragmented message before delivering it, so the
peer bounds what it buffers itself: when more than C{max_message} bytes
(plus L{SLACK} for frame headers and control frames) arrive without
completing a message, or a message longer than C{max_message} arrives, the
session answers with error 9 (L{Session.framing_error}).  Nothing
here buffers without bound: what the socket does not take at once goes to
the TCP transport, whose fill level the session watches through the
producer calls (so a client that stops reading is paused once the kernel's
buffers and then the transport's 64 KiB are full).

Fair share: Twisted delivers every message of one read (at most 64 KiB) at
once, also after C{pause_reading()}, which only stops the next reads; the
session queues what it cannot handle in this turn, as it does for the lines
of one TCP read.

C{--allowed-origin}: L{OriginCheckedResource} answers 403 to a handshake
whose C{Origin} is not listed (any origin may connect when the list is
empty).  A handshake without C{Origin} is not a browser's (browsers always
send it); it is let in, since a non-browser client could send any Origin.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

from twisted.internet.interfaces import IPushProducer, ITCPTransport
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import Request
from twisted.web.websocket import WebSocketResource, WebSocketTransport
from zope.interface import implementer

from presence.server.context import host_of
from presence.server.logs import format_peer
from presence.server.session import IPeer, Session
from presence.server.web.wsframes import (
    client_messages,
    frames,
    readable,
    wsproto_idle,
)
from presence.server.writer import direct_fd, write_now
from presence.wire import keepalive
from presence.wire.errors import ErrorCode, ProtocolError

BINARY = b"\xff"
SLACK = 64 * 1024

log = Logger()

SessionFactory = Callable[["WebSocketPeer"], Session]


@implementer(IPeer, IPushProducer)
class WebSocketPeer:
    """One WebSocket connection: twisted.web.websocket's protocol side, the
    session's peer, and the TCP transport's producer."""

    kind = "websocket"
    __slots__ = (
        "_batch",
        "_delivered",
        "_fd",
        "_paused",
        "_reads",
        "_unfinished",
        "address",
        "closing",
        "host",
        "keepalive",
        "limit",
        "make_session",
        "max_message",
        "origin",
        "request",
        "session",
        "tcp",
        "ws",
    )

    def __init__(
        self, request: Request, make_session: SessionFactory, max_message: int,
        keepalive: float | None = None,
    ) -> None:
        self.request: Request | None = request
        client = request.getClientAddress()
        self.address = format_peer(client)
        self.host = host_of(client)
        self.origin = (request.getHeader(b"origin") or b"").decode("latin-1")
        self.make_session = make_session
        self.max_message = max_message
        self.keepalive = keepalive  # the timeout TCP keepalive follows, or None
        self.limit = max_message + SLACK
        self.ws: WebSocketTransport | None = None
        self.tcp: Any = None
        self.session: Session | None = None
        self.closing = False
        self._unfinished = 0  # bytes received since the last whole message
        self._delivered = False
        self._batch: list[bytes] | None = None  # the messages of this read
        self._paused = False
        self._fd = -1  # the socket's, while writes may bypass the transport
        self._reads = False  # whole text frames may bypass wsproto (wsframes)

    # -- twisted.web.websocket's WebSocketProtocol -----------------------------

    def negotiationStarted(self, transport: WebSocketTransport) -> None:
        self.ws = transport

    def negotiationFinished(self) -> None:
        request, self.request = self.request, None  # not needed any more
        assert request is not None and self.ws is not None
        channel = request.channel
        self.tcp = channel.transport
        # The HTTP channel's idle timeout would end the connection after
        # Site.timeout: the session has its own timers now.
        channel.setTimeout(None)
        # Nor does it need the upgrade request any more (its headers, body
        # and state are a good part of an idle session's memory).
        if isinstance(getattr(channel, "requests", None), list):
            channel.requests.clear()
        if ITCPTransport.providedBy(self.tcp):
            self.tcp.setTcpNoDelay(True)
        self._fd = direct_fd(self.tcp)
        self._reads = readable(self.ws)
        # Count what arrives before Twisted's wire protocol buffers it.
        inner = channel.dataReceived
        channel.dataReceived = self._guard(inner)  # type: ignore[method-assign]
        # The HTTP channel was the transport's producer until the upgrade.
        self.tcp.unregisterProducer()
        self.ws.attachProducer(self)
        if self.keepalive is not None:
            keepalive.enable(self.tcp, self.keepalive)
        self.session = self.make_session(self)
        self.session.start()

    def _guard(self, inner: Callable[[bytes], None]) -> Callable[[bytes], None]:
        def data_received(data: bytes) -> None:
            if self.closing:
                return
            self._unfinished += len(data)
            if self._unfinished > self.limit:
                self._too_long()
                return
            if self._reads and wsproto_idle(self.ws):
                messages = client_messages(data)
                if messages is not None:
                    # Whole text messages, read here (wsframes): as the
                    # textMessageReceived calls wsproto would make.
                    self._unfinished = 0
                    self._batch = []
                    for message in messages:
                        self._text(message)
                    batch, self._batch = self._batch, None
                    if batch and self.session is not None:
                        self.session.received(batch)
                    return
            self._delivered = False
            self._batch = []
            inner(data)
            batch, self._batch = self._batch, None
            if self._delivered:
                # Up to one read's worth of a next message is forgiven here.
                self._unfinished = 0
            if batch and self.session is not None:
                # All the messages of one read at once: the session handles
                # them within its turn budget (fair share), as a TCP read's
                # lines.
                self.session.received(batch)

        return data_received

    def _too_long(self) -> None:
        session = self.session
        self._unfinished = 0
        if session is not None:
            session.framing_error(self._error_9())

    def _error_9(self) -> ProtocolError:
        return ProtocolError(ErrorCode.LINE_TOO_LONG, f"limit {self.max_message}")

    def textMessageReceived(self, message: str) -> None:
        self._delivered = True
        self._text(message.encode("utf-8"))

    def _text(self, data: bytes) -> None:
        if self.closing or self.session is None:
            return
        if data.endswith(b"\n"):
            data = data[:-1]
        self._message(data)

    def _message(self, data: bytes) -> None:
        assert self.session is not None
        if len(data) > self.max_message:
            if self._batch:
                self.session.received(self._batch)
                self._batch = []
            self.session.framing_error(self._error_9())
        elif self._batch is not None:
            self._batch.append(data)
        else:
            self.session.received([data])

    def bytesMessageReceived(self, data: bytes | bytearray) -> None:
        self._delivered = True
        if self.closing or self.session is None:
            return
        self._message(BINARY)

    def pongReceived(self, payload: bytes) -> None:
        pass

    def connectionLost(self, reason: Failure) -> None:
        self.closing = True
        session, self.session = self.session, None
        if session is not None:
            session.lost()

    # -- the session's peer ----------------------------------------------------

    def write(self, data: bytes) -> None:
        if self.closing or self.tcp is None:
            return
        if self._fd >= 0:
            # As the line front end does (presence.server.writer): sent at
            # once when nothing is queued, instead of an epoll registration,
            # a later doWrite and an unregistration per write.
            write_now(self.tcp, self._fd, frames(data))
        else:
            self.tcp.write(frames(data))

    def close(self) -> None:
        """A close frame after what is written, then close after flushing."""
        if self.closing or self.ws is None:
            return
        self.closing = True
        # A paused streaming producer would keep loseConnection waiting.
        self.ws.detachProducer()
        try:
            self.ws.loseConnection(1000)
        except Exception:  # wsproto: the client's close frame came first
            self.tcp.loseConnection()

    def abort(self) -> None:
        self.closing = True
        if self.tcp is not None:
            self.tcp.abortConnection()

    def pause_reading(self) -> None:
        if self.tcp is not None:
            self.tcp.pauseProducing()

    def resume_reading(self) -> None:
        if self.tcp is not None and not self.closing:
            self.tcp.resumeProducing()

    # -- IPushProducer: the TCP transport's send buffer ---------------------------

    # Twisted calls pauseProducing on every write while the buffer stays
    # full: the session hears of transitions only.

    def pauseProducing(self) -> None:
        if self.session is not None and not self._paused:
            self._paused = True
            self.session.transport_paused()

    def resumeProducing(self) -> None:
        if self.session is not None and self._paused:
            self._paused = False
            self.session.transport_resumed()

    def stopProducing(self) -> None:
        pass  # connectionLost follows


class WebSocketFrontEnd:
    """twisted.web.websocket's server factory: a L{WebSocketPeer} per upgrade."""

    def __init__(self, make_session: SessionFactory, max_message: int,
                 keepalive: float | None = None) -> None:
        self.make_session = make_session
        self.max_message = max_message
        self.keepalive = keepalive

    def buildProtocol(self, request: Request) -> WebSocketPeer:
        return WebSocketPeer(
            request, self.make_session, self.max_message, self.keepalive
        )


class OriginCheckedResource(WebSocketResource):
    """The C{/ws} resource: refuses (403) origins not in C{allowed_origins}."""

    def __init__(
        self, front_end: WebSocketFrontEnd, allowed_origins: Collection[str] = ()
    ) -> None:
        super().__init__(front_end)
        self.allowed = frozenset(o.rstrip("/").lower() for o in allowed_origins)

    def render_GET(self, request: Request) -> bytes | int:
        origin = request.getHeader(b"origin")
        if self.allowed and origin is not None:
            if origin.decode("latin-1").rstrip("/").lower() not in self.allowed:
                request.setResponseCode(403)
                request.setHeader(b"content-type", b"text/plain")
                return b"origin not allowed\n"
        return super().render_GET(request)


def websocket_resource(
    make_session: SessionFactory,
    max_message: int,
    allowed_origins: Collection[str] = (),
    keepalive: float | None = None,
) -> OriginCheckedResource:
    """The resource to put at C{/ws} (see L{presence.server.web.resources}).

    C{keepalive}: the timeout from which upgraded TCP connections' keepalive
    is derived (C{--heartbeat tcp}, L{presence.wire.keepalive}), or None.
    """
    return OriginCheckedResource(
        WebSocketFrontEnd(make_session, max_message, keepalive), allowed_origins
    )
