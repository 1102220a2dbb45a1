"""The load generator's Redis client: the bench's users on Redis pub/sub.

For C{presence-bench --against redis}: the same workers, graph and phases as
L{presence.bench.loadgen}, speaking RESP3 to a redis-server instead of
presence's JSON lines.  Each user is one connection that says C{HELLO 3}
(RESP3, so that a subscribed connection may still publish) and SUBSCRIBEs to
its friends' channels; a status change is a C{PUBLISH} on the user's own
channel whose payload is C{t:<phase>:<time.time()>}, the text a presence
status change carries, so latency is measured the same way.

A connection counts as welcomed at the HELLO reply and as complete when
Redis has confirmed its last subscription (presence's snapshot).  Redis
answers every PUBLISH with the count of receivers, which presence does not
do; that is part of what Redis costs.  hiredis (the C parser the cluster
mode uses already) parses the replies and packs the commands, so the load
generator spends about what it spends on presence's lines.
"""

from __future__ import annotations

import socket
from typing import Any

import hiredis

from presence.bench.loadgen import (
    C_DELIVERED,
    C_ERRORS,
    C_LAST_RECV,
    CLOSED,
    MAX_SAMPLES,
    WELCOMED,
    Conn,
    Worker,
)


def command(*args: str | bytes) -> bytes:
    """One Redis command in RESP, packed by hiredis."""
    # hiredis's stub types the argument as a tuple of one item.
    packed: bytes = hiredis.pack_command(args)  # type: ignore[arg-type]
    return packed


HELLO = command("HELLO", "3")


def channel(uid: int) -> bytes:
    """The channel user C{uid} publishes its changes on."""
    return b"u%d" % uid


class RedisConn(Conn):
    """A connection with its own RESP parser (replies may span reads)."""

    __slots__ = ("reader",)

    def __init__(self, uid: int, sock: socket.socket, live: bool) -> None:
        super().__init__(uid, sock, live)
        self.reader = hiredis.Reader()


class RedisWorker(Worker):
    """A load-generator worker whose users are Redis pub/sub clients."""

    conn_class = RedisConn

    def login_bytes(self, uid: int, text: str | None) -> bytes:
        friends = self.graph[uid]
        if not friends:
            return HELLO
        return HELLO + command("SUBSCRIBE", *(channel(f) for f in friends))

    def status_line(self, c: Conn) -> bytes:
        payload = b"t:%s:%.6f" % (self.phase_tag.encode(), self.send_time())
        return command("PUBLISH", channel(c.uid), payload)

    def received(self, c: Conn, data: bytes, now: float) -> None:
        assert isinstance(c, RedisConn)
        reader = c.reader
        reader.feed(data)
        counters = self.counters
        base = self.base
        tag = self.phase_tag.encode()
        while True:
            reply: Any = reader.gets()
            if reply is False:
                return
            if isinstance(reply, list):  # a push (hiredis.PushNotification)
                kind = reply[0]
                if kind == b"message":
                    counters[base + C_DELIVERED] += 1
                    counters[base + C_LAST_RECV] = now
                    payload: bytes = reply[2]
                    if c.live and payload[:2] == b"t:":
                        ptag, _, stamp = payload[2:].partition(b":")
                        if ptag == tag and len(self.lat) < MAX_SAMPLES:
                            try:
                                self.lat.append(now - float(stamp))
                            except ValueError:
                                pass
                elif kind == b"subscribe":
                    # The reply's count is the connection's subscriptions.
                    if (c.state == WELCOMED and not c.complete
                            and reply[2] >= len(self.graph[c.uid])):
                        self.completed(c)
            elif type(reply) is dict:
                self.welcomed(c)  # HELLO's reply; complete if it has no friends
            elif isinstance(reply, hiredis.ReplyError):
                self.errors[-3] = self.errors.get(-3, 0) + 1
                counters[base + C_ERRORS] += 1
            # Anything else is PUBLISH's count of receivers.
            if c.state == CLOSED:
                return
