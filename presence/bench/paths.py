"""Every path against Redis: one table and one plot of several comparisons.

    python -m presence.bench.paths docs/against-redis/2000x20.jsonl \\
        docs/against-redis/2000x20-websocket.jsonl ... --plot paths.png

Each file is what C{presence-bench --against redis --out FILE} wrote (TCP
lines, C{--transport websocket}, C{--transport v0}, C{--cluster N}); its last
line holds the medians and ratios.  This prints one row per file (the
docs/performance.rst table, "Every path against Redis") and draws every
ratio on one plot.  It measures nothing itself.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, TextIO

from presence.bench.against_report import (
    PULL_BOUND,
    label_ratio,
    ratio_axis,
    ratio_text,
)

# key prefix, column heading (two lines), whether it is paced (else flat out)
COLUMNS = (
    ("rss_per_conn_kib", ("RSS/conn", ""), None),
    ("cpu_us", ("CPU/deliv", "paced"), True),
    ("cpu_us", ("CPU/deliv", "flat out"), False),
    ("p99_ms", ("p99", "paced"), True),
    ("deliveries_per_s", ("flat-out", "deliv/s"), False),
)


def load(path: Path) -> dict[str, Any]:
    """The summary line of a comparison's JSON lines."""
    lines = path.read_text().splitlines()
    summary = json.loads(lines[-1])
    if summary.get("kind") != "summary":
        raise ValueError(f"{path}: the last line is not a summary")
    summary["path"] = str(path)
    return summary


def path_label(meta: dict[str, Any]) -> str:
    if meta.get("cluster"):
        return f"cluster, {meta['cluster']} nodes"
    transport = meta.get("transport") or "lines"  # older files have none
    return {"lines": "TCP lines", "websocket": "WebSocket",
            "v0": "v0"}.get(transport, transport)


def cells(summary: dict[str, Any]) -> list[tuple[float | None, bool]]:
    """Each column's ratio and whether it compares like with like."""
    meta, figures = summary["meta"], summary["summary"]
    paced = next((r for r in meta["rates"] if r != "max"), None)
    pull = meta.get("transport") == "v0" and not meta.get("cluster")
    out: list[tuple[float | None, bool]] = []
    for key, _, is_paced in COLUMNS:
        if is_paced is not None:
            key = f"{key}@{paced if is_paced else 'max'}"
        entry = figures.get(key) or {}
        metric = key.split("@")[0]
        out.append((entry.get("ratio"), not (pull and metric in PULL_BOUND)))
    return out


def print_table(summaries: list[dict[str, Any]], out: TextIO) -> None:
    """The RST table of docs/performance.rst: a row per path."""
    labels = [f"{path_label(s['meta'])} (``{s['meta'].get('source')}``)"
              for s in summaries]
    rows = [[ratio_text(r) + ("" if ok else " (p)") if r is not None else "\\-"
             for r, ok in cells(s)] for s in summaries]
    head = [["path", *(c[1][0] for c in COLUMNS)], ["", *(c[1][1] for c in COLUMNS)]]
    widths = [max(len(x) for x in col)
              for col in zip(*head, *([lbl, *r] for lbl, r in
                                      zip(labels, rows, strict=True)), strict=True)]

    def line(items: list[str]) -> str:
        padded = (i.ljust(w) for i, w in zip(items, widths, strict=True))
        return "  ".join(padded).rstrip()

    rule = "  ".join("=" * w for w in widths)
    out.write("\n".join([rule, *(line(h) for h in head), rule,
                         *(line([lbl, *r]) for lbl, r in
                           zip(labels, rows, strict=True)), rule]) + "\n")
    if any(not ok for s in summaries for _, ok in cells(s)):
        out.write("\n(p): set by the clients' polls, not comparable with push\n")


def plot(summaries: list[dict[str, Any]], path: Path) -> None:
    """One group of bars per figure, one bar per path (log scale around
    1.0x, the same as Redis); hatched where the ratio does not compare."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(summaries)
    height = 0.8 / max(1, n)
    colors = ["tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown"]
    fig, ax = plt.subplots(figsize=(9, 0.3 * n * len(COLUMNS) + 1.8))
    shown: list[float] = []
    for i, summary in enumerate(summaries):
        label: str | None = path_label(summary["meta"])  # on its first bar
        for j, (ratio, ok) in enumerate(cells(summary)):
            if not ratio:
                continue
            y = j + (i - (n - 1) / 2) * height
            ax.barh(y, ratio - 1.0, left=1.0, height=height * 0.9,
                    color=colors[i % len(colors)], hatch=None if ok else "//",
                    alpha=1.0 if ok else 0.45, label=label)
            label = None
            label_ratio(ax, ratio, y, fontsize=7)
            shown.append(ratio)
    ax.set_yticks(range(len(COLUMNS)), [" ".join(c[1]).strip() for c in COLUMNS],
                  fontsize=8)
    ax.invert_yaxis()
    ratio_axis(ax, shown, margin=2.5)
    ax.set_xlabel("presence / Redis pub/sub, medians of the rounds "
                  "(hatched: set by v0's polls, not comparable)")
    first = summaries[0]["meta"] if summaries else {}
    ax.set_title(f"every path against Redis: {first.get('users')} users x "
                 f"{first.get('friends')} friends", fontsize=9)
    ax.legend(fontsize=8, loc="best")
    ax.grid(True, axis="x", which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m presence.bench.paths",
                                description=__doc__.split("\n")[0])
    p.add_argument("files", nargs="+", type=Path,
                   help="JSON lines of presence-bench --against redis --out")
    p.add_argument("--plot", type=Path, default=None, help="write the PNG here")
    args = p.parse_args(argv)
    summaries = [load(f) for f in args.files]
    print_table(summaries, sys.stdout)
    if args.plot:
        plot(summaries, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
