"""The server as a tree of services: front ends that listen, and a polite stop.

L{PresenceService} is a C{MultiService}.  Its children are one L{FrontEnd}
per listening endpoint (the TCP line protocol today; a WebSocket and an admin
HTTP front end later, one C{add_front_end} call each) and helpers such as the
signal handlers.  A front end binds in C{privilegedStartService}: twistd calls
that before it gives up root for ``--uid``/``--gid``, so a port below 1024
works with an unprivileged server.

A front end that cannot listen stops the start-up: it logs the reason at
level critical and raises L{CannotListen}, which twistd turns into a non-zero
exit, in the foreground (``-n``) and as a daemon (the parent process exits 1
and prints the reason).

On stop (SIGTERM, SIGINT): every front end stops listening, every session
gets error 15, those that have not gone after L{SHUTDOWN_GRACE} seconds are
aborted, and "presence stopped" is the last line, after each session's exit
line.
"""

from __future__ import annotations

import atexit
import os
import sys
from collections.abc import Callable
from typing import Any

from twisted.application.service import IServiceCollection, MultiService, Service
from twisted.internet import defer
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import (
    IListeningPort,
    IReactorCore,
    IReactorTime,
    IStreamServerEndpoint,
)
from twisted.internet.protocol import Factory
from twisted.internet.task import deferLater
from twisted.logger import ILogObserver, Logger
from twisted.python.components import Componentized
from twisted.python.failure import Failure

from presence.server.logs import format_peer
from presence.server.proxied import PREFIX, is_proxied

# Sessions get this long to take their error 15 before they are aborted, so
# that the process exits well within the 5 s a supervisor allows.
SHUTDOWN_GRACE = 2.0


class CannotListen(SystemExit, Exception):
    """A front end could not listen: the server must not run.

    An C{Exception}, so that twistd's daemon start-up reports it to the
    waiting parent, which exits 1 and prints it; a C{SystemExit} with status
    1, so that in the foreground the process ends with status 1 and no
    traceback (the reason is in the log, at level critical, either way).
    """

    def __init__(self, reason: str) -> None:
        super().__init__(1)
        self.reason = reason

    def __str__(self) -> str:
        return self.reason


# twistd's daemon parent prints the first 100 bytes of "1 MODULE.CLASS: MSG".
CannotListen.__module__ = "presence"


def listen_error(failure: Failure) -> str:
    """Why listening failed, without Twisted's repetition of the address."""
    error = failure.value
    if isinstance(error, CannotListenError):
        cause = error.socketError
        if isinstance(cause, OSError) and cause.strerror:
            return cause.strerror
        return str(cause)
    return failure.getErrorMessage()


class FrontEnd(Service):
    """One endpoint listening for one kind of client, with its factory.

    It binds in C{privilegedStartService} (or in C{startService} when that
    was not called, as outside twistd).  C{listening} fires with the port,
    or fails when listening failed.
    """

    log = Logger()

    def __init__(
        self,
        endpoint: IStreamServerEndpoint,
        factory: Factory,
        scheme: str = "tcp",
        description: str | None = None,
        name: str = "",
    ) -> None:
        self.endpoint = endpoint
        self.label = name  # "": the line protocol; "websocket", "admin"
        self.factory = factory
        self.scheme = scheme
        self.description = description or scheme
        self.port: IListeningPort | None = None
        self.listening: defer.Deferred[IListeningPort] = defer.Deferred()
        self.on_late_failure: Callable[[], None] | None = None
        self._attempt: defer.Deferred[Any] | None = None

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self._listen()

    def startService(self) -> None:
        super().startService()
        if self._attempt is None:
            self._listen()

    def _listen(self) -> None:
        synchronous: list[Failure] = []
        now = True

        def failed(failure: Failure) -> None:
            if now:
                synchronous.append(failure)
            else:
                self._failed(failure)
                if self.on_late_failure is not None:
                    self.on_late_failure()

        self._attempt = self.endpoint.listen(self.factory)
        self._attempt.addCallbacks(self._listening, failed)
        now = False
        if synchronous:
            raise CannotListen(self._failed(synchronous[0]))

    def _listening(self, port: IListeningPort) -> None:
        self.port = port
        self.log.info(
            "presence {name}listening on {address}",
            name=f"{self.label} " if self.label else "",
            address=self.address,
        )
        self.listening.callback(port)

    def _failed(self, failure: Failure) -> str:
        reason = f"cannot listen on {self.description}: {listen_error(failure)}"
        self.log.critical("presence {reason}", reason=reason)
        self.listening.addErrback(lambda _: None)
        self.listening.errback(failure)
        return reason

    @property
    def address(self) -> str:
        assert self.port is not None
        host = self.port.getHost()
        if isinstance(host, (IPv4Address, IPv6Address)):
            return f"{self.scheme}:{format_peer(host)}"
        if is_proxied(self.scheme):  # haproxy:unix:PATH
            return f"{PREFIX}{format_peer(host)}"
        return format_peer(host)

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        port, self.port = self.port, None
        stopped = port.stopListening() if port is not None else None
        return stopped if stopped is not None else defer.succeed(None)


class PresenceService(MultiService):
    """The whole server: its front ends, its helpers, and the polite stop.

    C{PresenceService(endpoint, factory, reactor)} is the short form for one
    front end (tests, the bench); makeService uses C{add_front_end}.  The


    """

    log = Logger()

    def __init__(
        self,
        endpoint: IStreamServerEndpoint | None = None,
        factory: Any = None,
        reactor: IReactorCore | None = None,
        scheme: str = "tcp",
    ) -> None:
        super().__init__()
        self.reactor = reactor
        self.front_ends: list[FrontEnd] = []
        self._holders: list[Any] = []
        self.log_observer: ILogObserver | None = None
        self.exit_status = 0
        self.exit: Callable[[int], None] = _exit_at_the_end
        if endpoint is not None:
            self.add_front_end(endpoint, factory, scheme)

    def add_front_end(
        self,
        endpoint: IStreamServerEndpoint,
        factory: Any,
        scheme: str = "tcp",
        description: str | None = None,
        name: str = "",
    ) -> FrontEnd:
        """Listen on C{endpoint} with C{factory}; close its sessions at stop."""
        front = FrontEnd(endpoint, factory, scheme, description, name)
        front.on_late_failure = self._late_failure
        front.setServiceParent(self)
        self.front_ends.append(front)
        # The sessions live on the front ends' shared Server.
        holder = getattr(factory, "server", factory)
        if hasattr(holder, "shutdown") and holder not in self._holders:
            self._holders.append(holder)
        return front

    # The first front end, for the one-front-end callers (tests, the bench).

    @property
    def factory(self) -> Any:
        return self.front_ends[0].factory

    @property
    def listening(self) -> defer.Deferred[IListeningPort]:
        return self.front_ends[0].listening

    @property
    def port(self) -> IListeningPort | None:
        return self.front_ends[0].port

    @property
    def address(self) -> str:
        return self.front_ends[0].address

    def setServiceParent(self, parent: Any) -> None:
        # twistd passes the Application itself: the place where a plugin may
        # choose the log observer (twistd's AppLogger looks there first).
        if self.log_observer is not None and isinstance(parent, Componentized):
            parent.setComponent(ILogObserver, self.log_observer)
        super().setServiceParent(IServiceCollection(parent, parent))

    def _late_failure(self) -> None:
        # An endpoint that failed after start-up (only asynchronous ones can):
        # stop, and exit non-zero once twistd is done.
        self.exit_status = 1
        if self.reactor is not None:
            self.reactor.stop()
        self.exit(1)

    @defer.inlineCallbacks
    def stopService(self):  # type: ignore[no-untyped-def]
        # Stop listening everywhere, close the sessions, and only then stop
        # the helpers: a SIGHUP from logrotate while sessions close must
        # still find its handler.
        Service.stopService(self)
        fronts = [f for f in self.front_ends if f.running]
        yield defer.gatherResults([f.stopService() for f in fronts])
        yield self._close_sessions()
        helpers = [s for s in reversed(list(self))
                   if s not in self.front_ends and s.running]
        yield defer.gatherResults(
            [defer.maybeDeferred(s.stopService) for s in helpers])
        self.log.info("presence stopped")

    @defer.inlineCallbacks
    def _close_sessions(self):  # type: ignore[no-untyped-def]
        holders = self._holders
        n = sum(len(h.connections) for h in holders)
        self.log.info("presence stopping: closing {n} connections", n=n)
        if not holders:
            return
        clock: IReactorTime = holders[0].clock
        gone = defer.gatherResults([h.shutdown() for h in holders])
        timer = clock.callLater(SHUTDOWN_GRACE, self._abort_all)
        yield gone
        if timer.active():
            timer.cancel()
        # A session counts itself out before it logs its exit line: give the
        # last one its turn, so that "presence stopped" comes after it.
        yield deferLater(clock, 0, lambda: None)

    def _abort_all(self) -> None:
        for holder in self._holders:
            holder.abort_all()


def _exit_at_the_end(status: int) -> None:
    """Make the process exit with C{status} once twistd has finished (its
    pidfile removed, its log closed), whatever twistd itself returns."""

    def leave() -> None:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(status)

    atexit.register(leave)
