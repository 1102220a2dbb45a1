"""Redis fixtures for the cluster tests: a real redis-server on a free port,
and a TCP proxy in front of it that a test can cut, stall and restore.

Where redis-server is missing the tests that use them skip, naming the Debian
package; in CI (CI=true) that is a failure, never a skip.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest

from presence.cluster.redisserver import (
    RedisMissing,
    RedisServer,
    available,
    missing_message,
    required,
)


def redis_missing() -> NoReturn:
    """Skip the test, naming the package; in CI (CI=true) fail it."""
    if required():
        pytest.fail(missing_message() + " (CI=true: cluster tests never skip)")
    pytest.skip(missing_message())


def require_redis() -> None:
    """For a test that starts redis-server itself (presence-bench --cluster)."""
    if not available():
        redis_missing()


def start_redis() -> RedisServer:
    try:
        return RedisServer().start()
    except RedisMissing:
        redis_missing()


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A redis-server without persistence on a free loopback port."""
    server = start_redis()
    yield server
    server.close()


class TCPProxy:
    """tests/tcpproxy.py in a process of its own."""

    def __init__(self, target: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("tcpproxy.py")),
             str(target)],
            stdout=subprocess.PIPE, text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        match = re.search(r"proxy listening on (\d+)", line)
        if match is None:
            self.proc.kill()
            raise RuntimeError(f"proxy did not start: {line!r}")
        self.port = int(match.group(1))
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def _signal(self, sig: int) -> None:
        self.proc.send_signal(sig)
        time.sleep(0.05)  # let the proxy act on it before the test goes on

    def cut(self) -> None:
        """Close every connection through the proxy, refuse new ones."""
        self._signal(signal.SIGUSR1)

    def stall(self) -> None:
        """Relay nothing, close nothing (a partition)."""
        self._signal(signal.SIGHUP)

    def restore(self) -> None:
        self._signal(signal.SIGUSR2)

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture
def redis_proxy(redis_server: RedisServer) -> Iterator[TCPProxy]:
    """A proxy to C{redis_server} (its C{url} is the proxy's)."""
    proxy = TCPProxy(redis_server.port)
    yield proxy
    proxy.close()
