"""Blocking line sockets for the end-to-end tests in C{tests/}.

Plain sockets (optionally TLS) that speak the wire protocol one JSON line at a
time, with a deadline on every read so that a test fails instead of hanging.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Callable
from typing import Any

import orjson

from presence.bench.launch import rss_kib  # noqa: F401  (for the tests)
from presence.bench.wsload import FrameReader, new_key, text_frames, upgrade_request

Json = dict[str, Any]
DEFAULT_TIMEOUT = 10.0


class Closed(Exception):
    """The server closed (or reset) the connection."""


class LineSocket:
    """One client connection: send JSON lines, read JSON lines."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        rcvbuf: int | None = None,
        source: str | None = None,
        tls: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
    ) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            # Before connect, so that the window the server sees is small.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        if source is not None:
            sock.bind((source, 0))
        sock.settimeout(timeout)
        try:
            sock.connect((host, port))
            if tls is not None:
                sock = tls.wrap_socket(sock, server_hostname=server_hostname or host)
        except BaseException:
            sock.close()
            raise
        self.sock = sock
        self.timeout = timeout
        self._buffer = b""
        self.eof = False

    # -- writing -------------------------------------------------------------

    def send(self, *messages: Json | bytes) -> None:
        """Send JSON objects as lines, and bytes as they are, in one write."""
        self.sock.sendall(b"".join(
            m if isinstance(m, bytes) else orjson.dumps(m) + b"\n" for m in messages
        ))

    # -- reading -------------------------------------------------------------

    def _fill(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no line from the server in time")
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(65536)
        except (ConnectionResetError, ConnectionAbortedError, BrokenPipeError) as e:
            self.eof = True
            raise Closed(f"connection reset: {e}") from None
        except ssl.SSLError as e:
            self.eof = True
            raise Closed(f"TLS connection ended: {e}") from None
        except TimeoutError:
            raise TimeoutError("no line from the server in time") from None
        if not data:
            self.eof = True
            raise Closed("connection closed by the server")
        self._take(data)

    def _take(self, data: bytes) -> None:
        self._buffer += data

    def recv(self, timeout: float | None = None) -> Json:
        """The next line, parsed; L{Closed} at the end, TimeoutError if none."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while b"\n" not in self._buffer:
            if self.eof:
                raise Closed("connection closed by the server")
            self._fill(deadline)
        line, self._buffer = self._buffer.split(b"\n", 1)
        obj = orjson.loads(line)
        assert isinstance(obj, dict), line
        return obj

    def recv_until(
        self, predicate: Callable[[Json], bool], timeout: float | None = None
    ) -> tuple[Json, list[Json]]:
        """Read until a line matches; return it and the lines before it."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        skipped: list[Json] = []
        while True:
            message = self.recv(max(0.001, deadline - time.monotonic()))
            if predicate(message):
                return message, skipped
            skipped.append(message)

    def recv_all(self, quiet: float = 0.3) -> list[Json]:
        """Every line until the connection is quiet for C{quiet} seconds or ends."""
        messages: list[Json] = []
        while True:
            try:
                messages.append(self.recv(quiet))
            except (TimeoutError, Closed):
                return messages

    def collect(self, seconds: float) -> list[Json]:
        """Every line in the next C{seconds}, or until the connection ends.

        (The original demo's clients "stay for" a time and count what came.)
        """
        deadline = time.monotonic() + seconds
        messages: list[Json] = []
        while (left := deadline - time.monotonic()) > 0:
            try:
                messages.append(self.recv(left))
            except (TimeoutError, Closed):
                break
        return messages

    def expect_error(self, code: int, timeout: float | None = None) -> Json:
        """The next line is error C{code}; then the server closes the connection."""
        message = self.recv(timeout)
        assert message.get("type") == "error", message
        assert message["error"] == code, message
        self.expect_closed(timeout)
        return message

    def expect_closed(self, timeout: float | None = None) -> list[Json]:
        """Read (and return) lines until the server ends the connection."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        lines: list[Json] = []
        while True:
            try:
                lines.append(self.recv(max(0.001, deadline - time.monotonic())))
            except Closed:
                return lines

    # -- the protocol ----------------------------------------------------------

    def login(self, user_id: int, friends: list[int] | None = None,
              **fields: Any) -> Json:
        """Log in; return the welcome (snapshot lines stay to be read)."""
        self.send({"user_id": user_id, "friends": friends or [], **fields})
        welcome = self.recv()
        assert welcome.get("type") == "welcome", welcome
        return welcome

    def presence(self, timeout: float | None = None) -> Json:
        """The next presence event (pings are answered and skipped)."""
        while True:
            message = self.recv(timeout)
            if message.get("type") == "ping":
                self.send({"type": "pong"})
                continue
            assert message.get("type") == "presence", message
            return message

    def roundtrip(self) -> list[Json]:
        """Ping and wait for the pong; return the lines that came before it."""
        self.send({"type": "ping"})
        _, before = self.recv_until(lambda m: m.get("type") == "pong")
        return before

    def close(self) -> None:
        """Close the socket; closing twice, or a broken one, is harmless."""
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self) -> LineSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class WebSocketSocket(LineSocket):
    """A L{LineSocket} over WebSocket at C{/ws}: each line it sends is one
    masked text frame, each text message it receives is read as a line."""

    def __init__(self, host: str, port: int, **options: Any) -> None:
        super().__init__(host, port, **options)
        self.reader = FrameReader(new_key())
        self.sock.sendall(upgrade_request(host, port, self.reader.key))
        deadline = time.monotonic() + self.timeout
        while not self.reader.open:
            self._fill(deadline)

    def send(self, *messages: Json | bytes) -> None:
        self.sock.sendall(text_frames(b"".join(
            m if isinstance(m, bytes) else orjson.dumps(m) + b"\n" for m in messages
        )))

    def _take(self, data: bytes) -> None:
        for message in self.reader.feed(data):
            self._buffer += message + b"\n"
        if self.reader.closed:
            self.eof = True  # a close frame ends the stream


def free_port() -> int:
    """A loopback TCP port that nothing listened on a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def presence_events(messages: list[Json]) -> list[tuple[int, bool]]:
    """The (user_id, online) of each presence event among C{messages}."""
    return [(m["user_id"], m["online"]) for m in messages if m["type"] == "presence"]


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0,
               what: str = "condition") -> None:
    """Poll C{predicate} until it holds (end-to-end tests only)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


