"""Two registries joined by L{MemoryHub}: one user, sessions on several nodes.

The hypothesis state machine in test_registry runs the reference model over
two joined registries; these are the cluster behaviours it does not reach
(node loss, one node stopping) and a few worked examples.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from presence import wire
from presence.core.bus import MemoryBus, MemoryHub
from presence.core.interfaces import IBus, IStateListener, Share, UserState
from presence.core.registry import Registry
from presence.test.test_registry import START, FakeSession, offline, online


class TwoNodes(unittest.SynchronousTestCase):
    """Registries "a" and "b" on one hub and one fake clock."""

    grace = 0.0
    mutual = False

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(START)
        self.hub = MemoryHub()
        self.a = self.node("a")
        self.b = self.node("b")

    def node(self, name: str) -> Registry:
        return Registry(
            self.clock,
            offline_grace=self.grace,
            mutual=self.mutual,
            bus=self.hub.bus(name),
        )

    def login(self, registry: Registry, uid: int, friends: tuple[int, ...] = (),
              **fields: Any) -> FakeSession:
        session = FakeSession(uid)
        registry.login(
            session, frozenset(friends), wire.status_fields(fields, required=False)
        )
        return session


class HubTests(TwoNodes):
    def test_interfaces(self) -> None:
        """The memory bus provides IBus; the registry is its listener."""
        self.assertTrue(verifyObject(IBus, self.a.bus))
        self.assertTrue(verifyObject(IStateListener, self.a))
        self.assertIsInstance(self.a.bus, MemoryBus)

    def test_cross_node_online_status_offline(self) -> None:
        """A watcher on one node sees a user on the other come, change, go."""
        w = self.login(self.a, 1, (2,))
        s = self.login(self.b, 2)
        self.b.set_status(s, wire.status_fields({"status": "away"}, required=True))
        self.clock.advance(1)
        self.b.logout(s)
        self.assertEqual(
            w.take(),
            [online(2), online(2, "away"), offline(2, START + 1)],
        )

    def test_sessions_on_two_nodes_are_one_user(self) -> None:
        """Two sessions of one user on two nodes: one online, one offline."""
        w = self.login(self.a, 1, (2,))
        s1 = self.login(self.a, 2)
        s2 = self.login(self.b, 2)
        self.assertEqual(self.a.session_count(2), 2)
        self.a.logout(s1)
        self.clock.advance(2)
        self.b.logout(s2)
        self.assertEqual(w.take(), [online(2), offline(2, START + 2)])

    def test_status_is_shared_last_writer_wins(self) -> None:
        """A status written on either node is the user's status."""
        s1 = self.login(self.a, 2, status="busy")
        s2 = self.login(self.b, 2)
        w = self.login(self.b, 1, (2,))
        self.assertEqual(w.take(), [online(2, "busy")])
        self.a.set_status(s1, wire.status_fields({"status": "away"}, required=True))
        self.b.set_status(s2, wire.status_fields({"status": "online"}, required=True))
        self.assertEqual(w.take(), [online(2, "away"), online(2)])
        self.assertEqual(self.a.status_of(2), ("online", ""))

    def test_node_lost(self) -> None:
        """A lost node's users go offline, last seen when it was last alive."""
        w = self.login(self.a, 1, (2, 3))
        self.login(self.b, 2)
        self.login(self.b, 3)
        self.login(self.a, 3)  # also here: stays online
        w.take()
        self.clock.advance(10)
        self.hub.node_lost("b", START + 4)
        self.assertEqual(w.take(), [offline(2, START + 4)])
        self.assertTrue(self.a.is_online(3))

    def test_one_node_stopping_is_news_elsewhere(self) -> None:
        """A node that stops takes its users offline for the other nodes."""
        w = self.login(self.a, 1, (2,))
        s = self.login(self.b, 2)
        w.take()
        self.b.stop()
        self.b.logout(s)
        self.assertEqual(w.take(), [offline(2, START)])

    def test_follow_answers_with_present_users_only(self) -> None:
        """Following an absent user tells nothing; its later arrival does."""
        seen: list[UserState] = []

        class Listener:
            def user_changed(self, state: UserState) -> None:
                seen.append(state)

            def resync(self, states: list[UserState]) -> None:
                pass

        bus = self.hub.bus("c")
        bus.attach(Listener())  # type: ignore[arg-type]
        self.login(self.a, 5)
        bus.follow([5, 6])
        self.login(self.b, 6)
        self.assertEqual([(s.uid, s.present) for s in seen], [(5, True), (6, True)])
        self.assertLess(seen[0].version, seen[1].version)


class GraceTests(TwoNodes):
    grace = 3.0

    def test_back_on_another_node_within_grace(self) -> None:
        """A reconnect to another node within the grace is invisible."""
        w = self.login(self.a, 1, (2,))
        s = self.login(self.b, 2, status="away")
        w.take()
        self.b.logout(s)
        self.clock.advance(2)
        self.login(self.a, 2)
        self.clock.advance(5)
        self.assertEqual(w.take(), [])
        self.assertEqual(self.a.status_of(2), ("away", ""))

    def test_grace_runs_out(self) -> None:
        """Not back in time: offline, last seen when the session ended."""
        w = self.login(self.a, 1, (2,))
        s = self.login(self.b, 2)
        w.take()
        self.clock.advance(1)
        self.b.logout(s)
        self.clock.advance(3)
        self.assertEqual(w.take(), [offline(2, START + 1)])


class MutualTests(TwoNodes):
    mutual = True

    def test_listing_on_another_node(self) -> None:
        """Mutual: a session on another node that lists the watcher counts."""
        w = self.login(self.a, 1, (2,))
        self.login(self.b, 2)
        self.assertEqual(w.take(), [])
        s = self.login(self.b, 2, (1,))
        self.assertEqual(w.take(), [online(2)])
        self.b.logout(s)
        self.assertEqual(w.take(), [offline(2, START)])


class SecondNodeLaterTests(unittest.SynchronousTestCase):
    """A hub that had one node (users kept as bare states) gets a second."""

    def test_second_node_joins_a_single_node_hub(self) -> None:
        """Users held by the first node, in a ghost too, are seen right from
        the second node; their sessions add up, and they go offline when
        the first node's sessions end."""
        clock = Clock()
        clock.advance(START)
        hub = MemoryHub()
        a = Registry(clock, offline_grace=5.0, bus=hub.bus("a"))
        change = wire.status_fields({"status": "away"}, required=False)
        s2 = FakeSession(2)
        a.login(s2, frozenset(), change)
        s3 = FakeSession(3)
        a.login(s3, frozenset(), change)
        a.logout(s3)  # a ghost during the grace
        b = Registry(clock, offline_grace=5.0, bus=hub.bus("b"))
        w = FakeSession(1)
        b.login(w, frozenset({2, 3}), wire.status_fields({}, required=False))
        self.assertEqual(
            sorted(w.take(), key=lambda e: e["user_id"]),
            [online(2, "away"), online(3, "away")],
        )
        other = FakeSession(2)
        b.login(other, frozenset(), wire.status_fields({}, required=False))
        self.assertEqual(b.session_count(2), 2)
        b.logout(other)
        clock.advance(1)
        a.logout(s2)
        clock.advance(5)
        self.assertEqual(w.take(), [offline(3, START), offline(2, START + 1)])
        self.assertIsNone(hub.state(2))

    def test_single_node_lost(self) -> None:
        """The only node lost: its users are gone from the hub."""
        hub = MemoryHub()
        bus = hub.bus("a")
        bus.publish(5, Share(1), None, START)
        self.assertIsNotNone(hub.state(5))
        hub.node_lost("a", START + 1)
        self.assertIsNone(hub.state(5))


class FollowerTests(TwoNodes):
    """Who follows a user, as nodes come and go: each hears while it follows."""

    def test_follow_unfollow_in_any_order(self) -> None:
        """a follows, b follows, a stops, b stops: each follower hears the
        user's changes exactly while it follows."""
        heard: dict[str, list[int]] = {"a": [], "b": []}

        class Listener:
            def __init__(self, name: str) -> None:
                self.name = name

            def user_changed(self, state: UserState) -> None:
                heard[self.name].append(state.version)

            def resync(self, states: list[UserState]) -> None:
                pass

        hub = MemoryHub()
        a, b, c = hub.bus("a"), hub.bus("b"), hub.bus("c")
        a.attach(Listener("a"))  # type: ignore[arg-type]
        b.attach(Listener("b"))  # type: ignore[arg-type]
        change = wire.status_fields({}, required=False)

        def arrive(sessions: int) -> None:
            c.publish(5, Share(sessions), change, START)

        def status(name: str) -> None:
            fields = wire.status_fields({"status": name}, required=True)
            c.publish(5, Share(2), fields, START)

        a.follow([5])
        arrive(1)
        b.follow([5])
        arrive(2)  # a session count alone: no new version, nobody told
        status("away")
        a.unfollow([5])
        status("busy")
        b.unfollow([5])
        c.publish(5, None, None, START)
        # a: arrival and "away"; b: the state when it followed, "away", "busy".
        self.assertEqual(len(heard["a"]), 2)
        self.assertEqual(len(heard["b"]), 3)
        self.assertEqual(heard["a"][-1], heard["b"][1])
        b.follow([5])  # absent now: nothing to tell
        self.assertEqual(len(heard["b"]), 3)
        hub.node_lost("b", START)
        arrive(1)
        self.assertEqual(len(heard["b"]), 3)
