"""End-to-end: ``presence-bench`` starts a server, runs every phase, writes results.

Tiny numbers and no timing thresholds: this checks that the tool works and
that its JSON holds every figure, not how fast anything is.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path


def bench_command() -> list[str]:
    found = shutil.which("presence-bench", path=os.path.dirname(sys.executable))
    return [found] if found else [sys.executable, "-m", "presence.bench.cli"]


def test_bench_end_to_end(tmp_path: Path) -> None:
    """A tiny presence-bench run starts its server, runs every phase (login,
    hold, fan-out at two rates, churn) without losing a delivery, and writes a
    JSON with every figure and target, and a PNG plot."""
    out = tmp_path / "results.json"
    plot = tmp_path / "bench.png"
    cmd = [
        *bench_command(),
        "--users", "20", "--friends", "3", "--seed", "7",
        "--hold", "1",
        "--rates", "20,max", "--phase-seconds", "1",
        "--churn-rate", "5", "--churn-seconds", "1", "--churn-delay", "0.2",
        "--drain-timeout", "5",
        "--server-log", str(tmp_path / "server.log"),
        "--out", str(out), "--plot", str(plot), "--no-progress",
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True,
                          timeout=50)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "logins/s including snapshot" in proc.stdout

    results = json.loads(out.read_text())
    assert plot.stat().st_size > 1000
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    meta = results["meta"]
    assert meta["users"] == 20 and meta["friends"] == 3
    assert meta["server"]["pid"]

    login = results["login"]
    assert login["complete"] == 20
    for key in ("logins_per_s", "seconds", "rss_before", "rss_after",
                "rss_per_conn", "server_cpu_s"):
        assert login[key] is not None, key
    assert login["rss_samples"]

    hold = results["hold"]
    assert hold["connections"] == 20
    for key in ("server_cpu_fraction", "rss", "rss_per_conn", "pings_answered"):
        assert hold[key] is not None, key

    fanout = results["fanout"]
    assert [p["rate"] for p in fanout] == [20, None]
    for phase in fanout:
        assert phase["deliveries"] > 0
        assert phase["missing_deliveries"] == 0
        for key in ("deliveries_per_s", "cpu_us_per_delivery",
                    "cpu_us_per_delivery_net", "server_cpu_s"):
            assert phase[key] is not None, (phase["label"], key)
        for key in ("p50_ms", "p99_ms", "max_ms"):
            assert phase["latency"][key] is not None, (phase["label"], key)
        assert "saturated" in phase["loadgen"]

    churn = results["churn"]
    assert churn["events_sent"] > 0 and churn["deliveries"] > 0
    for key in ("deliveries_per_s", "cpu_us_per_delivery", "server_cpu_s"):
        assert churn[key] is not None, key
    for key in ("latency", "offline_latency", "relogin"):
        assert churn[key]["p99_ms"] is not None, key

    names = {t["key"] for t in results["targets"]}
    assert names == {"connections", "rss_per_conn", "idle_cpu", "cpu_per_delivery",
                     "p99_at_40k", "logins_per_s"}
    for t in results["targets"]:
        assert t["value"] is not None, t["key"]


def test_without_bench_extra() -> None:
    """Without the bench extra, presence-bench says what to install, no traceback."""
    code = (
        "import sys; sys.modules['psutil'] = None; "
        "from presence.bench.cli import main; main(['--users', '10'])"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1
    assert "pip install 'presence[bench]'" in done.stderr
    assert "Traceback" not in done.stderr


def test_idle_target_follows_the_heartbeat() -> None:
    """The idle CPU target is 3% of a core with the app heartbeat and 0.5%
    with --heartbeat tcp, read from the options the bench gave the server."""
    from presence.bench.report import targets
    from presence.bench.runner import heartbeat_of

    assert heartbeat_of([]) == "app"
    assert heartbeat_of(["--max-friends=9", "--heartbeat=tcp"]) == "tcp"
    assert heartbeat_of(["--heartbeat", "tcp"]) == "tcp"
    for heartbeat, target in (("app", 3.0), ("tcp", 0.5), (None, 3.0)):
        results = {"meta": {"users": 19000, "friends": 20, "timeout": 15,
                            "heartbeat": heartbeat},
                   "hold": {"connections": 19000, "seconds": 30,
                            "server_cpu_fraction": 0.01}}
        (idle,) = [t for t in targets(results) if t["key"] == "idle_cpu"]
        assert idle["target"] == target, heartbeat
        assert idle["met"] is (1.0 <= target), heartbeat
