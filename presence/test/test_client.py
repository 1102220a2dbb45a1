"""The client library on fake connections and a fake clock."""

from __future__ import annotations

from twisted.application.internet import backoffPolicy
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from presence.client import (
    Connected,
    Disconnected,
    ErrorReceived,
    Event,
    Friend,
    PresenceChanged,
    PresenceError,
    Retrying,
    Session,
    connect,
)
from presence.test.client_support import FakeEndpoint, Peer
from presence.wire.errors import ErrorCode


class ClientTestCase(SynchronousTestCase):
    """A session on a fake endpoint and a fake clock, with its events recorded;
    L{Peer} plays the server."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_764_000_000)
        self.endpoint = FakeEndpoint()
        self.events: list[Event] = []

    def start(self, user_id: int = 1, friends: tuple[int, ...] = (2, 3, 4),
              **kwargs) -> Deferred[Session]:
        return connect(self.clock, self.endpoint, user_id, friends,
                       observer=self.events.append, address="tcp:server:8081",
                       **kwargs)

    def logged_in(self, timeout: float = 15, **kwargs) -> tuple[Session, Peer]:
        connecting = self.start(**kwargs)
        peer = self.endpoint.accept()
        peer.welcome(timeout=timeout)
        session = self.successResultOf(connecting)
        self.events.clear()
        return session, peer

    def presence(self) -> list[tuple[int, bool, str]]:
        return [(e.friend.user_id, e.friend.online, e.friend.status)
                for e in self.events if isinstance(e, PresenceChanged)]


class LoginTests(ClientTestCase):
    """What the client sends to log in, and how the first connect ends:
    welcome, error, refusal, silence or cancel."""

    def test_seed_compatible_login(self):
        """Without token or status the login is exactly the demo's line."""
        self.start()
        peer = self.endpoint.accept()
        self.assertEqual(peer.transport.value(), b'{"user_id":1,"friends":[2,3,4]}\n')

    def test_login_carries_token_status_and_text(self):
        """token, status and text given to connect() go into the login."""
        self.start(token="T", status="away", text="lunch")
        peer = self.endpoint.accept()
        self.assertEqual(peer.heard(), [{"user_id": 1, "friends": [2, 3, 4],
                                         "token": "T", "status": "away",
                                         "text": "lunch"}])

    def test_fires_on_welcome(self):
        """connect() fires with the session once welcome arrives, not before."""
        connecting = self.start()
        peer = self.endpoint.accept()
        self.assertNoResult(connecting)
        peer.welcome(timeout=15)
        session = self.successResultOf(connecting)
        self.assertEqual((session.user_id, session.timeout), (1, 15.0))
        self.assertTrue(session.connected)
        self.assertEqual(self.events, [Connected(1, 15.0, reconnected=False)])

    def test_login_error_fails_with_server_code(self):
        """An error before welcome fails connect() with the server's code and
        message, and the client closes its side."""
        connecting = self.start(user_id=5, friends=(2, 5))
        peer = self.endpoint.accept()
        peer.say(type="error", error=6, msg="You can't be friend with yourself")
        self.assertTrue(peer.closing)
        peer.close()
        error = self.failureResultOf(connecting, PresenceError).value
        self.assertEqual(error.code, ErrorCode.FRIEND_WITH_YOURSELF)
        self.assertEqual(error.message, "You can't be friend with yourself")

    def test_unknown_error_code(self):
        """A code this client does not know becomes 7 and keeps the words."""
        connecting = self.start()
        peer = self.endpoint.accept()
        peer.say(type="error", error=99, msg="Brand new")
        peer.close()
        error = self.failureResultOf(connecting, PresenceError).value
        self.assertEqual(error.code, ErrorCode.UNKNOWN)
        self.assertIn("Brand new", error.message)

    def test_refused_is_error_8_naming_the_address(self):
        """A connection that cannot be made is error 8, naming the address."""
        connecting = self.start()
        self.endpoint.refuse()
        error = self.failureResultOf(connecting, PresenceError).value
        self.assertEqual(error.code, ErrorCode.SERVER_CONNECTION)
        self.assertIn("tcp:server:8081", error.message)

    def test_closed_before_welcome(self):
        """A connection closed without a word before welcome is error 8."""
        connecting = self.start()
        self.endpoint.accept().close()
        error = self.failureResultOf(connecting, PresenceError).value
        self.assertEqual(error.code, ErrorCode.SERVER_CONNECTION)

    def test_login_timeout(self):
        """Without a welcome within login_timeout the client gives up (8)."""
        connecting = self.start(login_timeout=10)
        peer = self.endpoint.accept()
        self.clock.advance(9.9)
        self.assertFalse(peer.aborted)
        self.clock.advance(0.1)
        self.assertTrue(peer.aborted)
        peer.close()
        error = self.failureResultOf(connecting, PresenceError).value
        self.assertEqual(error.code, ErrorCode.SERVER_CONNECTION)
        self.assertIn("no welcome", error.message)

    def test_bad_server_line(self):
        """A line from the server that is not JSON aborts with error 3."""
        connecting = self.start()
        peer = self.endpoint.accept()
        peer.say_raw(b"not json\n")
        self.assertTrue(peer.aborted)
        peer.close()
        error = self.failureResultOf(connecting, PresenceError).value
        self.assertEqual(error.code, ErrorCode.JSON_DECODING)

    def test_cancel_aborts(self):
        """Cancelling connect() while waiting for welcome aborts the connection."""
        connecting = self.start()
        peer = self.endpoint.accept()
        connecting.cancel()
        self.assertTrue(peer.aborted)
        peer.close()
        self.failureResultOf(connecting, CancelledError)


class ViewTests(ClientTestCase):
    """The session's view of its friends, kept from the snapshot and events,
    and the observers of lines and events."""

    def test_view_starts_with_every_friend_offline(self):
        """Before any event each watched friend is known and offline."""
        session, _ = self.logged_in()
        self.assertEqual(dict(session.view), {i: Friend(i) for i in (2, 3, 4)})
        self.assertEqual(session.online(), [])

    def test_snapshot_and_live_events(self):
        """Presence events update the view and reach the observer in order,
        each with the friend's previous state."""
        session, peer = self.logged_in()
        peer.say(type="presence", user_id=2, online=True, status="away", text="lunch")
        peer.say(type="presence", user_id=3, online=True, status="online", text="")
        peer.say(type="presence", user_id=2, online=False, status="offline",
                 last_seen=1764000009.5)
        self.assertEqual(session.view[2], Friend(2, False, "offline", "", 1764000009.5))
        self.assertEqual(session.online(), [Friend(3, True, "online", "")])
        self.assertEqual(self.presence(), [(2, True, "away"), (3, True, "online"),
                                           (2, False, "offline")])
        last = self.events[-1]
        assert isinstance(last, PresenceChanged)
        self.assertEqual(last.previous, Friend(2, True, "away", "lunch"))

    def test_malformed_event_ignored(self):
        """A presence event without a valid user id changes nothing."""
        _session, peer = self.logged_in()
        peer.say(type="presence", user_id="2", online=True)
        self.assertEqual(self.events, [])
        self.assertFalse(peer.aborted)

    def test_unknown_message_type_ignored(self):
        """Messages of a type this client does not know are ignored."""
        _, peer = self.logged_in()
        peer.say(type="news", text="hello")
        self.assertEqual(self.events, [])
        self.assertFalse(peer.closing)

    def test_line_observer_sees_lines_verbatim(self):
        """Line observers get each server line as it was sent."""
        session, peer = self.logged_in()
        lines: list[bytes] = []
        session.add_line_observer(lines.append)
        peer.say_raw(b'{"type":"presence","user_id":2,"online":true,'
                     b'"status":"online","text":""}\n')
        self.assertEqual(lines, [b'{"type":"presence","user_id":2,"online":true,'
                                 b'"status":"online","text":""}'])

    def test_broken_observer_does_not_break_others(self):
        """An observer that raises is logged; the others still get the event."""
        session, peer = self.logged_in()

        def broken(event: Event) -> None:
            raise RuntimeError("observer bug")

        session.remove_observer(self.events.append)
        session.add_observer(broken)
        session.add_observer(self.events.append)
        peer.say(type="presence", user_id=2, online=True, status="online", text="")
        self.assertEqual(self.presence(), [(2, True, "online")])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class KeepaliveTests(ClientTestCase):
    """Pings both ways: answering the server's, sending its own when quiet,
    and dropping a server that stays silent."""

    def test_answers_server_ping(self):
        """A server ping is answered with a pong."""
        _, peer = self.logged_in()
        peer.say(type="ping", msg="are you still there?")
        self.assertEqual(peer.heard(), [{"type": "pong"}])

    def test_pings_after_a_third_of_the_timeout(self):
        """The client pings after timeout/3 seconds in which it sent nothing,
        and again every timeout/3 while idle."""
        _, peer = self.logged_in(timeout=15)
        self.clock.advance(4.9)
        self.assertEqual(peer.heard(), [])
        self.clock.advance(0.1)
        self.assertEqual(peer.heard(), [{"type": "ping"}])
        peer.say(type="pong")
        self.clock.advance(5)
        self.assertEqual(peer.heard(), [{"type": "ping"}])

    def test_sending_postpones_the_ping(self):
        """Anything the client sends restarts its keepalive countdown."""
        session, peer = self.logged_in(timeout=15)
        self.clock.advance(4)
        session.set_status("away")
        peer.heard()
        self.clock.advance(4.9)
        self.assertEqual(peer.heard(), [])
        self.clock.advance(0.1)
        self.assertEqual(peer.heard(), [{"type": "ping"}])

    def test_silent_server_is_dropped(self):
        """A server that says nothing for a whole timeout (its pongs
        included) is given up on: the session ends with error 8."""
        session, peer = self.logged_in(timeout=15)
        closed = session.when_closed()
        self.clock.advance(14.9)
        self.assertFalse(peer.aborted)
        peer.say(type="pong")
        self.clock.advance(14.9)
        self.assertFalse(peer.aborted)
        self.clock.advance(0.1)
        self.assertTrue(peer.aborted)
        peer.close()
        error = self.failureResultOf(closed, PresenceError).value
        self.assertEqual(error.code, ErrorCode.SERVER_CONNECTION)
        self.assertIn("silent", error.message)

    def test_no_timers_after_close(self):
        """Once the connection is gone no timer is left on the clock."""
        _session, peer = self.logged_in()
        peer.close()
        self.assertEqual(self.clock.getDelayedCalls(), [])


class RequestTests(ClientTestCase):
    """Status and friends requests: confirmed by the pong that follows them,
    or refused by an error that answers them in order."""

    def test_status_confirmed_by_pong(self):
        """set_status sends the status and a ping; the pong confirms it and
        only then is the session's status updated."""
        session, peer = self.logged_in()
        done = session.set_status("away", "lunch")
        self.assertEqual(peer.heard(), [
            {"type": "status", "status": "away", "text": "lunch"}, {"type": "ping"}])
        self.assertNoResult(done)
        self.assertIsNone(session.status)
        peer.say(type="pong")
        self.successResultOf(done)
        self.assertEqual((session.status, session.text), ("away", "lunch"))

    def test_status_without_text_clears_it(self):
        """A status set without a text clears the text, as on the server."""
        session, peer = self.logged_in(status="away", text="lunch")
        done = session.set_status("busy")
        peer.say(type="pong")
        self.successResultOf(done)
        self.assertEqual((session.status, session.text), ("busy", ""))

    def test_refused_request(self):
        """A non-fatal error fails the request with the server's code; the
        state stays and the session goes on."""
        session, peer = self.logged_in()
        done = session.set_status("sleeping")
        peer.say(type="error", error=13, msg="Invalid message: status must be ...")
        peer.say(type="pong")
        error = self.failureResultOf(done, PresenceError).value
        self.assertEqual(error.code, ErrorCode.INVALID_MESSAGE)
        self.assertIsNone(session.status)
        self.assertFalse(peer.closing)
        self.assertTrue(session.connected)

    def test_errors_match_requests_in_order(self):
        """With two requests in flight, an error answers the first one still
        unconfirmed and the pongs confirm the others."""
        session, peer = self.logged_in()
        first = session.add_friends([5])
        second = session.add_friends([1])
        third = session.remove_friends([2])
        peer.say(type="pong")
        peer.say(type="error", error=6, msg="You can't be friend with yourself")
        peer.say(type="pong")
        peer.say(type="pong")
        self.successResultOf(first)
        self.assertEqual(
            self.failureResultOf(second, PresenceError).value.code,
            ErrorCode.FRIEND_WITH_YOURSELF)
        self.successResultOf(third)
        self.assertEqual(session.friends, {3, 4, 5})

    def test_keepalive_pongs_do_not_confirm_later_requests(self):
        """A pong for a keepalive ping sent before a request does not
        confirm that request."""
        session, peer = self.logged_in(timeout=15)
        self.clock.advance(5)
        done = session.set_status("away")
        peer.say(type="pong")
        self.assertNoResult(done)
        peer.say(type="pong")
        self.successResultOf(done)

    def test_unmatched_error_is_an_event(self):
        """A non-fatal error that answers no request reaches the observers."""
        _, peer = self.logged_in()
        peer.say(type="error", error=13, msg="Invalid message")
        (event,) = self.events
        assert isinstance(event, ErrorReceived)
        self.assertEqual((event.error.code, event.error.message),
                         (ErrorCode.INVALID_MESSAGE, "Invalid message"))

    def test_friends_messages(self):
        """add, remove and replace send the matching friends messages."""
        session, peer = self.logged_in()
        session.add_friends([5, 6])
        session.remove_friends([2])
        session.set_friends([3, 7])
        self.assertEqual([m for m in peer.heard() if m["type"] == "friends"], [
            {"type": "friends", "add": [5, 6]},
            {"type": "friends", "remove": [2]},
            {"type": "friends", "friends": [3, 7]},
        ])

    def test_view_follows_confirmed_watch_list(self):
        """A removed friend leaves the view and an added one joins it once
        the server confirmed; the snapshot event for the new one counts."""
        session, peer = self.logged_in()
        peer.say(type="presence", user_id=2, online=True, status="online", text="")
        removed = session.remove_friends([2])
        added = session.add_friends([5])
        peer.say(type="pong")
        peer.say(type="presence", user_id=5, online=True, status="busy", text="")
        peer.say(type="pong")
        self.successResultOf(removed)
        self.successResultOf(added)
        self.assertEqual(sorted(session.view), [3, 4, 5])
        self.assertEqual(session.online(), [Friend(5, True, "busy", "")])

    def test_request_lost_with_connection(self):
        """A request still unconfirmed when the connection drops fails (8)."""
        session, peer = self.logged_in()
        session.when_closed().addErrback(lambda _: None)
        done = session.set_status("away")
        peer.close()
        self.assertEqual(self.failureResultOf(done, PresenceError).value.code,
                         ErrorCode.SERVER_CONNECTION)
        self.assertIsNone(session.status)

    def test_request_after_close(self):
        """A request on a closed session fails at once with error 8."""
        session, peer = self.logged_in()
        session.bye()
        peer.close()
        done = session.set_status("away")
        self.assertEqual(self.failureResultOf(done, PresenceError).value.code,
                         ErrorCode.SERVER_CONNECTION)


class EndingTests(ClientTestCase):
    """How a session ends: bye, a fatal error, or a lost connection."""

    def test_bye(self):
        """bye sends bye and closes; its Deferred fires once the connection
        is gone, and when_closed fires with None."""
        session, peer = self.logged_in()
        closed = session.when_closed()
        leaving = session.bye()
        self.assertEqual(peer.heard(), [{"type": "bye"}])
        self.assertTrue(peer.closing)
        self.assertNoResult(leaving)
        peer.close()
        self.assertIsNone(self.successResultOf(leaving))
        self.assertIsNone(self.successResultOf(closed))
        self.assertEqual(self.events[-1], Disconnected(None, reconnecting=False))

    def test_fatal_error_ends_session(self):
        """A fatal error ends the session with the server's code; the view
        shows nobody online any more."""
        session, peer = self.logged_in()
        peer.say(type="presence", user_id=2, online=True, status="online", text="")
        closed = session.when_closed()
        peer.say(type="error", error=15, msg="Server shutting down")
        self.assertTrue(peer.closing)
        peer.close()
        error = self.failureResultOf(closed, PresenceError).value
        self.assertEqual(error.code, ErrorCode.SERVER_SHUTTING_DOWN)
        self.assertEqual(session.online(), [])
        self.assertFalse(session.connected)

    def test_connection_lost(self):
        """A connection that drops without an error ends the session with 8."""
        session, peer = self.logged_in()
        closed = session.when_closed()
        peer.close()
        self.assertEqual(self.failureResultOf(closed, PresenceError).value.code,
                         ErrorCode.SERVER_CONNECTION)
        # Asked afterwards, the answer is the same.
        self.assertEqual(
            self.failureResultOf(session.when_closed(), PresenceError).value.code,
            ErrorCode.SERVER_CONNECTION)


def fixed_backoff():
    """The default policy's shape without its randomness: 1, 2, 4, ... 30."""
    return backoffPolicy(initialDelay=0.5, maxDelay=30.0, factor=2.0,
                         jitter=lambda: 0.0)


class ReconnectTests(ClientTestCase):
    """With reconnect=True: backoff between attempts, a new login with the
    same watch list and status after each, and what stops reconnecting."""

    def start_reconnecting(self, **kwargs) -> Deferred[Session]:
        return self.start(reconnect=True, retry_policy=fixed_backoff(), **kwargs)

    def reconnecting_session(self, **kwargs) -> tuple[Session, Peer]:
        connecting = self.start_reconnecting(**kwargs)
        peer = self.endpoint.accept()
        peer.welcome()
        session = self.successResultOf(connecting)
        self.events.clear()
        return session, peer

    def delays(self) -> list[float]:
        return [e.delay for e in self.events if isinstance(e, Retrying)]

    def test_backoff_grows_then_caps(self):
        """Refused attempts are retried after 1, 2, 4, ... s, at most 30 s."""
        connecting = self.start_reconnecting()
        for _ in range(7):
            self.endpoint.refuse()
            self.clock.advance(self.delays()[-1])
        self.assertEqual(self.delays(), [1, 2, 4, 8, 16, 30, 30])
        self.assertEqual(len(self.endpoint.attempts), 8)
        self.assertNoResult(connecting)
        disconnected = [e for e in self.events if isinstance(e, Disconnected)]
        self.assertEqual(len(disconnected), 7)
        assert disconnected[0].error is not None
        self.assertIn("tcp:server:8081", disconnected[0].error.message)

    def test_default_policy_has_jitter(self):
        """Without a policy the delays are randomised within the backoff."""
        connect(self.clock, self.endpoint, 1, [2], reconnect=True,
                observer=self.events.append)
        self.endpoint.refuse()
        (delay,) = self.delays()
        self.assertTrue(1 <= delay < 2, delay)

    def test_no_retry_before_the_delay(self):
        """No new attempt is made before the backoff delay has passed."""
        self.start_reconnecting()
        self.endpoint.refuse()
        self.clock.advance(0.9)
        self.assertEqual(len(self.endpoint.attempts), 1)
        self.clock.advance(0.1)
        self.assertEqual(len(self.endpoint.attempts), 2)

    def test_relogin_with_same_watch_list_and_status(self):
        """After a drop the session logs in again with the confirmed watch
        list, status and text, and the token."""
        session, peer = self.reconnecting_session(token="T")
        session.add_friends([5])
        session.set_status("away", "lunch")
        peer.say(type="pong")
        peer.say(type="pong")
        peer.close()
        self.clock.advance(1)
        again = self.endpoint.accept()
        self.assertEqual(again.heard(), [{"user_id": 1, "friends": [2, 3, 4, 5],
                                          "token": "T", "status": "away",
                                          "text": "lunch"}])

    def test_view_rebuilt_from_new_snapshot(self):
        """A drop clears the view; after the new welcome only the friends in
        the new snapshot are online."""
        session, peer = self.reconnecting_session()
        peer.say(type="presence", user_id=2, online=True, status="online", text="")
        peer.say(type="presence", user_id=3, online=True, status="away", text="")
        peer.close()
        self.assertEqual(session.online(), [])
        self.assertFalse(session.connected)
        self.clock.advance(1)
        again = self.endpoint.accept()
        again.welcome()
        again.say(type="presence", user_id=3, online=True, status="away", text="")
        self.assertEqual(session.online(), [Friend(3, True, "away", "")])
        self.assertTrue(session.connected)
        self.assertIn(Connected(1, 15.0, reconnected=True), self.events)

    def test_backoff_restarts_after_welcome(self):
        """A welcome resets the backoff: the next drop waits 1 s again."""
        _session, peer = self.reconnecting_session()
        peer.close()
        self.clock.advance(1)
        self.endpoint.refuse()
        self.clock.advance(2)
        again = self.endpoint.accept()
        again.welcome()
        again.close()
        self.assertEqual(self.delays(), [1, 2, 1])

    def test_refusals_after_accept_back_off(self):
        """A server that accepts and then refuses (16) is backed off from
        like one that cannot be reached."""
        self.start_reconnecting()
        for _ in range(3):
            peer = self.endpoint.accept()
            peer.say(type="error", error=16, msg="Too many connections")
            peer.close()
            self.clock.advance(self.delays()[-1])
        self.assertEqual(self.delays(), [1, 2, 4])
        self.assertEqual(len(self.endpoint.attempts), 4)

    def test_shutdown_error_reconnects(self):
        """Error 15 (server shutting down) does not end a reconnecting
        session: it connects again."""
        session, peer = self.reconnecting_session()
        peer.say(type="error", error=15, msg="Server shutting down")
        peer.close()
        self.clock.advance(1)
        self.assertEqual(len(self.endpoint.attempts), 2)
        self.assertNoResult(session.when_closed())

    def test_auth_failure_stops_reconnecting(self):
        """An authentication failure on a new login ends the session with
        error 10, and no attempt follows."""
        session, peer = self.reconnecting_session(token="old")
        closed = session.when_closed()
        peer.close()
        self.clock.advance(1)
        again = self.endpoint.accept()
        again.say(type="error", error=10, msg="Authentication failed: expired")
        again.close()
        self.clock.advance(3600)
        self.assertEqual(len(self.endpoint.attempts), 2)
        self.assertEqual(self.failureResultOf(closed, PresenceError).value.code,
                         ErrorCode.AUTHENTICATION_FAILED)
        self.assertEqual(self.events[-1].__class__, Disconnected)

    def test_login_refusal_fails_first_connect(self):
        """A login refused for what it says (6) fails connect() at once,
        without retrying."""
        connecting = self.start_reconnecting(user_id=5, friends=(2, 5))
        peer = self.endpoint.accept()
        peer.say(type="error", error=6, msg="You can't be friend with yourself")
        peer.close()
        self.clock.advance(3600)
        self.assertEqual(len(self.endpoint.attempts), 1)
        self.assertEqual(self.failureResultOf(connecting, PresenceError).value.code,
                         ErrorCode.FRIEND_WITH_YOURSELF)

    def test_bye_while_waiting(self):
        """bye between attempts stops retrying and fires at once."""
        session, peer = self.reconnecting_session()
        peer.close()
        self.successResultOf(session.bye())
        self.clock.advance(3600)
        self.assertEqual(len(self.endpoint.attempts), 1)
        self.assertIsNone(self.successResultOf(session.when_closed()))

    def test_bye_while_connected(self):
        """bye on a live connection says bye, closes it and stops retrying."""
        session, peer = self.reconnecting_session()
        leaving = session.bye()
        self.assertEqual(peer.heard(), [{"type": "bye"}])
        self.assertTrue(peer.closing)
        peer.close()
        self.successResultOf(leaving)
        self.clock.advance(3600)
        self.assertEqual(len(self.endpoint.attempts), 1)

    def test_cancel_first_connect(self):
        """Cancelling connect() while retrying stops the service."""
        connecting = self.start_reconnecting()
        self.endpoint.refuse()
        connecting.cancel()
        self.failureResultOf(connecting, CancelledError)
        self.clock.advance(3600)
        self.assertEqual(len(self.endpoint.attempts), 1)

    def test_changes_while_disconnected_go_with_next_login(self):
        """Between connections changes apply locally (checked as the server
        would) and are sent in the next login."""
        session, peer = self.reconnecting_session()
        peer.close()
        self.successResultOf(session.remove_friends([4]))
        self.successResultOf(session.set_status("busy", "meeting"))
        refused = session.add_friends([1])
        self.assertEqual(self.failureResultOf(refused, PresenceError).value.code,
                         ErrorCode.FRIEND_WITH_YOURSELF)
        refused = session.set_status("sleeping")
        self.assertEqual(self.failureResultOf(refused, PresenceError).value.code,
                         ErrorCode.INVALID_MESSAGE)
        self.clock.advance(1)
        again = self.endpoint.accept()
        self.assertEqual(again.heard(), [{"user_id": 1, "friends": [2, 3],
                                          "status": "busy", "text": "meeting"}])


class ByeTests(ClientTestCase):
    """bye while requests are in flight or the session is leaving."""

    def test_bye_waits_for_requests_in_flight(self):
        """bye after a request sends bye only once the request is answered,
        so the request's Deferred reports the server's verdict."""
        session, peer = self.logged_in()
        done = session.set_status("away")
        peer.heard()
        leaving = session.bye()
        self.assertEqual(peer.heard(), [])
        self.assertFalse(peer.closing)
        refused = session.add_friends([5])
        self.assertEqual(self.failureResultOf(refused, PresenceError).value.code,
                         ErrorCode.SERVER_CONNECTION)
        peer.say(type="pong")
        self.successResultOf(done)
        self.assertEqual(peer.heard(), [{"type": "bye"}])
        self.assertTrue(peer.closing)
        peer.close()
        self.successResultOf(leaving)
        self.assertEqual(session.status, "away")

    def test_no_keepalive_while_leaving(self):
        """While waiting to say bye the client sends no keepalive ping."""
        session, peer = self.logged_in(timeout=15)
        session.set_status("away")
        peer.heard()
        session.bye()
        self.clock.advance(10)
        self.assertEqual(peer.heard(), [])
