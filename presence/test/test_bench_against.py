"""presence-bench --against redis: the Redis client of the load workers, the
figures of a round, their medians and ratios, and the --quick presets.

No redis-server here: the worker is fed Redis's bytes as a test writes them
(tests/test_bench_quick.py runs the whole comparison against a real one).
"""

from __future__ import annotations

import io
import multiprocessing
import os
import socket
from typing import Any

import hiredis
from twisted.trial.unittest import SynchronousTestCase

from presence.bench.against_redis import (
    RedisBench,
    benches_for,
    compare,
    figures,
    summarize,
    warnings,
)
from presence.bench.against_report import print_comparison, rows
from presence.bench.cli import main, parse_args
from presence.bench.cluster import ClusterBench
from presence.bench.graph import friend_graph
from presence.bench.loadgen import (
    C_COMPLETE,
    C_DELIVERED,
    C_ERRORS,
    C_WELCOMED,
    LOGGING_IN,
    NCOUNTERS,
    WELCOMED,
)
from presence.bench.redisload import RedisConn, RedisWorker, command
from presence.bench.runner import Bench, Options
from presence.bench.v0bench import V0Bench

HELLO_REPLY = b"%2\r\n$6\r\nserver\r\n$5\r\nredis\r\n$5\r\nproto\r\n:3\r\n"


def push(*items: bytes | int) -> bytes:
    out = [b">%d\r\n" % len(items)]
    for item in items:
        if isinstance(item, int):
            out.append(b":%d\r\n" % item)
        else:
            out.append(b"$%d\r\n%s\r\n" % (len(item), item))
    return b"".join(out)


def parse(data: bytes) -> list[Any]:
    """The commands in C{data}, as lists (RESP commands are arrays)."""
    reader = hiredis.Reader()
    reader.feed(data)
    out = []
    while (item := reader.gets()) is not False:
        out.append(item)
    return out


class RedisWorkerTests(SynchronousTestCase):
    """One worker of 1, with 10 users of 3 friends; its connections are one
    end of a socket pair, fed what Redis would send."""

    def setUp(self) -> None:
        config = {"workers": 1, "host": "127.0.0.1", "port": 1, "addresses": 1,
                  "users": 10, "friends": 3, "seed": 1}
        self.counters = [0.0] * NCOUNTERS
        self.pipe, theirs = multiprocessing.Pipe()
        self.addCleanup(self.pipe.close)
        self.addCleanup(theirs.close)
        self.worker = RedisWorker(0, config, theirs, self.counters, None)
        self.addCleanup(self.worker.ep.close)
        self.graph = friend_graph(10, 3, 1)

    def conn(self, uid: int) -> RedisConn:
        mine, other = socket.socketpair()
        self.addCleanup(mine.close)
        self.addCleanup(other.close)
        c = RedisConn(uid, mine, live=True)
        c.state = LOGGING_IN
        return c

    def test_login_subscribes_to_friends(self) -> None:
        """A user's connection says HELLO 3, then subscribes to the channel of
        each of its friends, in one write."""
        commands = parse(self.worker.login_bytes(4, None))
        friends = [b"u%d" % f for f in self.graph[4]]
        self.assertEqual(commands, [[b"HELLO", b"3"], [b"SUBSCRIBE", *friends]])

    def test_status_is_a_publish_with_the_send_time(self) -> None:
        """A status change is a PUBLISH on the user's own channel whose payload
        is t:<phase>:<send time>, and the phase's first send time is kept."""
        self.worker.phase_tag = "f0"
        [cmd] = parse(self.worker.status_line(self.conn(7)))
        self.assertEqual(cmd[:2], [b"PUBLISH", b"u7"])
        tag, stamp = cmd[2].split(b":")[1:]
        self.assertEqual(tag, b"f0")
        self.assertEqual(float(stamp), round(self.worker.first_send, 6))

    def test_welcomed_then_complete_at_last_subscription(self) -> None:
        """HELLO's reply welcomes a connection; it is complete (counted as a
        login) when Redis confirms its last subscription, not before."""
        worker, c = self.worker, self.conn(2)
        worker.kind = "login"  # as start_login sets it, without connecting
        friends = self.graph[2]
        data = HELLO_REPLY + b"".join(
            push(b"subscribe", b"u%d" % f, n)
            for n, f in enumerate(friends[:-1], 1))
        worker.received(c, data, 0.0)
        self.assertEqual(c.state, WELCOMED)
        self.assertEqual(self.counters[C_WELCOMED], 1)
        self.assertFalse(c.complete)
        worker.received(c, push(b"subscribe", b"u%d" % friends[-1], len(friends)),
                        0.0)
        self.assertTrue(c.complete)
        self.assertEqual(self.counters[C_COMPLETE], 1)

    def test_message_counts_a_delivery_and_its_latency(self) -> None:
        """A message on a friend's channel is a delivery; one sent in the
        current phase gives a latency (now minus its send time), also when it
        comes in two reads; one of an earlier phase gives none."""
        worker, c = self.worker, self.conn(2)
        worker.received(c, HELLO_REPLY, 0.0)
        worker.start_phase("f1", "fanout")
        message = push(b"message", b"u5", b"t:f1:100.250000")
        worker.received(c, message[:9], 100.0)
        self.assertEqual(self.counters[C_DELIVERED], 0)
        worker.received(c, message[9:] + push(b"message", b"u5", b"t:f0:99.0"),
                        100.5)
        self.assertEqual(self.counters[C_DELIVERED], 2)
        self.assertEqual(list(worker.lat), [0.25])

    def test_publish_count_and_errors(self) -> None:
        """PUBLISH's integer reply is neither a delivery nor an error; an
        error reply is counted as an error."""
        worker, c = self.worker, self.conn(2)
        worker.received(c, HELLO_REPLY + b":3\r\n-ERR wrong\r\n", 0.0)
        self.assertEqual(self.counters[C_DELIVERED], 0)
        self.assertEqual(self.counters[C_ERRORS], 1)
        self.assertEqual(worker.errors, {-3: 1})

    def test_command_packs_resp(self) -> None:
        """command() writes one RESP array of bulk strings."""
        self.assertEqual(command("PUBLISH", b"u1", b"x"),
                         b"*3\r\n$7\r\nPUBLISH\r\n$2\r\nu1\r\n$1\r\nx\r\n")


def bench_results(rss: float, cpu: float, p99: float, rate: float) -> dict[str, Any]:
    """A bench run's results with the fields the comparison reads."""
    phase = {"label": "fan-out", "cpu_us_per_delivery_net": cpu,
             "cpu_us_per_delivery": cpu + 1, "deliveries_per_s": rate * 10,
             "missing_deliveries": 0, "loadgen": {"other_cpu_cores": 0.5},
             "latency": {"p50_ms": p99 / 2, "p99_ms": p99}}
    return {"login": {"rss_per_conn": rss},
            "fanout": [{**phase, "rate": 100.0}, {**phase, "rate": None}]}


class SummaryTests(SynchronousTestCase):
    """The figures of rounds, their medians and ratios, and the table."""

    def comparison(self) -> dict[str, Any]:
        rounds = []
        for n, (redis_cpu, presence_cpu) in enumerate([(4, 9), (6, 3), (5, 6)], 1):
            rounds.append({"server": "redis", "round": n, "figures": figures(
                bench_results(10240, redis_cpu, 2.0, 100))})
            rounds.append({"server": "presence", "round": n, "figures": figures(
                bench_results(2048, presence_cpu, 1.0, 100))})
        meta = {"date": "d", "users": 10, "friends": 3, "seed": 1, "rounds": 3,
                "source": "x", "rates": ["100", "max"],
                "loadavg_start": [0.5], "loadavg_end": [0.7]}
        return {"meta": meta, "rounds": rounds, "summary": summarize(rounds),
                "notes": ["something"]}

    def test_figures_of_a_round(self) -> None:
        """A round's figures are keyed by phase rate ('max' flat out), RSS
        per connection in KiB."""
        got = figures(bench_results(2048, 7.0, 3.0, 100))
        self.assertEqual(got["rss_per_conn_kib"], 2.0)
        self.assertEqual(got["cpu_us@100"], 7.0)
        self.assertEqual(got["cpu_us_raw@max"], 8.0)
        self.assertEqual(got["p99_ms@max"], 3.0)
        self.assertEqual(got["p50_ms@100"], 1.5)

    def test_medians_and_ratio(self) -> None:
        """Each figure keeps every round's value; the ratio is presence's
        median over Redis's (medians, not means: 6/5, not 6/5 of means)."""
        entry = summarize(self.comparison()["rounds"])["cpu_us@max"]
        self.assertEqual(entry["redis"], [4, 6, 5])
        self.assertEqual(entry["presence"], [9, 3, 6])
        self.assertEqual(entry["redis_median"], 5)
        self.assertEqual(entry["presence_median"], 6)
        self.assertAlmostEqual(entry["ratio"], 1.2)

    def test_warnings(self) -> None:
        """A round is flagged for what makes its figures doubtful: users not
        logged in, the server on the load's CPUs, deliveries missing, other
        processes on the CPUs, a paced sender behind, a saturated load
        generator flat out; a clean round for nothing."""
        clean = {"meta": {"server": {"cpus": [0]}},
                 "login": {"users": 10, "complete": 10},
                 "fanout": [{"label": "fan-out 100/s", "rate": 100.0,
                             "loadgen": {}},
                            {"label": "fan-out max", "rate": None,
                             "loadgen": {}}]}
        self.assertEqual(warnings("redis", 1, clean), [])
        bad = {"meta": {"server": {"cpus": None}},
               "login": {"users": 10, "complete": 9},
               "fanout": [{"label": "fan-out 100/s", "rate": 100.0,
                           "missing_deliveries": 3,
                           "loadgen": {"saturated": True, "contended": True,
                                       "other_cpu_cores": 0.5}},
                          {"label": "fan-out max", "rate": None,
                           "loadgen": {"saturated": True}}]}
        self.assertEqual(warnings("presence", 2, bad), [
            "presence round 2: the server shared the load's CPUs",
            "presence round 2: 9 of 10 users logged in",
            "presence round 2, fan-out 100/s: 3 deliveries missing",
            "presence round 2, fan-out 100/s: other processes used 0.5 cores",
            "presence round 2, fan-out 100/s: the load generator fell behind",
            "presence round 2, fan-out max: the load generator was saturated "
            "(the deliveries/s are its ceiling, not the server's)",
        ])

    def test_missing_values(self) -> None:
        """A figure no round measured has no median and no ratio."""
        rounds = [{"server": "redis", "figures": {"x": None}},
                  {"server": "presence", "figures": {"x": 1.0}}]
        self.assertEqual(summarize(rounds)["x"]["ratio"], None)

    def test_rows_and_targets(self) -> None:
        """The table shows RSS, then per rate CPU, p50, p99 (and deliveries/s
        flat out only), and the other processes' CPU (no ratio); CPU rows
        carry the 1.0x target, missed at 1.2x."""
        shown = rows(self.comparison())
        self.assertEqual([r["key"] for r in shown], [
            "rss_per_conn_kib", "cpu_us@100", "p50_ms@100", "p99_ms@100",
            "others@100", "cpu_us@max", "p50_ms@max", "p99_ms@max",
            "deliveries_per_s@max", "others@max"])
        others = shown[4]
        self.assertEqual((others["redis"], others["ratio"]), ([0.5] * 3, None))
        met = {r["key"]: r["met"] for r in shown}
        self.assertEqual(met["cpu_us@max"], False)
        self.assertEqual(met["rss_per_conn_kib"], None)
        out = io.StringIO()
        print_comparison(self.comparison(), out)
        self.assertIn("1.20x", out.getvalue())
        self.assertIn("MISSED", out.getvalue())
        self.assertIn("note: something", out.getvalue())


class OptionsTests(SynchronousTestCase):
    """--quick and --against change defaults; options given still win."""

    def test_quick(self) -> None:
        """--quick is 200 users, 5 friends, short phases, one round."""
        args = parse_args(["--quick"])
        self.assertEqual((args.users, args.friends, args.rounds), (200, 5, 1))
        self.assertEqual(args.rates, [200.0, None])
        self.assertLessEqual(args.phase_seconds, 2)

    def test_quick_with_option(self) -> None:
        """An option given with --quick keeps its value."""
        args = parse_args(["--quick", "--users", "50"])
        self.assertEqual((args.users, args.friends), (50, 5))

    def test_against(self) -> None:
        """--against redis defaults to the issue's comparison: 2,000 users,
        2,000 changes/s and flat out, 2 rounds each."""
        args = parse_args(["--against", "redis"])
        self.assertEqual((args.users, args.friends, args.rounds), (2000, 20, 2))
        self.assertEqual(args.rates, [2000.0, None])

    def test_plain(self) -> None:
        """Without either, the defaults are the bench's own."""
        args = parse_args([])
        self.assertEqual((args.users, args.against), (1000, None))


class PinningBench(Bench):
    """A bench run that only notes the CPUs it may use, then pins this
    process to the last of them, as Bench.setup pins it to the load's."""

    seen: list[set[int]] = []

    def run(self) -> dict[str, Any]:
        cpus = os.sched_getaffinity(0)
        self.seen.append(cpus)
        os.sched_setaffinity(0, {max(cpus)})
        return {"meta": {"server": {"cpus": [min(cpus)]}}, "fanout": []}


class CompareTests(SynchronousTestCase):
    """compare() alternates the servers, each round on every CPU."""

    def test_rounds_alternate_on_every_cpu(self) -> None:
        """Each run starts with every CPU this process had, though the run
        before pinned it to one; runs go in order, round after round."""
        cpus = os.sched_getaffinity(0)
        self.addCleanup(os.sched_setaffinity, 0, cpus)
        PinningBench.seen = []
        got = compare(Options(users=10), 2, log=lambda text: None,
                      benches=(("redis", PinningBench), ("presence", PinningBench)))
        self.assertEqual(PinningBench.seen, [cpus] * 4)
        self.assertEqual([(r["server"], r["round"]) for r in got["rounds"]],
                         [("redis", 1), ("presence", 1), ("redis", 2),
                          ("presence", 2)])


class PathsTests(SynchronousTestCase):
    """The cluster and v0 rows: which figures, and which ratios compare."""

    def cluster_results(self) -> dict[str, Any]:
        results = bench_results(2048, 7.0, 3.0, 100)
        results["cluster"] = {"nodes": [{}, {}]}
        results["login"]["system_rss_per_conn"] = 3072
        for phase in results["fanout"]:
            phase["system_cpu_us_per_delivery_net"] = 9.0
            phase["system_cpu_us_per_delivery"] = 10.0
        return results

    def test_cluster_figures_are_the_systems(self) -> None:
        """Of a cluster, CPU per delivery and RSS per connection are the
        nodes' and their Redis's together; the nodes' own are kept beside."""
        got = figures(self.cluster_results())
        self.assertEqual(got["rss_per_conn_kib"], 3.0)
        self.assertEqual(got["nodes_rss_per_conn_kib"], 2.0)
        self.assertEqual((got["cpu_us@100"], got["cpu_us_raw@max"]), (9.0, 10.0))
        self.assertEqual(got["nodes_cpu_us@max"], 7.0)
        self.assertEqual(got["p99_ms@max"], 3.0)

    def comparison(self, **meta: Any) -> dict[str, Any]:
        rounds = [{"server": "redis", "round": 1,
                   "figures": figures(bench_results(10240, 5.0, 2.0, 100))},
                  {"server": "presence", "round": 1,
                   "figures": figures(bench_results(2048, 6.0, 900.0, 100))}]
        return {"meta": {"date": "d", "users": 10, "friends": 3, "seed": 1,
                         "rounds": 1, "source": "x", "rates": ["100", "max"],
                         "loadavg_start": [0.5], "loadavg_end": [0.7], **meta},
                "rounds": rounds, "summary": summarize(rounds), "notes": []}

    def test_v0_latency_and_rate_not_comparable(self) -> None:
        """Over v0, latencies and the flat-out rate are the polls' doing: the
        table marks their ratios (poll); RSS and CPU compare."""
        shown = {r["key"]: r for r in rows(self.comparison(transport="v0"))}
        self.assertEqual(
            sorted(k for k, r in shown.items() if not r["comparable"]),
            ["deliveries_per_s@max", "p50_ms@100", "p50_ms@max", "p99_ms@100",
             "p99_ms@max"])
        out = io.StringIO()
        print_comparison(self.comparison(transport="v0", v0_poll=1.0), out)
        self.assertIn("450.00x (poll)", out.getvalue())
        self.assertIn("presence over v0 (a poll every 1 s)", out.getvalue())
        lines = [r for r in rows(self.comparison(transport="lines"))
                 if not r["comparable"]]
        self.assertEqual(lines, [])

    def test_cluster_rows(self) -> None:
        """With a cluster, the CPU rows say they are the system's and every
        ratio compares."""
        shown = rows(self.comparison(cluster=2))
        self.assertTrue(all(r["comparable"] for r in shown))
        names = [r["name"] for r in shown if r["key"].startswith("cpu_us@")]
        self.assertEqual(names, [
            "system CPU per delivery (nodes + Redis, net of idle), paced 100/s",
            "system CPU per delivery (nodes + Redis, net of idle), flat out"])
        out = io.StringIO()
        print_comparison(self.comparison(cluster=2), out)
        self.assertIn("presence as 2 nodes and their Redis", out.getvalue())

    def test_benches_for(self) -> None:
        """--cluster N compares N nodes with their Redis against a Redis whose
        users have the cluster's friend graph; otherwise the single server
        over the transport."""
        opts = Options(users=10)
        (_, redis), (_, presence) = benches_for("lines", cluster=3)
        made = redis(opts)
        self.assertIsInstance(made, RedisBench)
        self.assertEqual((made.nodes, made.worker_config()), (3, {"nodes": 3}))
        made = presence(opts)
        self.assertIsInstance(made, ClusterBench)
        self.assertEqual(made.nodes, 3)
        (_, redis), (_, presence) = benches_for("v0")
        self.assertEqual(redis(opts).worker_config(), {})
        self.assertIsInstance(presence(opts), V0Bench)

    def test_options(self) -> None:
        """--cluster N goes with --against; --cluster with v0 does not, nor a
        poll interval of 0."""
        args = parse_args(["--against", "redis", "--cluster", "2",
                           "--transport", "v0", "--v0-poll", "0.5"])
        self.assertEqual((args.cluster, args.transport, args.v0_poll),
                         (2, "v0", 0.5))
        with self.assertRaises(SystemExit):
            main(["--cluster", "2", "--transport", "v0"])
        with self.assertRaises(SystemExit):
            main(["--transport", "v0", "--v0-poll", "0"])
