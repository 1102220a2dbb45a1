"""End-to-end: ``presence-bench --quick``, alone and ``--against redis``, over
the line protocol and over WebSocket (``--transport websocket``).

CI runs these to keep the tool working.  They check that each run finishes,
prints its table and writes every figure; never how fast anything was.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from test_bench import bench_command

from presence.cluster.redisserver import missing_message, required


def run(tmp_path: Path, *options: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [*bench_command(), "--quick", "--no-progress", *options],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def test_quick(tmp_path: Path) -> None:
    """presence-bench --quick runs every phase on 200 users, prints the
    targets and phases, and writes a JSON with each phase's figures and a
    PNG plot."""
    out, plot = tmp_path / "quick.json", tmp_path / "quick.png"
    proc = run(tmp_path, "--out", str(out), "--plot", str(plot))
    assert "logins/s including snapshot" in proc.stdout
    assert "fan-out max" in proc.stdout
    results = json.loads(out.read_text())
    assert results["meta"]["users"] == 200 and results["meta"]["friends"] == 5
    assert results["login"]["complete"] == 200
    assert [p["rate"] for p in results["fanout"]] == [200, None]
    for phase in [*results["fanout"], results["churn"]]:
        assert phase["deliveries"] > 0, phase["label"]
        assert phase["cpu_us_per_delivery"] is not None, phase["label"]
        assert phase["latency"]["p99_ms"] is not None, phase["label"]
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_quick_websocket(tmp_path: Path) -> None:
    """presence-bench --quick --transport websocket starts the server with a
    WebSocket port, logs every user in over /ws, runs every phase with
    deliveries and latencies, and says so in its output and JSON."""
    out = tmp_path / "quick-ws.json"
    proc = run(tmp_path, "--transport", "websocket", "--out", str(out))
    assert "users over WebSocket tcp:127.0.0.1:" in proc.stdout
    results = json.loads(out.read_text())
    meta = results["meta"]
    assert meta["transport"] == "websocket"
    assert meta["server"]["websocket"].startswith("tcp:127.0.0.1:")
    assert any(a.startswith("--websocket") for a in meta["server"]["argv"])
    assert results["login"]["complete"] == 200
    assert results["login"]["rss_per_conn"] is not None
    assert [p["rate"] for p in results["fanout"]] == [200, None]
    for phase in [*results["fanout"], results["churn"]]:
        assert phase["deliveries"] > 0, phase["label"]
        assert phase["errors"] == 0, phase["label"]
        assert phase["cpu_us_per_delivery"] is not None, phase["label"]
        assert phase["latency"]["p99_ms"] is not None, phase["label"]
    for phase in results["fanout"]:
        assert phase["missing_deliveries"] == 0, phase["label"]


def test_quick_against_redis(tmp_path: Path) -> None:
    """presence-bench --against redis --quick runs one round on a
    redis-server it starts and one on presence, prints the comparison, and
    writes one JSON line per round and a summary line with every figure's
    medians and ratio, and a PNG plot of the ratios."""
    if shutil.which("redis-server") is None:
        if required():
            pytest.fail(missing_message() + " (CI=true: never skipped)")
        pytest.skip(missing_message())
    out, plot = tmp_path / "against.jsonl", tmp_path / "against.png"
    proc = run(tmp_path, "--against", "redis", "--out", str(out),
               "--plot", str(plot))
    assert "presence/redis" in proc.stdout
    assert "server CPU per delivery (net of idle), flat out" in proc.stdout
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(x["kind"], x.get("server")) for x in lines] == [
        ("round", "redis"), ("round", "presence"), ("summary", None)]
    for r in lines[:2]:
        assert r["results"]["login"]["complete"] == 200, r["server"]
        assert r["results"]["churn"] is None  # Redis has no offline events
    summary = lines[2]["summary"]
    for key in ("rss_per_conn_kib", "cpu_us@200", "cpu_us@max", "p50_ms@200",
                "p99_ms@200", "p99_ms@max", "deliveries_per_s@max"):
        assert summary[key]["ratio"] is not None, key
        assert len(summary[key]["redis"]) == len(summary[key]["presence"]) == 1
    assert lines[2]["meta"]["loadavg_start"]
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_quick_against_redis_websocket(tmp_path: Path) -> None:
    """presence-bench --against redis --quick --transport websocket runs the
    Redis round as ever and the presence round over WebSocket, and writes
    every figure's ratio."""
    if shutil.which("redis-server") is None:
        if required():
            pytest.fail(missing_message() + " (CI=true: never skipped)")
        pytest.skip(missing_message())
    out = tmp_path / "against-ws.jsonl"
    proc = run(tmp_path, "--against", "redis", "--transport", "websocket",
               "--out", str(out))
    assert "presence over websocket" in proc.stdout
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(x["kind"], x.get("server")) for x in lines] == [
        ("round", "redis"), ("round", "presence"), ("summary", None)]
    redis, presence = (r["results"] for r in lines[:2])
    assert presence["meta"]["transport"] == "websocket"
    assert "websocket" in presence["meta"]["server"]
    assert "websocket" not in redis["meta"]["server"]
    assert redis["meta"]["transport"] == "redis"
    assert presence["login"]["complete"] == redis["login"]["complete"] == 200
    assert lines[2]["meta"]["transport"] == "websocket"
    summary = lines[2]["summary"]
    for key in ("rss_per_conn_kib", "cpu_us@200", "cpu_us@max", "p50_ms@200",
                "p99_ms@200", "p99_ms@max", "deliveries_per_s@max"):
        assert summary[key]["ratio"] is not None, key


def test_quick_v0(tmp_path: Path) -> None:
    """presence-bench --quick --transport v0 logs every user in as a demo
    client (the server tells v0 by itself), runs every phase, and reports
    deliveries the clients pulled, none missing, with latencies paired to
    the changes that caused them."""
    out = tmp_path / "quick-v0.json"
    run(tmp_path, "--transport", "v0", "--out", str(out))
    results = json.loads(out.read_text())
    assert results["meta"]["transport"] == "v0"
    assert results["login"]["complete"] == 200
    assert results["login"]["errors"] == {}
    assert results["hold"]["pings_answered"] > 0  # polls answered with a pong
    for phase in results["fanout"]:
        assert phase["deliveries"] == phase["expected_deliveries"] > 0
        assert phase["errors"] == phase["lost_connections"] == 0, phase["label"]
        assert phase["cpu_us_per_delivery"] is not None, phase["label"]
        pairing = phase["v0_pairing"]
        assert phase["latency"]["count"] == phase["deliveries"], phase["label"]
        assert pairing["changes"] == phase["events_sent"], phase["label"]
        assert pairing["unpaired"] == pairing["unexplained"] == 0, phase["label"]
        assert phase["v0_poll"] == 1.0
    assert results["churn"]["deliveries"] > 0


def test_quick_against_redis_v0(tmp_path: Path) -> None:
    """presence-bench --against redis --quick --transport v0 runs the Redis
    round as ever and the presence round with demo clients, writes every
    figure's ratio, and marks the ratios the polls decide in the table and
    the plot."""
    if shutil.which("redis-server") is None:
        if required():
            pytest.fail(missing_message() + " (CI=true: never skipped)")
        pytest.skip(missing_message())
    out, plot = tmp_path / "against-v0.jsonl", tmp_path / "against-v0.png"
    proc = run(tmp_path, "--against", "redis", "--transport", "v0",
               "--out", str(out), "--plot", str(plot))
    assert "presence over v0 (a poll every 1 s)" in proc.stdout
    assert "x (poll)" in proc.stdout
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(x["kind"], x.get("server")) for x in lines] == [
        ("round", "redis"), ("round", "presence"), ("summary", None)]
    redis, presence = (r["results"] for r in lines[:2])
    assert (redis["meta"]["transport"], presence["meta"]["transport"]) == (
        "redis", "v0")
    assert presence["login"]["complete"] == redis["login"]["complete"] == 200
    for phase in presence["fanout"]:
        assert phase["missing_deliveries"] == 0, phase["label"]
    assert lines[2]["meta"]["v0_poll"] == 1.0
    summary = lines[2]["summary"]
    for key in ("rss_per_conn_kib", "cpu_us@200", "cpu_us@max", "p99_ms@200",
                "deliveries_per_s@max"):
        assert summary[key]["ratio"] is not None, key
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
