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
from twisted.logger import Logger

log = Logger()


class Flushable(Protocol):
    def flush(self) -> None:
        """Write out what was collected this turn (nothing, if nothing was)."""


class Outbox:
    """The sessions with lines to write at the end of this reactor turn.

    A session with a first line to write appends itself to C{dirty} and, if
    C{call} is None, calls L{schedule} (C{Session.deliver} does it inline: it
    runs once per delivery).  A session that flushed early (a large turn)
    may come again; its later C{flush} finds nothing and writes nothing.
    """

    __slots__ = ("_clock", "call", "dirty")

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self.dirty: list[Flushable] = []
        self.call: IDelayedCall | None = None

    def schedule(self) -> None:
        """Flush when the reactor has handled this turn's events."""
        self.call = self._clock.callLater(0, self.flush)

    def flush(self) -> None:
        """Write out every session added since the last flush, in that order."""
        call, self.call = self.call, None
        if call is not None and call.active():
            call.cancel()  # flushed ahead of its turn (tests, shutdown)
        dirty, self.dirty = self.dirty, []
        for session in dirty:
            try:
                session.flush()
            except Exception:
                # A bug in one front end must not keep the others' lines.
                log.failure("writing a session's lines failed")
