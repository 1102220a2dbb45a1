"""L{Outbox}: each session's deliveries of a reactor turn go out in one write.

A status change reaches each watcher as a line of its own, and in a busy turn
one watcher gets several (its friends change in the same batch of reads).  A
write per line costs a send(2) each, which is most of what a delivery costs.
So a session collects the lines it is given in a turn and registers once
here; the L{Outbox} flushes every session that has any with one call of
C{callLater(0)}, which the reactor runs after handling the whole batch of
events one C{epoll_wait} returned, before it waits again (Redis does the same
with its clients' pending writes in C{beforeSleep}).  A lone event is so
delayed only by the rest of its batch.

On Twisted's epoll reactor the flush is instead one of the calls the
reactor's L{TurnEnd} makes right after the batch (cheaper than a
C{DelayedCall}, L{presence.server.turn}), when the first line of the turn
comes while the reactor handles the batch's events; lines given by timed
calls (pings, fair-share turns) still go out through C{callLater(0)}.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from twisted.internet.base import DelayedCall
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from presence.server.turn import turn_end

log = Logger()

# Outbox.call while the flush waits in the reactor's TurnEnd: an early
# flush (tests, shutdown) leaves its later one nothing to write.
AT_TURN_END = object()


class Flushable(Protocol):
    def flush(self) -> None:
        """Write out what was collected this turn (nothing, if nothing was)."""


# How a flush writes out its sessions (Outbox's flush_all): by default each
# one's flush; a server passes its own loop (Session.flush inlined).
FlushAll = Callable[[list[Flushable]], None]


def flush_each(sessions: list[Flushable]) -> None:
    """C{session.flush()} for each of C{sessions}, in order."""
    for session in sessions:
        try:
            session.flush()
        except Exception:
            # A bug in one front end must not keep the others' lines.
            log.failure("writing a session's lines failed")


class Outbox:
    """The sessions with lines to write at the end of this reactor turn.

    A session with a first line to write appends itself to C{dirty} and, if
    C{call} is None, calls L{schedule} (C{Session.deliver} does it inline: it
    runs once per delivery).  A session that flushed early (a large turn)
    may come again; its later C{flush} finds nothing and writes nothing.
    """

    __slots__ = ("_clock", "_end", "_flush_all", "call", "dirty")

    def __init__(self, clock: IReactorTime, flush_all: FlushAll | None = None) -> None:
        self._clock = clock
        self._flush_all = flush_all or flush_each
        self._end = turn_end(clock)
        self.dirty: list[Flushable] = []
        # How the flush is scheduled: a DelayedCall, AT_TURN_END, or None.
        self.call: IDelayedCall | object | None = None

    def schedule(self) -> None:
        """Flush when the reactor has handled this turn's events."""
        end = self._end
        if end is not None and end.later(self.flush):
            self.call = AT_TURN_END
        else:
            self.call = self._clock.callLater(0, self.flush)

    def flush(self) -> None:
        """Write out every session added since the last flush, in that order."""
        call, self.call = self.call, None
        if isinstance(call, DelayedCall) and call.active():
            call.cancel()  # flushed ahead of its turn (tests, shutdown)
        dirty, self.dirty = self.dirty, []
        self._flush_all(dirty)
