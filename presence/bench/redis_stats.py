"""What Redis did during a phase of C{presence-bench --cluster}, per change.

Redis's CPU per change (from /proc) says how much, not where.  Its own
counters say where: C{INFO commandstats} (calls and microseconds of each
command; a script's microseconds include the commands it runs, which are
counted again under their own names), C{INFO stats} (reads and writes on
client sockets, bytes in and out) and C{INFO cpu} (user and system time).
Those counts are deterministic for a given run of changes, unlike the CPU
time on a shared box, so they are what A/B comparisons of the bus use.
"""

from __future__ import annotations

from typing import Any, Protocol

# Counters of INFO stats kept per change: the socket reads and writes Redis
# made (each one a system call, and each write on loopback also the
# receiver's TCP work, charged to Redis), and the bytes it moved.
STATS = ("total_reads_processed", "total_writes_processed",
         "total_net_input_bytes", "total_net_output_bytes")
CPU = ("used_cpu_user", "used_cpu_sys")


class InfoSource(Protocol):
    def info(self, section: str) -> dict[str, str]: ...


Snapshot = dict[str, Any]


def snapshot(redis: InfoSource) -> Snapshot:
    """Redis's counters now: {"commands": {name: (calls, usec)}, "stats":
    {counter: value}}."""
    commands: dict[str, tuple[int, int]] = {}
    for key, value in redis.info("commandstats").items():
        if not key.startswith("cmdstat_"):
            continue
        fields = dict(f.split("=", 1) for f in value.split(",") if "=" in f)
        commands[key[len("cmdstat_"):]] = (int(fields.get("calls", 0)),
                                          int(fields.get("usec", 0)))
    stats: dict[str, float] = {}
    for section, names in (("stats", STATS), ("cpu", CPU)):
        info = redis.info(section)
        for name in names:
            if name in info:
                stats[name] = float(info[name])
    return {"commands": commands, "stats": stats}


def breakdown(before: Snapshot, after: Snapshot, changes: int) -> dict[str, Any]:
    """What Redis did between two snapshots, per change: each command's
    calls and microseconds (busiest first), the socket reads and writes,
    bytes, and user and system CPU in microseconds."""
    n = max(1, changes)
    commands: dict[str, dict[str, float]] = {}
    old = before["commands"]
    for name, (calls, usec) in after["commands"].items():
        c0, u0 = old.get(name, (0, 0))
        if calls > c0:
            commands[name] = {"calls": calls - c0,
                              "calls_per_change": (calls - c0) / n,
                              "us_per_change": (usec - u0) / n}
    ordered = dict(sorted(commands.items(),
                          key=lambda kv: (-kv[1]["us_per_change"], kv[0])))
    per_change: dict[str, float] = {}
    for name in (*STATS, *CPU):
        if name in after["stats"] and name in before["stats"]:
            delta = after["stats"][name] - before["stats"][name]
            if name in CPU:
                delta *= 1e6  # seconds -> microseconds
            per_change[name] = delta / n
    return {"changes": changes, "commands": ordered, "per_change": per_change}
