"""What replacing a long watch list costs the bus, counted.

A client that re-sends or replaces a 10,000-id list over and over must cost
the server work in proportion to what changed, not to the list's length:
these tests count the ids handed to the bus's follow and unfollow, and the
calls, instead of timing anything.
"""

from __future__ import annotations

from collections.abc import Iterable

from twisted.trial.unittest import SynchronousTestCase

from presence.test.support import Harness

LONG = list(range(1000, 11000))


class WatchCostTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.h = Harness(max_friends=20000)
        bus = self.h.registry.bus
        self.calls: list[tuple[str, list[int]]] = []
        follow, unfollow = bus.follow, bus.unfollow

        def counted_follow(uids: Iterable[int]) -> None:
            uids = list(uids)
            self.calls.append(("follow", uids))
            follow(uids)

        def counted_unfollow(uids: Iterable[int]) -> None:
            uids = list(uids)
            self.calls.append(("unfollow", uids))
            unfollow(uids)

        bus.follow = counted_follow  # type: ignore[method-assign]
        bus.unfollow = counted_unfollow  # type: ignore[method-assign]
        self.client = self.h.login(1, LONG)
        self.client.received()
        self.calls.clear()

    def test_list_resent_unchanged(self) -> None:
        """The same 10,000 ids re-sent, in order or reversed, as a friends
        message or a repeated login, reach the bus not at all (the repeated
        login is answered with its pong, nothing more)."""
        self.client.send({"type": "friends", "friends": LONG})
        self.client.send({"type": "friends", "friends": LONG[::-1]})
        self.client.send({"user_id": 1, "friends": LONG})
        self.assertEqual(self.client.received(), [{"type": "pong"}])
        self.assertEqual(self.calls, [])

    def test_list_replaced_with_a_few_changes(self) -> None:
        """A 10,000-id list replaced by one that differs in 3 ids: one
        unfollow of the 3 dropped and one follow of the 3 added."""
        new = [*LONG[3:], 4, 5, 6]
        self.client.send({"type": "friends", "friends": new})
        self.assertEqual(
            sorted((kind, sorted(uids)) for kind, uids in self.calls),
            [("follow", [4, 5, 6]), ("unfollow", LONG[:3])],
        )

    def test_lists_alternating(self) -> None:
        """Two disjoint 10,000-id lists in turn: each replacement is one
        unfollow and one follow of exactly the ids that changed."""
        other = list(range(20000, 30000))
        for lst, gone in ((other, LONG), (LONG, other), (other, LONG)):
            self.calls.clear()
            self.client.send({"type": "friends", "friends": lst})
            self.assertEqual(
                sorted((kind, sorted(uids)) for kind, uids in self.calls),
                [("follow", lst), ("unfollow", gone)],
            )

    def test_watch_shared_with_another_session(self) -> None:
        """Ids another local session still watches are not unfollowed when
        one session drops them, and ids already followed are not followed
        again."""
        other = self.h.login(2, LONG[:5000])
        other.received()
        self.calls.clear()
        self.client.send({"type": "friends", "friends": LONG[5000:]})
        self.assertEqual(self.calls, [])
        self.client.send({"type": "friends", "friends": LONG})
        self.assertEqual(self.calls, [])
