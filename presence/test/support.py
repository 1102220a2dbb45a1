"""Test doubles: a factory on a fake clock, and clients on StringTransports."""

from __future__ import annotations

from typing import Any

import orjson
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from presence.server.config import Config
from presence.server.context import Server
from presence.server.lines import LineFactory, LineProtocol
from presence.wire.tokens import TokenVerifier


def one_turn(clock: Clock) -> int:
    """Run the calls due now, but not those they schedule: one reactor turn.

    (C{Clock.advance} would also run calls scheduled for now while it runs.)
    Returns how many ran.
    """
    now = clock.seconds()
    due = [call for call in clock.calls if call.getTime() <= now]
    for call in due:
        clock.calls.remove(call)
        call.called = 1
        call.func(*call.args, **call.kw)
    return len(due)


def line_factory(
    clock: Clock, config: Config | None = None, verifier: TokenVerifier | None = None
) -> LineFactory:
    """The TCP front end on a fresh L{Server}."""
    return LineFactory(Server(clock, config, verifier))


class FakeClient:
    """One connection to the protocol under test, seen from the client side."""

    def __init__(self, factory: LineFactory, host: str, port: int) -> None:
        self.transport = StringTransport(
            peerAddress=IPv4Address("TCP", host, port),
            hostAddress=IPv4Address("TCP", "10.0.0.254", 8081),
        )
        proto = factory.buildProtocol(self.transport.getPeer())
        assert isinstance(proto, LineProtocol)
        self.proto: LineProtocol = proto
        self.proto.makeConnection(self.transport)
        self.lost: bool = False
        self.snapshot: list[tuple[int, bool, str]] = []

    def send(self, *messages: Any) -> None:
        """Send JSON objects (or raw bytes, as they are) in one write."""
        data = b"".join(
            m if isinstance(m, bytes) else orjson.dumps(m) + b"\n" for m in messages
        )
        self.proto.dataReceived(data)

    def received(self) -> list[dict[str, Any]]:
        """Every line written since the last call, parsed."""
        data = self.transport.value()
        self.transport.clear()
        lines = data.split(b"\n")
        assert lines[-1] == b"", f"unterminated line: {data!r}"
        return [orjson.loads(line) for line in lines[:-1]]

    def events(self) -> list[tuple[int, bool, str]]:
        """The presence events received, as (user_id, online, status)."""
        return [
            (m["user_id"], m["online"], m["status"])
            for m in self.received()
            if m["type"] == "presence"
        ]

    @property
    def closed(self) -> bool:
        return bool(self.transport.disconnecting)

    @property
    def aborted(self) -> bool:
        return bool(self.transport.disconnected)

    def lose(self) -> None:
        """The connection goes away (the client closed it, or the close finished)."""
        if not self.lost:
            self.lost = True
            self.proto.connectionLost(Failure(ConnectionDone()))


class Harness:
    """A factory on a fake clock, and a way to open connections to it."""

    def __init__(self, secret: bytes | None = None, **config: Any) -> None:
        self.clock = Clock()
        self.clock.advance(1_764_000_000)
        self.factory = line_factory(
            self.clock,
            Config(**config),
            TokenVerifier(secret) if secret is not None else None,
        )
        self.registry = self.factory.server.registry
        self._port = 40000

    def connect(self, host: str = "192.0.2.1") -> FakeClient:
        self._port += 1
        return FakeClient(self.factory, host, self._port)

    def login(self, user_id: int, friends: list[int] | None = None, **fields: Any
              ) -> FakeClient:
        """A logged-in client; its welcome and snapshot are read into it."""
        client = self.connect()
        client.send({"user_id": user_id, "friends": friends or [], **fields})
        first = client.received()
        assert first and first[0]["type"] == "welcome", first
        client.snapshot = [
            (m["user_id"], m["online"], m["status"]) for m in first[1:]
        ]
        return client
