"""End-to-end: a real ``twistd -n presence`` process and plain sockets."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
from conftest import ServerProcess, StartServer, twistd
from sockets import Closed, Json, LineSocket, free_port, presence_events


def test_plugin_listed() -> None:
    """``twistd --help`` lists the presence plugin."""
    out = subprocess.run([twistd(), "--help"], capture_output=True, text=True,
                         cwd="/", check=True).stdout
    assert "presence" in out.split("Commands:")[1]


def test_start_failure_reported(tmp_path: Path) -> None:
    """A server that exits instead of listening is reported at once, with the
    command and the end of its log (the launcher does not wait 30 s)."""
    started = time.monotonic()
    with pytest.raises(RuntimeError) as raised:
        ServerProcess(["--no-such-option"], cwd=tmp_path)
    assert time.monotonic() - started < 20
    message = str(raised.value)
    assert message.startswith("server did not start (")
    assert "--no-such-option" in message.splitlines()[0]
    assert "no-such-option" in "\n".join(message.splitlines()[1:])


def test_demo_scenario(server: ServerProcess) -> None:
    """The original demo's run, with its counts, but told at once, not polled.

    user1 [2,3,4] stays 5 s: 2 online and 2 offline notifications.
    user2 [1,3,4] joins at 0.3 s for 1 s: 1 online.
    user3 [1,4] joins once user2 has gone, for 2 s: 1 online.
    user5 [2,3,4,5] is refused with error 6 and is never online.
    """
    results: dict[str, list[dict]] = {}
    start = time.monotonic()

    def user1() -> None:
        c = LineSocket(server.host, server.port)
        assert c.login(1, [2, 3, 4])["type"] == "welcome"
        results["user1"] = c.collect(5 - (time.monotonic() - start))
        c.send({"type": "bye"})
        c.close()

    t1 = threading.Thread(target=user1)
    t1.start()
    time.sleep(0.3)
    two = LineSocket(server.host, server.port)
    two.login(2, [1, 3, 4])
    results["user2"] = two.collect(1.0)
    two.close()
    server.wait_for_log(r"user 2 exits")

    watcher = LineSocket(server.host, server.port)
    watcher.login(6, [5])
    five = LineSocket(server.host, server.port)
    five.send({"user_id": 5, "friends": [2, 3, 4, 5]})
    results["user5"] = five.expect_closed()
    five.close()

    three = LineSocket(server.host, server.port)
    three.login(3, [1, 4])
    results["user3"] = three.collect(2.0)
    three.close()
    t1.join(15)
    results["watcher of 5"] = watcher.recv_all(quiet=0.3)

    one = presence_events(results["user1"])
    assert sum(online for _, online in one) == 2, results["user1"]
    assert sum(not online for _, online in one) == 2, results["user1"]
    assert one == [(2, True), (2, False), (3, True), (3, False)]
    assert presence_events(results["user2"]) == [(1, True)]
    assert presence_events(results["user3"]) == [(1, True)]
    assert results["user5"] == [
        {"type": "error", "error": 6, "msg": "You can't be friend with yourself"}]
    assert presence_events(results["watcher of 5"]) == []


def test_closed_port_refused() -> None:
    """Dialling a port nobody listens on is refused (clients report error 8)."""
    with pytest.raises(ConnectionRefusedError):
        LineSocket("127.0.0.1", free_port())


def test_sigterm(server: ServerProcess) -> None:
    """On SIGTERM each client gets error 15 and the process exits cleanly in 5 s."""
    a, b = LineSocket(server.host, server.port), LineSocket(server.host, server.port)
    a.login(1, [2])
    b.login(2, [1])
    for c, friend in ((b, 1), (a, 2)):
        event, before = c.recv_until(lambda m: m["type"] == "presence")
        assert presence_events([*before, event]) == [(friend, True)]
    started = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    for c in (a, b):
        error, before = c.recv_until(lambda m: m["type"] == "error")
        assert error["error"] == 15, (before, error)
        assert all(m["type"] != "presence" or m["user_id"] != 2 for m in before)
        assert c.expect_closed() == []
    # twistd ends by re-raising the signal that stopped it (supervisors such as
    # systemd count that as a clean stop); what matters is the orderly shutdown.
    assert server.proc.wait(5) in (0, -signal.SIGTERM)
    assert time.monotonic() - started < 5
    server.stop()
    assert "presence stopped" in server.log
    assert "Server Shut Down" in server.log


def test_unix_socket(start_server: StartServer, tmp_path: Path) -> None:
    """--port takes any endpoint string, e.g. a UNIX socket."""
    path = str(tmp_path / "p.sock")
    server = start_server("--port", f"unix:{path}")
    assert server.address == f"unix:{path}"
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    s.sendall(b'{"user_id": 1}\n')
    assert s.makefile("rb").readline().startswith(b'{"type":"welcome"')
    s.close()


def test_logs_join_and_exit(server: ServerProcess) -> None:
    """The log has a line per join and per exit with the reason."""
    a, b = LineSocket(server.host, server.port), LineSocket(server.host, server.port)
    a.login(1, [])
    b.login(1, [])
    server.wait_for_log(r"user 1 joins \(2 sessions\)")
    b.send({"type": "bye"})
    server.wait_for_log(r"user 1 exits: bye \(1 session left\)")
    a.send(b"garbage\n")
    server.wait_for_log(r"user 1 exits: json decoding error")


@pytest.mark.skipif(shutil.which("prlimit") is None, reason="needs prlimit")
def test_out_of_file_descriptors(start_server: StartServer) -> None:
    """With 64 file descriptors, 100 connections: excess are refused, then recovery."""
    server = start_server(prefix=["prlimit", "--nofile=64:64"])
    clients, refused = [], 0
    for i in range(100):
        try:
            c = LineSocket(server.host, server.port, timeout=5)
            c.send({"user_id": i + 1, "friends": []})
            message: Json | None = c.recv()
        except OSError:
            refused += 1
            continue
        except Closed:
            message = None
        if message and message["type"] == "welcome":
            clients.append(c)
        else:
            assert message is None or message["error"] == 16, message
            refused += 1
            c.close()
    assert refused > 0 and clients
    for c in clients:
        c.close()
    server.wait_for_log(r"exits: .*\(0 sessions left\)")
    fresh = LineSocket(server.host, server.port)
    assert fresh.login(1000, [])["type"] == "welcome"
