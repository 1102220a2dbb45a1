"""What a cross-node status change costs Redis, counted rather than timed.

    python tools/redis_cost.py                         # 2,000 changes, one per turn
    python tools/redis_cost.py --per-turn 8 --callgrind

Starts a redis-server on a free loopback port (with --callgrind, under
valgrind's callgrind, which counts the instructions it executes).  In this
one process, node A holds USERS users (one session each) and node B follows
them all.  A then makes CHANGES status changes, PER_TURN of them in one
reactor turn (as a node does when several of its users write a status at
once), and waits for B to receive their events before the next turn; so with
--per-turn 1 each change is one wakeup of Redis, as in the paced bench.

Reported per change, from Redis's own counters (deterministic for a given
code and arguments, unlike CPU time on a shared box): each command's calls
and microseconds (INFO commandstats), socket reads and writes (each a system
call), bytes in and out; with --callgrind, Redis's instructions (user space;
serverCron's, which run by the clock and not per change, left out).  Redis's
CPU per change (INFO cpu, user and system) is printed too, but it is a time.
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import signal
import subprocess
import tempfile
import time
from typing import Any

from cluster_bus import status_changes, two_nodes  # beside this script
from twisted.internet import defer, reactor
from twisted.python.failure import Failure

from presence.bench import redis_stats
from presence.cluster.redisserver import RedisServer
from presence.core.interfaces import Share


class Callgrind:
    """Counts of a redis-server running under callgrind: zeroed, then dumped."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.pattern = os.path.join(directory, "callgrind.out")

    def wrapper(self) -> tuple[str, ...]:
        return ("valgrind", "--tool=callgrind", "--quiet",
                f"--callgrind-out-file={self.pattern}.%p")

    def control(self, pid: int, flag: str) -> None:
        subprocess.run(["callgrind_control", flag, str(pid)], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def instructions(self, pid: int) -> tuple[int, int]:
        """Dump; the instructions since the last zeroing, and serverCron's
        share of them (inclusive)."""
        before = set(glob.glob(self.pattern + ".*"))
        self.control(pid, "-d")
        [dump] = set(glob.glob(self.pattern + ".*")) - before
        text = subprocess.run(
            ["callgrind_annotate", "--inclusive=yes", "--threshold=100", dump],
            check=True, capture_output=True, text=True,
        ).stdout
        total = cron = 0
        for line in text.splitlines():
            m = re.match(r"\s*([\d,]+) \(.*?\)\s+(.*)", line)
            if not m:
                continue
            count = int(m.group(1).replace(",", ""))
            if "PROGRAM TOTALS" in m.group(2):
                total = count
            elif re.search(r":serverCron\b", m.group(2)):
                cron = count
        return total, cron


async def run(args: argparse.Namespace, redis: RedisServer,
              grind: Callgrind | None) -> dict[str, Any]:
    a, b, lb = await two_nodes(redis)
    n = args.users
    users = range(1, n + 1)
    for uid in users:
        a.publish(uid, Share(1), None, time.time())
    await a.flush()
    b.follow(users)
    await b.sync()
    assert lb.changed == n, (lb.changed, n)

    assert redis.proc is not None
    pid = redis.proc.pid
    before = redis_stats.snapshot(redis)
    if grind is not None:
        grind.control(pid, "-z")
    await status_changes(a, lb, n, args.changes, args.per_turn, texts=True)
    counted = grind.instructions(pid) if grind is not None else None
    after = redis_stats.snapshot(redis)
    result = redis_stats.breakdown(before, after, args.changes)
    if counted is not None:
        total, cron = counted
        result["instructions_per_change"] = (total - cron) / args.changes
        result["cron_instructions"] = cron
    for bus in (a, b):
        await bus.stopService()
    return result


def report(args: argparse.Namespace, result: dict[str, Any]) -> None:
    print(f"users {args.users}, changes {args.changes}, per turn {args.per_turn}")
    print(f"{'command':14s} {'calls':>7s} {'us':>8s}   (per change)")
    for name, c in result["commands"].items():
        print(f"{name:14s} {c['calls_per_change']:7.3f} {c['us_per_change']:8.2f}")
    pc = result["per_change"]
    print(f"socket reads {pc.get('total_reads_processed', 0):.3f}, writes "
          f"{pc.get('total_writes_processed', 0):.3f}; bytes in "
          f"{pc.get('total_net_input_bytes', 0):.0f}, out "
          f"{pc.get('total_net_output_bytes', 0):.0f}; CPU user "
          f"{pc.get('used_cpu_user', 0):.1f} us, system "
          f"{pc.get('used_cpu_sys', 0):.1f} us (times: noisy)")
    if "instructions_per_change" in result:
        print(f"Redis instructions per change: "
              f"{result['instructions_per_change']:,.0f} "
              f"(serverCron's {result['cron_instructions']:,} left out)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--changes", type=int, default=2000)
    parser.add_argument("--per-turn", type=int, default=1)
    parser.add_argument("--callgrind", action="store_true",
                        help="run redis-server under callgrind and count "
                        "its instructions per change")
    args = parser.parse_args()
    workdir = tempfile.mkdtemp(prefix="redis-cost-")
    grind = Callgrind(workdir) if args.callgrind else None
    redis = RedisServer(wrapper=grind.wrapper() if grind else ())
    redis.start(timeout=60)
    result: list[Any] = []

    def go() -> None:
        d = defer.ensureDeferred(run(args, redis, grind))
        d.addBoth(result.append)
        d.addBoth(lambda _: reactor.stop())

    try:
        reactor.callWhenRunning(go)
        reactor.run()
    finally:
        redis.stop(signal.SIGKILL)
        redis.close()
    if isinstance(result[0], Failure):
        result[0].raiseException()
    report(args, result[0])


if __name__ == "__main__":
    main()
