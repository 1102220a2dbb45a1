"""End-to-end: ``presence-bench --cluster 2`` starts a redis-server and two
nodes, runs its phases, and counts every change's deliveries.

Tiny numbers and no timing thresholds: this checks that the mode works, that
nothing is lost or told twice across the nodes, and that the JSON and the
report hold every cluster figure, not how fast anything is.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from redisfixtures import require_redis
from test_bench import bench_command


def test_bench_cluster_end_to_end(tmp_path: Path) -> None:
    """A tiny two-node run logs every user in, spreads them over both nodes
    with nearly every friend on the other one, loses and duplicates no
    delivery, and reports cross-node latency, the nodes' and Redis's CPU,
    Redis's memory per user, logins per second and Redis's command breakdown
    (one PUBLISH per change)."""
    require_redis()
    out = tmp_path / "results.json"
    cmd = [
        *bench_command(), "--cluster", "2",
        "--users", "200", "--friends", "5", "--seed", "3",
        "--hold", "1", "--rates", "100", "--phase-seconds", "2",
        "--churn-seconds", "0", "--drain-timeout", "20",
        "--server-log", str(tmp_path / "node.log"),
        "--out", str(out), "--no-progress",
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for text in ("cross-node friend edges", "deliveries lost or duplicated",
                 "logins with snapshot", "Redis memory",
                 "Redis command breakdown"):
        assert text in proc.stdout, text

    results = json.loads(out.read_text())
    cluster = results["cluster"]
    assert len(cluster["nodes"]) == 2
    assert len({n["pid"] for n in cluster["nodes"]}) == 2
    assert cluster["redis"]["pid"]
    assert cluster["cross_node_edges"] > 0.9
    assert (tmp_path / "node.log.0").exists() and (tmp_path / "node.log.1").exists()

    login = results["login"]
    assert login["complete"] == 200
    for key in ("logins_per_s", "redis_bytes_per_user", "redis_cpu_us_per_login",
                "server_cpu_us_per_login"):
        assert login[key] is not None, key

    [phase] = results["fanout"]
    check = phase["exactly_once"]
    assert check["changes_seen"] == phase["events_sent"] > 0
    assert (check["lost"], check["duplicated"]) == (0, 0)
    assert phase["missing_deliveries"] == 0
    assert phase["deliveries"] == phase["expected_deliveries"]
    assert phase["latency"]["count"] > 0
    for key in ("p50_ms", "p99_ms"):
        assert phase["latency"][key] is not None, key
    for key in ("cpu_us_per_delivery_net", "redis_cpu_us_per_change",
                "redis_cpu_us_per_change_net"):
        assert phase[key] is not None, key

    # Every change is one script call or part of one; the calls are counted
    # by Redis (INFO commandstats), not timed.
    commands = phase["redis_commands"]["commands"]
    assert commands["evalsha"]["calls"] >= 1
    assert commands["publish"]["calls"] == phase["events_sent"]
    assert phase["redis_commands"]["per_change"]["total_reads_processed"] > 0

    names = {t["name"] for t in results["targets"]}
    assert "deliveries lost or duplicated" in names
    assert "Redis CPU per presence change" in names


def test_bench_cluster_against_redis(tmp_path: Path) -> None:
    """presence-bench --cluster 2 --against redis --quick runs one round on a
    single redis-server whose users have the cluster's friend graph and one
    on two nodes with their Redis, and writes the ratios of the whole
    system's figures (nodes and Redis together), the nodes' own beside them,
    and a plot."""
    require_redis()
    out, plot = tmp_path / "against.jsonl", tmp_path / "against.png"
    cmd = [*bench_command(), "--cluster", "2", "--against", "redis", "--quick",
           "--out", str(out), "--plot", str(plot), "--no-progress"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "presence as 2 nodes and their Redis" in proc.stdout
    assert "system CPU per delivery (nodes + Redis, net of idle)" in proc.stdout
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(x["kind"], x.get("server")) for x in lines] == [
        ("round", "redis"), ("round", "presence"), ("summary", None)]
    redis, presence = (r["results"] for r in lines[:2])
    assert redis["meta"]["graph"] == presence["meta"]["graph"]  # the same graph
    assert "cluster" not in redis and len(presence["cluster"]["nodes"]) == 2
    for phase in presence["fanout"]:
        check = phase["exactly_once"]
        assert (check["lost"], check["duplicated"]) == (0, 0), phase["label"]
        assert phase["system_cpu_us_per_delivery_net"] >= (
            phase["cpu_us_per_delivery_net"]), phase["label"]
    login = presence["login"]
    assert login["system_rss_per_conn"] == (login["rss_per_conn"]
                                           + login["redis_rss_per_user"])
    meta, summary = lines[2]["meta"], lines[2]["summary"]
    assert meta["cluster"] == 2
    for key in ("rss_per_conn_kib", "cpu_us@200", "cpu_us@max", "p99_ms@200",
                "deliveries_per_s@max"):
        assert summary[key]["ratio"] is not None, key
    assert summary["nodes_cpu_us@max"]["presence"][0] is not None
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_cluster_unix_socket(tmp_path: Path) -> None:
    """With --redis-unix the nodes reach Redis by its Unix socket: the run
    says so, and loses or duplicates no delivery."""
    require_redis()
    out = tmp_path / "results.json"
    cmd = [
        *bench_command(), "--cluster", "2", "--redis-unix",
        "--users", "100", "--friends", "4", "--seed", "3",
        "--hold", "1", "--rates", "50", "--phase-seconds", "1",
        "--churn-seconds", "0", "--drain-timeout", "20",
        "--out", str(out), "--no-progress",
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Unix socket" in proc.stdout
    results = json.loads(out.read_text())
    assert results["cluster"]["redis"]["url"].startswith("unix:///")
    assert all("unix:///" in " ".join(n["argv"]) for n in results["cluster"]["nodes"])
    [phase] = results["fanout"]
    assert phase["events_sent"] > 0
    check = phase["exactly_once"]
    assert (check["lost"], check["duplicated"]) == (0, 0)
