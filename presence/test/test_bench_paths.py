"""python -m presence.bench.paths: every comparison's ratios in one table
and one plot, from the files presence-bench --against redis --out wrote."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from presence.bench.paths import cells, load, main, path_label, print_table


def summary(ratio: float, **meta: Any) -> dict[str, Any]:
    figures = {key: {"ratio": ratio} for key in (
        "rss_per_conn_kib", "cpu_us@2000", "cpu_us@max", "p99_ms@2000",
        "deliveries_per_s@max")}
    return {"kind": "summary", "summary": figures,
            "meta": {"rates": ["2000", "max"], "source": "abc", "users": 2000,
                     "friends": 20, **meta}}


class PathsTests(SynchronousTestCase):
    def test_labels(self) -> None:
        """Each comparison is named by its path; a file from before the
        transport was recorded is TCP lines."""
        self.assertEqual(path_label({}), "TCP lines")
        self.assertEqual(path_label({"transport": "websocket"}), "WebSocket")
        self.assertEqual(path_label({"transport": "v0"}), "v0")
        self.assertEqual(path_label({"transport": "lines", "cluster": 2}),
                         "cluster, 2 nodes")

    def test_cells(self) -> None:
        """A row's cells are RSS, CPU paced and flat out, p99 paced and the
        flat-out rate; over v0 the last two do not compare."""
        self.assertEqual(cells(summary(1.5)), [(1.5, True)] * 5)
        self.assertEqual([ok for _, ok in cells(summary(2.0, transport="v0"))],
                         [True, True, True, False, False])
        partial = summary(1.0)
        del partial["summary"]["p99_ms@2000"]
        self.assertEqual(cells(partial)[3], (None, True))

    def test_table(self) -> None:
        """The table is RST with a row per comparison, its commit, its
        ratios, the v0 ones the polls set marked (p) and explained."""
        out = io.StringIO()
        print_table([summary(1.25), summary(0.05, transport="v0")], out)
        text = out.getvalue()
        self.assertIn("TCP lines (``abc``)  1.25x", text)
        self.assertIn("0.05x (p)", text)
        self.assertIn("(p): set by the clients' polls", text)
        self.assertEqual(text.splitlines()[0], text.splitlines()[3])

    def test_files_and_plot(self) -> None:
        """main reads each file's last line, prints the table and writes the
        plot; a file whose last line is not a summary is refused."""
        tmp = Path(self.mktemp())
        tmp.mkdir()
        good = tmp / "a.jsonl"
        good.write_text('{"kind": "round"}\n' + json.dumps(summary(2.0)) + "\n")
        bad = tmp / "b.jsonl"
        bad.write_text('{"kind": "round"}\n')
        self.assertEqual(load(good)["summary"]["cpu_us@max"]["ratio"], 2.0)
        self.assertRaises(ValueError, load, bad)
        png = tmp / "paths.png"
        printed = io.StringIO()
        self.patch(sys, "stdout", printed)
        self.assertEqual(main([str(good), "--plot", str(png)]), 0)
        self.assertIn("2.00x", printed.getvalue())
        self.assertEqual(png.read_bytes()[:8], b"\x89PNG\r\n\x1a\n")
