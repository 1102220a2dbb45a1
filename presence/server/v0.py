"""Protocol v0: what the original demo's own clients are answered (sans-IO).

A v0 client (the demo's Go client, PROTOCOL.md "Protocol v0") writes its
login, with no terminator, then reads 256 bytes once, sleeps a second, and
repeats.  It must never receive anything unasked, and exactly one JSON value
per message it sends, without a terminator.  L{V0Replies} turns what the
session would write to a v1 client into those replies.

Detection is the front end's job (PROTOCOL.md; in the line front end,
C{presence.server.lines}, with C{V0_WAIT}): a connection is v0 when its
first message ends as an object (L{presence.wire.framing.OBJECT}) and no
C{\\n} follows within 100 ms.  Any line (a blank one included: the framer
reports an object's late C{\\n} as one) before then makes it v1.

How a session uses it, once it has decided that a connection is v0:

  - Everything it would write to a v1 client (welcome, presence events, one
    or several C{\\n}-joined lines at a time, pong, ping, error lines) goes to
    L{V0Replies.feed} instead of the transport.  When C{feed} returns False,
    more than C{max_buffer} bytes of events would wait: the session ends
    with error 14 (L{V0Replies.fatal}) and closes.
  - After it has handled each message the client sent (the login included;
    not blank lines, which carry none), and unless it closed the session
    meanwhile, it writes L{V0Replies.reply}: the one answer to that message.
  - On any fatal error it writes L{V0Replies.fatal} C{(code)}, then closes.
  - No ping reaches a v0 client (C{feed} drops it); a v0 connection silent
    for C{timeout} seconds is closed (error 1: L{V0Replies.fatal} gives
    nothing to write).
  - When the watch list loses friends, it may call L{V0Replies.forget}.

The rules (PROTOCOL.md, "Protocol v0"):

  - Events: C{{"online":true}} or C{{"online":false}}, one per change of a
    friend's online state as the client was told it: a friend's first online
    event (the snapshot's included) is queued, a later online event while the
    client was told online (a status or text change) is not; an offline event
    is queued only after an online one.  Welcome, ping and pong lines are
    dropped.
  - A reply is the oldest pending event, or, when none waits,
    C{{"msg":"are you still there?","error":0}} (the demo's pong).
  - Errors are C{{"msg":"[server] <wording>","error":N}}: the wording only,
    never a detail, so that every reply fits the client's 256-byte read.
    A non-fatal error (5, 6, 11, 13 after login: the session stays open) is
    the reply to the message that caused it, in place of an event; the
    events stay queued for the next messages.  An error line fed while a
    message is being handled is therefore kept as that message's reply (the
    first one, if there were several).  A fatal error is written at once,
    even unasked (the client finds it on its next read), then the session
    closes; the queue is dropped.  Error 1 (timeout) is written as nothing,
    as in the demo: the connection is just closed.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

import orjson

from presence.wire import PING_MSG
from presence.wire.errors import ErrorCode

ONLINE = b'{"online":true}'
OFFLINE = b'{"online":false}'
PONG = orjson.dumps({"msg": PING_MSG, "error": 0})


def render_error(code: int) -> bytes:
    """A v0 error: C{{"msg":"[server] <wording>","error":N}}; nothing for 1."""
    if code == ErrorCode.CLIENT_TIMEOUT:
        return b""
    try:
        wording = ErrorCode(code).wording
    except ValueError:  # a code this module does not know yet
        wording = ErrorCode.UNKNOWN.wording
    return orjson.dumps({"msg": f"[server] {wording}", "error": int(code)})


class V0Replies:
    """One v0 connection's pending events, and the reply to each message.

    C{max_buffer}: how many bytes of events may wait (C{--max-buffer}).
    """

    __slots__ = ("_error", "_max", "_online", "_queue", "overflowed", "pending")

    def __init__(self, max_buffer: int) -> None:
        self._max = max_buffer
        self._queue: deque[bytes] = deque()
        # Friends the client has been told (or a queued event will tell it)
        # are online.
        self._online: set[int] = set()
        self._error: int | None = None
        self.pending = 0
        """Bytes of events waiting for a message to answer."""
        self.overflowed = False
        """Whether more than C{max_buffer} bytes would have waited."""

    def __len__(self) -> int:
        """How many events wait."""
        return len(self._queue)

    def feed(self, data: bytes) -> bool:
        """Take what the session would write to a v1 client: one or several
        C{\\n}-terminated lines.  False when more than C{max_buffer} bytes of
        events would wait (the event is not queued; the session must end with
        error 14); from then on always False."""
        if self.overflowed:
            return False
        for line in data.split(b"\n"):
            if not line:
                continue
            message = orjson.loads(line)
            kind = message.get("type")
            if kind == "presence":
                uid = message["user_id"]
                if message["online"]:
                    if uid in self._online:
                        continue  # a status or text change: no v0 form
                    event = ONLINE
                else:
                    if uid not in self._online:
                        continue
                    event = OFFLINE
                if self.pending + len(event) > self._max:
                    self.overflowed = True
                    return False
                if event is ONLINE:
                    self._online.add(uid)
                else:
                    self._online.discard(uid)
                self._queue.append(event)
                self.pending += len(event)
            elif kind == "error":
                if self._error is None:
                    self._error = int(message["error"])
            # welcome, ping, pong: nothing in v0
        return True

    def reply(self) -> bytes:
        """The one reply to the message the session has just handled."""
        if self._error is not None:
            code, self._error = self._error, None
            return render_error(code)
        if self._queue:
            event = self._queue.popleft()
            self.pending -= len(event)
            return event
        return PONG

    def fatal(self, code: int) -> bytes:
        """What to write for a fatal error before closing (b"" for 1)."""
        self._queue.clear()
        self.pending = 0
        self._error = None
        return render_error(code)

    def forget(self, friends: Iterable[int]) -> None:
        """The session stopped watching these friends: what the client was
        told about them no longer counts (a later snapshot online is queued
        again, as a v1 client gets it again).  Optional; it keeps the state
        as small as the watch list."""
        self._online.difference_update(friends)
