"""C{presence-bench --against redis}: the same load on redis-server pub/sub.

Rounds alternate, Redis then presence, each on a fresh server started for it
and with fresh load workers; each is a whole bench run (L{Bench.run}: login,
hold, fan-out at each rate) whose figures come from the same probes.  Churn
is left out: Redis pub/sub has no offline events to time.  L{figures} picks
out what the comparison needs, L{summarize} takes the medians of the rounds
and the ratios presence/Redis; L{presence.bench.against_report} shows them.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from presence.bench.redisload import RedisWorker
from presence.bench.runner import Bench, Options, ServerProcess, source_version
from presence.cluster.redisserver import RedisServer

SERVERS = ("redis", "presence")
# The targets, as presence/Redis ratios of CPU per delivery.
TARGET_CPU_RATIO = 1.0
# key, what it is, unit; a figure's key is KEY@RATE (RATE: events/s or "max").
METRICS = (
    ("cpu_us", "server CPU per delivery (net of idle)", "us"),
    ("p50_ms", "p50 latency", "ms"),
    ("p99_ms", "p99 latency", "ms"),
    ("deliveries_per_s", "deliveries/s", "/s"),
    # Not a figure of either server: what else ran, to judge the others by.
    ("others", "other processes' CPU", "cores"),
)


class LaunchedRedis:
    """A L{RedisServer} as the bench's server under test."""

    def __init__(self, clients: int, cpus: set[int] | None) -> None:
        self.redis = RedisServer().start()
        assert self.redis.proc is not None
        self.host = "127.0.0.1"
        self.port = self.redis.port
        self.pid = self.redis.proc.pid
        self.argv = [str(a) for a in self.redis.proc.args]  # type: ignore[union-attr]
        self.nofile: int | None = None
        if cpus:
            try:
                os.sched_setaffinity(self.pid, cpus)
            except OSError:
                pass
        # Redis's default of 10,000 clients is below a full-size run; its
        # protected mode refuses loopback sources other than 127.0.0.1, which
        # the load's users bind to (it listens on 127.0.0.1 only).
        self.redis.command("CONFIG", "SET", "maxclients", clients,
                           "protected-mode", "no")

    def stop(self) -> int | None:
        proc = self.redis.proc
        self.redis.close()
        return proc.returncode if proc is not None else None


class RedisBench(Bench):
    """The bench's run with redis-server as the server and Redis clients."""

    worker_class = RedisWorker
    transport = "redis"

    def launch(self, limit: int) -> ServerProcess:
        launched = LaunchedRedis(self.opts.users + 200, self.server_cpus or None)
        launched.nofile = limit
        return launched


def rate_key(rate: float | None) -> str:
    return "max" if rate is None else f"{rate:g}"


def figures(results: dict[str, Any]) -> dict[str, float | None]:
    """The comparison's figures of one round's bench results."""
    rss = (results.get("login") or {}).get("rss_per_conn")
    out: dict[str, float | None] = {
        "rss_per_conn_kib": rss / 1024 if rss is not None else None,
    }
    for phase in results.get("fanout") or []:
        at = rate_key(phase.get("rate"))
        latency = phase.get("latency") or {}
        out[f"cpu_us@{at}"] = phase.get("cpu_us_per_delivery_net")
        out[f"cpu_us_raw@{at}"] = phase.get("cpu_us_per_delivery")
        out[f"p50_ms@{at}"] = latency.get("p50_ms")
        out[f"p99_ms@{at}"] = latency.get("p99_ms")
        out[f"deliveries_per_s@{at}"] = phase.get("deliveries_per_s")
        out[f"missing@{at}"] = phase.get("missing_deliveries")
        out[f"others@{at}"] = (phase.get("loadgen") or {}).get("other_cpu_cores")
    return out


def warnings(server: str, n: int, results: dict[str, Any]) -> list[str]:
    """What makes a round's figures doubtful: a busy machine, a load
    generator that could not keep up, deliveries that never came."""
    out = []
    if not (results.get("meta") or {}).get("server", {}).get("cpus"):
        out.append(f"{server} round {n}: the server shared the load's CPUs")
    login = results.get("login") or {}
    if login.get("complete") != login.get("users"):
        out.append(f"{server} round {n}: {login.get('complete')} of "
                   f"{login.get('users')} users logged in")
    for phase in results.get("fanout") or []:
        usage = phase.get("loadgen") or {}
        where = f"{server} round {n}, {phase['label']}"
        if phase.get("missing_deliveries"):
            out.append(f"{where}: {phase['missing_deliveries']} deliveries missing")
        if usage.get("contended"):
            out.append(f"{where}: other processes used "
                       f"{usage.get('other_cpu_cores')} cores")
        if usage.get("saturated") and phase.get("rate"):
            out.append(f"{where}: the load generator fell behind")
        elif usage.get("saturated"):
            out.append(f"{where}: the load generator was saturated (the "
                       "deliveries/s are its ceiling, not the server's)")
    return out


def _median(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def summarize(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Per figure: each server's values by round, their medians, and the
    ratio presence/Redis of the medians."""
    keys: list[str] = []
    for r in rounds:
        keys.extend(k for k in r["figures"] if k not in keys)
    out: dict[str, Any] = {}
    for key in keys:
        entry: dict[str, Any] = {}
        for server in SERVERS:
            values = [r["figures"].get(key) for r in rounds if r["server"] == server]
            entry[server] = values
            entry[f"{server}_median"] = _median(values)
        redis, presence = entry["redis_median"], entry["presence_median"]
        entry["ratio"] = presence / redis if presence is not None and redis else None
        out[key] = entry
    return out


BENCHES: tuple[tuple[str, type[Bench]], ...] = (
    ("redis", RedisBench), ("presence", Bench))


def compare(
    opts: Options, rounds: int, log: Callable[[str], None] | None = None,
    benches: tuple[tuple[str, type[Bench]], ...] = BENCHES,
) -> dict[str, Any]:
    """Run C{rounds} rounds of each of C{benches}, alternating, in order."""
    say = log or (lambda text: print(text, file=sys.stderr))
    opts = replace(opts, churn_seconds=0.0, server=None, server_pid=None)
    meta: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "argv": sys.argv,
        "source": source_version(),
        "users": opts.users,
        "friends": opts.friends,
        "seed": opts.seed,
        "rates": [rate_key(r) for r in opts.rates],
        "transport": opts.transport,
        "rounds": rounds,
        "loadavg_start": list(os.getloadavg()),
    }
    done: list[dict[str, Any]] = []
    notes: list[str] = []
    cpus = os.sched_getaffinity(0)
    for n in range(1, rounds + 1):
        for server, bench in benches:
            say(f"presence-bench --against redis: round {n} of {rounds}, {server}")
            # A run pins this process to the load's CPUs; the next one must
            # see every CPU again to give the server one of its own.
            os.sched_setaffinity(0, cpus)
            results = bench(opts).run()
            notes.extend(warnings(server, n, results))
            notes.extend(f"{server} round {n}: {note}"
                         for note in results.get("notes", []))
            done.append({"server": server, "round": n,
                         "figures": figures(results), "results": results})
    meta["loadavg_end"] = list(os.getloadavg())
    return {"meta": meta, "rounds": done, "summary": summarize(done),
            "notes": notes}
