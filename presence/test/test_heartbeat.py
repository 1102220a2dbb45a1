"""``--heartbeat tcp`` on a fake clock: no pings, no idle drop, no timers.

The server's side runs over both front ends (and v0); the client library's
side on a fake connection.  The socket options themselves are read from
real sockets in test_keepalive.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from presence import wire
from presence.client import Session, connect
from presence.test.client_support import FakeEndpoint, Peer
from presence.test.support import Harness
from presence.test.test_protocol import ErrorAssertions, OverWebSocket
from presence.wire.errors import ErrorCode

# Long enough to pass many timeouts, in steps that let every timer fire.
LONG = [1.0] * 1000


class ServerTests(ErrorAssertions):
    """The session with --heartbeat tcp (over the line front end)."""

    def test_welcome_says_tcp(self) -> None:
        """The welcome carries "heartbeat":"tcp" besides the timeout."""
        c = Harness(timeout=10, heartbeat="tcp").connect()
        c.send({"user_id": 1})
        self.assertEqual(
            c.received(),
            [{"type": "welcome", "user_id": 1, "timeout": 10, "heartbeat": "tcp"}],
        )

    def test_app_welcome_has_no_heartbeat(self) -> None:
        """With the default (app) the welcome is today's, without the field."""
        c = Harness(timeout=10).connect()
        c.send({"user_id": 1})
        self.assertEqual(c.received(), [{"type": "welcome", "user_id": 1,
                                         "timeout": 10}])

    def test_silent_session_never_pinged_nor_dropped(self) -> None:
        """A logged-in client that says nothing for 100 timeouts gets no
        ping and stays connected and online."""
        h = Harness(timeout=10, heartbeat="tcp")
        c = h.login(1)
        h.clock.pump(LONG)
        self.assertEqual(c.received(), [])
        self.assertFalse(c.closed)
        self.assertTrue(h.registry.is_online(1))

    def test_app_mode_still_pings_and_drops(self) -> None:
        """The same silence with --heartbeat app: a ping, then error 1."""
        h = Harness(timeout=10, heartbeat="app")
        c = h.login(1)
        h.clock.advance(5)
        self.assertEqual(c.received(), [{"type": "ping", "msg": wire.PING_MSG}])
        h.clock.advance(5)
        self.assertError(c, ErrorCode.CLIENT_TIMEOUT, fatal=True)

    def test_no_timer_for_logged_in_sessions(self) -> None:
        """Logged-in sessions hold no deadline-heap entry and no timer."""
        h = Harness(timeout=10, heartbeat="tcp")
        clients = [h.login(i + 1, [i + 2]) for i in range(100)]
        self.assertEqual(len(h.server.deadlines), 0)
        self.assertEqual(h.server.deadlines.entries, 0)
        h.clock.advance(0)  # the turn ends: the outbox's one call runs
        self.assertEqual(h.clock.getDelayedCalls(), [])
        # Activity does not add one back.
        for c in clients:
            c.send({"type": "ping"}, {"type": "status", "status": "away"})
        self.assertEqual(h.server.deadlines.entries, 0)
        h.clock.advance(0)
        self.assertEqual(h.clock.getDelayedCalls(), [])

    def test_login_deadline_holds(self) -> None:
        """A connection that does not log in within the timeout still gets
        error 1: the heartbeat is about sessions, not idle sockets."""
        h = Harness(timeout=10, heartbeat="tcp")
        c = h.connect()
        h.clock.advance(9.9)
        self.assertEqual(c.received(), [])
        h.clock.advance(0.1)
        self.assertError(c, ErrorCode.CLIENT_TIMEOUT, fatal=True)

    def test_client_pings_answered(self) -> None:
        """A client that pings anyway is answered, and nothing else is sent."""
        h = Harness(timeout=10, heartbeat="tcp")
        c = h.login(1)
        for _ in range(5):
            h.clock.advance(7)
            c.send({"type": "ping"})
            self.assertEqual(c.received(), [{"type": "pong"}])

    def test_silent_v0_session_stays(self) -> None:
        """A v0 session is not closed for silence with --heartbeat tcp."""
        if Harness.frontend != "lines":
            raise SkipTest("v0 exists over TCP only")
        h = Harness(timeout=10, heartbeat="tcp")
        c = h.connect()
        c.send(b'{"user_id":1,"friends":[2]}')
        h.clock.advance(0.1)  # no "\n" within V0_WAIT: a v0 login
        self.assertEqual(
            c.transport.value(), b'{"msg":"are you still there?","error":0}'
        )
        c.transport.clear()
        h.clock.pump(LONG)
        self.assertEqual(c.transport.value(), b"")
        self.assertFalse(c.closed)
        self.assertTrue(h.registry.is_online(1))


class ServerOverWebSocket(OverWebSocket, ServerTests):
    """ServerTests, over WebSocket."""


class ClientTests(SynchronousTestCase):
    """The client library when the welcome says "heartbeat":"tcp"."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.endpoint = FakeEndpoint()

    def welcomed(self, **welcome: object) -> tuple[Session, Peer]:
        connecting = connect(self.clock, self.endpoint, 1, [2])
        peer = self.endpoint.accept()
        peer.heard()
        peer.say(type="welcome", user_id=1, timeout=15, **welcome)
        return self.successResultOf(connecting), peer

    def test_no_pings_no_watchdog(self) -> None:
        """The client never pings, and keeps a server that stays silent for
        many timeouts; no timer is left on the clock."""
        session, peer = self.welcomed(heartbeat="tcp")
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.pump([5.0] * 100)
        self.assertEqual(peer.heard(), [])
        self.assertFalse(peer.aborted)
        self.assertTrue(session.connected)

    def test_requests_still_confirmed(self) -> None:
        """A status change is still followed by a ping whose pong confirms it,
        and sending starts no keepalive timer."""
        session, peer = self.welcomed(heartbeat="tcp")
        done = session.set_status("away")
        self.assertEqual(
            peer.heard(),
            [{"type": "status", "status": "away"}, {"type": "ping"}],
        )
        peer.say(type="pong")
        self.successResultOf(done)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_app_welcome_keeps_pinging(self) -> None:
        """Without the field (or with "app") the client pings as before."""
        for welcome in ({}, {"heartbeat": "app"}):
            _, peer = self.welcomed(**welcome)
            self.clock.advance(5)
            self.assertEqual(peer.heard(), [{"type": "ping"}])
