"""RedisBus against a real redis-server (started per test on a free port).

Skipped where redis-server is missing (Debian package redis-server), except
in CI (CI=true), where that is a failure.  These tests run on the real
reactor: Redis is another process.  They wait on barriers (L{RedisBus.sync}:
every command answered, every event received), not on time, except where
time is what is checked (a dead node's users offline within the TTL + 2 s).
"""

from __future__ import annotations

import random
import signal
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

import txredisapi
from twisted.internet import defer, reactor, task
from twisted.trial import unittest
from zope.interface import implementer

from presence.cluster import scripts
from presence.cluster.batch import APPLY_BATCH
from presence.cluster.bus import CHUNK, REAP_BATCH, RedisBus
from presence.cluster.connection import RedisAddress
from presence.cluster.redisserver import (
    RedisMissing,
    RedisServer,
    missing_message,
    required,
)
from presence.core.bus import MemoryHub
from presence.core.interfaces import IStateListener, Share, UserState
from presence.server import turn
from presence.wire import StatusChange

T = TypeVar("T")


def async_test(
    f: Callable[[Any], Coroutine[Any, Any, None]],
) -> Callable[[Any], defer.Deferred[None]]:
    def run(self: Any) -> defer.Deferred[None]:
        return defer.ensureDeferred(f(self))

    run.__name__ = f.__name__
    run.__doc__ = f.__doc__
    return run


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait (polling) for a condition that no listener call signals."""
    deadline = reactor.seconds() + timeout
    while not condition():
        if reactor.seconds() > deadline:
            raise AssertionError("condition not met in time")
        await task.deferLater(reactor, 0.02, lambda: None)


def seen(state: UserState) -> tuple[Any, ...]:
    """What a watcher can tell from a state (everything but the version)."""
    return (
        state.uid, state.present, state.status, state.text, state.listed,
        state.sessions, state.last_seen,
    )


def shares(redis: RedisServer, uid: int) -> int:
    """How many nodes hold a share of C{uid} (its hash's incarnation fields)."""
    fields = redis.command("HKEYS", scripts.user_key(uid))
    assert isinstance(fields, list)
    return sum(1 for f in fields if isinstance(f, bytes) and b"/" in f)


def kill(bus: RedisBus) -> None:
    """Stop C{bus} as SIGKILL would stop its node: no leave, no more
    heartbeats, its connections dropped."""
    bus._beat.stop()
    for svc in bus._services:
        svc.stopService()


@implementer(IStateListener)
class Listener:
    """Records what a bus tells; fires waiters when a condition holds."""

    def __init__(self) -> None:
        self.states: list[UserState] = []
        self.resyncs: list[list[UserState]] = []
        self.view: dict[int, UserState] = {}
        self._waiters: list[tuple[Callable[[], bool], defer.Deferred[None]]] = []

    def user_changed(self, state: UserState) -> None:
        self.states.append(state)
        if state.present:
            self.view[state.uid] = state
        else:
            self.view.pop(state.uid, None)
        self._check()

    def resync(self, states: Sequence[UserState]) -> None:
        self.resyncs.append(list(states))
        self.view = {s.uid: s for s in states}
        self._check()

    def until(
        self, condition: Callable[[], bool], timeout: float
    ) -> defer.Deferred[None]:
        d: defer.Deferred[None] = defer.Deferred()
        if condition():
            d.callback(None)
            return d
        self._waiters.append((condition, d))
        d.addTimeout(timeout, reactor)
        return d

    def _check(self) -> None:
        for item in list(self._waiters):
            condition, d = item
            if not d.called and condition():
                self._waiters.remove(item)
                d.callback(None)


class RedisCase(unittest.TestCase):
    timeout = 60

    def setUp(self) -> None:
        try:
            self.redis = RedisServer().start()
        except RedisMissing:
            if required():
                raise
            raise unittest.SkipTest(missing_message()) from None
        self.addCleanup(self.redis.close)

    async def node(self, name: str, ttl: float = 10.0) -> tuple[RedisBus, Listener]:
        bus = RedisBus(RedisAddress.parse(self.redis.url), name, ttl)
        listener = Listener()
        bus.attach(listener)
        bus.startService()
        self.addCleanup(lambda: bus.stopService() if bus.running else None)
        await bus.when_up()
        return bus, listener

    async def sync(self, *buses: RedisBus) -> None:
        for bus in buses:
            await bus.flush()
        for bus in buses:
            await bus.sync()


class SameAsMemoryHub(RedisCase):
    """Two Redis nodes compute what MemoryHub computes for the same calls."""

    async def run_ops(
        self, seed: int, steps: int, per_turn: int = 1,
        at_turn_end: Callable[[Callable[[], None]], bool] | None = None,
    ) -> None:
        """C{steps} random calls; up to C{per_turn} publishes of one node in
        a row are made in one reactor turn (its bus sends them together),
        at the end of the turn through C{at_turn_end} if given."""
        rng = random.Random(seed)
        uids = list(range(1, 7))
        a, la = await self.node(f"a{seed}")
        b, lb = await self.node(f"b{seed}")
        a.at_turn_end = b.at_turn_end = at_turn_end
        hub = MemoryHub()
        ma, mb = hub.bus(a.node), hub.bus(b.node)
        ra, rb = Listener(), Listener()
        ma.attach(ra)
        mb.attach(rb)
        pairs = [(a, ma), (b, mb)]
        followed: list[set[int]] = [set(), set()]
        held: list[dict[int, Share]] = [{}, {}]
        at = 1000.0
        for i, (bus, mem) in enumerate(pairs):
            bus.follow(uids)
            mem.follow(uids)
            followed[i] = set(uids)
        await self.sync(a, b)
        last, burst = 0, 0  # the node of the publishes not sent yet, how many
        for _step in range(steps):
            at += 0.5
            i = rng.randrange(2)
            bus, mem = pairs[i]
            if burst and (i != last or burst >= per_turn):
                await pairs[last][0].flush()  # Redis runs them in this order
                burst = 0
            uid = rng.choice(uids)
            roll = rng.random()
            if roll < 0.08:
                # follow / unfollow a user (snapshots on follow)
                # MemoryHub tells synchronously: let every event in flight
                # arrive before this node stops (or starts) listening.
                await self.sync(a, b)
                if uid in followed[i]:
                    bus.unfollow([uid])
                    mem.unfollow([uid])
                    followed[i].discard(uid)
                else:
                    bus.follow([uid])
                    mem.follow([uid])
                    followed[i].add(uid)
                await self.sync(a, b)
                continue
            share: Share | None
            change: StatusChange | None = None
            if roll < 0.35 and uid in held[i]:
                share = None
            elif roll < 0.55 and uid in held[i]:
                share = held[i][uid]
                change = StatusChange(
                    rng.choice(["online", "away", "busy", "invisible", None]),
                    rng.choice([None, "", "lunch", "a|b,c"]),
                )
            else:
                sessions = rng.choice([0, 1, 1, 2, 3])
                listed = frozenset(rng.sample([1, 2, 3, 10, 22, 100], rng.randrange(3)))
                share = Share(sessions, listed, at - 0.25 if sessions == 0 else 0.0)
                if rng.random() < 0.4:
                    change = StatusChange(
                        rng.choice(["online", "away", "invisible", None]),
                        rng.choice([None, "hi"]),
                    )
            if share is None:
                held[i].pop(uid, None)
            else:
                held[i][uid] = share
            bus.publish(uid, share, change, at)
            mem.publish(uid, share, change, at)
            last, burst = i, burst + 1
        await self.sync(a, b)
        for name, got, want in (("a", la, ra), ("b", lb, rb)):
            self.assertEqual(
                [seen(s) for s in got.states],
                [seen(s) for s in want.states],
                f"node {name}, seed {seed}",
            )
            versions: dict[int, int] = {}
            for state in got.states:
                # never backwards (equal only for a snapshot after a re-follow)
                self.assertGreaterEqual(state.version, versions.get(state.uid, -1))
                versions[state.uid] = state.version
            self.assertEqual(got.resyncs, [[]])
        self.assertGreater(len(la.states), steps // 10)
        if per_turn > 1:
            for bus in (a, b):
                self.assertLess(bus.stats["apply_scripts"], bus.stats["applies"])
        await a.stopService()
        await b.stopService()

    @async_test
    async def test_random_calls(self) -> None:
        """Random shares, ghosts, status writes, mutual lists, follows and
        unfollows from two nodes: each node's listener is told the same
        sequence of states as MemoryHub's, with growing versions."""
        for seed in range(5):
            await self.run_ops(seed, 250)
            self.redis.command("FLUSHALL")

    @async_test
    async def test_random_calls_batched(self) -> None:
        """The same with up to 8 publishes of a node per reactor turn, sent
        as one APPLY_MANY: the listeners are told what MemoryHub tells for
        the same calls one by one."""
        for seed in range(5, 10):
            await self.run_ops(seed, 250, per_turn=8)
            self.redis.command("FLUSHALL")

    @async_test
    async def test_random_calls_at_turn_end(self) -> None:
        """The same, batched, with each node's turn sent by the server's
        turn end (presence.server.turn) instead of a callLater: the same
        states as MemoryHub's."""
        end = turn.turn_end(reactor)
        if end is None:
            raise unittest.SkipTest("this reactor has no turn end")
        self.addCleanup(end.uninstall)
        taken: list[bool] = []

        def later(call: Callable[[], None]) -> bool:
            taken.append(end.later(call))
            return taken[-1]

        for seed in range(10, 13):
            await self.run_ops(seed, 250, per_turn=8, at_turn_end=later)
            self.redis.command("FLUSHALL")
        self.assertIn(True, taken)

    @async_test
    async def test_versions_grow_across_absence(self) -> None:
        """A user who goes absent and comes back gets a higher version, and
        the absent state is told to a follower with its last_seen."""
        a, _ = await self.node("a")
        b, lb = await self.node("b")
        b.follow([5])
        await self.sync(a, b)
        a.publish(5, Share(1), None, 10.0)
        a.publish(5, None, None, 11.0)
        a.publish(5, Share(1), StatusChange("away", None), 12.0)
        await self.sync(a, b)
        self.assertEqual(
            [(s.present, s.status, s.last_seen) for s in lb.states],
            [(True, "online", 10.0), (False, "offline", 11.0), (True, "away", 12.0)],
        )
        v = [s.version for s in lb.states]
        self.assertEqual(v, sorted(set(v)))
        self.assertEqual(b.known(5), lb.states[-1])


class Subscriptions(RedisCase):
    @async_test
    async def test_follow_reads_the_snapshot(self) -> None:
        """Following a present user tells its state once (read after the
        subscription); following an absent one tells nothing; following
        again after an unfollow tells it again."""
        a, _ = await self.node("a")
        b, lb = await self.node("b")
        a.publish(1, Share(2, frozenset({9})), StatusChange("busy", "x"), 5.0)
        await a.flush()
        b.follow([1, 2])
        await self.sync(a, b)
        self.assertEqual(
            [seen(s) for s in lb.states],
            [(1, True, "busy", "x", frozenset({9}), 2, 5.0)],
        )
        b.unfollow([1])
        a.publish(1, Share(2, frozenset({9})), StatusChange("away", None), 6.0)
        await self.sync(a, b)
        self.assertEqual(len(lb.states), 1)  # not followed: nothing told
        self.assertIsNone(b.known(1))
        b.follow([1])
        await self.sync(a, b)
        self.assertEqual([s.status for s in lb.states], ["busy", "away"])

    @async_test
    async def test_batched(self) -> None:
        """Following 12,000 users takes ceil(12000 / CHUNK) SUBSCRIBE
        commands and one pipelined read; unfollowing them as few
        UNSUBSCRIBEs; 150 logins published in one turn are one SADD and
        ceil(150 / APPLY_BATCH) scripts."""
        a, _ = await self.node("a")
        b, lb = await self.node("b")
        n = 12_000
        self.redis.command("CONFIG", "RESETSTAT")
        for uid in range(1, 151):
            a.publish(uid, Share(1), None, 1.0)
        await a.flush()
        stats = self.redis.info("commandstats")
        self.assertIn("calls=1,", stats["cmdstat_sadd"])
        self.assertIn(f"calls={-(-150 // APPLY_BATCH)},", stats["cmdstat_evalsha"])
        self.assertEqual(a.stats["apply_scripts"], -(-150 // APPLY_BATCH))
        self.assertIn("calls=150,", stats["cmdstat_publish"])
        self.redis.command("CONFIG", "RESETSTAT")
        b.follow(range(1, n + 1))
        await self.sync(a, b)
        stats = self.redis.info("commandstats")
        chunks = -(-n // CHUNK)
        self.assertIn(f"calls={chunks},", stats["cmdstat_subscribe"])
        self.assertIn(f"calls={n},", stats["cmdstat_hget"])
        self.assertEqual(len(lb.states), 150)
        self.assertEqual(b.stats["reads"], chunks + 1)
        b.unfollow(range(1, n + 1))
        await self.sync(a, b)
        stats = self.redis.info("commandstats")
        self.assertIn(f"calls={chunks},", stats["cmdstat_unsubscribe"])
        self.assertEqual(self.redis.command("PUBSUB", "NUMSUB", "{u:1}"), [b"{u:1}", 0])


class Batching(RedisCase):
    @async_test
    async def test_crossslot_falls_back_to_one_per_change(self) -> None:
        """Where Redis refuses APPLY_MANY (CROSSSLOT, Redis Cluster), the
        node reconnects, asserts its users again one APPLY each, and sends
        one APPLY per change from then on: nothing is lost."""
        refusing = scripts.Script(
            "apply_many",
            "return redis.error_reply('CROSSSLOT Keys in request do not hash "
            "to the same slot')",
        )
        self.patch(scripts, "APPLY_MANY", refusing)
        self.patch(scripts, "SCRIPTS", tuple(
            refusing if s.name == "apply_many" else s for s in scripts.SCRIPTS))
        a, _ = await self.node("a")
        b, lb = await self.node("b")
        b.follow([1, 2, 3])
        await self.sync(a, b)
        a.publish(1, Share(1), None, 1.0)
        a.publish(2, Share(1), StatusChange("away", None), 1.0)
        await lb.until(lambda: set(lb.view) == {1, 2}, 10)
        self.assertFalse(a._apply_many)
        self.assertEqual(lb.view[2].status, "away")
        scripts_before = a.stats["apply_scripts"]
        a.publish(3, Share(1), None, 2.0)
        a.publish(1, Share(1), StatusChange("busy", None), 2.0)
        await self.sync(a, b)
        self.assertEqual(a.stats["apply_scripts"] - scripts_before, 2)
        self.assertEqual((set(lb.view), lb.view[1].status), ({1, 2, 3}, "busy"))

    @async_test
    async def test_batch_delay_waits_for_more(self) -> None:
        """With a batch delay, changes of several turns wait and go out
        together as one script (here: when the node is flushed, long before
        the delay is over); nothing reaches Redis before."""
        a, _ = await self.node("a")
        a.batch_delay = 60.0
        b, lb = await self.node("b")
        b.follow([1, 2, 3])
        await self.sync(a, b)
        scripts_before = a.stats["apply_scripts"]
        for uid in (1, 2, 3):
            a.publish(uid, Share(1), None, 1.0)
            await task.deferLater(reactor, 0.01, lambda: None)  # another turn
        self.assertIsNone(self.redis.command("HGET", scripts.user_key(1),
                                             scripts.STATE))
        await self.sync(a, b)
        self.assertEqual(a.stats["apply_scripts"] - scripts_before, 1)
        self.assertEqual(set(lb.view), {1, 2, 3})

    @async_test
    async def test_turn_end(self) -> None:
        """With the server's turn end, a turn's changes wait for it (no
        timed call), then go out as one script; where the turn end refuses
        (no events being handled), a callLater sends them."""
        a, _ = await self.node("a")
        b, lb = await self.node("b")
        b.follow([1, 2, 3])
        await self.sync(a, b)
        pending: list[Callable[[], None]] = []

        def later(call: Callable[[], None]) -> bool:
            pending.append(call)
            return True

        a.at_turn_end = later
        scripts_before = a.stats["apply_scripts"]
        a.publish(1, Share(1), None, 1.0)
        a.publish(2, Share(1), None, 1.0)
        self.assertIsNone(a._turn_call)
        await task.deferLater(reactor, 0.01, lambda: None)  # another turn
        self.assertIsNone(self.redis.command("HGET", scripts.user_key(1),
                                             scripts.STATE))
        self.assertEqual(len(pending), 1)
        pending.pop()()
        await self.sync(a, b)
        self.assertEqual(a.stats["apply_scripts"] - scripts_before, 1)
        self.assertEqual(set(lb.view), {1, 2})
        a.at_turn_end = lambda call: False
        a.publish(3, Share(1), None, 1.0)
        self.assertIsNotNone(a._turn_call)
        await lb.until(lambda: set(lb.view) == {1, 2, 3}, 10)
        self.assertEqual(pending, [])

    @async_test
    async def test_unix_socket(self) -> None:
        """A node reaching Redis by its Unix socket is one of the cluster
        like any other: it is told what a TCP node publishes, and back."""
        a, la = await self.node("a")
        bus = RedisBus(RedisAddress.parse(self.redis.unix_url), "b")
        self.assertEqual(str(bus.address), self.redis.unix_url)
        lb = Listener()
        bus.attach(lb)
        bus.startService()
        self.addCleanup(lambda: bus.stopService() if bus.running else None)
        await bus.when_up()
        bus.follow([1])
        a.follow([2])
        await self.sync(a, bus)
        a.publish(1, Share(1), None, 1.0)
        bus.publish(2, Share(1), None, 1.0)
        await self.sync(a, bus)
        self.assertEqual((set(la.view), set(lb.view)), ({2}, {1}))


class Control(RedisCase):
    @async_test
    async def test_disconnect_reaches_every_node(self) -> None:
        """disconnect(uid) asked of one node calls on_disconnect(uid) on every
        node, itself included, and answers the sessions Redis counted."""
        a, _ = await self.node("a")
        b, _ = await self.node("b")
        called: list[tuple[str, int]] = []
        a.on_disconnect = lambda uid: called.append(("a", uid))
        b.on_disconnect = lambda uid: called.append(("b", uid))
        a.publish(4, Share(2), None, 1.0)
        b.publish(4, Share(1), None, 1.0)
        await self.sync(a, b)
        self.assertEqual(await b.disconnect(4), 3)
        await self.sync(a, b)
        self.assertEqual(sorted(called), [("a", 4), ("b", 4)])
        self.assertEqual(await a.disconnect(5), 0)


class NodeFailure(RedisCase):
    @async_test
    async def test_dead_node_users_go_offline(self) -> None:
        """A node that stops refreshing (killed) has its shares removed by a
        survivor within ttl + 2 s: its users go offline, last seen when it
        was last alive; a user with a session elsewhere stays online."""
        ttl = 1.0
        a, _ = await self.node("a", ttl)
        b, lb = await self.node("b", ttl)
        a.publish(1, Share(1), None, 1.0)
        a.publish(2, Share(1), None, 1.0)
        b.publish(2, Share(1), None, 1.0)
        b.follow([1, 2])
        await self.sync(a, b)
        self.assertEqual(set(lb.view), {1, 2})
        # Kill a: no leave, no more refreshes.
        kill(a)
        killed = reactor.seconds()
        await lb.until(lambda: 1 not in lb.view, ttl + 2)
        self.assertLessEqual(reactor.seconds() - killed, ttl + 2)
        offline = lb.states[-1]
        self.assertEqual((offline.uid, offline.present), (1, False))
        self.assertLessEqual(offline.last_seen, killed + 0.01)
        self.assertGreater(offline.last_seen, killed - a.interval - 0.5)
        self.assertIn(2, lb.view)
        await self.sync(b)
        self.assertEqual([s.uid for s in lb.states if not s.present], [1])
        self.assertEqual(self.redis.command("HGETALL", scripts.DEAD), [])
        a.running = False

    @async_test
    async def test_dead_ghost_last_seen(self) -> None:
        """A dead node's ghost (grace running) goes offline last seen when its
        last session ended, not when the node was last alive."""
        ttl = 1.0
        a, _ = await self.node("a", ttl)
        b, lb = await self.node("b", ttl)
        a.publish(1, Share(1), None, 1.0)
        a.publish(1, Share(0, ended_at=2.5), None, 2.5)
        b.follow([1])
        await self.sync(a, b)
        kill(a)
        await lb.until(lambda: 1 not in lb.view, ttl + 2)
        self.assertEqual(lb.states[-1].last_seen, 2.5)
        a.running = False

    async def kill_with_many(self, n: int) -> tuple[RedisBus, Listener, int]:
        """Node a holds users 1..n (user 7 also on b) and dies; b, which
        follows them all, is the survivor.  Returns b, its listener and how
        many APPLY calls b had made before the death."""
        ttl = 1.0
        a, _ = await self.node("a", ttl)
        b, lb = await self.node("b", ttl)
        for uid in range(1, n + 1):
            a.publish(uid, Share(1), None, 1.0)
        b.publish(7, Share(1), None, 1.0)
        b.follow(range(1, n + 1))
        await self.sync(a, b)
        self.assertEqual(len(lb.view), n)
        applies = b.stats["applies"]
        kill(a)
        self.addCleanup(setattr, a, "running", False)
        await lb.until(lambda: set(lb.view) == {7}, ttl + 5)
        await self.sync(b)
        self.assertEqual(
            sorted(s.uid for s in lb.states if not s.present),
            [uid for uid in range(1, n + 1) if uid != 7],
        )
        self.assertEqual(self.redis.command("HGETALL", scripts.DEAD), [])
        return b, lb, applies

    @async_test
    async def test_dead_node_cleanup_batched(self) -> None:
        """A dead node's users are removed REAP_BATCH per script, not one
        script each: each goes offline once, a user also on the survivor
        stays online."""
        n = 2 * REAP_BATCH + 50
        b, _, applies = await self.kill_with_many(n)
        self.assertEqual(b.stats["reap_scripts"], 3)
        self.assertEqual(b.stats["applies"], applies)

    @async_test
    async def test_dead_node_cleanup_one_by_one_on_crossslot(self) -> None:
        """Where Redis refuses a script over several users' slots (CROSSSLOT,
        Redis Cluster), the cleanup falls back to one script per user."""
        refusing = scripts.Script(
            "reap_many",
            "return redis.error_reply('CROSSSLOT Keys in request do not hash "
            "to the same slot')",
        )
        self.patch(scripts, "REAP_MANY", refusing)
        self.patch(scripts, "SCRIPTS", tuple(
            refusing if s.name == "reap_many" else s for s in scripts.SCRIPTS))
        n = REAP_BATCH + 20
        b, _, applies = await self.kill_with_many(n)
        self.assertEqual(b.stats["reap_scripts"], 2)
        self.assertEqual(b.stats["applies"] - applies, n)

    @async_test
    async def test_back_elsewhere_before_death_noticed(self) -> None:
        """A user away on a node that dies, who logs in on another node (no
        status) before the death is noticed: watchers never see it offline,
        and once the dead node is cleaned up its status is "online" (its
        last session ended at the death: the status was forgotten)."""
        ttl = 1.0
        a, _ = await self.node("a", ttl)
        b, lb = await self.node("b", ttl)
        a.publish(9, Share(1), StatusChange("away", None), 1.0)
        b.follow([9])
        await self.sync(a, b)
        kill(a)
        a.running = False
        await task.deferLater(reactor, 0.1, lambda: None)
        b.publish(9, Share(1), None, reactor.seconds())
        await lb.until(lambda: lb.view[9].status == "online", ttl + 2)
        self.assertEqual([(s.present, s.status) for s in lb.states],
                         [(True, "away"), (True, "online")])

    @async_test
    async def test_status_written_after_death_stays(self) -> None:
        """A user away on a node that dies, who logs in on node c and writes
        "busy" after the death, logs in on node b (no status) and leaves c,
        all before the death is noticed: it was online all along after the
        death, so "busy" stays."""
        ttl = 1.0
        a, _ = await self.node("a", ttl)
        b, lb = await self.node("b", ttl)
        c, _ = await self.node("c", ttl)
        a.publish(9, Share(1), StatusChange("away", None), 1.0)
        b.follow([9])
        await self.sync(a, b)
        kill(a)
        a.running = False
        await task.deferLater(reactor, 0.1, lambda: None)
        c.publish(9, Share(1), StatusChange("busy", None), reactor.seconds())
        b.publish(9, Share(1), None, reactor.seconds())
        c.publish(9, None, None, reactor.seconds())
        await self.sync(c, b)
        self.assertEqual(lb.view[9].status, "busy")
        await until(lambda: shares(self.redis, 9) == 1, ttl + 2)
        await self.sync(b)
        self.assertEqual([(s.present, s.status) for s in lb.states],
                         [(True, "away"), (True, "busy")])

    @async_test
    async def test_node_declared_dead_comes_back(self) -> None:
        """A node silent for longer than the TTL (connection still up) is
        declared dead; when it refreshes again it joins under a new
        incarnation and asserts its users again."""
        ttl = 1.0
        a, _ = await self.node("a", ttl)
        b, lb = await self.node("b", ttl)
        a.publish(1, Share(1), StatusChange("away", "back soon"), 1.0)
        b.follow([1])
        await self.sync(a, b)
        first = a.incarnation
        a._beat.stop()
        await lb.until(lambda: 1 not in lb.view, ttl + 2)
        a._beat.start(a.interval)
        await lb.until(lambda: 1 in lb.view, 5)
        self.assertNotEqual(a.incarnation, first)
        self.assertEqual(
            [(s.present, s.status, s.text) for s in lb.states],
            [(True, "away", "back soon"), (False, "offline", ""),
             (True, "away", "back soon")],
        )

    @async_test
    async def test_restart_with_same_node_id(self) -> None:
        """A node started again with the same node id ends its previous
        incarnation at once (no TTL wait): users it does not hold again go
        offline."""
        a, _ = await self.node("same", ttl=30)
        b, lb = await self.node("b", ttl=30)
        a.publish(1, Share(1), None, 1.0)
        b.follow([1])
        await self.sync(a, b)
        kill(a)
        a.running = False
        await self.node("same", ttl=30)
        await lb.until(lambda: 1 not in lb.view, 5)


class RedisOutage(RedisCase):
    @async_test
    async def test_restart_empty_resyncs(self) -> None:
        """Redis killed and started again empty: both nodes keep serving,
        then re-assert their shares (with the status written meanwhile) and
        within a TTL the follower's view is exactly the truth."""
        ttl = 2.0
        a, la = await self.node("a", ttl)
        b, lb = await self.node("b", ttl)
        a.publish(1, Share(1), StatusChange("away", None), 1.0)
        a.publish(2, Share(1), None, 1.0)
        b.publish(3, Share(1, frozenset({7})), None, 1.0)
        b.follow([1, 2, 3, 4])
        a.follow([3])
        await self.sync(a, b)
        self.redis.stop(signal.SIGKILL)
        await until(lambda: not a.up and not b.up)
        # Meanwhile: 1 changes status, 2 leaves, 4 arrives.
        a.publish(1, Share(1), StatusChange("busy", "meeting"), 2.0)
        a.publish(2, None, None, 2.0)
        a.publish(4, Share(2), None, 2.0)
        self.redis.start()
        await a.when_up()
        await b.when_up()
        await self.sync(a, b)
        await lb.until(lambda: 2 not in lb.view, ttl + 1)
        truth = {
            1: (1, True, "busy", "meeting", frozenset(), 1),
            3: (3, True, "online", "", frozenset({7}), 1),
            4: (4, True, "online", "", frozenset(), 2),
        }
        self.assertEqual({u: seen(s)[:6] for u, s in lb.view.items()}, truth)
        self.assertEqual(
            {u: seen(s)[:6] for u, s in la.view.items()}, {3: truth[3]}
        )
        self.assertEqual(len(lb.resyncs), 2)
        # And it works afterwards.
        a.publish(4, None, None, 3.0)
        await self.sync(a, b)
        self.assertNotIn(4, lb.view)

    @async_test
    async def test_restart_empty_no_flap(self) -> None:
        """Redis restarted empty and node a back before node b: a's watchers
        are not told that b's users left (b has a TTL to assert them again);
        a user b dropped meanwhile is told offline once that TTL is over."""
        ttl = 2.0
        a, la = await self.node("a", ttl)
        b, _ = await self.node("b", ttl)
        b.publish(2, Share(1), None, 1.0)
        b.publish(3, Share(1), None, 1.0)
        a.follow([2, 3])
        await self.sync(a, b)
        for svc in b._services:
            svc.stopService()
        self.redis.restart()
        await until(lambda: a.up and not b.up)
        await a.sync()
        self.assertEqual(set(la.view), {2, 3})
        b.publish(3, None, None, 5.0)
        for svc in b._services:
            svc.startService()
        await until(lambda: b.up)
        await self.sync(a, b)
        self.assertEqual(set(la.view), {2, 3})  # 3: not before the TTL
        await la.until(lambda: 3 not in la.view, ttl + 1)
        # (2 asserted again is told again, unchanged: the registry tells its
        # watchers nothing for that.)
        self.assertEqual([s.uid for s in la.states if not s.present], [3])
        self.assertEqual(set(la.view), {2})

    @async_test
    async def test_outage_keeps_state(self) -> None:
        """Redis restarted with its data (a blip): nothing changes for the
        watchers (the resync equals what they had) and a share removed
        during the outage is removed, last seen when it was."""
        a, _ = await self.node("a")
        b, lb = await self.node("b")
        a.publish(1, Share(1), None, 1.0)
        a.publish(2, Share(1), None, 1.0)
        b.follow([1, 2])
        await self.sync(a, b)
        for conn in (a._cmd, a._sub, b._cmd, b._sub):
            assert conn is not None
            conn.transport.abortConnection()
        await until(lambda: not a.up)
        a.publish(2, None, None, 7.0)
        await a.when_up()
        await b.when_up()
        await self.sync(a, b)
        self.assertEqual(set(lb.view), {1})
        # Told by an event or by the resync, depending on which node
        # recovered first; stored with the time of the removal.
        stored = self.redis.command("HGET", scripts.user_key(2), scripts.STATE)
        assert isinstance(stored, bytes)
        self.assertEqual(stored.split(b"|")[1:], [b"0", b"offline", b"0",
                                                  b"7.000000", b"", b""])

    @async_test
    async def test_outage_longer_than_ttl_no_flap(self) -> None:
        """Redis frozen (SIGSTOP) for longer than the TTL, with its data, and
        one node back half a TTL after the other: the first does not declare
        the second dead before it had a TTL to reconnect, so no user flaps."""
        ttl = 1.0
        a, la = await self.node("a", ttl)
        b, lb = await self.node("b", ttl)
        a.publish(1, Share(1), None, 1.0)
        b.publish(2, Share(1), None, 1.0)
        b.follow([1])
        a.follow([2])
        await self.sync(a, b)
        # Both nodes judge others by now (up for more than a TTL).
        await task.deferLater(reactor, ttl + 0.2, lambda: None)
        assert self.redis.proc is not None
        self.redis.proc.send_signal(signal.SIGSTOP)
        for svc in b._services:
            svc.stopService()
        await task.deferLater(reactor, 3 * ttl, lambda: None)
        self.redis.proc.send_signal(signal.SIGCONT)
        await until(lambda: a.up)
        await task.deferLater(reactor, ttl / 2, lambda: None)
        for svc in b._services:
            svc.startService()
        await until(lambda: a.up and b.up)
        await task.deferLater(reactor, 2 * ttl, lambda: None)
        await self.sync(a, b)
        self.assertEqual([(s.uid, s.present) for s in lb.states], [(1, True)])
        self.assertEqual([(s.uid, s.present) for s in la.states], [(2, True)])
        self.assertEqual((set(la.view), set(lb.view)), ({2}, {1}))

    @async_test
    async def test_absence_during_outage_forgets_status(self) -> None:
        """A user away on node a whose session ends while a and b are cut off
        from Redis, and who logs in on b meanwhile (no status): when both are
        back (b first), the user is online with status "online", not "away":
        nobody held it in between, so its status was forgotten."""
        a, _ = await self.node("a")
        b, _ = await self.node("b")
        c, lc = await self.node("c")
        a.publish(9, Share(1), StatusChange("away", "lunch"), 1.0)
        c.follow([9])
        await self.sync(a, b, c)
        for svc in a._services + b._services:
            svc.stopService()
        await until(lambda: not a.up and not b.up)
        a.publish(9, None, None, 2.0)
        b.publish(9, Share(1), None, 3.0)
        for svc in b._services:
            svc.startService()
        await until(lambda: b.up)
        await self.sync(b, c)
        self.assertEqual(lc.view[9].status, "away")  # a's share still there
        for svc in a._services:
            svc.startService()
        await until(lambda: a.up)
        await self.sync(a, b, c)
        self.assertEqual((lc.view[9].status, lc.view[9].text), ("online", ""))
        self.assertEqual(lc.view[9].sessions, 1)

    @async_test
    async def test_script_flush(self) -> None:
        """Redis forgetting the scripts (SCRIPT FLUSH): the node reconnects,
        loads them again, re-asserts, and nothing is lost."""
        a, _ = await self.node("a")
        b, lb = await self.node("b")
        b.follow([1])
        await self.sync(a, b)
        self.redis.command("SCRIPT", "FLUSH")
        a.publish(1, Share(1), None, 1.0)
        await lb.until(lambda: 1 in lb.view, 10)
        stored = self.redis.command("HGET", scripts.user_key(1), scripts.STATE)
        assert isinstance(stored, bytes)
        self.assertEqual(stored.split(b"|")[1], b"1")


class _Transport:
    def __init__(self) -> None:
        self.aborted = False

    def abortConnection(self) -> None:
        self.aborted = True


class _Subscriber:
    """What the bus's liveness check reads of a subscriber connection."""

    received = 0
    counted = 0
    heard = 0.0

    def __init__(self) -> None:
        self.transport = _Transport()
        self.pings = 0

    def ping(self) -> defer.Deferred[None]:
        self.pings += 1
        return defer.Deferred()


class _RefusingCommands:
    """A command connection whose every call Redis answers with an error."""

    received = 0
    counted = 0
    heard = 0.0

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def call(self, *args: Any) -> defer.Deferred[Any]:
        self.calls.append(args)
        return defer.fail(txredisapi.ResponseError("OOM command not allowed"))

    def read_replies(self) -> None:
        pass


class HeartbeatRefused(unittest.SynchronousTestCase):
    def test_beats_again(self) -> None:
        """A heartbeat answered with an error (OOM, READONLY) is logged and
        the next tick beats again: the node does not stop refreshing its
        liveness while connected."""
        clock = task.Clock()
        bus = RedisBus(RedisAddress.parse("redis://127.0.0.1:1/0"), "n", 10.0,
                       reactor=clock)
        cmd = _RefusingCommands()
        bus._cmd = cmd  # type: ignore[assignment]
        bus._registered, bus._recovering = True, False
        for _ in range(3):
            bus._tick()
            clock.advance(bus.interval)
        self.assertEqual(len(cmd.calls), 3)
        self.assertEqual(len(self.flushLoggedErrors(txredisapi.ResponseError)), 3)


class _Commands:
    """A command connection that counts read_replies."""

    received = 0
    counted = 0
    heard = 0.0
    reads = 0

    def read_replies(self) -> None:
        self.reads += 1


class ReadsReplies(unittest.SynchronousTestCase):
    def test_every_tick(self) -> None:
        """Every heartbeat tick reads the replies to the scripts sent since
        the last one (the command connection does not read them as they
        come), connected and registered or not."""
        clock = task.Clock()
        bus = RedisBus(RedisAddress.parse("redis://127.0.0.1:1/0"), "n", 10.0,
                       reactor=clock)
        cmd = _Commands()
        bus._cmd = cmd  # type: ignore[assignment]
        for _ in range(3):
            bus._tick()
            clock.advance(bus.interval)
        self.assertEqual(cmd.reads, 3)


class Silence(unittest.SynchronousTestCase):
    """The liveness check tells a silent connection from a slow one."""

    def setUp(self) -> None:
        self.clock = task.Clock()
        self.bus = RedisBus(RedisAddress.parse("redis://127.0.0.1:1/0"), "n",
                            10.0, reactor=self.clock)
        self.sub = _Subscriber()
        self.bus._sub = self.sub  # type: ignore[assignment]

    def tick(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.bus._tick()

    def test_silent_connection_dropped(self) -> None:
        """A PING unanswered, and nothing else received, for longer than
        `silence` seconds: the connection is dropped, not before."""
        self.tick(0)
        self.assertEqual(self.sub.pings, 1)
        while self.clock.seconds() <= self.bus.silence:
            self.assertFalse(self.sub.transport.aborted)
            self.tick(self.bus.interval)
        self.assertTrue(self.sub.transport.aborted)

    def test_backlogged_connection_kept(self) -> None:
        """A PING whose answer waits behind events still arriving (a node
        short of CPU reading a backlog) does not drop the connection; once
        the events stop too, it is dropped."""
        self.tick(0)
        for _ in range(int(3 * self.bus.silence / self.bus.interval)):
            self.sub.received += 7
            self.tick(self.bus.interval)
            self.assertFalse(self.sub.transport.aborted)
        self.assertEqual(self.sub.pings, 1)
        while self.clock.seconds() <= 4 * self.bus.silence + self.bus.interval:
            self.tick(self.bus.interval)
        self.assertTrue(self.sub.transport.aborted)
