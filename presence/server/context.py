"""L{Server}: what every front end of one process shares.

One registry, one deadline heap, one token verifier and one set of
connection limits serve the TCP, v0 and WebSocket front ends alike, so that
the limits hold for the process whichever way clients come in.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.internet import defer
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IAddress, IReactorTime

from presence.core.interfaces import IBus
from presence.core.registry import Registry
from presence.core.timers import Deadlines
from presence.server.admin import Metrics
from presence.server.config import Config
from presence.server.logs import RefusalLimiter, ipv6_text
from presence.server.outbox import Outbox
from presence.wire.errors import ErrorCode, ProtocolError
from presence.wire.tokens import TokenVerifier

if TYPE_CHECKING:
    from presence.server.session import Session


def host_of(address: IAddress) -> str | None:
    """The IP address to count per-address limits by (None: not counted)."""
    if isinstance(address, IPv4Address):
        return address.host
    if isinstance(address, IPv6Address):
        return ipv6_text(address.host)
    return None


class Server:
    """The registry, configuration, timers, tokens and connection limits."""

    def __init__(
        self,
        clock: IReactorTime,
        config: Config | None = None,
        verifier: TokenVerifier | None = None,
        bus: IBus | None = None,
    ) -> None:
        self.clock = clock
        self.config = config = config or Config()
        self.verifier = verifier
        # (session imports this module: imported here, not at the top.)
        from presence.server.session import fanout_for, flush_all

        # Sessions with lines to write when this reactor turn ends.
        self.outbox = Outbox(clock, flush_all)
        self.metrics = Metrics()
        self.registry = Registry(
            clock,
            offline_grace=config.offline_grace,
            mutual=config.mutual,
            bus=bus,
            fanout=fanout_for(self),
        )
        self.deadlines = Deadlines(clock, config.timer_slack)
        # Refusals are logged once per address and interval, then summed up.
        self.refusals = RefusalLimiter(clock)
        self.connections: set[Session] = set()
        # Messages and KiB handled so far; with the deliveries (counted in
        # metrics only: one addition per delivery, not two) the work that
        # fair share counts a connection's turn in (L{work}).
        self.line_work = 0
        # Bytes of unfinished input held for all connections (the framers').
        self.unfinished = 0
        # Bytes written to clients that are not reading (Twisted holds them).
        self.unsent = 0
        self._per_ip: dict[str, int] = {}
        self._stopping = False
        self._all_gone: list[defer.Deferred[None]] = []

    @property
    def work(self) -> int:
        """Deliveries, messages and KiB handled so far."""
        return self.line_work + self.metrics.deliveries

    # -- connection accounting -----------------------------------------------

    def connection_made(self, session: Session) -> str:
        """Count a new connection in; return why it must be refused, or ""."""
        self.connections.add(session)
        host = session.host
        if host is not None:
            self._per_ip[host] = self._per_ip.get(host, 0) + 1
        if self._stopping:
            return "server shutting down"
        if len(self.connections) > self.config.max_connections:
            return f"server holds {self.config.max_connections} (--max-connections)"
        if host is not None and self._per_ip[host] > self.config.max_per_ip:
            return f"{self.config.max_per_ip} from {host} (--max-per-ip)"
        return ""

    def connection_lost(self, session: Session) -> None:
        if session not in self.connections:
            return
        self.connections.discard(session)
        host = session.host
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

    @property
    def stopping(self) -> bool:
        return self._stopping

    def shutdown(self) -> defer.Deferred[None]:
        """Send every session error 15 and close it; fire when all are gone."""
        self._stopping = True
        self.registry.stop()
        self.refusals.flush()
        d: defer.Deferred[None] = defer.Deferred()
        if not self.connections:
            d.callback(None)
            return d
        self._all_gone.append(d)
        for session in list(self.connections):
            session.fatal(ProtocolError(ErrorCode.SERVER_SHUTTING_DOWN))
        return d

    def disconnect(self, uid: int) -> int:
        """End every session of C{uid} here with error 17; how many there were."""
        sessions = [s for s in self.connections if s.user_id == uid]
        for session in sessions:
            session.fatal(ProtocolError(ErrorCode.DISCONNECTED, "by the operator"))
        return len(sessions)

    def abort_all(self) -> None:
        """Abort whatever connection is still open (the shutdown took too long)."""
        for session in list(self.connections):
            session.peer.abort()
