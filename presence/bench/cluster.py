"""C{presence-bench --cluster N}: the bench's phases on N nodes sharing a Redis.

The bench starts a redis-server (a free loopback port, no persistence) and N
C{twistd -n presence --redis ...} nodes.  User u connects to node C{u % N},
and the friend graph joins users of different nodes (L{graph.friend_graph}
with C{nodes}), so that what a change costs and how long it takes are those
of the path between nodes: the node of the sender runs the script in Redis,
Redis publishes, the nodes of the watchers fan out.

On top of the single-server figures (summed over the nodes by L{NodesProbe})
each phase gets Redis's CPU (redis-server's own, from /proc), and each
fan-out phase a count of every change's deliveries against the sender's
friends (L{check_tallies}).  Redis's memory per user is the growth of its
C{used_memory} over the login phase.  L{cluster_report} presents them.
The C{system_*} figures add Redis to the nodes (its CPU per delivery, the
growth of its RSS per user), for C{--cluster N --against redis}.
"""

from __future__ import annotations

import os
import time
from typing import Any

from presence.bench import redis_stats
from presence.bench.graph import cross_fraction
from presence.bench.launch import LaunchedServer
from presence.bench.runner import Bench, Options
from presence.bench.server import Probe, Sample
from presence.cluster.redisserver import RedisServer


class NodesProbe(Probe):
    """CPU time and RSS summed over several processes (the cluster's nodes)."""

    def __init__(self, pids: list[int]) -> None:
        super().__init__(pids[0])
        self.probes = [Probe(pid) for pid in pids]

    def each(self) -> list[float]:
        """Each node's CPU seconds so far (which node was the busy one)."""
        return [p.sample().cpu for p in self.probes]

    def sample(self) -> Sample:
        samples = [p.sample() for p in self.probes]
        return Sample(sum(s.cpu for s in samples), sum(s.rss for s in samples),
                      time.monotonic())

    def alive(self) -> bool:
        return all(p.alive() for p in self.probes)


def check_tallies(
    tallies: list[dict[tuple[int, str], int]], expected: int,
    graph: list[list[int]],
) -> dict[str, int]:
    """Each change's deliveries (summed over the workers' C{tallies}) against
    its sender's friends: C{lost} deliveries (never told) and C{duplicated}
    ones (told more than once).  C{expected} is every change's friends
    together, so a change nobody was told of counts as lost too."""
    merged: dict[tuple[int, str], int] = {}
    for tally in tallies:
        for key, n in tally.items():
            merged[key] = merged.get(key, 0) + n
    lost = duplicated = short = over = covered = 0
    for (uid, _), n in merged.items():
        friends = len(graph[uid])
        covered += friends
        if n < friends:
            lost += friends - n
            short += 1
        elif n > friends:
            duplicated += n - friends
            over += 1
    unseen = max(0, expected - covered)
    return {
        "changes_seen": len(merged),
        "lost": lost + unseen,
        "duplicated": duplicated,
        "changes_short": short,
        "changes_over": over,
    }


class ClusterBench(Bench):
    """The bench's controller with N nodes and a Redis of its own."""

    def __init__(self, opts: Options, nodes: int) -> None:
        super().__init__(opts)
        self.nodes = nodes
        self.node_servers: list[LaunchedServer] = []
        self.redis: RedisServer | None = None
        self.redis_probe: Probe | None = None
        self.nodes_probe: NodesProbe | None = None
        self.redis_idle_rate = 0.0  # Redis CPU s/s in the hold phase

    def redis_cpu(self) -> float:
        """Redis's CPU seconds so far: from /proc/PID/schedstat, in
        nanoseconds, since /proc/PID/stat counts 10 ms ticks, too coarse for
        the tens of microseconds a change costs Redis."""
        if self.redis_probe is None:
            return 0.0
        try:
            with open(f"/proc/{self.redis_probe.pid}/schedstat") as f:
                return int(f.read().split()[0]) / 1e9
        except (OSError, ValueError, IndexError):
            return self.redis_probe.sample().cpu

    def redis_memory(self) -> int:
        assert self.redis is not None
        return int(self.redis.info("memory")["used_memory"])

    # -- setup --------------------------------------------------------------------

    def launch(self, limit: int) -> LaunchedServer:
        """Redis, then the N nodes; node 0 stands for the "server" in the
        single-server parts of the report."""
        o = self.opts
        self.redis = RedisServer().start()
        assert self.redis.proc is not None
        if self.server_cpus:
            try:
                os.sched_setaffinity(self.redis.proc.pid, self.server_cpus)
            except OSError:
                pass
        self.redis_probe = Probe(self.redis.proc.pid)
        url = self.redis.unix_url if o.redis_unix else self.redis.url
        for i in range(self.nodes):
            log = None
            if o.server_log is not None:
                log = o.server_log.with_name(f"{o.server_log.name}.{i}")
            node = LaunchedServer.for_bench(
                [*self.server_options(limit), "--redis", url,
                 "--node-id", f"bench-{i}"],
                log_path=log, cpus=self.server_cpus or None,
            )
            self.node_servers.append(node)
        for node in self.node_servers:
            node.wait_for_log(r"joined the cluster", timeout=30)
        return self.node_servers[0]

    def worker_config(self) -> dict[str, Any]:
        return {"nodes": self.nodes, "ports": [n.port for n in self.node_servers]}

    def setup(self) -> None:
        super().setup()
        self.nodes_probe = NodesProbe([n.pid for n in self.node_servers])
        self.probe = self.nodes_probe
        assert self.redis is not None and self.redis.proc is not None
        version = self.redis.info("server").get("redis_version")
        self.results["cluster"] = {
            "nodes": [{"address": n.address, "pid": n.pid, "argv": n.argv}
                      for n in self.node_servers],
            "redis": {"url": self.redis.unix_url if self.opts.redis_unix
                      else self.redis.url, "pid": self.redis.proc.pid,
                      "version": version},
            "cross_node_edges": cross_fraction(self.graph, self.nodes),
        }

    def teardown(self) -> None:
        try:
            super().teardown()  # the workers, and node 0
        finally:
            codes = [n.stop() for n in self.node_servers]
            self.results.setdefault("cluster", {})["exit_codes"] = codes
            if self.redis is not None:
                self.redis.close()

    # -- what other processes use: Redis is part of the system under test ------

    def usage_start(self) -> dict[str, Any]:
        start = super().usage_start()
        start["redis"] = self.redis_cpu()
        return start

    def loadgen_usage(self, start: dict[str, Any]) -> dict[str, Any]:
        usage = super().loadgen_usage(start)
        wall = (time.monotonic() - start["wall"]) or 1e-9
        redis = (self.redis_cpu() - start.get("redis", 0.0)) / wall
        usage["redis_cpu_cores"] = round(redis, 3)
        usage["other_cpu_cores"] = round(max(0.0, usage["other_cpu_cores"] - redis),
                                         3)
        if "other_on_server_cpu" in usage:
            usage["other_on_server_cpu"] = round(
                max(0.0, usage["other_on_server_cpu"] - redis), 3)
        usage["contended"] = usage["other_cpu_cores"] > 0.15
        return usage

    # -- phases -----------------------------------------------------------------

    def redis_rss(self) -> int:
        return self.redis_probe.sample().rss if self.redis_probe else 0

    def phase_login(self) -> None:
        memory, cpu, rss = self.redis_memory(), self.redis_cpu(), self.redis_rss()
        super().phase_login()
        login = self.results["login"]
        complete = max(1, login["complete"])
        login["redis_memory_before"] = memory
        login["redis_memory_after"] = after = self.redis_memory()
        login["redis_bytes_per_user"] = (after - memory) / complete
        login["redis_cpu_us_per_login"] = (self.redis_cpu() - cpu) / complete * 1e6
        # The whole system's memory, as a single server's RSS is counted: the
        # growth of the nodes' and Redis's resident sets over the login.
        login["redis_rss_per_user"] = (self.redis_rss() - rss) / complete
        if login.get("rss_per_conn") is not None:
            login["system_rss_per_conn"] = (login["rss_per_conn"]
                                            + login["redis_rss_per_user"])

    def phase_hold(self) -> None:
        cpu, t0 = self.redis_cpu(), time.monotonic()
        super().phase_hold()
        self.redis_idle_rate = (self.redis_cpu() - cpu) / (time.monotonic() - t0)
        self.results["hold"]["redis_cpu_fraction"] = self.redis_idle_rate

    def run_events(
        self, tag: str, kind: str, command: tuple[Any, ...], seconds: float,
        label: str,
    ) -> dict[str, Any]:
        assert self.nodes_probe is not None and self.redis is not None
        counters = redis_stats.snapshot(self.redis)
        cpu, each, t0 = self.redis_cpu(), self.nodes_probe.each(), time.monotonic()
        res = super().run_events(tag, kind, command, seconds, label)
        used, wall = self.redis_cpu() - cpu, time.monotonic() - t0
        res["redis_commands"] = redis_stats.breakdown(
            counters, redis_stats.snapshot(self.redis), res["events_sent"])
        res["node_cpu_fraction"] = [
            (b - a) / wall for a, b in zip(each, self.nodes_probe.each(), strict=True)]
        res["redis_cpu_s"] = used
        changes = res["events_sent"]
        net = max(0.0, used - self.redis_idle_rate * wall)
        if changes:
            res["redis_cpu_us_per_change"] = used / changes * 1e6
            res["redis_cpu_us_per_change_net"] = net / changes * 1e6
        delivered = res["deliveries"]
        if delivered and res.get("cpu_us_per_delivery") is not None:
            # What a delivery costs the whole system: nodes and Redis.
            res["system_cpu_us_per_delivery"] = (
                res["cpu_us_per_delivery"] + used / delivered * 1e6)
            res["system_cpu_us_per_delivery_net"] = (
                res["cpu_us_per_delivery_net"] + net / delivered * 1e6)
        return res

    def annotate(self, kind: str, res: dict[str, Any],
                 replies: list[dict[str, Any]]) -> None:
        if kind != "fanout":
            return
        tallies = [r["tally"] for r in replies if r.get("tally") is not None]
        res["exactly_once"] = check_tallies(
            tallies, res["expected_deliveries"] or 0, self.graph)

