"""--max-watches: the watch-list entries of all sessions, bounded together.

Counted, not timed: each test checks the error a client gets, what it still
watches, and the registry's count of entries.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from presence.test.support import FakeClient, Harness
from presence.wire.errors import ErrorCode
from presence.wire.tokens import make_token

SECRET = b"s" * 32


class WatchLimitTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.h = Harness(max_watches=10)
        self.registry = self.h.registry

    def assertTooMany(self, client: FakeClient, fatal: bool) -> None:
        (message,) = client.received()
        self.assertEqual(message["error"], ErrorCode.TOO_MANY_FRIENDS)
        self.assertEqual(
            message["msg"],
            "Too many friends: the server watches 10 ids in all (--max-watches)",
        )
        self.assertEqual(client.closed, fatal)

    def test_login_past_the_bound_is_refused(self) -> None:
        """A login whose list would pass the bound gets fatal error 11; its
        user is not online, watchers hear nothing, the count is unchanged."""
        watcher = self.h.login(1, [3])
        self.h.login(2, list(range(100, 108)))
        self.assertEqual(self.registry.watches, 9)
        c = self.h.connect()
        c.send({"user_id": 3, "friends": [200, 201]})
        self.assertTooMany(c, fatal=True)
        c.lose()
        self.assertEqual(self.registry.watches, 9)
        self.assertEqual(self.registry.sessions, 2)
        self.assertFalse(self.registry.is_online(3))
        self.assertEqual(watcher.received(), [])

    def test_login_up_to_the_bound(self) -> None:
        """A login that reaches the bound exactly is welcomed."""
        self.h.login(1, list(range(100, 105)))
        self.h.login(2, list(range(100, 105)))
        self.assertEqual(self.registry.watches, 10)

    def test_friends_update_past_the_bound_keeps_the_old_list(self) -> None:
        """A friends message that would pass the bound gets error 11, not
        fatal; the session keeps its old list and the count is unchanged."""
        self.h.login(1, list(range(100, 106)))
        c = self.h.login(2, [7, 8])
        c.send({"type": "friends", "friends": [7, 8, 9, 10, 11]})
        self.assertTooMany(c, fatal=False)
        c.send({"type": "friends", "add": [12, 13, 14]})
        self.assertTooMany(c, fatal=False)
        self.assertEqual(self.registry.watching(c.session), {7, 8})
        self.assertEqual(self.registry.watches, 8)
        # Replacing entries within the bound is fine: the old ones are given
        # back first.
        c.send({"type": "friends", "friends": [20, 21, 22, 23]})
        self.assertEqual(c.received(), [])
        self.assertEqual(self.registry.watches, 10)

    def test_relogin_past_the_bound_keeps_the_old_list(self) -> None:
        """A login line re-sent with a longer list past the bound: error 11,
        not fatal, no pong, the old list stays."""
        self.h.login(1, list(range(100, 108)))
        c = self.h.login(2, [7])
        c.send({"user_id": 2, "friends": [7, 8, 9, 10]})
        self.assertTooMany(c, fatal=False)
        self.assertEqual(self.registry.watching(c.session), {7})

    def test_count_goes_down_on_logout_and_shrink(self) -> None:
        """Ending a session or shrinking a list gives its entries back: a
        login refused before is then accepted."""
        a = self.h.login(1, list(range(100, 106)))
        b = self.h.login(2, [7, 8, 9, 10])
        self.assertEqual(self.registry.watches, 10)
        b.send({"type": "friends", "remove": [9, 10]})
        self.assertEqual(self.registry.watches, 8)
        self.h.login(3, [20, 21])
        self.assertEqual(self.registry.watches, 10)
        a.send({"type": "bye"})
        a.lose()
        self.assertEqual(self.registry.watches, 4)
        self.h.login(4, list(range(300, 306)))
        self.assertEqual(self.registry.watches, 10)


class WatchLimitClaimTests(SynchronousTestCase):
    def test_only_ids_the_claim_allows_count(self) -> None:
        """With a friends claim, only the ids the session may watch count."""
        h = Harness(secret=SECRET, max_watches=2)
        c = h.connect()
        token = make_token(SECRET, 1, friends=[2, 3])
        c.send({"user_id": 1, "friends": [2, 3, 4, 5, 6], "token": token})
        self.assertEqual(c.received()[0]["type"], "welcome")
        self.assertEqual(h.registry.watches, 2)
