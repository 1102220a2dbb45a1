"""A throw-away redis-server on a free loopback port (tests, benchmarks).

Nothing here runs in a production node.  L{RedisServer} starts
C{redis-server} without persistence, can kill it and start it again empty on
the same port, and answers single commands synchronously (L{command}), for
tests that look at what the scripts stored.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from typing import BinaryIO

PACKAGE = "redis-server"
_Reply = bytes | int | list["_Reply"] | None


class RedisMissing(Exception):
    """redis-server is not installed."""


def missing_message() -> str:
    return (
        "redis-server not found: install the Debian package redis-server "
        "(apt-get install redis-server)"
    )


def available() -> bool:
    """Whether redis-server is installed (on PATH)."""
    return shutil.which("redis-server") is not None


def required() -> bool:
    """Whether a missing redis-server is a failure (in CI) rather than a skip."""
    return os.environ.get("CI", "").lower() == "true"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class RedisServer:
    """One redis-server process (started by L{start})."""

    def __init__(
        self, port: int | None = None, wrapper: tuple[str, ...] = ()
    ) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RedisMissing(missing_message())
        self.binary = binary
        # A command that runs redis-server (valgrind, for a count of its
        # instructions: tools/redis_cost.py).
        self.wrapper = wrapper
        self.port = port or free_port()
        self.dir = tempfile.mkdtemp(prefix="presence-redis-")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def socket(self) -> str:
        """Its Unix socket (it listens on both)."""
        return os.path.join(self.dir, "redis.sock")

    @property
    def unix_url(self) -> str:
        return f"unix://{self.socket}"

    def start(self, timeout: float = 10.0) -> RedisServer:
        self.proc = subprocess.Popen(
            [
                *self.wrapper, self.binary,
                "--port", str(self.port), "--bind", "127.0.0.1",
                "--unixsocket", self.socket, "--unixsocketperm", "700",
                "--save", "", "--appendonly", "no", "--dir", self.dir,
                "--daemonize", "no", "--loglevel", "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.command("PING") == b"PONG":
                    return self
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.02)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop it (SIGKILL: at once, losing everything)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        """Kill it and start it again, empty, on the same port."""
        self.stop(signal.SIGKILL)
        self.start()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def command(self, *args: str | int | bytes, timeout: float = 5.0) -> _Reply:
        """Send one command, wait for its reply (blocking; for tests)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout) as s:
            s.sendall(encode(*args))
            reader = s.makefile("rb")
            return _read(reader)

    def info(self, section: str) -> dict[str, str]:
        text = self.command("INFO", section)
        assert isinstance(text, bytes)
        return dict(
            line.split(":", 1)
            for line in text.decode().splitlines()
            if ":" in line and not line.startswith("#")
        )


def encode(*args: str | int | bytes) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def _read(reader: BinaryIO) -> _Reply:
    line = reader.readline()
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest
    if kind == b"-":
        raise RuntimeError(rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        if n < 0:
            return None
        data = reader.read(n + 2)
        return data[:-2]
    if kind == b"*":
        n = int(rest)
        if n < 0:
            return None
        return [_read(reader) for _ in range(n)]
    raise RuntimeError(f"bad reply from Redis: {line!r}")


