"""WebSocket frames the server writes, and the client frames it reads itself.

Writing: a server's frames are not masked (RFC 6455 5.1), so the frame of
an event is the same bytes for every watcher: L{frames} builds it once for
a run of writes of the same line (the registry encodes an event once, and
the outbox writes its watchers one after another).

Reading: twisted.web.websocket hands each read to wsproto, which parses it
through some fifty Python calls per message (buffers, a generator, events,
Twisted's single-dispatch handlers), about as much as the rest of a status
change costs.  Nearly every read from a presence client is one or a few
whole text messages, each a single masked frame.  L{client_messages} reads
exactly those (each unmasked, checked to be UTF-8) and L{wsproto_idle}
says when doing so leaves nothing of wsproto's state behind: no bytes
buffered, no message begun, the connection open, no extension.  Anything
else (a control frame, a fragment, a frame cut by the read, bad UTF-8, a
frame without a mask) goes to wsproto as before, which answers errors as it
always did.  This leans on wsproto's and Twisted's internals; L{readable}
checks a connection for them once, and C{presence.test.test_wsframes}
fails if an upgrade changes them.
"""

from __future__ import annotations

import struct
from typing import Any

try:
    from wsproto import Connection, ConnectionState
except ImportError:  # pragma: no cover (twisted.web.websocket needs it)
    Connection = ConnectionState = None  # type: ignore[assignment,misc]


def text_frame(payload: bytes) -> bytes:
    """A server's (unmasked) text frame holding C{payload}."""
    n = len(payload)
    if n < 126:
        return b"\x81" + bytes((n,)) + payload
    if n < 1 << 16:
        return b"\x81\x7e" + struct.pack("!H", n) + payload
    return b"\x81\x7f" + struct.pack("!Q", n) + payload


# The last lone line framed, and its frame (see the module doc).
_last: tuple[bytes, bytes] = (b"", b"")


def frames(data: bytes) -> bytes:
    """C{data}'s JSON lines as text frames, one per line, without the C{\\n}."""
    global _last
    last = _last
    if data is last[0]:
        return last[1]
    if data.endswith(b"\n") and data.count(b"\n") == 1:
        frame = text_frame(data[:-1])
        _last = (data, frame)
        return frame
    # Several lines (a watcher's events of one turn): a short line's header
    # is picked by its length, without a call per line.
    out: list[bytes] = []
    for line in data.split(b"\n"):
        if line:
            n = len(line)
            if n < 126:
                out.append(_HEADS[n])
                out.append(line)
            else:
                out.append(text_frame(line))
    return b"".join(out)


_HEADS = [b"\x81" + bytes((n,)) for n in range(126)]


def unmask(payload: bytes, key: bytes) -> bytes:
    """C{payload} XORed with the 4-byte C{key}, repeated (RFC 6455 5.3)."""
    n = len(payload)
    keys = (key * (n // 4 + 1))[:n]
    return (
        int.from_bytes(payload, "little") ^ int.from_bytes(keys, "little")
    ).to_bytes(n, "little")


def client_messages(data: bytes) -> list[bytes] | None:
    """The messages of C{data} if it is nothing but whole, final, masked
    text frames of valid UTF-8 shorter than 64 KiB; None otherwise (then
    wsproto reads it)."""
    out: list[bytes] = []
    pos, n = 0, len(data)
    while pos < n:
        if n - pos < 6 or data[pos] != 0x81:  # FIN, no RSV bits, text
            return None
        length = data[pos + 1] - 0x80  # the mask bit must be set
        head = pos + 2
        if length == 126:
            if n - head < 2:
                return None
            length = (data[head] << 8) | data[head + 1]
            if length < 126:
                return None  # not the shortest form: wsproto refuses it
            head += 2
        elif not 0 <= length < 126:
            return None  # unmasked, or a 64-bit length
        end = head + 4 + length
        if end > n:
            return None
        payload = unmask(data[head + 4:end], data[head:head + 4])
        try:
            payload.decode("utf-8")
        except UnicodeDecodeError:
            return None
        out.append(payload)
        pos = end
    return out


def readable(ws: Any) -> bool:
    """Whether L{wsproto_idle} can look into C{ws} (Twisted's wire protocol
    of one server connection, on a wsproto C{Connection})."""
    try:
        conn = ws._wsconn
        proto = conn._proto
        decoder = proto._frame_decoder
        return (
            Connection is not None
            and type(conn) is Connection
            and hasattr(conn, "_state")
            and hasattr(conn, "_events")
            and isinstance(decoder.buffer.buffer, bytearray)
            and hasattr(decoder, "header")
            and hasattr(proto._message_decoder, "opcode")
            and isinstance(proto.extensions, list)
            and isinstance(ws._textBuffer.data, str)
        )
    except AttributeError:
        return False


def wsproto_idle(ws: Any) -> bool:
    """Whether wsproto holds nothing of C{ws}'s input: reading whole messages
    past it leaves it exactly as it would have been after them."""
    conn = ws._wsconn
    proto = conn._proto
    decoder = proto._frame_decoder
    return (
        conn._state is ConnectionState.OPEN
        and not conn._events
        and decoder.header is None
        and not decoder.buffer.buffer
        and proto._message_decoder.opcode is None
        and not proto.extensions
        and not ws._textBuffer.data
    )
