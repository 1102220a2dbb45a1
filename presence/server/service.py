"""L{PresenceService}: listen on an endpoint, and shut down politely."""

from __future__ import annotations

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.interfaces import (
    IListeningPort,
    IReactorCore,
    IStreamServerEndpoint,
)
from twisted.logger import Logger
from twisted.python.failure import Failure

from presence.server.lines import LineFactory

# Sessions get this long to take their error 15 before they are aborted, so
# that the process exits well within the 5 s a supervisor allows.
SHUTDOWN_GRACE = 2.0


class PresenceService(Service):
    log = Logger()

    def __init__(
        self,
        endpoint: IStreamServerEndpoint,
        factory: LineFactory,
        reactor: IReactorCore,
        scheme: str = "tcp",
    ) -> None:
        self.endpoint = endpoint
        self.factory = factory
        self.reactor = reactor
        self.scheme = scheme
        self.port: IListeningPort | None = None
        self.listening: defer.Deferred[IListeningPort] = defer.Deferred()

    def startService(self) -> None:
        super().startService()
        d = self.endpoint.listen(self.factory)
        d.addCallbacks(self._listening, self._failed)

    def _listening(self, port: IListeningPort) -> IListeningPort:
        self.port = port
        self.log.info("presence listening on {address}", address=self.address)
        self.listening.callback(port)
        return port

    def _failed(self, failure: Failure) -> None:
        self.log.critical(
            "presence cannot listen: {err}", err=failure.getErrorMessage()
        )
        self.listening.errback(failure)
        self.listening.addErrback(lambda _: None)
        self.reactor.stop()

    @property
    def address(self) -> str:
        assert self.port is not None
        host = self.port.getHost()
        if isinstance(host, (IPv4Address, IPv6Address)):
            h = f"[{host.host}]" if isinstance(host, IPv6Address) else host.host
            return f"{self.scheme}:{h}:{host.port}"
        if isinstance(host, UNIXAddress):
            name = host.name
            return f"unix:{name.decode() if isinstance(name, bytes) else name}"
        return str(host)

    @defer.inlineCallbacks
    def stopService(self):  # type: ignore[no-untyped-def]
        super().stopService()
        if self.port is not None:
            yield self.port.stopListening()
        server = self.factory.server
        n = len(server.connections)
        self.log.info("presence stopping: closing {n} connections", n=n)
        gone = server.shutdown()
        timer = server.clock.callLater(SHUTDOWN_GRACE, server.abort_all)
        yield gone
        if timer.active():
            timer.cancel()
        self.log.info("presence stopped")
