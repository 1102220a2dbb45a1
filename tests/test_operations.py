"""Operations, end to end with real signals: SIGHUP reloads the secrets and
reopens the log without dropping anyone, SIGUSR1 is harmless, the JSON log
format, and the order of the last log lines at shutdown."""

from __future__ import annotations

import os
import re
import signal
import socket
from pathlib import Path

import orjson
from daemons import ANY_PORT, Running
from sockets import Closed, LineSocket, wait_until

from presence.wire.tokens import make_token

OLD = b"o" * 32
NEW = b"n" * 32


def login(port: int, uid: int, token: str | None = None) -> LineSocket:
    client = LineSocket("127.0.0.1", port)
    fields = {"token": token} if token is not None else {}
    client.send({"user_id": uid, "friends": [], **fields})
    return client


def logs_in(port: int, uid: int, token: str) -> bool:
    """Whether a login with C{token} is welcomed (error 10 otherwise)."""
    with login(port, uid, token) as client:
        reply = client.recv()
        if reply["type"] == "welcome":
            return True
        assert reply["error"] == 10, reply
        return False


class LineSocket6:
    """A bare IPv6 loopback connection."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("::1", port), timeout=10)


def wait_said(server: Running, text: str, times: int) -> None:
    def said() -> bool:
        return server.log.count(text) == times

    wait_until(said, what=f"{text!r} {times} times")


def alive(client: LineSocket) -> None:
    client.roundtrip()


def test_sighup_rereads_secrets(tmp_path: Path) -> None:
    """SIGHUP re-reads --secret-file: a new secret is accepted next to the
    old one, then alone; a bad file keeps the secrets in use and says why.
    The server and its sessions live on throughout."""
    secret_file = tmp_path / "secret"
    secret_file.write_bytes(OLD + b"\n")
    server = Running(["--pidfile="], ["--port", ANY_PORT, "--secret-file",
                                       str(secret_file)], tmp_path)
    try:
        old, new = make_token(OLD, 1), make_token(NEW, 2)
        session = login(server.port, 1, old)
        assert session.recv()["type"] == "welcome"
        assert not logs_in(server.port, 2, new)

        secret_file.write_bytes(NEW + b"\n" + OLD + b"\n")
        server.proc.send_signal(signal.SIGHUP)
        server.wait_for("2 secrets read from")
        assert logs_in(server.port, 2, new) and logs_in(server.port, 1, old)

        secret_file.write_bytes(NEW + b"\n")
        server.proc.send_signal(signal.SIGHUP)
        server.wait_for("1 secret read from")
        assert logs_in(server.port, 2, new) and not logs_in(server.port, 1, old)

        secret_file.write_bytes(b"\n")
        server.proc.send_signal(signal.SIGHUP)
        server.wait_for("cannot re-read --secret-file, keeping the 1 secret in use")
        assert logs_in(server.port, 2, new)

        alive(session)  # logged in with a secret since removed: still there
        assert server.proc.poll() is None
    finally:
        assert server.stop() in (0, -signal.SIGTERM)


def test_sighup_and_sigusr1_harmless(tmp_path: Path) -> None:
    """Without a secret file or a log file, SIGHUP and SIGUSR1 (twice each)
    neither stop the server nor drop a session."""
    server = Running(["--pidfile="], ["--port", ANY_PORT], tmp_path)
    try:
        with login(server.port, 1) as session:
            assert session.recv()["type"] == "welcome"
            # One at a time: the same signal twice before it is handled
            # counts once.
            for n in (1, 2):
                for sig, says in ((signal.SIGHUP, "SIGHUP: reloading"),
                                  (signal.SIGUSR1, "SIGUSR1: logging to standard")):
                    server.proc.send_signal(sig)
                    wait_said(server, says, n)
                alive(session)
            assert server.proc.poll() is None
        assert "exits: connection closed" in server.wait_for("user 1 exits")
    finally:
        assert server.stop() in (0, -signal.SIGTERM)


def test_sighup_reopens_log_file(tmp_path: Path) -> None:
    """After logrotate moves the log file away, SIGHUP makes the server write
    to a new file at the same path."""
    logfile = tmp_path / "presence.log"
    server = Running(["--pidfile=", f"--logfile={logfile}"], ["--port", ANY_PORT],
                     tmp_path, listening_in=logfile)
    try:
        os.rename(logfile, tmp_path / "presence.log.1")
        server.proc.send_signal(signal.SIGHUP)
        wait_until(logfile.exists, what="a new log file")
        with login(server.port, 7) as session:
            assert session.recv()["type"] == "welcome"
        wait_until(lambda: "user 7 joins" in logfile.read_text(), what="join line")
        assert "user 7" not in (tmp_path / "presence.log.1").read_text()
    finally:
        server.stop()


def test_json_log_format(tmp_path: Path) -> None:
    """--log-format json: every line of the log is one JSON object, with the
    event's text, level, namespace and fields."""
    server = Running(["--pidfile="], ["--port", ANY_PORT, "--log-format", "json"],
                     tmp_path, json_log=True)
    with login(server.port, 3) as session:
        assert session.recv()["type"] == "welcome"
        session.send({"type": "bye"})
        try:
            session.recv()
        except Closed:
            pass
    server.wait_for(r"user 3 exits")
    server.stop()
    records = [orjson.loads(line) for line in server.lines]
    assert all(isinstance(r, dict) for r in records)
    texts = [r["text"] for r in records]
    joins = [r for r in records if r["text"].startswith("user 3 joins")]
    assert joins and joins[0]["uid"] == 3 and joins[0]["level"] == "info"
    assert joins[0]["log_namespace"].startswith("presence.")
    assert "presence stopped" in texts


def test_stopped_is_the_last_line(tmp_path: Path) -> None:
    """At SIGTERM every session's exit line comes before "presence stopped"."""
    server = Running(["--pidfile="], ["--port", ANY_PORT], tmp_path)
    clients = [login(server.port, uid) for uid in range(1, 6)]
    for c in clients:
        assert c.recv()["type"] == "welcome"
    server.stop()
    lines = [line for line in server.lines if "presence" in line or "exits" in line]
    stopped = next(i for i, line in enumerate(lines) if "presence stopped" in line)
    exits = [i for i, line in enumerate(lines) if "exits: server shutting down" in line]
    assert len(exits) == 5, server.log
    assert max(exits) < stopped, server.log
    for c in clients:
        c.close()


def test_error_16_names_the_option(tmp_path: Path) -> None:
    """A connection over --max-per-ip is refused with error 16 whose message
    names the option to raise."""
    server = Running(["--pidfile="], ["--port", ANY_PORT, "--max-per-ip", "2"],
                     tmp_path)
    try:
        held = [LineSocket("127.0.0.1", server.port) for _ in range(2)]
        for c in held:
            c.login(len(held) + held.index(c), [])
        with LineSocket("127.0.0.1", server.port) as third:
            error = third.expect_error(16)
        assert error["msg"] == "Too many connections: 2 from 127.0.0.1 (--max-per-ip)"
        for c in held:
            c.close()
    finally:
        server.stop()


def test_ipv6_peer_in_brackets(tmp_path: Path) -> None:
    """An IPv6 peer appears as [::1]:PORT in the join and exit lines."""
    server = Running(["--pidfile="], ["--port", r"tcp6:0:interface=\:\:1"],
                     tmp_path)
    try:
        client = LineSocket6(server.port)
        client.sock.sendall(b'{"user_id": 4, "friends": []}\n')
        server.wait_for("user 4 joins")
        client.sock.sendall(b'{"type": "bye"}\n')
        exit_line = server.wait_for("user 4 exits")
        client.sock.close()
        join_line = server.wait_for("user 4 joins")
        assert re.search(r"from \[::1\]:\d+$", join_line), join_line
        assert re.search(r"\[::1\]:\d+", exit_line), exit_line
    finally:
        server.stop()


def test_refusals_rate_limited(tmp_path: Path) -> None:
    """50 refusals of one address write one "refused" line, and one summary
    (at the latest when the server stops)."""
    server = Running(["--pidfile="], ["--port", ANY_PORT], tmp_path)
    try:
        for _ in range(50):
            with LineSocket("127.0.0.1", server.port) as c:
                c.send(b"not json\n")
                c.expect_error(3)
    finally:
        server.stop()
    refused = [line for line in server.lines if re.search(r":\d+ refused: ", line)]
    assert len(refused) == 1, server.log
    assert "127.0.0.1 refused 49 more times in the last 10 s: " in server.log
