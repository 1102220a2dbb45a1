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
"""

from __future__ import annotations

from typing import Protocol

from twisted.internet.interfaces import IDelayedCall, IReactorTime


class Flushable(Protocol):
    def flush(self) -> None:
        """Write out what was collected this turn (nothing, if nothing was)."""


class Outbox:
    """The sessions with lines to write at the end of this reactor turn."""

    __slots__ = ("_call", "_clock", "_dirty")

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._dirty: list[Flushable] = []
        self._call: IDelayedCall | None = None

    def add(self, session: Flushable) -> None:
        """C{session} has lines to write: flush it at the end of the turn.

        A session that flushed early (a large turn) may come again; its
        later C{flush} finds nothing and writes nothing.
        """
        self._dirty.append(session)
        if self._call is None:
            self._call = self._clock.callLater(0, self.flush)

    def flush(self) -> None:
        """Write out every session added since the last flush, in that order."""
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()  # flushed ahead of its turn (tests, shutdown)
        dirty, self._dirty = self._dirty, []
        for session in dirty:
            session.flush()

    def __len__(self) -> int:
        return len(self._dirty)
