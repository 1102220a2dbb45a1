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

With C{--server redis} the same workload runs on redis-server pub/sub, the
yardstick of issue 12, as C{presence-bench --against redis} runs it: each
user a RESP3 connection (C{HELLO 3}) subscribed to its friends' channels, a
change a C{PUBLISH} on the user's own channel, a delivery a C{message} push;
callgrind's count then leaves out C{serverCron} (it runs by the clock, not
per delivery).  C{--perf} counts C{read} and C{write} too (Redis's calls),
and the clients count the bytes they received, so the report gives bytes
and deliveries per send for either server.

With C{--idle SECONDS} (and a short C{--timeout}) there are no changes:
the clients answer the server's pings for that long, and every figure is
per ping answered, the cost of one keep-alive cycle.

Nothing here is a test: it is a measuring tool for docs/performance.rst.
"""

from __future__ import annotations

import argparse
import contextlib
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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hiredis
import orjson

from presence.bench.graph import friend_graph
from presence.bench.launch import LaunchedServer
from presence.bench.wsbench import WS_LISTENING, tcp_address
from presence.bench.wsload import FrameReader, client_frame, new_key, upgrade_request
from presence.cluster.redisserver import RedisServer

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

# --opcodes: the same toggle, counting the bytecodes each Python function
# executes (sys.settrace with opcode events): a deterministic share of the
# interpreter's work by function, which callgrind (all in the eval loop)
# cannot give.
OPCODES = """
import collections, json, runpy, signal, sys
out, sys.argv = sys.argv[1], sys.argv[2:]
counts, on = collections.Counter(), []
def trace(frame, event, arg):
    frame.f_trace_opcodes = True
    if event == "opcode":
        code = frame.f_code
        counts[code.co_filename, code.co_firstlineno, code.co_name] += 1
    return trace
def toggle(signum, frame):
    if on:
        sys.settrace(None)
        f = frame
        while f is not None:
            f.f_trace = None
            f = f.f_back
        with open(out, "w") as w:
            json.dump([[*k, n] for k, n in counts.most_common()], w)
    else:
        sys.settrace(trace)
        f = frame.f_back
        while f is not None:
            f.f_trace, f.f_trace_opcodes = trace, True
            f = f.f_back
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
        self.pings = 0  # the server's, answered
        self.presence = 0
        self.received = 0  # bytes

    def frame(self, line: bytes) -> bytes:
        return client_frame(line) if self.websocket else line + b"\n"

    def send(self, line: bytes) -> None:
        self.sock.sendall(self.frame(line))

    def login(self, friends: list[int]) -> None:
        self.send(orjson.dumps({"user_id": self.uid, "friends": friends}))

    def ping(self) -> None:
        self.send(b'{"type":"ping"}')

    def status(self, status: str, text: str) -> None:
        self.send(b'{"type":"status","status":"%s","text":"%s"}'
                  % (status.encode(), text.encode()))

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
            elif kind == "ping":
                self.pings += 1
                self.send(b'{"type":"pong"}')
            elif kind == "error":
                raise RuntimeError(f"user {self.uid}: {message!r}")


def resp(*args: str | bytes) -> bytes:
    packed: bytes = hiredis.pack_command(args)  # type: ignore[arg-type]
    return packed


class RedisClient(Client):
    """One user on Redis pub/sub: subscribed to its friends' channels; a
    change is a PUBLISH on its own channel (as presence.bench.redisload)."""

    def __init__(self, uid: int, sock: socket.socket, websocket: bool) -> None:
        super().__init__(uid, sock, False)
        self.parser = hiredis.Reader()
        self.friends = 0

    def login(self, friends: list[int]) -> None:
        self.friends = len(friends)
        channels = [b"u%d" % f for f in friends]
        self.sock.sendall(resp("HELLO", "3")
                          + (resp("SUBSCRIBE", *channels) if channels else b""))

    def ping(self) -> None:
        self.sock.sendall(resp("PING"))

    def status(self, status: str, text: str) -> None:
        # The payload is what presence's change carries as its text.
        self.sock.sendall(resp("PUBLISH", b"u%d" % self.uid, text.encode()))

    def feed(self, data: bytes) -> None:
        self.parser.feed(data)
        while True:
            reply: Any = self.parser.gets()
            if reply is False:
                return
            if isinstance(reply, list):  # a push
                if reply[0] == b"message":
                    self.presence += 1
                elif reply[0] == b"subscribe" and reply[2] >= self.friends:
                    self.welcomed = True
            elif reply == b"PONG":
                self.pongs += 1
            elif type(reply) is dict and not self.friends:
                self.welcomed = True  # HELLO's reply
            elif isinstance(reply, hiredis.ReplyError):
                raise RuntimeError(f"user {self.uid}: {reply}")
            # Anything else is PUBLISH's count of receivers.


class Driver:
    """The clients, and a loop that reads until a condition holds."""

    def __init__(self, host: str, port: int, websocket: bool,
                 client_class: type[Client] = Client) -> None:
        self.host, self.port, self.websocket = host, port, websocket
        self.client_class = client_class
        self.selector = selectors.DefaultSelector()
        self.clients: dict[int, Client] = {}

    def connect(self, uid: int, friends: list[int]) -> None:
        sock = socket.create_connection((self.host, self.port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client = self.client_class(uid, sock, self.websocket)
        if client.reader is not None:
            sock.sendall(upgrade_request(self.host, self.port, client.reader.key))
            head = b""
            while b"\r\n\r\n" not in head:
                head += sock.recv(4096)
            client.feed(head)
        sock.setblocking(False)
        self.clients[uid] = client
        self.selector.register(sock, selectors.EVENT_READ, client)
        client.login(friends)

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
                client.received += len(data)
                client.feed(data)

    def barrier(self) -> None:
        """Every line the server sent before now has been read: a ping on
        every connection, and its pong."""
        want = {uid: c.pongs + 1 for uid, c in self.clients.items()}
        for c in self.clients.values():
            c.ping()
        self.pump(lambda: all(c.pongs >= want[u] for u, c in self.clients.items()))

    def delivered(self) -> int:
        return sum(c.presence for c in self.clients.values())

    def received(self) -> int:
        return sum(c.received for c in self.clients.values())

    def pinged(self) -> int:
        return sum(c.pings for c in self.clients.values())


def cpu_seconds(pid: int) -> tuple[float, float]:
    """The process's user and system CPU time so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


PERF_CALLS = ("sendto", "recvfrom", "write", "read", "epoll_wait", "epoll_ctl")
SENDS = ("sendto", "write")


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
        first.ping()
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


def inclusive(path: Path, function: str) -> int:
    """The instructions of C{function} and what it called, in a dump."""
    text = subprocess.run(
        ["callgrind_annotate", "--inclusive=yes", "--threshold=100", str(path)],
        check=True, capture_output=True, text=True).stdout
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[-1].endswith(":" + function):
            return int(fields[0].replace(",", ""))
        if len(fields) >= 3 and fields[-2].endswith(":" + function):
            return int(fields[0].replace(",", ""))  # "name [object]"
    return 0


@contextlib.contextmanager
def redis_server(prefix: list[str] | None, clients: int) -> Iterator[RedisServer]:
    """A redis-server (under C{prefix}, e.g. valgrind) for C{clients}."""
    redis = RedisServer(wrapper=tuple(prefix or ()))
    redis.start(timeout=120)
    try:
        redis.command("CONFIG", "SET", "maxclients", str(clients + 100))
        yield redis
    finally:
        redis.stop()
        redis.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--server", choices=["presence", "redis"], default="presence")
    p.add_argument("--transport", choices=["lines", "websocket"], default="lines")
    p.add_argument("--users", type=int, default=500)
    p.add_argument("--friends", type=int, default=20)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--changes", type=int, default=500)
    p.add_argument("--burst", type=int, default=1,
                   help="changes sent together, from distinct users (1: paced)")
    p.add_argument("--idle", type=float, default=0.0,
                   help="instead of changes, SECONDS of idle keep-alive: the "
                   "clients answer the server's pings, and the figures are "
                   "per ping answered (with --timeout: pings every timeout/2)")
    p.add_argument("--timeout", type=float, default=3600.0,
                   help="the server's --timeout")
    p.add_argument("--callgrind", action="store_true")
    p.add_argument("--strace", action="store_true")
    p.add_argument("--perf", action="store_true",
                   help="count sendto, recvfrom, write, read, epoll_wait and "
                   "epoll_ctl with perf stat's tracepoints (cheap: the CPU figure "
                   "stays meaningful)")
    p.add_argument("--cprofile", type=Path, default=None,
                   help="write a cProfile of the phase here (pstats format)")
    p.add_argument("--opcodes", type=Path, default=None,
                   help="write the bytecodes each Python function executed in "
                   "the phase here (JSON: file, line, name, count)")
    p.add_argument("--pyspy", type=Path, default=None,
                   help="py-spy record the phase into this file (folded stacks)")
    p.add_argument("--keep", type=Path, default=None,
                   help="copy the callgrind dump here (for callgrind_annotate)")
    p.add_argument("--server-arg", action="append", default=[])
    args = p.parse_args(argv)
    redis = args.server == "redis"
    if redis and (args.transport != "lines" or args.cprofile or args.pyspy
                  or args.opcodes or args.server_arg):
        p.error("--server redis takes neither --transport websocket, "
                "--cprofile, --opcodes, --pyspy nor --server-arg")

    workdir = Path(tempfile.mkdtemp(prefix="fanout-cost-"))
    prefix = None
    if args.callgrind:
        prefix = ["valgrind", "--tool=callgrind", "--instr-atstart=no",
                  f"--callgrind-out-file={workdir}/callgrind.out.%p"]
    elif args.cprofile:
        prefix = [sys.executable, "-c", PROFILED, str(args.cprofile.resolve())]
    elif args.opcodes:
        prefix = [sys.executable, "-c", OPCODES, str(args.opcodes.resolve())]
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, workdir, ignore_errors=True)  # logs, dumps
        if redis:
            rs = stack.enter_context(redis_server(prefix, args.users))
            assert rs.proc is not None
            host, port, pid = "127.0.0.1", rs.port, rs.proc.pid
            driver = Driver(host, port, False, RedisClient)
        else:
            host, port, pid = start_presence(args, prefix, workdir, stack)
            driver = Driver(host, port, args.transport == "websocket")
        return measure(args, driver, pid, workdir)
    return 0


def start_presence(args: argparse.Namespace, prefix: list[str] | None,
                   workdir: Path, stack: contextlib.ExitStack) -> tuple[str, int, int]:
    """Start the presence server; its address and pid."""
    options = ["--port", "tcp:0:interface=127.0.0.1:backlog=4096",
               "--timeout", f"{args.timeout:g}", "--max-per-ip", str(args.users + 10),
               "--max-connections", str(args.users + 10), *args.server_arg]
    if args.transport == "websocket":
        options += ["--websocket", "tcp:0:interface=127.0.0.1"]
    server = LaunchedServer(options, cwd=workdir, prefix=prefix, start_timeout=300)
    stack.callback(server.stop)
    host, port = server.host, server.port
    if args.transport == "websocket":
        line = server.wait_for_log(WS_LISTENING.pattern, timeout=120)
        match = WS_LISTENING.search(line)
        assert match is not None
        host, port = tcp_address(match.group(1))
    return host, port, server.pid


def measure(args: argparse.Namespace, driver: Driver, pid: int, workdir: Path) -> int:
    """Log the users in, run the change phase, print what it cost."""
    graph = friend_graph(args.users, args.friends, args.seed)
    for uid in range(1, args.users + 1):
        driver.connect(uid, graph[uid])
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
        callgrind("--zero", pid, driver)
        callgrind("--instr=on", pid, driver)
        callgrind("--zero", pid, driver)
    tracer = None
    if args.strace:
        trace_out = workdir / "strace.txt"
        tracer = subprocess.Popen(["strace", "-c", "-f", "-p", str(pid),
                                   "-o", str(trace_out)],
                                  stderr=subprocess.DEVNULL)
        time.sleep(1.0)  # strace attaches asynchronously
    if args.cprofile or args.opcodes:
        os.kill(pid, signal.SIGUSR2)
        driver.barrier()
    spy = None
    if args.pyspy:
        spy = subprocess.Popen(
            [str(Path(sys.executable).with_name("py-spy")), "record", "-p",
             str(pid), "-r", "500", "-f", "raw", "-o", str(args.pyspy)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(2.0)  # py-spy attaches asynchronously
    counter = None
    if args.perf:
        counter = subprocess.Popen(
            ["perf", "stat", "-x,", "-o", str(workdir / "perf.txt"), "-e",
             ",".join(f"syscalls:sys_enter_{name}" for name in PERF_CALLS),
             "-p", str(pid)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)  # perf attaches asynchronously
    user0, system0 = cpu_seconds(pid)
    start = driver.delivered()
    received = driver.received()
    pinged = driver.pinged()
    wall = time.monotonic()
    if args.idle:
        rounds, expected = [], 0
        until = wall + args.idle
        driver.pump(lambda: time.monotonic() >= until)
    for n, burst_round in enumerate(rounds):
        want = driver.delivered() + sum(len(graph[u]) for u, _ in burst_round)
        for uid, status in burst_round:
            driver.clients[uid].status(status, f"r{n}")
        driver.pump(lambda want=want: driver.delivered() >= want)
    wall = time.monotonic() - wall
    user1, system1 = cpu_seconds(pid)
    received = driver.received() - received
    if args.cprofile or args.opcodes:
        os.kill(pid, signal.SIGUSR2)
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
        "server": args.server, "transport": args.transport, "users": args.users,
        "friends": args.friends, "changes": args.changes, "burst": args.burst,
        "loadavg": os.getloadavg(),
    }
    if args.callgrind:
        callgrind("--dump", pid, driver)
        total, path = callgrind_total(workdir)
        if args.server == "redis":
            # serverCron runs by the clock (more often, for the phase's
            # length, under valgrind), not per delivery.
            cron = inclusive(path, "serverCron")
            result["cron_instructions"] = cron
            total -= cron
        if args.keep:
            args.keep.write_bytes(path.read_bytes())
    delivered = driver.delivered() - start
    if delivered != expected:
        raise RuntimeError(f"{delivered} deliveries, {expected} expected")
    result["deliveries"] = delivered
    if args.idle:
        # Per ping answered: the figures below say "per delivery".
        delivered = driver.pinged() - pinged
        result["pings_answered"] = delivered
    result["bytes_per_delivery"] = round(received / delivered, 1)
    result["wall_s"] = round(wall, 3)
    if tracer is None:
        result["cpu_us_per_delivery"] = round(
            (user1 + system1 - user0 - system0) * 1e6 / delivered, 2)
        result["user_us_per_delivery"] = round((user1 - user0) * 1e6 / delivered, 2)
        result["system_us_per_delivery"] = round(
            (system1 - system0) * 1e6 / delivered, 2)
    if args.callgrind:
        result["instructions_per_delivery"] = round(total / delivered)
    if counter is not None:
        counted = perf_calls((workdir / "perf.txt").read_text())
        result["perf_syscalls_per_delivery"] = {
            name: round(n / delivered, 4) for name, n in counted.items()}
        sends = sum(counted.get(name, 0) for name in SENDS)
        if sends:
            result["deliveries_per_send"] = round(delivered / sends, 3)
            result["bytes_per_send"] = round(received / sends, 1)
    if tracer is not None:
        calls = strace_calls((workdir / "strace.txt").read_text())
        result["syscalls_per_delivery"] = {
            name: round(n / delivered, 4)
            for name, n in sorted(calls.items(), key=lambda kv: -kv[1])}
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
