"""Front ends behind a proxy: the ``haproxy:`` endpoint prefix, made to fit.

Twisted's ``haproxy:`` endpoints (L{twisted.protocols.haproxy}) wrap each
connection in a protocol that reads the PROXY header (v1 or v2) and then
answers C{getPeer()} with the client address from it.  But the wrapper
connects the protocol inside at once, before the header has arrived: a
protocol that reads its peer in C{connectionMade}, as L{LineProtocol} does
for its log lines and the per-address limit, would see the proxy's address.

L{GatedEndpoint} puts a L{Gate} between the two: the front end's protocol is
built and connected only when the first bytes after the header arrive, with
the PROXY wrapper as its transport, so that from C{connectionMade} on
C{getPeer()} is the real client.  Both of presence's protocols wait for the
client to speak first (a login line, an HTTP request), so nothing is lost by
waiting.  Then the gate steps out of the way: the wrapper hands the bytes
straight to the protocol.

What the gate adds besides:

  - a connection that sends nothing for C{timeout} seconds (the login
    timeout) is closed without a byte;
  - at most C{limit} connections (C{--max-connections}) may wait so at once;
    more are closed at once, so that connections that never speak cannot
    hold file descriptors beyond what presence would hold for sessions.

Twisted itself closes, without a byte, a connection that starts with
anything but a PROXY header, or with a header it cannot parse.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IListeningPort,
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    IStreamServerEndpoint,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

PREFIX = "haproxy:"


class Gate(Protocol):
    """Waits for the first bytes after the PROXY header, then connects the
    front end's protocol to the PROXY wrapper and steps aside."""

    factory: GateFactory
    transport: Any  # twisted.protocols.haproxy's wrapper (a ProtocolWrapper)

    def __init__(self) -> None:
        self.inner: IProtocol | None = None
        self._timer: IDelayedCall | None = None
        self._waiting = False

    def connectionMade(self) -> None:
        factory = self.factory
        if factory.waiting >= factory.limit:
            self.transport.abortConnection()
            return
        factory.waiting += 1
        self._waiting = True
        self._timer = factory.clock.callLater(factory.timeout, self._expire)

    def _settle(self) -> None:
        if self._waiting:
            self._waiting = False
            self.factory.waiting -= 1
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _expire(self) -> None:
        self._timer = None
        self._settle()
        self.transport.abortConnection()

    def dataReceived(self, data: bytes) -> None:
        inner = self.inner
        if inner is None:
            if not self._waiting:
                return  # refused or expired: the connection is going
            self._settle()
            transport = self.transport
            peer: IAddress = transport.getPeer()  # the client's, from the header
            inner = self.factory.wrapped.buildProtocol(peer)
            if inner is None:
                transport.loseConnection()
                return
            self.inner = inner
            # From now on the wrapper talks to the protocol itself.
            if getattr(transport, "wrappedProtocol", None) is self:
                transport.wrappedProtocol = inner
            inner.makeConnection(transport)
        inner.dataReceived(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._settle()
        if self.inner is not None:
            self.inner.connectionLost(reason)


class GateFactory(Factory):
    """Builds a L{Gate} per connection in front of C{wrapped}'s protocols."""

    protocol = Gate  # type: ignore[assignment]
    noisy = False

    def __init__(self, wrapped: Any, clock: IReactorTime, timeout: float,
                 limit: int) -> None:
        self.wrapped = wrapped
        self.clock = clock
        self.timeout = timeout
        self.limit = limit
        self.waiting = 0  # gates waiting for their first bytes

    def logPrefix(self) -> str:
        prefix: str = self.wrapped.logPrefix()
        return prefix

    def doStart(self) -> None:
        self.wrapped.doStart()

    def doStop(self) -> None:
        self.wrapped.doStop()


@implementer(IStreamServerEndpoint)
class GatedEndpoint:
    """A ``haproxy:`` endpoint whose protocols are connected once the client
    address is known (see the module docstring)."""

    def __init__(self, endpoint: IStreamServerEndpoint, clock: IReactorTime,
                 timeout: float, limit: int) -> None:
        self.endpoint = endpoint
        self.clock = clock
        self.timeout = timeout
        self.limit = limit

    def listen(self, protocolFactory: IProtocolFactory) -> Deferred[IListeningPort]:
        return self.endpoint.listen(
            GateFactory(protocolFactory, self.clock, self.timeout, self.limit))


def is_proxied(description: str) -> bool:
    """Whether an endpoint string has the ``haproxy:`` prefix."""
    return description.startswith(PREFIX)
