"""End to end: the server's limits, with real sockets.

Each limit refuses with the error PROTOCOL.md gives it, closes only the
offending connection, and leaves the server serving everybody else.
"""

from __future__ import annotations

import socket
import time
from typing import Any

import orjson
from conftest import ServerProcess, StartServer
from sockets import Closed, LineSocket, wait_until


def login_ok(server: ServerProcess, uid: int, friends: list[int] | None = None,
             **kw: Any) -> LineSocket:
    client = LineSocket(server.host, server.port, **kw)
    client.login(uid, friends)
    return client


# -- connections ---------------------------------------------------------------


def test_max_connections(start_server: StartServer) -> None:
    """Past --max-connections a new connection gets error 16 and is closed;
    when one closes, a new connection is accepted again."""
    server = start_server("--max-connections", "3")
    clients = [login_ok(server, uid) for uid in (1, 2, 3)]
    try:
        with LineSocket(server.host, server.port) as extra:
            error = extra.expect_error(16)
            assert error["msg"].startswith("Too many connections")
        # The others are unaffected.
        for client in clients:
            client.roundtrip()
        clients.pop().close()
        server.wait_for_log(r"user 3 exits")
        with login_ok(server, 4, [1]) as again:
            assert again.presence()["user_id"] == 1
    finally:
        for client in clients:
            client.close()


def test_max_per_ip(start_server: StartServer) -> None:
    """Past --max-per-ip, a source address gets error 16; other addresses do
    not, and a closed connection frees its place."""
    server = start_server("--max-per-ip", "2")
    first = login_ok(server, 1, source="127.0.0.1")
    second = login_ok(server, 2, source="127.0.0.1")
    try:
        with LineSocket(server.host, server.port, source="127.0.0.1") as extra:
            extra.expect_error(16)
        with login_ok(server, 3, [1], source="127.0.0.2") as elsewhere:
            assert elsewhere.presence()["user_id"] == 1
        second.close()
        server.wait_for_log(r"user 2 exits")
        with login_ok(server, 4, source="127.0.0.1") as again:
            again.roundtrip()
        first.roundtrip()
    finally:
        first.close()
        second.close()


def test_max_sessions(start_server: StartServer) -> None:
    """Past --max-sessions, a login of that user gets error 16; the user's
    other sessions stay logged in and keep receiving events."""
    server = start_server("--max-sessions", "2")
    with LineSocket(server.host, server.port) as watcher, \
            login_ok(server, 1, [2]) as a, login_ok(server, 1, [2]) as b, \
            LineSocket(server.host, server.port) as c:
        watcher.login(2, [1])
        assert watcher.presence()["user_id"] == 1
        for session in (a, b):
            assert session.presence()["online"] is True
        c.send({"user_id": 1, "friends": [2]})
        error = c.expect_error(16)
        assert "sessions" in error["msg"]
        watcher.send({"type": "status", "status": "away"})
        for session in (a, b):
            event = session.presence()
            assert (event["user_id"], event["status"]) == (2, "away")
        # Nobody was told user 1 went anywhere.
        assert watcher.roundtrip() == []
        # Another user is not limited by user 1's sessions.
        with login_ok(server, 3) as other:
            other.roundtrip()


# -- timeouts --------------------------------------------------------------------


def test_login_timeout(start_server: StartServer) -> None:
    """A connection that does not log in within --timeout gets error 1, also
    when it sent part of a line."""
    server = start_server("--timeout", "1")
    with LineSocket(server.host, server.port) as silent, \
            LineSocket(server.host, server.port) as partial:
        partial.send(b'{"user_id": 1, "fri')
        start = time.monotonic()
        silent.expect_error(1)
        partial.expect_error(1)
        assert time.monotonic() - start < 9  # generous: it happens at all
    with login_ok(server, 5) as fine:
        fine.roundtrip()


def test_blank_lines_do_not_extend_login_timeout(start_server: StartServer) -> None:
    """"no login within timeout" is error 1: blank lines before the login do
    not keep a connection that never logs in alive."""
    server = start_server("--timeout", "1")
    with LineSocket(server.host, server.port) as idler:
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            idler.send(b"\n")
            try:
                message = idler.recv(0.25)
            except TimeoutError:
                continue
            assert message["error"] == 1, message
            return
        raise AssertionError("still connected 4 s after connecting, with --timeout 1")


# -- lines -------------------------------------------------------------------------


def padded_login(uid: int, size: int) -> bytes:
    """A login line of exactly C{size} bytes (without terminator)."""
    base = orjson.dumps({"user_id": uid, "friends": []})
    assert size >= len(base)
    return base[:-1] + b" " * (size - len(base)) + b"}"


def test_max_line(start_server: StartServer) -> None:
    """A line of exactly --max-line is accepted (with \\n or \\r\\n); one byte
    more is error 9, also before its terminator arrives."""
    server = start_server("--max-line", "200")
    line = padded_login(1, 200)
    assert len(line) == 200
    with LineSocket(server.host, server.port) as exact:
        exact.send(line + b"\n")
        assert exact.recv()["type"] == "welcome"
    with LineSocket(server.host, server.port) as exact_crlf:
        exact_crlf.send(padded_login(2, 200) + b"\r\n")
        assert exact_crlf.recv()["type"] == "welcome"
    with LineSocket(server.host, server.port) as long:
        long.send(padded_login(3, 201) + b"\n")
        long.expect_error(9)
    with LineSocket(server.host, server.port) as unterminated:
        unterminated.send(b"x" * 150)
        unterminated.send(b"x" * 150)  # 300 bytes, no newline ever
        unterminated.expect_error(9)
    with LineSocket(server.host, server.port) as trickle:
        for _ in range(201):
            trickle.send(b" ")
        trickle.expect_error(9)
    # After the login too: fatal, and the user goes offline for others.
    with login_ok(server, 4, [5]) as watcher, login_ok(server, 5, [4]) as talker:
        watcher.presence()
        talker.presence()
        talker.send({"type": "status", "status": "away", "text": "x" * 300})
        talker.expect_error(9)
        event = watcher.presence()
        assert (event["user_id"], event["online"]) == (5, False)


def test_max_friends(start_server: StartServer) -> None:
    """More than --max-friends distinct ids: error 11, fatal in a login, not
    fatal in a friends update (the old list stays)."""
    server = start_server("--max-friends", "3")
    with LineSocket(server.host, server.port) as greedy:
        greedy.send({"user_id": 1, "friends": [2, 3, 4, 5]})
        greedy.expect_error(11)
    with login_ok(server, 1, [2, 3, 4, 2, 3]) as ok:  # duplicates count once
        ok.send({"type": "friends", "add": [5]})
        error = ok.recv()
        assert error["error"] == 11
        with login_ok(server, 5) as five, login_ok(server, 4):
            five.roundtrip()
            event = ok.presence()
            assert event["user_id"] == 4  # 5 was not added, 4 still watched


def test_max_watches(start_server: StartServer) -> None:
    """Past --max-watches (all sessions' lists together): error 11 naming
    the option, fatal in a login, not fatal in a friends update; a session
    that ends gives its entries back."""
    server = start_server("--max-watches", "5")
    first = login_ok(server, 1, [2, 3, 4])
    try:
        with LineSocket(server.host, server.port) as greedy:
            greedy.send({"user_id": 5, "friends": [2, 3, 4]})
            error = greedy.expect_error(11)
            assert error["msg"].endswith("(--max-watches)"), error
        with login_ok(server, 6, [2]) as six:
            six.send({"type": "friends", "add": [3, 4]})
            assert six.recv()["error"] == 11
            assert six.roundtrip() == []  # still connected, old list kept
        first.close()
        server.wait_for_log(r"user 1 exits")
        with login_ok(server, 5, [2, 3, 4]) as again:
            again.roundtrip()
    finally:
        first.close()


# -- file descriptors ------------------------------------------------------------


def test_out_of_file_descriptors(start_server: StartServer) -> None:
    """Under a 64-descriptor limit, 100 connections: those past what fits get
    error 16 or are refused, the accepted ones are served throughout, and once
    they close new logins work."""
    server = start_server(prefix=["prlimit", "--nofile=64:64"])
    server.wait_for_log(r"file limit 64 allows \d+ connections")
    socks: list[socket.socket] = []
    try:
        for _ in range(100):
            s = socket.socket()
            s.settimeout(10)
            try:
                s.connect((server.host, server.port))
            except OSError:
                s.close()
                continue
            socks.append(s)
        # Log every connection in with its own user id; count the answers.
        for i, s in enumerate(socks):
            try:
                s.sendall(orjson.dumps({"user_id": 1000 + i}) + b"\n")
            except OSError:
                pass
        welcomed, refused, dropped = [], 0, 0
        for s in socks:
            data = b""
            try:
                while b"\n" not in data:
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    data += chunk
            except OSError:
                pass
            if not data:
                dropped += 1
                continue
            first = orjson.loads(data.split(b"\n", 1)[0])
            if first["type"] == "welcome":
                welcomed.append(s)
            else:
                assert first["error"] == 16, first
                refused += 1
        assert welcomed, "nothing was accepted"
        assert refused + dropped > 0, "all 100 fitted in 64 descriptors?"
        assert len(welcomed) + refused + dropped == len(socks)
        # The accepted ones are still served.
        for s in welcomed:
            s.sendall(b'{"type": "ping"}\n')
        for s in welcomed:
            assert b'"pong"' in s.recv(4096)
    finally:
        for s in socks:
            s.close()
    # Once the connections are gone, logins work again.
    def can_log_in() -> bool:
        try:
            with LineSocket(server.host, server.port, timeout=5) as c:
                c.login(1)
                return True
        except (Closed, AssertionError, OSError):
            return False

    wait_until(can_log_in, 20, "a login after the flood")
    with login_ok(server, 2, [1]) as two, login_ok(server, 1, [2]) as one:
        assert two.presence()["user_id"] == 1
        one.roundtrip()
    assert server.proc.poll() is None
