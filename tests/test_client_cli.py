"""End to end: ``presence-client`` processes against a ``twistd presence``."""

from __future__ import annotations

import queue
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ServerProcess, StartServer, script
from sockets import free_port
from test_tls import Pki, pki, tls_server  # noqa: F401  (fixtures)

WAIT = 20.0


class Client:
    """A presence-client process; its stdout is read as it comes."""

    def __init__(self, server: str, *args: str, stdin: int = subprocess.DEVNULL):
        self.proc = subprocess.Popen(
            [script("presence-client"), "--server", server, *args],
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self._new: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.stderr = ""
        self._waited = False

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._new.put(line.rstrip("\n"))
        self._new.put(None)

    def wait_for(self, pattern: str, timeout: float = WAIT) -> str:
        """The first line (from now on, or already read) matching pattern."""
        regex = re.compile(pattern)
        for line in self.lines:
            if regex.search(line):
                return line
        deadline = time.monotonic() + timeout
        while True:
            try:
                got = self._new.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(
                    f"no line matching {pattern!r}:\n" + "\n".join(self.lines)
                ) from None
            if got is None:
                raise AssertionError(
                    f"exited before a line matching {pattern!r}:\n"
                    + "\n".join(self.lines)
                )
            self.lines.append(got)
            if regex.search(got):
                return got

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def close_stdin(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()

    def wait(self, timeout: float = WAIT) -> int:
        """Wait for the exit; all of stdout is in C{lines} afterwards."""
        if self._waited:
            return self.proc.returncode
        self._waited = True
        try:
            self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(5)
        while not self._new.empty():
            line = self._new.get()
            if line is not None:
                self.lines.append(line)
        assert self.proc.stderr is not None
        self.stderr = self.proc.stderr.read()
        self.proc.stderr.close()
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        return self.proc.returncode

    @property
    def output(self) -> str:
        return "\n".join(self.lines)


@pytest.fixture
def clients() -> Iterator[list[Client]]:
    started: list[Client] = []
    yield started
    for client in started:
        if client.proc.poll() is None:
            client.proc.kill()
        client.wait()


def test_demo_scenario(server: ServerProcess, clients: list[Client]) -> None:
    """The original demo: user 1 sees users 2 and 3 come and go (2 online
    and 2 offline notifications), 2 and 3 each see user 1, and user 5, who
    lists itself, exits 6 and is never online.

    User 1 is ended through its stdin once it has seen everything, rather
    than after the demo's 5 s, so that process start-up times do not
    matter."""
    at = server.endpoint()
    one = Client(at, "--user", "1", "--friends", "2,3,4", stdin=subprocess.PIPE)
    clients.append(one)
    one.wait_for(r"connected to .* as user 1")
    watcher = Client(at, "--user", "9", "--friends", "5", "--json",
                     stdin=subprocess.PIPE)
    clients.append(watcher)
    watcher.wait_for('"type":"welcome"')

    two = Client(at, "--user", "2", "--friends", "1,3,4", "--for", "1")
    clients.append(two)
    assert two.wait() == 0, two.stderr
    assert "user 1 is online" in two.output
    assert two.lines[-1] == "user 2 quit: 1 online and 0 offline notifications"
    one.wait_for(r"user 2 went offline \(last seen \d\d:\d\d:\d\d\)")

    three = Client(at, "--user", "3", "--friends", "1,4", "--for", "2")
    clients.append(three)
    assert three.wait() == 0, three.stderr
    assert three.lines[-1] == "user 3 quit: 1 online and 0 offline notifications"
    one.wait_for(r"user 3 went offline")

    five = Client(at, "--user", "5", "--friends", "2,3,4,5", "--for", "5")
    clients.append(five)
    assert five.wait() == 6
    assert five.stderr.strip() == (
        "presence-client: error 6: You can't be friend with yourself")
    # Events about one user arrive in order: once 5 logs in for real, the
    # watcher's first event about 5 must be that login.
    real_five = Client(at, "--user", "5", "--friends", "", "--for", "1")
    clients.append(real_five)
    watcher.wait_for('"user_id":5,"online":true')
    assert real_five.wait() == 0
    first = next(line for line in watcher.lines if '"user_id":5' in line)
    assert '"online":true' in first

    one.close_stdin()
    assert one.wait() == 0, one.stderr
    events = [line for line in one.lines if re.search(r"user [2-4] ", line)]
    assert [e.split("  ", 1)[1].split(" (")[0] for e in events] == [
        "user 2 is online", "user 2 went offline",
        "user 3 is online", "user 3 went offline",
    ]
    assert one.lines[-1] == "user 1 quit: 2 online and 2 offline notifications"


def test_for_runs_its_time_with_stdin_closed(
    server: ServerProcess, clients: list[Client]
) -> None:
    """With stdin at EOF (/dev/null) and --for 5 the client stays for 5 s
    (at least), then ends normally."""
    started = time.monotonic()
    one = Client(server.endpoint(), "--user", "1", "--friends", "2", "--for", "5")
    clients.append(one)
    assert one.wait() == 0, one.stderr
    assert time.monotonic() - started >= 5
    assert one.lines[-1] == "user 1 quit: 0 online and 0 offline notifications"


def test_closed_port_exits_8(clients: list[Client]) -> None:
    """Dialling a port where nothing listens exits 8 with one line naming
    the address."""
    port = free_port()
    one = Client(f"tcp:127.0.0.1:{port}", "--user", "1", "--friends", "2")
    clients.append(one)
    assert one.wait() == 8
    (line,) = one.stderr.splitlines()
    assert "Server Connection Error" in line
    assert f"tcp:127.0.0.1:{port}" in line


def test_bare_port_means_localhost(server: ServerProcess, clients: list[Client]
                                   ) -> None:
    """--server PORT dials that port on 127.0.0.1."""
    one = Client(str(server.port), "--user", "1", "--for", "0.5")
    clients.append(one)
    assert one.wait() == 0, one.stderr
    assert f"connected to tcp:127.0.0.1:{server.port} as user 1" in one.output


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_ends_normally(server: ServerProcess, clients: list[Client],
                              sig: int) -> None:
    """SIGINT and SIGTERM end the session politely: summary, exit 0, and
    the friend sees the user go offline."""
    at = server.endpoint()
    watcher = Client(at, "--user", "2", "--friends", "1", stdin=subprocess.PIPE)
    clients.append(watcher)
    watcher.wait_for("connected")
    one = Client(at, "--user", "1", "--friends", "2", stdin=subprocess.PIPE)
    clients.append(one)
    one.wait_for("user 2 is online")
    one.proc.send_signal(sig)
    assert one.wait() == 0, one.stderr
    assert one.lines[-1] == "user 1 quit: 1 online and 0 offline notifications"
    watcher.wait_for("user 1 went offline")


def test_commands_and_json(server: ServerProcess, clients: list[Client]) -> None:
    """Commands on stdin change status and friends; with --json the
    server's lines are printed as they are."""
    at = server.endpoint()
    watcher = Client(at, "--user", "2", "--friends", "1", "--json",
                     stdin=subprocess.PIPE)
    clients.append(watcher)
    watcher.wait_for('"type":"welcome"')
    one = Client(at, "--user", "1", "--friends", "3", stdin=subprocess.PIPE)
    clients.append(one)
    one.wait_for("connected")
    watcher.wait_for('"user_id":1,"online":true')
    one.send("status away out for lunch")
    one.wait_for("status is now away: out for lunch")
    assert watcher.wait_for('"user_id":1,"online":true,"status":"away"') == (
        '{"type":"presence","user_id":1,"online":true,"status":"away",'
        '"text":"out for lunch"}')
    one.send("add 2")
    one.wait_for("watching 2, 3")
    one.wait_for("user 2 is online")
    one.send("add 1")
    one.wait_for("error 6: You can't be friend with yourself")
    one.send("who")
    one.wait_for("user 3: offline")
    one.send("quit")
    assert one.wait() == 0, one.stderr
    watcher.close_stdin()
    assert watcher.wait() == 0
    assert "user 2 quit: 1 online and 1 offline notifications (1 status change)" \
        in watcher.stderr


def test_server_error_is_exit_status(start_server: StartServer,
                                     clients: list[Client]) -> None:
    """When the server ends the session with an error (15, shutting down)
    the client exits with that code."""
    server = start_server()
    one = Client(server.endpoint(), "--user", "1", "--friends", "2",
                 stdin=subprocess.PIPE)
    clients.append(one)
    one.wait_for("connected")
    server.stop()
    assert one.wait() == 15
    assert "error 15: Server shutting down" in one.stderr


def test_reconnect_after_restart(start_server: StartServer,
                                 clients: list[Client]) -> None:
    """With --reconnect the client survives a server restart on the same
    port, logs in again and sees its friend again."""
    port = free_port()
    address = f"tcp:{port}:interface=127.0.0.1"
    server = start_server("--port", address)
    one = Client(server.endpoint(), "--user", "1", "--friends", "2", "--reconnect",
                 stdin=subprocess.PIPE)
    clients.append(one)
    one.wait_for("connected")
    server.stop()
    one.wait_for("disconnected: Server shutting down")
    one.wait_for("reconnecting in")
    server = start_server("--port", address)
    one.wait_for(r"reconnected to .* as user 1")
    two = Client(server.endpoint(), "--user", "2", "--for", "0.5")
    clients.append(two)
    one.wait_for("user 2 is online")
    assert two.wait() == 0
    one.close_stdin()
    assert one.wait() == 0, one.stderr


def test_tls_with_ca_file(tls_server: ServerProcess, pki: Pki,  # noqa: F811
                          clients: list[Client]) -> None:
    """--ca-file verifies an ssl: server against that CA (by name or by IP
    address); a server signed by another CA is refused with exit 8."""
    for host in ("localhost", "127.0.0.1"):
        one = Client(f"ssl:{host}:{tls_server.port}", "--user", "1",
                     "--ca-file", str(pki.ca), "--for", "0.5")
        clients.append(one)
        assert one.wait() == 0, one.stderr
        assert "connected to ssl:" in one.output
    wrong = Client(f"ssl:localhost:{tls_server.port}", "--user", "1",
                   "--ca-file", str(pki.other_ca), "--for", "5")
    clients.append(wrong)
    assert wrong.wait() == 8
    assert f"ssl:localhost:{tls_server.port}" in wrong.stderr


def test_token_file(start_server: StartServer, tmp_path: Path,
                    clients: list[Client]) -> None:
    """--token-file logs in on a server with a secret; without the token
    the client exits 10."""
    import jwt

    secret = tmp_path / "secret"
    secret.write_text("a test secret that is long enough for HS256\n")
    server = start_server("--secret-file", str(secret))
    token = tmp_path / "token"
    token.write_text(jwt.encode({"sub": "1"}, secret.read_text().strip(),
                                algorithm="HS256") + "\n")
    one = Client(server.endpoint(), "--user", "1", "--token-file", str(token),
                 "--for", "0.5")
    clients.append(one)
    assert one.wait() == 0, one.stderr
    anonymous = Client(server.endpoint(), "--user", "1", "--for", "5")
    clients.append(anonymous)
    assert anonymous.wait() == 10
