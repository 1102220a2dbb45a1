"""The service tree: front ends binding early, failing loudly, stopping
politely; the signal handlers and what SIGHUP reloads."""

from __future__ import annotations

import errno
import signal
from typing import Any, cast

from twisted.application.service import Application, IService, Service
from twisted.internet import defer
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, Logger, LogLevel, formatEvent
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase

from presence.server.gcpolicy import FreezeSurvivors
from presence.server.logs import LogTarget
from presence.server.pidfile import PidfileKeeper
from presence.server.service import (
    SHUTDOWN_GRACE,
    CannotListen,
    FrontEnd,
    PresenceService,
)
from presence.server.signals import SignalService
from presence.server.tap import Options, Reload, makeService
from presence.wire.tokens import TokenVerifier


class FakePort:
    def __init__(self) -> None:
        self.stopped = 0

    def stopListening(self) -> None:
        self.stopped += 1

    def getHost(self) -> str:
        return "fake"


class FakeEndpoint:
    def __init__(self, result: Any = None) -> None:
        self.listens = 0
        self.result = result

    def listen(self, factory: Any) -> defer.Deferred[Any]:
        self.listens += 1
        if isinstance(self.result, defer.Deferred):
            return self.result
        if isinstance(self.result, Exception):
            return defer.fail(self.result)
        return defer.succeed(FakePort())


class FakeReactor:
    def __init__(self) -> None:
        self.stops = 0

    def stop(self) -> None:
        self.stops += 1


class Holder:
    """The sessions of front ends, as their shared Server offers them."""

    def __init__(self, clock: Clock, n: int) -> None:
        self.clock = clock
        self.connections = {Conn(self) for _ in range(n)}
        self.gone: defer.Deferred[None] = defer.Deferred()
        self.shutdowns = 0

    def shutdown(self) -> defer.Deferred[None]:
        self.shutdowns += 1
        return self.gone

    def abort_all(self) -> None:
        for conn in self.connections:
            conn.abortConnection()


class Conn:
    """A connection that records whether it was aborted."""

    def __init__(self, holder: Holder) -> None:
        self.transport = self
        self.aborted = False

    def abortConnection(self) -> None:
        self.aborted = True


def capture(obj: Any) -> list[str]:
    events: list[dict[str, Any]] = []
    obj.log = Logger(observer=cast(ILogObserver, events.append))
    return events  # type: ignore[return-value]


class FrontEndTests(SynchronousTestCase):
    def test_binds_in_privileged_start(self) -> None:
        """The endpoint listens in privilegedStartService (twistd calls it as
        root, before --uid), and startService does not listen again."""
        endpoint = FakeEndpoint()
        service = PresenceService()
        service.add_front_end(endpoint, Factory(), "tcp", "tcp:80")  # type: ignore[arg-type]
        service.privilegedStartService()
        self.assertEqual(endpoint.listens, 1)
        service.startService()
        self.assertEqual(endpoint.listens, 1)
        self.assertIsNotNone(self.successResultOf(service.listening))

    def test_listens_on_start_outside_twistd(self) -> None:
        """Started without privilegedStartService, it listens in startService."""
        endpoint = FakeEndpoint()
        service = PresenceService(endpoint, Factory())  # type: ignore[arg-type]
        service.startService()
        self.assertEqual(endpoint.listens, 1)

    def test_cannot_listen(self) -> None:
        """A synchronous failure raises CannotListen (status 1, an Exception
        for twistd's daemon pipe) with the reason, logged as critical."""
        error = CannotListenError("", 80, OSError(errno.EACCES, "Permission denied"))
        front = FrontEnd(FakeEndpoint(error), Factory(), "tcp", "tcp:80")  # type: ignore[arg-type]
        events = capture(front)
        with self.assertRaises(CannotListen) as e:
            front.privilegedStartService()
        self.assertIsInstance(e.exception, Exception)
        self.assertEqual(e.exception.code, 1)
        self.assertEqual(str(e.exception), "cannot listen on tcp:80: Permission denied")
        (event,) = events
        self.assertEqual(formatEvent(event),  # type: ignore[arg-type]
                         "presence cannot listen on tcp:80: Permission denied")
        self.assertIs(event["log_level"], LogLevel.critical)  # type: ignore[index]
        # As before: the failure is consumed (nobody may be waiting on it).
        self.assertIsNone(self.successResultOf(front.listening))

    def test_late_failure_exits_non_zero(self) -> None:
        """An endpoint failing after start-up stops the reactor and makes
        the process exit 1."""
        pending: defer.Deferred[Any] = defer.Deferred()
        reactor = FakeReactor()
        service = PresenceService(reactor=reactor)  # type: ignore[arg-type]
        exits: list[int] = []
        service.exit = exits.append
        front = service.add_front_end(FakeEndpoint(pending), Factory())  # type: ignore[arg-type]
        capture(front)
        service.privilegedStartService()
        service.startService()
        self.assertEqual((reactor.stops, exits), (0, []))
        pending.errback(OverflowError("bind(): port must be 0-65535."))
        self.assertEqual((reactor.stops, exits), (1, [1]))


class StopTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.service = PresenceService()
        self.holders = [Holder(self.clock, 2), Holder(self.clock, 1)]
        for holder in self.holders:
            self.service.add_front_end(FakeEndpoint(), holder)  # type: ignore[arg-type]
        self.events = capture(self.service)
        self.service.startService()

    def lines(self) -> list[str]:
        return [formatEvent(e) for e in self.events]  # type: ignore[arg-type]

    def test_polite_stop(self) -> None:
        """Stop listening, ask every front end's sessions to close (error 15),
        and say "presence stopped" one turn after the last has gone."""
        d = self.service.stopService()
        for front in self.service.front_ends:
            self.assertIsNone(front.port)
        self.assertEqual([h.shutdowns for h in self.holders], [1, 1])
        self.assertEqual(self.lines(), ["presence stopping: closing 3 connections"])
        self.holders[0].gone.callback(None)
        self.holders[1].gone.callback(None)
        self.assertNoResult(d)
        self.assertNotIn("presence stopped", self.lines())
        self.clock.advance(0)
        self.successResultOf(d)
        self.assertEqual(self.lines()[-1], "presence stopped")

    def test_helpers_stop_last(self) -> None:
        """Helpers (the signal handlers) stay until every session has gone,
        so that a SIGHUP during the close is still handled."""
        stopped: list[bool] = []

        class Helper(Service):
            def stopService(self) -> None:
                super().stopService()
                stopped.append(True)

        Helper().setServiceParent(self.service)
        d = self.service.stopService()
        for holder in self.holders:
            holder.gone.callback(None)
        self.assertEqual(stopped, [])
        self.clock.advance(0)
        self.assertEqual(stopped, [True])
        self.successResultOf(d)
        self.assertEqual(self.lines()[-1], "presence stopped")

    def test_abort_after_grace(self) -> None:
        """Sessions still there after the grace are aborted."""
        d = self.service.stopService()
        self.clock.advance(SHUTDOWN_GRACE)
        for holder in self.holders:
            self.assertTrue(all(c.aborted for c in holder.connections))
            holder.gone.callback(None)
        self.clock.advance(0)
        self.successResultOf(d)


class MakeServiceTreeTests(SynchronousTestCase):
    def make(self, *args: str, twistd: dict[str, Any] | None = None
             ) -> PresenceService:
        options = Options()
        options.parseOptions(["--port", "tcp:0:interface=127.0.0.1", *args])
        if twistd is not None:
            options.parent = twistd  # type: ignore[assignment]
        service = makeService(options)
        assert isinstance(service, PresenceService)
        return service

    def test_tree(self) -> None:
        """A MultiService: the pidfile keeper, the signal handlers, one front
        end per listening endpoint, then the garbage-collector policy."""
        service = self.make()
        kinds = [type(s) for s in service]
        self.assertEqual(
            kinds, [PidfileKeeper, SignalService, FrontEnd, FreezeSurvivors])
        self.assertEqual(len(service.front_ends), 1)

    def test_gc_default_leaves_the_collector_alone(self) -> None:
        """--gc default: no garbage-collector policy in the tree."""
        service = self.make("--gc", "default")
        kinds = [type(s) for s in service]
        self.assertEqual(kinds, [PidfileKeeper, SignalService, FrontEnd])

    def test_gc_must_be_known(self) -> None:
        """--gc takes freeze or default only."""
        with self.assertRaises(UsageError) as e:
            self.make("--gc", "off")
        self.assertIn("--gc must be freeze or default", str(e.exception))

    def test_log_observer_for_twistd(self) -> None:
        """Under twistd, the service gives the application the observer for
        --log-format (twistd's AppLogger takes it from there)."""
        service = self.make("--log-format", "json",
                            twistd={"nodaemon": True, "logfile": None})
        application = Application("presence")
        service.setServiceParent(application)
        self.assertIs(application.getComponent(ILogObserver), service.log_observer)
        self.assertIs(service.parent, IService(application))

    def test_no_observer_with_logger(self) -> None:
        """With twistd's --logger, twistd's choice stands."""
        service = self.make(twistd={"nodaemon": True, "logger": "a.b"})
        self.assertIsNone(service.log_observer)


class ReloadTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.path = self.mktemp()
        self.write(b"old" * 11)
        self.verifier = TokenVerifier(b"old" * 11)
        self.reopened = 0
        self.reload = Reload(self.path, self.verifier, None)
        self.events: list[dict[str, Any]] = []
        import presence.server.tap as tap

        self.patch(tap, "log", Logger(observer=cast(ILogObserver, self.events.append)))

    def write(self, content: bytes) -> None:
        with open(self.path, "wb") as f:
            f.write(content)

    def lines(self) -> list[str]:
        return [formatEvent(e) for e in self.events]

    def test_new_secrets(self) -> None:
        """SIGHUP reads the file again: its secrets replace the old ones."""
        self.write(b"new" * 11 + b"\n" + b"old" * 11 + b"\n")
        self.reload.hup()
        self.assertEqual(self.verifier.secrets, (b"new" * 11, b"old" * 11))
        self.assertIn(f"2 secrets read from {self.path}", self.lines())

    def test_bad_file_keeps_secrets(self) -> None:
        """An empty or missing file leaves the secrets in use, and says why."""
        self.write(b"\n")
        self.reload.hup()
        self.assertEqual(self.verifier.secrets, (b"old" * 11,))
        self.assertIn("cannot re-read --secret-file, keeping the 1 secret in use",
                      self.lines()[-1])
        import os

        os.remove(self.path)
        self.reload.hup()
        self.assertEqual(self.verifier.secrets, (b"old" * 11,))
        self.assertIn("No such file", self.lines()[-1])

    def test_weak_secret_warned(self) -> None:
        """A short secret read on SIGHUP is accepted, with the usual warning."""
        self.write(b"short\n")
        self.reload.hup()
        self.assertEqual(self.verifier.secrets, (b"short",))
        self.assertTrue(any("5 bytes long" in line for line in self.lines()))

    def test_log_target(self) -> None:
        """SIGHUP reopens the log file; SIGUSR1 rotates it."""
        calls: list[str] = []

        class Target:
            def reopen(self) -> None:
                calls.append("reopen")

            def rotate(self) -> None:
                calls.append("rotate")

        reload = Reload(None, None, Target())  # type: ignore[arg-type]
        reload.hup()
        reload.usr1()
        self.assertEqual(calls, ["reopen", "rotate"])
        Reload(None, None, None).usr1()
        self.assertIn("SIGUSR1 ignored", self.lines()[-1])

    def test_rotate_stdout_harmless(self) -> None:
        """Logging to standard output, SIGUSR1 only says so."""
        target = LogTarget("text", None)
        events = capture(target)
        target.rotate()
        target.reopen()
        self.assertEqual(len(events), 1)


class SignalServiceTests(SynchronousTestCase):
    def test_installed_while_running(self) -> None:
        """While it runs, the signals are handled by the service; after, the
        previous handlers are back."""
        before = signal.getsignal(signal.SIGUSR2)
        service = SignalService(None, {signal.SIGUSR2: lambda: None})
        service.startService()
        try:
            self.assertEqual(signal.getsignal(signal.SIGUSR2), service._received)
        finally:
            service.stopService()
        self.assertEqual(signal.getsignal(signal.SIGUSR2), before)

    def test_installed_before_ports_bind(self) -> None:
        """The handlers are in place from privilegedStartService, when front
        ends bind and log that they listen, before anything starts; starting
        after that installs nothing twice, and stopping restores the rest."""
        before = signal.getsignal(signal.SIGUSR2)
        service = SignalService(None, {signal.SIGUSR2: lambda: None})
        service.privilegedStartService()
        try:
            self.assertEqual(signal.getsignal(signal.SIGUSR2), service._received)
            service.startService()
        finally:
            service.stopService()
        self.assertEqual(signal.getsignal(signal.SIGUSR2), before)

    def test_scheduled_on_the_reactor(self) -> None:
        """A signal only schedules its handler on the reactor."""
        scheduled: list[Any] = []

        class Reactor:
            def callFromThread(self, f: Any, *args: Any) -> None:
                scheduled.append((f, args))

        calls: list[int] = []
        service = SignalService(Reactor(), {signal.SIGUSR2: lambda: calls.append(1)})
        service._received(signal.SIGUSR2, None)
        self.assertEqual(calls, [])
        ((f, args),) = scheduled
        f(*args)
        self.assertEqual(calls, [1])

    def test_failure_logged(self) -> None:
        """A handler that raises is logged; nothing else happens."""
        def boom() -> None:
            raise RuntimeError("boom")

        service = SignalService(None, {signal.SIGHUP: boom})
        service.handle(signal.SIGHUP)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
