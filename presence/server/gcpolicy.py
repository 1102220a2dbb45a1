"""How the server uses Python's garbage collector.

A server holding 19,000 sessions has a few hundred thousand objects the
collector tracks (about nine per session, plus the code).  A full collection
walks all of them and stopped the reactor for 100-300 ms on the reference
box: every client waiting on an event then waited that long (the churn
p99 in docs/performance.rst).  Sessions do not leave reference cycles when
they end (reference counting frees them; ``presence/test/test_gcpolicy.py``
checks it over real sockets), so walking the old ones again finds nothing.

So after each full collection the survivors are frozen (``gc.freeze``):
the next full collection walks only what was promoted since (Python runs
one when the objects promoted since the last reach a quarter of those it
kept, and at most once per ten young ones).  Frozen objects are still freed
by reference counting when they die; only a cycle among them would wait.
So once the frozen objects have grown by a quarter since everything was
last walked, they are unfrozen and the next full collection walks them all,
as Python's own rule would have done by then.  With a steady number of
sessions (churn included) that never comes; while sessions pile up it comes
as often as without the policy.  ``--gc default`` leaves the collector
alone.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from typing import Literal, Protocol

from twisted.application.service import Service

#: Growth of the frozen objects, since everything was last walked, that
#: makes the next full collection walk everything again (Python's own rule).
GROWTH = 1.25


class Collector(Protocol):
    """The part of the C{gc} module the policy uses (a fake in tests)."""

    callbacks: list[Callable[[Literal["start", "stop"], dict[str, int]], object]]

    def collect(self, generation: int = 2) -> int: ...

    def freeze(self) -> None: ...

    def unfreeze(self) -> None: ...

    def get_freeze_count(self) -> int: ...


class FreezeSurvivors(Service):
    """Freezes what survives a full collection; see the module doc."""

    name = "gc"

    def __init__(self, collector: Collector = gc) -> None:
        self.collector = collector
        self.walked = 0  # frozen objects after everything was last walked
        self.walking = False  # the next full collection walks everything
        self.walks = 0  # full collections that walked everything (for tests)

    def startService(self) -> None:
        super().startService()
        # What exists at start (code, configuration) lives as long as the
        # process: out of every full collection from now on.
        self.collector.collect()
        self.collector.freeze()
        self.walked = self.collector.get_freeze_count()
        self.collector.callbacks.append(self.after)

    def stopService(self) -> None:
        if self.after in self.collector.callbacks:
            self.collector.callbacks.remove(self.after)
        self.collector.unfreeze()
        return super().stopService()

    def after(self, phase: Literal["start", "stop"], info: dict[str, int]) -> None:
        """A C{gc.callbacks} entry: acts when a full collection ends."""
        if phase != "stop" or info["generation"] != 2:
            return
        self.collector.freeze()
        frozen = self.collector.get_freeze_count()
        if self.walking:
            self.walking = False
            self.walks += 1
            self.walked = frozen
        elif frozen > self.walked * GROWTH:
            self.collector.unfreeze()
            self.walking = True
