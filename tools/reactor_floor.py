"""The floor under presence's idle cost: what a do-nothing Twisted server
spends per line received, over many connections.

    python tools/reactor_floor.py --connections 10000 --rate 1333
    python tools/reactor_floor.py --connections 10000 --rate 1333 --reactor asyncio
    python tools/reactor_floor.py --connections 10000 --rate 1333 --burst 0.1

The server (a Protocol whose dataReceived returns at once) runs in a child
process pinned to CPU 0; this process, pinned to the other CPUs, opens the
connections and sends one pong line at a time, spread evenly or in bursts,
and reads the server's CPU time from /proc.  Loopback only, bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import socket
import subprocess
import sys
import time

SERVER = """
import sys
if sys.argv[2] == "asyncio":
    from twisted.internet import asyncioreactor
    asyncioreactor.install()
from twisted.internet import protocol, reactor

class Nothing(protocol.Protocol):
    def dataReceived(self, data):
        pass

port = reactor.listenTCP(int(sys.argv[1]), protocol.Factory.forProtocol(Nothing),
                         backlog=1024, interface="127.0.0.1")
reactor.run()
"""


def cpu_ticks(pid: int) -> tuple[int, int]:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]), int(fields[12])


async def drive(port: int, pid: int, args: argparse.Namespace) -> None:
    semaphore = asyncio.Semaphore(200)
    writers: list[asyncio.StreamWriter] = []

    async def connect() -> None:
        async with semaphore:
            writers.append((await asyncio.open_connection("127.0.0.1", port))[1])

    await asyncio.gather(*(connect() for _ in range(args.connections)))
    await asyncio.sleep(1)
    tick = args.burst or 0.01
    per_tick = max(1, round(args.rate * tick))
    before, start, sent = cpu_ticks(pid), time.monotonic(), 0
    while time.monotonic() - start < args.seconds:
        for _ in range(per_tick):
            writers[sent % len(writers)].write(b'{"type":"pong"}\n')
            sent += 1
        await asyncio.sleep(tick)
    elapsed = time.monotonic() - start
    after = cpu_ticks(pid)
    hz = os.sysconf("SC_CLK_TCK")
    user, system = ((a - b) / hz for a, b in zip(after, before, strict=True))
    spread = f"bursts every {args.burst:g}s" if args.burst else "evenly"
    print(
        f"{sent / elapsed:,.0f} lines/s over {args.connections:,} connections "
        f"({args.reactor} reactor, {spread}): "
        f"server CPU {100 * (user + system) / elapsed:.2f}% of a core, "
        f"{(user + system) / sent * 1e6:.1f} us per line "
        f"(user {user / sent * 1e6:.1f}, system {system / sent * 1e6:.1f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--rate", type=int, default=1333, help="lines per second")
    parser.add_argument("--burst", type=float, default=0.0,
                        help="send in bursts this many seconds apart (0: evenly)")
    parser.add_argument("--reactor", choices=("epoll", "asyncio"), default="epoll")
    parser.add_argument("--seconds", type=float, default=20)
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(port), args.reactor])
    try:
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) > 1:
            os.sched_setaffinity(server.pid, {cpus[0]})
            os.sched_setaffinity(0, set(cpus[1:]))
        time.sleep(1.5)
        asyncio.run(drive(port, server.pid, args))
    finally:
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    main()
