"""Memory per logged-in session, in process, with tracemalloc.

    python tools/session_memory.py                      # 2,000 sessions, 20 friends
    python tools/session_memory.py --sessions 6000 --top 20

It logs --sessions users in on the test harness (``presence.test.support``:
the real server objects, on StringTransports and a fake clock), each
watching --friends others picked as ``presence-bench`` picks them (a random
symmetric graph), and prints the bytes still allocated per session once all
are in, in total and by the file that allocated them.  The test doubles'
own share (the transports, the client objects) is the same for every
version of the server, so the figure compares versions (run it with each
version's venv: the old layout's harness works too); the bench's RSS per
idle connection is the figure that counts for operators.
"""

from __future__ import annotations

import argparse
import gc
import random
import tracemalloc
from typing import Any


def friend_graph(users: int, friends: int, seed: int) -> list[list[int]]:
    """As presence.bench.graph (copied: the old layout has no such module)."""
    rng = random.Random(seed)
    adjacency: list[set[int]] = [set() for _ in range(users + 1)]
    ids = list(range(1, users + 1))
    for _ in range(friends // 2):
        rng.shuffle(ids)
        for i in range(users):
            a, b = ids[i], ids[(i + 1) % users]
            if a != b:
                adjacency[a].add(b)
                adjacency[b].add(a)
    return [sorted(s) for s in adjacency]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=2000)
    parser.add_argument("--friends", type=int, default=20)
    parser.add_argument("--top", type=int, default=12, help="files to list")
    parser.add_argument("--lines", action="store_true", help="by line, not file")
    args = parser.parse_args()

    from twisted.logger import ILogObserver, LogEvent, globalLogBeginner
    from zope.interface import provider

    from presence.test.support import Harness

    @provider(ILogObserver)
    def discard(event: LogEvent) -> None:
        pass

    # With no observer Twisted buffers every event (and what it names).
    globalLogBeginner.beginLoggingTo([discard], redirectStandardIO=False)

    harness = Harness(max_per_ip=1_000_000, max_connections=1_000_000)
    graph = friend_graph(args.sessions, args.friends, 1)
    clients: list[Any] = []
    # A first session warms up what every session shares (caches, code).
    warm = harness.login(args.sessions + 1)
    gc.collect()
    tracemalloc.start(1)
    before = tracemalloc.take_snapshot()
    for uid in range(1, args.sessions + 1):
        clients.append(harness.login(uid, graph[uid]))
    for client in clients:
        client.transport.clear()
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    n = args.sessions
    stats = after.compare_to(before, "lineno" if args.lines else "filename")
    total = sum(s.size_diff for s in stats)
    print(f"{n} sessions of {args.friends} friends: {total / n:,.0f} B per session")
    for s in stats[: args.top]:
        name = s.traceback[0].filename
        short = name[name.find("presence/"):] if "presence/" in name else name
        where = f"{short}:{s.traceback[0].lineno}" if args.lines else short
        print(f"  {s.size_diff / n:8,.0f} B  {where}")
    del warm


if __name__ == "__main__":
    main()
