"""Hostile clients at the protocol level: timers and backpressure.

These pin down how the protocol behaves with Twisted's real contracts, which
the simpler fakes elsewhere do not reproduce: a FileDescriptor calls
C{pauseProducing} again on every write made while its buffer is full.
"""

from __future__ import annotations

from typing import Any

import orjson
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from presence.server.config import Config
from presence.server.lines import LineFactory, LineProtocol
from presence.test.support import line_factory
from presence.wire.errors import ErrorCode

# abstract.FileDescriptor.bufferSize: past this, the producer is paused.
TWISTED_BUFFER = 2**16


class FullTransport(StringTransport):
    """A transport whose peer never reads: nothing drains, and like
    C{abstract.FileDescriptor._maybePauseProducer} it pauses its streaming
    producer on every write that leaves more than 64 KiB queued."""

    def write(self, data: bytes) -> None:
        super().write(data)
        if (self.producer is not None and self.streaming
                and len(self.value()) > TWISTED_BUFFER):
            self.producer.pauseProducing()


def connect(factory: LineFactory, transport: StringTransport
            ) -> LineProtocol:
    proto = factory.buildProtocol(transport.getPeer())
    assert isinstance(proto, LineProtocol)
    proto.makeConnection(transport)
    return proto


def line(obj: dict[str, Any]) -> bytes:
    return orjson.dumps(obj) + b"\n"


class SlowConsumerTests(SynchronousTestCase):
    """A client that never reads costs the server at most --max-buffer bytes."""

    def test_repeated_pause_still_counts(self) -> None:
        """Twisted pauses the producer again on each write while its buffer
        is full; the bytes written meanwhile still add up to --max-buffer."""
        clock = Clock()
        factory = line_factory(clock, Config(max_buffer=10_000))
        addr = IPv4Address("TCP", "192.0.2.1", 1000)
        talker = connect(factory, StringTransport(peerAddress=addr))
        talker.dataReceived(line({"user_id": 2}))
        slow_transport = FullTransport(peerAddress=addr)
        slow = connect(factory, slow_transport)
        slow.dataReceived(line({"user_id": 1, "friends": [2]}))
        for i in range(2_000):  # ~600 KB toward the slow client
            talker.dataReceived(line(
                {"type": "status", "status": "away", "text": f"{i:08d}" + "y" * 248}
            ))
            if slow_transport.disconnecting:
                break
        self.assertTrue(slow_transport.disconnected, "not aborted")
        self.assertLess(len(slow_transport.value()), TWISTED_BUFFER + 10_000 + 1000)
        last = slow_transport.value().splitlines()[-1]
        self.assertEqual(orjson.loads(last)["error"], int(ErrorCode.SLOW_CONSUMER))


class LoginTimeoutTests(SynchronousTestCase):
    """Error 1 for "no login within timeout", whatever else the client sends."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.factory = line_factory(self.clock, Config(timeout=10))
        self.transport = StringTransport(
            peerAddress=IPv4Address("TCP", "192.0.2.1", 1000))
        self.proto = connect(self.factory, self.transport)

    def assertTimedOut(self) -> None:
        messages = [orjson.loads(m) for m in self.transport.value().splitlines()]
        self.assertEqual([m.get("error") for m in messages],
                         [int(ErrorCode.CLIENT_TIMEOUT)])
        self.assertTrue(self.transport.disconnecting)

    def test_partial_line(self) -> None:
        """Bytes of a login that never ends do not delay the login timeout."""
        for _ in range(9):
            self.clock.advance(1)
            self.proto.dataReceived(b" ")
        self.clock.advance(1)
        self.assertTimedOut()

    def test_blank_lines(self) -> None:
        """Blank lines before the login do not extend the login timeout."""
        for _ in range(9):
            self.clock.advance(1)
            self.proto.dataReceived(b"\r\n")
        self.clock.advance(1)
        self.assertTimedOut()
