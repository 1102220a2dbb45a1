"""presence-bench --transport v0: the demo-like client of the load workers,
the pairing of changes with the events that tell of them, and the drain.

No server here: the worker is fed the server's v0 replies as a test writes
them (tests/test_bench_quick.py runs the bench against a real server).
"""

from __future__ import annotations

import multiprocessing
import socket
from array import array
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from presence.bench.against_redis import figures
from presence.bench.graph import friend_graph
from presence.bench.loadgen import (
    C_COMPLETE,
    C_DELIVERED,
    C_ERRORS,
    C_PINGS,
    C_WELCOMED,
    CONNECTING,
    LOGGING_IN,
    NCOUNTERS,
    WELCOMED,
)
from presence.bench.runner import Options
from presence.bench.v0bench import V0Bench, drain_bound, pair
from presence.bench.v0load import (
    HIDE,
    OFFLINE,
    ONLINE,
    PONG,
    SHOW,
    V0Conn,
    V0Worker,
    split_replies,
)
from presence.wire import PING_MSG


class SplitTests(SynchronousTestCase):
    def test_constants(self) -> None:
        """The reply constants are the server's: the demo's pong and the two
        events, without terminators."""
        self.assertEqual(PONG, b'{"msg":"%s","error":0}' % PING_MSG.encode())
        self.assertEqual(split_replies(ONLINE + OFFLINE + PONG),
                         ([True, False, None], b""))

    def test_errors_and_cuts(self) -> None:
        """An error reply is its object; a reply cut by the read is kept for
        the next one, whole replies before it are not."""
        error = b'{"msg":"[server] Invalid UserID","error":5}'
        self.assertEqual(split_replies(ONLINE + error + OFFLINE[:6]),
                         ([True, {"msg": "[server] Invalid UserID", "error": 5}],
                          OFFLINE[:6]))
        self.assertEqual(split_replies(error[:10]), ([], error[:10]))

    def test_not_an_object(self) -> None:
        """A reply that is JSON but not an object is an error of its own."""
        self.assertEqual(split_replies(b"[1]" + ONLINE),
                         ([{"error": -1}, True], b""))


class V0WorkerTests(SynchronousTestCase):
    """One worker of 1, with 10 users of 3 friends; its connections are one
    end of a socket pair, fed what the server would answer."""

    def setUp(self) -> None:
        config = {"workers": 1, "host": "127.0.0.1", "port": 1, "addresses": 1,
                  "users": 10, "friends": 3, "seed": 1, "poll": 0.5}
        self.counters = [0.0] * NCOUNTERS
        self.pipe, theirs = multiprocessing.Pipe()
        self.addCleanup(self.pipe.close)
        self.addCleanup(theirs.close)
        self.worker = V0Worker(0, config, theirs, self.counters, None)
        self.addCleanup(self.worker.ep.close)
        self.graph = friend_graph(10, 3, 1)

    def conn(self, uid: int) -> tuple[V0Conn, socket.socket]:
        mine, other = socket.socketpair()
        self.addCleanup(mine.close)
        self.addCleanup(other.close)
        c = V0Conn(uid, mine, live=True)
        c.state = LOGGING_IN
        c.login = self.worker.login_bytes(uid, None)
        c.asked.append(True)
        self.worker.conns[c.fd] = c
        return c, other

    def test_login_is_the_demos(self) -> None:
        """A user's login is Go's json.Marshal of {user_id, friends}: compact,
        no terminator."""
        friends = ",".join(map(str, self.graph[4]))
        self.assertEqual(self.worker.login_bytes(4, None),
                         b'{"user_id":4,"friends":[%s]}' % friends.encode())

    def test_connect_keeps_the_login_to_poll_with(self) -> None:
        """A new connection sends its login first, awaits one reply to it,
        and keeps the login to send again at each poll."""
        worker = self.worker
        listener = socket.create_server(("127.0.0.1", 0))
        self.addCleanup(listener.close)
        worker.ports = [listener.getsockname()[1]]
        worker.connect(3, live=True)
        c = worker.by_uid[3]
        self.addCleanup(c.sock.close)
        assert isinstance(c, V0Conn)
        self.assertEqual(c.state, CONNECTING)
        self.assertEqual(c.out, worker.login_bytes(3, None))
        self.assertEqual((c.login, list(c.asked)), (c.out, [True]))

    def test_first_reply_welcomes_onlines_complete(self) -> None:
        """The login's reply welcomes the connection; it is complete once it
        has been told of as many friends online as it has."""
        worker, (c, _) = self.worker, self.conn(2)
        worker.kind = "login"
        worker.received(c, PONG, 0.0)
        self.assertEqual(c.state, WELCOMED)
        self.assertEqual(self.counters[C_WELCOMED], 1)
        friends = len(self.graph[2])
        for n in range(friends):
            self.assertFalse(c.complete)
            c.asked.append(True)
            worker.received(c, ONLINE, float(n))
        self.assertTrue(c.complete)
        self.assertEqual(self.counters[C_COMPLETE], 1)
        self.assertEqual(self.counters[C_DELIVERED], friends)

    def test_error_does_not_welcome(self) -> None:
        """An error reply to the login counts as an error, not a welcome."""
        worker, (c, _) = self.worker, self.conn(2)
        worker.received(c, b'{"msg":"[server] Invalid UserID","error":5}', 0.0)
        self.assertEqual(c.state, LOGGING_IN)
        self.assertEqual((self.counters[C_ERRORS], worker.errors), (1, {5: 1}))

    def test_polls_after_each_poll_reply(self) -> None:
        """After the reply to a poll the client polls again, poll seconds
        later, with its login; the reply to a change sets no poll."""
        worker, (c, other) = self.worker, self.conn(2)
        worker.received(c, PONG, 0.0)
        self.assertEqual(len(worker.timers), 1)
        self.assertEqual(self.counters[C_PINGS], 1)
        worker.status_line(c)
        worker.received(c, PONG, 0.0)
        self.assertEqual(len(worker.timers), 1)
        _, _, fn = worker.timers[0]
        fn()
        self.assertEqual(other.recv(256), c.login)
        self.assertEqual(list(c.asked), [True])

    def test_changes_toggle_and_are_kept(self) -> None:
        """A change turns the user invisible, the next one online again; each
        is kept (who, when, which way) for the controller's pairing."""
        worker, (c, _) = self.worker, self.conn(5)
        worker.start_phase("f0", "fanout")
        self.assertEqual(worker.status_line(c), HIDE)
        self.assertEqual(worker.status_line(c), SHOW)
        self.assertEqual(list(worker.sent_uid), [5, 5])
        self.assertEqual(list(worker.sent_online), [0, 1])
        self.assertEqual(worker.sent_time[0], worker.first_send)

    def test_events_in_a_phase_are_kept(self) -> None:
        """Events received in a fan-out phase are kept (who, when, which
        way), also when split across reads; the phase's start clears them."""
        worker, (c, _) = self.worker, self.conn(5)
        worker.received(c, PONG, 0.0)
        worker.start_phase("f0", "fanout")
        c.asked.extend([True, True])
        worker.received(c, OFFLINE[:4], 1.0)
        worker.received(c, OFFLINE[4:] + ONLINE, 2.0)
        self.assertEqual(list(worker.recv_uid), [5, 5])
        self.assertEqual(list(worker.recv_time), [2.0, 2.0])
        self.assertEqual(list(worker.recv_online), [0, 1])
        collected = worker.collect()["v0"]
        self.assertEqual(collected["recv_online"], b"\x00\x01")
        worker.start_phase("f1", "fanout")
        self.assertEqual(len(worker.recv_time), 0)


def reply(sent: list[tuple[int, float, int]],
          received: list[tuple[int, float, int]]) -> dict[str, Any]:
    """A worker's collect reply with these sends and receipts."""
    def arrays(rows: list[tuple[int, float, int]], prefix: str) -> dict[str, bytes]:
        return {prefix + "_uid": array("i", [r[0] for r in rows]).tobytes(),
                prefix + "_time": array("d", [r[1] for r in rows]).tobytes(),
                prefix + "_online": array("b", [r[2] for r in rows]).tobytes()}
    return {"v0": {**arrays(sent, "sent"), **arrays(received, "recv")}}


class PairTests(SynchronousTestCase):
    # 1 watches 2 and 3; 2 watches 1; 3 watches 1.
    graph = [[], [2, 3], [1], [1]]

    def test_in_order(self) -> None:
        """The k-th event a watcher receives pairs with the k-th change among
        its friends by send time, whichever worker sent it."""
        got = pair([reply([(2, 10.0, 0), (2, 12.0, 1)], []),
                    reply([(3, 11.5, 0)],
                          [(1, 10.5, 0), (1, 11.9, 0), (1, 13.0, 1)])],
                   self.graph)
        self.assertEqual(got["latency"]["count"], 3)
        self.assertAlmostEqual(got["latency"]["max_ms"], 1000.0)
        self.assertAlmostEqual(got["latency"]["p50_ms"], 500.0)
        self.assertEqual(got["changes"], 3)
        self.assertEqual((got["mismatched"], got["unpaired"]), (0, 0))

    def test_latencies(self) -> None:
        """Latency is receipt minus send; reordered changes within the same
        instant count as mismatched, their shift bounded by their gap."""
        got = pair([reply([(2, 10.0, 0), (3, 10.001, 1)],
                          [(1, 11.0, 1), (1, 12.0, 0)])], self.graph)
        self.assertAlmostEqual(got["latency"]["max_ms"], 2000.0 - 1.0)
        self.assertEqual(got["mismatched"], 2)
        self.assertEqual(got["unexplained"], 0)
        self.assertAlmostEqual(got["max_shift_ms"], 1.0, places=3)

    def test_unpaired_and_unexplained(self) -> None:
        """Events beyond the changes are unpaired; a direction no change
        near it had is unexplained."""
        got = pair([reply([(2, 10.0, 0)], [(1, 11.0, 1), (1, 12.0, 1)])],
                   self.graph)
        self.assertEqual((got["unpaired"], got["unexplained"]), (1, 1))
        self.assertEqual(got["latency"]["count"], 1)


class DrainTests(SynchronousTestCase):
    def test_bound(self) -> None:
        """The drain allows twice the average watcher's events, plus ten, one
        poll each: 2,000 changes/s for 10 s to 2,000 users of 20 friends
        queue 200 events each."""
        self.assertEqual(drain_bound(2000, 20, 20_000, 1.0), 410.0)
        self.assertEqual(drain_bound(2000, 20, 20_000, 0.5), 205.0)


class AnnotateTests(SynchronousTestCase):
    def test_event_cost_net_of_the_polls(self) -> None:
        """A fan-out phase gets its paired latencies, and the events' own CPU:
        what the sending window used beyond the polls' idle rate, per event
        queued (never below zero)."""
        bench = V0Bench(Options(users=3, friends=2))
        bench.graph = [[], [2, 3], [1], [1]]
        bench.idle_cpu_rate = 0.25
        res: dict[str, Any] = {"expected_deliveries": 1000,
                               "send_server_cpu_s": 3.0, "send_wall_s": 10.0}
        bench.annotate("fanout", res, [reply([(2, 1.0, 0)], [(1, 1.5, 0)])])
        self.assertAlmostEqual(res["cpu_us_per_event_net"], 500.0)
        self.assertEqual(res["latency"]["count"], 1)
        self.assertEqual(res["v0_pairing"]["changes"], 1)
        res = {"expected_deliveries": 1000, "send_server_cpu_s": 2.0,
               "send_wall_s": 10.0}
        bench.annotate("fanout", res, [reply([], [])])
        self.assertEqual(res["cpu_us_per_event_net"], 0.0)

    def test_figures_count_the_polls(self) -> None:
        """Of a v0 run the comparison's CPU per delivery is the raw one (its
        poll included), with the idle CPU per poll and the events' own CPU
        beside it."""
        phase: dict[str, Any] = {
            "rate": None, "cpu_us_per_delivery": 120.0,
            "cpu_us_per_delivery_net": 0.0, "cpu_us_per_event_net": 4.0,
            "latency": {}, "loadgen": {}}
        got = figures({"meta": {"transport": "v0"}, "login": {},
                       "hold": {"cpu_us_per_poll": 110.0}, "fanout": [phase]})
        self.assertEqual((got["cpu_us@max"], got["events_cpu_us@max"],
                          got["poll_cpu_us"]), (120.0, 4.0, 110.0))
        got = figures({"meta": {"transport": "lines"}, "login": {},
                       "fanout": [phase]})
        self.assertEqual(got["cpu_us@max"], 0.0)
        self.assertNotIn("poll_cpu_us", got)
