"""The WebSocket front end's framing over real loopback sockets, with a fake
session behind it and twisted.web.websocket's client in front.  (The session's
own tests run over this front end too: test_protocol.)"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.trial import unittest
from twisted.web.client import Agent, readBody
from twisted.web.http_headers import Headers
from twisted.web.server import Site
from twisted.web.websocket import WebSocketClientEndpoint, WebSocketTransport

from presence.server import writer
from presence.server.web import websocket, wsframes
from presence.server.web.resources import web_root
from presence.wire.errors import ProtocolError

MAX = 1000


class FakeSession:
    """Records what the peer tells it; the test writes through its peer."""

    def __init__(self, peer: websocket.WebSocketPeer) -> None:
        self.peer = peer
        self.data: list[bytes] = []
        self.events: list[str] = []
        self.waiting: list[tuple[Any, Deferred[None]]] = []

    def wait(self, predicate: Any) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self.waiting.append((predicate, d))
        self._check()
        return d

    def _check(self) -> None:
        for item in list(self.waiting):
            if item[0](self):
                self.waiting.remove(item)
                item[1].callback(None)

    def start(self) -> None:
        pass

    def received(self, lines: list[bytes]) -> None:
        self.data.extend(lines)
        self._check()

    def framing_error(self, error: ProtocolError) -> None:
        self.events.append(f"error {int(error.code)}")
        self._check()

    def lost(self) -> None:
        self.events.append("lost")
        self._check()

    def transport_paused(self) -> None:
        self.events.append("pause")
        self._check()

    def transport_resumed(self) -> None:
        self.events.append("resume")
        self._check()


class Client:
    """twisted.web.websocket's client side, recording messages."""

    def __init__(self) -> None:
        self.messages: list[str | bytes] = []
        self.lost: Deferred[None] = Deferred()
        self.waiting: list[tuple[int, Deferred[None]]] = []
        self.transport: WebSocketTransport | None = None

    def negotiationStarted(self, transport: WebSocketTransport) -> None:
        self.transport = transport

    def negotiationFinished(self) -> None:
        pass

    def _got(self, message: str | bytes) -> None:
        self.messages.append(message)
        for item in list(self.waiting):
            if len(self.messages) >= item[0]:
                self.waiting.remove(item)
                item[1].callback(None)

    def textMessageReceived(self, message: str) -> None:
        self._got(message)

    def bytesMessageReceived(self, data: bytes) -> None:
        self._got(bytes(data))

    def pongReceived(self, payload: bytes) -> None:
        pass

    def connectionLost(self, reason: Any) -> None:
        self.lost.callback(None)

    def wait(self, n: int) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self.waiting.append((n, d))
        if len(self.messages) >= n:
            self.waiting.remove((n, d))
            d.callback(None)
        return d

    def buildProtocol(self, url: str) -> Client:
        return self


class AdapterTests(unittest.TestCase):
    allowed: tuple[str, ...] = ()

    def setUp(self) -> None:
        self.sessions: list[FakeSession] = []
        self.session_made: Deferred[None] = Deferred()

        def make_session(peer: websocket.WebSocketPeer) -> Any:
            session = FakeSession(peer)
            self.sessions.append(session)
            self.session_made.callback(None)
            return session

        resource = websocket.websocket_resource(make_session, MAX, self.allowed)
        site: Any = Site(web_root(resource))
        self.port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.url = f"127.0.0.1:{self.port.getHost().port}"  # type: ignore[attr-defined]

    @inlineCallbacks
    def connect(self) -> Any:
        client = Client()
        endpoint = WebSocketClientEndpoint.new(reactor, f"ws://{self.url}/ws")
        yield Deferred.fromCoroutine(endpoint.connect(client))
        yield self.session_made
        self.addCleanup(self.disconnect, client)
        return client, self.sessions[-1]

    def disconnect(self, client: Client) -> Deferred[None]:
        if not client.lost.called and client.transport is not None:
            client.transport.loseConnection()
        return client.lost

    @inlineCallbacks
    def test_text_messages_in(self) -> Any:
        """Each text message reaches the session as one line (without a
        trailing \\n)."""
        client, session = yield self.connect()
        client.transport.sendTextMessage('{"type":"ping"}')
        client.transport.sendTextMessage('{"type":"pong"}\n')
        client.transport.sendTextMessage('{"text":"é"}')
        yield session.wait(lambda s: len(s.data) == 3)
        self.assertEqual(
            session.data,
            [b'{"type":"ping"}', b'{"type":"pong"}', '{"text":"é"}'.encode()],
        )

    @inlineCallbacks
    def test_binary_is_not_utf8(self) -> Any:
        """A binary message reaches the session as a line that is not UTF-8."""
        client, session = yield self.connect()
        client.transport.sendBytesMessage(b'{"type":"ping"}')
        yield session.wait(lambda s: s.data)
        self.assertEqual(session.data, [websocket.BINARY])
        self.assertRaises(UnicodeDecodeError, session.data[0].decode)

    @inlineCallbacks
    def test_lines_out(self) -> Any:
        """Each JSON line the session writes is one text message, without \\n."""
        client, session = yield self.connect()
        big = '{"text":"' + "y" * 70_000 + '"}'
        session.peer.write(b'{"type":"pong"}\n')
        session.peer.write(b'{"a":1}\n{"b":"' + "é".encode() + b'"}\n')
        session.peer.write(big.encode() + b"\n" + b"x" * 200 + b"\n")
        yield client.wait(5)
        self.assertEqual(
            client.messages,
            ['{"type":"pong"}', '{"a":1}', '{"b":"é"}', big, "x" * 200],
        )

    @inlineCallbacks
    def test_write_goes_out_at_once(self) -> Any:
        """A write while nothing is queued is one write(2) on the socket, at
        once: the transport queues nothing and waits for no writability."""
        client, session = yield self.connect()
        tcp = session.peer.tcp
        sends: list[bytes] = []
        fd = tcp.fileno()

        def counting(to: int, data: bytes) -> int:
            if to == fd:
                sends.append(data)
            return os.write(to, data)

        self.patch(writer, "_send", counting)
        session.peer.write(b'{"type":"pong"}\n')
        self.assertEqual(sends, [wsframes.text_frame(b'{"type":"pong"}')])
        self.assertEqual((tcp.dataBuffer, tcp._tempDataLen), (b"", 0))
        self.assertNotIn(tcp, reactor.getWriters())
        yield client.wait(1)
        self.assertEqual(client.messages, ['{"type":"pong"}'])

    @inlineCallbacks
    def test_close_after_error(self) -> Any:
        """close() sends what was written, then a close frame; the session is told."""
        client, session = yield self.connect()
        session.peer.write(b'{"type":"error","error":15}\n')
        session.peer.close()
        yield client.lost
        self.assertEqual(client.messages, ['{"type":"error","error":15}'])
        yield session.wait(lambda s: "lost" in s.events)
        session.peer.write(b"{}\n")  # after close: ignored, no exception

    @inlineCallbacks
    def test_client_goes(self) -> Any:
        """When the client closes, the session's connection_lost is called once."""
        client, session = yield self.connect()
        client.transport.loseConnection()
        yield session.wait(lambda s: "lost" in s.events)
        self.assertEqual(session.events, ["lost"])

    @inlineCallbacks
    def test_abort(self) -> Any:
        """abort() drops the connection at once."""
        client, session = yield self.connect()
        session.peer.abort()
        yield client.lost
        yield session.wait(lambda s: "lost" in s.events)

    @inlineCallbacks
    def test_backpressure(self) -> Any:
        """A client that stops reading pauses the session once the kernel's
        buffers are full and the transport holds more than its buffer size,
        not later; the session resumes once the client reads, and every
        message arrives, in order.

        Writes go to the socket at once while nothing is queued (the
        direct writer), so the pause comes only past what loopback's kernel
        buffers take (a few MB): the server writes until it is paused, up
        to far more than those."""
        client, session = yield self.connect()
        client.transport.transport.pauseProducing()  # the client stops reading
        tcp = session.peer.tcp
        chunks = [b'{"n":%d,"text":"%s"}\n' % (n, b"z" * 60_000) for n in range(1000)]
        written = 0
        while session.events != ["pause"] and written < len(chunks):  # 60 MB
            session.peer.write(chunks[written])
            written += 1
        self.assertEqual(session.events, ["pause"])
        held = len(tcp.dataBuffer) - tcp.offset + tcp._tempDataLen
        self.assertGreater(held, tcp.bufferSize)
        self.assertLessEqual(held, tcp.bufferSize + len(chunks[0]) + 16)
        client.transport.transport.resumeProducing()
        yield session.wait(lambda s: "resume" in s.events)
        yield client.wait(written)
        self.assertEqual(
            client.messages, [c[:-1].decode() for c in chunks[:written]]
        )

    @inlineCallbacks
    def test_pause_reading(self) -> Any:
        """pause_reading stops reading from the client until resume_reading."""
        client, session = yield self.connect()
        session.peer.pause_reading()
        client.transport.sendTextMessage("{}")
        # The client's message waits in the kernel: nothing is delivered
        # while a round trip in the other direction completes.
        session.peer.write(b'{"type":"ping"}\n')
        yield client.wait(1)
        self.assertEqual(session.data, [])
        session.peer.resume_reading()
        yield session.wait(lambda s: s.data == [b"{}"])

    @inlineCallbacks
    def test_message_too_long(self) -> Any:
        """A message far over the limit is cut short: the session is told
        error 9 before the message has arrived, and never gets it."""
        client, session = yield self.connect()
        client.transport.sendTextMessage("q" * (MAX + websocket.SLACK + 10_000))
        yield session.wait(lambda s: s.events)
        self.assertEqual(session.events[0], "error 9")
        self.assertEqual(session.data, [])

    @inlineCallbacks
    def test_message_over_the_limit(self) -> Any:
        """A whole message longer than the limit is error 9 too."""
        client, session = yield self.connect()
        client.transport.sendTextMessage("q" * (MAX + 1))
        yield session.wait(lambda s: s.events)
        self.assertEqual(session.events, ["error 9"])
        self.assertEqual(session.data, [])

    @inlineCallbacks
    def test_static_files_on_the_same_port(self) -> Any:
        """/ and /presence.js are served next to /ws."""
        agent = Agent(reactor)
        for path, kind in ((b"/", b"text/html"), (b"/presence.js", b"text/javascript")):
            url = b"http://" + self.url.encode() + path
            response = yield agent.request(b"GET", url)
            body = yield readBody(response)
            self.assertEqual(response.code, 200)
            self.assertTrue(
                response.headers.getRawHeaders(b"content-type")[0].startswith(kind)
            )
            self.assertTrue(body)
        response = yield agent.request(b"GET", b"http://" + self.url.encode() + b"/x")
        yield readBody(response)
        self.assertEqual(response.code, 404)


class OriginTests(AdapterTests):
    allowed = ("https://app.example",)

    @inlineCallbacks
    def handshake(self, origin: bytes) -> Any:
        headers = Headers(
            {
                b"upgrade": [b"websocket"],
                b"connection": [b"Upgrade"],
                b"sec-websocket-version": [b"13"],
                b"sec-websocket-key": [b"dGhlIHNhbXBsZSBub25jZQ=="],
                b"origin": [origin],
            }
        )
        agent = Agent(reactor)
        response = yield agent.request(
            b"GET", b"http://" + self.url.encode() + b"/ws", headers
        )
        return response

    @inlineCallbacks
    def test_other_origin_refused(self) -> Any:
        """A handshake from an origin not in --allowed-origin gets 403."""
        response = yield self.handshake(b"https://evil.example")
        yield readBody(response)
        self.assertEqual(response.code, 403)
        self.assertEqual(self.sessions, [])
