"""SIGHUP and SIGUSR1: reload without a restart, and never die of them.

Unhandled, both signals end a Python process at once: no error 15 for the
clients, nothing in the log.  A logrotate ``postrotate`` or a systemd
``ExecReload=kill -HUP $MAINPID`` would take the service down.

L{SignalService} installs handlers while it runs.  They only schedule the
work on the reactor (C{callFromThread}, as twistd does for its own log
rotation), so the work runs between two reactor turns, never in the middle
of one; an exception in it is logged, and the server goes on.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from types import FrameType
from typing import Any

from twisted.application.service import Service
from twisted.logger import Logger


class SignalService(Service):
    """Runs C{handlers[signum]()} on the reactor whenever C{signum} arrives."""

    log = Logger()

    # reactor: an IReactorFromThreads (callFromThread).
    def __init__(
        self, reactor: Any, handlers: dict[int, Callable[[], None]]
    ) -> None:
        self.reactor = reactor
        self.handlers = handlers
        self._previous: dict[int, Any] = {}

    def privilegedStartService(self) -> None:
        # Before any front end binds and says it is listening: whoever waits
        # for that line may signal at once (logrotate, tests).
        super().privilegedStartService()
        self._install()

    def startService(self) -> None:
        super().startService()
        self._install()

    def _install(self) -> None:
        if self._previous:
            return
        for signum in self.handlers:
            self._previous[signum] = signal.signal(signum, self._received)

    def stopService(self) -> None:
        super().stopService()
        previous, self._previous = self._previous, {}
        for signum, handler in previous.items():
            signal.signal(signum, handler)

    def _received(self, signum: int, frame: FrameType | None) -> None:
        self.reactor.callFromThread(self.handle, signum)

    def handle(self, signum: int) -> None:
        """Run the handler of C{signum} (the signal handler schedules this)."""
        name = signal.Signals(signum).name
        try:
            self.handlers[signum]()
        except Exception:
            self.log.failure("{signal} handling failed; the server goes on",
                             signal=name)
