"""L{PresenceFactory}: the registry, the configuration and the connection limits."""

from __future__ import annotations

from dataclasses import dataclass

from twisted.internet import defer
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.interfaces import IAddress, IReactorTime
from twisted.internet.protocol import ServerFactory
from twisted.logger import Logger

from presence.core.registry import Registry
from presence.core.timers import Deadlines
from presence.server.protocol import PresenceProtocol
from presence.wire.errors import ErrorCode, ProtocolError
from presence.wire.tokens import TokenVerifier

MIB = 1024 * 1024


@dataclass(frozen=True)
class Config:
    timeout: float = 15.0
    offline_grace: float = 0.0
    mutual: bool = False
    max_line: int = MIB
    max_friends: int = 10_000
    max_connections: int = 20_000
    max_per_ip: int = 1_000
    max_sessions: int = 32
    max_buffer: int = MIB
    # Pings and timeouts may fire this much late, so that one wakeup serves
    # many connections (presence.core.timers).
    timer_slack: float = 0.0


def describe(address: IAddress) -> str:
    if isinstance(address, (IPv4Address, IPv6Address)):
        return f"{address.host}:{address.port}"
    if isinstance(address, UNIXAddress):
        name = address.name
        return f"unix:{name.decode() if isinstance(name, bytes) else name or ''}"
    return str(address)


class PresenceFactory(ServerFactory):
    protocol = PresenceProtocol  # type: ignore[assignment]
    log = Logger()
    noisy = False

    def __init__(
        self,
        clock: IReactorTime,
        config: Config | None = None,
        verifier: TokenVerifier | None = None,
    ) -> None:
        self.clock = clock
        self.config = config or Config()
        self.verifier = verifier
        self.registry = Registry(
            clock, offline_grace=self.config.offline_grace, mutual=self.config.mutual
        )
        self.deadlines = Deadlines(clock, self.config.timer_slack)
        self.connections: set[PresenceProtocol] = set()
        self._per_ip: dict[str, int] = {}
        self._stopping = False
        self._all_gone: list[defer.Deferred[None]] = []

    # -- connection accounting -----------------------------------------------

    def connection_made(self, proto: PresenceProtocol) -> str:
        """Count a new connection in; return a printable peer address."""
        self.connections.add(proto)
        peer = proto.transport.getPeer()
        host = proto.host = _host(peer)
        if host is not None:
            self._per_ip[host] = self._per_ip.get(host, 0) + 1
        return describe(peer)

    def refusal(self, proto: PresenceProtocol) -> str:
        """Why this new connection must be refused (error 16), or ""."""
        if self._stopping:
            return "server shutting down"
        if len(self.connections) > self.config.max_connections:
            return f"server holds {self.config.max_connections}"
        host = proto.host
        if host is not None and self._per_ip[host] > self.config.max_per_ip:
            return f"{self.config.max_per_ip} from {host}"
        return ""

    def connection_lost(self, proto: PresenceProtocol) -> None:
        if proto not in self.connections:
            return
        self.connections.discard(proto)
        host = proto.host
        if host is not None:
            left = self._per_ip[host] - 1
            if left:
                self._per_ip[host] = left
            else:
                del self._per_ip[host]
        if not self.connections and self._all_gone:
            waiting, self._all_gone = self._all_gone, []
            for d in waiting:
                d.callback(None)

    # -- shutdown ------------------------------------------------------------

    def shutdown(self) -> defer.Deferred[None]:
        """Send every session error 15 and close it; fire when all are gone."""
        self._stopping = True
        self.registry.stop()
        d: defer.Deferred[None] = defer.Deferred()
        if not self.connections:
            d.callback(None)
            return d
        self._all_gone.append(d)
        for proto in list(self.connections):
            proto.fatal(ProtocolError(ErrorCode.SERVER_SHUTTING_DOWN))
        return d


def _host(address: IAddress) -> str | None:
    if isinstance(address, (IPv4Address, IPv6Address)):
        return address.host
    return None
