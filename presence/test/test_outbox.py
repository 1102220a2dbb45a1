"""One write per watcher per reactor turn (presence.server.outbox).

The tests count the transport's write calls (and, over real loopback
sockets, the socket's send calls); none of them measures time.
"""

from __future__ import annotations

from typing import Any

import orjson
from twisted.internet import defer, endpoints, reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from presence.server import lines
from presence.server.context import Server
from presence.server.lines import LineFactory, LineProtocol
from presence.server.service import PresenceService
from presence.server.session import FLUSH_EARLY, Session
from presence.server.web import wsframes
from presence.test.support import Harness, one_turn
from presence.test.test_loopback import LineClient
from presence.wire.errors import ErrorCode


def status(text: str) -> dict[str, str]:
    return {"type": "status", "status": "away", "text": text}


def count_writes(case: SynchronousTestCase, client: Any) -> list[bytes]:
    """Record every write on C{client}'s server-side transport from now on."""
    writes: list[bytes] = []
    original = client.transport.write

    def write(data: bytes) -> None:
        writes.append(data)
        original(data)

    case.patch(client.transport, "write", write)
    return writes


class WriteTurnTests(SynchronousTestCase):
    """What a session is given in one reactor turn goes out in one write."""

    # Writes a clean close adds after the last line (WebSocket: a close frame).
    close_writes = 0

    def count_writes(self, client: Any) -> list[bytes]:
        return count_writes(self, client)

    def watched_by(self, h: Harness, n: int) -> tuple[Any, list[Any]]:
        """A watcher of users 1..n, all logged in, its snapshot read."""
        watcher = h.login(100, list(range(1, n + 1)))
        talkers = [h.login(uid) for uid in range(1, n + 1)]
        watcher.received()
        return watcher, talkers

    def test_turn_is_one_write(self) -> None:
        """Five friends change in five reads of one turn: the watcher gets
        nothing until the turn ends, then one write holding the five
        events, in the order they happened."""
        h = Harness()
        watcher, talkers = self.watched_by(h, 5)
        writes = self.count_writes(watcher)
        for i, talker in reversed(list(enumerate(talkers))):
            talker.send(status(f"t{i}"))
        self.assertEqual(writes, [])
        one_turn(h.clock)
        self.assertEqual(len(writes), 1)
        self.assertEqual(
            [(m["user_id"], m["text"]) for m in watcher.received()],
            [(i + 1, f"t{i}") for i in reversed(range(5))],
        )

    def test_lone_event_is_one_write(self) -> None:
        """A single event is a single write of that one event."""
        h = Harness()
        watcher, (talker,) = self.watched_by(h, 1)
        writes = self.count_writes(watcher)
        talker.send(status("alone"))
        one_turn(h.clock)
        self.assertEqual(len(writes), 1)
        self.assertEqual([m["text"] for m in watcher.received()], ["alone"])

    def test_turns_are_separate_writes(self) -> None:
        """Events in different turns go out in different writes."""
        h = Harness()
        watcher, (talker,) = self.watched_by(h, 1)
        writes = self.count_writes(watcher)
        for text in ("one", "two", "three"):
            talker.send(status(text))
            one_turn(h.clock)
        self.assertEqual(len(writes), 3)
        self.assertEqual(
            [m["text"] for m in watcher.received()], ["one", "two", "three"]
        )

    def test_error_follows_the_turns_events(self) -> None:
        """A fatal error in the same turn goes after the events, in the same
        write, and the connection closes (after a close frame, over
        WebSocket)."""
        h = Harness()
        watcher, talkers = self.watched_by(h, 2)
        writes = self.count_writes(watcher)
        for talker in talkers:
            talker.send(status("before"))
        self.assertEqual(h.server.disconnect(100), 1)
        self.assertEqual(len(writes), 1 + self.close_writes)
        received = watcher.received()
        self.assertEqual([m["type"] for m in received], ["presence"] * 2 + ["error"])
        self.assertEqual(received[-1]["error"], int(ErrorCode.DISCONNECTED))
        self.assertTrue(watcher.closed)
        one_turn(h.clock)
        self.assertEqual(len(writes), 1 + self.close_writes)

    def test_bye_flushes_first(self) -> None:
        """A client that says bye gets the events of the turn before the close."""
        h = Harness()
        watcher, (talker,) = self.watched_by(h, 1)
        talker.send(status("last"))
        watcher.send({"type": "bye"})
        self.assertTrue(watcher.closed)
        self.assertEqual([m["text"] for m in watcher.received()], ["last"])

    def test_lost_before_the_turn_ends(self) -> None:
        """A connection lost before its turn's lines are written drops them;
        the end of the turn writes nothing and the others still get theirs."""
        h = Harness()
        watcher, (talker,) = self.watched_by(h, 1)
        other = h.login(101, [1])
        other.received()
        writes = self.count_writes(watcher)
        talker.send(status("gone"))
        watcher.lose()
        one_turn(h.clock)
        self.assertEqual(writes, [])
        self.assertEqual([m["text"] for m in other.received()], ["gone"])

    def test_failing_write_spares_the_others(self) -> None:
        """A front end whose write raises loses its own lines only: the
        sessions after it in the turn get theirs, and the error is logged."""
        h = Harness()
        first = h.login(100, [1])
        second = h.login(101, [1])
        talker = h.login(1)
        first.received()
        second.received()

        class Broken:
            def write(self, data: bytes) -> None:
                raise RuntimeError("broken front end")

        self.patch(first.session, "peer", Broken())
        talker.send(status("x"))
        one_turn(h.clock)
        self.assertEqual([m["text"] for m in second.received()], ["x"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        talker.send(status("y"))
        one_turn(h.clock)
        self.assertEqual([m["text"] for m in second.received()], ["y"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_large_turn_goes_out_early(self) -> None:
        """A turn's lines reach the transport once they pass FLUSH_EARLY
        bytes, before the turn ends (so that Twisted can pause the session
        and --max-buffer counts), and all of them arrive, in order."""
        h = Harness(turn_budget=10_000)
        watcher, (talker,) = self.watched_by(h, 1)
        writes = self.count_writes(watcher)
        texts = [f"{i:04d}" + "x" * 250 for i in range(600)]
        talker.send(*[status(t) for t in texts])
        self.assertGreater(len(writes), 0)
        for data in writes:
            self.assertGreaterEqual(len(data), FLUSH_EARLY)
        one_turn(h.clock)
        self.assertEqual([m["text"] for m in watcher.received()], texts)

    def test_paused_watcher_cut_off_within_the_turn(self) -> None:
        """A paused watcher passing --max-buffer in one turn gets error 14
        and is aborted in that turn, its unsent lines counted out."""
        h = Harness(max_buffer=1000)
        watcher, (talker,) = self.watched_by(h, 1)
        watcher.proto.pauseProducing()
        talker.send(*[status(str(i) * 50) for i in range(20)])
        self.assertTrue(watcher.aborted)
        self.assertEqual(
            watcher.received()[-1]["error"], int(ErrorCode.SLOW_CONSUMER)
        )
        watcher.lose()
        self.assertEqual(h.server.unsent, 0)

    def test_paused_unsent_counts_across_turns(self) -> None:
        """Lines given to a paused watcher add up over turns to --max-buffer."""
        h = Harness(max_buffer=1000)
        watcher, (talker,) = self.watched_by(h, 1)
        watcher.proto.pauseProducing()
        size = 0
        turns = 0
        while not watcher.aborted:
            talker.send(status(f"{turns:02d}" + "x" * 48))  # one size of event
            one_turn(h.clock)
            turns += 1
            if turns == 1:
                size = watcher.session._unsent
        self.assertEqual(turns, 1000 // size + 1)
        self.assertEqual(
            watcher.received()[-1]["error"], int(ErrorCode.SLOW_CONSUMER)
        )


class FanoutTests(SynchronousTestCase):
    """An event for several watchers goes through the server's fan-out loop
    (L{presence.server.session.fanout_for}), which does L{Session.deliver}'s
    work inline: each watcher must end up with what C{deliver} would have
    given it."""

    def watchers(self, h: Harness, n: int) -> tuple[Any, list[Any]]:
        """User 1 and n watchers of it (users 101..), their snapshots read."""
        talker = h.login(1)
        watchers = [h.login(100 + i, [1]) for i in range(1, n + 1)]
        return talker, watchers

    def test_each_watcher_once_each_counted_once(self) -> None:
        """Three watchers get the event once each, in one write each, and
        the server counts three deliveries."""
        h = Harness()
        talker, watchers = self.watchers(h, 3)
        before = h.server.metrics.deliveries
        talker.send(status("hi"))
        one_turn(h.clock)
        self.assertEqual(h.server.metrics.deliveries - before, 3)
        for watcher in watchers:
            self.assertEqual([m["text"] for m in watcher.received()], ["hi"])

    def test_several_events_in_order(self) -> None:
        """Events of one turn reach every watcher in order, in one write."""
        h = Harness()
        talker, watchers = self.watchers(h, 2)
        writes = [count_writes(self, w) for w in watchers]
        talker.send(*[status(t) for t in ("a", "b", "c")])
        one_turn(h.clock)
        self.assertEqual([len(w) for w in writes], [1, 1])
        for watcher in watchers:
            self.assertEqual(
                [m["text"] for m in watcher.received()], ["a", "b", "c"]
            )

    def test_closing_watcher_gets_nothing_and_is_not_counted(self) -> None:
        """A watcher that is closing is skipped and not counted."""
        h = Harness()
        talker, (open_, closing) = self.watchers(h, 2)
        closing.session.closing = True
        before = h.server.metrics.deliveries
        talker.send(status("hi"))
        one_turn(h.clock)
        self.assertEqual(h.server.metrics.deliveries - before, 1)
        self.assertEqual([m["text"] for m in open_.received()], ["hi"])
        self.assertEqual(closing.received(), [])

    def test_large_turn_goes_out_early_for_each(self) -> None:
        """Each watcher's lines reach its transport once they pass
        FLUSH_EARLY, before the turn ends, all of them in order."""
        h = Harness(turn_budget=10_000)
        talker, watchers = self.watchers(h, 2)
        writes = [count_writes(self, w) for w in watchers]
        texts = [f"{i:04d}" + "x" * 250 for i in range(600)]
        talker.send(*[status(t) for t in texts])
        for written in writes:
            self.assertGreater(len(written), 0)
            for data in written:
                self.assertGreaterEqual(len(data), FLUSH_EARLY)
        one_turn(h.clock)
        for watcher in watchers:
            self.assertEqual([m["text"] for m in watcher.received()], texts)

    def test_paused_watcher_among_others(self) -> None:
        """A paused watcher passing --max-buffer gets error 14 and is
        aborted in the turn; the other watcher gets every event."""
        h = Harness(max_buffer=1000)
        talker, (paused, reading) = self.watchers(h, 2)
        paused.proto.pauseProducing()
        texts = [str(i) * 50 for i in range(20)]
        talker.send(*[status(t) for t in texts])
        one_turn(h.clock)
        self.assertTrue(paused.aborted)
        self.assertEqual(paused.received()[-1]["error"], int(ErrorCode.SLOW_CONSUMER))
        self.assertFalse(reading.aborted)
        self.assertEqual([m["text"] for m in reading.received()], texts)
        paused.lose()
        self.assertEqual(h.server.unsent, 0)

    def test_v0_watcher_through_deliver(self) -> None:
        """A v0 watcher's event is queued for its next poll (deliver's
        work), not pushed, and not counted as a delivery."""
        h = Harness()
        talker, (pushed, polled) = self.watchers(h, 2)
        polled.session.use_v0()
        before = h.server.metrics.deliveries
        talker.send(status("hi"))
        one_turn(h.clock)
        self.assertEqual([m["text"] for m in pushed.received()], ["hi"])
        self.assertEqual(polled.transport.value(), b"")
        self.assertGreater(polled.session.v0.pending, 0)
        self.assertEqual(h.server.metrics.deliveries - before, 1)


class WriteTurnOverWebSocketTests(WriteTurnTests):
    """The same over WebSocket: one TCP write holds one frame per event."""

    close_writes = 1

    def setUp(self) -> None:
        self.patch(Harness, "frontend", "websocket")

    def test_watchers_share_the_frame(self) -> None:
        """A change told to three WebSocket watchers is framed once: a
        server's frames are not masked, so each watcher is written the same
        frame."""
        h = Harness()
        talker = h.login(1)
        watchers = [h.login(uid, [1]) for uid in (2, 3, 4)]
        framed: list[bytes] = []
        text_frame = wsframes.text_frame

        def counting(payload: bytes) -> bytes:
            framed.append(payload)
            return text_frame(payload)

        self.patch(wsframes, "text_frame", counting)
        writes = [self.count_writes(w) for w in watchers]
        talker.send(status("shared"))
        one_turn(h.clock)
        self.assertEqual(len(framed), 1)
        self.assertEqual([len(w) for w in writes], [1, 1, 1])
        self.assertEqual(writes[0], writes[1])
        self.assertEqual(writes[0], writes[2])
        for watcher in watchers:
            self.assertEqual([m["text"] for m in watcher.received()], ["shared"])


class CountingSocket:
    """A socket whose send calls are counted (everything else delegated)."""

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self.sends = 0

    def send(self, data: bytes) -> int:
        self.sends += 1
        sent: int = self._sock.send(data)
        return sent

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class LoopbackSendTests(TestCase):
    """Over real loopback sockets: the send(2) calls on a watcher's socket
    (the line front end's direct writes and Twisted's own)."""

    timeout = 20

    @defer.inlineCallbacks
    def connect(self) -> Any:
        """Watcher 1 of talker 2, over real sockets; count 1's sends."""
        self.server = Server(reactor)
        service = PresenceService(
            endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"),
            LineFactory(self.server),
            reactor,
        )
        service.startService()
        port = yield service.listening
        self.addCleanup(service.stopService)
        where = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        self.watcher = yield endpoints.connectProtocol(where, LineClient())
        self.watcher.send({"user_id": 1, "friends": [2]})
        yield self.watcher.messages.get()  # welcome
        talker = yield endpoints.connectProtocol(where, LineClient())
        talker.send({"user_id": 2})
        yield talker.messages.get()  # welcome
        yield self.watcher.messages.get()  # 2 is online
        self.addCleanup(self.close, talker)
        self.addCleanup(self.close, self.watcher)
        self.talker = self.session_of(2)
        proto = self.session_of(1).peer
        assert isinstance(proto, LineProtocol)
        self.socket = CountingSocket(proto.transport.socket)
        proto.transport.socket = self.socket
        self.direct = 0
        fd, send = proto.transport.fileno(), lines._send

        def counting(to: int, data: bytes) -> int:
            if to == fd:
                self.direct += 1
            return send(to, data)

        self.patch(lines, "_send", counting)

    @property
    def sends(self) -> int:
        return self.direct + self.socket.sends

    def session_of(self, uid: int) -> Session:
        (session,) = [s for s in self.server.connections if s.user_id == uid]
        return session

    @staticmethod
    def close(client: LineClient) -> defer.Deferred[None]:
        assert client.transport is not None
        client.transport.loseConnection()
        return client.closed

    def change(self, *texts: str) -> None:
        """The talker changes its text once per C{texts}, all in one turn."""
        for text in texts:
            self.talker.line(orjson.dumps(status(text)))

    @defer.inlineCallbacks
    def receive(self, n: int) -> Any:
        texts = []
        for _ in range(n):
            texts.append((yield self.watcher.messages.get())["text"])
        return texts

    @defer.inlineCallbacks
    def test_one_send_per_turn(self) -> Any:
        """Ten events to a watcher in one turn take one send(2) call."""
        yield self.connect()
        texts = [str(i) for i in range(10)]
        reactor.callLater(0, self.change, *texts)
        self.assertEqual((yield self.receive(10)), texts)
        self.assertEqual(self.sends, 1)

    @defer.inlineCallbacks
    def test_one_send_per_event_in_separate_turns(self) -> Any:
        """Events in separate turns take a send(2) call each, as before."""
        yield self.connect()
        for text in ("a", "b", "c"):
            reactor.callLater(0, self.change, text)
            self.assertEqual((yield self.receive(1)), [text])
        self.assertEqual(self.sends, 3)
