"""C{presence-bench --transport websocket}: the bench's users over C{/ws}.

L{WebSocketBench} is the bench run (L{Bench}) with the server started with a
WebSocket port as well (C{--websocket tcp:0:interface=127.0.0.1}) and load
workers that connect there (L{presence.bench.wsload}).  The line protocol's
port stays open, unused: the tap always listens on C{--port}.  The server's
log names each port ("presence listening on ...", "presence websocket
listening on ..."); the workers get the second.  With C{--server HOST:PORT}
(a running server), PORT is its WebSocket port.
"""

from __future__ import annotations

import re
from typing import Any

from presence.bench.launch import LaunchedServer
from presence.bench.runner import Bench, ServerProcess
from presence.bench.v0bench import V0Bench
from presence.bench.wsload import WebSocketWorker, worker_config

TRANSPORTS = ("lines", "websocket", "v0")
WEBSOCKET_ENDPOINT = "tcp:0:interface=127.0.0.1:backlog=4096"
WS_LISTENING = re.compile(r"presence websocket listening on (\S+)")


def tcp_address(address: str) -> tuple[str, int]:
    """The host and port of a C{tcp:HOST:PORT} endpoint the server logged."""
    kind, host, port = address.rsplit(":", 2)
    if kind != "tcp":
        raise ValueError(f"not a tcp: address: {address!r}")
    return host, int(port)


class WebSocketBench(Bench):
    """The bench run with every user a WebSocket client of the server."""

    worker_class = WebSocketWorker
    transport = "websocket"

    websocket: tuple[str, int] | None = None  # the port the bench started

    def server_options(self, limit: int) -> list[str]:
        return [*super().server_options(limit), "--websocket", WEBSOCKET_ENDPOINT]

    def launch(self, limit: int) -> ServerProcess:
        server = super().launch(limit)
        assert isinstance(server, LaunchedServer)
        try:
            line = server.wait_for_log(WS_LISTENING.pattern, timeout=30)
            match = WS_LISTENING.search(line)
            assert match is not None
            self.websocket = tcp_address(match.group(1))
        except (AssertionError, ValueError) as e:
            server.stop()
            raise RuntimeError(f"no WebSocket port: {e}") from None
        return server

    def worker_config(self) -> dict[str, Any]:
        if self.websocket is None:  # --server: its address is the WebSocket's
            return {"transport": "websocket"}
        return worker_config(*self.websocket)

    def setup(self) -> None:
        super().setup()
        if self.websocket is not None:
            host, port = self.websocket
            self.results["meta"]["server"]["websocket"] = f"tcp:{host}:{port}"


def bench_for(transport: str) -> type[Bench]:
    """The bench run of presence over C{transport} (one of L{TRANSPORTS})."""
    if transport == "websocket":
        return WebSocketBench
    if transport == "lines":
        return Bench
    if transport == "v0":
        return V0Bench
    raise ValueError(f"unknown transport {transport!r}")
