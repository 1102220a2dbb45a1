"""What the Redis bus costs: node CPU and Redis CPU per change, Redis memory
per user, and how long following, re-asserting and resyncing take.

    python tools/cluster_bus.py                       # 10,000 users, 20,000 changes
    python tools/cluster_bus.py --users 19000 --changes 40000 --listed 20

Starts a redis-server on a free loopback port.  In this one process, node A
holds USERS users (one session each; with --listed, mutual mode: each lists
that many ids) and node B follows all of them.  Then A writes CHANGES status
changes, WINDOW at a time, and B receives one event per change.  Reported:

  - logins: A's users going online (one script each), B following them all
    (SUBSCRIBE commands, pipelined reads) and the time both take;
  - per change: this process's CPU (A's publish and B's receipt, both nodes'
    halves of a cross-node delivery), and redis-server's CPU (INFO);
  - Redis memory per present user (used_memory) and keys per user;
  - Redis killed and started empty: time until both nodes are up again and
    B has resynced (A re-asserts every share);
  - node A killed: time until B has seen all its users go offline, how
    long the cleanup itself took (from the first offline to the last), and
    what its scripts cost Redis (INFO commandstats: EVALSHA calls and time,
    the survivor's heartbeats included), and this process's CPU meanwhile
    (B cleaning up and receiving the offline events).

Loopback only, bounded in time.
"""

from __future__ import annotations

import argparse
import resource
import signal
import time
from collections.abc import Sequence
from typing import Any

from twisted.internet import defer, reactor, task
from zope.interface import implementer

from presence.cluster.bus import RedisBus
from presence.cluster.connection import RedisAddress
from presence.cluster.redisserver import RedisServer
from presence.core.interfaces import IStateListener, Share, UserState
from presence.wire import StatusChange


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@implementer(IStateListener)
class Counter:
    def __init__(self) -> None:
        self.changed = 0
        self.resyncs: list[int] = []
        self.present: set[int] = set()
        self.waiting: tuple[int, defer.Deferred[None]] | None = None

    def user_changed(self, state: UserState) -> None:
        if state.present:
            self.present.add(state.uid)
        else:
            self.present.discard(state.uid)
        self.changed += 1
        if self.waiting and self.changed >= self.waiting[0]:
            d = self.waiting[1]
            self.waiting = None
            d.callback(None)

    def resync(self, states: Sequence[UserState]) -> None:
        self.resyncs.append(len(states))
        self.present = {s.uid for s in states}

    def until(self, n: int) -> defer.Deferred[None]:
        d: defer.Deferred[None] = defer.Deferred()
        if self.changed >= n:
            d.callback(None)
        else:
            self.waiting = (n, d)
        return d


def redis_cpu(redis: RedisServer) -> float:
    info = redis.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def two_nodes(redis: RedisServer) -> tuple[RedisBus, RedisBus, Counter]:
    """Nodes "a" (which publishes) and "b" (whose listener, returned, counts)."""
    address = RedisAddress.parse(redis.url)
    a, b = RedisBus(address, "a"), RedisBus(address, "b")
    lb = Counter()
    a.attach(Counter())
    b.attach(lb)
    for bus in (a, b):
        bus.startService()
        await bus.when_up()
    return a, b, lb


async def status_changes(a: RedisBus, lb: Counter, users: int, changes: int,
                         per_round: int, texts: bool = False) -> None:
    """C{changes} status changes from node a, C{per_round} in one reactor turn,
    each round waited for until node b has heard all of it."""
    statuses = ["away", "busy", "online"]
    done = 0
    while done < changes:
        batch = min(per_round, changes - done)
        for i in range(done, done + batch):
            status = statuses[(i // users) % 3]
            a.publish(i % users + 1, Share(1),
                      StatusChange(status, f"t{i}" if texts else None), time.time())
        done += batch
        await lb.until(users + done)


async def run(args: argparse.Namespace, redis: RedisServer) -> None:
    a, b, lb = await two_nodes(redis)
    n = args.users
    users = range(1, n + 1)
    base_mem = int(redis.info("memory")["used_memory"])

    start, c0, r0 = time.monotonic(), cpu(), redis_cpu(redis)
    for uid in users:
        listed = frozenset(
            (uid + k) % n + 1 for k in range(1, args.listed + 1)
        ) if args.listed else frozenset()
        a.publish(uid, Share(1, listed), None, time.time())
    await a.flush()
    login_wall, login_cpu, login_redis = (
        time.monotonic() - start, cpu() - c0, redis_cpu(redis) - r0
    )
    mem = int(redis.info("memory")["used_memory"]) - base_mem
    keys = redis.command("DBSIZE")
    assert isinstance(keys, int)

    redis.command("CONFIG", "RESETSTAT")
    start, c0 = time.monotonic(), cpu()
    b.follow(users)
    await b.sync()
    follow_wall, follow_cpu = time.monotonic() - start, cpu() - c0
    stats = redis.info("commandstats")
    subscribes = stats.get("cmdstat_subscribe", "calls=0,").split(",")[0]
    assert lb.changed == n, (lb.changed, n)

    start, c0, r0 = time.monotonic(), cpu(), redis_cpu(redis)
    await status_changes(a, lb, n, args.changes, args.window)
    wall, used, rused = time.monotonic() - start, cpu() - c0, redis_cpu(redis) - r0

    redis.restart()
    start = time.monotonic()
    await task.deferLater(reactor, 0.05, lambda: None)
    await a.when_up()
    await b.when_up()
    while len(lb.present) < n:  # what A re-asserts after B's resync is told
        await task.deferLater(reactor, 0.01, lambda: None)
    recover = time.monotonic() - start

    # Node A dies (no leave): B's cleanup takes its users offline.
    redis.command("CONFIG", "RESETSTAT")
    c0 = cpu()
    a._beat.stop()
    for svc in a._services:
        await svc.stopService()
    killed = time.monotonic()
    first: list[float] = []
    while lb.present:
        if len(lb.present) < n and not first:
            first.append(time.monotonic())
        await task.deferLater(reactor, 0.01, lambda: None)
    gone = time.monotonic()
    reap_cpu = cpu() - c0  # B's cleanup and its receipt of the offline events
    cleanup = gone - (first[0] if first else killed)
    evalsha = dict(
        item.split("=") for item in
        redis.info("commandstats").get("cmdstat_evalsha", "").split(",") if item
    )

    print(f"users {n}, listed {args.listed}, changes {args.changes}, "
          f"window {args.window}")
    print(f"logins: {login_wall * 1e3:.0f} ms, node CPU "
          f"{login_cpu / n * 1e6:.1f} us/login, Redis CPU "
          f"{login_redis / n * 1e6:.1f} us/login")
    print(f"follow {n}: {follow_wall * 1e3:.0f} ms, node CPU "
          f"{follow_cpu / n * 1e6:.1f} us/user, SUBSCRIBE {subscribes}")
    print(f"changes: {args.changes / wall:.0f}/s, node CPU (publish + receive) "
          f"{used / args.changes * 1e6:.1f} us/change, Redis CPU "
          f"{rused / args.changes * 1e6:.1f} us/change")
    print(f"Redis memory: {mem / n:.0f} bytes/user, {keys / n:.2f} keys/user")
    print(f"Redis restarted empty: B sees all {n} users again after "
          f"{recover * 1e3:.0f} ms (users in B's resyncs: {lb.resyncs})")
    print(f"node A killed: all {n} users offline at B after "
          f"{(gone - killed) * 1e3:.0f} ms (TTL 10 s), the cleanup itself "
          f"{cleanup * 1e3:.0f} ms; its scripts: {evalsha.get('calls')} EVALSHA, "
          f"Redis {float(evalsha.get('usec', 0)) / n:.1f} us/user; B's CPU "
          f"{reap_cpu / n * 1e6:.1f} us/user")
    a.running = False
    await b.stopService()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--changes", type=int, default=20_000)
    parser.add_argument("--listed", type=int, default=0)
    parser.add_argument("--window", type=int, default=64)
    args = parser.parse_args()
    redis = RedisServer().start()
    result: list[Any] = []

    def go() -> None:
        d = defer.ensureDeferred(run(args, redis))
        d.addErrback(result.append)
        d.addBoth(lambda _: reactor.stop())

    try:
        reactor.callWhenRunning(go)
        reactor.run()
    finally:
        redis.stop(signal.SIGKILL)
        redis.close()
    if result:
        result[0].raiseException()


if __name__ == "__main__":
    main()
