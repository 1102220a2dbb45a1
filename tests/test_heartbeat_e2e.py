"""End-to-end: ``--heartbeat tcp`` against a real ``twistd`` process.

These wait real time on purpose: a 1 s ``--timeout`` and 3.5 s of silence.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import pytest
from conftest import StartServer
from sockets import LineSocket, wait_until
from test_client_cli import Client, clients  # noqa: F401  (fixture)


def test_silent_client_stays_with_tcp_heartbeat(start_server: StartServer) -> None:
    """The welcome says tcp; a client silent for over three timeouts gets
    no ping, stays connected and online, and its socket is still answered."""
    server = start_server("--timeout", "1", "--heartbeat", "tcp")
    with LineSocket(server.host, server.port) as silent:
        welcome = silent.login(1)
        assert welcome == {"type": "welcome", "user_id": 1, "timeout": 1,
                           "heartbeat": "tcp"}
        assert silent.collect(3.5) == []
        assert not silent.eof
        with LineSocket(server.host, server.port) as watcher:
            watcher.login(2, [1])
            event = watcher.presence()
            assert (event["user_id"], event["online"]) == (1, True)
        assert silent.roundtrip() == []


def test_app_heartbeat_drops_silent_client(start_server: StartServer) -> None:
    """The same silence with the default heartbeat: a ping, then error 1 and
    the close; the welcome has no heartbeat field."""
    server = start_server("--timeout", "1")
    with LineSocket(server.host, server.port) as silent:
        assert "heartbeat" not in silent.login(1)
        assert silent.recv(3)["type"] == "ping"
        silent.expect_error(1, timeout=3)


def test_presence_client_stays_quiet(start_server: StartServer,
                                    clients: list[Client]) -> None:  # noqa: F811
    """presence-client, welcomed with heartbeat tcp, stays connected through
    three silent timeouts, and its requests are still confirmed."""
    server = start_server("--timeout", "1", "--heartbeat", "tcp")
    one = Client(server.endpoint(), "--user", "1", "--json", stdin=subprocess.PIPE)
    clients.append(one)
    one.wait_for('"heartbeat":"tcp"')
    time.sleep(3.5)  # real silence: no ping either way, no watchdog
    assert one.proc.poll() is None, one.output
    one.send("status away back soon")
    one.send("quit")  # after the pending request is answered
    assert one.wait() == 0, one.stderr
    assert "status is now away: back soon" in one.stderr  # --json: remarks


def _can_unshare() -> bool:
    try:
        return subprocess.run(["unshare", "-n", "true"],
                              capture_output=True).returncode == 0
    except OSError:
        return False


@pytest.mark.skipif(not _can_unshare(),
                    reason="needs unshare -n (root or CAP_SYS_ADMIN)")
def test_dead_network_ends_session() -> None:
    """In a network namespace of its own, a --heartbeat tcp server whose
    client's network dies (loopback down, no socket closed) ends the session
    by itself: the kernel's keepalive gives up on the peer."""
    script = Path(__file__).with_name("deadnet.py")
    out = subprocess.run(
        ["unshare", "-n", sys.executable, str(script), "--timeout", "4",
         "--heartbeat", "tcp"],
        capture_output=True, text=True, timeout=90, cwd=script.parent,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    result = json.loads(out.stdout.splitlines()[-1])
    assert '"heartbeat":"tcp"' in result["welcome"], result
    assert result["ended"], result
    assert "user 1 exits" in result["exit"][0], result


def test_server_socket_keepalive_timer(start_server: StartServer) -> None:
    """The kernel runs a keepalive timer on the server's end of a connection
    with --heartbeat tcp, and none with app (read from /proc/net/tcp: the
    options themselves are read with getsockopt in presence.test.test_keepalive)."""
    for heartbeat, timer in (("tcp", "keepalive"), ("app", "off")):
        server = start_server("--timeout", "30", "--heartbeat", heartbeat)
        with LineSocket(server.host, server.port) as client:
            client.login(1)
            ends = (server.port, client.sock.getsockname()[1])
            # A retransmit timer may show until the welcome is acknowledged.
            wait_until(partial(_timer_is, *ends, timer),
                       what=f"{timer} timer with --heartbeat {heartbeat}")


def _timer_is(server_port: int, client_port: int, timer: str) -> bool:
    return _timers(server_port, client_port) == [timer]


def _timers(server_port: int, client_port: int) -> list[str]:
    """The kernel timers of the server's ends of connections from
    C{client_port} (/proc/net/tcp, IPv4: the server listens on 127.0.0.1)."""
    names = {0: "off", 1: "retransmit", 2: "keepalive", 3: "time-wait",
             4: "zero-window"}
    found = []
    with open("/proc/net/tcp") as table:
        next(table)
        for row in table:
            fields = row.split()
            local, remote = fields[1], fields[2]
            if (int(local.split(":")[1], 16) == server_port
                    and int(remote.split(":")[1], 16) == client_port):
                found.append(names.get(int(fields[5].split(":")[0], 16), fields[5]))
    return found
