"""What a cross-node change costs each node, in deterministic units.

    python tools/cluster_cost.py --users 1000 --changes 500
    python tools/cluster_cost.py --callgrind --keep /tmp/cg

Starts a redis-server and two C{twistd -n presence --redis} nodes (with
C{--callgrind}, both under valgrind's callgrind, instrumentation off until
the phase), logs in C{--users} users, user u on node C{u % 2}, with the
cluster bench's friend graph (every friend on the other node), then sends
C{--changes} status changes, each from a user of node 1 (the sender) and
each alone: the next one goes once all its friends, on node 0 (the
receiver), have their presence line.  So each change is the paced bench's
case: one APPLY per reactor turn on the sender, one Pub/Sub message per
turn on the receiver.

Reported per change, for each node: its CPU time (/proc: noisy on a shared
box) and with C{--callgrind} its instructions (callgrind's Ir, user space;
zeroed before the phase, dumped after it).  The receiver's figure includes
its fan-out to the watchers (C{--friends} lines per change): compare it with
C{tools/fanout_cost.py --burst 1} (a single server's cost per delivery) to
see what the cluster adds.  Nothing here is a test.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from presence.bench.graph import friend_graph
from presence.bench.launch import LaunchedServer
from presence.cluster.redisserver import RedisServer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fanout_cost import (
    PERF_CALLS,
    PROFILED,
    STATUSES,
    Client,
    Driver,
    callgrind_total,
    cpu_seconds,
    perf_calls,
)


class ClusterDriver(Driver):
    """The clients of both nodes: each user connects to node C{uid % 2}."""

    def __init__(self, ports: list[int]) -> None:
        super().__init__("127.0.0.1", 0, False)
        self.ports = ports

    def connect(self, uid: int, friends: list[int]) -> None:
        sock = socket.create_connection(("127.0.0.1", self.ports[uid % 2]))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client = Client(uid, sock, False)
        sock.setblocking(False)
        self.clients[uid] = client
        self.selector.register(sock, 1, client)  # EVENT_READ
        client.login(friends)


def control(command: str, pid: int, driver: Driver, uid: int) -> None:
    """C{callgrind_control} on a node, waking it with pings from one of its
    clients until done (it may sit in epoll_wait)."""
    proc = subprocess.Popen(["callgrind_control", command, str(pid)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = driver.clients[uid]
    while proc.poll() is None:
        want = client.pongs + 1
        client.send(b'{"type":"ping"}')
        driver.pump(lambda want=want: client.pongs >= want)
        time.sleep(0.5)
    if proc.returncode:
        raise RuntimeError(f"callgrind_control {command} failed")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--users", type=int, default=1000)
    p.add_argument("--friends", type=int, default=20)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--changes", type=int, default=500)
    p.add_argument("--callgrind", action="store_true")
    p.add_argument("--keep", type=Path, default=None,
                   help="copy the callgrind dumps here as sender.out, receiver.out")
    p.add_argument("--perf", action="store_true",
                   help="count each node's sendto, recvfrom, epoll_wait and "
                   "epoll_ctl with perf stat's tracepoints")
    p.add_argument("--cprofile", type=Path, default=None,
                   help="write cProfiles of the phase here, as sender.prof and "
                   "receiver.prof (pstats format)")
    p.add_argument("--server-arg", action="append", default=[])
    args = p.parse_args(argv)
    if args.cprofile:
        args.cprofile.mkdir(parents=True, exist_ok=True)

    workdir = Path(tempfile.mkdtemp(prefix="cluster-cost-"))
    redis = RedisServer().start()
    nodes: list[LaunchedServer] = []
    try:
        for i in range(2):
            prefix = None
            if args.callgrind:
                prefix = ["valgrind", "--tool=callgrind", "--instr-atstart=no",
                          f"--callgrind-out-file={workdir}/n{i}/callgrind.out.%p"]
            elif args.cprofile:
                role = "receiver" if i == 0 else "sender"
                out = (args.cprofile / f"{role}.prof").resolve()
                prefix = [sys.executable, "-c", PROFILED, str(out)]
            (workdir / f"n{i}").mkdir()
            nodes.append(LaunchedServer(
                ["--port", "tcp:0:interface=127.0.0.1:backlog=4096",
                 "--timeout", "3600", "--max-per-ip", str(args.users + 10),
                 "--max-connections", str(args.users + 10),
                 "--redis", redis.url, "--node-id", f"cost-{i}",
                 *args.server_arg],
                cwd=workdir / f"n{i}", prefix=prefix, start_timeout=300))
        for node in nodes:
            node.wait_for_log(r"joined the cluster", timeout=300)
        driver = ClusterDriver([n.port for n in nodes])
        graph = friend_graph(args.users, args.friends, args.seed, nodes=2)
        for uid in range(1, args.users + 1):
            driver.connect(uid, graph[uid])
        driver.pump(lambda: all(c.welcomed for c in driver.clients.values()))
        # Every login's online events have arrived: no presence line in flight.
        settled = -1
        while settled != driver.delivered():
            settled = driver.delivered()
            driver.barrier()
            time.sleep(0.5)

        rng = random.Random(args.seed)
        senders = [u for u in range(1, args.users + 1) if u % 2 == 1]
        rounds = [(rng.choice(senders), STATUSES[rng.randrange(3)])
                  for _ in range(args.changes)]
        expected = sum(len(graph[u]) for u, _ in rounds)
        pinger = [2, 1]  # a client of node 0, of node 1

        if args.callgrind:
            for i, node in enumerate(nodes):
                control("--instr=on", node.pid, driver, pinger[i])
                control("--zero", node.pid, driver, pinger[i])
        if args.cprofile:
            for node in nodes:
                os.kill(node.pid, signal.SIGUSR2)
            driver.barrier()
        counters = []
        if args.perf:
            for i, node in enumerate(nodes):
                counters.append(subprocess.Popen(
                    ["perf", "stat", "-x,", "-o", str(workdir / f"perf{i}.txt"),
                     "-e", ",".join(f"syscalls:sys_enter_{name}"
                                    for name in PERF_CALLS),
                     "-p", str(node.pid)],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            time.sleep(1.0)  # perf attaches asynchronously
        before = [sum(cpu_seconds(n.pid)) for n in nodes]
        start = driver.delivered()
        wall = time.monotonic()
        for n, (uid, status) in enumerate(rounds):
            want = driver.delivered() + len(graph[uid])
            driver.clients[uid].send(
                b'{"type":"status","status":"%s","text":"r%d"}'
                % (status.encode(), n))
            driver.pump(lambda want=want: driver.delivered() >= want)
        wall = time.monotonic() - wall
        after = [sum(cpu_seconds(n.pid)) for n in nodes]
        if args.cprofile:
            for node in nodes:
                os.kill(node.pid, signal.SIGUSR2)
            driver.barrier()
        for counter in counters:
            counter.send_signal(signal.SIGINT)
            counter.wait(30)
        delivered = driver.delivered() - start
        result: dict[str, object] = {
            "users": args.users, "friends": args.friends,
            "changes": args.changes, "deliveries": delivered,
            "loadavg": os.getloadavg(), "wall_s": round(wall, 3),
        }
        for i, role in ((1, "sender"), (0, "receiver")):
            result[f"{role}_cpu_us_per_change"] = round(
                (after[i] - before[i]) * 1e6 / args.changes, 1)
        if args.callgrind:
            for i, role in ((1, "sender"), (0, "receiver")):
                control("--dump", nodes[i].pid, driver, pinger[i])
                total, path = callgrind_total(workdir / f"n{i}")
                result[f"{role}_instructions_per_change"] = round(total / args.changes)
                if args.keep:
                    args.keep.mkdir(parents=True, exist_ok=True)
                    (args.keep / f"{role}.out").write_bytes(path.read_bytes())
        for i, role in ((1, "sender"), (0, "receiver")):
            if args.perf:
                counted = perf_calls((workdir / f"perf{i}.txt").read_text())
                result[f"{role}_syscalls_per_change"] = {
                    name: round(n / args.changes, 3) for name, n in counted.items()}
        if delivered != expected:
            raise RuntimeError(f"{delivered} deliveries, {expected} expected")
        print(json.dumps(result, indent=1))
    finally:
        for node in nodes:
            node.stop()
        redis.close()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
