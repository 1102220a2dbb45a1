"""Cluster options and Redis URLs, and the codec of states (no Redis needed)."""

from __future__ import annotations

from twisted.python import usage
from twisted.trial import unittest

from presence.cluster import options as cluster
from presence.cluster.bus import RedisBus
from presence.cluster.codec import (
    decode_event,
    decode_state,
    encode_listed,
    encode_share,
    format_at,
    share_kept,
)
from presence.cluster.connection import RedisAddress
from presence.core.interfaces import Share, UserState


class Options(cluster.ClusterOptions, usage.Options):
    optParameters = [["port", "p", "tcp:8081", "where to listen"]]

    def postOptions(self) -> None:
        cluster.check(self)


def parse(*argv: str) -> Options:
    opts = Options()
    opts.parseOptions(list(argv))
    return opts


class RedisURLs(unittest.TestCase):
    def test_full(self) -> None:
        """User, password (percent-decoded), host, port and database."""
        a = RedisAddress.parse("redis://me:p%40ss@redis.example:6380/3")
        self.assertEqual(
            a, RedisAddress("redis.example", 6380, 3, "p@ss", "me", False)
        )

    def test_defaults(self) -> None:
        """Port 6379, database 0, no password, no TLS."""
        self.assertEqual(RedisAddress.parse("redis://h"), RedisAddress("h"))

    def test_password_only_and_tls(self) -> None:
        """redis://:password@host and rediss:// (TLS)."""
        a = RedisAddress.parse("rediss://:secret@10.0.0.5:7000/1")
        self.assertEqual(
            (a.host, a.port, a.db, a.password, a.username, a.tls),
            ("10.0.0.5", 7000, 1, "secret", None, True),
        )

    def test_ipv6(self) -> None:
        """An IPv6 literal in brackets."""
        self.assertEqual(RedisAddress.parse("redis://[::1]:7001").host, "::1")

    def test_str_hides_the_password(self) -> None:
        """The address as logged has no password."""
        text = str(RedisAddress.parse("redis://:hunter2@h:1/2"))
        self.assertEqual(text, "redis://:***@h:1/2")

    def test_unix(self) -> None:
        """unix:// names a socket path, with credentials and ?db=N; printed
        without the password."""
        a = RedisAddress.parse("unix://u:p%40w@/run/redis/redis.sock?db=3")
        self.assertEqual((a.path, a.db, a.username, a.password),
                         ("/run/redis/redis.sock", 3, "u", "p@w"))
        self.assertEqual(str(a), "unix://u:***@/run/redis/redis.sock?db=3")
        plain = RedisAddress.parse("unix:///tmp/r.sock")
        self.assertEqual((plain.path, plain.db, plain.password), ("/tmp/r.sock", 0,
                                                                 None))
        self.assertEqual(str(plain), "unix:///tmp/r.sock")
        for url in ("unix://host/tmp/r.sock", "unix:tmp/r.sock",
                    "unix:///tmp/r.sock?db=x", "unix:///tmp/r.sock?timeout=1"):
            with self.assertRaises(ValueError, msg=url):
                RedisAddress.parse(url)

    def test_bad(self) -> None:
        """Other schemes, a bad port, a non-numeric database, a query: refused."""
        for url in (
            "http://h", "h:6379", "redis://h:port", "redis://h/db0",
            "redis://h?timeout=1", "redis://h:99999",
        ):
            with self.assertRaises(ValueError, msg=url):
                RedisAddress.parse(url)


class ClusterOptionParsing(unittest.TestCase):
    def test_without_redis(self) -> None:
        """No --redis: no bus (one process, in memory)."""
        opts = parse()
        self.assertIsNone(opts["redis"])
        self.assertIsNone(cluster.build_bus(opts))

    def test_with_redis(self) -> None:
        """--redis, --node-id and --node-ttl build a RedisBus with them."""
        opts = parse("--redis", "redis://127.0.0.1:7/2", "--node-id", "n1",
                     "--node-ttl", "4.5")
        bus = cluster.build_bus(opts)
        assert isinstance(bus, RedisBus)
        self.assertEqual((bus.node, bus.ttl), ("n1", 4.5))
        self.assertEqual(bus.address, RedisAddress("127.0.0.1", 7, 2))
        self.assertEqual(bus.interval, 0.45)
        default = cluster.build_bus(parse("--redis", "redis://h"))
        assert default is not None
        self.assertEqual((default.interval, default.batch_delay), (0.5, 0.0))
        batched = cluster.build_bus(parse("--redis", "redis://h",
                                          "--redis-batch-ms", "2.5"))
        assert batched is not None
        self.assertEqual(batched.batch_delay, 0.0025)

    def test_default_node_id(self) -> None:
        """Without --node-id the node is hostname:pid; ttl 10 s."""
        bus = cluster.build_bus(parse("--redis", "redis://h"))
        assert bus is not None
        self.assertRegex(bus.node, r"^.+:\d+$")
        self.assertEqual(bus.ttl, 10.0)

    def test_errors(self) -> None:
        """Bad URL, short TTL, node id without --redis or with spaces, a
        negative batch delay or one without --redis."""
        for argv in (
            ["--redis", "http://h"],
            ["--redis", "redis://h", "--node-ttl", "0.5"],
            ["--redis", "redis://h", "--node-ttl", "nan"],
            ["--node-id", "n1"],
            ["--redis", "redis://h", "--node-id", "has space"],
            ["--redis", "redis://h", "--redis-batch-ms", "-1"],
            ["--redis-batch-ms", "2"],
        ):
            with self.assertRaises(usage.UsageError, msg=argv):
                parse(*argv)


class Codec(unittest.TestCase):
    def test_listed_sorted_as_strings(self) -> None:
        """Ids are sorted as the Lua scripts sort them (as strings)."""
        self.assertEqual(encode_listed(frozenset({2, 10, 100, 9})), "10,100,2,9")

    def test_share(self) -> None:
        """Sessions, ghost end, since, listed, then the last status write
        (text last: it may hold the separator)."""
        self.assertEqual(
            encode_share(Share(2, frozenset({3, 12}), 0.0)),
            "2|0.000000|0.000000|12,3|0.000000||0|",
        )
        self.assertEqual(
            encode_share(Share(0, frozenset(), 5.5), 1.0, ("away", True, "a|b", 2.0)),
            "0|5.500000|1.000000||2.000000|away|1|a|b",
        )

    def test_format_at(self) -> None:
        """Times are written with six decimals, whatever was formatted
        before (the last one is remembered)."""
        for at in (0.0, 1.5, 1.5, 0.0, 1733550000.123456, 2.0,
                   1733550000.123456, 1e-7, 1e-7):
            self.assertEqual(format_at(at), f"{at:.6f}")

    def test_share_kept(self) -> None:
        """The length of a share's first four fields: what stays when only
        its status write changes."""
        encoded = encode_share(Share(2, frozenset({3}), 0.0), 1.0,
                               ("away", True, "a|b", 2.0))
        kept = share_kept(encoded)
        self.assertEqual(encoded[:kept], "2|0.000000|1.000000|3|")
        again = encode_share(Share(2, frozenset({3}), 0.0), 1.0,
                             ("busy", False, "", 3.0))
        self.assertEqual(again[:share_kept(again)], encoded[:kept])

    def test_event(self) -> None:
        """An event: text last (it may hold the separator)."""
        state = decode_event(b"42|17|1|away|2|12.5|3,12|lunch|later")
        self.assertEqual(
            state, UserState(42, True, "away", "lunch|later", frozenset({3, 12}),
                             2, 12.5, 17)
        )

    def test_stored(self) -> None:
        """A user's stored state (the event without its id): present, and a
        tombstone, which is the absent state with its version."""
        self.assertEqual(
            decode_state(7, b"9|1|busy|1|3.0||"),
            UserState(7, True, "busy", "", frozenset(), 1, 3.0, 9),
        )
        tomb = decode_state(7, b"10|0|offline|0|4.0||")
        self.assertEqual(tomb, UserState(7, False, "offline", "", frozenset(), 0,
                                         4.0, 10))
