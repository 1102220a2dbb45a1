"""End-to-end fixtures: a real ``twistd -n presence`` subprocess per test."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

LISTENING = re.compile(r"presence listening on (\S+)")


def twistd() -> str:
    found = shutil.which("twistd", path=os.path.dirname(sys.executable))
    return found or "twistd"


class ServerProcess:
    """A running server: its address, its log lines, and how to stop it."""

    def __init__(self, args: list[str], cwd: Path, prefix: list[str] | None = None):
        self.args = args
        cmd = [*(prefix or []), twistd(), "-n", "--pidfile=", "presence", *args]
        self.proc = subprocess.Popen(
            cmd,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._listening = threading.Event()
        self.address = ""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self._listening.wait(30):
            self.stop()
            raise RuntimeError("server did not start:\n" + self.log)
        # "tcp:127.0.0.1:PORT" or "unix:/path"
        self.host, self.port = "127.0.0.1", 0
        if self.address.startswith(("tcp:", "ssl:")):
            _, host, port = self.address.rsplit(":", 2)
            self.host, self.port = host, int(port)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            m = LISTENING.search(line)
            if m and not self._listening.is_set():
                self.address = m.group(1)
                self._listening.set()

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    def wait_for_log(self, pattern: str, timeout: float = 10) -> str:
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if regex.search(line):
                    return line
            time.sleep(0.02)
        raise AssertionError(f"no log line matching {pattern!r}:\n{self.log}")

    def endpoint(self) -> str:
        return f"tcp:{self.host}:{self.port}"

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(5)
        return self.proc.returncode


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Start ``twistd -n presence`` on a free loopback port with extra options."""
    servers: list[ServerProcess] = []

    def start(*args: str, prefix: list[str] | None = None) -> ServerProcess:
        argv = list(args)
        if not any(a == "--port" or a.startswith("--port=") for a in argv):
            argv = ["--port", "tcp:0:interface=127.0.0.1", *argv]
        server = ServerProcess(argv, tmp_path, prefix)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def server(start_server: Callable[..., ServerProcess]) -> ServerProcess:
    """A server with the default options."""
    return start_server()


# Cluster mode: redis-server and a cuttable proxy (tests/redisfixtures.py).
from redisfixtures import redis_proxy, redis_server  # noqa: E402, F401
