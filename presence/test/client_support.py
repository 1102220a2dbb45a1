"""Test doubles for the client library: an endpoint whose connections are
StringTransports, driven by hand, and a server's side of each connection."""

from __future__ import annotations

from typing import Any

import orjson
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.interfaces import (
    IProtocol,
    IProtocolFactory,
    IStreamClientEndpoint,
)
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from zope.interface import implementer


class Peer:
    """The server's end of one fake connection."""

    def __init__(self, proto: IProtocol, transport: StringTransport) -> None:
        self.proto = proto
        self.transport = transport
        self.lost = False

    def say(self, **message: Any) -> None:
        self.proto.dataReceived(orjson.dumps(message) + b"\n")

    def say_raw(self, data: bytes) -> None:
        self.proto.dataReceived(data)

    def heard(self) -> list[dict[str, Any]]:
        """The lines the client wrote since the last call, parsed."""
        data = self.transport.value()
        self.transport.clear()
        return [orjson.loads(line) for line in data.splitlines()]

    def welcome(self, user_id: int = 1, timeout: float = 15) -> None:
        self.heard()
        self.say(type="welcome", user_id=user_id, timeout=timeout)

    @property
    def closing(self) -> bool:
        return bool(self.transport.disconnecting)

    @property
    def aborted(self) -> bool:
        return bool(self.transport.disconnected)

    def close(self) -> None:
        """The connection is gone (after either side closed it)."""
        if not self.lost:
            self.lost = True
            self.proto.connectionLost(Failure(ConnectionDone()))


@implementer(IStreamClientEndpoint)
class FakeEndpoint:
    """Each C{connect} waits until the test calls L{accept} or L{refuse}."""

    def __init__(self) -> None:
        self.attempts: list[tuple[IProtocolFactory, Deferred[IProtocol]]] = []

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        attempt: Deferred[IProtocol] = Deferred()
        self.attempts.append((factory, attempt))
        return attempt

    def accept(self) -> Peer:
        factory, attempt = self.attempts[-1]
        proto = factory.buildProtocol(None)  # type: ignore[arg-type]
        assert proto is not None
        transport = StringTransport()
        proto.makeConnection(transport)
        attempt.callback(proto)
        return Peer(proto, transport)

    def refuse(self) -> None:
        _, attempt = self.attempts[-1]
        attempt.errback(ConnectionRefusedError("Connection refused"))
