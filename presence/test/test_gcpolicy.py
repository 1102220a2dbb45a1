"""The garbage-collector policy: what it freezes and when it walks everything,
and the claim it rests on, that ended sessions leave no reference cycles."""

from __future__ import annotations

import gc
from collections.abc import Callable
from typing import Any, Literal

from twisted.internet import defer, endpoints, reactor, tcp
from twisted.trial.unittest import SynchronousTestCase, TestCase

from presence.server.context import Server
from presence.server.gcpolicy import FreezeSurvivors
from presence.server.lines import LineFactory, LineProtocol
from presence.server.service import PresenceService
from presence.server.session import Session
from presence.test.test_loopback import LineClient

Phase = Literal["start", "stop"]


class FakeCollector:
    """Records what the policy asks of the collector; C{live} objects are
    counted as Python counts them (frozen ones stay frozen until unfrozen)."""

    def __init__(self) -> None:
        self.callbacks: list[Callable[[Phase, dict[str, int]], object]] = []
        self.calls: list[str] = []
        self.young = 0  # objects not frozen
        self.frozen = 0

    def collect(self, generation: int = 2) -> int:
        self.calls.append("collect")
        return 0

    def freeze(self) -> None:
        self.calls.append("freeze")
        self.frozen += self.young
        self.young = 0

    def unfreeze(self) -> None:
        self.calls.append("unfreeze")
        self.young += self.frozen
        self.frozen = 0

    def get_freeze_count(self) -> int:
        return self.frozen

    def full(self, grown: int) -> None:
        """C{grown} objects survive to a full collection, which then ends."""
        self.young += grown
        for callback in list(self.callbacks):
            callback("stop", {"generation": 2, "collected": 0, "uncollectable": 0})


class PolicyTests(SynchronousTestCase):
    def started(self, at_start: int = 1000) -> tuple[FreezeSurvivors, FakeCollector]:
        collector = FakeCollector()
        collector.young = at_start
        policy = FreezeSurvivors(collector)
        policy.startService()
        self.assertEqual(collector.calls, ["collect", "freeze"])
        collector.calls.clear()
        return policy, collector

    def test_start_freezes_what_exists(self) -> None:
        """Starting collects once, freezes what is left and listens for the
        end of every collection."""
        policy, collector = self.started(1000)
        self.assertEqual(collector.frozen, 1000)
        self.assertEqual(collector.callbacks, [policy.after])

    def test_survivors_of_a_full_collection_are_frozen(self) -> None:
        """Each full collection's survivors are frozen, so that the next
        walks only what is newer."""
        _, collector = self.started(1000)
        collector.full(100)
        collector.full(100)
        self.assertEqual(collector.calls, ["freeze", "freeze"])
        self.assertEqual((collector.young, collector.frozen), (0, 1200))

    def test_young_collections_and_starts_are_ignored(self) -> None:
        """Only the end of a full collection acts; the start of one, and young
        collections, change nothing."""
        policy, collector = self.started()
        policy.after("start", {"generation": 2})
        policy.after("stop", {"generation": 0, "collected": 0})
        policy.after("stop", {"generation": 1, "collected": 0})
        self.assertEqual(collector.calls, [])

    def test_growth_by_a_quarter_walks_everything_once(self) -> None:
        """Once the frozen objects have grown by more than a quarter since
        everything was last walked, they are unfrozen, so that the next full
        collection walks them all; after it they are frozen again, and the
        next walk waits for another quarter of growth."""
        policy, collector = self.started(1000)
        collector.full(250)  # 1,250: not more than a quarter
        self.assertEqual(collector.calls, ["freeze"])
        collector.full(1)  # 1,251
        self.assertEqual(collector.calls, ["freeze", "freeze", "unfreeze"])
        self.assertEqual(collector.frozen, 0)
        collector.calls.clear()
        collector.full(0)  # this one walked all 1,251
        self.assertEqual(collector.calls, ["freeze"])
        self.assertEqual((policy.walks, policy.walked), (1, 1251))
        collector.full(312)  # 1,563 <= 1,251 * 1.25
        self.assertEqual(collector.calls, ["freeze", "freeze"])

    def test_steady_population_never_walks_everything(self) -> None:
        """Sessions that end as others begin (the frozen count stays level)
        never make a full collection walk every object."""
        policy, collector = self.started(1000)
        for _ in range(100):
            collector.frozen -= 50  # freed by reference counting
            collector.full(50)
        self.assertNotIn("unfreeze", collector.calls)
        self.assertEqual(policy.walks, 0)

    def test_stop_gives_the_collector_back(self) -> None:
        """Stopping removes the callback and unfreezes everything."""
        policy, collector = self.started(1000)
        policy.stopService()
        self.assertEqual(collector.callbacks, [])
        self.assertEqual(collector.calls, ["unfreeze"])
        self.assertEqual(collector.frozen, 0)


SERVER_TYPES = (Session, LineProtocol, tcp.Server)


class NoCyclesTests(TestCase):
    """The policy rests on this: an ended session is freed by reference
    counting, so frozen sessions do not wait for a full walk to go."""

    timeout = 20

    @defer.inlineCallbacks
    def test_ended_sessions_leave_no_cyclic_garbage(self) -> Any:
        """Sessions over real sockets, logged in, watching each other, one
        changing status, then all closed (by the client, by bye, and by the
        server for a bad line): the collector then finds none of the server's
        session objects in cyclic garbage."""
        factory = LineFactory(Server(reactor))
        endpoint = endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
        service = PresenceService(endpoint, factory, reactor)
        service.startService()
        port = yield service.listening
        where = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)

        # Cycles other tests left would be found too: start clean; and no
        # automatic collection may free ours before the check looks.
        gc.collect()
        if gc.isenabled():
            gc.disable()
            self.addCleanup(gc.enable)
        watcher = yield endpoints.connectProtocol(where, LineClient())
        watcher.send({"user_id": 100, "friends": list(range(1, 7))})
        yield watcher.messages.get()  # welcome
        clients = []
        for uid in range(1, 7):
            client = yield endpoints.connectProtocol(where, LineClient())
            others = [u for u in range(1, 7) if u != uid]
            client.send({"user_id": uid, "friends": [100, *others]})
            welcome = yield client.messages.get()
            self.assertEqual(welcome["type"], "welcome")
            clients.append(client)
        clients[0].send({"type": "status", "status": "away", "text": "lunch"})
        clients[1].send({"type": "bye"})
        clients[2].sendLine(b"{not json")
        for client in clients:
            if not client.closed.called:
                client.transport.loseConnection()
            yield client.closed
        # The watcher hears each user go offline when the server has ended
        # its session.
        offline: set[int] = set()
        while len(offline) < 6:
            event = yield watcher.messages.get()
            if event.get("type") == "presence" and not event["online"]:
                offline.add(event["user_id"])

        # Stopping waits for the last session (the watcher's) to end; the
        # timer heap, which holds ended sessions until their deadline, is
        # then empty, so nothing but a cycle can keep a session alive.
        watcher.transport.loseConnection()
        yield watcher.closed
        yield service.stopService()
        self.assertEqual(factory.server.registry.sessions, 0)
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            gc.collect()
            found = [
                type(o).__name__ for o in gc.garbage if isinstance(o, SERVER_TYPES)
            ]
        finally:
            gc.set_debug(0)
            del gc.garbage[:]
        self.assertEqual(found, [])

