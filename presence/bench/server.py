"""The server under test: finding it, reading its CPU and memory.

L{presence.bench.launch} starts it.

Figures come from the server process itself (/proc through psutil), never
from the load generator's view, so they do not depend on how fast the load
generator is.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import psutil


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
