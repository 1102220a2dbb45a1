"""End to end: a flood of connections that never log in.

1,000 connections from one address (127.0.0.2) open and say nothing.  Each is
dropped with error 1 at the login timeout, and meanwhile a normal client (from
127.0.0.1) logs in, sees its friend and gets its events.  The server listens
with backlog=2048 (see the test).
"""

from __future__ import annotations

import resource
import selectors
import socket
import time
from collections.abc import Iterator

import orjson
import pytest
from conftest import StartServer
from sockets import LineSocket

FLOOD = 1000
TIMEOUT = 2


@pytest.fixture
def many_files() -> Iterator[None]:
    """Room for the flood's descriptors in this test process."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = FLOOD + 512
    if soft != resource.RLIM_INFINITY and soft < want:
        if hard != resource.RLIM_INFINITY and hard < want:
            pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {want}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def collect(socks: list[socket.socket], limit: float) -> dict[socket.socket, bytes]:
    """Read every socket until the server closes it (or the limit passes)."""
    received = {s: b"" for s in socks}
    sel = selectors.DefaultSelector()
    for s in socks:
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
    open_ = len(socks)
    deadline = time.monotonic() + limit
    try:
        while open_ and time.monotonic() < deadline:
            for key, _ in sel.select(timeout=0.5):
                sock = key.fileobj
                if not isinstance(sock, socket.socket):
                    continue
                try:
                    data = sock.recv(4096)
                except (BlockingIOError, InterruptedError):
                    continue
                except ConnectionError:
                    data = b""
                if data:
                    received[sock] += data
                else:
                    sel.unregister(sock)
                    open_ -= 1
    finally:
        sel.close()
    return received


def test_flood_of_silent_connections(start_server: StartServer,
                                     many_files: None) -> None:
    """1,000 silent connections are all dropped with error 1 at the login
    timeout, and a normal client is served meanwhile."""
    # Twisted listens with a backlog of 50 by default: a burst of connects
    # overflows it and the kernel drops SYNs (1 s client retries).  A flood
    # test of the server, not of the kernel's queue, raises it.
    server = start_server(
        "--port", "tcp:0:interface=127.0.0.1:backlog=2048", "--timeout", str(TIMEOUT)
    )
    socks: list[socket.socket] = []
    try:
        for _ in range(FLOOD):
            s = socket.socket()
            s.bind(("127.0.0.2", 0))
            s.settimeout(10)
            s.connect((server.host, server.port))
            socks.append(s)
        # Served during the flood: log in, see a friend, get live events.
        with LineSocket(server.host, server.port) as friend, \
                LineSocket(server.host, server.port) as me:
            friend.login(2, [1])
            me.login(1, [2])
            assert me.presence()["user_id"] == 2
            friend.send({"type": "status", "status": "away", "text": "flooded"})
            event = me.presence()
            assert (event["user_id"], event["status"], event["text"]) == \
                (2, "away", "flooded")
            assert friend.presence()["user_id"] == 1
        received = collect(socks, limit=60)
        answers: dict[tuple[int | None, ...], int] = {}
        for data in received.values():
            lines = data.splitlines()
            key = tuple(orjson.loads(line).get("error") for line in lines)
            answers[key] = answers.get(key, 0) + 1
        assert answers == {(1,): FLOOD}, answers
    finally:
        for s in socks:
            s.close()
    with LineSocket(server.host, server.port) as after:
        after.login(3)
        after.roundtrip()
    assert server.proc.poll() is None
