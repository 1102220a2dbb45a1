"""The pieces of C{presence-bench --cluster} that decide what it reports: the
friend graph across nodes and the count of each change's deliveries."""

from __future__ import annotations

import io

from twisted.trial.unittest import SynchronousTestCase

from presence.bench import redis_stats
from presence.bench.cluster import check_tallies
from presence.bench.cluster_report import print_cluster
from presence.bench.graph import cross_fraction, friend_graph


class CrossGraphTests(SynchronousTestCase):
    def test_every_edge_joins_two_nodes(self) -> None:
        """With users a multiple of the nodes, every friend of user u sits on
        another node (u % N differs), and the graph stays symmetric with about
        the friends asked for (edges drawn twice collapse)."""
        for nodes, users in ((2, 1000), (3, 999), (4, 400)):
            graph = friend_graph(users, 20, 5, nodes)
            for uid in range(1, users + 1):
                for friend in graph[uid]:
                    self.assertNotEqual(uid % nodes, friend % nodes)
                    self.assertIn(uid, graph[friend])
                self.assertLessEqual(len(graph[uid]), 20)
            mean = sum(map(len, graph)) / users
            self.assertGreater(mean, 19, (nodes, users))
            self.assertEqual(cross_fraction(graph, nodes), 1.0)

    def test_uneven_users_mostly_cross(self) -> None:
        """With users not a multiple of the nodes a few edges stay within a
        node, and cross_fraction says so."""
        graph = friend_graph(201, 20, 5, 2)
        fraction = cross_fraction(graph, 2)
        self.assertLess(fraction, 1.0)
        self.assertGreater(fraction, 0.95)

    def test_one_node_is_the_plain_graph(self) -> None:
        """nodes=1 draws the same graph as before the parameter existed: half
        the edges of a random graph join users of different parity."""
        self.assertEqual(friend_graph(300, 6, 2, 1), friend_graph(300, 6, 2))
        self.assertLess(cross_fraction(friend_graph(1000, 20, 2), 2), 0.6)


class TallyTests(SynchronousTestCase):
    # Users 1..3 with 2, 3 and 1 friends.
    graph = [[], [2, 3], [1, 3, 4], [1], [2]]

    def test_exact(self) -> None:
        """Every change told to each friend once: nothing lost or duplicated,
        even when the deliveries are split over workers."""
        got = check_tallies([{(1, "a"): 1, (2, "b"): 3}, {(1, "a"): 1}], 5,
                            self.graph)
        self.assertEqual(got, {"changes_seen": 2, "lost": 0, "duplicated": 0,
                               "changes_short": 0, "changes_over": 0})

    def test_short_over_and_unseen(self) -> None:
        """A change told to too few friends, one told twice to a friend, and
        one told to nobody (only in the expected total) are each counted, and
        a duplicate does not hide a loss elsewhere."""
        got = check_tallies([{(1, "a"): 1, (2, "b"): 4}], 2 + 3 + 1, self.graph)
        self.assertEqual(got, {"changes_seen": 2, "lost": 1 + 1, "duplicated": 1,
                               "changes_short": 1, "changes_over": 1})


class _Info:
    """INFO sections as redis-server's would answer them."""

    def __init__(self, commands: dict[str, tuple[int, int]], **stats: float) -> None:
        self.commands = commands
        self.stats = stats

    def info(self, section: str) -> dict[str, str]:
        if section == "commandstats":
            return {f"cmdstat_{name}": f"calls={c},usec={u},usec_per_call=0.00,"
                    "rejected_calls=0,failed_calls=0"
                    for name, (c, u) in self.commands.items()}
        return {k: str(v) for k, v in self.stats.items()}


class RedisBreakdownTests(SynchronousTestCase):
    def test_per_change(self) -> None:
        """The breakdown divides each command's new calls and microseconds by
        the changes, busiest command first, leaves out commands not called in
        between, and gives reads, writes, bytes and CPU (in microseconds) per
        change."""
        before = redis_stats.snapshot(_Info(
            {"evalsha": (10, 100), "ping": (3, 3), "hset": (20, 40)},
            total_reads_processed=5, total_writes_processed=9,
            used_cpu_user=1.0, used_cpu_sys=0.5))
        after = redis_stats.snapshot(_Info(
            {"evalsha": (110, 2100), "ping": (3, 3), "hset": (220, 440),
             "publish": (100, 150)},
            total_reads_processed=105, total_writes_processed=209,
            used_cpu_user=1.002, used_cpu_sys=0.501))
        got = redis_stats.breakdown(before, after, 100)
        self.assertEqual(list(got["commands"]), ["evalsha", "hset", "publish"])
        self.assertEqual(got["commands"]["evalsha"],
                         {"calls": 100, "calls_per_change": 1.0,
                          "us_per_change": 20.0})
        self.assertEqual(got["commands"]["hset"]["calls_per_change"], 2.0)
        pc = got["per_change"]
        self.assertEqual((pc["total_reads_processed"],
                          pc["total_writes_processed"]), (1.0, 2.0))
        self.assertAlmostEqual(pc["used_cpu_user"], 20.0)
        self.assertAlmostEqual(pc["used_cpu_sys"], 10.0)

    def test_printed(self) -> None:
        """The cluster report prints each fan-out phase's breakdown: a row
        per command with calls and microseconds per change, the changes per
        wakeup of Redis (per socket read), then the socket counts."""
        stats = {"changes": 100, "commands": {
            "evalsha": {"calls": 100, "calls_per_change": 1.0,
                        "us_per_change": 20.0}},
            "per_change": {"total_reads_processed": 0.5,
                           "total_writes_processed": 1.0}}
        out = io.StringIO()
        print_cluster({"fanout": [{"label": "fan-out 1000/s",
                                   "redis_commands": stats}]}, out)
        text = out.getvalue()
        self.assertIn("Redis command breakdown, fan-out 1000/s (100 changes)",
                      text)
        self.assertRegex(text, r"evalsha\s+1\.000\s+20\.00")
        self.assertIn("socket reads 0.50, writes 1.00", text)
        self.assertIn("changes per Redis wakeup: 2.00", text)
