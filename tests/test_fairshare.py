"""End to end: one client's burst does not hold the server (fair share).

User 1 has 500 watchers and writes 1,000 status changes in one write.  The
server handles them over many turns and reads user 1's socket more slowly
meanwhile; a bystander's ping is answered long before the burst is through,
and every watcher still gets every change, in order.  The test checks order
and counts, never a time.
"""

from __future__ import annotations

import resource
import socket

import orjson
from conftest import ServerProcess, StartServer
from sockets import LineSocket

WATCHERS = 500
CHANGES = 1000


def raise_nofile(want: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))


class RawWatcher:
    """A watcher read by hand: what has arrived so far, without waiting."""

    def __init__(self, server: ServerProcess, uid: int) -> None:
        self.sock = socket.create_connection((server.host, server.port), timeout=30)
        self.sock.sendall(orjson.dumps({"user_id": uid, "friends": [1]}) + b"\n")
        self.buffer = b""
        self.texts: list[str] = []

    def read(self, block: bool) -> None:
        """Read once (waiting if C{block}); record status texts of user 1."""
        self.sock.setblocking(block)
        try:
            data = self.sock.recv(1 << 20)
        except BlockingIOError:
            return
        assert data, "connection closed"
        *lines, self.buffer = (self.buffer + data).split(b"\n")
        for line in lines:
            message = orjson.loads(line)
            if message.get("type") == "presence" and message.get("online"):
                self.texts.append(message["text"])

    def drain_now(self) -> None:
        before = -1
        while before != len(self.texts) or self.buffer:
            before = len(self.texts)
            self.read(block=False)
            if before == len(self.texts):
                break


def test_burst_does_not_hold_the_server(
    start_server: StartServer,
) -> None:
    """A bystander's ping is answered before most of a 1,000-change burst to
    500 watchers has gone out; all watchers get all changes in order."""
    raise_nofile(WATCHERS + 256)
    server = start_server(
        "--port", "tcp:0:interface=127.0.0.1:backlog=1024", "--max-per-ip", "2000",
        "--timeout", "300",
    )
    watchers = [LineSocket(server.host, server.port) for _ in range(WATCHERS)]
    try:
        for i, w in enumerate(watchers):
            w.login(100 + i, [1])
        flooder = LineSocket(server.host, server.port)
        flooder.login(1)
        bystander = LineSocket(server.host, server.port)
        bystander.login(2)
        sample = RawWatcher(server, 99)
        while not sample.texts:
            sample.read(block=True)  # user 1 came online
        sample.texts.clear()
        for w in watchers:
            assert w.presence()["text"] == ""
        burst = b"".join(
            orjson.dumps({"type": "status", "status": "away", "text": str(i)}) + b"\n"
            for i in range(CHANGES)
        )
        flooder.sock.sendall(burst)
        bystander.send({"type": "ping"})
        assert bystander.recv()["type"] == "pong"
        sample.drain_now()
        # The ping was answered with most of the burst still to go out.
        assert len(sample.texts) < CHANGES // 2, len(sample.texts)
        while len(sample.texts) < CHANGES:
            sample.read(block=True)
        expected = [str(i) for i in range(CHANGES)]
        assert sample.texts == expected
        for w in watchers:
            assert [w.presence()["text"] for _ in range(CHANGES)] == expected
    finally:
        for w in watchers:
            w.close()
