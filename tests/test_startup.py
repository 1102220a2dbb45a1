"""Start-up, end to end: a server that cannot listen exits non-zero with the
reason, in the foreground and as a daemon; --uid works with a port below 1024
and leaves no pidfile behind; bad options are refused; README's command can
be run twice in one directory."""

from __future__ import annotations

import os
import re
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemons import ANY_PORT, Running, run, wait_gone, without_net_bind_service
from sockets import LineSocket, wait_until

NOBODY = ["--uid", "65534", "--gid", "65534"]
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to shed")


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A loopback port something else listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def failure_case(case: str, taken: int) -> tuple[str, str, list[str]]:
    """(--port, the reason expected, command prefix) for each way to fail."""
    if case == "port taken":
        return f"tcp:{taken}:interface=127.0.0.1", "Address already in use", []
    if case == "port out of range":
        return "tcp:99999", "port must be 0-65535", []
    if case == "address the host lacks":
        # 192.0.2.0/24 is TEST-NET-1: documentation only, on no host.
        return "tcp:0:interface=192.0.2.1", "Cannot assign requested address", []
    assert case == "permission denied"
    return "tcp:1:interface=127.0.0.1", "Permission denied", without_net_bind_service()


CASES = ["port taken", "port out of range", "address the host lacks",
         "permission denied"]


@pytest.mark.parametrize("case", CASES)
def test_cannot_listen_foreground(case: str, taken_port: int, tmp_path: Path
                                  ) -> None:
    """In the foreground, a server that cannot listen logs why (critical)
    and exits with status 1 at once."""
    port, reason, prefix = failure_case(case, taken_port)
    done = run(["-n", "--pidfile="], ["--port", port], tmp_path, prefix, timeout=20)
    assert done.returncode == 1, done.stdout + done.stderr
    assert re.search(
        rf"#critical\] presence cannot listen on {re.escape(port)}: .*{reason}",
        done.stdout), done.stdout
    assert "Traceback" not in done.stdout + done.stderr


@pytest.mark.parametrize("case", CASES)
def test_cannot_listen_daemon(case: str, taken_port: int, tmp_path: Path) -> None:
    """As a daemon, the shell gets status 1 and the reason; the log file has
    it too, and no pidfile is left."""
    port, reason, prefix = failure_case(case, taken_port)
    pidfile, logfile = tmp_path / "presence.pid", tmp_path / "presence.log"
    done = run([f"--pidfile={pidfile}", f"--logfile={logfile}"], ["--port", port],
               tmp_path, prefix, timeout=20)
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"cannot listen on {port}: " in done.stderr, done.stderr
    assert re.search(rf"#critical\] presence cannot listen on .*{reason}",
                     logfile.read_text())
    assert not pidfile.exists()


def test_daemon_starts(tmp_path: Path) -> None:
    """A daemon that can listen: the shell gets 0, and SIGTERM stops it."""
    pidfile, logfile = tmp_path / "presence.pid", tmp_path / "presence.log"
    done = run([f"--pidfile={pidfile}", f"--logfile={logfile}"], ["--port", ANY_PORT],
               tmp_path)
    assert done.returncode == 0, done.stderr
    pid = int(pidfile.read_text())
    wait_until(lambda: "presence listening on" in logfile.read_text(),
               what="listening")
    os.kill(pid, signal.SIGTERM)
    wait_gone(pid)
    log = logfile.read_text()
    assert "Server Shut Down" in log, log
    assert not pidfile.exists()
    assert "presence stopped" in logfile.read_text()


@pytest.mark.parametrize("args, message", [
    (["--timeout", "nan"], "--timeout must be a finite number, not 'nan'"),
    (["--timeout", "inf"], "--timeout must be a finite number, not 'inf'"),
    (["--timer-slack", "inf"], "--timer-slack must be a finite number"),
    (["--max-per-ip", "0"], "--max-per-ip must be more than 0"),
    (["--port", "nonsense:1"], "--port nonsense:1: Unknown endpoint type"),
])
def test_bad_options(args: list[str], message: str, tmp_path: Path) -> None:
    """Bad option values stop twistd before it starts, with status 1 and a
    message naming the option."""
    done = run(["-n", "--pidfile="], args, tmp_path, timeout=20)
    assert done.returncode == 1
    # twistd prints the usage, then the message, on standard output.
    assert message in done.stdout, done.stdout
    assert "Traceback" not in done.stdout + done.stderr


def free_low_port() -> int:
    for port in range(1000, 900, -1):
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    pytest.skip("no free port below 1024")


def uids(pid: int) -> list[int]:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Uid:"):
                return [int(u) for u in line.split()[1:]]
    raise AssertionError("no Uid line")


@root_only
def test_uid_with_a_low_port(tmp_path: Path) -> None:
    """With --uid/--gid the server binds a port below 1024 before it gives up
    root, then serves as that user."""
    port = free_low_port()
    server = Running(["--pidfile=", *NOBODY],
                     ["--port", f"tcp:{port}:interface=127.0.0.1"], tmp_path)
    try:
        assert server.port == port
        server.wait_for("set uid/gid 65534/65534")
        assert uids(server.proc.pid) == [65534] * 4
        with LineSocket("127.0.0.1", port) as client:
            assert client.login(1, [2])["type"] == "welcome"
    finally:
        server.stop()


@root_only
def test_uid_pidfile_removed(tmp_path: Path) -> None:
    """With --uid/--gid, the pidfile in a directory only root may write is
    removed at exit all the same, without twistd's warning."""
    rundir = tmp_path / "run"
    rundir.mkdir(mode=0o755)
    pidfile = rundir / "presence.pid"
    server = Running([f"--pidfile={pidfile}", *NOBODY], ["--port", ANY_PORT],
                     tmp_path)
    assert pidfile.read_text() == str(server.proc.pid)
    server.stop()
    wait_until(lambda: not pidfile.exists(), what="the pidfile to go")
    assert "No permission to delete pid file" not in server.log


@root_only
def test_uid_pidfile_removed_daemon(tmp_path: Path) -> None:
    """The same for a daemon, stopped through its pidfile."""
    rundir = tmp_path / "run"
    rundir.mkdir(mode=0o755)
    pidfile, logfile = rundir / "presence.pid", tmp_path / "presence.log"
    done = run([f"--pidfile={pidfile}", f"--logfile={logfile}", *NOBODY],
               ["--port", ANY_PORT], tmp_path)
    assert done.returncode == 0, done.stderr
    pid = int(pidfile.read_text())
    wait_until(lambda: "presence listening on" in logfile.read_text(),
               what="listening")
    assert uids(pid) == [65534] * 4
    os.kill(pid, signal.SIGTERM)
    wait_gone(pid)
    wait_until(lambda: not pidfile.exists(), what="the pidfile to go")


def readme_command() -> list[str]:
    """The server command of README.rst's first code block."""
    readme = (Path(__file__).parent.parent / "README.rst").read_text()
    m = re.search(r"pip install \. && (twistd [^\n]+)", readme)
    assert m, "README.rst lost its run command"
    return m.group(1).split()


def test_readme_command_twice(tmp_path: Path) -> None:
    """README's run command works twice in a row in one directory: a second
    server starts beside the first (on another port), and no twistd.pid is
    left behind."""
    words = readme_command()
    assert words[:2] == ["twistd", "-n"] and "presence" in words
    at = words.index("presence")
    twistd_args, args = words[2:at], words[at + 1:]
    # Its own port, not 8081: other tests may run at the same time.
    args[args.index("8081")] = ANY_PORT
    first = Running(twistd_args, args, tmp_path)
    try:
        second = Running(twistd_args, args, tmp_path)
        try:
            assert first.port != second.port
            assert not (tmp_path / "twistd.pid").exists()
        finally:
            second.stop()
    finally:
        first.stop()
    third = Running(twistd_args, args, tmp_path)
    third.stop()
    assert not (tmp_path / "twistd.pid").exists()
