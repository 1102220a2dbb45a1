"""The end of a reactor turn, for the outbox, and a leaner poll.

The outbox (L{presence.server.outbox}) writes the turn's lines once the
reactor has handled the batch of events one C{epoll_wait} returned.  With
C{callLater(0)} that costs a C{DelayedCall}, two heap operations and
Twisted's per-call logging context every turn; and for every event in the
batch Twisted's poll builds a legacy logging context (C{log.callWithLogger}:
the protocol's C{logPrefix}, two dicts and four calls) that only legacy
C{log.msg} calls made while handling it would read.  Measured with
C{tools/fanout_cost.py --callgrind}, the two were about a tenth of the
server's instructions per delivery (docs/performance.rst, "Write path").

L{TurnEnd} replaces the epoll reactor's C{doIteration} on the reactor
instance with the same poll, minus that context, followed by the calls
registered during it (L{TurnEnd.pending}).  A call registered outside the
poll's events (a timed call: a ping, a fair-share turn) is not run there:
the poll would first wait for the next event; the outbox then falls back on
C{callLater(0)} (L{TurnEnd.dispatching} tells which).  What the legacy log
context gave: a legacy log event from a handler, such as Twisted's own
"Unhandled Error" when C{doRead} raises, shows C{[-]} instead of the
protocol's prefix; presence logs through C{twisted.logger}, which does not
read it.

The commonest event of all, input on a TCP connection and nothing else, is
handled in the poll itself: C{_doReadOrWrite}'s read branch (the
descriptor checked, C{doRead}, an error logged and the connection dropped
as there) without the function and its four lookups of the reactor's class
constants, which CPython 3.11 does the slow way.

Like L{presence.server.writer} this leans on Twisted's internals (the epoll
reactor's C{_poller}, C{_selectables}, C{_doReadOrWrite} and
C{_disconnectSelectable}).  Any other reactor, or an epoll reactor without
them, is left as it is (L{turn_end} returns None) and the outbox uses
C{callLater(0)}; C{presence.test.test_turn} fails if an upgrade changes
them.
"""

from __future__ import annotations

import errno
import sys
from collections.abc import Callable
from select import EPOLLIN
from types import MethodType
from typing import Any

from twisted.internet import error, posixbase
from twisted.internet.tcp import Server
from twisted.logger import Logger
from twisted.python import log as legacy_log

log = Logger()

# What _doReadOrWrite gives a selectable whose descriptor is -1.
_NO_FILEDESC = getattr(
    posixbase, "_NO_FILEDESC", error.ConnectionFdescWentAway("File descriptor lost")
)

_ATTRIBUTES = ("_poller", "_selectables", "_doReadOrWrite", "_disconnectSelectable",
               "doIteration")


def _epoll_reactor_class() -> type | None:
    try:
        from twisted.internet.epollreactor import EPollReactor
    except ImportError:  # not Linux
        return None
    return EPollReactor


class TurnEnd:
    """Calls to make when the reactor has handled its current batch of events.

    C{pending}: the calls registered during the poll's events, run (and
    emptied) once all of them are handled.  C{dispatching}: whether the
    reactor is handling a poll's events now (only then does a call
    registered here run before the reactor waits again).
    """

    __slots__ = ("_reactor", "dispatching", "pending")

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor
        self.pending: list[Callable[[], None]] = []
        self.dispatching = False
        reactor.doIteration = MethodType(_do_poll, self)

    def later(self, call: Callable[[], None]) -> bool:
        """Run C{call} once the reactor has handled this poll's events, if
        it is handling them now (True); else do nothing (False)."""
        if self.dispatching:
            self.pending.append(call)
        return self.dispatching

    def uninstall(self) -> None:
        """Give the reactor its own poll back."""
        del self._reactor.doIteration
        _TURN_ENDS.pop(id(self._reactor), None)

    def _run_pending(self) -> None:
        pending = self.pending
        while pending:
            calls = pending[:]
            del pending[:]
            for call in calls:
                try:
                    call()
                except Exception:
                    log.failure("a call at the end of the reactor's turn failed")


def _do_poll(end: TurnEnd, timeout: float | None) -> None:
    """EPollReactor.doPoll without C{log.callWithLogger}, then C{end}'s calls."""
    reactor = end._reactor
    if timeout is None:
        timeout = -1  # wait indefinitely
    try:
        # As Twisted's doPoll: at most as many events as descriptors.
        events = reactor._poller.poll(timeout, len(reactor._selectables))
    except OSError as err:
        if err.errno == errno.EINTR:
            return
        raise
    selectables = reactor._selectables
    handle = reactor._doReadOrWrite
    end.dispatching = True
    try:
        for fd, event in events:
            selectable = selectables.get(fd)
            if selectable is None:
                continue
            if event == EPOLLIN and type(selectable) is Server:
                # A TCP connection with input and nothing else (nearly
                # every event): _doReadOrWrite's read branch, without its
                # four lookups of the reactor's class constants.
                try:
                    if selectable.fileno() == -1:
                        why: object = _NO_FILEDESC
                    else:
                        why = selectable.doRead()
                except BaseException:
                    why = sys.exc_info()[1]
                    legacy_log.err()
                if why:
                    reactor._disconnectSelectable(selectable, why, True)
            else:
                handle(selectable, fd, event)
    finally:
        end.dispatching = False
        if end.pending:
            end._run_pending()


# One TurnEnd per reactor (by id: reactors need not be hashable).
_TURN_ENDS: dict[int, TurnEnd] = {}


def supported(reactor: Any) -> bool:
    """Whether C{reactor} is Twisted's epoll reactor with the expected insides."""
    cls = _epoll_reactor_class()
    return (
        cls is not None
        and type(reactor) is cls
        and all(hasattr(reactor, name) for name in _ATTRIBUTES)
        and "doIteration" not in vars(reactor)  # nobody else replaced it
    )


def turn_end(reactor: Any) -> TurnEnd | None:
    """C{reactor}'s L{TurnEnd}, installed on first use; None if unsupported."""
    end = _TURN_ENDS.get(id(reactor))
    if end is not None and end._reactor is reactor:
        return end
    if not supported(reactor):
        return None
    end = _TURN_ENDS[id(reactor)] = TurnEnd(reactor)
    return end
