"""Choose a WebSocket library by measurement: memory per idle session and
server CPU per delivery, for Twisted's own twisted.web.websocket (on wsproto)
and autobahn, with plain TCP lines as the floor.

    python tools/ws_measure.py --lib twisted --connections 5000 --rounds 40
    python tools/ws_measure.py --lib autobahn --connections 5000 --rounds 40
    python tools/ws_measure.py --lib tcp --connections 5000 --rounds 40
    python tools/ws_measure.py --lib adapter --connections 5000 --rounds 40
    python tools/ws_measure.py --lib all          # the four, one after another

"adapter" is presence's own WebSocket front end on twisted.web.websocket
(presence.server.web.websocket), with a stand-in session.

The server is a presence stand-in in a child process (pinned to CPU 0 when
there are several): it accepts connections (WebSocket upgrade at /ws, or TCP
lines) and keeps them in a set; a text message "fan" from any connection
makes it send one small presence JSON message to every connection.  This
process (pinned to the other CPUs) opens the connections with raw sockets and
a hand-written handshake (its own cost stays out of the server's figures),
reads the server's RSS from /proc before and after opening them, then sends
"fan" --rounds times, waiting each time until every connection has its
message, and reads the server's CPU time (utime+stime) from /proc.

Figures: RSS per idle session = (RSS with N open - RSS with 1 open) / N;
CPU per delivery = CPU time over all rounds / (rounds * N).  Loopback only;
bounded in time (connections are opened at about 2,000/s).
"""

from __future__ import annotations

import argparse
import base64
import os
import resource
import selectors
import socket
import subprocess
import sys
import time

from presence.bench.launch import rss_kib

MESSAGE = '{"type":"presence","user_id":2,"online":true,"status":"away","text":"lunch"}'

SERVER = r'''
import sys
from twisted.internet import epollreactor
epollreactor.install()
from twisted.internet import reactor

lib = sys.argv[1]
MESSAGE = sys.argv[2]
peers = set()

if lib == "twisted":
    from twisted.web.resource import Resource
    from twisted.web.server import Site
    from twisted.web.websocket import WebSocketResource

    class Peer:
        transport = None

        def negotiationStarted(self, transport):
            self.transport = transport
            peers.add(self)

        def negotiationFinished(self):
            pass

        def textMessageReceived(self, text):
            if text == "fan":
                for p in list(peers):
                    p.transport.sendTextMessage(MESSAGE)

        def bytesMessageReceived(self, data):
            pass

        def pongReceived(self, payload):
            pass

        def connectionLost(self, reason):
            peers.discard(self)

    class Factory:
        def buildProtocol(self, request):
            return Peer()

    root = Resource()
    root.putChild(b"ws", WebSocketResource(Factory()))
    factory = Site(root)
    factory.noisy = False
    factory.log = lambda request: None

elif lib == "adapter":
    # presence's own front end (presence.server.web.websocket): frames built
    # from the bytes and written to the TCP transport, the request dropped
    # after the upgrade.
    from twisted.web.server import Site
    from presence.server.web.resources import web_root
    from presence.server.web.websocket import websocket_resource

    line = MESSAGE.encode() + b"\n"

    class Session:
        def __init__(self, peer):
            self.peer = peer
            peers.add(self)

        def start(self):
            pass

        def received(self, messages):
            if b"fan" in messages:
                for p in list(peers):
                    p.peer.write(line)

        def framing_error(self, error):
            self.peer.abort()

        def lost(self):
            peers.discard(self)

        def transport_paused(self):
            pass

        def transport_resumed(self):
            pass

    factory = Site(web_root(websocket_resource(Session, 1 << 20)))
    factory.log = lambda request: None

elif lib == "autobahn":
    from autobahn.twisted.websocket import (
        WebSocketServerFactory, WebSocketServerProtocol)

    payload = MESSAGE.encode()

    class Peer(WebSocketServerProtocol):
        def onOpen(self):
            peers.add(self)

        def onMessage(self, data, is_binary):
            if data == b"fan":
                for p in list(peers):
                    p.sendMessage(payload, False)

        def onClose(self, was_clean, code, reason):
            peers.discard(self)

    factory = WebSocketServerFactory()
    factory.protocol = Peer

else:  # tcp lines: the floor
    from twisted.internet.protocol import Factory
    from twisted.protocols.basic import LineOnlyReceiver

    line = MESSAGE.encode() + b"\n"

    class Peer(LineOnlyReceiver):
        delimiter = b"\n"

        def connectionMade(self):
            peers.add(self)

        def lineReceived(self, data):
            if data == b"fan":
                for p in list(peers):
                    p.transport.write(line)

        def connectionLost(self, reason):
            peers.discard(self)

    factory = Factory.forProtocol(Peer)

factory.noisy = False
port = reactor.listenTCP(0, factory, backlog=4096, interface="127.0.0.1")
print(port.getHost().port, flush=True)
reactor.run()
'''




def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def mask_frame(payload: bytes) -> bytes:
    """A client's masked text frame (payload under 126 bytes)."""
    key = os.urandom(4)
    masked = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return bytes([0x81, 0x80 | len(payload)]) + key + masked


def open_one(port: int, websocket: bool) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if websocket:
        key = base64.b64encode(os.urandom(16)).decode()
        s.sendall(
            (
                "GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                f"Sec-WebSocket-Key: {key}\r\n\r\n"
            ).encode()
        )
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = s.recv(4096)
            if not chunk:
                raise RuntimeError("closed during the handshake")
            answer += chunk
        if not answer.startswith(b"HTTP/1.1 101"):
            raise RuntimeError(answer.decode(errors="replace"))
        if not answer.endswith(b"\r\n\r\n"):
            raise RuntimeError("data after the handshake")
    s.setblocking(False)
    return s


def measure(lib: str, connections: int, rounds: int) -> dict[str, float]:
    websocket = lib != "tcp"
    cpus = os.cpu_count() or 1
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER, lib, MESSAGE], stdout=subprocess.PIPE, text=True
    )
    try:
        if cpus > 1:
            os.sched_setaffinity(server.pid, {0})
            os.sched_setaffinity(0, set(range(1, cpus)))
        assert server.stdout is not None
        port = int(server.stdout.readline())
        control = open_one(port, websocket)
        time.sleep(0.5)
        base = rss_kib(server.pid)
        socks = [open_one(port, websocket) for _ in range(connections)]
        time.sleep(1.0)
        loaded = rss_kib(server.pid)
        everyone = [*socks, control]
        frame_len = len(MESSAGE) + (2 if websocket else 1)
        fan = mask_frame(b"fan") if websocket else b"fan\n"
        selector = selectors.DefaultSelector()
        for s in everyone:
            selector.register(s, selectors.EVENT_READ)
        cpu_before = cpu_seconds(server.pid)
        start = time.monotonic()
        for _ in range(rounds):
            control.send(fan)
            missing = {s.fileno(): frame_len for s in everyone}
            while missing:
                for key, _events in selector.select(timeout=30):
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    data = sock.recv(65536)
                    if not data:
                        raise RuntimeError("server closed a connection")
                    left = missing.get(sock.fileno(), 0) - len(data)
                    if left <= 0:
                        missing.pop(sock.fileno(), None)
                    else:
                        missing[sock.fileno()] = left
        elapsed = time.monotonic() - start
        cpu = cpu_seconds(server.pid) - cpu_before
        for s in everyone:
            s.close()
        deliveries = rounds * (connections + 1)
        return {
            "rss_base_kib": base,
            "rss_loaded_kib": loaded,
            "kib_per_session": (loaded - base) / connections,
            "cpu_us_per_delivery": cpu / deliveries * 1e6,
            "deliveries_per_s": deliveries / elapsed,
        }
    finally:
        server.terminate()
        server.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lib",
                        choices=["twisted", "adapter", "autobahn", "tcp", "all"],
                        default="all")
    parser.add_argument("--connections", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=40)
    args = parser.parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = args.connections * 2 + 100
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
    libs = (
        ["tcp", "twisted", "adapter", "autobahn"] if args.lib == "all" else [args.lib]
    )
    print(f"{'library':<10} {'KiB/idle session':>17} {'µs CPU/delivery':>16} "
          f"{'deliveries/s':>13}")
    for lib in libs:
        r = measure(lib, args.connections, args.rounds)
        print(
            f"{lib:<10} {r['kib_per_session']:>17.2f} {r['cpu_us_per_delivery']:>16.2f}"
            f" {r['deliveries_per_s']:>13.0f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
