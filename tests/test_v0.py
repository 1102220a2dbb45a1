"""End-to-end: the original demo's own client (protocol v0) against presence.

L{democlient.tcp_client} behaves byte for byte like the demo's Go client:
login with no terminator, one 256-byte read per second, the "msg" rule.  The
scenario is the demo's own test (``client/client_test.go``), with its timings
and counts.  PROTOCOL.md, "Protocol v0", is the contract.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from conftest import ServerProcess, StartServer
from democlient import DemoResult, marshal_login, tcp_client
from pytest import MonkeyPatch, fixture, mark
from sockets import LineSocket

PONG = b'{"msg":"are you still there?","error":0}'
ONLINE = b'{"online":true}'
OFFLINE = b'{"online":false}'


def closed_port() -> int:
    """A loopback port nobody listens on."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class V0Socket:
    """A v0 connection driven step by step: each C{ask} writes the login (no
    terminator, one write) and reads the one reply, as the demo client does,
    but without its sleeps, so that a test decides what happens between."""

    def __init__(self, server: ServerProcess, user_id: int, friends: list[int]):
        self.sock = socket.create_connection((server.host, server.port), timeout=10)
        self.request = marshal_login(user_id, friends)

    def ask(self) -> bytes:
        """Send the login, return the reply: exactly one JSON value."""
        self.sock.sendall(self.request)
        return self.read_one()

    def read_one(self) -> bytes:
        data = self.sock.recv(256)
        assert data, "the server closed the connection"
        json.loads(data)  # exactly one value, or this raises
        assert not data.endswith(b"\n"), data
        return data

    def nothing_waiting(self) -> bool:
        """Whether no byte has arrived unasked."""
        self.sock.setblocking(False)
        try:
            self.sock.recv(256)
        except BlockingIOError:
            return True
        finally:
            self.sock.setblocking(True)
            self.sock.settimeout(10)
        return False

    def expect_closed(self) -> None:
        assert self.sock.recv(256) == b""

    def close(self) -> None:
        self.sock.close()


def settled(line: LineSocket) -> None:
    """Wait until the server has finished what it was doing: a v1 ping is
    answered only after every earlier write of the server's reactor turn."""
    line.roundtrip()


def test_demo_scenario(server: ServerProcess) -> None:
    """The demo's test, run as it runs it: five clients at once.

    user1 [2,3,4] for 5 s: 2 online and 2 offline; user5 [2,3,4,5]: error 6;
    user2 [1,3,4] from 0.3 s for 1 s: 1 online; user3 [1,4] from 1.3 s for
    2 s: 1 online; a closed port: error 8 at once.
    """
    host, port = server.host, server.port
    cases: dict[str, Callable[[], DemoResult]] = {
        "refused": lambda: tcp_client(host, closed_port(), 1, [2, 3, 4], 0, 1),
        "user1": lambda: tcp_client(host, port, 1, [2, 3, 4], 0, 5),
        "user5": lambda: tcp_client(host, port, 5, [2, 3, 4, 5], 0, 1),
        "user2": lambda: tcp_client(host, port, 2, [1, 3, 4], 0.3, 1),
        "user3": lambda: tcp_client(host, port, 3, [1, 4], 1.3, 2),
    }
    with ThreadPoolExecutor(len(cases)) as pool:
        futures = {name: pool.submit(case) for name, case in cases.items()}
        got = {name: f.result(30) for name, f in futures.items()}

    def counts(name: str) -> tuple[int, int, int]:
        r = got[name]
        return r.offlines, r.onlines, r.error

    # (offlines, onlines, error), as client_test.go wants them.
    assert counts("refused") == (0, 0, 8), got["refused"]
    assert counts("user1") == (2, 2, 0), got["user1"]
    assert counts("user5") == (0, 0, 6), got["user5"]
    assert counts("user2") == (0, 1, 0), got["user2"]
    assert counts("user3") == (0, 1, 0), got["user3"]
    # The demo's exact replies, one JSON value per read.
    assert got["user5"].reads == [
        b'{"msg":"[server] You can\'t be friend with yourself","error":6}']
    assert got["user2"].reads == [ONLINE]
    assert got["user3"].reads == [ONLINE, PONG]
    assert got["user1"].reads[0] == PONG
    assert sorted(got["user1"].reads[1:]) == sorted(
        [ONLINE, ONLINE, OFFLINE, OFFLINE])
    assert got["user1"].ended == "stayalive", got["user1"]


def test_closed_port_refused() -> None:
    """Against a port nobody listens on the demo client returns error 8 from
    the dial (without waiting for stayalive), with no counts."""
    result = tcp_client("127.0.0.1", closed_port(), 1, [2, 3, 4], 0, 5)
    assert (result.offlines, result.onlines, result.error) == (0, 0, 8)
    assert result.ended.startswith("dial"), result
    assert "refused" in result.pong.msg, result


def test_v0_and_v1_watch_each_other(server: ServerProcess) -> None:
    """A v0 and a v1 session see each other: the v1 session gets presence
    events for the v0 user (status online); the v0 session gets one
    {"online": B} per change of the v1 user's online state, only when it
    asks, and nothing for a status change."""
    v1 = LineSocket(server.host, server.port)
    v1.login(10, [11])
    observer = LineSocket(server.host, server.port)  # watches both
    observer.login(12, [10, 11])
    assert observer.presence()["user_id"] == 10

    v0 = V0Socket(server, 11, [10])
    assert v0.ask() == ONLINE  # the snapshot: 10 is online
    event = v1.presence()
    assert (event["user_id"], event["online"], event["status"]) == (11, True, "online")
    assert observer.presence()["user_id"] == 11
    assert v0.ask() == PONG

    v1.send({"type": "status", "status": "away", "text": "lunch"})
    assert observer.presence()["status"] == "away"
    settled(observer)
    assert v0.nothing_waiting()
    assert v0.ask() == PONG  # a status change has no v0 form

    v1.send({"type": "bye"})
    v1.expect_closed()
    assert observer.presence()["online"] is False
    settled(observer)
    assert v0.nothing_waiting()  # never anything unasked
    assert v0.ask() == OFFLINE
    assert v0.ask() == PONG

    v1 = LineSocket(server.host, server.port)
    v1.login(10, [11])
    assert v1.presence()["user_id"] == 11  # the snapshot holds the v0 user
    assert observer.presence()["online"] is True
    assert v0.ask() == ONLINE

    v0.close()
    gone = v1.presence()
    assert (gone["user_id"], gone["online"]) == (11, False)
    v1.close()
    observer.close()


def test_v0_friends_replaced(server: ServerProcess) -> None:
    """A repeated v0 login with other friends replaces the watch list: a
    newly watched friend who is online is reported on the next asks."""
    v1 = LineSocket(server.host, server.port)
    v1.login(21, [])
    v0 = V0Socket(server, 20, [22])
    assert v0.ask() == PONG
    v0.request = marshal_login(20, [21, 22])
    assert v0.ask() == ONLINE  # queued while the login was handled
    assert v0.ask() == PONG
    v0.close()
    v1.close()


def test_v0_queue_overflow(start_server: StartServer) -> None:
    """More than --max-buffer bytes of events waiting for a v0 client that
    does not ask: error 14, then the server closes the connection."""
    server = start_server("--max-buffer", "64")  # four events fit, not five
    v0 = V0Socket(server, 30, [31, 32, 33, 34, 35])
    assert v0.ask() == PONG
    observer = LineSocket(server.host, server.port)
    observer.login(36, [31, 32, 33])
    for uid in (31, 32, 33):
        friend = LineSocket(server.host, server.port)
        friend.login(uid, [])
        friend.send({"type": "bye"})
        friend.expect_closed()
        assert observer.presence()["online"] is True
        assert observer.presence()["online"] is False
    settled(observer)
    # Six events (90 bytes) would wait: the connection was cut at the fifth.
    v0.sock.sendall(v0.request)  # as the demo client's next round does
    assert v0.read_one() == b'{"msg":"[server] Slow consumer","error":14}'
    v0.expect_closed()
    server.wait_for_log(r"user 30 exits: slow consumer")
    observer.close()


def test_v0_demo_client_overflow(start_server: StartServer) -> None:
    """The demo client itself ends with error 14 when more events arrive
    between two of its rounds than --max-buffer holds."""
    server = start_server("--max-buffer", "64")
    friends = [41, 42, 43, 44, 45]
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(tcp_client, server.host, server.port, 40, friends, 0, 4)
        server.wait_for_log(r"user 40 joins")
        for uid in friends:
            friend = LineSocket(server.host, server.port)
            friend.login(uid, [])
            friend.close()
        result = future.result(30)
    assert result.error == 14, result
    assert result.reads[-1] == b'{"msg":"[server] Slow consumer","error":14}'


def test_v0_non_fatal_error(server: ServerProcess) -> None:
    """A repeated login with a bad friends list is answered by the error in
    the demo's form, and the connection stays open (the old list stays)."""
    v1 = LineSocket(server.host, server.port)
    v1.login(51, [])
    v0 = V0Socket(server, 50, [51])
    assert v0.ask() == ONLINE
    good = v0.request
    v0.request = marshal_login(50, [51, 50])
    assert v0.ask() == (
        b'{"msg":"[server] You can\'t be friend with yourself","error":6}')
    v0.request = good
    assert v0.ask() == PONG
    v1.send({"type": "bye"})
    v1.expect_closed()
    server.wait_for_log(r"user 51 exits")
    assert v0.ask() == OFFLINE  # still watching 51: the old list stayed
    v0.close()


def test_v0_other_messages(server: ServerProcess) -> None:
    """Any message on a v0 connection gets exactly one reply: a v1 ping or a
    status message, too."""
    v0 = V0Socket(server, 52, [])
    assert v0.ask() == PONG
    v0.sock.sendall(b'{"type":"ping"}')
    assert v0.read_one() == PONG
    v0.sock.sendall(b'{"type":"status","status":"away"}')
    assert v0.read_one() == PONG
    v0.sock.sendall(b'{"type":"nonsense"}')
    assert v0.read_one() == b'{"msg":"[server] Invalid message","error":13}'
    assert v0.ask() == PONG
    v0.close()


def test_v0_idle_timeout(start_server: Callable[..., ServerProcess]) -> None:
    """A v0 client silent for the timeout is disconnected with nothing sent
    (no ping, no error line), as the demo did; the log says error 1."""
    server = start_server("--timeout", "1")
    v0 = V0Socket(server, 53, [])
    assert v0.ask() == PONG
    v0.sock.settimeout(10)
    assert v0.sock.recv(256) == b""  # closed, and nothing came before
    server.wait_for_log(r"user 53 exits: client timeout")


def test_v0_shutdown(server: ServerProcess) -> None:
    """On SIGTERM a v0 client gets error 15 in the demo's form (written at
    once: the client finds it on its next read), then the connection ends."""
    v0 = V0Socket(server, 54, [])
    assert v0.ask() == PONG
    server.stop()
    assert v0.read_one() == b'{"msg":"[server] Server shutting down","error":15}'
    v0.expect_closed()


# -- the demo client itself, against a scripted server --------------------------


class ScriptedServer:
    """A loopback server that answers each message of one client with the
    next of C{replies} (each in one write), and records what it received."""

    def __init__(self, replies: list[bytes], message_size: int) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.replies = replies
        self.size = message_size
        self.received: list[bytes] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        conn.settimeout(10)
        with conn:
            for reply in self.replies:
                message = b""
                while len(message) < self.size:
                    data = conn.recv(self.size - len(message))
                    if not data:
                        return
                    message += data
                self.received.append(message)
                conn.sendall(reply)
            conn.recv(1)  # until the client closes

    def close(self) -> None:
        self.thread.join(10)
        self.listener.close()


@fixture
def quick_rounds(monkeypatch: MonkeyPatch) -> None:
    monkeypatch.setattr("democlient.ROUND", 0.05)


@mark.usefixtures("quick_rounds")
def test_demo_client_counts_and_error() -> None:
    """The demo client writes its login, exactly as json.Marshal does, once
    per round; counts {"online": B} replies, takes a msg with error 0 as a
    pong, and ends with the code of any other error."""
    login = b'{"user_id":1,"friends":[2,3,4]}'
    replies = [ONLINE, PONG, OFFLINE, ONLINE,
               b'{"msg":"[server] Invalid UserID","error":5}', ONLINE]
    server = ScriptedServer(replies, len(login))
    result = tcp_client("127.0.0.1", server.port, 1, [2, 3, 4], 0, 3)
    server.close()
    assert server.received == [login] * 5
    assert (result.offlines, result.onlines, result.error) == (1, 2, 5)
    assert result.ended == "error 5"
    assert result.pong.msg == "[server] Invalid UserID"


@mark.usefixtures("quick_rounds")
def test_demo_client_two_values_in_one_read() -> None:
    """A read holding two JSON values does not parse: the client stops
    counting, without an error code (as the Go client does)."""
    login = marshal_login(7, [8])
    server = ScriptedServer([ONLINE, ONLINE + OFFLINE, ONLINE], len(login))
    result = tcp_client("127.0.0.1", server.port, 7, [8], 0, 1)
    server.close()
    assert server.received == [login] * 2
    assert (result.offlines, result.onlines, result.error) == (0, 1, 0)
    assert result.ended.startswith("unmarshal")


@mark.usefixtures("quick_rounds")
def test_demo_client_msg_rule() -> None:
    """Any read containing "msg" is parsed as {msg, error}, whatever else it
    holds; a v1 presence line is parsed as {online} and counted."""
    login = marshal_login(1, [2])
    replies = [
        b'{"type":"presence","user_id":2,"online":true,"status":"away"}\n',
        b'{"type":"ping","msg":"are you still there?"}\n',
        b'{"online":true,"msg":"x","error":0}',
        b'{"Online":false}',
        b'{"msg":"[server] Slow consumer","error":14}',
    ]
    server = ScriptedServer(replies, len(login))
    result = tcp_client("127.0.0.1", server.port, 1, [2], 0, 3)
    server.close()
    assert (result.offlines, result.onlines, result.error) == (1, 1, 14)
