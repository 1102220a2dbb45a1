"""TCP keepalive for ``--heartbeat tcp``: the settings derived from the
timeout, and what the kernel reports for real loopback sockets."""

from __future__ import annotations

import socket
from typing import Any

import orjson
import twisted.test
from twisted.internet import defer, endpoints, reactor
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.server import Site

from presence.client import connect
from presence.server.config import Config
from presence.server.context import Server
from presence.server.lines import LineFactory, LineProtocol
from presence.server.session import Session
from presence.server.tap import server_endpoint, websocket_site
from presence.server.web.websocket import WebSocketPeer
from presence.wire.keepalive import Keepalive, enable, socket_of

LOGIN = orjson.dumps({"user_id": 1, "friends": [2]}) + b"\n"
LINUX_ONLY = not all(
    hasattr(socket, name)
    for name in ("TCP_KEEPIDLE", "TCP_KEEPINTVL", "TCP_KEEPCNT", "TCP_USER_TIMEOUT")
)


class DerivationTests(SynchronousTestCase):
    def test_default_timeout(self) -> None:
        """15 s: after 8 s of silence 7 probes 1 s apart, gone at 15 s, and
        data unacknowledged for 15,000 ms ends the connection too."""
        self.assertEqual(Keepalive.for_timeout(15), Keepalive(8, 1, 7, 15_000))

    def test_probes_fill_the_second_half(self) -> None:
        """The first probe comes after half the timeout; the probes fill the
        rest to within half an interval; the user timeout is the timeout."""
        for timeout in range(4, 3601):
            k = Keepalive.for_timeout(timeout)
            self.assertEqual(k.idle, (timeout + 1) // 2, k)
            end = k.idle + k.count * k.interval
            self.assertLessEqual(abs(end - timeout), k.interval / 2, k)
            self.assertGreaterEqual(k.count, 2, k)
            self.assertEqual(k.user_timeout_ms, timeout * 1000)
        self.assertEqual(Keepalive.for_timeout(60), Keepalive(30, 3, 10, 60_000))

    def test_short_and_fractional_timeouts(self) -> None:
        """Below 4 s every setting is at least 1 s; the user timeout keeps
        the fraction, in milliseconds."""
        self.assertEqual(Keepalive.for_timeout(1), Keepalive(1, 1, 1, 1_000))
        self.assertEqual(Keepalive.for_timeout(0.25), Keepalive(1, 1, 1, 250))
        self.assertEqual(Keepalive.for_timeout(7.5).user_timeout_ms, 7_500)

    def test_huge_timeouts_are_clamped(self) -> None:
        """Values stay within what Linux accepts."""
        k = Keepalive.for_timeout(1e9)
        self.assertEqual((k.idle, k.interval), (32767, 32767))
        self.assertEqual(k.user_timeout_ms, 2**31 - 1)

    def test_options_start_with_so_keepalive(self) -> None:
        """The first option turns keepalive on."""
        self.assertEqual(
            Keepalive.for_timeout(15).options()[0],
            (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
        )

    def test_unix_sockets_are_left_alone(self) -> None:
        """A UNIX socket, or a transport without a socket, gets nothing."""
        a, b = socket.socketpair(socket.AF_UNIX)
        self.addCleanup(a.close)
        self.addCleanup(b.close)

        class Transport:
            socket = a

        self.assertIsNone(socket_of(Transport()))
        self.assertFalse(enable(Transport(), 15))
        self.assertEqual(a.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE), 0)
        self.assertFalse(enable(object(), 15))


class Collect(Protocol):
    """A client that keeps what it reads; C{until(marker)} waits for it."""

    def __init__(self) -> None:
        self.data = b""
        self._waiting: list[tuple[bytes, defer.Deferred[bytes]]] = []

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        still = []
        for marker, d in self._waiting:
            if marker in self.data:
                d.callback(self.data)
            else:
                still.append((marker, d))
        self._waiting = still

    def until(self, marker: bytes) -> defer.Deferred[bytes]:
        d: defer.Deferred[bytes] = defer.Deferred()
        if marker in self.data:
            d.callback(self.data)
        else:
            self._waiting.append((marker, d))
        return d

    def connectionLost(self, reason: Failure | None = None) -> None:
        for _, d in self._waiting:
            d.errback(reason or Failure(Exception("lost")))
        self._waiting = []


def kernel_socket(transport: Any) -> socket.socket:
    """The socket under wrapping transports, found without their forwarding."""
    while "socket" not in vars(transport):
        transport = transport.transport
    sock = vars(transport)["socket"]
    assert isinstance(sock, socket.socket)
    return sock


def port_of(port: IListeningPort) -> int:
    address = port.getHost()
    assert isinstance(address, IPv4Address)
    return address.port


def read_options(sock: socket.socket) -> tuple[int, ...]:
    """SO_KEEPALIVE, TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT, TCP_USER_TIMEOUT."""
    tcp = socket.IPPROTO_TCP
    return (
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
        sock.getsockopt(tcp, socket.TCP_KEEPIDLE),
        sock.getsockopt(tcp, socket.TCP_KEEPINTVL),
        sock.getsockopt(tcp, socket.TCP_KEEPCNT),
        sock.getsockopt(tcp, socket.TCP_USER_TIMEOUT),
    )


class LoopbackTests(TestCase):
    """Real server sockets on port 0: the accepted socket's options."""

    timeout = 20
    if LINUX_ONLY:
        skip = "TCP_KEEPIDLE and TCP_USER_TIMEOUT are Linux's"

    def start(self, description: str, heartbeat: str = "tcp",
              web: bool = False) -> defer.Deferred[tuple[Server, IListeningPort]]:
        server = Server(reactor, Config(timeout=15, heartbeat=heartbeat))
        endpoint = server_endpoint(reactor, "port", description, 15, 100)
        factory: Site | LineFactory = (
            websocket_site(server, []) if web else LineFactory(server)
        )
        d = endpoint.listen(factory)

        def listening(port: IListeningPort) -> tuple[Server, IListeningPort]:
            self.addCleanup(port.stopListening)
            return server, port

        return d.addCallback(listening)

    @defer.inlineCallbacks
    def dial(self, port: IListeningPort, first: bytes, marker: bytes) -> Any:
        where = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port_of(port))
        client = yield endpoints.connectProtocol(where, Collect())
        self.addCleanup(client.transport.abortConnection)
        client.transport.write(first)
        data = yield client.until(marker)
        return data

    def server_socket(self, server: Server) -> socket.socket:
        (session,) = server.connections
        assert isinstance(session, Session)
        peer = session.peer
        if isinstance(peer, WebSocketPeer):
            return kernel_socket(peer.tcp)
        assert isinstance(peer, LineProtocol)
        return kernel_socket(peer.transport)

    @defer.inlineCallbacks
    def test_line_front_end(self) -> Any:
        """A TCP connection gets SO_KEEPALIVE with the derived idle time,
        interval, count and TCP_USER_TIMEOUT; the welcome says tcp."""
        server, port = yield self.start("tcp:0:interface=127.0.0.1")
        data = yield self.dial(port, LOGIN, b"\n")
        self.assertEqual(orjson.loads(data)["heartbeat"], "tcp")
        self.assertEqual(read_options(self.server_socket(server)),
                         (1, 8, 1, 7, 15_000))

    @defer.inlineCallbacks
    def test_app_heartbeat_sets_nothing(self) -> Any:
        """With --heartbeat app the socket keeps the kernel's defaults."""
        server, port = yield self.start("tcp:0:interface=127.0.0.1", "app")
        yield self.dial(port, LOGIN, b"\n")
        sock = self.server_socket(server)
        self.assertEqual(read_options(sock)[0], 0)
        self.assertEqual(read_options(sock)[4], 0)

    @defer.inlineCallbacks
    def test_behind_proxy_protocol(self) -> Any:
        """Behind a haproxy: endpoint the socket under the PROXY wrapper is
        the one set."""
        server, port = yield self.start("haproxy:tcp:0:interface=127.0.0.1")
        header = b"PROXY TCP4 203.0.113.7 127.0.0.1 5555 8081\r\n"
        yield self.dial(port, header + LOGIN, b"\n")
        self.assertEqual(read_options(self.server_socket(server)),
                         (1, 8, 1, 7, 15_000))

    @defer.inlineCallbacks
    def test_tls(self) -> Any:
        """Under TLS the socket under the TLS layer is the one set."""
        pem = FilePath(twisted.test.__file__).sibling("server.pem").path
        server, port = yield self.start(
            f"ssl:0:interface=127.0.0.1:privateKey={pem}:certKey={pem}")
        where = endpoints.clientFromString(
            reactor, f"ssl:host=127.0.0.1:port={port_of(port)}")
        client = yield endpoints.connectProtocol(where, Collect())
        self.addCleanup(client.transport.abortConnection)
        client.transport.write(LOGIN)
        data = yield client.until(b"\n")
        self.assertEqual(orjson.loads(data)["heartbeat"], "tcp")
        self.assertEqual(read_options(self.server_socket(server)),
                         (1, 8, 1, 7, 15_000))

    @defer.inlineCallbacks
    def test_websocket_front_end(self) -> Any:
        """A WebSocket connection over TCP is set once it is upgraded."""
        server, port = yield self.start("tcp:0:interface=127.0.0.1", web=True)
        upgrade = (
            b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n"
        )
        data = yield self.dial(port, upgrade, b"\r\n\r\n")
        self.assertIn(b" 101 ", data.split(b"\r\n")[0])
        self.assertEqual(read_options(self.server_socket(server)),
                         (1, 8, 1, 7, 15_000))

    @defer.inlineCallbacks
    def test_unix_socket(self) -> Any:
        """Over a UNIX socket the session works and nothing is set."""
        path = self.mktemp()
        server, _port = yield self.start(f"unix:{path}")
        where = endpoints.UNIXClientEndpoint(reactor, path)
        client = yield endpoints.connectProtocol(where, Collect())
        self.addCleanup(client.transport.abortConnection)
        client.transport.write(LOGIN)
        data = yield client.until(b"\n")
        self.assertEqual(orjson.loads(data)["heartbeat"], "tcp")
        sock = self.server_socket(server)
        self.assertEqual(sock.family, socket.AF_UNIX)
        self.assertEqual(sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE), 0)

    @defer.inlineCallbacks
    def test_client_library_sets_its_socket(self) -> Any:
        """The client library, welcomed with "heartbeat":"tcp", sets the same
        options on its own socket."""
        _server, port = yield self.start("tcp:0:interface=127.0.0.1")
        where = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port_of(port))
        session = yield connect(reactor, where, 1, [2])
        self.addCleanup(session.bye)
        conn = session._conn
        assert conn is not None
        self.assertEqual(conn.heartbeat, "tcp")
        self.assertEqual(read_options(kernel_socket(conn.transport)),
                         (1, 8, 1, 7, 15_000))
