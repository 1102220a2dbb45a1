"""C{presence-bench --against redis}: the same load on redis-server pub/sub.

Rounds alternate, Redis then presence, each on a fresh server started for it
and with fresh load workers; each is a whole bench run (L{Bench.run}: login,
hold, fan-out at each rate) whose figures come from the same probes.  Churn
is left out: Redis pub/sub has no offline events to time.  L{figures} picks
out what the comparison needs, L{summarize} takes the medians of the rounds
and the ratios presence/Redis; L{presence.bench.against_report} shows them.

The presence side is one of its paths (L{benches_for}): a single server over
lines, WebSocket or v0 (C{--transport}), or a cluster (C{--cluster N}): N
nodes and their own Redis, whose CPU and memory count as the system's, on
the same CPU as the yardstick's single redis-server.  The yardstick's users
then have the cluster's friend graph, all on the one Redis.
"""

from __future__ import annotations

import functools
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from presence.bench.cluster import ClusterBench
from presence.bench.redisload import RedisWorker
from presence.bench.runner import Bench, Options, ServerProcess, source_version
from presence.bench.wsbench import bench_for
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
    """The bench's run with redis-server as the server and Redis clients.

    C{nodes}: the friend graph of a cluster of that many nodes (its users
    all on this one Redis), for the comparison with C{--cluster N}.
    """

    worker_class = RedisWorker
    transport = "redis"

    def __init__(self, opts: Options, nodes: int = 1) -> None:
        super().__init__(opts)
        self.nodes = nodes

    def launch(self, limit: int) -> ServerProcess:
        launched = LaunchedRedis(self.opts.users + 200, self.server_cpus or None)
        launched.nofile = limit
        return launched

    def worker_config(self) -> dict[str, Any]:
        return {"nodes": self.nodes} if self.nodes > 1 else {}


def rate_key(rate: float | None) -> str:
    return "max" if rate is None else f"{rate:g}"


def figures(results: dict[str, Any]) -> dict[str, float | None]:
    """The comparison's figures of one round's bench results.

    Of a cluster (C{results["cluster"]}), CPU and memory are the whole
    system's, the nodes' and their Redis's together (C{system_*}); the
    nodes' own are kept as C{nodes_*}.  Over v0 CPU per delivery is the raw
    one, polls included, with its parts beside it (C{poll_cpu_us},
    C{events_cpu_us@}; L{presence.bench.v0bench}).
    """
    login = results.get("login") or {}
    system = "system_" if results.get("cluster") else ""
    # Over v0 every delivery takes a poll: its CPU counts them (v0bench).
    pull = (results.get("meta") or {}).get("transport") == "v0"
    rss = login.get(system + "rss_per_conn")
    out: dict[str, float | None] = {
        "rss_per_conn_kib": rss / 1024 if rss is not None else None,
    }
    if system and login.get("rss_per_conn") is not None:
        out["nodes_rss_per_conn_kib"] = login["rss_per_conn"] / 1024
    if pull:
        out["poll_cpu_us"] = (results.get("hold") or {}).get("cpu_us_per_poll")
    for phase in results.get("fanout") or []:
        at = rate_key(phase.get("rate"))
        latency = phase.get("latency") or {}
        out[f"cpu_us@{at}"] = phase.get(
            system + "cpu_us_per_delivery" + ("" if pull else "_net"))
        out[f"cpu_us_raw@{at}"] = phase.get(system + "cpu_us_per_delivery")
        if system:
            out[f"nodes_cpu_us@{at}"] = phase.get("cpu_us_per_delivery_net")
        if pull:
            out[f"events_cpu_us@{at}"] = phase.get("cpu_us_per_event_net")
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
        check = phase.get("exactly_once") or {}
        if check.get("lost") or check.get("duplicated"):
            out.append(f"{where}: {check.get('lost')} deliveries lost, "
                       f"{check.get('duplicated')} duplicated across the nodes")
        pairing = phase.get("v0_pairing") or {}
        if pairing.get("unexplained") or pairing.get("unpaired"):
            out.append(f"{where}: v0 latency pairing off ({pairing.get('unpaired')}"
                       f" unpaired, {pairing.get('unexplained')} unexplained)")
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


# What runs one round: a bench class, or any callable that makes one.
BenchMaker = Callable[[Options], Bench]
BENCHES: tuple[tuple[str, BenchMaker], ...] = (
    ("redis", RedisBench), ("presence", Bench))


def benches_for(transport: str, cluster: int = 0) -> tuple[tuple[str, BenchMaker],
                                                            ...]:
    """Redis and the presence path to compare: a single server over
    C{transport}, or C{cluster} nodes with their Redis (against one Redis
    with the same friend graph)."""
    if cluster:
        return (("redis", functools.partial(RedisBench, nodes=cluster)),
                ("presence", functools.partial(ClusterBench, nodes=cluster)))
    return (BENCHES[0], ("presence", bench_for(transport)))


def compare(
    opts: Options, rounds: int, log: Callable[[str], None] | None = None,
    benches: tuple[tuple[str, BenchMaker], ...] = BENCHES, cluster: int = 0,
) -> dict[str, Any]:
    """Run C{rounds} rounds of each of C{benches}, alternating, in order
    (C{cluster}: how many nodes the presence side has, for the record)."""
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
        "cluster": cluster,
        "rounds": rounds,
        "loadavg_start": list(os.getloadavg()),
    }
    if opts.transport == "v0":
        meta["v0_poll"] = opts.v0_poll
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
