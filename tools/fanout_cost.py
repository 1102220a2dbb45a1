"""The server's cost per delivery on a fixed workload, in deterministic units.

    python tools/fanout_cost.py --transport lines --burst 1 --changes 300
    python tools/fanout_cost.py --transport websocket --burst 50 --callgrind

Timed figures on a shared 2-core box are noisy; this tool gives the figures
an A/B decision can rest on.  It starts C{twistd -n presence} (optionally
under C{valgrind --tool=callgrind} with instrumentation off), logs in
C{--users} users with the bench's friend graph (L{friend_graph}) over TCP
lines or WebSocket, and then sends C{--changes} status changes in rounds of
C{--burst}: each round sends one change from each of C{--burst} distinct
users (picked by a seeded RNG) and waits until every watcher has its
presence line.  C{--burst 1} is the paced case (each change alone in its
reactor turn, each delivery its own write); a larger burst is the flat-out
case (many changes per turn, a watcher's lines gathered into one write).

Only the change phase is measured, from the server's side: its CPU time
(utime+stime from /proc), with C{--strace} its system calls by name
(C{strace -c -f}, which slows it down: no CPU figure then), with C{--perf}
the send, receive and epoll calls (perf's tracepoints: cheap), with
C{--callgrind} the instructions it executed in user space (callgrind's Ir,
zeroed before the phase and dumped after it; the kernel's share of a
system call is not in it), and with C{--cprofile} its Python calls.  Each is
divided by the deliveries the clients counted (presence lines received).

Nothing here is a test: it is a measuring tool for docs/performance.rst.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import random
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

from presence.bench.graph import friend_graph
from presence.bench.launch import LaunchedServer
from presence.bench.wsbench import WS_LISTENING, tcp_address
from presence.bench.wsload import FrameReader, client_frame, new_key, upgrade_request

STATUSES = ("online", "away", "busy")

# --cprofile: the server runs under this, and SIGUSR2 starts and stops (and
# dumps) a cProfile of the main thread: exact call counts for the phase.
PROFILED = """
import cProfile, runpy, signal, sys
out, sys.argv = sys.argv[1], sys.argv[2:]
profile, on = cProfile.Profile(), []
def toggle(signum, frame):
    if on:
        profile.disable()
        profile.dump_stats(out)
    else:
        profile.enable()
    on.append(1)
signal.signal(signal.SIGUSR2, toggle)
runpy.run_path(sys.argv[0], run_name="__main__")
"""


class Client:
    """One user's connection: lines or WebSocket frames, counted messages."""

    def __init__(self, uid: int, sock: socket.socket, websocket: bool) -> None:
        self.uid = uid
        self.sock = sock
        self.websocket = websocket
        self.reader = FrameReader(new_key()) if websocket else None
        self.buf = b""
        self.welcomed = False
        self.pongs = 0
        self.presence = 0

    def frame(self, line: bytes) -> bytes:
        return client_frame(line) if self.websocket else line + b"\n"

    def send(self, line: bytes) -> None:
        self.sock.sendall(self.frame(line))

    def feed(self, data: bytes) -> None:
        if self.reader is not None:
            messages = self.reader.feed(data)
        else:
            data = self.buf + data
            messages = data.split(b"\n")
            self.buf = messages.pop()
        for message in messages:
            kind = orjson.loads(message).get("type")
            if kind == "presence":
                self.presence += 1
            elif kind == "welcome":
                self.welcomed = True
            elif kind == "pong":
                self.pongs += 1
            elif kind == "error":
                raise RuntimeError(f"user {self.uid}: {message!r}")


class Driver:
    """The clients, and a loop that reads until a condition holds."""

    def __init__(self, host: str, port: int, websocket: bool) -> None:
        self.host, self.port, self.websocket = host, port, websocket
        self.selector = selectors.DefaultSelector()
        self.clients: dict[int, Client] = {}

    def connect(self, uid: int, login: bytes) -> None:
        sock = socket.create_connection((self.host, self.port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client = Client(uid, sock, self.websocket)
        if client.reader is not None:
            sock.sendall(upgrade_request(self.host, self.port, client.reader.key))
            head = b""
            while b"\r\n\r\n" not in head:
                head += sock.recv(4096)
            client.feed(head)
        sock.setblocking(False)
        self.clients[uid] = client
        self.selector.register(sock, selectors.EVENT_READ, client)
        client.send(login)

    def pump(self, done: object, timeout: float = 600.0) -> None:
        deadline = time.monotonic() + timeout
        while not done():  # type: ignore[operator]
            if time.monotonic() > deadline:
                raise RuntimeError("timed out waiting for the server")
            for key, _ in self.selector.select(1.0):
                client: Client = key.data
                data = client.sock.recv(1 << 20)
                if not data:
                    raise RuntimeError(f"user {client.uid}: connection closed")
                client.feed(data)

    def barrier(self) -> None:
        """Every line the server sent before now has been read: a ping on
        every connection, and its pong."""
        want = {uid: c.pongs + 1 for uid, c in self.clients.items()}
        for c in self.clients.values():
            c.send(b'{"type":"ping"}')
        self.pump(lambda: all(c.pongs >= want[u] for u, c in self.clients.items()))

    def delivered(self) -> int:
        return sum(c.presence for c in self.clients.values())


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


PERF_CALLS = ("sendto", "recvfrom", "epoll_wait", "epoll_ctl")


def perf_calls(text: str) -> dict[str, int]:
    """The counts of C{perf stat -x,}'s output, by system call."""
    counts: dict[str, int] = {}
    for line in text.splitlines():
        fields = line.split(",")
        if len(fields) > 2 and fields[2].startswith("syscalls:sys_enter_"):
            counts[fields[2].removeprefix("syscalls:sys_enter_")] = int(fields[0])
    return counts


def strace_calls(table: str) -> dict[str, int]:
    """The calls column of C{strace -c}'s table, by system call."""
    calls: dict[str, int] = {}
    for line in table.splitlines():
        fields = line.split()
        if len(fields) >= 5 and fields[0][0].isdigit() and fields[-1] != "total":
            calls[fields[-1]] = int(fields[3])
    return calls


def callgrind(command: str, pid: int, driver: Driver) -> None:
    """Run C{callgrind_control} on the server, waking it with a ping until it
    is done, in case it waits in epoll_wait (one ping costs next to nothing
    against the phase's deliveries)."""
    proc = subprocess.Popen(["callgrind_control", command, str(pid)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = driver.clients[1]
    while proc.poll() is None:
        want = first.pongs + 1
        first.send(b'{"type":"ping"}')
        driver.pump(lambda want=want: first.pongs >= want)
        time.sleep(0.5)
    if proc.returncode:
        raise RuntimeError(f"callgrind_control {command} failed")


def callgrind_total(outdir: Path) -> tuple[int, Path]:
    """The Ir total of the newest dump in C{outdir}, and its path."""
    dumps = sorted(glob.glob(str(outdir / "callgrind.out.*")), key=os.path.getmtime)
    path = Path(dumps[-1])
    for line in path.read_text().splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1]), path
    raise RuntimeError(f"no totals in {path}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--transport", choices=["lines", "websocket"], default="lines")
    p.add_argument("--users", type=int, default=500)
    p.add_argument("--friends", type=int, default=20)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--changes", type=int, default=500)
    p.add_argument("--burst", type=int, default=1,
                   help="changes sent together, from distinct users (1: paced)")
    p.add_argument("--callgrind", action="store_true")
    p.add_argument("--strace", action="store_true")
    p.add_argument("--perf", action="store_true",
                   help="count sendto, recvfrom, epoll_wait and epoll_ctl with perf "
                   "stat's tracepoints (cheap: the CPU figure stays meaningful)")
    p.add_argument("--cprofile", type=Path, default=None,
                   help="write a cProfile of the phase here (pstats format)")
    p.add_argument("--pyspy", type=Path, default=None,
                   help="py-spy record the phase into this file (folded stacks)")
    p.add_argument("--keep", type=Path, default=None,
                   help="copy the callgrind dump here (for callgrind_annotate)")
    p.add_argument("--server-arg", action="append", default=[])
    args = p.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="fanout-cost-"))
    options = ["--port", "tcp:0:interface=127.0.0.1:backlog=4096",
               "--timeout", "3600", "--max-per-ip", str(args.users + 10),
               "--max-connections", str(args.users + 10), *args.server_arg]
    if args.transport == "websocket":
        options += ["--websocket", "tcp:0:interface=127.0.0.1"]
    prefix = None
    if args.callgrind:
        prefix = ["valgrind", "--tool=callgrind", "--instr-atstart=no",
                  f"--callgrind-out-file={workdir}/callgrind.out.%p"]
    elif args.cprofile:
        prefix = [sys.executable, "-c", PROFILED, str(args.cprofile.resolve())]
    server = LaunchedServer(options, cwd=workdir, prefix=prefix, start_timeout=300)
    try:
        host, port = server.host, server.port
        if args.transport == "websocket":
            line = server.wait_for_log(WS_LISTENING.pattern, timeout=120)
            match = WS_LISTENING.search(line)
            assert match is not None
            host, port = tcp_address(match.group(1))
        driver = Driver(host, port, args.transport == "websocket")
        graph = friend_graph(args.users, args.friends, args.seed)
        for uid in range(1, args.users + 1):
            driver.connect(uid, orjson.dumps({"user_id": uid, "friends": graph[uid]}))
        driver.pump(lambda: all(c.welcomed for c in driver.clients.values()))
        driver.barrier()

        rng = random.Random(args.seed)
        users = list(range(1, args.users + 1))
        rounds = []
        sent = 0
        while sent < args.changes:
            burst = rng.sample(users, min(args.burst, args.changes - sent))
            rounds.append([(u, STATUSES[rng.randrange(3)]) for u in burst])
            sent += len(burst)
        expected = sum(len(graph[u]) for r in rounds for u, _ in r)

        if args.callgrind:
            callgrind("--zero", server.pid, driver)
            callgrind("--instr=on", server.pid, driver)
            callgrind("--zero", server.pid, driver)
        tracer = None
        if args.strace:
            trace_out = workdir / "strace.txt"
            tracer = subprocess.Popen(["strace", "-c", "-f", "-p", str(server.pid),
                                       "-o", str(trace_out)],
                                      stderr=subprocess.DEVNULL)
            time.sleep(1.0)  # strace attaches asynchronously
        if args.cprofile:
            os.kill(server.pid, signal.SIGUSR2)
            driver.barrier()
        spy = None
        if args.pyspy:
            spy = subprocess.Popen(
                [str(Path(sys.executable).with_name("py-spy")), "record", "-p",
                 str(server.pid), "-r", "500", "-f", "raw", "-o", str(args.pyspy)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(2.0)  # py-spy attaches asynchronously
        counter = None
        if args.perf:
            counter = subprocess.Popen(
                ["perf", "stat", "-x,", "-o", str(workdir / "perf.txt"), "-e",
                 ",".join(f"syscalls:sys_enter_{name}" for name in PERF_CALLS),
                 "-p", str(server.pid)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1.0)  # perf attaches asynchronously
        before = cpu_seconds(server.pid)
        start = driver.delivered()
        wall = time.monotonic()
        for n, burst_round in enumerate(rounds):
            want = driver.delivered() + sum(len(graph[u]) for u, _ in burst_round)
            for uid, status in burst_round:
                driver.clients[uid].send(
                    b'{"type":"status","status":"%s","text":"r%d"}'
                    % (status.encode(), n))
            driver.pump(lambda want=want: driver.delivered() >= want)
        wall = time.monotonic() - wall
        after = cpu_seconds(server.pid)
        if args.cprofile:
            os.kill(server.pid, signal.SIGUSR2)
            driver.barrier()
        if counter is not None:
            counter.send_signal(signal.SIGINT)
            counter.wait(30)
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(30)
        if tracer is not None:
            tracer.terminate()
            tracer.wait(10)
        result: dict[str, object] = {
            "transport": args.transport, "users": args.users,
            "friends": args.friends, "changes": args.changes, "burst": args.burst,
            "loadavg": os.getloadavg(),
        }
        if args.callgrind:
            callgrind("--dump", server.pid, driver)
            total, path = callgrind_total(workdir)
            if args.keep:
                args.keep.write_bytes(path.read_bytes())
        delivered = driver.delivered() - start
        if delivered != expected:
            raise RuntimeError(f"{delivered} deliveries, {expected} expected")
        result["deliveries"] = delivered
        result["wall_s"] = round(wall, 3)
        if tracer is None:
            result["cpu_us_per_delivery"] = round((after - before) * 1e6 / delivered, 2)
        if args.callgrind:
            result["instructions_per_delivery"] = round(total / delivered)
        if counter is not None:
            counted = perf_calls((workdir / "perf.txt").read_text())
            result["perf_syscalls_per_delivery"] = {
                name: round(n / delivered, 4) for name, n in counted.items()}
        if tracer is not None:
            calls = strace_calls((workdir / "strace.txt").read_text())
            result["syscalls_per_delivery"] = {
                name: round(n / delivered, 4)
                for name, n in sorted(calls.items(), key=lambda kv: -kv[1])}
        print(json.dumps(result, indent=1))
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)  # logs, dumps (--keep copies)
    return 0


if __name__ == "__main__":
    sys.exit(main())
