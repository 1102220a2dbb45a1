"""The server under test: starting it, finding it, reading its CPU and memory.

Figures come from the server process itself (/proc through psutil), never
from the load generator's view, so they do not depend on how fast the load
generator is.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from presence.bench.loadgen import raise_nofile

LISTENING = re.compile(r"presence listening on (\S+)")


def twistd() -> str:
    found = shutil.which("twistd", path=os.path.dirname(sys.executable))
    return found or "twistd"


@dataclass
class Sample:
    """The server's cumulative CPU time (seconds) and resident memory (bytes)."""

    cpu: float
    rss: int
    wall: float


class Probe:
    """Reads a process's CPU time and RSS."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.proc = psutil.Process(pid)

    def sample(self) -> Sample:
        with self.proc.oneshot():
            t = self.proc.cpu_times()
            rss = self.proc.memory_info().rss
        return Sample(t.user + t.system, rss, time.monotonic())

    def alive(self) -> bool:
        return self.proc.is_running() and self.proc.status() != psutil.STATUS_ZOMBIE


class LaunchedServer:
    """C{twistd -n presence} in a subprocess, with a raised file limit.

    Its stdout/stderr go to C{log_path}; C{host}/C{port} are parsed from its
    "presence listening on tcp:HOST:PORT" line.
    """

    def __init__(
        self,
        options: list[str],
        log_path: Path | None = None,
        cpus: set[int] | None = None,
        backlog: int = 4096,
    ) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="presence-bench-"))
        self.log_path = log_path or self.workdir / "server.log"
        nofile = raise_nofile()  # inherited by the child
        port = f"tcp:0:interface=127.0.0.1:backlog={backlog}"
        self.argv = [twistd(), "-n", "--pidfile=", "presence", "--port", port, *options]
        self.nofile = nofile
        self._log = open(self.log_path, "w")  # closed in stop()
        self.proc = subprocess.Popen(
            self.argv,
            cwd=self.workdir,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        if cpus:
            try:
                os.sched_setaffinity(self.proc.pid, cpus)
            except OSError:
                pass
        self.pid = self.proc.pid
        self.address = self._wait_listening(30.0)
        _, self.host, port_text = self.address.rsplit(":", 2)
        self.port = int(port_text)

    def _wait_listening(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log_path.read_text(errors="replace")
            m = LISTENING.search(text)
            if m:
                return m.group(1)
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        tail = self.log_path.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"server did not start ({' '.join(self.argv)}):\n{tail}")

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()
        return self.proc.returncode


def find_listener(port: int) -> int | None:
    """The pid of a process of ours listening on TCP C{port}, if we can see it."""
    try:
        conns = psutil.net_connections(kind="tcp")
    except (psutil.AccessDenied, PermissionError):
        return None
    for conn in conns:
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
            return conn.pid
    return None


def parse_server(text: str) -> tuple[str, int]:
    """C{HOST:PORT} or C{tcp:HOST:PORT} to (host, port); loopback only."""
    if text.startswith("tcp:"):
        text = text[4:]
    host, _, port = text.rpartition(":")
    host = host or "127.0.0.1"
    if not host.startswith("127."):
        raise ValueError("presence-bench only sends traffic to 127.0.0.0/8")
    return host, int(port)
