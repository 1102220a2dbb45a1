"""Test doubles: a server on a fake clock, and clients on StringTransports.

The session's tests run over every front end: L{Harness} builds clients of
the line front end (L{FakeClient}) or, with C{frontend="websocket"}, of the
WebSocket one (L{WebSocketFakeClient}: a real HTTP upgrade and real frames,
with wsproto on the client side).  Both offer the same methods, so one test
body checks the session through either.
"""

from __future__ import annotations

from typing import Any

import orjson
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from presence.server.config import Config
from presence.server.context import Server
from presence.server.lines import LineFactory, LineProtocol
from presence.server.session import Session
from presence.server.tap import websocket_site
from presence.server.web.websocket import WebSocketPeer
from presence.wire.tokens import TokenVerifier


def one_turn(clock: Clock) -> int:
    """Run the calls due now, but not those they schedule: one reactor turn.

    (C{Clock.advance} would also run calls scheduled for now while it runs.)
    Returns how many ran.
    """
    now = clock.seconds()
    due = [call for call in clock.calls if call.getTime() <= now]
    for call in due:
        clock.calls.remove(call)
        call.called = 1
        call.func(*call.args, **call.kw)
    return len(due)


def line_factory(
    clock: Clock, config: Config | None = None, verifier: TokenVerifier | None = None
) -> LineFactory:
    """The TCP front end on a fresh L{Server}."""
    return LineFactory(Server(clock, config, verifier))


class ClientDouble:
    """What both front ends' client doubles share: events, abort, loss.

    A subclass sets C{transport} (a StringTransport) and C{connection} (what
    gets C{connectionLost}), and defines C{received}.
    """

    transport: StringTransport
    connection: Any
    lost: bool

    def received(self) -> list[dict[str, Any]]:
        raise NotImplementedError

    def events(self) -> list[tuple[int, bool, str]]:
        """The presence events received, as (user_id, online, status)."""
        return [
            (m["user_id"], m["online"], m["status"])
            for m in self.received()
            if m["type"] == "presence"
        ]

    @property
    def aborted(self) -> bool:
        return bool(self.transport.disconnected)

    def lose(self) -> None:
        """The connection goes away (the client closed it, or the close finished)."""
        if not self.lost:
            self.lost = True
            self.connection.connectionLost(Failure(ConnectionDone()))


class FakeClient(ClientDouble):
    """One connection to the protocol under test, seen from the client side."""

    def __init__(self, factory: LineFactory, host: str, port: int) -> None:
        self.transport = StringTransport(
            peerAddress=IPv4Address("TCP", host, port),
            hostAddress=IPv4Address("TCP", "10.0.0.254", 8081),
        )
        proto = factory.buildProtocol(self.transport.getPeer())
        assert isinstance(proto, LineProtocol)
        self.proto: LineProtocol = proto
        self.connection = proto
        self.proto.makeConnection(self.transport)
        # Kept here: the protocol lets go of it when the connection is lost.
        self.session: Session = proto.session
        self.lost: bool = False
        self.snapshot: list[tuple[int, bool, str]] = []

    def send(self, *messages: Any) -> None:
        """Send JSON objects (or raw bytes, as they are) in one write."""
        data = b"".join(
            m if isinstance(m, bytes) else orjson.dumps(m) + b"\n" for m in messages
        )
        self.proto.dataReceived(data)

    def received(self) -> list[dict[str, Any]]:
        """Every line written since the last call, parsed.

        The client reads after the server's reactor turn: what the server's
        outbox holds is written first (without running other calls due).
        """
        self.proto.factory.server.outbox.flush()
        data = self.transport.value()
        self.transport.clear()
        lines = data.split(b"\n")
        assert lines[-1] == b"", f"unterminated line: {data!r}"
        return [orjson.loads(line) for line in lines[:-1]]

    @property
    def closed(self) -> bool:
        return bool(self.transport.disconnecting)


class WebSocketFakeClient(ClientDouble):
    """One WebSocket connection to the server under test, client side.

    It upgrades at C{/ws} through the real HTTP channel and WebSocket
    resource, sends each JSON object as one text message, and reads the
    server's text messages back as JSON.  C{proto} is the server's peer.
    """

    def __init__(self, server: Server, host: str, port: int) -> None:
        from wsproto import ConnectionType, WSConnection
        from wsproto.events import Request

        self.transport = StringTransport(
            peerAddress=IPv4Address("TCP", host, port),
            hostAddress=IPv4Address("TCP", "10.0.0.254", 8080),
        )
        self.channel = websocket_site(server, []).buildProtocol(
            self.transport.getPeer()
        )
        assert self.channel is not None
        self.connection = self.channel
        self.channel.makeConnection(self.transport)
        self.server = server
        self.ws = WSConnection(ConnectionType.CLIENT)
        before = set(server.connections)
        self.channel.dataReceived(self.ws.send(Request(host="presence", target="/ws")))
        self._pending: list[Any] = []
        self._read()  # the 101 answer
        from wsproto.events import AcceptConnection

        accepted = self._pending.pop(0)
        assert isinstance(accepted, AcceptConnection), accepted
        (session,) = set(server.connections) - before
        peer = session.peer
        assert isinstance(peer, WebSocketPeer)
        self.proto: WebSocketPeer = peer
        self.session: Session = session
        self.lost = False
        self.snapshot: list[tuple[int, bool, str]] = []

    def _read(self) -> None:
        from wsproto.events import CloseConnection

        self.server.outbox.flush()  # the turn ends before the client reads
        data = self.transport.value()
        self.transport.clear()
        if data:
            self.ws.receive_data(data)
        for event in self.ws.events():
            if isinstance(event, CloseConnection):
                # Answer the server's close frame, as a browser does.
                self.channel.dataReceived(self.ws.send(event.response()))
            else:
                self._pending.append(event)

    def send(self, *messages: Any) -> None:
        """Send each JSON object as a text message; raw bytes are split into
        lines, one message each (a trailing unterminated part too)."""
        from wsproto.events import BytesMessage, TextMessage

        out = b""
        for m in messages:
            if isinstance(m, bytes):
                parts = m.split(b"\n")
                if parts[-1] == b"":
                    parts.pop()
                for part in parts:
                    # Bytes that are not UTF-8 can only go as a binary message.
                    out += self.ws.send(
                        TextMessage(data=part.decode())
                        if _utf8(part)
                        else BytesMessage(data=part)
                    )
            else:
                out += self.ws.send(TextMessage(data=orjson.dumps(m).decode()))
        self.channel.dataReceived(out)

    def received(self) -> list[dict[str, Any]]:
        """Every message written since the last call, parsed."""
        from wsproto.events import TextMessage

        self._read()
        events, self._pending = self._pending, []
        messages: list[dict[str, Any]] = []
        text = ""
        for event in events:
            assert isinstance(event, TextMessage), event
            text += event.data
            if event.message_finished:
                assert not text.endswith("\n"), text
                messages.append(orjson.loads(text))
                text = ""
        return messages

    @property
    def closed(self) -> bool:
        self._read()
        return bool(self.transport.disconnecting)


def _utf8(data: bytes) -> bool:
    try:
        data.decode()
    except UnicodeDecodeError:
        return False
    return True


class Harness:
    """A server on a fake clock, and a way to open connections to it.

    C{frontend} ("lines" or "websocket") is the class default unless given;
    a test case runs over the WebSocket front end by patching it.
    """

    frontend = "lines"

    def __init__(
        self, secret: bytes | None = None, frontend: str | None = None, **config: Any
    ) -> None:
        self.clock = Clock()
        self.clock.advance(1_764_000_000)
        self.factory = line_factory(
            self.clock,
            Config(**config),
            TokenVerifier(secret) if secret is not None else None,
        )
        self.server = self.factory.server
        self.registry = self.server.registry
        if frontend is not None:
            self.frontend = frontend
        self._port = 40000

    def connect(self, host: str = "192.0.2.1") -> Any:
        self._port += 1
        if self.frontend == "websocket":
            return WebSocketFakeClient(self.server, host, self._port)
        return FakeClient(self.factory, host, self._port)

    def login(self, user_id: int, friends: list[int] | None = None, **fields: Any
              ) -> Any:
        """A logged-in client; its welcome and snapshot are read into it."""
        client = self.connect()
        client.send({"user_id": user_id, "friends": friends or [], **fields})
        first = client.received()
        assert first and first[0]["type"] == "welcome", first
        client.snapshot = [
            (m["user_id"], m["online"], m["status"]) for m in first[1:]
        ]
        return client
