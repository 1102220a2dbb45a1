"""End-to-end fixtures: a real ``twistd -n presence`` subprocess per test.

The servers are started by L{presence.bench.launch.LaunchedServer}, the
project's one launcher (the bench starts its server under test with it too).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import pytest

from presence.bench.launch import LaunchedServer, script, twistd

# A running server: its address, its log lines, and how to stop it.
ServerProcess = LaunchedServer

__all__ = ["ServerProcess", "StartServer", "script", "twistd"]


class StartServer(Protocol):
    """The C{start_server} fixture: start a server with these options.

    Without a C{--port} option it listens on a free loopback TCP port;
    C{prefix} goes before C{twistd} (such as C{["prlimit", "--nofile=64:64"]}).
    """

    def __call__(self, *args: str, prefix: list[str] | None = None
                 ) -> ServerProcess: ...


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[StartServer]:
    """Start ``twistd -n presence`` on a free loopback port with extra options."""
    servers: list[ServerProcess] = []

    def start(*args: str, prefix: list[str] | None = None) -> ServerProcess:
        argv = list(args)
        if not any(a == "--port" or a.startswith("--port=") for a in argv):
            argv = ["--port", "tcp:0:interface=127.0.0.1", *argv]
        server = ServerProcess(argv, cwd=tmp_path, prefix=prefix)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def server(start_server: StartServer) -> ServerProcess:
    """A server with the default options."""
    return start_server()


# The browser fixtures (browser, page, static_site) are registered here, once:
# playwright refuses a second sync instance while one is alive.
from browsers import (  # noqa: E402, F401
    browser_fixture,
    page_fixture,
    static_site_fixture,
)

# Cluster mode: redis-server and a cuttable proxy (tests/redisfixtures.py).
from redisfixtures import redis_proxy, redis_server  # noqa: E402, F401
