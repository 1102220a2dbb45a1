"""The benchmark's phases: login, hold, fan-out at several rates, churn.

The controller (this module, in the C{presence-bench} process) starts the
server (or finds it), spawns the load generator's workers, runs the phases,
and gathers the raw figures into one JSON-able dict (see L{report} for the
targets and the presentation).
"""

from __future__ import annotations

import math
import multiprocessing
import os
import platform
import subprocess
import sys
import time
from array import array
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any, Protocol

import psutil
from tqdm import tqdm

from presence.bench import loadgen
from presence.bench.graph import friend_graph
from presence.bench.launch import LaunchedServer
from presence.bench.loadgen import (
    C_BUSY,
    C_COMPLETE,
    C_CONNECTED,
    C_DELIVERED,
    C_ERRORS,
    C_EXPECTED,
    C_FAILED,
    C_LOST,
    C_PINGS,
    C_WELCOMED,
    NCOUNTERS,
)
from presence.bench.server import Probe, Sample, find_listener

SATURATED_BUSY = 0.90  # a worker busy this fraction of the time is saturated
CONTENDED = 0.15  # other processes using this many cores disturb the figures


def source_version() -> str | None:
    """The git commit of the presence code being run, "+dirty" if modified."""
    here = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(here), "status", "--porcelain", "--", str(here)],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "")


def _busy(t: Any) -> float:
    busy: float = t.user + t.nice + t.system
    for name in ("irq", "softirq", "steal"):
        busy += getattr(t, name, 0.0)
    return busy


def machine_busy() -> float:
    """CPU seconds the whole machine has spent busy, all CPUs together."""
    return _busy(psutil.cpu_times())


def cpus_busy() -> list[float]:
    """CPU seconds each CPU has spent busy."""
    return [_busy(t) for t in psutil.cpu_times(percpu=True)]


@dataclass
class Options:
    """What one bench run does: the C{presence-bench} options, parsed.

    See C{presence-bench --help} for each field; C{server} is a running
    server's (host, port), or None to start one.
    """

    users: int = 1000
    friends: int = 20
    seed: int = 1
    hold: float = 30.0
    rates: list[float | None] = field(default_factory=lambda: [500.0, 2000.0, None])
    phase_seconds: float = 10.0
    churn_rate: float = 200.0
    churn_seconds: float = 10.0
    churn_delay: float = 1.0
    workers: int = 2
    login_concurrency: int = 400
    window: int = 4000
    per_address: int = 900
    addresses: int = 0  # 0: enough for per_address connections each
    server: tuple[str, int] | None = None
    server_pid: int | None = None
    server_args: list[str] = field(default_factory=list)
    timeout: float = 15.0
    pin: bool = True
    progress: bool = True
    drain_timeout: float = 30.0
    login_timeout: float = 0.0  # 0: automatic
    wait_quiet: float = 0.0  # seconds to wait for other processes to quieten
    server_log: Path | None = None
    transport: str = "lines"  # or "websocket", "v0" (presence.bench.wsbench)
    v0_poll: float = 1.0  # seconds a v0 client waits after each reply
    redis_unix: bool = False  # --cluster: nodes reach Redis by its Unix socket


class ServerProcess(Protocol):
    """The server under test as the bench started it (L{Bench.launch})."""

    host: str
    port: int
    pid: int
    argv: list[str]
    nofile: int | None

    def stop(self) -> int | None: ...


def percentiles(samples: array[float]) -> dict[str, Any]:
    """p50/p99/max/mean of latencies in seconds, reported in milliseconds."""
    n = len(samples)
    if not n:
        return {"count": 0, "p50_ms": None, "p99_ms": None, "max_ms": None,
                "mean_ms": None}
    ordered = sorted(samples)

    def pct(q: float) -> float:
        return ordered[min(n - 1, max(0, math.ceil(q * n) - 1))] * 1000.0

    return {
        "count": n,
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "max_ms": ordered[-1] * 1000.0,
        "mean_ms": sum(ordered) / n * 1000.0,
    }


class Bench:
    """The controller of a bench run.

    It starts (or finds) the server and its probe, spawns the load-generator
    workers, drives them through the phases (login, hold, fan-out at each
    rate, churn), and gathers the figures of each into C{results}.
    """

    worker_class: type[loadgen.Worker] = loadgen.Worker  # the load's client
    transport = "lines"  # what that client speaks (meta "transport")

    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.server: ServerProcess | None = None
        self.nodes = 1  # servers the users are spread over (user u: u % nodes)
        self.graph: list[list[int]] = []  # the friend graph the workers use
        self.probe: Probe | None = None
        self.pipes: list[Connection] = []
        self.procs: list[Any] = []
        self.worker_procs: list[psutil.Process] = []
        self.counters: Any = None
        self.load_cpus: set[int] = set()
        self.server_cpus: set[int] = set()
        self.idle_cpu_rate = 0.0  # server CPU s/s while idle, from the hold phase
        self.results: dict[str, Any] = {}
        self.notes: list[str] = []
        self.me = psutil.Process()

    # -- helpers ------------------------------------------------------------

    def log(self, text: str) -> None:
        tqdm.write(text, file=sys.stderr)

    def total(self, col: int) -> float:
        c = self.counters
        return float(sum(c[w * NCOUNTERS + col] for w in range(self.opts.workers)))

    def per_worker(self, col: int) -> list[float]:
        c = self.counters
        return [float(c[w * NCOUNTERS + col]) for w in range(self.opts.workers)]

    def sample(self) -> Sample | None:
        return self.probe.sample() if self.probe else None

    def send_all(self, *message: Any) -> None:
        for pipe in self.pipes:
            pipe.send(message)

    def wait_all(
        self, name: str, timeout: float, tick: Any = None
    ) -> list[dict[str, Any] | None]:
        """Wait for every worker's reply C{name} (None for a worker that timed out)."""
        replies: list[dict[str, Any] | None] = [None] * len(self.pipes)
        got = [False] * len(self.pipes)
        deadline = time.monotonic() + timeout
        while not all(got) and time.monotonic() < deadline:
            waiting = [p for p, g in zip(self.pipes, got, strict=True) if not g]
            ready = wait(waiting, 0.1)
            for pipe in ready:
                assert isinstance(pipe, Connection)
                i = self.pipes.index(pipe)
                try:
                    msg = pipe.recv()
                except EOFError:
                    raise RuntimeError(f"load worker {i} died") from None
                if msg[0] == "error":
                    raise RuntimeError(f"load worker {i}: {msg[1]}")
                if msg[0] == name:
                    got[i] = True
                    replies[i] = msg[1] if len(msg) > 1 else {}
            if tick is not None:
                tick()
            for i, proc in enumerate(self.procs):
                if not got[i] and not proc.is_alive():
                    raise RuntimeError(f"load worker {i} died (exit {proc.exitcode})")
        return replies

    def worker_cpu(self) -> list[float]:
        out = []
        for p in self.worker_procs:
            try:
                t = p.cpu_times()
                out.append(t.user + t.system)
            except psutil.Error:
                out.append(0.0)
        return out

    def usage_start(self) -> dict[str, Any]:
        """A snapshot of CPU counters, for L{loadgen_usage} at a phase's end."""
        server = self.sample()
        return {
            "wall": time.monotonic(),
            "workers": self.worker_cpu(),
            "busy": self.per_worker(C_BUSY),
            "machine": machine_busy(),
            "percpu": cpus_busy(),
            "me": sum(self.me.cpu_times()[:2]),
            "server": server.cpu if server else 0.0,
        }

    def loadgen_usage(self, start: dict[str, Any]) -> dict[str, Any]:
        """Whether the load generator kept up, and whether others used the CPUs.

        Per worker: CPU time (from /proc) and busy time (wall time outside
        epoll, which also counts time spent waiting for a CPU) per second.
        C{other_cpu_cores}: CPU used by every other process on the machine
        (the machine's busy time minus server, workers and controller): a
        benchmark on a machine that is doing something else measures that too.
        """
        wall = (time.monotonic() - start["wall"]) or 1e-9
        cpu_now, busy_now = self.worker_cpu(), self.per_worker(C_BUSY)
        cpu = [(b - a) / wall for a, b in zip(start["workers"], cpu_now, strict=True)]
        busy = [(b - a) / wall for a, b in zip(start["busy"], busy_now, strict=True)]
        cores = max(1, len(self.load_cpus) or os.cpu_count() or 1)
        total = sum(cpu)
        saturated = bool(
            (busy and max(busy) >= SATURATED_BUSY) or total >= SATURATED_BUSY * cores
        )
        server = self.sample()
        server_cpu = (server.cpu - start["server"]) if server else 0.0
        me = sum(self.me.cpu_times()[:2]) - start["me"]
        other = (
            machine_busy() - start["machine"]
            - server_cpu - sum(b - a for a, b in zip(start["workers"], cpu_now,
                                                      strict=True))
            - me
        ) / wall
        # With pinning, split the others' CPU into the server's CPU and the
        # load generator's: which side was slowed down?
        split: dict[str, float] = {}
        if self.server_cpus:
            percpu = [b - a for a, b in zip(start["percpu"], cpus_busy(), strict=False)]

            def on(cpus: set[int]) -> float:
                return sum(percpu[i] for i in cpus if i < len(percpu))

            workers_cpu = sum(
                b - a for a, b in zip(start["workers"], cpu_now, strict=True)
            )
            split = {
                "other_on_server_cpu": round(
                    max(0.0, on(self.server_cpus) - server_cpu) / wall, 3),
                "other_on_load_cpus": round(
                    max(0.0, on(self.load_cpus) - workers_cpu - me) / wall, 3),
            }
        return {
            **split,
            "worker_cpu": [round(x, 3) for x in cpu],
            "worker_busy": [round(x, 3) for x in busy],
            "cpu_total_cores": round(total, 3),
            "cpu_seconds": round(total * wall, 3),
            "cores_available": cores,
            "controller_cpu": round(me / wall, 3),
            "other_cpu_cores": round(max(0.0, other), 3),
            "contended": other > CONTENDED,
            "saturated": saturated,
        }

    # -- setup ----------------------------------------------------------------

    def server_options(self, limit: int) -> list[str]:
        """The options of a server the bench starts (C{limit}: its file limit)."""
        o = self.opts
        max_conn = min(o.users + 200, max(o.users, limit - 64))
        return [
            "--timeout", f"{o.timeout:g}",
            "--max-connections", str(max_conn),
            "--max-per-ip", str(o.users + 200),
            *o.server_args,
        ]

    def launch(self, limit: int) -> ServerProcess:
        """Start the server under test on C{self.server_cpus}; the load
        generator connects to it."""
        return LaunchedServer.for_bench(
            self.server_options(limit), log_path=self.opts.server_log,
            cpus=self.server_cpus or None,
        )

    def worker_config(self) -> dict[str, Any]:
        """What the load workers need beyond the single server's address."""
        return {}

    def annotate(self, kind: str, res: dict[str, Any],
                 replies: list[dict[str, Any]]) -> None:
        """Add a subclass's own figures to a phase's C{res}, from the workers'
        C{collect} C{replies}."""

    def setup(self) -> None:
        o = self.opts
        loadgen.raise_nofile()
        cpus = sorted(os.sched_getaffinity(0))
        launching = o.server is None
        if o.pin and len(cpus) >= 2 and (launching or o.server_pid):
            self.server_cpus = {cpus[0]}
            self.load_cpus = set(cpus[1:])
            os.sched_setaffinity(0, self.load_cpus)
        else:
            self.load_cpus = set(cpus)
        pid: int | None
        if launching:
            limit = loadgen.raise_nofile()
            if o.users + 50 > limit:
                self.notes.append(
                    f"file limit {limit} is below users+50: the server may run "
                    "out of file descriptors"
                )
            self.server = self.launch(limit)
            host, port, pid = self.server.host, self.server.port, self.server.pid
        else:
            assert o.server is not None
            host, port = o.server
            pid = o.server_pid or find_listener(port)
            if pid and self.server_cpus:
                try:
                    os.sched_setaffinity(pid, self.server_cpus)
                except OSError:
                    self.server_cpus = set()
        if pid:
            self.probe = Probe(pid)
        else:
            self.notes.append("server pid unknown: no server CPU/RSS figures")
        addresses = o.addresses or max(1, math.ceil(o.users / max(1, o.per_address)))
        addresses = min(addresses, 250 * 256)
        self.results["meta"] = {
            "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
            "argv": sys.argv,
            "host": platform.node(),
            "python": platform.python_version(),
            "source": source_version(),
            "cpus": len(cpus),
            "server": {
                "address": f"tcp:{host}:{port}",
                "pid": pid,
                "argv": self.server.argv if self.server else None,
                "cpus": sorted(self.server_cpus) or None,
                "nofile": self.server.nofile if self.server else None,
            },
            "loadgen": {
                "workers": o.workers,
                "cpus": sorted(self.load_cpus),
                "source_addresses": addresses,
            },
            "users": o.users,
            "friends": o.friends,
            "seed": o.seed,
            "transport": self.transport,
            "timeout": o.timeout if launching else None,
            "heartbeat": heartbeat_of(o.server_args) if launching else None,
        }
        self.graph = graph = friend_graph(o.users, o.friends, o.seed, self.nodes)
        degrees = [len(f) for f in graph[1:]]
        self.results["meta"]["graph"] = {
            "edges": sum(degrees) // 2,
            "mean_friends": round(sum(degrees) / len(degrees), 3),
            "min_friends": min(degrees),
            "max_friends": max(degrees),
        }
        ctx = multiprocessing.get_context("spawn")
        self.counters = ctx.RawArray("d", o.workers * NCOUNTERS)
        close_times = ctx.RawArray("d", o.users + 1)
        config = {
            "workers": o.workers,
            "host": host,
            "port": port,
            "addresses": addresses,
            "users": o.users,
            "friends": o.friends,
            "seed": o.seed,
            "cpus": sorted(self.load_cpus) if self.server_cpus else None,
            **self.worker_config(),
        }
        for i in range(o.workers):
            parent, child = ctx.Pipe()
            proc = ctx.Process(
                target=loadgen.worker_main,
                args=(i, config, child, self.counters, close_times,
                      self.worker_class),
                daemon=True,
                name=f"presence-bench-worker-{i}",
            )
            proc.start()
            child.close()
            self.pipes.append(parent)
            self.procs.append(proc)
        readies = self.wait_all("ready", 60)
        if any(r is None for r in readies):
            raise RuntimeError("load workers did not start")
        self.worker_procs = [psutil.Process(p.pid) for p in self.procs]

    def teardown(self) -> None:
        for pipe in self.pipes:
            try:
                pipe.send(("quit",))
            except OSError:
                pass
        deadline = time.monotonic() + 10
        for proc in self.procs:
            proc.join(max(0.1, deadline - time.monotonic()))
            if proc.is_alive():
                proc.terminate()
                proc.join(5)
        if self.server is not None:
            code = self.server.stop()
            self.results.setdefault("meta", {})["server_exit"] = code

    # -- phases -----------------------------------------------------------------

    def check_quiet(self) -> None:
        """Measure what other processes use; wait (bounded) for a quiet machine."""
        deadline = time.monotonic() + self.opts.wait_quiet
        while True:
            start = self.usage_start()
            time.sleep(1.0)
            other = self.loadgen_usage(start)["other_cpu_cores"]
            self.results["meta"]["other_cpu_cores_at_start"] = other
            if other <= CONTENDED:
                return
            if time.monotonic() >= deadline:
                self.log(f"presence-bench: WARNING: other processes use {other:.2f} "
                         "cores: the figures will measure them too")
                return
            self.log(f"presence-bench: other processes use {other:.2f} cores; "
                     "waiting for a quiet machine")

    def phase_login(self) -> None:
        o = self.opts
        time.sleep(0.5)
        before = self.sample()
        samples: list[list[float]] = []
        t_start = time.monotonic()
        last_sample = [0.0]
        bar = tqdm(total=o.users, desc="login", unit="user", file=sys.stderr,
                   disable=not o.progress, leave=False)

        def tick() -> None:
            welcomed = int(self.total(C_WELCOMED))
            bar.update(welcomed - bar.n)
            bar.set_postfix(complete=int(self.total(C_COMPLETE)), refresh=False)
            now = time.monotonic()
            if self.probe and now - last_sample[0] >= 0.1:
                last_sample[0] = now
                try:
                    s = self.probe.sample()
                except psutil.Error:
                    return
                samples.append(
                    [round(now - t_start, 3), welcomed, s.rss]
                )

        start = self.usage_start()
        per_worker = max(1, o.login_concurrency // o.workers)
        self.send_all("login", per_worker)
        timeout = o.login_timeout or max(60.0, o.users / 100.0)
        replies = self.wait_all("login", timeout, tick)
        tick()
        bar.close()
        time.sleep(0.3)
        after = self.sample()
        usage = self.loadgen_usage(start)
        done = [r for r in replies if r]
        first = min((r["first_connect"] for r in done), default=0.0)
        last = max((r["last_complete"] for r in done), default=0.0)
        complete = int(self.total(C_COMPLETE))
        seconds = last - first if last > first else None
        res: dict[str, Any] = {
            "users": o.users,
            "complete": complete,
            "welcomed": int(self.total(C_WELCOMED)),
            "failed_connects": int(self.total(C_FAILED)),
            "lost": int(self.total(C_LOST)),
            "errors": merge_errors(r.get("errors", {}) for r in done),
            "timed_out_workers": sum(1 for r in replies if r is None),
            "seconds": seconds,
            "logins_per_s": complete / seconds if seconds else None,
            "concurrency": per_worker * o.workers,
            "loadgen": usage,
            "rss_samples": samples,
        }
        if before and after:
            res["rss_before"] = before.rss
            res["rss_after"] = after.rss
            res["rss_per_conn"] = (after.rss - before.rss) / max(1, complete)
            res["server_cpu_s"] = after.cpu - before.cpu
            res["server_cpu_us_per_login"] = (
                (after.cpu - before.cpu) / complete * 1e6 if complete else None
            )
        self.results["login"] = res
        self.send_all("freeze")
        self.wait_all("freeze", 30)

    def phase_hold(self) -> None:
        o = self.opts
        pings0 = self.total(C_PINGS)
        lost0 = self.total(C_LOST)
        start = self.usage_start()
        s0 = self.sample()
        t0 = time.monotonic()
        end = t0 + o.hold
        bar = tqdm(total=round(o.hold), desc="hold", unit="s", file=sys.stderr,
                   disable=not o.progress, leave=False)
        while time.monotonic() < end:
            time.sleep(min(0.5, max(0.0, end - time.monotonic())))
            bar.update(int(time.monotonic() - t0) - bar.n)
        bar.close()
        s1 = self.sample()
        wall = time.monotonic() - t0
        res: dict[str, Any] = {
            "seconds": wall,
            "connections": int(self.total(C_WELCOMED)),
            "pings_answered": int(self.total(C_PINGS) - pings0),
            "lost": int(self.total(C_LOST) - lost0),
            "loadgen": self.loadgen_usage(start),
        }
        if s0 and s1:
            rate = (s1.cpu - s0.cpu) / (s1.wall - s0.wall)
            self.idle_cpu_rate = rate
            res["server_cpu_s"] = s1.cpu - s0.cpu
            res["server_cpu_fraction"] = rate
            res["rss"] = s1.rss
            login = self.results.get("login", {})
            if "rss_before" in login and res["connections"]:
                grown = s1.rss - login["rss_before"]
                res["rss_per_conn"] = grown / res["connections"]
        self.results["hold"] = res

    def run_events(
        self, tag: str, kind: str, command: tuple[Any, ...], seconds: float,
        label: str,
    ) -> dict[str, Any]:
        """One fan-out or churn phase: send, drain, collect, compute."""
        o = self.opts
        self.send_all("phase", tag, kind)
        self.wait_all("phase", 30)
        lost0 = self.total(C_LOST)
        errors0 = self.total(C_ERRORS)
        start = self.usage_start()
        s0 = self.sample()
        t0 = time.monotonic()
        steps = max(1, round(seconds))
        bar = tqdm(total=steps, desc=label, unit="s", file=sys.stderr,
                   disable=not o.progress, leave=False)

        def tick() -> None:
            bar.update(min(steps, int(time.monotonic() - t0)) - bar.n)
            bar.set_postfix(delivered=int(self.total(C_DELIVERED)), refresh=False)

        self.send_all(*command)
        sent = self.wait_all(kind, seconds + o.churn_delay + 60, tick)
        t_sent = time.monotonic()
        s_sent = self.sample()
        # Drain: until every expected delivery arrived (fan-out), or until
        # deliveries stop (churn, where the count is not known in advance).
        last_count, last_change = -1.0, time.monotonic()
        drain_end = time.monotonic() + o.drain_timeout
        quiet = 1.0
        while time.monotonic() < drain_end:
            delivered = self.total(C_DELIVERED)
            expected = self.total(C_EXPECTED)
            if kind == "fanout" and delivered >= expected:
                break
            if delivered != last_count:
                last_count, last_change = delivered, time.monotonic()
            elif time.monotonic() - last_change > (quiet if kind == "churn" else 3.0):
                break
            tick()
            time.sleep(0.02)
        bar.close()
        s1 = self.sample()
        usage = self.loadgen_usage(start)
        self.send_all("collect")
        got = [r for r in self.wait_all("collect", 60) if r]
        lat: array[float] = array("d")
        off: array[float] = array("d")
        relogin: array[float] = array("d")
        for r in got:
            lat.frombytes(r["lat"])
            off.frombytes(r["off_lat"])
            relogin.frombytes(r["relogin"])
        delivered = sum(r["delivered"] for r in got)
        expected = sum(r["expected"] for r in got)
        events = sum(r["sent"] for r in got)
        first = min((r["first_send"] for r in got if r["first_send"]), default=0.0)
        last = max((r["last_recv"] for r in got), default=0.0)
        span = last - first if first and last > first else None
        replies = [r for r in sent if r]
        scheduled = sum(r["scheduled"] for r in replies)
        late = sum(r["late"] for r in replies)
        max_lag = max((r["max_lag"] for r in replies), default=0.0)
        res: dict[str, Any] = {
            "label": label,
            "events_sent": events,
            "events_scheduled": scheduled,
            "send_seconds": t_sent - t0,
            "deliveries": delivered,
            "expected_deliveries": expected if kind == "fanout" else None,
            "missing_deliveries": (
                max(0, expected - delivered) if kind == "fanout" else None
            ),
            "span_seconds": span,
            "deliveries_per_s": delivered / span if span else None,
            "events_per_s": events / span if span else None,
            "latency": percentiles(lat),
            "lost_connections": int(self.total(C_LOST) - lost0),
            "errors": int(self.total(C_ERRORS) - errors0),
            "error_codes": merge_errors(r["errors"] for r in got),
        }
        if kind == "churn":
            res["offline_latency"] = percentiles(off)
            res["relogin"] = percentiles(relogin)
            res["not_back"] = sum(r.get("not_back", 0) for r in replies)
            both = array("d", lat)
            both.extend(off)
            res["latency_all"] = percentiles(both)
        if s0 and s1:
            cpu = s1.cpu - s0.cpu
            dwall = s1.wall - s0.wall
            res["server_cpu_s"] = cpu
            if s_sent:  # the sending alone, before the drain
                res["send_server_cpu_s"] = s_sent.cpu - s0.cpu
                res["send_wall_s"] = s_sent.wall - s0.wall
            res["server_cpu_fraction"] = cpu / dwall if dwall else None
            res["server_rss"] = s1.rss
            if delivered:
                res["cpu_us_per_delivery"] = cpu / delivered * 1e6
                net = max(0.0, cpu - self.idle_cpu_rate * dwall)
                res["cpu_us_per_delivery_net"] = net / delivered * 1e6
        behind = bool(
            scheduled and (late > 0.02 * scheduled or events < 0.97 * scheduled)
        )
        if delivered:
            # What the load generator spends per delivery, and so the rate at
            # which it would saturate its CPUs (sending included).
            per = usage["cpu_seconds"] / delivered
            usage["cpu_us_per_delivery"] = round(per * 1e6, 2)
            usage["ceiling_deliveries_per_s"] = (
                round(usage["cores_available"] / per) if per > 0 else None
            )
        usage["late_events"] = late
        usage["max_lag_ms"] = round(max_lag * 1000, 3)
        usage["blocked_sends"] = sum(r.get("blocked", 0) for r in replies)
        usage["behind_schedule"] = behind
        usage["saturated"] = bool(usage["saturated"] or behind)
        res["loadgen"] = usage
        self.annotate(kind, res, got)
        return res

    def phase_fanout(self) -> None:
        o = self.opts
        phases = []
        for i, rate in enumerate(o.rates):
            per_worker = (rate / o.workers) if rate else 0.0
            label = f"fan-out {rate:g}/s" if rate else "fan-out max"
            res = self.run_events(
                f"f{i}", "fanout",
                ("fanout", per_worker, o.phase_seconds, max(1, o.window)),
                o.phase_seconds, label,
            )
            res["rate"] = rate
            phases.append(res)
            time.sleep(0.5)
        self.results["fanout"] = phases

    def phase_churn(self) -> None:
        o = self.opts
        if o.churn_seconds <= 0 or o.churn_rate <= 0:
            self.results["churn"] = None
            return
        res = self.run_events(
            "c", "churn",
            ("churn", o.churn_rate / o.workers, o.churn_seconds, o.churn_delay),
            o.churn_seconds, f"churn {o.churn_rate:g}/s",
        )
        res["rate"] = o.churn_rate
        res["reconnect_delay"] = o.churn_delay
        self.results["churn"] = res

    def run(self) -> dict[str, Any]:
        try:
            self.setup()
            self.log(f"presence-bench: {self.opts.users} users, "
                     f"{self.opts.workers} workers, server "
                     f"{self.results['meta']['server']['address']} "
                     f"(pid {self.results['meta']['server']['pid']})")
            self.check_quiet()
            self.results["meta"]["date"] = time.strftime("%Y-%m-%d %H:%M:%S %z")
            self.phase_login()
            self.phase_hold()
            self.phase_fanout()
            self.phase_churn()
            self.results["final"] = {
                "connections": int(self.total(C_CONNECTED)),
                "logged_in": int(self.total(C_WELCOMED)),
                "lost": int(self.total(C_LOST)),
            }
        finally:
            self.teardown()
            self.results["notes"] = self.notes
        return self.results


def heartbeat_of(server_args: list[str]) -> str:
    """The --heartbeat that C{server_args} give the server (app by default)."""
    value = "app"
    for i, arg in enumerate(server_args):
        if arg.startswith("--heartbeat="):
            value = arg.split("=", 1)[1]
        elif arg == "--heartbeat" and i + 1 < len(server_args):
            value = server_args[i + 1]
    return value


def merge_errors(dicts: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for d in dicts:
        for code, n in d.items():
            out[str(code)] = out.get(str(code), 0) + n
    return out
