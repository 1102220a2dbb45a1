"""presence-client's behaviour on a fake clock and fake connections."""

from __future__ import annotations

import argparse
from contextlib import redirect_stderr
from io import StringIO
from pathlib import Path

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from presence.cli.client import ClientApp, build_parser, parse_ids
from presence.cli.format import describe, hms
from presence.cli.io import _host_port, endpoint_for
from presence.client import (
    Connected,
    Disconnected,
    Friend,
    PresenceChanged,
    PresenceError,
    Retrying,
)
from presence.test.client_support import FakeEndpoint, Peer
from presence.wire.errors import ErrorCode

ADDRESS = "tcp:127.0.0.1:8081"


class ParserTests(SynchronousTestCase):
    def parse(self, *argv: str) -> argparse.Namespace:
        return build_parser().parse_args(list(argv))

    def refused(self, *argv: str) -> None:
        with self.assertRaises(SystemExit) as caught, redirect_stderr(StringIO()):
            self.parse(*argv)
        self.assertEqual(caught.exception.code, 2)

    def test_defaults(self):
        """Only --user is required; the server defaults to port 8081."""
        opts = self.parse("--user", "1")
        self.assertEqual((opts.server, opts.friends, opts.duration, opts.json),
                         ("tcp:127.0.0.1:8081", [], None, False))

    def test_friends_list(self):
        """--friends takes ids separated by commas (or spaces)."""
        self.assertEqual(self.parse("--user", "1", "--friends", "2,3,4").friends,
                         [2, 3, 4])
        self.assertEqual(parse_ids("2, 3 4"), [2, 3, 4])
        self.assertEqual(parse_ids(""), [])

    def test_bad_arguments(self):
        """Bad ids, a non-positive --for, an unknown status and both token
        options are usage errors (exit 2)."""
        self.refused("--user", "1", "--friends", "2,x")
        self.refused("--user", "1", "--for", "0")
        self.refused("--user", "1", "--status", "sleeping")
        self.refused("--user", "1", "--token", "T", "--token-file", "F")
        self.refused("--friends", "2")


class EndpointTests(SynchronousTestCase):
    def test_bare_port(self):
        """A bare number is that port on 127.0.0.1."""
        _, address = endpoint_for(Clock(), "8082")
        self.assertEqual(address, "tcp:127.0.0.1:8082")

    def test_endpoint_string_kept(self):
        """Any other string is a Twisted endpoint, named as given."""
        _, address = endpoint_for(Clock(), "unix:/tmp/presence.sock")
        self.assertEqual(address, "unix:/tmp/presence.sock")

    def test_ca_file_needs_ssl(self):
        """--ca-file with a non-ssl server is refused."""
        with self.assertRaises(ValueError):
            endpoint_for(Clock(), "tcp:127.0.0.1:1", Path("ca.pem"))

    def test_ssl_host_and_port(self):
        """ssl: strings give host and port, positionally or by name, with
        escaped colons for IPv6."""
        self.assertEqual(_host_port("example.com:8443"), ("example.com", 8443))
        self.assertEqual(_host_port("host=example.com:port=8443:timeout=5"),
                         ("example.com", 8443))
        self.assertEqual(_host_port(r"\:\:1:8443"), ("::1", 8443))
        with self.assertRaises(ValueError):
            _host_port("example.com")


class DescribeTests(SynchronousTestCase):
    def line(self, friend: Friend, previous: Friend | None = None) -> str | None:
        return describe(PresenceChanged(friend, previous), ADDRESS)

    def test_online(self):
        """Online lines show a status other than online, and any text."""
        self.assertEqual(self.line(Friend(2, True, "online")), "user 2 is online")
        self.assertEqual(self.line(Friend(2, True, "away", "lunch")),
                         "user 2 is online (away: lunch)")
        self.assertEqual(self.line(Friend(2, True, "busy")),
                         "user 2 is online (busy)")

    def test_status_change(self):
        """An event for a friend already online is a status change."""
        self.assertEqual(
            self.line(Friend(2, True, "away", "lunch"), Friend(2, True, "online")),
            "user 2 changed status (away: lunch)")

    def test_offline(self):
        """Offline lines give the last-seen time when the server sent it."""
        self.assertEqual(self.line(Friend(2, last_seen=1764000009.0)),
                         f"user 2 went offline (last seen {hms(1764000009.0)})")
        self.assertEqual(self.line(Friend(2)), "user 2 went offline")

    def test_connection_events(self):
        """Connecting, dropping and retrying are told; the final end is not
        (the summary says it)."""
        self.assertEqual(describe(Connected(1, 15, False), ADDRESS),
                         f"connected to {ADDRESS} as user 1")
        self.assertEqual(describe(Connected(1, 15, True), ADDRESS),
                         f"reconnected to {ADDRESS} as user 1")
        error = PresenceError(ErrorCode.SERVER_SHUTTING_DOWN, "Server shutting down")
        self.assertEqual(describe(Disconnected(error, True), ADDRESS),
                         "disconnected: Server shutting down")
        self.assertIsNone(describe(Disconnected(None, False), ADDRESS))
        self.assertEqual(describe(Retrying(2, 2.25), ADDRESS),
                         "reconnecting in 2.2 s (attempt 2)")


class AppTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_764_000_000)
        self.endpoint = FakeEndpoint()
        self.out: list[str] = []
        self.err: list[str] = []

    def app(self, *argv: str) -> tuple[ClientApp, Deferred[int]]:
        opts = build_parser().parse_args(["--user", "1", "--friends", "2,3,4",
                                          *argv])
        app = ClientApp(self.clock, self.endpoint, ADDRESS, opts, None,
                        self.out.append, self.err.append)
        return app, ensureDeferred(app.run())

    def logged_in(self, *argv: str) -> tuple[ClientApp, Deferred[int], Peer]:
        app, running = self.app(*argv)
        peer = self.endpoint.accept()
        peer.welcome()
        return app, running, peer

    def stamped(self, text: str) -> str:
        return f"{hms(self.clock.seconds())}  {text}"


class AppTests(AppTestCase):
    def test_demo_run(self):
        """Events are printed one line each; when --for elapses the client
        says bye, prints the summary and exits 0."""
        _, running, peer = self.logged_in("--for", "5")
        peer.say(type="presence", user_id=2, online=True, status="online", text="")
        peer.say(type="presence", user_id=2, online=False, status="offline",
                 last_seen=self.clock.seconds())
        then = self.stamped("")
        self.clock.advance(5)
        self.assertIn({"type": "bye"}, peer.heard())
        peer.close()
        self.assertEqual(self.successResultOf(running), 0)
        self.assertEqual(self.out[1:], [
            then + "user 2 is online",
            then + f"user 2 went offline (last seen {hms(1764000000)})",
            "user 1 quit: 1 online and 1 offline notifications",
        ])

    def test_login_refused(self):
        """A refused login exits with the server's code and its message."""
        _, running = self.app()
        peer = self.endpoint.accept()
        peer.say(type="error", error=6, msg="You can't be friend with yourself")
        peer.close()
        self.assertEqual(self.successResultOf(running), 6)
        self.assertEqual(self.err, [
            "presence-client: error 6: You can't be friend with yourself"])

    def test_cannot_connect(self):
        """An unreachable server exits 8 with one line naming the address."""
        _, running = self.app()
        self.endpoint.refuse()
        self.assertEqual(self.successResultOf(running), 8)
        (line,) = self.err
        self.assertIn("Server Connection Error", line)
        self.assertIn(ADDRESS, line)

    def test_server_ends_session(self):
        """A fatal error after login exits with its code, after the summary."""
        _, running, peer = self.logged_in()
        peer.say(type="error", error=15, msg="Server shutting down")
        peer.close()
        self.assertEqual(self.successResultOf(running), 15)
        self.assertEqual(self.err, ["presence-client: error 15: Server shutting down"])
        self.assertEqual(self.out[-1], "user 1 quit: 0 online and 0 offline "
                                       "notifications")

    def test_for_counts_from_start(self):
        """--for bounds the whole run: it also ends a login that is slow."""
        _, running = self.app("--for", "5")
        peer = self.endpoint.accept()
        self.clock.advance(5)
        self.assertTrue(peer.aborted)
        peer.close()
        self.assertEqual(self.successResultOf(running), 0)

    def test_eof_without_for_quits(self):
        """Without --for the end of stdin ends the session (exit 0)."""
        app, running, peer = self.logged_in()
        app.stdin_closed()
        self.assertEqual(peer.heard(), [{"type": "bye"}])
        peer.close()
        self.assertEqual(self.successResultOf(running), 0)

    def test_eof_before_login_waits_for_login(self):
        """End of stdin before the login still lets the login happen (so an
        unreachable server still exits 8), then quits."""
        app, running = self.app()
        app.stdin_closed()
        self.endpoint.refuse()
        self.assertEqual(self.successResultOf(running), 8)

    def test_eof_with_for_keeps_running(self):
        """With --for the end of stdin changes nothing until time is up."""
        app, running, peer = self.logged_in("--for", "5")
        app.stdin_closed()
        self.clock.advance(4.9)
        self.assertNotIn({"type": "bye"}, peer.heard())
        self.assertNoResult(running)
        self.clock.advance(0.1)
        peer.close()
        self.assertEqual(self.successResultOf(running), 0)

    def test_quit_command(self):
        """``quit`` ends the session with exit status 0."""
        app, running, peer = self.logged_in()
        app.command("quit")
        peer.close()
        self.assertEqual(self.successResultOf(running), 0)

    def test_json_prints_server_lines(self):
        """--json prints the server's lines verbatim (not pings or pongs)
        and puts the summary on stderr."""
        app, running, peer = self.logged_in("--json")
        peer.say_raw(b'{"type":"presence","user_id":2,"online":true,'
                     b'"status":"away","text":"x"}\n')
        peer.say(type="ping", msg="are you still there?")
        app.command("quit")
        peer.close()
        self.assertEqual(self.successResultOf(running), 0)
        self.assertEqual(self.out, [
            '{"type":"welcome","user_id":1,"timeout":15}',
            '{"type":"presence","user_id":2,"online":true,"status":"away",'
            '"text":"x"}',
        ])
        self.assertEqual(self.err, ["user 1 quit: 1 online and 0 offline "
                                    "notifications"])


class CommandTests(AppTestCase):
    def test_status(self):
        """``status away out for lunch`` sets status and text; confirmed."""
        app, _, peer = self.logged_in()
        app.command("status away out for lunch")
        self.assertEqual(peer.heard()[0], {"type": "status", "status": "away",
                                           "text": "out for lunch"})
        peer.say(type="pong")
        self.assertEqual(self.out[-1],
                         self.stamped("status is now away: out for lunch"))

    def test_friends_commands(self):
        """add, remove and friends change the watch list; the new list is
        printed once confirmed."""
        app, _, peer = self.logged_in()
        app.command("add 5,6")
        app.command("remove 2")
        app.command("friends 3 7")
        sent = [m for m in peer.heard() if m["type"] == "friends"]
        self.assertEqual(sent, [{"type": "friends", "add": [5, 6]},
                                {"type": "friends", "remove": [2]},
                                {"type": "friends", "friends": [3, 7]}])
        for _ in sent:
            peer.say(type="pong")
        self.assertEqual(self.out[-3:], [self.stamped("watching 2, 3, 4, 5, 6"),
                                         self.stamped("watching 3, 4, 5, 6"),
                                         self.stamped("watching 3, 7")])

    def test_refused_command(self):
        """A command the server refuses prints its error; the session goes on."""
        app, running, peer = self.logged_in()
        app.command("add 1")
        peer.say(type="error", error=6, msg="You can't be friend with yourself")
        peer.say(type="pong")
        self.assertEqual(self.out[-1], self.stamped(
            "error 6: You can't be friend with yourself"))
        self.assertNoResult(running)

    def test_who(self):
        """``who`` prints the view, one line per watched friend."""
        app, _, peer = self.logged_in()
        peer.say(type="presence", user_id=2, online=True, status="busy", text="")
        peer.say(type="presence", user_id=3, online=False, status="offline",
                 last_seen=1764000000)
        app.command("who")
        self.assertEqual(self.out[-3:], [
            "user 2: online (busy)",
            f"user 3: offline (last seen {hms(1764000000)})",
            "user 4: offline",
        ])

    def test_bad_commands(self):
        """Unknown commands and bad ids are answered, nothing is sent."""
        app, _, peer = self.logged_in()
        peer.heard()
        app.command("dance")
        app.command("add two")
        app.command("")
        self.assertEqual(peer.heard(), [])
        self.assertIn("unknown command 'dance'", self.out[-2])
        self.assertEqual(self.out[-1], "not a list of ids: 'two'")

    def test_commands_before_login_wait(self):
        """Commands read before the welcome run after it, in order."""
        app, _ = self.app()
        app.command("status busy")
        app.command("quit")
        peer = self.endpoint.accept()
        peer.welcome()
        self.assertEqual(peer.heard(), [
            {"type": "status", "status": "busy"}, {"type": "ping"}])
        peer.say(type="pong")
        self.assertEqual(peer.heard(), [{"type": "bye"}])


class ReconnectingAppTests(AppTestCase):
    def test_quit_before_first_login(self):
        """With --reconnect, quit (or the end of stdin) before the first
        login gives up at once: the server might never come."""
        for stop in ("quit", "eof"):
            self.endpoint = FakeEndpoint()
            app, running = self.app("--reconnect")
            self.endpoint.refuse()
            if stop == "quit":
                app.command("quit")
            else:
                app.stdin_closed()
            self.assertEqual(self.successResultOf(running), 0)
            self.clock.advance(3600)
            self.assertEqual(len(self.endpoint.attempts), 1)

    def test_reconnects_and_says_so(self):
        """A dropped connection is told, retried, and the new login told."""
        app, running = self.app("--reconnect")
        peer = self.endpoint.accept()
        peer.welcome()
        peer.close()
        self.assertIn("disconnected: ", self.out[-2])
        self.assertRegex(self.out[-1], r"reconnecting in \d\.\d s \(attempt 1\)")
        self.clock.advance(2)
        again = self.endpoint.accept()
        again.welcome()
        self.assertEqual(self.out[-1], self.stamped(
            f"reconnected to {ADDRESS} as user 1"))
        self.assertNoResult(running)
        app.quit()
        again.close()
        self.assertEqual(self.successResultOf(running), 0)
