"""The load generator's WebSocket client: the bench's users over C{/ws}.

For C{presence-bench --transport websocket}: the same workers, graph and
phases as L{presence.bench.loadgen}, and the same messages (the line
protocol's JSON, docs/protocol.rst "WebSocket"), carried one per text frame
instead of one per line.  A connection first sends the HTTP upgrade request
for C{/ws}; once the server's C{101} (with the right C{Sec-WebSocket-Accept})
has come, it sends its login as a masked text frame, and from then on the
server's text frames (unmasked) go through the worker's per-message handling
(L{Worker.messages}) exactly as lines do.

The frames are built and parsed here, by hand and without a library, as the
TCP worker splits its lines: the load generator must stay cheap next to the
server it measures.  A client's frames must be masked (RFC 6455 5.3); the
mask key is four random bytes per frame.  A server's ping is answered with a
pong; a close frame from it is a lost connection, as the end of a TCP stream
is for the line protocol.
"""

from __future__ import annotations

import base64
import hashlib
import os
import socket
from typing import Any

from presence.bench.loadgen import C_ERRORS, CLOSED, CONNECTING, Conn, Worker

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 4.2.2
MAX_HEAD = 16 * 1024  # the longest upgrade response accepted
TEXT, BINARY, CLOSE, PING, PONG, CONTINUATION = 0x1, 0x2, 0x8, 0x9, 0xA, 0x0
HANDSHAKE_ERROR = -4  # errors key: the upgrade was refused or malformed
FRAME_ERROR = -5  # errors key: a frame the client cannot read


class WebSocketError(Exception):
    """The server's bytes are not a WebSocket handshake or frame we accept."""


def mask(payload: bytes, key: bytes) -> bytes:
    """C{payload} XORed with the 4-byte C{key}, repeated (RFC 6455 5.3)."""
    n = len(payload)
    if not n:
        return payload
    keys = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(keys, "big")).to_bytes(
        n, "big")


def client_frame(payload: bytes, opcode: int = TEXT, key: bytes | None = None) -> bytes:
    """One final, masked frame of C{payload}, as a client must send it."""
    if key is None:
        key = os.urandom(4)
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 1 << 16:
        head = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
    return head + key + mask(payload, key)


def text_frames(data: bytes) -> bytes:
    """C{data}'s lines (the line protocol's bytes), one masked text frame
    each, without their C{\\n}."""
    return b"".join(client_frame(line) for line in data.split(b"\n") if line)


def upgrade_request(host: str, port: int, key: bytes) -> bytes:
    """The HTTP request that opens a WebSocket at C{/ws} (C{key}: the
    base64 C{Sec-WebSocket-Key})."""
    return (
        b"GET /ws HTTP/1.1\r\n"
        b"Host: %s:%d\r\n"
        b"Upgrade: websocket\r\n"
        b"Connection: Upgrade\r\n"
        b"Sec-WebSocket-Key: %s\r\n"
        b"Sec-WebSocket-Version: 13\r\n"
        b"\r\n" % (host.encode(), port, key)
    )


def accept_for(key: bytes) -> bytes:
    """The C{Sec-WebSocket-Accept} a server answers C{key} with."""
    return base64.b64encode(hashlib.sha1(key + GUID).digest())


def new_key() -> bytes:
    """A fresh C{Sec-WebSocket-Key}: 16 random bytes, base64."""
    return base64.b64encode(os.urandom(16))


def check_response(head: bytes, key: bytes) -> None:
    """Raise L{WebSocketError} unless C{head} (the response up to its blank
    line) accepts the upgrade of C{key}."""
    lines = head.split(b"\r\n")
    status = lines[0].split(None, 2)
    if len(status) < 2 or not status[0].startswith(b"HTTP/") or status[1] != b"101":
        raise WebSocketError(f"upgrade refused: {lines[0][:80]!r}")
    headers: dict[bytes, bytes] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    if headers.get(b"upgrade", b"").lower() != b"websocket":
        raise WebSocketError("101 without Upgrade: websocket")
    if headers.get(b"sec-websocket-accept") != accept_for(key):
        raise WebSocketError("wrong Sec-WebSocket-Accept")


class FrameReader:
    """The client side of one connection's incoming bytes: first the upgrade
    response, then the server's frames, across reads split anywhere.

    L{feed} returns the complete text messages of what has arrived so far.
    Meanwhile it sets C{opened} when the upgrade response has been accepted
    (the caller clears it), collects ping payloads in C{pings} (the caller
    answers and clears them), and sets C{closed} at a close frame.  A refused
    upgrade or an unreadable frame raises L{WebSocketError}.
    """

    __slots__ = ("buf", "closed", "fragments", "key", "open", "opened", "pings")

    def __init__(self, key: bytes) -> None:
        self.key = key
        self.buf = b""
        self.open = False  # the upgrade response has been accepted
        self.opened = False  # ... by the last feed (the caller clears it)
        self.closed = False
        self.pings: list[bytes] = []
        self.fragments: list[bytes] | None = None  # a fragmented text message

    def feed(self, data: bytes) -> list[bytes]:
        buf = self.buf + data if self.buf else data
        if not self.open:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > MAX_HEAD:
                    raise WebSocketError("upgrade response too long")
                self.buf = buf
                return []
            check_response(buf[:end], self.key)
            self.open = self.opened = True
            buf = buf[end + 4:]
        messages: list[bytes] = []
        pos, n = 0, len(buf)
        while n - pos >= 2 and not self.closed:
            b0, b1 = buf[pos], buf[pos + 1]
            if b0 == 0x81 and b1 < 126 and self.fragments is None:
                # The server's usual frame: a whole, short text message.
                end = pos + 2 + b1
                if end > n:
                    break
                messages.append(buf[pos + 2:end])
                pos = end
                continue
            length = b1 & 0x7F
            start = pos + 2
            if length == 126:
                if n - start < 2:
                    break
                length = int.from_bytes(buf[start:start + 2], "big")
                start += 2
            elif length == 127:
                if n - start < 8:
                    break
                length = int.from_bytes(buf[start:start + 8], "big")
                start += 8
            key = None
            if b1 & 0x80:  # a server must not mask, but read it all the same
                if n - start < 4:
                    break
                key = buf[start:start + 4]
                start += 4
            end = start + length
            if end > n:
                break
            payload = buf[start:end]
            if key is not None:
                payload = mask(payload, key)
            pos = end
            opcode = b0 & 0x0F
            if opcode == TEXT or opcode == BINARY:
                if self.fragments is not None:
                    raise WebSocketError("a new message inside a fragmented one")
                if b0 & 0x80:
                    messages.append(payload)
                else:
                    self.fragments = [payload]
            elif opcode == CONTINUATION:
                if self.fragments is None:
                    raise WebSocketError("a continuation frame with no message")
                self.fragments.append(payload)
                if b0 & 0x80:
                    messages.append(b"".join(self.fragments))
                    self.fragments = None
            elif opcode == PING:
                self.pings.append(payload)
            elif opcode == CLOSE:
                self.closed = True
            elif opcode != PONG:
                raise WebSocketError(f"unknown opcode {opcode}")
        self.buf = buf[pos:]
        return messages


class WebSocketConn(Conn):
    """A connection with its upgrade key, frame reader, and the login frame
    it sends once the upgrade is accepted."""

    __slots__ = ("login", "reader")

    def __init__(self, uid: int, sock: socket.socket, live: bool) -> None:
        super().__init__(uid, sock, live)
        self.reader = FrameReader(new_key())
        self.login = b""


class WebSocketWorker(Worker):
    """A load-generator worker whose users are WebSocket clients of C{/ws}."""

    conn_class = WebSocketConn

    def connect(self, uid: int, live: bool, text: str | None = None) -> None:
        super().connect(uid, live, text)
        c = self.by_uid.get(uid)
        # The connection just made (a failed connect leaves none); every
        # other one of this user has sent, or still holds, its login frame.
        if isinstance(c, WebSocketConn) and c.state == CONNECTING and not c.login:
            # What the line protocol would send first waits for the 101.
            c.login = text_frames(c.out)
            port = self.ports[uid % len(self.ports)]
            c.out = upgrade_request(self.host, port, c.reader.key)

    def status_line(self, c: Conn) -> bytes:
        return text_frames(super().status_line(c))

    def pong_bytes(self) -> bytes:
        return text_frames(super().pong_bytes())

    def received(self, c: Conn, data: bytes, now: float) -> None:
        assert isinstance(c, WebSocketConn)
        reader = c.reader
        try:
            messages = reader.feed(data)
        except WebSocketError:
            code = FRAME_ERROR if reader.open else HANDSHAKE_ERROR
            self.errors[code] = self.errors.get(code, 0) + 1
            self.counters[self.base + C_ERRORS] += 1
            self.lost(c)
            return
        if reader.opened:
            reader.opened = False
            login, c.login = c.login, b""
            self.write(c, login)
        if reader.pings:
            for payload in reader.pings:
                self.write(c, client_frame(payload, PONG))
            reader.pings = []
        if messages and c.state != CLOSED:
            self.messages(c, messages, now)
        if reader.closed:
            self.lost(c)  # as the end of the stream is over TCP


def worker_config(host: str, port: int) -> dict[str, Any]:
    """What the workers' config says of the WebSocket port they connect to."""
    return {"host": host, "port": port, "ports": [port], "transport": "websocket"}
