"""The bus's Redis connections: direct writes, and replies read as they come.

The tests that need Redis start a redis-server on a free port (skipped where
it is missing, except in CI) and wait on replies, never on time.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import txredisapi
from twisted.internet import defer
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial import unittest

from presence.cluster.bus import RedisBus
from presence.cluster.connection import (
    CommandConnection,
    RedisAddress,
    SubscriberConnection,
    direct,
    encode,
    encode_text,
)
from presence.test.test_cluster_bus import RedisCase, async_test

if txredisapi.hiredis is None:
    HIREDIS = "txredisapi without hiredis: its own parser, not ours"
else:
    HIREDIS = ""


class Owner:
    """What a subscriber connection tells its bus, recorded."""

    def __init__(self) -> None:
        self.messages: list[tuple[bytes, bytes]] = []
        self.subscribes = 0

    def connection_ready(self, conn: Any) -> None:
        pass

    def connection_lost(self, conn: Any, reason: Failure) -> None:
        pass

    def message(self, channel: bytes, payload: bytes) -> None:
        self.messages.append((channel, payload))

    def subscribed(self) -> None:
        self.subscribes += 1

    def command_failed(self, error: Exception) -> None:
        raise AssertionError(error)


class Replies(unittest.SynchronousTestCase):
    if HIREDIS:
        skip = HIREDIS

    def subscriber(self) -> tuple[SubscriberConnection, Owner]:
        conn = SubscriberConnection(charset=None, convertNumbers=False)
        owner = Owner()
        conn.owner = owner
        conn.pongs = deque()
        return conn, owner

    def test_split_anywhere(self) -> None:
        """Events, a confirmation and a pong, cut at every byte: each is
        told once, in order, as bytes."""
        conn, owner = self.subscriber()
        pong: defer.Deferred[None] = defer.Deferred()
        conn.pongs.append(pong)
        stream = (
            encode((b"subscribe", b"{u:1}", 1))
            + encode((b"message", b"{u:1}", b"1|7|1|away|1|0||"))
            + encode((b"pong", b""))
            + encode((b"message", b"{u:2}", b"2|\xc3\xa9"))
        )
        for i in range(len(stream)):
            conn.dataReceived(stream[i:i + 1])
        self.assertEqual(owner.subscribes, 1)
        self.assertEqual(owner.messages, [(b"{u:1}", b"1|7|1|away|1|0||"),
                                          (b"{u:2}", b"2|\xc3\xa9")])
        self.assertTrue(pong.called)
        self.assertEqual(conn.received, 4)

    def test_many_in_one_read(self) -> None:
        """Several events in one read are all told, in order."""
        conn, owner = self.subscriber()
        conn.dataReceived(b"".join(
            encode((b"message", b"c", b"%d" % i)) for i in range(5)))
        self.assertEqual([p for _, p in owner.messages],
                         [b"0", b"1", b"2", b"3", b"4"])

    def test_error_reply(self) -> None:
        """An error reply to a command sent without waiting goes to the
        bus's command_failed; a waited one fails its Deferred."""
        conn = CommandConnection(charset=None, convertNumbers=False)
        failed: list[Exception] = []

        class Failing(Owner):
            def command_failed(self, error: Exception) -> None:
                failed.append(error)

        conn.owner = Failing()
        conn.waiting = deque()
        d: defer.Deferred[Any] = defer.Deferred()
        conn.waiting.extend([None, d])
        conn.dataReceived(b"-NOSCRIPT no script\r\n-ERR other\r\n")
        self.assertEqual([str(e) for e in failed], ["NOSCRIPT no script"])
        self.assertEqual(str(self.failureResultOf(d).value), "ERR other")


class Encoding(unittest.SynchronousTestCase):
    def test_text_as_bytes(self) -> None:
        """encode_text writes what encode writes, for ASCII and for text
        whose UTF-8 is longer than its characters."""
        for args in (
            ("EVALSHA", "ab" * 20, 1, "{u:5}:h", 5, "n/x", "", "1|2.000000|"),
            ("PUBLISH", "c", "caf\u00e9 \u2603", 3600),
            ("SET", "k", "a\r\nb"),
        ):
            self.assertEqual(encode_text(args), encode(args))


class FakeTransport(StringTransport):
    """A test transport that records whether the protocol reads."""

    def __init__(self) -> None:
        super().__init__()
        self.reading = True
        self.connected = True

    def stopReading(self) -> None:
        self.reading = False

    def startReading(self) -> None:
        self.reading = True


class ReadingOnDemand(unittest.SynchronousTestCase):
    def setUp(self) -> None:
        self.failed: list[Exception] = []
        failed = self.failed

        class Failing(Owner):
            def command_failed(self, error: Exception) -> None:
                failed.append(error)

        self.conn = CommandConnection(charset=None, convertNumbers=False)
        self.conn.owner = Failing()
        self.transport = FakeTransport()
        self.conn.makeConnection(self.transport)
        self.conn._ready = True  # (AUTH and SELECT done)
        self.conn._pausable = True  # as on a plain socket

    def test_stops_reading_when_nothing_awaited(self) -> None:
        """Once every awaited reply is in, the connection stops reading;
        replies to sends wait until a call or read_replies reads again,
        and their errors are told then."""
        self.conn.send("EVALSHA", "x", 0)
        self.conn.dataReceived(b":1\r\n")
        self.assertFalse(self.transport.reading)
        self.conn.send("EVALSHA", "x", 0)
        self.conn.send("EVALSHA", "x", 0)
        self.conn.read_replies()
        self.assertTrue(self.transport.reading)
        self.conn.dataReceived(b":1\r\n-NOSCRIPT gone\r\n")
        self.assertEqual([str(e) for e in self.failed], ["NOSCRIPT gone"])
        self.assertFalse(self.transport.reading)

    def test_reads_while_a_call_waits(self) -> None:
        """A call reads again, and reading goes on until its reply is in,
        however many replies to sends come first."""
        self.conn.send("EVALSHA", "x", 0)
        self.conn.dataReceived(b":1\r\n")
        self.conn.send("EVALSHA", "x", 0)
        d = self.conn.call("PING")
        self.assertTrue(self.transport.reading)
        self.conn.dataReceived(b":0\r\n")
        self.assertTrue(self.transport.reading)
        self.assertNoResult(d)
        self.conn.dataReceived(b"+PONG\r\n")
        self.assertEqual(self.successResultOf(d), b"PONG")
        self.assertFalse(self.transport.reading)

    def test_not_once_closing(self) -> None:
        """A connection being closed does not start reading again."""
        self.conn.send("EVALSHA", "x", 0)
        self.conn.dataReceived(b":1\r\n")
        self.transport.loseConnection()
        self.conn.read_replies()
        self.assertFalse(self.transport.reading)

    def test_only_on_plain_sockets(self) -> None:
        """On another transport (TLS) the connection reads all the time."""
        self.conn._pausable = False
        self.conn.send("EVALSHA", "x", 0)
        self.conn.dataReceived(b":1\r\n")
        self.assertTrue(self.transport.reading)


class Direct(unittest.SynchronousTestCase):
    def test_not_for_other_transports(self) -> None:
        """A transport that is not a plain TCP or Unix client connection
        (a test transport, TLS) gets Twisted's own writes."""
        self.assertFalse(direct(StringTransport()))
        conn = CommandConnection(charset=None, convertNumbers=False)
        conn.owner = Owner()
        transport = StringTransport()
        conn.makeConnection(transport)
        conn._ready = True  # (AUTH and SELECT done)
        conn.send("PING")
        self.assertEqual(transport.value(), b"*1\r\n$4\r\nPING\r\n")


class DirectOnRedis(RedisCase):
    @async_test
    async def test_direct_on_tcp_and_unix(self) -> None:
        """The bus's connections to Redis over TCP and over its Unix socket
        write on the socket directly."""
        a, _ = await self.node("a")
        assert a._cmd is not None and a._sub is not None
        self.assertTrue(a._cmd._direct)
        self.assertTrue(a._sub._direct)
        bus = RedisBus(RedisAddress.parse(self.redis.unix_url), "u")
        bus.startService()
        self.addCleanup(bus.stopService)
        await bus.when_up()
        assert bus._cmd is not None
        self.assertTrue(bus._cmd._direct)

    @async_test
    async def test_large_writes_keep_order(self) -> None:
        """A write the kernel does not take at once is queued, and what
        follows waits behind it: replies come in order, values whole."""
        a, _ = await self.node("a")
        cmd = a._cmd
        assert cmd is not None
        big = b"x" * (16 << 20)
        first = cmd.call("SET", "k", big)
        t = cmd.transport
        self.assertTrue(t.dataBuffer or t._tempDataLen)  # the queue was used
        calls = [cmd.call("APPEND", "k", b"%d" % i) for i in range(10)]
        got = cmd.call("GET", "k")
        self.assertEqual(await first, b"OK")
        lengths = [await d for d in calls]
        self.assertEqual(lengths, [len(big) + i + 1 for i in range(10)])
        self.assertEqual(await got, big + b"0123456789")
