"""One timer for all connections: a heap of deadlines on the injected clock.

Twisted's C{TimeoutMixin} gives every connection its own C{DelayedCall}.  With
tens of thousands of idle connections that is the main idle cost: every line
a client sends postpones its call (a "lazy" reset that the reactor resolves
by popping and pushing it again, through Python-level comparisons), and
setting a shorter timeout searches the reactor's whole heap.  L{Deadlines}
keeps (when, sequence, owner) tuples in a C{heapq} (compared in C), postpones
by just updating the owner's deadline, and keeps a single C{DelayedCall} for
the earliest deadline.  With C{slack}, a wakeup also serves every deadline
due within that many seconds after it, so that one reactor turn pings many
idle clients; a deadline then fires up to C{slack} late, never early.  At
most L{BATCH} owners are called in one turn; the rest follow L{SPACING}
seconds later, so that the network is served in between, and the pongs that
answer a batch of pings come back spread out rather than all at once.

A cancelled or replaced deadline leaves a dead entry behind (removing it from
the middle of a heap would cost O(n)).  When dead entries outnumber live ones
(and there are more than L{COMPACT_FLOOR}), the heap is rebuilt from the live
ones alone: O(n) work at most once per n/2 cancellations, so still O(1) each
amortised, and a closed connection is not kept in memory until its old
deadline (at ``--timeout 60``, churn used to hold about 2.4 KB per login).
"""

from __future__ import annotations

import heapq
from typing import Protocol

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

BATCH = 64  # owners called in one reactor turn
SPACING = 0.005  # seconds between turns while more are due
COMPACT_FLOOR = 64  # dead entries tolerated whatever the number of live ones

class TimerOwner(Protocol):
    """What L{Deadlines} needs of an owner: its deadline slots and callback."""

    deadline: float | None
    deadline_seq: int

    def deadline_reached(self) -> None: ...


class Deadlines:
    """Every connection's one timer, on one heap and one C{DelayedCall}."""

    log = Logger()

    def __init__(self, clock: IReactorTime, slack: float = 0.0) -> None:
        self.clock = clock
        self.slack = slack
        self._heap: list[tuple[float, int, TimerOwner]] = []
        self._seq = 0
        self._call: IDelayedCall | None = None
        self._call_at = 0.0
        self._live = 0  # owners with a deadline
        self._running = False  # in _run, which schedules the next call itself

    def __len__(self) -> int:
        return self._live

    @property
    def entries(self) -> int:
        """Entries in the heap, live or dead (for tests and sizing)."""
        return len(self._heap)

    def set(self, owner: TimerOwner, when: float) -> None:
        """Call C{owner.deadline_reached()} at C{when} (replacing any deadline)."""
        self._seq += 1
        if owner.deadline is None:
            self._live += 1
        owner.deadline = when
        owner.deadline_seq = self._seq
        heapq.heappush(self._heap, (when, self._seq, owner))
        self._compact_if_sparse()
        self._schedule()

    @staticmethod
    def postpone(owner: TimerOwner, when: float) -> None:
        """Move a set deadline later: O(1), resolved when the old one comes up."""
        if owner.deadline is not None:
            owner.deadline = when

    def cancel(self, owner: TimerOwner) -> None:
        if owner.deadline is None:
            return
        owner.deadline = None
        self._live -= 1
        if not self._live:
            # Nothing left to wait for: drop the stale entries and the call.
            self._heap.clear()
            if self._call is not None and self._call.active():
                self._call.cancel()
            self._call = None
        else:
            self._compact_if_sparse()

    def _compact_if_sparse(self) -> None:
        # Each owner with a deadline has exactly one live entry (the one whose
        # sequence number it holds); every other entry is dead.
        heap = self._heap
        if len(heap) - self._live <= max(self._live, COMPACT_FLOOR):
            return
        # In place: _run may be iterating over this very list.  Live entries
        # take their owner's current (possibly postponed) deadline.
        heap[:] = [
            (owner.deadline, seq, owner)
            for _, seq, owner in heap
            if owner.deadline is not None and owner.deadline_seq == seq
        ]
        heapq.heapify(heap)

    def _schedule(self) -> None:
        if self._running:
            return
        heap = self._heap
        while heap and (
            heap[0][2].deadline_seq != heap[0][1] or heap[0][2].deadline is None
        ):
            heapq.heappop(heap)  # cancelled, or superseded by a later set()
        if not heap:
            return
        at = heap[0][0] + self.slack
        call = self._call
        if call is not None and call.active():
            if self._call_at <= at:
                return
            call.cancel()
        self._call_at = at
        delay = max(0.0, at - self.clock.seconds())
        self._call = self.clock.callLater(delay, self._run)

    def _run(self) -> None:
        self._call = None
        heap = self._heap
        due = self.clock.seconds()
        budget = BATCH
        # Owners set new deadlines while they are called; the one call that
        # follows is scheduled here, after the loop, and nowhere else.
        self._running = True
        try:
            while heap and heap[0][0] <= due:
                if not budget:
                    # More are due: let the reactor serve the network first.
                    self._call_at = due + SPACING
                    self._call = self.clock.callLater(SPACING, self._run)
                    return
                _, seq, owner = heapq.heappop(heap)
                if owner.deadline_seq != seq or owner.deadline is None:
                    continue  # cancelled, or superseded by a later set()
                if owner.deadline > due:
                    # Postponed since: wait for the new deadline.
                    heapq.heappush(heap, (owner.deadline, seq, owner))
                    continue
                owner.deadline = None
                self._live -= 1
                budget -= 1
                try:
                    owner.deadline_reached()
                except Exception:
                    # One owner's failure must not stop everyone's timers.
                    self.log.failure("timer of {owner!r} failed", owner=owner)
        finally:
            self._running = False
        self._schedule()
