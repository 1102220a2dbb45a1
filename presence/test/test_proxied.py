"""The gate behind ``haproxy:`` endpoints (L{presence.server.proxied}), with
Twisted's own PROXY wrapper, on StringTransports and a fake clock."""

from __future__ import annotations

from typing import Any

import orjson
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.protocols.haproxy._wrapper import HAProxyWrappingFactory
from twisted.python.failure import Failure
from twisted.trial import unittest

from presence.server.config import Config
from presence.server.lines import LineProtocol
from presence.server.proxied import GateFactory
from presence.server.writer import supported
from presence.test.support import line_factory

HEADER = b"PROXY TCP4 203.0.113.7 127.0.0.1 5555 8081\r\n"
LOGIN = orjson.dumps({"user_id": 1, "friends": []}) + b"\n"


class GateTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.lines = line_factory(self.clock, Config(timeout=10.0))
        self.gates = GateFactory(self.lines, self.clock, timeout=10.0, limit=2)
        self.factory = HAProxyWrappingFactory(self.gates)

    def connect(self) -> tuple[Any, StringTransport]:
        """A connection from the proxy at 127.0.0.1: its wrapper, its socket."""
        transport = StringTransport(
            peerAddress=IPv4Address("TCP", "127.0.0.1", 40000),
            hostAddress=IPv4Address("TCP", "127.0.0.1", 8081),
        )
        wrapper = self.factory.buildProtocol(transport.getPeer())
        wrapper.makeConnection(transport)
        return wrapper, transport

    def inner(self, wrapper: Any) -> LineProtocol:
        proto = wrapper.wrappedProtocol
        self.assertIsInstance(proto, LineProtocol)
        assert isinstance(proto, LineProtocol)
        return proto

    def test_session_sees_the_address_from_the_header(self) -> None:
        """The line protocol is connected after the header, so its log
        address and its per-address host are the client's, not the proxy's;
        header and login may come in one read."""
        wrapper, transport = self.connect()
        self.assertEqual(len(self.lines.server.connections), 0)
        wrapper.dataReceived(HEADER + LOGIN)
        proto = self.inner(wrapper)
        self.assertEqual(proto.address, "203.0.113.7:5555")
        self.assertEqual(proto.host, "203.0.113.7")
        self.assertEqual(len(self.lines.server.connections), 1)
        self.lines.server.outbox.flush()  # the turn ends
        self.assertIn(b'"welcome"', transport.value())

    def test_header_alone_then_login(self) -> None:
        """A header in a read of its own: the protocol waits for the login."""
        wrapper, transport = self.connect()
        wrapper.dataReceived(HEADER)
        self.assertNotIsInstance(wrapper.wrappedProtocol, LineProtocol)
        self.assertEqual(len(self.lines.server.connections), 0)
        wrapper.dataReceived(LOGIN)
        self.assertEqual(self.inner(wrapper).address, "203.0.113.7:5555")
        self.lines.server.outbox.flush()  # the turn ends
        self.assertIn(b'"welcome"', transport.value())

    def test_writes_and_backpressure_through_the_wrapper(self) -> None:
        """Behind the wrapper the writer's fast path is off (plain
        transport.write), and backpressure still goes both ways: the socket
        pauses the session, and the session pauses reading the socket."""
        wrapper, transport = self.connect()
        wrapper.dataReceived(HEADER + LOGIN)
        proto = self.inner(wrapper)
        self.assertFalse(supported(proto.transport))
        self.assertIs(transport.producer, proto)
        self.assertTrue(transport.streaming)
        transport.clear()
        proto.write(b"x\n")
        self.assertEqual(transport.value(), b"x\n")
        session = proto.session
        self.assertFalse(session._paused)
        proto.pauseProducing()  # as the socket does, its producer being proto
        self.assertTrue(session._paused)
        proto.resumeProducing()
        self.assertFalse(session._paused)
        proto.pause_reading()
        self.assertEqual(transport.producerState, "paused")
        proto.resume_reading()
        self.assertEqual(transport.producerState, "producing")

    def test_silent_connection_is_closed(self) -> None:
        """A connection that sends nothing (or only the header) is aborted
        after the timeout, never having been a session."""
        for data in (b"", HEADER):
            wrapper, transport = self.connect()
            if data:
                wrapper.dataReceived(data)
            self.clock.advance(9.9)
            self.assertFalse(transport.disconnected)
            self.clock.advance(0.1)
            self.assertTrue(transport.disconnected)
            wrapper.connectionLost(Failure(ConnectionDone()))
            self.assertEqual(self.gates.waiting, 0)
        self.assertEqual(len(self.lines.server.connections), 0)

    def test_no_header_is_refused(self) -> None:
        """A connection that starts with anything but a PROXY header is
        closed by Twisted's wrapper without a byte and no session."""
        wrapper, transport = self.connect()
        wrapper.dataReceived(LOGIN)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(transport.value(), b"")
        wrapper.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(len(self.lines.server.connections), 0)
        self.assertEqual(self.gates.waiting, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_waiting_connections_are_bounded(self) -> None:
        """Past C{limit} connections waiting for their first bytes, a new
        one is aborted at once; a place frees when one speaks."""
        first, _ = self.connect()
        self.connect()
        _, third = self.connect()
        self.assertTrue(third.disconnected)
        first.dataReceived(HEADER + LOGIN)
        _, fourth = self.connect()
        self.assertFalse(fourth.disconnected)

    def test_lost_after_login_reaches_the_session(self) -> None:
        """The end of a connection reaches the line protocol (the session
        exits and is no longer counted)."""
        wrapper, _ = self.connect()
        wrapper.dataReceived(HEADER + LOGIN)
        self.assertEqual(len(self.lines.server.connections), 1)
        wrapper.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(len(self.lines.server.connections), 0)
