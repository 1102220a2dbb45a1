"""The ``haproxy:`` endpoint prefix (PROXY protocol v1 and v2) on a real
``twistd -n presence``, for the line port and the WebSocket port.

The test client plays the proxy: it connects over loopback and sends the
PROXY header before the login, as HAProxy (``send-proxy``, ``send-proxy-v2``)
and nginx (``proxy_protocol on``) do. The server must log and count the
address in the header, not the loopback address the bytes came from.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ServerProcess, StartServer
from sockets import LineSocket, free_port
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    RejectConnection,
    Request,
    TextMessage,
)

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def v1(source: str, port: int, ip6: bool = False) -> bytes:
    """A PROXY v1 header for a client at C{source}:C{port}."""
    if ip6:
        return f"PROXY TCP6 {source} ::1 {port} 8081\r\n".encode()
    return f"PROXY TCP4 {source} 127.0.0.1 {port} 8081\r\n".encode()


def v2(source: str, port: int, ip6: bool = False) -> bytes:
    """A PROXY v2 (binary) header for a client at C{source}:C{port}."""
    if ip6:
        family, dest = socket.AF_INET6, "::1"
        addresses = socket.inet_pton(family, source) + socket.inet_pton(family, dest)
        kind = 0x21  # AF_INET6, STREAM
    else:
        family, dest = socket.AF_INET, "127.0.0.1"
        addresses = socket.inet_pton(family, source) + socket.inet_pton(family, dest)
        kind = 0x11  # AF_INET, STREAM
    body = addresses + struct.pack("!HH", port, 8081)
    # Version 2, command PROXY; family and transport; length of what follows.
    return V2_SIGNATURE + bytes([0x21, kind]) + struct.pack("!H", len(body)) + body


def proxied(server: ServerProcess, port: int, header: bytes) -> LineSocket:
    """A line connection to C{port} that starts with C{header}."""
    sock = LineSocket(server.host, port)
    sock.send(header)
    return sock


def login(sock: LineSocket, uid: int) -> dict[str, Any]:
    sock.send({"user_id": uid, "friends": []})
    answer = sock.recv()
    assert isinstance(answer, dict)
    return answer


def gone_without_a_byte(sock: socket.socket, timeout: float = 10) -> None:
    """C{sock} is closed by the server without it having sent anything."""
    sock.settimeout(timeout)
    try:
        data = sock.recv(65536)
    except ConnectionResetError:
        data = b""
    assert data == b"", data


# -- the line port --------------------------------------------------------


@pytest.mark.parametrize("header, shown", [
    (v1("203.0.113.7", 5555), "203.0.113.7:5555"),
    (v2("198.51.100.9", 6000), "198.51.100.9:6000"),
    (v1("2001:db8::7", 5556, ip6=True), "[2001:db8::7]:5556"),
    (v2("2001:db8::9", 6001, ip6=True), "[2001:db8::9]:6001"),
], ids=["v1", "v2", "v1-ipv6", "v2-ipv6"])
def test_line_port_logs_the_real_address(
    start_server: StartServer, header: bytes, shown: str
) -> None:
    """Behind ``--port haproxy:tcp:...`` the join and exit lines name the
    client address from the PROXY header (v1 and v2, IPv4 and IPv6), and the
    listening line says haproxy."""
    port = free_port()
    server = start_server("--port", f"haproxy:tcp:{port}:interface=127.0.0.1")
    assert server.address == f"haproxy:tcp:127.0.0.1:{port}"
    assert (server.host, server.port) == ("127.0.0.1", port)
    with proxied(server, port, header) as sock:
        assert login(sock, 1).get("type") != "error"
        server.wait_for_log(rf"user 1 joins .* from {re.escape(shown)}$")
    server.wait_for_log(rf"user 1 exits: .* from {re.escape(shown)}$")


def test_line_port_counts_per_real_address(start_server: StartServer) -> None:
    """``--max-per-ip 1`` counts the addresses in the headers: two clients
    with different real addresses through the same loopback both log in; a
    second one from the same real address gets error 16 naming --max-per-ip."""
    port = free_port()
    server = start_server("--port", f"haproxy:tcp:{port}:interface=127.0.0.1",
                          "--max-per-ip", "1")
    with proxied(server, port, v1("203.0.113.7", 5555)) as a, \
            proxied(server, port, v2("203.0.113.8", 5555)) as b:
        assert login(a, 1)["type"] != "error"
        assert login(b, 2)["type"] != "error"
        with proxied(server, port, v2("203.0.113.7", 5556)) as c:
            # Refused once it speaks: the session starts with its first bytes.
            c.send({"user_id": 3, "friends": []})
            error = c.expect_error(16)
            assert "--max-per-ip" in error["msg"]
            assert "203.0.113.7" in error["msg"]
        a.roundtrip()
        b.roundtrip()


def test_line_port_refuses_a_connection_without_header(
    start_server: StartServer,
) -> None:
    """On a haproxy: endpoint a connection that starts with anything but a
    PROXY header is closed without a byte and never becomes a session."""
    port = free_port()
    server = start_server("--port", f"haproxy:tcp:{port}:interface=127.0.0.1")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b'{"user_id": 1, "friends": []}\n')
        gone_without_a_byte(sock)
    # Its neighbour with a header is served, and nobody joined before it.
    with proxied(server, port, v1("203.0.113.7", 5555)) as ok:
        login(ok, 2)
        server.wait_for_log(r"user 2 joins")
    assert "user 1 " not in server.log


def test_line_port_closes_a_silent_connection(start_server: StartServer) -> None:
    """A connection that sends nothing on a haproxy: endpoint is closed
    after --timeout, without a byte."""
    port = free_port()
    start_server("--port", f"haproxy:tcp:{port}:interface=127.0.0.1",
                 "--timeout", "1")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        started = time.monotonic()
        gone_without_a_byte(sock)
        assert time.monotonic() - started < 5


# -- the WebSocket port -----------------------------------------------------


class WebSocketClient:
    """A WebSocket client (wsproto) on a raw socket that starts with a header."""

    def __init__(self, port: int, header: bytes, source: str | None = None
                 ) -> None:
        self.sock = socket.create_connection(
            ("127.0.0.1", port), timeout=10,
            source_address=None if source is None else (source, 0))
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.events: list[Any] = []
        self.sock.sendall(header + self.ws.send(Request(host="127.0.0.1",
                                                         target="/ws")))
        event = self._next()
        assert isinstance(event, AcceptConnection), event

    def _next(self) -> Any:
        while not self.events:
            data = self.sock.recv(65536)
            self.ws.receive_data(data or None)
            self.events.extend(self.ws.events())
            if not data and not self.events:
                raise EOFError("closed")
        return self.events.pop(0)

    def send(self, message: dict[str, Any]) -> None:
        self.sock.sendall(self.ws.send(TextMessage(json.dumps(message))))

    def recv(self) -> dict[str, Any]:
        text = ""
        while True:
            event = self._next()
            if isinstance(event, CloseConnection):
                raise EOFError(f"close frame {event.code}")
            if isinstance(event, RejectConnection):
                raise EOFError(f"rejected {event.status_code}")
            if isinstance(event, TextMessage):
                text += event.data
                if event.message_finished:
                    answer = json.loads(text)
                    assert isinstance(answer, dict)
                    return answer

    def login(self, uid: int) -> dict[str, Any]:
        self.send({"user_id": uid, "friends": []})
        return self.recv()

    def close(self) -> None:
        self.sock.close()


def websocket_server(start_server: StartServer, *options: str
                     ) -> tuple[ServerProcess, int]:
    port = free_port()
    server = start_server("--websocket", f"haproxy:tcp:{port}:interface=127.0.0.1",
                          *options)
    server.wait_for_log(
        rf"presence websocket listening on haproxy:tcp:127.0.0.1:{port}")
    return server, port


@pytest.mark.parametrize("header, shown", [
    (v1("203.0.113.7", 5555), "203.0.113.7:5555"),
    (v2("198.51.100.9", 6000), "198.51.100.9:6000"),
], ids=["v1", "v2"])
def test_websocket_port_logs_the_real_address(
    start_server: StartServer, header: bytes, shown: str
) -> None:
    """Behind ``--websocket haproxy:tcp:...`` the join line of a WebSocket
    session names the client address from the PROXY header."""
    server, port = websocket_server(start_server)
    client = WebSocketClient(port, header)
    try:
        assert client.login(1)["type"] != "error"
        server.wait_for_log(rf"user 1 joins .* from {re.escape(shown)}$")
    finally:
        client.close()


def test_websocket_port_counts_per_real_address(start_server: StartServer) -> None:
    """``--max-per-ip 1`` on the WebSocket port counts the addresses in the
    headers: two real addresses log in, a second session from one of them
    gets error 16 naming --max-per-ip."""
    _, port = websocket_server(start_server, "--max-per-ip", "1")
    a = WebSocketClient(port, v1("203.0.113.7", 5555))
    b = WebSocketClient(port, v2("203.0.113.8", 5555))
    try:
        assert a.login(1)["type"] != "error"
        assert b.login(2)["type"] != "error"
        c = WebSocketClient(port, v2("203.0.113.7", 5556))
        try:
            error = c.recv()
            assert error["type"] == "error" and error["error"] == 16, error
            assert "--max-per-ip" in error["msg"]
        finally:
            c.close()
    finally:
        a.close()
        b.close()


def test_websocket_port_refuses_a_connection_without_header(
    start_server: StartServer,
) -> None:
    """On a haproxy: WebSocket endpoint a request without a PROXY header is
    closed without an HTTP answer."""
    _, port = websocket_server(start_server)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        gone_without_a_byte(sock)


# -- through a real HAProxy and nginx (docs/operations.rst's snippets) ------

HAPROXY = """\
defaults
    mode tcp
    timeout connect 5s
    timeout client  60s
    timeout server  60s

frontend presence_lines
    bind 127.0.0.1:{lines}
    default_backend presence_lines

backend presence_lines
    server node1 127.0.0.1:{server_lines} send-proxy-v2 check

frontend presence_websocket
    bind 127.0.0.1:{websocket}
    default_backend presence_websocket

backend presence_websocket
    server node1 127.0.0.1:{server_websocket} send-proxy check
"""

NGINX = """\
load_module /usr/lib/nginx/modules/ngx_stream_module.so;
error_log {dir}/error.log;
pid {dir}/nginx.pid;
events {{}}
stream {{
    upstream presence_lines     {{ server 127.0.0.1:{server_lines}; }}
    upstream presence_websocket {{ server 127.0.0.1:{server_websocket}; }}

    server {{
        listen 127.0.0.1:{lines};
        proxy_pass presence_lines;
        proxy_protocol on;
        proxy_timeout 10m;
    }}

    server {{
        listen 127.0.0.1:{websocket};
        proxy_pass presence_websocket;
        proxy_protocol on;
        proxy_timeout 10m;
    }}
}}
"""


def proxy_command(kind: str, config: Path) -> list[str]:
    if kind == "haproxy":
        return ["haproxy", "-db", "-f", str(config)]
    return ["nginx", "-p", str(config.parent), "-c", str(config),
            "-g", "daemon off;"]


def missing(reason: str) -> None:
    """Skip (or, in CI, fail) because the proxy cannot run."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: .ci/run installs it)")
    pytest.skip(reason)


class RealProxy:
    """HAProxy or nginx on loopback with the documented settings, started
    by L{start} once presence listens (HAProxy's health check would first
    mark it down)."""

    def __init__(self, kind: str, binary: str, workdir: Path) -> None:
        self.kind = kind
        self.binary = binary
        self.workdir = workdir
        self.ports = {name: free_port() for name in
                      ("lines", "websocket", "server_lines", "server_websocket")}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / f"{kind}.log"

    def start(self) -> None:
        config = self.workdir / f"{self.kind}.conf"
        template = HAPROXY if self.kind == "haproxy" else NGINX
        config.write_text(template.format(dir=self.workdir, **self.ports))
        command = proxy_command(self.kind, config)
        command[0] = self.binary
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(command, stdout=log,
                                         stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.ports["lines"]),
                                         1).close()
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{self.kind} did not start: "
                                       f"{self.log_path.read_text()}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


@pytest.fixture(params=["haproxy", "nginx"])
def real_proxy(request: pytest.FixtureRequest, tmp_path: Path
               ) -> Iterator[RealProxy]:
    """HAProxy or nginx (skipped when not installed), not yet started."""
    kind = request.param
    binary = shutil.which(kind) or shutil.which(kind, path="/usr/sbin")
    if binary is None:
        missing(f"{kind} is not installed (Debian: apt-get install {kind}"
                f"{' libnginx-mod-stream' if kind == 'nginx' else ''})")
    if kind == "nginx" and not os.path.exists(
            "/usr/lib/nginx/modules/ngx_stream_module.so"):
        missing("nginx's stream module is not installed "
                "(Debian: apt-get install libnginx-mod-stream)")
    assert binary is not None
    proxy = RealProxy(kind, binary, tmp_path)
    yield proxy
    proxy.stop()


def test_through_a_real_proxy(start_server: StartServer,
                              real_proxy: RealProxy) -> None:
    """Through HAProxy (send-proxy-v2 on the line port, send-proxy on the
    WebSocket port, health checks on) and through nginx's stream module
    (proxy_protocol on), configured as docs/operations.rst says: a line
    client and a WebSocket client from 127.0.0.2 are logged from 127.0.0.2
    (the proxy connects from 127.0.0.1)."""
    ports = real_proxy.ports
    server = start_server(
        "--port", f"haproxy:tcp:{ports['server_lines']}:interface=127.0.0.1",
        "--websocket",
        f"haproxy:tcp:{ports['server_websocket']}:interface=127.0.0.1")
    server.wait_for_log(r"presence websocket listening on")
    real_proxy.start()
    with LineSocket("127.0.0.1", ports["lines"], source="127.0.0.2") as line:
        local_port = line.sock.getsockname()[1]
        assert login(line, 1)["type"] == "welcome"
        server.wait_for_log(rf"user 1 joins .* from 127\.0\.0\.2:{local_port}$")
    ws = WebSocketClient(ports["websocket"], b"", source="127.0.0.2")
    try:
        local_port = ws.sock.getsockname()[1]
        assert ws.login(2)["type"] == "welcome"
        server.wait_for_log(rf"user 2 joins .* from 127\.0\.0\.2:{local_port}$")
    finally:
        ws.close()
