"""LineProtocol over StringTransport with a task.Clock: the wire contract."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from presence import wire
from presence.core.timers import SPACING
from presence.test.support import FakeClient, Harness, one_turn
from presence.wire.errors import ErrorCode


class ErrorAssertions(SynchronousTestCase):
    def assertError(self, client: FakeClient, code: ErrorCode, fatal: bool) -> None:
        messages = client.received()
        self.assertEqual(len(messages), 1, messages)
        self.assertEqual(messages[0]["type"], "error")
        self.assertEqual(messages[0]["error"], int(code))
        self.assertTrue(messages[0]["msg"].startswith(code.wording), messages[0])
        self.assertEqual(client.closed, fatal)


class LoginTests(ErrorAssertions):
    def setUp(self) -> None:
        self.h = Harness()

    def test_demo_login(self) -> None:
        """The demo's login line is answered by welcome with the timeout."""
        c = self.h.connect()
        c.send(b'{"user_id": 1, "friends": [2, 3, 4]}\n')
        self.assertEqual(
            c.received(), [{"type": "welcome", "user_id": 1, "timeout": 15}]
        )
        self.assertTrue(self.h.registry.is_online(1))

    def test_login_type_explicit(self) -> None:
        """A login may say "type": "login"."""
        c = self.h.connect()
        c.send({"type": "login", "user_id": 7})
        self.assertEqual(c.received()[0]["type"], "welcome")

    def test_snapshot_after_welcome(self) -> None:
        """After welcome, one online event per online friend, with status/text."""
        self.h.login(2, status="away", text="lunch")
        self.h.login(3)
        c = self.h.connect()
        c.send({"user_id": 1, "friends": [2, 3, 4]})
        messages = c.received()
        self.assertEqual(messages[0]["type"], "welcome")
        self.assertEqual(
            sorted((m["user_id"], m["status"], m["text"]) for m in messages[1:]),
            [(2, "away", "lunch"), (3, "online", "")],
        )

    def test_bad_user_ids(self) -> None:
        """Missing, boolean, float, string, zero, negative, 2**63 ids: fatal 5."""
        for bad in ({}, {"user_id": True}, {"user_id": 1.0}, {"user_id": "1"},
                    {"user_id": 0}, {"user_id": -1}, {"user_id": 2**63},
                    {"user_id": None}):
            c = self.h.connect()
            c.send(bad)
            self.assertError(c, ErrorCode.INVALID_USER_ID, fatal=True)
        self.assertEqual(self.h.registry.users, 0)

    def test_largest_user_id(self) -> None:
        """2**63-1 is a valid user id."""
        c = self.h.connect()
        c.send({"user_id": 2**63 - 1})
        self.assertEqual(c.received()[0]["user_id"], 2**63 - 1)

    def test_bad_friends(self) -> None:
        """A friends list that is not a list of ids is fatal error 5 in a login."""
        for bad in (5, "2,3", [2, "3"], [2, True], [0], None):
            c = self.h.connect()
            c.send({"user_id": 1, "friends": bad})
            self.assertError(c, ErrorCode.INVALID_USER_ID, fatal=True)

    def test_friend_with_yourself(self) -> None:
        """Listing oneself is fatal error 6, and the user is never online."""
        watcher = self.h.login(2, [5])
        c = self.h.connect()
        c.send({"user_id": 5, "friends": [2, 3, 4, 5]})
        self.assertError(c, ErrorCode.FRIEND_WITH_YOURSELF, fatal=True)
        c.lose()
        self.assertFalse(self.h.registry.is_online(5))
        self.assertEqual(watcher.received(), [])

    def test_too_many_friends(self) -> None:
        """More distinct ids than --max-friends is fatal 11; duplicates count once."""
        h = Harness(max_friends=3)
        c = h.connect()
        c.send({"user_id": 1, "friends": [2, 2, 3, 4, 4]})
        self.assertEqual(c.received()[0]["type"], "welcome")
        c = h.connect()
        c.send({"user_id": 1, "friends": [2, 3, 4, 5]})
        self.assertError(c, ErrorCode.TOO_MANY_FRIENDS, fatal=True)

    def test_check_order(self) -> None:
        """A login with several faults gets the first in PROTOCOL.md's order."""
        c = self.h.connect()
        c.send({"user_id": 0, "friends": [1, 1], "status": "bogus"})
        self.assertError(c, ErrorCode.INVALID_USER_ID, fatal=True)
        c = self.h.connect()
        c.send({"user_id": 1, "friends": [1], "status": "bogus"})
        self.assertError(c, ErrorCode.FRIEND_WITH_YOURSELF, fatal=True)
        c = self.h.connect()
        c.send({"user_id": 1, "friends": [2, "x", 1]})
        self.assertError(c, ErrorCode.INVALID_USER_ID, fatal=True)

    def test_bad_status_in_login(self) -> None:
        """A bad status or text in a login is fatal error 13."""
        for bad in ({"status": "gone"}, {"status": 1}, {"text": 5},
                    {"status": "away", "text": "x" * 257}):
            c = self.h.connect()
            c.send({"user_id": 1, **bad})
            self.assertError(c, ErrorCode.INVALID_MESSAGE, fatal=True)
        self.assertFalse(self.h.registry.is_online(1))

    def test_other_message_before_login(self) -> None:
        """Any message but a login before the login is fatal error 12."""
        for kind in ("ping", "pong", "status", "friends", "bye", "nonsense"):
            c = self.h.connect()
            c.send({"type": kind})
            self.assertError(c, ErrorCode.NOT_LOGGED_IN, fatal=True)

    def test_type_not_a_string(self) -> None:
        """A type that is not a string is error 13, fatal before login."""
        c = self.h.connect()
        c.send({"type": 5, "user_id": 1})
        self.assertError(c, ErrorCode.INVALID_MESSAGE, fatal=True)

    def test_rejected_login_never_online(self) -> None:
        """A rejected login sends no event to the user's watchers, not even briefly."""
        watcher = self.h.login(2, [1])
        for bad in ({"user_id": 1, "friends": [1]},
                    {"user_id": 1, "friends": [2], "status": "nope"}):
            c = self.h.connect()
            c.send(bad)
            c.lose()
        self.assertEqual(watcher.received(), [])
        self.assertFalse(self.h.registry.is_online(1))

    def test_too_many_sessions(self) -> None:
        """A login past --max-sessions for the user is fatal error 16."""
        h = Harness(max_sessions=2)
        first, second = h.login(1), h.login(1)
        c = h.connect()
        c.send({"user_id": 1})
        self.assertError(c, ErrorCode.TOO_MANY_CONNECTIONS, fatal=True)
        c.lose()
        self.assertEqual(h.registry.session_count(1), 2)
        self.assertFalse(first.closed or second.closed)


class JsonErrorTests(ErrorAssertions):
    def setUp(self) -> None:
        self.h = Harness()

    def test_not_json(self) -> None:
        """Text that is not JSON, bad UTF-8, non-objects, deep nesting: fatal 3."""
        for line in (b"hello", b"\xff\xfe", b"[1, 2]", b'"x"', b"1", b"null",
                     b'{"user_id": 1', b"[" * 100_000, b'{"a": NaN}',
                     b'{"t": "\\ud800"}'):
            c = self.h.connect()
            c.send(line + b"\n")
            self.assertError(c, ErrorCode.JSON_DECODING, fatal=True)

    def test_not_json_after_login(self) -> None:
        """Error 3 is fatal after login too, and the user goes offline."""
        watcher = self.h.login(2, [1])
        c = self.h.login(1, [2])
        watcher.received()
        c.send(b"{oops\n")
        self.assertError(c, ErrorCode.JSON_DECODING, fatal=True)
        c.lose()
        self.assertEqual(watcher.events(), [(1, False, "offline")])


class FramingTests(ErrorAssertions):
    def setUp(self) -> None:
        self.h = Harness(max_line=100)


    def test_welcome_bytes(self) -> None:
        """The welcome is exactly the demo's line: compact, one terminator."""
        c = self.h.connect()
        c.transport.clear()
        c.send(b'{"user_id": 1, "friends": [2, 3, 4]}\n')
        self.h.server.outbox.flush()  # the turn ends
        self.assertEqual(
            c.transport.value(), b'{"type":"welcome","user_id":1,"timeout":15}\n'
        )

    def test_split_writes(self) -> None:
        """A line arriving in pieces is one message."""
        c = self.h.connect()
        for piece in (b'{"user', b'_id": 1', b', "friends": [2]', b"}", b"\n"):
            c.proto.dataReceived(piece)
        self.assertEqual(c.received()[0]["type"], "welcome")

    def test_many_in_one_write(self) -> None:
        """Several messages in one write are each handled, in order."""
        c = self.h.connect()
        c.send({"user_id": 1}, {"type": "ping"}, {"type": "ping"})
        self.assertEqual([m["type"] for m in c.received()],
                         ["welcome", "pong", "pong"])

    def test_crlf(self) -> None:
        """\\r\\n terminates a line like \\n; the server writes \\n."""
        c = self.h.connect()
        c.send(b'{"user_id": 1}\r\n{"type": "ping"}\r\n')
        self.h.server.outbox.flush()  # the turn ends
        self.assertEqual(c.transport.value().count(b"\r"), 0)
        self.assertEqual([m["type"] for m in c.received()], ["welcome", "pong"])

    def test_blank_lines(self) -> None:
        """Blank lines are no message but count as activity."""
        c = self.h.login(1)
        self.h.clock.advance(7)
        c.send(b"\n", b"\r\n", b"   \n")
        self.h.clock.advance(7)
        self.assertEqual(c.received(), [])
        self.assertFalse(c.closed)

    def test_exact_limit(self) -> None:
        """A line of exactly --max-line bytes is allowed, with \\n or \\r\\n."""
        line = b'{"user_id": 1, "text": "' + b"x" * 50 + b'"}'
        line = line[:-2] + b" " * (100 - len(line)) + b"}"[:0] + line[-2:]
        self.assertEqual(len(line), 100)
        for end in (b"\n", b"\r\n"):
            c = self.h.connect()
            c.send(line + end)
            self.assertEqual(c.received()[0]["type"], "welcome")

    def test_too_long(self) -> None:
        """A line one byte over --max-line is fatal error 9."""
        c = self.h.connect()
        c.send(b" " * 101 + b"\n")
        self.assertError(c, ErrorCode.LINE_TOO_LONG, fatal=True)

    def test_too_long_unterminated(self) -> None:
        """Error 9 comes as soon as the limit is passed, before any terminator."""
        c = self.h.connect()
        c.proto.dataReceived(b"x" * 100)
        self.assertEqual(c.received(), [])
        c.proto.dataReceived(b"x")
        self.assertError(c, ErrorCode.LINE_TOO_LONG, fatal=True)

    def test_unterminated_cr_at_limit(self) -> None:
        """A full-length line whose \\r has come but not its \\n is still waiting."""
        c = self.h.connect()
        body = b'{"user_id": 1}'
        c.proto.dataReceived(body + b" " * (100 - len(body)) + b"\r")
        self.assertEqual(c.received(), [])
        c.proto.dataReceived(b"\n")
        self.assertEqual(c.received()[0]["type"], "welcome")

    def test_keepalive_after_partial_line(self) -> None:
        """A ping read after part of a line completes that line first."""
        c = self.h.connect()
        c.proto.dataReceived(b'{"user_id": 1')
        c.proto.dataReceived(b'}\n')
        c.received()
        c.proto.dataReceived(b'{"type": "status", "status": "busy"')
        c.proto.dataReceived(b'{"type":"ping"}\n')
        self.assertError(c, ErrorCode.JSON_DECODING, fatal=True)

    def test_keepalive_over_max_line(self) -> None:
        """A ping line longer than --max-line is error 9 like any other line."""
        h = Harness(max_line=14)
        c = h.connect()
        c.send(b'{"user_id":1}\n')
        c.received()
        c.send(b'{"type":"ping"}\n')
        self.assertError(c, ErrorCode.LINE_TOO_LONG, fatal=True)

    def test_keepalive_forms(self) -> None:
        """Pings with or without a space, with \n or \r\n, are each answered."""
        c = self.h.connect()
        c.send({"user_id": 1})
        c.received()
        for line in (b'{"type":"ping"}\n', b'{"type": "ping"}\r\n',
                     b'{"type":"pong"}\n', b'{"type": "ping"}\n{"type":"ping"}\n'):
            c.proto.dataReceived(line)
        self.assertEqual(c.received(), [{"type": "pong"}] * 4)

    def test_nothing_after_fatal(self) -> None:
        """Lines after a fatal error in the same write are not handled."""
        c = self.h.connect()
        c.send(b"nope\n", {"user_id": 1})
        self.assertError(c, ErrorCode.JSON_DECODING, fatal=True)
        self.assertFalse(self.h.registry.is_online(1))


class MessageTests(ErrorAssertions):
    def setUp(self) -> None:
        self.h = Harness()
        self.watcher = self.h.login(9, [1])
        self.c = self.h.login(1, [2, 3])
        self.assertEqual(self.watcher.events(), [(1, True, "online")])

    def test_ping(self) -> None:
        """A client ping is answered by pong."""
        self.c.send({"type": "ping"})
        self.assertEqual(self.c.received(), [{"type": "pong"}])

    def test_pong(self) -> None:
        """A client pong gets no answer."""
        self.c.send({"type": "pong"})
        self.assertEqual(self.c.received(), [])
        self.assertFalse(self.c.closed)

    def test_bye(self) -> None:
        """bye closes cleanly, without an error; the user goes offline."""
        self.c.send({"type": "bye"})
        self.assertEqual(self.c.received(), [])
        self.assertTrue(self.c.closed)
        self.c.lose()
        self.assertEqual(self.watcher.events(), [(1, False, "offline")])

    def test_status(self) -> None:
        """A status change reaches watchers with its text."""
        self.c.send({"type": "status", "status": "away", "text": "lunch"})
        self.assertEqual(self.watcher.received(), [
            {"type": "presence", "user_id": 1, "online": True, "status": "away",
             "text": "lunch"}])

    def test_status_text_cleared(self) -> None:
        """A status message without text clears the text."""
        self.c.send({"type": "status", "status": "away", "text": "lunch"})
        self.c.send({"type": "status", "status": "away"})
        self.assertEqual([m["text"] for m in self.watcher.received()],
                         ["lunch", ""])

    def test_status_text_limit(self) -> None:
        """256 code points of text are allowed, 257 are error 13 (not fatal)."""
        self.c.send({"type": "status", "status": "busy", "text": "é" * 256})
        self.assertEqual(self.c.received(), [])
        self.c.send({"type": "status", "status": "busy", "text": "é" * 257})
        self.assertError(self.c, ErrorCode.INVALID_MESSAGE, fatal=False)

    def test_bad_status(self) -> None:
        """A missing or unknown status is error 13, not fatal; nothing changes."""
        for bad in ({}, {"status": "offline"}, {"status": None}, {"status": "away",
                    "text": 3}):
            self.c.send({"type": "status", **bad})
            self.assertError(self.c, ErrorCode.INVALID_MESSAGE, fatal=False)
        self.assertEqual(self.watcher.received(), [])

    def test_same_status_no_event(self) -> None:
        """Setting the status it already has sends no event."""
        self.c.send({"type": "status", "status": "online"})
        self.assertEqual(self.watcher.received(), [])

    def test_invisible(self) -> None:
        """Invisible is offline for watchers at once, with last_seen; back is online."""
        self.h.clock.advance(2.5)
        self.c.send({"type": "status", "status": "invisible"})
        self.assertEqual(self.watcher.received(), [
            {"type": "presence", "user_id": 1, "online": False, "status": "offline",
             "last_seen": self.h.clock.seconds()}])
        self.c.send({"type": "status", "status": "busy"})
        self.assertEqual(self.watcher.events(), [(1, True, "busy")])

    def test_unknown_type(self) -> None:
        """An unknown type after login is error 13, not fatal."""
        self.c.send({"type": "dance"})
        self.assertError(self.c, ErrorCode.INVALID_MESSAGE, fatal=False)
        self.c.send({"type": "ping"})
        self.assertEqual(self.c.received(), [{"type": "pong"}])

    def test_friends_replace(self) -> None:
        """friends replaces the list; newly watched online friends are snapshotted."""
        self.h.login(4)
        self.c.send({"type": "friends", "friends": [3, 4]})
        self.assertEqual(self.c.events(), [(4, True, "online")])
        self.assertEqual(list(self.c.session.friends), [3, 4])

    def test_friends_add_remove(self) -> None:
        """add/remove change the list; removal sends nothing."""
        self.h.login(5)
        self.c.send({"type": "friends", "add": [5], "remove": [2]})
        self.assertEqual(self.c.events(), [(5, True, "online")])
        self.assertEqual(list(self.c.session.friends), [3, 5])
        self.c.send({"type": "friends", "remove": [5]})
        self.assertEqual(self.c.received(), [])

    def test_friends_errors_not_fatal(self) -> None:
        """Bad friends updates are 5, 6, 11 or 13, not fatal; the old list stays."""
        h = Harness(max_friends=3)
        c = h.login(1, [2, 3])
        for message, code in (
            ({"friends": [0]}, ErrorCode.INVALID_USER_ID),
            ({"add": ["7"]}, ErrorCode.INVALID_USER_ID),
            ({"friends": [1, 2]}, ErrorCode.FRIEND_WITH_YOURSELF),
            ({"add": [1]}, ErrorCode.FRIEND_WITH_YOURSELF),
            ({"add": [4, 5]}, ErrorCode.TOO_MANY_FRIENDS),
            ({"friends": [2, 3, 4, 5]}, ErrorCode.TOO_MANY_FRIENDS),
            ({"friends": [2], "add": [3]}, ErrorCode.INVALID_MESSAGE),
            ({}, ErrorCode.INVALID_MESSAGE),
        ):
            c.send({"type": "friends", **message})
            self.assertError(c, code, fatal=False)
            self.assertEqual(list(c.session.friends), [2, 3])

    def test_relogin_same_user(self) -> None:
        """A login again as the same user replaces list and status and is a ping."""
        self.h.login(7)
        self.c.send({"user_id": 1, "friends": [7], "status": "away", "token": "x"})
        self.assertEqual(self.c.received(), [
            {"type": "presence", "user_id": 7, "online": True, "status": "online",
             "text": ""},
            {"type": "pong"}])
        self.assertEqual(self.watcher.events(), [(1, True, "away")])

    def test_relogin_errors_not_fatal(self) -> None:
        """Errors in a repeated login are not fatal; another user_id is 13."""
        self.c.send({"user_id": 2})
        self.assertError(self.c, ErrorCode.INVALID_MESSAGE, fatal=False)
        self.c.send({"user_id": 1, "friends": [1]})
        self.assertError(self.c, ErrorCode.FRIEND_WITH_YOURSELF, fatal=False)
        self.c.send({"user_id": "1"})
        self.assertError(self.c, ErrorCode.INVALID_USER_ID, fatal=False)
        self.assertEqual(list(self.c.session.friends), [2, 3])

    def test_live_events_say_which_friend(self) -> None:
        """Each live event names the friend that changed."""
        self.h.login(2)
        three = self.h.login(3)
        three.lose()
        self.assertEqual(self.c.events(), [
            (2, True, "online"), (3, True, "online"), (3, False, "offline")])


class ManySessionsTests(SynchronousTestCase):
    def test_one_transition_each_way(self) -> None:
        """Two sessions of a user: one online event, one offline when both end."""
        h = Harness()
        watcher = h.login(9, [1])
        a = h.login(1)
        b = h.login(1, status="busy")
        self.assertEqual(watcher.events(), [(1, True, "online"), (1, True, "busy")])
        a.lose()
        self.assertEqual(watcher.events(), [])
        b.lose()
        self.assertEqual(watcher.events(), [(1, False, "offline")])

    def test_later_login_without_status_keeps_it(self) -> None:
        """A second session's login without status leaves the shared status."""
        h = Harness()
        watcher = h.login(9, [1])
        h.login(1, status="away")
        h.login(1)
        self.assertEqual(watcher.events(), [(1, True, "away")])
        self.assertEqual(h.registry.status_of(1), ("away", ""))


class TimerTests(ErrorAssertions):
    def test_login_timeout(self) -> None:
        """No login within the timeout: fatal error 1; no ping before welcome."""
        h = Harness(timeout=10)
        c = h.connect()
        h.clock.advance(9.9)
        self.assertEqual(c.received(), [])
        h.clock.advance(0.1)
        self.assertError(c, ErrorCode.CLIENT_TIMEOUT, fatal=True)

    def test_ping_schedule(self) -> None:
        """A ping after timeout/2 of silence, error 1 after the full timeout."""
        h = Harness(timeout=10)
        c = h.login(1)
        h.clock.advance(4.9)
        self.assertEqual(c.received(), [])
        h.clock.advance(0.1)
        self.assertEqual(c.received(), [{"type": "ping", "msg": wire.PING_MSG}])
        h.clock.advance(4.9)
        self.assertEqual(c.received(), [])
        h.clock.advance(0.1)
        self.assertError(c, ErrorCode.CLIENT_TIMEOUT, fatal=True)

    def test_pong_keeps_alive(self) -> None:
        """Answering each ping keeps a silent client connected."""
        h = Harness(timeout=10)
        c = h.login(1)
        for _ in range(5):
            h.clock.advance(5)
            self.assertEqual(c.received()[0]["type"], "ping")
            h.clock.advance(4)
            c.send({"type": "pong"})
        self.assertFalse(c.closed)

    def test_any_line_resets(self) -> None:
        """Any line resets the idle timer: a client pinging every 4 s gets no ping."""
        h = Harness(timeout=10)
        c = h.login(1)
        for _ in range(10):
            h.clock.advance(4)
            c.send({"type": "ping"})
            self.assertEqual(c.received(), [{"type": "pong"}])

    def test_timeout_is_offline(self) -> None:
        """A timed-out session's user goes offline; the log reason is the timeout."""
        h = Harness(timeout=10)
        watcher = h.login(9, [1])
        c = h.login(1)
        watcher.received()
        h.clock.advance(5)
        watcher.send({"type": "ping"})
        h.clock.advance(5)
        self.assertTrue(c.closed)
        c.lose()
        self.assertIn((1, False, "offline"), watcher.events())
        self.assertEqual(c.session._exit, "client timeout")

    def test_close_failsafe(self) -> None:
        """A fatal close that never completes is aborted by the failsafe."""
        h = Harness()
        c = h.connect()
        c.send(b"nope\n")
        self.assertTrue(c.closed)
        self.assertFalse(c.aborted)
        h.clock.advance(5)
        self.assertTrue(c.aborted)


class GraceTests(SynchronousTestCase):
    def test_back_within_grace(self) -> None:
        """A user back within --offline-grace was never offline: no events."""
        h = Harness(offline_grace=3)
        watcher = h.login(9, [1])
        c = h.login(1, status="away")
        watcher.received()
        c.lose()
        h.clock.advance(2.9)
        h.login(1)
        h.clock.advance(1)
        h.clock.advance(1)
        self.assertEqual(watcher.received(), [])
        self.assertEqual(h.registry.status_of(1), ("away", ""))

    def test_grace_expires(self) -> None:
        """Past the grace, offline is sent with last_seen = when the session ended."""
        h = Harness(offline_grace=3)
        watcher = h.login(9, [1])
        c = h.login(1)
        watcher.received()
        ended = h.clock.seconds()
        c.lose()
        h.clock.advance(2.9)
        self.assertEqual(watcher.received(), [])
        h.clock.advance(0.1)
        self.assertEqual(watcher.received(), [
            {"type": "presence", "user_id": 1, "online": False, "status": "offline",
             "last_seen": ended}])

    def test_invisible_not_graced(self) -> None:
        """Turning invisible is reported at once, grace or not."""
        h = Harness(offline_grace=30)
        watcher = h.login(9, [1])
        c = h.login(1)
        watcher.received()
        c.send({"type": "status", "status": "invisible"})
        self.assertEqual(watcher.events(), [(1, False, "offline")])


class MutualTests(SynchronousTestCase):
    def test_mutual(self) -> None:
        """In mutual mode W sees X only while X lists W."""
        h = Harness(mutual=True)
        w = h.login(1, [2])
        x = h.login(2, [3])
        self.assertEqual(w.events(), [])
        x.send({"type": "friends", "add": [1]})
        self.assertEqual(w.events(), [(2, True, "online")])
        self.assertEqual(x.events(), [(1, True, "online")])
        x.send({"type": "friends", "remove": [1]})
        self.assertEqual(w.events(), [(2, False, "offline")])


class LimitTests(ErrorAssertions):
    def test_max_connections(self) -> None:
        """Past --max-connections, a new connection gets fatal error 16."""
        h = Harness(max_connections=2)
        a, b = h.connect(), h.connect()
        c = h.connect()
        self.assertError(c, ErrorCode.TOO_MANY_CONNECTIONS, fatal=True)
        c.lose()
        a.lose()
        d = h.connect()
        self.assertEqual(d.received(), [])
        self.assertFalse(d.closed or b.closed)

    def test_max_per_ip(self) -> None:
        """Past --max-per-ip from one address: error 16; other addresses are fine."""
        h = Harness(max_per_ip=1)
        h.connect("198.51.100.7")
        c = h.connect("198.51.100.7")
        self.assertError(c, ErrorCode.TOO_MANY_CONNECTIONS, fatal=True)
        self.assertFalse(h.connect("198.51.100.8").closed)


class BackpressureTests(ErrorAssertions):
    def test_over_max_buffer(self) -> None:
        """A paused client whose unsent output passes --max-buffer is aborted (14)."""
        h = Harness(max_buffer=1000)
        watcher = h.login(9, [1])
        c = h.login(1)
        watcher.received()
        watcher.proto.pauseProducing()
        for i in range(20):
            c.send({"type": "status", "status": "away", "text": str(i) * 50})
        self.assertTrue(watcher.aborted)
        last = watcher.received()[-1]
        self.assertEqual(last["error"], int(ErrorCode.SLOW_CONSUMER))
        watcher.lose()
        self.assertEqual(watcher.session._exit, "slow consumer")
        self.assertFalse(c.closed)

    def test_server_wide_unsent_budget(self) -> None:
        """Paused clients together may hold --max-unsent: the one whose output
        passes it is cut off (14), though under its own --max-buffer."""
        h = Harness(max_buffer=100_000, max_unsent=1500)
        a, b = h.login(8, [1]), h.login(9, [1])
        c = h.login(1)
        for w in (a, b):
            w.received()
            w.proto.pauseProducing()
        for i in range(10):
            c.send({"type": "status", "status": "away", "text": str(i) * 50})
        # a is told first, so a's delivery is the one that passes the budget;
        # what it held is dropped with it, and b then stays under.
        self.assertEqual([a.aborted, b.aborted], [True, False])
        self.assertEqual(a.received()[-1]["error"], int(ErrorCode.SLOW_CONSUMER))
        a.lose()
        self.assertGreater(h.server.unsent, 0)
        b.proto.resumeProducing()
        self.assertEqual(h.server.unsent, 0)

    def test_cut_off_leaves_no_timer(self) -> None:
        """A client cut off at --max-buffer leaves no paused timer behind."""
        h = Harness(max_buffer=100)
        talker = h.login(2)
        slow = h.login(1, [2])
        slow.proto.pauseProducing()
        for i in range(5):
            talker.send({"type": "status", "status": "away", "text": "x" * 50 + str(i)})
        self.assertTrue(slow.aborted)
        slow.lose()
        pending = h.clock.calls
        cut_off = slow.session.slow_consumer
        self.assertEqual([c for c in pending if c.func == cut_off], [])

    def test_idle_timers_stay_one_call(self) -> None:
        """Hundreds of idle clients answering pings keep one timer call in all."""
        h = Harness(timeout=10)
        clients = [h.login(i + 1) for i in range(200)]
        for _ in range(8):
            h.clock.pump([5] + [SPACING] * 10)
            for c in clients:
                self.assertEqual(c.received(), [{"type": "ping", "msg": wire.PING_MSG}])
                c.send({"type": "pong"})
            self.assertEqual(len(h.clock.getDelayedCalls()), 1)

    def test_resume_resets_count(self) -> None:
        """Output counted while paused is forgotten once the transport drains."""
        h = Harness(max_buffer=1000)
        watcher = h.login(9, [1])
        c = h.login(1)
        for i in range(20):
            watcher.proto.pauseProducing()
            c.send({"type": "status", "status": "away", "text": str(i) * 50})
            watcher.proto.resumeProducing()
        self.assertFalse(watcher.closed)

    def test_paused_too_long(self) -> None:
        """A client paused for longer than --timeout is cut off with error 14."""
        h = Harness(timeout=10)
        c = h.login(1)
        c.proto.pauseProducing()
        h.clock.advance(4)
        c.send({"type": "ping"})
        h.clock.advance(5.9)
        c.transport.clear()
        self.assertFalse(c.closed)
        h.clock.advance(0.1)
        self.assertTrue(c.aborted)
        self.assertError(c, ErrorCode.SLOW_CONSUMER, fatal=True)

    def test_registered_as_streaming_producer(self) -> None:
        """The protocol registers itself as a streaming producer on its transport."""
        c = Harness().connect()
        self.assertIs(c.transport.producer, c.proto)
        self.assertTrue(c.transport.streaming)


class ShutdownTests(ErrorAssertions):
    def test_shutdown(self) -> None:
        """On shutdown every session gets error 15 and no presence events."""
        h = Harness()
        a = h.login(1, [2])
        b = h.login(2, [1])
        a.received()
        d = h.factory.server.shutdown()
        for c in (a, b):
            self.assertError(c, ErrorCode.SERVER_SHUTTING_DOWN, fatal=True)
        a.lose()
        self.assertEqual(b.received(), [])
        self.assertNoResult(d)
        b.lose()
        self.successResultOf(d)

    def test_refused_while_stopping(self) -> None:
        """A connection arriving during shutdown is refused."""
        h = Harness()
        h.factory.server.shutdown()
        c = h.connect()
        self.assertError(c, ErrorCode.TOO_MANY_CONNECTIONS, fatal=True)


class UnexpectedErrorTests(ErrorAssertions):
    def test_internal_error_contained(self) -> None:
        """A bug while handling a line costs that session only: fatal error 7."""
        h = Harness()
        c = h.login(1)
        other = h.login(2)

        def broken(*args: object) -> None:
            raise RuntimeError("bug")

        h.registry.set_status = broken  # type: ignore[method-assign,assignment]
        c.send({"type": "status", "status": "away"})
        self.assertError(c, ErrorCode.UNKNOWN, fatal=True)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        other.send({"type": "ping"})
        self.assertEqual(other.received(), [{"type": "pong"}])


class WordingTests(SynchronousTestCase):
    def test_demo_wording(self) -> None:
        """Codes 0..8 keep the demo's wording."""
        self.assertEqual(
            [ErrorCode(i).wording for i in range(9)],
            ["No Error", "Client timeout", "Unknown Client timeout",
             "JSON decoding Error", "JSON encoding Error", "Invalid UserID",
             "You can't be friend with yourself", "Unknown Error",
             "Server Connection Error"])


class FairShareTests(SynchronousTestCase):
    """One client's burst is handled over several turns; others go first."""

    def test_burst_spread_over_turns(self) -> None:
        """A 200-change burst to 100 watchers: a bystander's ping is answered
        before most changes reach the watchers, the flooder's socket is not
        read meanwhile, and every watcher gets every change, in order."""
        h = Harness()
        watchers = [h.login(100 + i, [1]) for i in range(100)]
        flooder = h.login(1)
        bystander = h.login(2)
        for w in watchers:
            w.received()
        flooder.send(*[
            {"type": "status", "status": "away", "text": str(i)} for i in range(200)
        ])
        first_turn = len(watchers[-1].received())
        self.assertGreater(first_turn, 0)
        self.assertLess(first_turn, 20)
        self.assertEqual(flooder.transport.producerState, "paused")
        bystander.send({"type": "ping"})
        self.assertEqual(bystander.received(), [{"type": "pong"}])
        turns = 0
        while flooder.session.busy:
            one_turn(h.clock)
            turns += 1
            self.assertEqual(bystander.received(), [])
        self.assertGreater(turns, 5)
        self.assertEqual(flooder.transport.producerState, "producing")
        for w in watchers[:-1]:
            texts = [m["text"] for m in w.received()]
            self.assertEqual(texts, [str(i) for i in range(200)])

    def test_line_too_long_after_queued_messages(self) -> None:
        """An over-long line behind queued messages is refused after them."""
        h = Harness(max_line=100, turn_budget=2)
        w = h.login(5, [1])
        c = h.login(1)
        w.received()
        c.send(*[{"type": "status", "status": "busy", "text": str(i)}
                 for i in range(4)], b"x" * 200)
        while c.session.busy:
            h.clock.advance(0)
        self.assertEqual([m["text"] for m in w.received()], ["0", "1", "2", "3"])
        self.assertEqual(c.received()[-1]["error"], int(ErrorCode.LINE_TOO_LONG))

    def test_keepalive_waits_its_turn(self) -> None:
        """A ping sent while a burst is queued is answered after the burst."""
        h = Harness(turn_budget=2)
        c = h.login(1)
        c.send(*[{"type": "status", "status": "busy", "text": str(i)}
                 for i in range(3)])
        c.send(b'{"type":"ping"}\n')
        self.assertEqual(c.received(), [])
        while c.session.busy:
            h.clock.advance(0)
        self.assertEqual(c.received(), [{"type": "pong"}])


class V0DetectionTests(SynchronousTestCase):
    """v0 or v1 is told from how the login ends (PROTOCOL.md, Protocol v0)."""

    LOGIN = b'{"user_id":1,"friends":[2,3,4]}'

    def test_object_without_newline_is_v0(self) -> None:
        """A login object with no newline within 100 ms: v0, answered once,
        with no terminator and no welcome."""
        h = Harness()
        c = h.connect()
        c.transport.clear()
        c.send(self.LOGIN)
        h.clock.advance(0.099)
        self.assertEqual(c.transport.value(), b"")
        h.clock.advance(0.001)
        self.assertEqual(
            c.transport.value(), b'{"msg":"are you still there?","error":0}'
        )
        self.assertIsNotNone(c.session.v0)
        self.assertTrue(h.registry.is_online(1))

    def test_newline_in_a_later_write_is_v1(self) -> None:
        """A line client that writes its newline separately is not v0."""
        h = Harness()
        c = h.connect()
        c.send(self.LOGIN)
        h.clock.advance(0.05)
        c.send(b"\n")
        self.assertEqual(c.received()[0]["type"], "welcome")
        h.clock.advance(1)
        self.assertIsNone(c.session.v0)

    def test_v0_never_told_unasked(self) -> None:
        """Events wait for the v0 client's next message, one per message, in
        order; v1 watchers see the v0 user like any other."""
        h = Harness()
        v1 = h.login(2, [1])
        c = h.connect()
        c.send(self.LOGIN)
        h.clock.advance(0.1)
        # The login's own reply: the snapshot's first event (user 2).
        self.assertEqual(c.transport.value(), b'{"online":true}')
        c.transport.clear()
        self.assertEqual(v1.events(), [(1, True, "online")])
        h.login(3)
        h.login(4).lose()
        self.assertEqual(c.transport.value(), b"")
        replies = []
        for _ in range(4):
            c.transport.clear()
            c.send(self.LOGIN)
            replies.append(c.transport.value())
        self.assertEqual(replies, [
            b'{"online":true}', b'{"online":true}', b'{"online":false}',
            b'{"msg":"are you still there?","error":0}',
        ])

    def test_v0_fatal_error_in_demo_form(self) -> None:
        """A v0 login listing oneself gets the demo's error 6, then close."""
        h = Harness()
        c = h.connect()
        c.transport.clear()
        c.send(b'{"user_id":5,"friends":[2,3,4,5]}')
        h.clock.advance(0.1)
        self.assertEqual(
            c.transport.value(),
            b'{"msg":"[server] You can\'t be friend with yourself","error":6}',
        )
        self.assertTrue(c.closed)

    def test_v0_overflow_is_slow_consumer(self) -> None:
        """More than --max-buffer bytes of waiting v0 events: error 14."""
        h = Harness(max_buffer=40)
        c = h.connect()
        c.send(b'{"user_id":1,"friends":[2,3,4,5]}')
        h.clock.advance(0.1)
        c.transport.clear()
        for uid in (2, 3, 4):
            h.login(uid)
        self.assertEqual(
            c.transport.value(), b'{"msg":"[server] Slow consumer","error":14}'
        )
        self.assertTrue(c.closed)


    def test_v0_events_count_toward_max_unsent(self) -> None:
        """Waiting v0 events count in --max-unsent with everything unsent;
        answered or dropped, they count no more."""
        h = Harness(max_unsent=40)
        c = h.connect()
        c.send(b'{"user_id":1,"friends":[2,3,4]}')
        h.clock.advance(0.1)
        h.login(2)
        self.assertEqual(h.server.unsent, len(b'{"online":true}'))
        c.send(b'{"user_id":1,"friends":[2,3,4]}')
        self.assertEqual(h.server.unsent, 0)
        h.login(3)
        h.login(4)
        self.assertEqual(h.server.unsent, 2 * len(b'{"online":true}'))
        h.login(5)  # not a friend: nothing waits for it
        d = h.connect()
        d.send(b'{"user_id":9,"friends":[2,3,4]}')
        h.clock.advance(0.1)  # its snapshot passes the server's budget
        self.assertTrue(d.closed)
        self.assertFalse(c.closed)
        c.lose()
        d.lose()
        self.assertEqual(h.server.unsent, 0)


class UnfinishedInputTests(ErrorAssertions):
    """What clients can make the server hold in unfinished lines is bounded."""

    def test_shorter_limit_before_login(self) -> None:
        """Before the login a line may be --max-login-line long (error 9 past
        it, before its end); after the login, --max-line."""
        h = Harness(max_line=1000, max_login_line=100)
        c = h.connect()
        c.transport.clear()
        c.send(b'{"user_id": 1, "pad": "' + b"x" * 100)
        self.assertError(c, ErrorCode.LINE_TOO_LONG, fatal=True)
        c.lose()
        self.assertEqual(h.factory.server.unfinished, 0)
        ok = h.login(2)
        ok.send({"type": "ping", "pad": "x" * 500})
        self.assertEqual(ok.received(), [{"type": "pong"}])

    def test_whole_login_line_over_the_login_limit(self) -> None:
        """A complete first line longer than --max-login-line is error 9."""
        h = Harness(max_login_line=50)
        c = h.connect()
        c.transport.clear()
        c.send({"user_id": 1, "friends": list(range(2, 40))})
        self.assertError(c, ErrorCode.LINE_TOO_LONG, fatal=True)
        self.assertEqual(h.registry.users, 0)

    def test_global_budget(self) -> None:
        """Past --max-unfinished for all connections together, the connection
        that adds more is refused (16); the others keep what they hold."""
        h = Harness(max_unfinished=1000)
        a, b = h.connect(), h.connect()
        a.transport.clear()
        b.transport.clear()
        a.send(b'{"user_id": 1, "friends": [' + b"2, " * 200)
        self.assertEqual(a.transport.value(), b"")
        b.send(b'{"user_id": 3, "friends": [' + b"2, " * 200)
        self.assertError(b, ErrorCode.TOO_MANY_CONNECTIONS, fatal=True)
        b.lose()
        a.send(b"4]}\n")
        self.assertEqual(a.received()[0]["type"], "welcome")
        self.assertEqual(h.factory.server.unfinished, 0)

    def test_global_budget_whole_line(self) -> None:
        """A whole line, handled in the read that brings it, still counts
        against --max-unfinished: with what another connection holds it
        passes the budget, and it is refused (16), not handled."""
        h = Harness(max_unfinished=1000)
        a, b = h.connect(), h.connect()
        a.transport.clear()
        b.transport.clear()
        a.send(b'{"user_id": 1, "friends": [' + b"2, " * 200)
        b.send({"user_id": 3, "friends": list(range(10, 210))})
        self.assertError(b, ErrorCode.TOO_MANY_CONNECTIONS, fatal=True)
        self.assertEqual(h.registry.users, 0)
        b.lose()
        b2 = h.connect()
        b2.send({"user_id": 3, "friends": [4]})
        self.assertEqual(b2.received()[0]["type"], "welcome")


# -- the same tests over the WebSocket front end -------------------------------


class OverWebSocket(SynchronousTestCase):
    """Runs a test case's tests over the WebSocket front end."""

    def setUp(self) -> None:
        self.patch(Harness, "frontend", "websocket")
        super().setUp()


class LoginOverWebSocket(OverWebSocket, LoginTests):
    """LoginTests, over WebSocket."""


class JsonErrorOverWebSocket(OverWebSocket, JsonErrorTests):
    """JsonErrorTests, over WebSocket."""


class MessageOverWebSocket(OverWebSocket, MessageTests):
    """MessageTests, over WebSocket."""


class ManySessionsOverWebSocket(OverWebSocket, ManySessionsTests):
    """ManySessionsTests, over WebSocket."""


class TimerOverWebSocket(OverWebSocket, TimerTests):
    """TimerTests, over WebSocket."""


class GraceOverWebSocket(OverWebSocket, GraceTests):
    """GraceTests, over WebSocket."""


class MutualOverWebSocket(OverWebSocket, MutualTests):
    """MutualTests, over WebSocket."""


class LimitOverWebSocket(OverWebSocket, LimitTests):
    """LimitTests, over WebSocket."""


class BackpressureOverWebSocket(OverWebSocket, BackpressureTests):
    """BackpressureTests, over WebSocket."""


class ShutdownOverWebSocket(OverWebSocket, ShutdownTests):
    """ShutdownTests, over WebSocket."""


class UnexpectedErrorOverWebSocket(OverWebSocket, UnexpectedErrorTests):
    """UnexpectedErrorTests, over WebSocket."""


class FairShareOverWebSocket(OverWebSocket, FairShareTests):
    """FairShareTests, over WebSocket."""
