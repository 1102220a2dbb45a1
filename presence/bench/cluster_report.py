"""C{presence-bench --cluster N}: its targets and its part of the report."""

from __future__ import annotations

from typing import Any, TextIO

from presence.bench.report import _fmt, _get, _table, p99_phase

TARGET_NODES = 2
TARGET_USERS = 18_000  # 2 nodes x 9,000 users ...
TARGET_FRIENDS = 20  # ... with 20 friends each
TARGET_RATE = 20_000.0  # deliveries per second, at which ...
TARGET_P99_MS = 5.0  # ... p99 cross-node latency must be this or less
TARGET_REDIS_US = 30.0  # Redis CPU per presence change


def _lost(results: dict[str, Any]) -> tuple[int | None, int | None]:
    """Deliveries lost and duplicated over every fan-out phase."""
    checks = [p.get("exactly_once") for p in results.get("fanout") or []]
    if not checks or any(c is None for c in checks):
        return None, None
    return (sum(c["lost"] for c in checks), sum(c["duplicated"] for c in checks))


def cluster_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target of cluster mode: measured value, target, whether met."""
    meta = results.get("meta", {})
    nodes = len(_get(results, "cluster", "nodes") or [])
    users, friends = meta.get("users", 0), meta.get("friends", 0)
    shape = nodes == TARGET_NODES and users >= TARGET_USERS and (
        friends == TARGET_FRIENDS)
    out: list[dict[str, Any]] = []

    def add(name: str, value: float | None, unit: str, target: float, op: str,
            note: str, applies: bool = True) -> None:
        met: bool | None = None
        if value is not None and applies:
            met = value <= target if op == "<=" else value >= target
        out.append({"key": name, "name": name, "value": value, "unit": unit,
                    "target": target, "op": op, "met": met, "note": note})

    login = results.get("login") or {}
    add(f"users logged in on {nodes} nodes", login.get("complete"), "",
        TARGET_USERS, ">=", f"target: {TARGET_NODES} nodes x 9,000 users, "
        f"{TARGET_FRIENDS} friends; ran {nodes} x {users // max(1, nodes):,}, "
        f"{friends} friends", shape)
    phase, reached = p99_phase(results, TARGET_RATE)
    note = "no paced phase"
    if phase:
        note = (f"at {phase['rate']:g} changes/s = "
                f"{phase['deliveries_per_s']:,.0f} deliveries/s")
        if not reached:
            note += f"; {TARGET_RATE:,.0f}/s NOT reached"
    add(f"p99 cross-node latency at {TARGET_RATE:,.0f} deliveries/s",
        _get(phase, "latency", "p99_ms"), "ms", TARGET_P99_MS, "<=", note, reached)
    add("Redis CPU per presence change", _get(phase, "redis_cpu_us_per_change"),
        "us", TARGET_REDIS_US, "<=",
        f"{note}; net of idle "
        f"{_fmt(_get(phase, 'redis_cpu_us_per_change_net'))} us")
    lost, duplicated = _lost(results)
    add("deliveries lost or duplicated",
        None if lost is None else (lost or 0) + (duplicated or 0), "", 0, "<=",
        f"lost {_fmt(lost)}, duplicated {_fmt(duplicated)}, every fan-out phase")
    return out


def _raw_net(phase: dict[str, Any], key: str) -> str:
    return f"{_fmt(phase.get(key))} ({_fmt(phase.get(key + '_net'))})"


def print_cluster(results: dict[str, Any], out: TextIO) -> None:
    """The cluster's own figures, after the single-server report."""
    cluster = results.get("cluster") or {}
    nodes = cluster.get("nodes") or []
    redis = cluster.get("redis") or {}
    out.write(
        f"\ncluster: {len(nodes)} nodes ("
        + ", ".join(n["address"] for n in nodes)
        + f"), redis-server {redis.get('version')} (pid {redis.get('pid')}, "
        f"{'Unix socket' if str(redis.get('url', '')).startswith('unix:') else 'TCP'}"
        "); user"
        f" u on node u % {len(nodes)}; cross-node friend edges "
        f"{(cluster.get('cross_node_edges') or 0) * 100:.1f}%\n\n"
    )
    rows = [["phase", "changes/s", "deliveries/s", "cross p50 ms", "cross p99 ms",
             "nodes cpu us/deliv (net)", "redis cpu us/change (net)",
             "node cores", "redis cores", "lost", "duplicated"]]
    for p in results.get("fanout") or []:
        check = p.get("exactly_once") or {}
        rows.append([
            p["label"], _fmt(p.get("events_per_s")), _fmt(p.get("deliveries_per_s")),
            _fmt(_get(p, "latency", "p50_ms")), _fmt(_get(p, "latency", "p99_ms")),
            _raw_net(p, "cpu_us_per_delivery"), _raw_net(p, "redis_cpu_us_per_change"),
            "/".join(f"{c:.2f}" for c in p.get("node_cpu_fraction") or []),
            _fmt(_get(p, "loadgen", "redis_cpu_cores")),
            _fmt(check.get("lost")), _fmt(check.get("duplicated")),
        ])
    _table(rows, out)
    login = results.get("login") or {}
    hold = results.get("hold") or {}
    out.write(
        f"\nlogins with snapshot: {_fmt(login.get('logins_per_s'))}/s over all "
        f"nodes; nodes CPU {_fmt(login.get('server_cpu_us_per_login'))} us/login, "
        f"Redis CPU {_fmt(login.get('redis_cpu_us_per_login'))} us/login\n"
        f"Redis memory: {_fmt(login.get('redis_bytes_per_user'), 0)} bytes/user "
        f"(used_memory {_fmt(login.get('redis_memory_before'))} -> "
        f"{_fmt(login.get('redis_memory_after'))} over the login)\n"
        f"idle: nodes {_fmt((hold.get('server_cpu_fraction') or 0) * 100, 1)}% of a "
        f"core together, Redis {_fmt((hold.get('redis_cpu_fraction') or 0) * 100, 1)}%"
        "\n"
    )
    for p in results.get("fanout") or []:
        if p.get("redis_commands"):
            print_commands(p["label"], p["redis_commands"], out)


def print_commands(label: str, stats: dict[str, Any], out: TextIO) -> None:
    """The Redis command breakdown of one phase: per change, each command's
    calls and microseconds (INFO commandstats), then the socket reads and
    writes, bytes and CPU (INFO stats, INFO cpu)."""
    out.write(f"\nRedis command breakdown, {label} "
              f"({stats.get('changes', 0):,} changes), per change:\n")
    rows = [["command", "calls", "us"]]
    for name, c in (stats.get("commands") or {}).items():
        rows.append([name, f"{c['calls_per_change']:.3f}",
                     f"{c['us_per_change']:.2f}"])
    _table(rows, out)
    pc = stats.get("per_change") or {}
    reads = pc.get("total_reads_processed")
    if reads:
        # Each read is a wakeup of Redis: what a change costs it most when
        # changes come one at a time (docs/cluster.rst, "Redis CPU per change").
        out.write(f"changes per Redis wakeup: {1 / reads:.2f}\n")
    out.write(
        f"socket reads {_fmt(pc.get('total_reads_processed'))}, writes "
        f"{_fmt(pc.get('total_writes_processed'))}; bytes in "
        f"{_fmt(pc.get('total_net_input_bytes'), 0)}, out "
        f"{_fmt(pc.get('total_net_output_bytes'), 0)}; CPU user "
        f"{_fmt(pc.get('used_cpu_user'), 1)} us, system "
        f"{_fmt(pc.get('used_cpu_sys'), 1)} us (scripts' own commands are "
        "counted again under their names)\n"
    )
