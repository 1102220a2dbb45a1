"""The direct writer: sends at once when nothing is queued, keeps byte order."""

from __future__ import annotations

import socket

from twisted.internet import defer, endpoints, reactor, tcp
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase

from presence.server import writer


class Sink(Protocol):
    def __init__(self) -> None:
        self.data = bytearray()
        self.expected = 0
        self.done: defer.Deferred[None] = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        if self.expected and len(self.data) >= self.expected and not self.done.called:
            self.done.callback(None)


class Held(Protocol):
    """The server side: it only holds on to its transport."""

    connected_d: defer.Deferred[Held]

    def connectionMade(self) -> None:
        self.connected_d.callback(self)


class DirectWriterTests(TestCase):
    timeout = 30

    @defer.inlineCallbacks
    def connect(self):
        made: defer.Deferred[Held] = defer.Deferred()

        def build() -> Held:
            p = Held()
            p.connected_d = made
            return p

        listen = endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
        port = yield listen.listen(Factory.forProtocol(build))
        self.addCleanup(port.stopListening)
        sink = Sink()
        where = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        yield endpoints.connectProtocol(where, sink)
        server = yield made
        self.addCleanup(server.transport.abortConnection)
        return server, sink

    @defer.inlineCallbacks
    def test_supported_on_this_twisted(self):
        """The installed Twisted's TCP transports have what the writer relies on.

        If this fails after a Twisted upgrade, every write goes through
        transport.write: correct but slower.  Adapt presence/writer.py.
        """
        server, _ = yield self.connect()
        self.assertTrue(writer.supported(server.transport))

    @defer.inlineCallbacks
    def test_direct_fd(self):
        """direct_fd gives the socket's descriptor, and leaves the two
        buffer attributes the writer reads on the instance, at the values
        Twisted starts with (so that reading them is not a class lookup)."""
        server, _ = yield self.connect()
        t = server.transport
        self.assertNotIn("dataBuffer", vars(t))
        self.assertEqual(writer.direct_fd(t), t.fileno())
        self.assertEqual((vars(t)["dataBuffer"], vars(t)["disconnecting"]), (b"", 0))

    @defer.inlineCallbacks
    def test_sends_at_once(self):
        """A write on an idle TCP connection leaves nothing queued in Twisted."""
        server, sink = yield self.connect()
        self.assertIsInstance(server.transport, tcp.Server)
        writer.write_now(server.transport, server.transport.fileno(), b"hello\n")
        self.assertEqual(server.transport.dataBuffer, b"")
        self.assertEqual(server.transport._tempDataLen, 0)
        sink.expected = 6
        yield sink.done
        self.assertEqual(bytes(sink.data), b"hello\n")

    @defer.inlineCallbacks
    def test_order_kept_when_peer_stalls(self):
        """With a peer that stops reading, bytes still arrive whole and in order."""
        server, sink = yield self.connect()
        # A small send buffer, so that the kernel refuses most of the bytes.
        server.transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        sink.transport.pauseProducing()
        lines = [b"%06d:" % i + b"x" * 1000 + b"\n" for i in range(3000)]
        for line in lines:
            writer.write_now(server.transport, server.transport.fileno(), line)
        # The kernel buffers filled up: the rest is queued in Twisted.
        self.assertTrue(server.transport._tempDataLen or server.transport.dataBuffer)
        sink.expected = sum(map(len, lines))
        server.transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        sink.transport.resumeProducing()
        yield sink.done
        self.assertEqual(bytes(sink.data), b"".join(lines))
        # Drained, both of Twisted's buffers are empty again (what the writer
        # takes for "nothing queued"), and the next write goes out at once.
        self.assertEqual(
            (server.transport.dataBuffer, server.transport._tempDataLen), (b"", 0)
        )
        sink.expected += 4
        sink.done = defer.Deferred()
        writer.write_now(server.transport, server.transport.fileno(), b"end\n")
        self.assertEqual(
            (server.transport.dataBuffer, server.transport._tempDataLen), (b"", 0)
        )
        yield sink.done
        self.assertEqual(bytes(sink.data[-4:]), b"end\n")


class FallbackTests(SynchronousTestCase):
    def test_other_transports(self) -> None:
        """Transports that are not plain TCP servers are not written to directly."""
        self.assertFalse(writer.supported(StringTransport()))
        self.assertEqual(writer.direct_fd(StringTransport()), -1)
