"""The load generator's v0 client: the bench's users as the demo's clients.

For C{presence-bench --transport v0}: the same workers, graph and phases as
L{presence.bench.loadgen}, each user a client of protocol v0 (PROTOCOL.md,
"Protocol v0") that behaves as the original demo's does
(C{tests/democlient.py}): it writes its login as Go marshals it, with no
terminator, and after each reply waits C{poll} seconds (the demo's one) and
writes the same login again.  The server never writes unasked; each message
gets exactly one reply, the oldest queued event (C{{"online":true}} or
C{{"online":false}}) or the demo's pong.

A v0 client sees nothing but online and offline, so a change here is the
user turning C{invisible} and back (C{{"type":"status",...}}, no terminator:
any message is allowed on a v0 connection, and each one is answered).  Each
toggle changes the user's visible state once and so queues exactly one event
for every friend, as a status change is one delivery per friend over lines.
The demo's client never changes status itself; this one does, on the same
connection, so that a user is one connection on every path.

A v0 event names neither the friend nor the time: latency cannot be read off
it.  Each worker keeps instead what its users sent (who, when, which way) and
what they received (who, when, which way); the controller pairs them
(L{presence.bench.v0bench}).  A connection is welcomed at its first reply
(the login's) and complete when it has been told of every friend online.
"""

from __future__ import annotations

import json
import socket
from array import array
from collections import deque
from typing import Any

import orjson

from presence.bench.loadgen import (
    C_DELIVERED,
    C_ERRORS,
    C_LAST_RECV,
    C_PINGS,
    CLOSED,
    LOGGING_IN,
    MAX_SAMPLES,
    Conn,
    Worker,
)

ONLINE = b'{"online":true}'
OFFLINE = b'{"online":false}'
PONG = b'{"msg":"are you still there?","error":0}'
HIDE = b'{"type":"status","status":"invisible"}'
SHOW = b'{"type":"status","status":"online"}'
POLL, CHANGE = True, False  # what a reply answers
DECODER = json.JSONDecoder()


class V0Conn(Conn):
    """A v0 connection: its login (re-sent at each poll), what its replies
    answer, in order, whether its user is invisible, and how many friends
    it has been told are online so far."""

    __slots__ = ("asked", "hidden", "login", "told")

    def __init__(self, uid: int, sock: socket.socket, live: bool) -> None:
        super().__init__(uid, sock, live)
        self.login = b""
        self.asked: deque[bool] = deque()
        self.hidden = False
        self.told = 0


def split_replies(data: bytes) -> tuple[list[Any], bytes]:
    """The replies in C{data} (concatenated JSON values, no terminators)
    and what is left of an incomplete one."""
    out: list[Any] = []
    pos, n = 0, len(data)
    while pos < n:
        # Nearly every reply is one of these constants.
        for known, value in ((ONLINE, True), (OFFLINE, False), (PONG, None)):
            if data.startswith(known, pos):
                out.append(value)
                pos += len(known)
                break
        else:
            text = data[pos:].decode("utf-8", "replace")
            stripped = text.lstrip()
            if not stripped:
                return out, b""
            try:
                value, end = DECODER.raw_decode(stripped)
            except json.JSONDecodeError:
                return out, data[pos:]  # cut by the read: wait for the rest
            out.append(value if isinstance(value, dict) else {"error": -1})
            pos += len(stripped[:end].encode()) + len(text) - len(stripped)
    return out, b""


class V0Worker(Worker):
    """A load-generator worker whose users are v0 clients polling the server."""

    conn_class = V0Conn

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.poll_interval: float = float(self.config.get("poll") or 1.0)
        self.sent_uid = array("i")
        self.sent_time = array("d")
        self.sent_online = array("b")
        self.recv_uid = array("i")
        self.recv_time = array("d")
        self.recv_online = array("b")

    def login_bytes(self, uid: int, text: str | None) -> bytes:
        # The demo's login, as Go's json.Marshal writes it (omitempty).
        login: dict[str, Any] = {"user_id": uid}
        if self.graph[uid]:
            login["friends"] = self.graph[uid]
        return orjson.dumps(login)

    def connect(self, uid: int, live: bool, text: str | None = None) -> None:
        super().connect(uid, live, text)
        c = self.by_uid.get(uid)
        if isinstance(c, V0Conn) and not c.login:
            c.login = c.out
            c.asked.append(POLL)

    def poll(self, c: V0Conn) -> None:
        if c.state == CLOSED:
            return
        c.asked.append(POLL)
        self.write(c, c.login)

    def status_line(self, c: Conn) -> bytes:
        assert isinstance(c, V0Conn)
        stamp = self.send_time()
        c.hidden = not c.hidden
        c.asked.append(CHANGE)
        if len(self.sent_time) < MAX_SAMPLES:
            self.sent_uid.append(c.uid)
            self.sent_time.append(stamp)
            self.sent_online.append(not c.hidden)
        return HIDE if c.hidden else SHOW

    def start_phase(self, tag: str, kind: str) -> None:
        for name in ("sent_uid", "recv_uid"):
            setattr(self, name, array("i"))
        for name in ("sent_time", "recv_time"):
            setattr(self, name, array("d"))
        for name in ("sent_online", "recv_online"):
            setattr(self, name, array("b"))
        super().start_phase(tag, kind)

    def collect(self) -> dict[str, Any]:
        out = super().collect()
        out["v0"] = {name: getattr(self, name).tobytes() for name in (
            "sent_uid", "sent_time", "sent_online",
            "recv_uid", "recv_time", "recv_online")}
        return out

    def received(self, c: Conn, data: bytes, now: float) -> None:
        assert isinstance(c, V0Conn)
        replies, c.buf = split_replies(c.buf + data if c.buf else data)
        counters, base = self.counters, self.base
        for reply in replies:
            asked = c.asked.popleft() if c.asked else CHANGE
            if c.state == LOGGING_IN and not isinstance(reply, dict):
                self.welcomed(c)
            if reply is True or reply is False:
                counters[base + C_DELIVERED] += 1
                counters[base + C_LAST_RECV] = now
                if reply and not c.complete:
                    c.told += 1
                    if c.told >= len(self.graph[c.uid]):
                        self.completed(c)
                if (c.live and self.kind == "fanout"
                        and len(self.recv_time) < MAX_SAMPLES):
                    self.recv_uid.append(c.uid)
                    self.recv_time.append(now)
                    self.recv_online.append(reply)
            elif reply is None:
                counters[base + C_PINGS] += 1
            else:
                code = reply.get("error", -2)
                code = code if type(code) is int else -2
                self.errors[code] = self.errors.get(code, 0) + 1
                counters[base + C_ERRORS] += 1
            if asked is POLL and c.state != CLOSED:
                # The demo sleeps a second after each read, then asks again.
                self.later(self.poll_interval, lambda c=c: self.poll(c))  # type: ignore[misc]
            if c.state == CLOSED:
                return
