"""Protocol v0's replies: one per message, events by change of online state."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from presence import wire
from presence.server.v0 import OFFLINE, ONLINE, PONG, V0Replies, render_error
from presence.wire.errors import ErrorCode


def online(uid: int, status: str = "online", text: str = "") -> bytes:
    return wire.online(uid, status, text)


def offline(uid: int) -> bytes:
    return wire.offline(uid, 1764000000.5)


def replies(v0: V0Replies, n: int) -> list[bytes]:
    return [v0.reply() for _ in range(n)]


class RepliesTests(SynchronousTestCase):
    def test_wire_forms(self) -> None:
        """The replies are the demo server's bytes: compact JSON, no
        terminator."""
        self.assertEqual(ONLINE, b'{"online":true}')
        self.assertEqual(OFFLINE, b'{"online":false}')
        self.assertEqual(PONG, b'{"msg":"are you still there?","error":0}')
        self.assertEqual(
            render_error(ErrorCode.FRIEND_WITH_YOURSELF),
            b'{"msg":"[server] You can\'t be friend with yourself","error":6}',
        )

    def test_every_error_fits_one_read(self) -> None:
        """Every error but 1 renders as one JSON object {msg, error} holding
        "msg", in less than the demo client's 256-byte read; 1 renders as
        nothing."""
        for code in ErrorCode:
            data = render_error(code)
            if code == ErrorCode.CLIENT_TIMEOUT:
                self.assertEqual(data, b"")
                continue
            self.assertLess(len(data), 256)
            self.assertIn(b"msg", data)
            self.assertNotIn(b"\n", data)
            self.assertEqual(
                json.loads(data),
                {"msg": f"[server] {code.wording}", "error": int(code)},
            )

    def test_nothing_pending_is_pong(self) -> None:
        """With nothing pending, every message is answered by the pong."""
        v0 = V0Replies(1000)
        self.assertEqual(replies(v0, 3), [PONG] * 3)

    def test_welcome_ping_pong_dropped(self) -> None:
        """Welcome, ping and pong lines queue nothing."""
        v0 = V0Replies(1000)
        for line in (wire.welcome(1, 15), wire.PING, wire.PONG):
            self.assertTrue(v0.feed(line))
        self.assertEqual((len(v0), v0.pending), (0, 0))
        self.assertEqual(v0.reply(), PONG)

    def test_snapshot(self) -> None:
        """A snapshot of several lines in one delivery queues one online per
        friend, answered one per message, oldest first."""
        v0 = V0Replies(1000)
        v0.feed(wire.welcome(1, 15))
        self.assertTrue(v0.feed(online(2) + online(3, "away", "lunch") + online(4)))
        self.assertEqual(len(v0), 3)
        self.assertEqual(v0.pending, 3 * len(ONLINE))
        self.assertEqual(replies(v0, 4), [ONLINE, ONLINE, ONLINE, PONG])
        self.assertEqual(v0.pending, 0)

    def test_changes_in_order(self) -> None:
        """Each change of a friend's online state is queued, in the order the
        events came, across friends."""
        v0 = V0Replies(1000)
        for line in (online(2), online(3), offline(2), online(2), offline(3)):
            v0.feed(line)
        self.assertEqual(
            replies(v0, 6), [ONLINE, ONLINE, OFFLINE, ONLINE, OFFLINE, PONG]
        )

    def test_status_change_not_queued(self) -> None:
        """A status or text change of a friend already online has no v0 form,
        also when the online event has already been answered."""
        v0 = V0Replies(1000)
        v0.feed(online(2))
        v0.feed(online(2, "away"))
        self.assertEqual(len(v0), 1)
        self.assertEqual(v0.reply(), ONLINE)
        v0.feed(online(2, "busy", "meeting"))
        self.assertEqual(v0.reply(), PONG)
        v0.feed(offline(2))
        self.assertEqual(v0.reply(), OFFLINE)

    def test_offline_without_online_not_queued(self) -> None:
        """An offline event for a friend the client was never told online
        queues nothing, nor does a repeated offline."""
        v0 = V0Replies(1000)
        v0.feed(offline(2))
        v0.feed(online(2))
        v0.feed(offline(2))
        v0.feed(offline(2))
        self.assertEqual(replies(v0, 3), [ONLINE, OFFLINE, PONG])

    def test_forget(self) -> None:
        """After forget, a friend's online event is queued again (as a v1
        client gets a new snapshot event when it watches again)."""
        v0 = V0Replies(1000)
        v0.feed(online(2) + online(3))
        v0.forget([2])
        v0.feed(online(2) + online(3, "away"))
        self.assertEqual(replies(v0, 4), [ONLINE, ONLINE, ONLINE, PONG])

    def test_demo_user1(self) -> None:
        """The demo's user1: friends 2 and 3 come and go between its messages;
        it counts 2 online and 2 offline."""
        v0 = V0Replies(1000)
        v0.feed(wire.welcome(1, 15))
        got = [v0.reply()]  # the login at 0 s: nobody online yet
        v0.feed(online(2, "online"))  # 0.3 s
        got.append(v0.reply())  # 1 s
        v0.feed(offline(2))  # 1.3 s
        v0.feed(online(3))
        got += [v0.reply(), v0.reply()]  # 2 s, 3 s
        v0.feed(offline(3))  # 3.3 s
        got.append(v0.reply())  # 4 s
        self.assertEqual(got, [PONG, ONLINE, OFFLINE, ONLINE, OFFLINE])


class ErrorTests(SynchronousTestCase):
    def test_non_fatal_error_is_the_reply(self) -> None:
        """A non-fatal error fed while a message is handled is that message's
        reply; the pending events wait for the next messages."""
        v0 = V0Replies(1000)
        v0.feed(online(2))
        v0.feed(wire.error(ErrorCode.INVALID_MESSAGE, "unknown type 'x'"))
        self.assertEqual(
            replies(v0, 3),
            [render_error(ErrorCode.INVALID_MESSAGE), ONLINE, PONG],
        )

    def test_first_error_wins(self) -> None:
        """If several error lines come for one message, the first is the
        reply; the others are dropped."""
        v0 = V0Replies(1000)
        v0.feed(wire.error(ErrorCode.TOO_MANY_FRIENDS))
        v0.feed(wire.error(ErrorCode.INVALID_USER_ID))
        self.assertEqual(
            replies(v0, 2), [render_error(ErrorCode.TOO_MANY_FRIENDS), PONG]
        )

    def test_fatal_error_in_login(self) -> None:
        """A login refused with error 6 is answered with the demo's error 6
        (fed as a line, or rendered by fatal)."""
        v0 = V0Replies(1000)
        v0.feed(wire.error(ErrorCode.FRIEND_WITH_YOURSELF))
        expected = b'{"msg":"[server] You can\'t be friend with yourself","error":6}'
        self.assertEqual(v0.reply(), expected)
        self.assertEqual(
            V0Replies(1000).fatal(ErrorCode.FRIEND_WITH_YOURSELF), expected
        )

    def test_fatal_drops_queue(self) -> None:
        """A fatal error is written at once, whatever waits; the queue goes."""
        v0 = V0Replies(1000)
        v0.feed(online(2) + online(3))
        self.assertEqual(
            v0.fatal(ErrorCode.SERVER_SHUTTING_DOWN),
            b'{"msg":"[server] Server shutting down","error":15}',
        )
        self.assertEqual((len(v0), v0.pending), (0, 0))

    def test_unknown_code(self) -> None:
        """A code this module does not know keeps its number, with the
        wording of 7."""
        v0 = V0Replies(1000)
        v0.feed(b'{"type":"error","error":99,"msg":"Something new"}\n')
        self.assertEqual(v0.reply(), b'{"msg":"[server] Unknown Error","error":99}')

    def test_timeout_is_silent(self) -> None:
        """Error 1 (timeout) writes nothing, as in the demo."""
        v0 = V0Replies(1000)
        v0.feed(online(2))
        self.assertEqual(v0.fatal(ErrorCode.CLIENT_TIMEOUT), b"")


class BufferTests(SynchronousTestCase):
    def test_exactly_max_buffer(self) -> None:
        """Events may fill C{max_buffer} exactly."""
        v0 = V0Replies(2 * len(ONLINE) + len(OFFLINE))
        self.assertTrue(v0.feed(online(2) + online(3) + offline(2)))
        self.assertEqual(v0.pending, 2 * len(ONLINE) + len(OFFLINE))
        self.assertFalse(v0.overflowed)

    def test_overflow(self) -> None:
        """One byte over C{max_buffer} is refused: feed returns False, the
        event is not queued, and every later feed returns False."""
        v0 = V0Replies(2 * len(ONLINE) + len(OFFLINE) - 1)
        self.assertTrue(v0.feed(online(2) + online(3)))
        self.assertFalse(v0.feed(offline(2)))
        self.assertTrue(v0.overflowed)
        self.assertEqual((len(v0), v0.pending), (2, 2 * len(ONLINE)))
        self.assertFalse(v0.feed(wire.PONG))
        self.assertEqual(
            v0.fatal(ErrorCode.SLOW_CONSUMER),
            b'{"msg":"[server] Slow consumer","error":14}',
        )

    def test_replies_free_the_buffer(self) -> None:
        """Answered events no longer count: a client that keeps asking never
        overflows."""
        v0 = V0Replies(len(OFFLINE))
        for _ in range(10):
            self.assertTrue(v0.feed(online(2)))
            self.assertEqual(v0.reply(), ONLINE)
            self.assertTrue(v0.feed(offline(2)))
            self.assertEqual(v0.reply(), OFFLINE)

    def test_status_changes_cost_nothing(self) -> None:
        """Status changes of an online friend never fill the buffer."""
        v0 = V0Replies(len(ONLINE))
        v0.feed(online(2))
        for i in range(100):
            self.assertTrue(v0.feed(online(2, "away", str(i))))
        self.assertEqual(v0.pending, len(ONLINE))


events = st.lists(
    st.tuples(st.integers(2, 5), st.booleans(),
              st.sampled_from(["online", "away", "busy"])),
    max_size=40,
)


class PropertyTests(SynchronousTestCase):
    @settings(max_examples=200, deadline=None)
    @given(events)
    def test_one_event_per_change(self, stream: list[tuple[int, bool, str]]) -> None:
        """Whatever v1 events come, the replies are exactly the changes of
        each friend's online state, in order, then pongs."""
        v0 = V0Replies(10_000)
        state: dict[int, bool] = {}
        expected: list[bytes] = []
        for uid, is_online, status in stream:
            v0.feed(online(uid, status) if is_online else offline(uid))
            if state.get(uid, False) != is_online:
                expected.append(ONLINE if is_online else OFFLINE)
            state[uid] = is_online
        self.assertEqual(replies(v0, len(expected) + 1), [*expected, PONG])
