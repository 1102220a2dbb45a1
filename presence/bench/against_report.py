"""C{presence-bench --against redis}: the table, the JSON lines, the plot."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, TextIO

from presence.bench.against_redis import (
    METRICS,
    TARGET_CPU_RATIO,
    benches_for,
    compare,
)
from presence.bench.report import _fmt, _table
from presence.bench.runner import Options
from presence.cluster.redisserver import RedisMissing

# Over v0 the clients pull, one event per poll: how long an event waits and
# how many arrive per second are set by the polls, not by the server.
PULL_BOUND = ("p50_ms", "p99_ms", "deliveries_per_s")


def rows(comparison: dict[str, Any]) -> list[dict[str, Any]]:
    """The figures to show, in order: name, unit, summary entry, target, and
    whether the ratio compares like with like (C{comparable})."""
    summary = comparison["summary"]
    meta = comparison["meta"]
    pull = meta.get("transport") == "v0" and not meta.get("cluster")
    out: list[dict[str, Any]] = []
    if "rss_per_conn_kib" in summary:
        out.append({"key": "rss_per_conn_kib", "name": "RSS per connection",
                    "unit": "KiB", "target": None, "comparable": True})
    for at in meta["rates"]:
        where = "flat out" if at == "max" else f"paced {at}/s"
        for metric, name, unit in METRICS:
            key = f"{metric}@{at}"
            if key not in summary:
                continue
            if metric == "deliveries_per_s" and at != "max":
                continue  # paced, it is the rate both were given
            if metric == "cpu_us" and meta.get("cluster"):
                name = "system CPU per delivery (nodes + Redis, net of idle)"
            elif metric == "cpu_us" and pull:
                name = "server CPU per delivery (its poll included)"
            out.append({"key": key, "name": f"{name}, {where}", "unit": unit,
                        "target": TARGET_CPU_RATIO if metric == "cpu_us" else None,
                        "comparable": not (pull and metric in PULL_BOUND)})
    for row in out:
        row.update(summary[row["key"]])
        if row["key"].startswith("others@"):
            row["ratio"] = None  # the machine's load, not a server's figure
        ratio, target = row["ratio"], row["target"]
        row["met"] = None if target is None or ratio is None else ratio <= target
    return out


def ratio_text(ratio: float) -> str:
    return f"{ratio:.2f}x" if ratio >= 0.1 else f"{ratio:.2g}x"


def _values(values: list[float | None]) -> str:
    return " ".join(_fmt(v, 1) for v in values)


def path_name(meta: dict[str, Any]) -> str:
    """Which presence path the comparison ran, in words."""
    if meta.get("cluster"):
        return f"presence as {meta['cluster']} nodes and their Redis"
    transport = meta.get("transport", "lines")
    if transport == "v0":
        return f"presence over v0 (a poll every {meta.get('v0_poll', 1.0):g} s)"
    return f"presence over {transport}"


def print_comparison(comparison: dict[str, Any], out: TextIO) -> None:
    meta = comparison["meta"]
    out.write(
        f"\npresence-bench --against redis {meta['date']}: {meta['users']} users, "
        f"{meta['friends']} friends each (seed {meta['seed']}), {meta['rounds']} "
        f"round(s) each, alternating; {path_name(meta)}; "
        f"code {meta['source']}; load average "
        f"{meta['loadavg_start'][0]:.2f} at start, {meta['loadavg_end'][0]:.2f} "
        "at end\n\n"
    )
    table = [["figure", "redis rounds", "presence rounds", "redis", "presence",
              "presence/redis", "target"]]
    verdict = {True: "ok", False: "MISSED", None: ""}
    for row in rows(comparison):
        target = ""
        if row["target"] is not None:
            target = f"<= {row['target']:.2f}x {verdict[row['met']]}"
        table.append([
            f"{row['name']} ({row['unit']})",
            _values(row["redis"]), _values(row["presence"]),
            _fmt(row["redis_median"]), _fmt(row["presence_median"]),
            (ratio_text(row["ratio"]) + ("" if row["comparable"] else " (poll)"))
            if row["ratio"] is not None else "-",
            target,
        ])
    _table(table, out)
    out.write("\nmedians of the rounds; CPU is the server process's (/proc), "
              "minus its idle rate\n")
    if meta.get("cluster"):
        out.write("presence's CPU and RSS are its nodes' and its Redis's together; "
                  "its latency is from one node to another\n")
    if meta.get("transport") == "v0":
        summary = comparison["summary"]
        parts = [f"{_fmt((summary.get('poll_cpu_us') or {}).get('presence_median'))}"
                 " us per poll (idle)"]
        for at in meta["rates"]:
            entry = summary.get(f"events_cpu_us@{at}") or {}
            parts.append(f"{_fmt(entry.get('presence_median'))} us per event "
                         f"queued at {at} (net of the polls, while sending)")
        out.write("v0: a delivery is an event a client pulled; CPU runs until the "
                  "queues drained, polls included; (poll): set by the clients' "
                  "polls, not comparable with push\n"
                  "v0 CPU in parts: " + "; ".join(parts) + "\n")
    for note in comparison["notes"]:
        out.write(f"note: {note}\n")


def write_jsonl(comparison: dict[str, Any], path: Path) -> None:
    """One line per round (its figures and whole bench results), then one
    line with the medians and ratios."""
    with path.open("w") as f:
        for r in comparison["rounds"]:
            f.write(json.dumps({"kind": "round", **r}) + "\n")
        f.write(json.dumps({"kind": "summary", "meta": comparison["meta"],
                            "summary": comparison["summary"],
                            "notes": comparison["notes"]}) + "\n")


def label_ratio(ax: Any, ratio: float, y: float, fontsize: int) -> None:
    """C{ratio}'s text beside the end of its bar (a bar grows from 1.0)."""
    ax.annotate(ratio_text(ratio), (ratio, y), va="center", fontsize=fontsize,
                textcoords="offset points",
                xytext=(3, 0) if ratio >= 1 else (-3, 0),
                ha="left" if ratio >= 1 else "right")


def ratio_axis(ax: Any, ratios: list[float], margin: float) -> None:
    """The x axis of ratios: log scale around 1.0x (marked), C{margin}
    times beyond the smallest and largest ratio."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    ax.set_xscale("log")
    low, high = min([*ratios, 1.0]), max([*ratios, 1.0])
    ax.set_xlim(low / margin, high * margin)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.axvline(1.0, color="black", linewidth=1)


def plot_ratios(comparison: dict[str, Any], path: Path) -> None:
    """A bar per figure: presence's median over Redis's (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [r for r in rows(comparison) if r["ratio"]]
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(shown) + 1.6))
    names = [r["name"] + ("" if r["comparable"] else "\n(set by the polls: "
                          "not comparable)") for r in shown]
    ratios = [r["ratio"] for r in shown]

    def color(row: dict[str, Any]) -> str:
        if not row["comparable"]:
            return "lightgray"
        return "tab:red" if row["met"] is False else "tab:blue"

    # Bars grow from 1.0 (the same as Redis), left when presence is lower.
    ax.barh(range(len(shown)), [r - 1.0 for r in ratios], left=1.0,
            color=[color(r) for r in shown])
    for y, ratio in enumerate(ratios):
        label_ratio(ax, ratio, y, fontsize=8)
    ax.set_yticks(range(len(shown)), names, fontsize=8)
    ax.invert_yaxis()
    ratio_axis(ax, ratios, margin=1.6)
    ax.set_xlabel("presence / Redis, medians of the rounds")
    meta = comparison["meta"]
    ax.set_title(f"{path_name(meta)} against Redis pub/sub: {meta['users']} users x "
                 f"{meta['friends']} friends, {meta['rounds']} rounds each\n"
                 f"{meta['date']}, load average {meta['loadavg_start'][0]:.1f}",
                 fontsize=9)
    ax.grid(True, axis="x", which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run_against(
    opts: Options, rounds: int, out: Path | None, plot: Path | None,
    cluster: int = 0,
) -> int:
    """C{presence-bench --against redis}: run, print, write; the exit code."""
    try:
        benches = benches_for(opts.transport, cluster)
        comparison = compare(opts, rounds, benches=benches, cluster=cluster)
    except RedisMissing as e:
        raise SystemExit(f"presence-bench: {e}") from None
    print_comparison(comparison, sys.stdout)
    if out:
        write_jsonl(comparison, out)
    if plot:
        plot_ratios(comparison, plot)
    return 0
