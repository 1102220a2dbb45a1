"""presence.server.logs: peer addresses, the refusal rate limiter, JSON lines."""

from __future__ import annotations

import json
import os
from io import StringIO
from typing import cast

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, Logger, LogLevel, eventFromJSON, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from presence.server.logs import (
    LogTarget,
    RefusalLimiter,
    format_peer,
    json_line,
    observer_for,
)


class FormatPeerTests(SynchronousTestCase):
    def test_ipv4(self) -> None:
        """IPv4: host:port."""
        self.assertEqual(format_peer(IPv4Address("TCP", "192.0.2.1", 5000)),
                         "192.0.2.1:5000")

    def test_ipv6_in_brackets(self) -> None:
        """IPv6: [host]:port, so that the port cannot be read as part of the
        address."""
        self.assertEqual(format_peer(IPv6Address("TCP", "::1", 5000)), "[::1]:5000")
        self.assertEqual(format_peer(IPv6Address("TCP", "2001:db8::7", 443)),
                         "[2001:db8::7]:443")

    def test_unix(self) -> None:
        """UNIX sockets: unix:PATH, or unix: for an unnamed client socket."""
        self.assertEqual(format_peer(UNIXAddress(b"/run/p.sock")), "unix:/run/p.sock")
        self.assertEqual(format_peer(UNIXAddress(None)), "unix:")

    def test_other(self) -> None:
        """Anything else: its str()."""
        self.assertEqual(format_peer(None), "None")


class RefusalLimiterTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.events: list[dict[str, object]] = []
        self.limiter = RefusalLimiter(
            self.clock, interval=10, max_hosts=3,
            log=Logger(observer=cast(ILogObserver, self.events.append)))

    def lines(self) -> list[str]:
        return [formatEvent(e) for e in self.events]

    def test_first_refusal_logged_rest_summed(self) -> None:
        """The first refusal from an address is to be logged; the next 9,186
        in the interval give one summary line, with the last reason."""
        self.assertTrue(self.limiter.refused("192.0.2.1", "first"))
        for n in range(9186):
            self.assertFalse(self.limiter.refused("192.0.2.1", f"reason {n}"))
        self.assertEqual(self.lines(), [])
        self.clock.advance(10)
        self.assertEqual(self.lines(), [
            "192.0.2.1 refused 9186 more times in the last 10 s: reason 9185"])

    def test_one_summary_per_address_per_interval(self) -> None:
        """A steady attack costs one line per interval per address; other
        addresses have their own first line and summaries."""
        self.assertTrue(self.limiter.refused("a", "x"))
        self.assertTrue(self.limiter.refused("b", "y"))
        for _ in range(3):
            for _ in range(5):
                self.assertFalse(self.limiter.refused("a", "x"))
            self.clock.advance(10)
        self.assertEqual(self.lines(), [
            "a refused 5 more times in the last 10 s: x"] * 3)

    def test_quiet_address_forgotten(self) -> None:
        """After a whole quiet interval an address is forgotten: its next
        refusal is logged in full again, and the timer stops."""
        self.assertTrue(self.limiter.refused("a", "x"))
        self.assertFalse(self.limiter.refused("a", "x"))
        self.clock.advance(10)  # summary
        self.assertEqual(len(self.limiter), 1)
        self.clock.advance(10)  # quiet: forgotten
        self.assertEqual(len(self.limiter), 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertTrue(self.limiter.refused("a", "x"))
        self.assertEqual(self.lines(), ["a refused 1 more time in the last 10 s: x"])

    def test_single_refusal_no_summary(self) -> None:
        """One refusal alone gives no summary at all."""
        self.assertTrue(self.limiter.refused("a", "x"))
        self.clock.advance(100)
        self.assertEqual(self.lines(), [])

    def test_bounded_addresses(self) -> None:
        """Past max_hosts addresses, refusals of others are not logged one by
        one but summed up in one line for all of them."""
        for host in ("a", "b", "c"):
            self.assertTrue(self.limiter.refused(host, "x"))
        for n in range(100):
            self.assertFalse(self.limiter.refused(f"other{n % 7}", "y"))
        self.assertEqual(len(self.limiter), 3)
        self.clock.advance(10)
        self.assertEqual(self.lines(), [
            "100 more refusals from 3 or more other addresses in the last 10 s: y"])
        # a, b and c were quiet in that interval: forgotten, room again.
        self.assertEqual(len(self.limiter), 0)
        self.assertTrue(self.limiter.refused("other1", "z"))

    def test_flush(self) -> None:
        """flush() writes the summaries at once (at shutdown)."""
        self.limiter.refused("a", "x")
        self.limiter.refused("a", "x")
        self.limiter.flush()
        self.assertEqual(len(self.lines()), 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class JsonLogTests(SynchronousTestCase):
    def event(self) -> dict[str, object]:
        events: list[dict[str, object]] = []
        log = Logger(namespace="presence.test",
                     observer=cast(ILogObserver, events.append))
        log.info("user {uid} joins from {peer}", uid=7, peer="[::1]:5000")
        return events[0]

    def test_one_object_per_line(self) -> None:
        """Each event is one line of JSON with its text, level, namespace and
        fields, and Twisted can read it back."""
        line = json_line(self.event())
        self.assertTrue(line.endswith("\n"))
        self.assertEqual(line.count("\n"), 1)
        record = json.loads(line)
        self.assertEqual(record["text"], "user 7 joins from [::1]:5000")
        self.assertEqual(record["level"], "info")
        self.assertEqual(record["log_namespace"], "presence.test")
        self.assertEqual((record["uid"], record["peer"]), (7, "[::1]:5000"))
        back = eventFromJSON(line)
        self.assertEqual(back["log_level"], LogLevel.info)
        self.assertEqual(formatEvent(back), "user 7 joins from [::1]:5000")

    def test_observer(self) -> None:
        """The json observer writes json_line; text writes the usual line."""
        out = StringIO()
        observer_for("json", out)(self.event())
        self.assertEqual(json.loads(out.getvalue())["uid"], 7)
        out = StringIO()
        observer_for("text", out)(self.event())
        self.assertIn("[presence.test#info] user 7 joins from [::1]:5000",
                      out.getvalue())
        self.assertRaises(ValueError, observer_for, "xml", out)


class LogTargetTests(SynchronousTestCase):
    def test_twistd_choice(self) -> None:
        """The same destination twistd would choose; none when --logger or
        --syslog decide."""
        self.assertIsNone(LogTarget.for_twistd("text", {"nodaemon": True,
                                                        "logger": "x.y"}))
        self.assertIsNone(LogTarget.for_twistd("text", {"syslog": True}))
        self.assertIsNone(LogTarget.for_twistd("text", {"logfile": "-"}))
        target = LogTarget.for_twistd("text", {"nodaemon": True, "logfile": None})
        assert target is not None
        self.assertIsNone(target.path)
        path = self.mktemp()
        target = LogTarget.for_twistd("json", {"nodaemon": False, "logfile": path})
        assert target is not None and target.file is not None
        self.assertEqual(target.path, path)
        target.file.close()

    def test_reopen_after_move(self) -> None:
        """reopen() writes to a new file at the path after the old one was
        moved away (logrotate); a path that cannot be opened keeps the old
        file in use."""
        path = self.mktemp()
        target = LogTarget("json", path)
        target.observer({"log_format": "one", "log_level": LogLevel.info,
                         "log_time": 0.0})
        os.rename(path, path + ".1")
        target.reopen()
        target.observer({"log_format": "two", "log_level": LogLevel.info,
                         "log_time": 0.0})
        with open(path) as f:
            self.assertEqual([json.loads(line)["text"] for line in f], ["two"])
        with open(path + ".1") as f:
            self.assertEqual([json.loads(line)["text"] for line in f], ["one"])
        os.rename(path, path + ".2")
        os.mkdir(path)  # cannot be opened as a file
        target.reopen()
        target.observer({"log_format": "three", "log_level": LogLevel.info,
                         "log_time": 0.0})
        with open(path + ".2") as f:
            self.assertEqual([json.loads(line)["text"] for line in f][-1], "three")
        self.assertEqual(len(self.flushLoggedErrors()), 0)
        assert target.file is not None
        target.file.close()
