"""The end of a reactor turn (presence.server.turn) and the outbox on it.

Each test runs a fresh epoll reactor of its own (never started: the test
calls its C{doIteration} and C{runUntilCurrent} by hand) with socketpair
readers, so that the order of reads and end-of-turn calls is what is
checked, not time.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

from twisted.internet import selectreactor, tcp
from twisted.internet.base import DelayedCall
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from presence.server import turn
from presence.server.outbox import AT_TURN_END, Outbox

try:
    from twisted.internet.epollreactor import EPollReactor
except ImportError:  # not Linux
    EPollReactor = None  # type: ignore[assignment,misc]


class Reader:
    """A socketpair's end as a reactor reader that logs what it does."""

    def __init__(self, name: str, log: list[str],
                 on_read: Callable[[], None] | None = None) -> None:
        self.name = name
        self.log = log
        self.on_read = on_read
        self.sock, self.peer = socket.socketpair()
        self.sock.setblocking(False)

    def fileno(self) -> int:
        return self.sock.fileno()

    def logPrefix(self) -> str:
        return self.name

    def doRead(self) -> None:
        self.sock.recv(100)
        self.log.append(f"read {self.name}")
        if self.on_read is not None:
            self.on_read()

    def connectionLost(self, reason: Any) -> None:
        self.log.append(f"lost {self.name}")

    def close(self) -> None:
        self.sock.close()
        self.peer.close()


class Session:
    """What the outbox flushes."""

    def __init__(self, log: list[str]) -> None:
        self.log = log

    def flush(self) -> None:
        self.log.append("flush")


class TurnEndTests(SynchronousTestCase):
    if EPollReactor is None:
        skip = "no epoll here"

    def setUp(self) -> None:
        self.reactor = EPollReactor()
        self.addCleanup(self.reactor._poller.close)
        self.log: list[str] = []

    def reader(self, name: str, on_read: Callable[[], None] | None = None
               ) -> Reader:
        r = Reader(name, self.log, on_read)
        self.addCleanup(r.close)
        self.reactor.addReader(r)
        self.addCleanup(self.reactor.removeReader, r)
        return r

    def test_supported_on_this_twisted(self) -> None:
        """The installed Twisted's epoll reactor has what the turn end relies
        on (if this fails after an upgrade, the outbox falls back on
        callLater(0): correct, slower; adapt presence/server/turn.py)."""
        self.assertTrue(turn.supported(self.reactor))
        end = turn.turn_end(self.reactor)
        self.assertIsInstance(end, turn.TurnEnd)
        self.assertIs(turn.turn_end(self.reactor), end)  # one per reactor
        assert end is not None
        end.uninstall()
        self.assertNotIn("doIteration", vars(self.reactor))

    def test_other_reactors(self) -> None:
        """Other reactors and clocks get no turn end: the outbox schedules
        its flush with callLater(0) there."""
        select = selectreactor.SelectReactor()
        self.assertIsNone(turn.turn_end(select))
        self.assertIsNone(turn.turn_end(Clock()))
        self.assertIsNone(Outbox(Clock())._end)

    def test_calls_after_the_batch(self) -> None:
        """A call registered while one event is handled runs once every event
        of the poll's batch has been handled, and only then; the reactor is
        'dispatching' only while it handles them."""
        end = turn.turn_end(self.reactor)
        assert end is not None
        self.addCleanup(end.uninstall)
        seen: list[bool] = []

        def first() -> None:
            seen.append(end.dispatching)
            end.pending.append(lambda: self.log.append("end of turn"))

        a = self.reader("a", first)
        b = self.reader("b")
        a.peer.send(b"x")
        b.peer.send(b"x")
        self.assertFalse(end.dispatching)
        self.reactor.doIteration(0)
        self.assertEqual(sorted(self.log[:2]), ["read a", "read b"])
        self.assertEqual(self.log[2:], ["end of turn"])
        self.assertEqual(seen, [True])
        self.assertFalse(end.dispatching)
        self.assertEqual(end.pending, [])

    def test_later(self) -> None:
        """later() takes a call only while the reactor handles a poll's
        events (True), and runs it after them; outside (a timed call, or no
        turn at all) it refuses (False) and nothing runs."""
        end = turn.turn_end(self.reactor)
        assert end is not None
        self.addCleanup(end.uninstall)
        taken: list[bool] = []

        def read() -> None:
            taken.append(end.later(lambda: self.log.append("later")))

        self.assertFalse(end.later(lambda: self.log.append("refused")))
        a = self.reader("a", read)
        a.peer.send(b"x")
        self.reactor.doIteration(0)
        self.assertEqual((self.log, taken), (["read a", "later"], [True]))

    def test_failing_call_spares_the_others(self) -> None:
        """A call that raises is logged; the calls after it still run."""
        end = turn.turn_end(self.reactor)
        assert end is not None
        self.addCleanup(end.uninstall)

        def fail() -> None:
            raise ZeroDivisionError()

        def register() -> None:
            end.pending.append(fail)
            end.pending.append(lambda: self.log.append("second"))

        self.reader("a", register).peer.send(b"x")
        self.reactor.doIteration(0)
        self.assertEqual(self.log, ["read a", "second"])
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_outbox_flushes_at_the_end_of_the_batch(self) -> None:
        """Lines given while the reactor handles a read go out when the batch
        is handled, with no DelayedCall; lines given by a timed call go out
        through callLater(0), so that the reactor does not wait for an event
        first."""
        outbox = Outbox(self.reactor)
        self.assertIsNotNone(outbox._end)
        assert outbox._end is not None
        self.addCleanup(outbox._end.uninstall)
        session = Session(self.log)

        def deliver() -> None:
            outbox.dirty.append(session)
            if outbox.call is None:
                outbox.schedule()

        self.reader("a", deliver).peer.send(b"x")
        self.reactor.doIteration(0)
        self.assertEqual(self.log, ["read a", "flush"])
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.assertIsNone(outbox.call)

        self.reactor.callLater(0, deliver)
        self.reactor.runUntilCurrent()
        self.assertIsInstance(outbox.call, DelayedCall)
        self.reactor.runUntilCurrent()
        self.assertEqual(self.log, ["read a", "flush", "flush"])
        self.assertIsNone(outbox.call)

    def test_early_flush(self) -> None:
        """An outbox flushed before the turn ends (shutdown) writes nothing
        more at the end of the turn."""
        outbox = Outbox(self.reactor)
        assert outbox._end is not None
        self.addCleanup(outbox._end.uninstall)
        session = Session(self.log)

        def deliver_and_flush() -> None:
            outbox.dirty.append(session)
            outbox.schedule()
            self.assertIs(outbox.call, AT_TURN_END)
            outbox.flush()

        self.reader("a", deliver_and_flush).peer.send(b"x")
        self.reactor.doIteration(0)
        self.assertEqual(self.log, ["read a", "flush"])


class Recorder(Protocol):
    """A protocol that records what it is told (and can fail on a read)."""

    def __init__(self, log: list[str], fail: bool = False) -> None:
        self.log = log
        self.fail = fail

    def dataReceived(self, data: bytes) -> None:
        self.log.append(f"data {data.decode()}")
        if self.fail:
            raise RuntimeError("handler failed")

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.log.append(f"lost {type(reason.value).__name__}")


class TcpReadTests(SynchronousTestCase):
    """A TCP connection's read events, which the turn end's poll handles
    itself (not through the reactor's _doReadOrWrite): the protocol gets
    the data, a closed peer or a failing handler ends the connection as
    Twisted's own handling would."""

    if EPollReactor is None:
        skip = "no epoll here"

    def setUp(self) -> None:
        self.reactor = EPollReactor()
        self.addCleanup(self.reactor._poller.close)
        self.end = turn.turn_end(self.reactor)
        assert self.end is not None
        self.addCleanup(self.end.uninstall)
        self.log: list[str] = []
        self.generic: list[int] = []
        original = self.reactor._doReadOrWrite

        def counted(selectable: Any, fd: int, event: int) -> None:
            self.generic.append(event)
            original(selectable, fd, event)

        self.patch(self.reactor, "_doReadOrWrite", counted)

    def connect(self, fail: bool = False) -> tuple[tcp.Server, socket.socket]:
        ours, peer = socket.socketpair()
        ours.setblocking(False)
        self.addCleanup(peer.close)
        protocol = Recorder(self.log, fail)
        server = tcp.Server(
            ours, protocol, ("127.0.0.1", 1), None, 1, self.reactor  # type: ignore[arg-type]
        )
        protocol.makeConnection(server)
        self.addCleanup(self.reactor.removeAll)
        return server, peer

    def test_read(self) -> None:
        """Data is handed to the protocol; the reactor's generic handler is
        not called."""
        _, peer = self.connect()
        peer.sendall(b"hi")
        self.reactor.doIteration(0)
        self.assertEqual(self.log, ["data hi"])
        self.assertEqual(self.generic, [])

    def test_peer_closed(self) -> None:
        """A peer that closes ends the connection cleanly."""
        _, peer = self.connect()
        peer.close()
        self.reactor.doIteration(0)
        self.assertEqual(self.log, ["lost ConnectionDone"])

    def test_failing_handler(self) -> None:
        """A handler that raises is logged and its connection ended with
        that error."""
        _, peer = self.connect(fail=True)
        peer.sendall(b"x")
        self.reactor.doIteration(0)
        self.assertEqual(self.log, ["data x", "lost RuntimeError"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_writable_goes_the_generic_way(self) -> None:
        """An event that is not a plain read goes to the reactor's handler."""
        server, _ = self.connect()
        server.startWriting()
        self.reactor.doIteration(0)
        self.assertEqual(len(self.generic), 1)
