"""Deadlines: one heap and one DelayedCall for every connection's timer."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from presence.core.timers import BATCH, SPACING, Deadlines


class Owner:
    def __init__(self, log: list[tuple[str, float]], name: str, clock: Clock) -> None:
        self.deadline: float | None = None
        self.deadline_seq = 0
        self.log, self.name, self.clock = log, name, clock
        self.then: list[tuple[Deadlines, float]] = []

    def deadline_reached(self) -> None:
        self.log.append((self.name, self.clock.seconds()))
        for deadlines, delay in self.then:
            deadlines.set(self, self.clock.seconds() + delay)
        self.then = []


class DeadlinesCase(SynchronousTestCase):
    """A deadline heap on a fake clock, and owners that log their calls."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.log: list[tuple[str, float]] = []
        self.d = Deadlines(self.clock)

    def owner(self, name: str) -> Owner:
        return Owner(self.log, name, self.clock)


class DeadlinesTests(DeadlinesCase):
    """Deadlines fire in order, once, late by at most the slack."""

    def test_fires_at_deadline(self) -> None:
        """Each owner is called at its deadline, earliest first, once."""
        a, b = self.owner("a"), self.owner("b")
        self.d.set(b, 5)
        self.d.set(a, 3)
        self.clock.advance(2.9)
        self.assertEqual(self.log, [])
        self.clock.advance(0.1)
        self.assertEqual(self.log, [("a", 3)])
        self.clock.advance(2)
        self.assertEqual(self.log, [("a", 3), ("b", 5)])
        self.clock.advance(10)
        self.assertEqual(len(self.log), 2)

    def test_one_call_for_many(self) -> None:
        """However many deadlines, the clock holds one call."""
        for i in range(100):
            self.d.set(self.owner(str(i)), 10 + i)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.assertEqual(len(self.d), 100)

    def test_postpone(self) -> None:
        """A postponed deadline fires at its new time, not the old one."""
        a = self.owner("a")
        self.d.set(a, 3)
        self.clock.advance(2)
        self.d.postpone(a, 6)
        self.clock.advance(1)
        self.assertEqual(self.log, [])
        self.clock.advance(3)
        self.assertEqual(self.log, [("a", 6)])

    def test_postpone_unset_does_nothing(self) -> None:
        """Postponing an owner without a deadline does not give it one."""
        a = self.owner("a")
        self.d.postpone(a, 6)
        self.clock.advance(10)
        self.assertEqual(self.log, [])

    def test_set_replaces(self) -> None:
        """Setting again replaces the deadline, earlier or later."""
        a, b = self.owner("a"), self.owner("b")
        self.d.set(a, 5)
        self.d.set(a, 2)
        self.d.set(b, 2)
        self.d.set(b, 7)
        self.clock.pump([1] * 10)
        self.assertEqual(self.log, [("a", 2), ("b", 7)])

    def test_cancel(self) -> None:
        """A cancelled owner is not called; with none left, no call stays."""
        a, b = self.owner("a"), self.owner("b")
        self.d.set(a, 5)
        self.d.set(b, 6)
        self.d.cancel(a)
        self.d.cancel(a)
        self.assertEqual(len(self.d), 1)
        self.d.cancel(b)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(10)
        self.assertEqual(self.log, [])

    def test_set_from_callback(self) -> None:
        """An owner may set its next deadline while being called."""
        a = self.owner("a")
        a.then = [(self.d, 4)]
        self.d.set(a, 1)
        self.clock.advance(1)
        self.clock.advance(4)
        self.assertEqual(self.log, [("a", 1), ("a", 5)])

    def test_slack_batches_late_never_early(self) -> None:
        """With slack, one wakeup serves deadlines up to slack later, none early."""
        d = Deadlines(self.clock, slack=0.5)
        for name, when in (("a", 1.0), ("b", 1.3), ("c", 1.6)):
            d.set(self.owner(name), when)
        self.clock.advance(1.49)
        self.assertEqual(self.log, [])
        self.clock.advance(0.01)
        self.assertEqual(self.log, [("a", 1.5), ("b", 1.5)])
        self.clock.advance(0.6)
        self.assertEqual(self.log[2:], [("c", 2.1)])

    def test_batches_are_bounded(self) -> None:
        """At most BATCH owners are called in one turn; the rest in the next ones."""
        for i in range(BATCH * 2 + 1):
            self.d.set(self.owner(str(i)), 1)
        self.clock.advance(1)
        self.assertEqual(len(self.log), BATCH)
        self.clock.advance(SPACING)
        self.assertEqual(len(self.log), BATCH * 2)
        self.clock.advance(SPACING)
        self.assertEqual(len(self.log), BATCH * 2 + 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(len(self.d), 0)

    def test_one_call_after_many_full_batches(self) -> None:
        """Owners that re-arm in batches larger than BATCH leave one call, not more.

        (A follow-up call used to replace the one an owner had just scheduled
        without cancelling it: every large batch left another wakeup chain.)
        """
        owners = [self.owner(str(i)) for i in range(BATCH * 3)]
        for o in owners:
            self.d.set(o, 1)
        for round_ in range(1, 9):
            for o in owners:
                o.then = [(self.d, 5)]
            self.clock.pump([1] * 5)
            self.assertEqual(len(self.log), BATCH * 3 * round_)
            self.assertEqual(len(self.clock.getDelayedCalls()), 1)

    def test_failing_owner(self) -> None:
        """An owner that raises is logged; the others are still called."""
        bad, good = self.owner("bad"), self.owner("good")

        def explode() -> None:
            raise RuntimeError("boom")

        bad.deadline_reached = explode  # type: ignore[method-assign]
        self.d.set(bad, 1)
        self.d.set(good, 2)
        self.clock.pump([1, 1])
        self.assertEqual(self.log, [("good", 2)])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class HeapSizeTests(DeadlinesCase):
    """Dead entries (cancelled or superseded deadlines) do not pile up."""

    def test_churn_leaves_no_dead_entries(self) -> None:
        """Under login/close churn the heap stays within twice the live owners.

        1,000 long-lived owners stay; 20,000 short-lived ones arrive with a
        deadline 60 s away and are cancelled (their connection closed) well
        before it.  Before the fix every cancelled one stayed in the heap
        (and kept its owner alive) until its old deadline came up.
        """
        stay = [self.owner(f"s{i}") for i in range(1000)]
        for o in stay:
            self.d.set(o, 60)
        largest = 0
        for i in range(20_000):
            o = self.owner(f"c{i}")
            self.d.set(o, self.clock.seconds() + 60)
            self.d.cancel(o)
            largest = max(largest, self.d.entries)
            if i % 1000 == 0:
                self.clock.advance(0.1)
        self.assertEqual(len(self.d), 1000)
        self.assertLessEqual(largest, 2 * 1000 + 64 + 1)
        self.assertLessEqual(self.d.entries, 2 * 1000 + 64)

    def test_repeated_set_compacts(self) -> None:
        """Moving the same owners earlier again and again does not grow the heap
        (each superseded entry sinks below the new one)."""
        owners = [self.owner(str(i)) for i in range(100)]
        for round_ in range(200):
            for o in owners:
                self.d.set(o, 1000 - round_)
        self.assertEqual(len(self.d), 100)
        self.assertLessEqual(self.d.entries, 2 * 100 + 64)

    def test_compaction_keeps_every_deadline(self) -> None:
        """After compaction every live owner still fires once, at its deadline,
        including one postponed before the compaction."""
        keep = [self.owner(f"k{i}") for i in range(10)]
        for n, o in enumerate(keep):
            self.d.set(o, 10 + n)
        self.d.postpone(keep[0], 30)
        for i in range(500):
            o = self.owner(f"c{i}")
            self.d.set(o, 5)
            self.d.cancel(o)
        self.assertLessEqual(self.d.entries, 2 * 10 + 64)
        self.clock.pump([1] * 40)
        self.assertEqual(
            self.log, [(f"k{n}", 10 + n) for n in range(1, 10)] + [("k0", 30)]
        )
