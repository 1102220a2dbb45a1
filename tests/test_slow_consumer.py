"""End to end: a client that stops reading is cut off, and costs nobody else.

A "slow" client logs in watching a talkative friend, then never reads again
(its receive buffer is made small before it connects).  The kernel buffers a
few MB for it on loopback; past those the server holds at most --max-buffer
bytes more, or holds a paused client for at most --timeout seconds.
"""

from __future__ import annotations

import time

import pytest
from conftest import ServerProcess, StartServer
from sockets import Json, LineSocket, WebSocketSocket, rss_kib

TALKER, SLOW, WATCHER = 100, 1, 2
TEXT = 248  # "%08d" + 248 characters: 256, the longest text allowed
BATCH = 200


def change(i: int) -> Json:
    return {"type": "status", "status": "away" if i % 2 else "busy",
            "text": f"{i:08d}" + "y" * TEXT}


class Scene:
    """The talker, the slow client and a normal watcher of both."""

    def __init__(self, server: ServerProcess, header: bytes = b"",
                 websocket: tuple[str, int] | None = None) -> None:
        # header: a PROXY header each connection starts with (a haproxy: port)
        # websocket: the slow client connects there (/ws) instead
        self.talker = LineSocket(server.host, server.port)
        self.talker.send(header)
        self.talker.login(TALKER)
        if websocket is not None:
            self.slow: LineSocket = WebSocketSocket(*websocket, rcvbuf=4096)
        else:
            self.slow = LineSocket(server.host, server.port, rcvbuf=4096)
            self.slow.send(header)
        self.slow.login(SLOW, [TALKER])
        assert self.slow.presence()["user_id"] == TALKER
        self.watcher = LineSocket(server.host, server.port)
        self.watcher.send(header)
        self.watcher.login(WATCHER, [TALKER, SLOW])
        snapshot = {self.watcher.presence()["user_id"] for _ in range(2)}
        assert snapshot == {TALKER, SLOW}
        self.sent = 0
        self.bytes = 0
        self.slow_offline: Json | None = None

    def talk(self, n: int) -> None:
        """The talker makes n changes; the watcher must see each, in order."""
        lines = [change(self.sent + k) for k in range(n)]
        self.talker.send(*lines)
        self.bytes += n * 330  # about the size of each presence line
        expected = self.sent
        self.sent += n
        while expected < self.sent:
            event = self.watcher.presence()
            if event["user_id"] == SLOW:
                assert event["online"] is False, event
                assert self.slow_offline is None, "two offline events"
                self.slow_offline = event
                continue
            assert event["user_id"] == TALKER, event
            assert event["text"] == change(expected)["text"], (event, expected)
            assert event["status"] == change(expected)["status"]
            expected += 1

    def close(self) -> None:
        for sock in (self.talker, self.slow, self.watcher):
            sock.close()


@pytest.mark.parametrize("proxied", [False, True], ids=["tcp", "haproxy"])
def test_slow_consumer_cut_at_max_buffer(start_server: StartServer,
                                         proxied: bool) -> None:
    """Past --max-buffer of unsent bytes the slow client is aborted (error 14,
    "slow consumer" in the log), its user goes offline for its watchers, a
    normal watcher of the same friend misses no event, and the server's memory
    stays bounded; behind a haproxy: endpoint (PROXY v1 headers) too, where
    the transport is Twisted's PROXY wrapper."""
    if proxied:
        server = start_server("--port", "haproxy:tcp:0:interface=127.0.0.1",
                              "--max-buffer", "65536")
        scene = Scene(server, b"PROXY TCP4 203.0.113.7 127.0.0.1 5555 8081\r\n")
    else:
        server = start_server("--max-buffer", "65536")
        scene = Scene(server)
    cut_at_max_buffer(server, scene)


def test_slow_websocket_consumer_cut_at_max_buffer(start_server: StartServer
                                                   ) -> None:
    """The same for a slow client over WebSocket, whose frames go to the
    socket at once while nothing is queued (the direct writer): it is
    paused only once the kernel's buffers are full, and cut off (error 14)
    past --max-buffer from there, with the server's memory bounded."""
    server = start_server("--max-buffer", "65536",
                          "--websocket", "tcp:0:interface=127.0.0.1")
    line = server.wait_for_log(r"presence websocket listening on tcp:")
    _, host, port = line.rsplit(" ", 1)[1].rsplit(":", 2)
    cut_at_max_buffer(server, Scene(server, websocket=(host, int(port))))


def cut_at_max_buffer(server: ServerProcess, scene: Scene) -> None:
    try:
        rss_before = rss_kib(server.proc.pid)
        # At most ~20 MB toward the slow client: far past the kernel buffers.
        while scene.slow_offline is None and scene.sent < 60_000:
            scene.talk(BATCH)
        assert scene.slow_offline is not None, "the slow client was never cut off"
        growth_mib = (rss_kib(server.proc.pid) - rss_before) / 1024
        assert growth_mib < 50, f"server RSS grew by {growth_mib:.0f} MiB"
        server.wait_for_log(rf"user {SLOW} exits: slow consumer")
        # The slow client finds its connection reset or closed, after at most
        # what the kernel had buffered.
        scene.slow.expect_closed(timeout=30)
        # The others carry on.
        scene.talk(BATCH)
        assert scene.watcher.roundtrip() == []
    finally:
        scene.close()
    assert server.proc.poll() is None


def test_paused_longer_than_timeout(start_server: StartServer) -> None:
    """A client that does not read, whose queue stays far below --max-buffer,
    is cut off once it has been paused for --timeout seconds, although it
    keeps sending pings (so it is not idle)."""
    server = start_server("--timeout", "2", "--max-buffer", str(64 * 1024 * 1024))
    scene = Scene(server)
    try:
        # ~6 MB: past anything loopback's kernel buffers take (at most ~4 MB),
        # so the server's transport pauses; far below --max-buffer.
        while scene.sent < 18_000:
            scene.talk(BATCH)
            scene.slow.send({"type": "ping"})
        deadline = time.monotonic() + 20
        while scene.slow_offline is None and time.monotonic() < deadline:
            for sock in (scene.talker, scene.slow):
                sock.send({"type": "ping"})
            try:
                message = scene.watcher.recv(0.3)
            except TimeoutError:
                scene.watcher.send({"type": "ping"})
                continue
            if message["type"] == "ping":
                scene.watcher.send({"type": "pong"})
            elif message["type"] == "presence":
                assert (message["user_id"], message["online"]) == (SLOW, False)
                scene.slow_offline = message
        assert scene.slow_offline is not None, "the paused client was not cut off"
        line = server.wait_for_log(rf"user {SLOW} exits: ")
        assert "slow consumer" in line, line
        scene.slow.expect_closed(timeout=30)
        assert scene.watcher.roundtrip() == []
    finally:
        scene.close()
