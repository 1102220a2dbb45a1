"""Tests for L{presence.core.registry}: the sans-IO presence core.

Two halves: focused unit tests, one behaviour of PROTOCOL.md's "Presence
semantics" each, and a hypothesis state machine that drives the registry with
random logins, logouts, status and list changes and clock advances, and after
every step checks each session's events against a small reference model.
"""

from __future__ import annotations

import os
from typing import Any

import orjson
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    precondition,
    rule,
    run_state_machine_as_test,
)
from twisted.internet.task import Clock
from twisted.trial import unittest
from zope.interface import implementer
from zope.interface.verify import verifyObject

from presence import wire
from presence.core.bus import MemoryHub
from presence.core.registry import SMALL, ISession, Registry, id_list
from presence.wire.messages import friends_change

START = 1_764_000_000.0

Event = dict[str, Any]


@implementer(ISession)
class FakeSession:
    """A session double: records every C{deliver} call, in order."""

    def __init__(self, user_id: int, name: str = "") -> None:
        self.user_id = user_id
        self.watch_list: object = None  # the registry's slot
        self.name = name or f"s{user_id}"
        self.calls: list[bytes] = []

    def deliver(self, data: bytes) -> None:
        assert type(data) is bytes, data
        self.calls.append(data)

    def lines(self) -> list[bytes]:
        """Every line delivered so far (terminators removed)."""
        out: list[bytes] = []
        for chunk in self.calls:
            assert chunk.endswith(b"\n"), chunk
            out.extend(chunk[:-1].split(b"\n"))
        return out

    def take(self) -> list[Event]:
        """Every event delivered since the last call, parsed; then forget them."""
        events = [orjson.loads(line) for line in self.lines()]
        self.calls.clear()
        return events

    def __repr__(self) -> str:
        return f"<FakeSession {self.name} user={self.user_id}>"


def online(uid: int, status: str = "online", text: str = "") -> Event:
    return {"type": "presence", "user_id": uid, "online": True, "status": status,
            "text": text}


def offline(uid: int, last_seen: float) -> Event:
    return {"type": "presence", "user_id": uid, "online": False,
            "status": "offline", "last_seen": last_seen}


class RegistryTestCase(unittest.SynchronousTestCase):
    """A registry on a fake clock, and shortcuts to drive it."""

    grace = 0.0
    mutual = False

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(START)
        self.registry = Registry(
            self.clock, offline_grace=self.grace, mutual=self.mutual
        )

    def login(self, uid: int, friends: list[int] | tuple[int, ...] = (),
              name: str = "", **fields: Any) -> FakeSession:
        """Log a new session in; C{fields} are a login's C{status}/C{text}."""
        session = FakeSession(uid, name)
        self.registry.login(
            session, frozenset(friends), wire.status_fields(fields, required=False)
        )
        return session

    def status(self, session: FakeSession, status: str, text: str | None = None
               ) -> None:
        """What a C{status} message does."""
        obj: dict[str, Any] = {"status": status}
        if text is not None:
            obj["text"] = text
        self.registry.set_status(session, wire.status_fields(obj, required=True))

    def watch(self, session: FakeSession, friends: list[int]) -> None:
        self.registry.set_watch(session, frozenset(friends))

    def drain(self, *sessions: FakeSession) -> None:
        for session in sessions:
            session.take()


class FakeSessionTests(unittest.SynchronousTestCase):
    def test_provides(self) -> None:
        """The test double provides L{ISession}, as the registry expects."""
        self.assertTrue(verifyObject(ISession, FakeSession(1)))


class FanoutTests(RegistryTestCase):
    """A registry given a fan-out (a server's cheaper loop) hands it an
    event for several watchers; a lone watcher still gets C{deliver}."""

    def setUp(self) -> None:
        super().setUp()
        self.fanned: list[tuple[list[str], bytes]] = []

        def fanout(sessions: Any, data: bytes) -> None:
            self.fanned.append(([s.name for s in sessions], data))
            for s in sessions:
                s.deliver(data)

        self.registry = Registry(self.clock, fanout=fanout)

    def test_several_watchers(self) -> None:
        """Two watchers of a change: one fan-out call holding both."""
        a = self.login(1, [3], name="a")
        b = self.login(2, [3], name="b")
        talker = self.login(3)
        self.drain(a, b)
        self.fanned.clear()
        self.status(talker, "away")
        self.assertEqual(len(self.fanned), 1)
        names, data = self.fanned[0]
        self.assertEqual(sorted(names), ["a", "b"])
        self.assertEqual(orjson.loads(data), online(3, "away"))
        self.assertEqual(a.take(), [online(3, "away")])

    def test_lone_watcher(self) -> None:
        """One watcher: its deliver, no fan-out call."""
        a = self.login(1, [3], name="a")
        talker = self.login(3)
        self.drain(a)
        self.status(talker, "busy")
        self.assertEqual(self.fanned, [])
        self.assertEqual(a.take(), [online(3, "busy")])


class SnapshotAndEventTests(RegistryTestCase):
    def test_snapshot_after_login(self) -> None:
        """
        A new session is told, once, about each watched friend who is online
        (with status and text) and about nobody else.
        """
        self.login(2, status="away", text="lunch")
        self.login(3)
        self.login(5)  # online, but not watched
        w = self.login(1, [2, 3, 4])
        self.assertEqual(
            sorted(w.take(), key=lambda e: e["user_id"]),
            [online(2, "away", "lunch"), online(3)],
        )

    def test_snapshot_is_one_write(self) -> None:
        """The snapshot is delivered in a single call."""
        self.login(2)
        self.login(3)
        w = self.login(1, [2, 3])
        self.assertEqual(len(w.calls), 1)
        self.assertEqual(len(w.lines()), 2)

    def test_no_snapshot_when_nobody_online(self) -> None:
        """A session whose friends are all offline is sent nothing."""
        w = self.login(1, [2, 3])
        self.assertEqual(w.calls, [])

    def test_online_event_says_which_friend(self) -> None:
        """A friend coming online is reported with that friend's id."""
        w = self.login(1, [2, 3])
        self.login(3, status="busy", text="call")
        self.assertEqual(w.take(), [online(3, "busy", "call")])
        self.login(2)
        self.assertEqual(w.take(), [online(2)])

    def test_offline_event_says_which_friend(self) -> None:
        """
        A friend's last session ending is reported with that friend's id and
        C{last_seen} = now.
        """
        w = self.login(1, [2, 3])
        x2 = self.login(2)
        x3 = self.login(3)
        self.drain(w)
        self.clock.advance(7.5)
        self.registry.logout(x3)
        self.assertEqual(w.take(), [offline(3, START + 7.5)])
        self.registry.logout(x2)
        self.assertEqual(w.take(), [offline(2, START + 7.5)])
        self.assertFalse(self.registry.is_online(2))
        self.assertFalse(self.registry.is_online(3))

    def test_many_sessions_one_transition(self) -> None:
        """
        A user with several sessions goes online once (first session) and
        offline once (last session); sessions in between are silent.
        """
        w = self.login(1, [2])
        a = self.login(2, name="a")
        b = self.login(2, name="b")
        c = self.login(2, name="c")
        self.assertEqual(w.take(), [online(2)])
        self.assertEqual(self.registry.session_count(2), 3)
        self.registry.logout(b)
        self.registry.logout(a)
        self.assertEqual(w.take(), [])
        self.clock.advance(2)
        self.registry.logout(c)
        self.assertEqual(w.take(), [offline(2, START + 2)])
        self.assertEqual(self.registry.session_count(2), 0)

    def test_logout_twice_is_harmless(self) -> None:
        """Logging a session out again (or one never logged in) does nothing."""
        w = self.login(1, [2])
        x = self.login(2)
        self.registry.logout(x)
        self.drain(w)
        self.registry.logout(x)
        self.registry.logout(FakeSession(2))
        self.assertEqual(w.take(), [])


class StatusTests(RegistryTestCase):
    def test_status_shared_last_writer_wins(self) -> None:
        """
        The status belongs to the user, not the session: whichever session
        set it last decides, and each change is one event.
        """
        w = self.login(1, [2])
        a = self.login(2, name="a")
        b = self.login(2, name="b")
        self.drain(w)
        self.status(a, "away", "lunch")
        self.status(b, "busy", "meeting")
        self.assertEqual(
            w.take(), [online(2, "away", "lunch"), online(2, "busy", "meeting")]
        )
        self.assertEqual(self.registry.status_of(2), ("busy", "meeting"))
        # a's session does not "own" away: b's change stands after a leaves.
        self.registry.logout(a)
        self.assertEqual(w.take(), [])
        self.assertEqual(self.registry.status_of(2), ("busy", "meeting"))

    def test_same_status_again_is_no_event(self) -> None:
        """Setting the status and text they already are sends nothing."""
        w = self.login(1, [2])
        x = self.login(2, status="away", text="t")
        self.drain(w)
        self.status(x, "away", "t")
        self.assertEqual(w.take(), [])

    def test_text_only_change_is_an_event(self) -> None:
        """A change of text alone, while online, is one event."""
        w = self.login(1, [2])
        x = self.login(2, status="away", text="t")
        self.drain(w)
        self.status(x, "away", "u")
        self.assertEqual(w.take(), [online(2, "away", "u")])

    def test_status_without_text_clears_text(self) -> None:
        """A C{status} message without C{text} clears the text."""
        w = self.login(1, [2])
        x = self.login(2, status="away", text="lunch")
        self.drain(w)
        self.status(x, "busy")
        self.assertEqual(w.take(), [online(2, "busy", "")])
        self.assertEqual(self.registry.status_of(2), ("busy", ""))
        # Same status, text dropped: still a change.
        self.status(x, "busy", "x")
        self.status(x, "busy")
        self.assertEqual(w.take(), [online(2, "busy", "x"), online(2, "busy", "")])

    def test_later_login_with_status_changes_it(self) -> None:
        """A later session's login with C{status} changes the shared status."""
        w = self.login(1, [2])
        self.login(2, status="away", text="lunch")
        self.drain(w)
        self.login(2, status="busy")
        self.assertEqual(w.take(), [online(2, "busy", "")])

    def test_later_login_without_status_leaves_it(self) -> None:
        """A later session's login without C{status} or C{text} changes nothing."""
        w = self.login(1, [2])
        self.login(2, status="away", text="lunch")
        self.drain(w)
        self.login(2)
        self.assertEqual(w.take(), [])
        self.assertEqual(self.registry.status_of(2), ("away", "lunch"))

    def test_status_forgotten_when_offline(self) -> None:
        """After going offline a user starts again from C{online}, no text."""
        w = self.login(1, [2])
        x = self.login(2, status="busy", text="t")
        self.registry.logout(x)
        self.drain(w)
        self.login(2)
        self.assertEqual(w.take(), [online(2)])


class InvisibleTests(RegistryTestCase):
    def test_invisible_is_offline_at_once(self) -> None:
        """
        Turning invisible is an offline event at once, C{last_seen} = the time
        it happened; the sessions stay logged in.
        """
        w = self.login(1, [2])
        x = self.login(2)
        self.drain(w)
        self.clock.advance(3.25)
        self.status(x, "invisible")
        self.assertEqual(w.take(), [offline(2, START + 3.25)])
        self.assertFalse(self.registry.is_online(2))
        self.assertEqual(self.registry.session_count(2), 1)

    def test_back_from_invisible(self) -> None:
        """Leaving invisible is an online event with the new status and text."""
        w = self.login(1, [2])
        x = self.login(2)
        self.status(x, "invisible", "hidden")
        self.drain(w)
        self.status(x, "away", "back soon")
        self.assertEqual(w.take(), [online(2, "away", "back soon")])

    def test_changes_while_invisible_are_silent(self) -> None:
        """
        While invisible, text changes, new sessions and sessions ending are
        not reported; the last session ending then is no second offline.
        """
        w = self.login(1, [2])
        x = self.login(2)
        self.status(x, "invisible")
        self.drain(w)
        self.status(x, "invisible", "psst")
        y = self.login(2)
        self.registry.logout(x)
        self.registry.logout(y)
        self.clock.advance(100)
        self.assertEqual(w.take(), [])
        self.assertEqual(self.registry.users, 1)  # only the watcher is known

    def test_login_invisible_never_online(self) -> None:
        """A user whose first login says C{invisible} is never reported."""
        w = self.login(1, [2])
        x = self.login(2, status="invisible")
        self.assertEqual(w.take(), [])
        w2 = self.login(3, [2])
        self.assertEqual(w2.take(), [])
        self.registry.logout(x)
        self.assertEqual(w.take(), [])


class InvisibleWithGraceTests(InvisibleTests):
    """Invisible is reported at once, and forgotten at once, with a grace too."""

    grace = 30.0


class WatchListTests(RegistryTestCase):
    def test_replace_snapshots_only_newly_watched(self) -> None:
        """
        Replacing the list sends the snapshot of the newly watched friends who
        are online; friends kept are not re-sent; friends dropped get nothing.
        """
        for uid in (2, 3, 4):
            self.login(uid, status="away", text=str(uid))
        w = self.login(1, [2, 3])
        self.drain(w)
        self.watch(w, [3, 4, 5])
        self.assertEqual(w.take(), [online(4, "away", "4")])
        self.assertEqual(self.registry.watching(w), frozenset({3, 4, 5}))

    def test_add_and_remove(self) -> None:
        """
        The add/remove form (as the protocol applies it, a new whole list) gives
        a snapshot of the added and nothing for the removed.
        """
        self.login(2)
        self.login(3)
        w = self.login(1, [2])
        self.drain(w)
        change = friends_change({"add": [3]}, 1, self.registry.watching(w), 10)
        self.registry.set_watch(w, change)
        self.assertEqual(w.take(), [online(3)])
        change = friends_change({"remove": [2]}, 1, self.registry.watching(w), 10)
        self.registry.set_watch(w, change)
        self.assertEqual(w.take(), [])
        self.assertEqual(self.registry.watching(w), frozenset({3}))

    def test_removed_friend_is_not_followed(self) -> None:
        """After a friend is removed, that friend's changes are not sent."""
        x = self.login(2)
        w = self.login(1, [2])
        self.watch(w, [])
        self.drain(w)
        self.status(x, "away")
        self.registry.logout(x)
        self.login(2)
        self.assertEqual(w.take(), [])

    def test_same_list_again_is_silent(self) -> None:
        """Setting the same list again sends nothing (no repeated snapshot)."""
        self.login(2)
        w = self.login(1, [2])
        self.drain(w)
        self.watch(w, [2])
        self.assertEqual(w.take(), [])

    def test_watch_list_is_per_session(self) -> None:
        """Two sessions of one user watch independently."""
        self.login(2)
        self.login(3)
        a = self.login(1, [2], name="a")
        b = self.login(1, [3], name="b")
        self.assertEqual(a.take(), [online(2)])
        self.assertEqual(b.take(), [online(3)])
        x = self.login(4)
        self.watch(a, [2, 4])
        self.assertEqual(a.take(), [online(4)])
        self.assertEqual(b.take(), [])
        self.registry.logout(x)
        self.assertEqual(a.take(), [offline(4, START)])
        self.assertEqual(b.take(), [])


class GraceTests(RegistryTestCase):
    grace = 10.0

    def test_back_within_grace_never_offline(self) -> None:
        """
        A user whose last session ends and who comes back within the grace is
        never reported offline: no event at all, status and text kept.
        """
        w = self.login(1, [2])
        x = self.login(2, status="away", text="lunch")
        self.drain(w)
        self.registry.logout(x)
        self.clock.advance(9.5)
        self.assertEqual(w.take(), [])
        self.assertTrue(self.registry.is_online(2))
        self.login(2)
        self.clock.advance(100)
        self.assertEqual(w.take(), [])
        self.assertEqual(self.registry.status_of(2), ("away", "lunch"))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_watcher_during_grace_sees_online(self) -> None:
        """A user in the grace is still online for a session that logs in now."""
        x = self.login(2, status="busy")
        self.registry.logout(x)
        self.clock.advance(4)
        w = self.login(1, [2])
        self.assertEqual(w.take(), [online(2, "busy", "")])

    def test_past_grace_offline_at_end_of_last_session(self) -> None:
        """
        Past the grace, the offline event is sent, with C{last_seen} = when
        the last session ended (not when the grace ran out).
        """
        w = self.login(1, [2])
        a = self.login(2, name="a")
        b = self.login(2, name="b")
        self.drain(w)
        self.clock.advance(1)
        self.registry.logout(a)
        self.clock.advance(2)
        self.registry.logout(b)  # the last session ends at START + 3
        self.clock.advance(9.75)
        self.assertEqual(w.take(), [])
        self.clock.advance(0.25)
        self.assertEqual(w.take(), [offline(2, START + 3)])
        self.assertFalse(self.registry.is_online(2))
        self.assertEqual(self.registry.users, 1)

    def test_back_within_grace_with_new_status(self) -> None:
        """Coming back with a C{status} at login is one status event, no offline."""
        w = self.login(1, [2])
        x = self.login(2, status="away")
        self.registry.logout(x)
        self.drain(w)
        self.clock.advance(5)
        self.login(2, status="busy", text="b")
        self.clock.advance(50)
        self.assertEqual(w.take(), [online(2, "busy", "b")])

    def test_grace_restarts_each_time(self) -> None:
        """
        Leaving again after coming back starts a new grace, and the offline
        event then says when that last session ended.
        """
        w = self.login(1, [2])
        x = self.login(2)
        self.drain(w)
        self.registry.logout(x)
        self.clock.advance(8)
        y = self.login(2)
        self.clock.advance(1)
        self.registry.logout(y)  # START + 9
        self.clock.advance(9)
        self.assertEqual(w.take(), [])
        self.clock.advance(1)
        self.assertEqual(w.take(), [offline(2, START + 9)])


class MutualTests(RegistryTestCase):
    mutual = True

    def test_sees_only_if_listed(self) -> None:
        """In mutual mode W sees X only if X's list holds W."""
        self.login(2, [3])
        w = self.login(1, [2])
        self.assertEqual(w.take(), [])
        self.login(4, [1])
        self.watch(w, [2, 4])
        self.assertEqual(w.take(), [online(4)])

    def test_listing_later_is_online(self) -> None:
        """X starting to list W is an online event for W, if X is online."""
        x = self.login(2, [3])
        w = self.login(1, [2])
        self.watch(x, [3, 1])
        self.assertEqual(w.take(), [online(2)])

    def test_dropping_and_readding(self) -> None:
        """
        X dropping W from its list is an offline event for W (now as
        C{last_seen}); listing W again is an online event.
        """
        x = self.login(2, [1])
        w = self.login(1, [2])
        self.assertEqual(w.take(), [online(2)])
        self.clock.advance(4)
        self.watch(x, [])
        self.assertEqual(w.take(), [offline(2, START + 4)])
        self.assertTrue(self.registry.is_online(2))
        self.status(x, "away")  # not visible to W: nothing
        self.assertEqual(w.take(), [])
        self.watch(x, [1])
        self.assertEqual(w.take(), [online(2, "away", "")])

    def test_two_sessions_one_lists(self) -> None:
        """
        With two sessions of X of which only one lists W, W sees X; when the
        listing session leaves, W gets X's offline even though X is online.
        """
        a = self.login(2, [1], name="a")
        b = self.login(2, [3], name="b")
        w = self.login(1, [2])
        self.assertEqual(w.take(), [online(2)])
        self.status(b, "busy")  # the non-listing session's change counts
        self.assertEqual(w.take(), [online(2, "busy", "")])
        self.clock.advance(1)
        self.registry.logout(a)
        self.assertEqual(w.take(), [offline(2, START + 1)])
        self.assertEqual(self.registry.session_count(2), 1)
        self.registry.logout(b)
        self.assertEqual(w.take(), [])

    def test_two_sessions_non_listing_leaves(self) -> None:
        """The non-listing session of X leaving changes nothing for W."""
        a = self.login(2, [1], name="a")
        b = self.login(2, [], name="b")
        w = self.login(1, [2])
        self.drain(w)
        self.registry.logout(b)
        self.assertEqual(w.take(), [])
        self.registry.logout(a)
        self.assertEqual(w.take(), [offline(2, START)])

    def test_two_sessions_both_list(self) -> None:
        """W stays visible to X while any of X's sessions lists W."""
        a = self.login(2, [1], name="a")
        b = self.login(2, [1], name="b")
        w = self.login(1, [2])
        self.drain(w)
        self.watch(a, [])
        self.assertEqual(w.take(), [])
        self.watch(b, [])
        self.assertEqual(w.take(), [offline(2, START)])

    def test_watcher_dropping_is_silent_for_it(self) -> None:
        """
        W dropping X tells W nothing about X; X (who watches W) loses W,
        since W no longer lists X.
        """
        x = self.login(2, [1])
        w = self.login(1, [2])
        self.assertEqual(x.take(), [online(1)])
        self.drain(w)
        self.watch(w, [])
        self.assertEqual(w.take(), [])
        self.assertEqual(x.take(), [offline(1, START)])

    def test_offline_only_to_those_who_saw(self) -> None:
        """X's last session ending is reported only to watchers X listed."""
        x = self.login(2, [1])
        w1 = self.login(1, [2])
        w3 = self.login(3, [2])
        self.drain(w1, w3)
        self.registry.logout(x)
        self.assertEqual(w1.take(), [offline(2, START)])
        self.assertEqual(w3.take(), [])


class MutualGraceTests(RegistryTestCase):
    mutual = True
    grace = 10.0

    def test_list_kept_during_grace(self) -> None:
        """During the grace X's list still counts: W keeps seeing X."""
        x = self.login(2, [1])
        w = self.login(1, [2])
        self.registry.logout(x)
        self.drain(w)
        self.clock.advance(5)
        w2 = self.login(1, [2])
        self.assertEqual(w2.take(), [online(2)])
        self.login(2, [1])
        self.clock.advance(50)
        self.assertEqual(w.take(), [])
        self.assertEqual(w2.take(), [])

    def test_back_within_grace_without_watcher(self) -> None:
        """
        X back within the grace with a list that no longer holds W is an
        offline event for W (X stopped listing W), dated now.
        """
        x = self.login(2, [1])
        w = self.login(1, [2])
        self.registry.logout(x)
        self.drain(w)
        self.clock.advance(5)
        self.login(2, [3])
        self.assertEqual(w.take(), [offline(2, START + 5)])
        self.clock.advance(50)
        self.assertEqual(w.take(), [])

    def test_grace_expiry_only_to_those_listed(self) -> None:
        """The offline at the end of the grace goes to watchers X listed."""
        x = self.login(2, [1])
        w1 = self.login(1, [2])
        w3 = self.login(3, [2])
        self.drain(w1, w3)
        self.clock.advance(2)
        self.registry.logout(x)
        self.clock.advance(10)
        self.assertEqual(w1.take(), [offline(2, START + 2)])
        self.assertEqual(w3.take(), [])


class SelfTests(RegistryTestCase):
    mutual = True

    def test_nobody_told_about_themselves(self) -> None:
        """
        A user's own sessions coming, going and changing status tell that
        user's other sessions nothing; they hear only of their friends.
        """
        a = self.login(1, [2], name="a")
        w = self.login(2, [1])
        self.assertEqual(a.take(), [online(2)])
        self.drain(w)
        b = self.login(1, [2], name="b")
        self.assertEqual(b.take(), [online(2)])
        self.status(b, "away")
        self.registry.logout(b)
        self.status(a, "busy")
        self.assertEqual(a.take(), [])
        self.assertEqual(
            w.take(), [online(1, "away", ""), online(1, "busy", "")]
        )

    def test_own_id_refused_on_the_wire(self) -> None:
        """A list holding the user's own id never reaches the registry (error 6)."""
        from presence.wire.errors import ErrorCode, ProtocolError

        e = self.assertRaises(
            ProtocolError, wire.id_set, [2, 1], "friends", 1, 10
        )
        self.assertEqual(e.code, ErrorCode.FRIEND_WITH_YOURSELF)


class StopTests(RegistryTestCase):
    grace = 10.0

    def test_stop_stops_all_events(self) -> None:
        """
        After C{stop()} nobody is told anything: not of sessions ending, nor
        logins, status changes, list changes or the grace running out.
        """
        w = self.login(1, [2, 3, 4])
        x = self.login(2)
        y = self.login(3)
        self.registry.logout(y)  # in the grace
        self.drain(w)
        self.registry.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.status(x, "away")
        self.registry.logout(x)
        z = self.login(4, [1])
        self.watch(w, [2, 3, 4, 5])
        self.clock.advance(100)
        self.registry.logout(w)
        self.registry.logout(z)
        self.assertEqual(w.calls, [])
        self.assertEqual(z.calls, [])
        self.assertEqual(self.clock.getDelayedCalls(), [])


class EncodingTests(RegistryTestCase):
    def _watchers(self, n: int = 3) -> list[FakeSession]:
        return [self.login(10 + i, [2]) for i in range(n)]

    def assertSameObject(self, sessions: list[FakeSession]) -> bytes:
        calls = [s.calls for s in sessions]
        for c in calls:
            self.assertEqual(len(c), 1)
        first = calls[0][0]
        for c in calls[1:]:
            self.assertIs(c[0], first)
        for s in sessions:
            s.calls.clear()
        return first

    def test_events_encoded_once(self) -> None:
        """
        Each change is encoded once: every watcher is handed the very same
        bytes object, for online, status and offline events.
        """
        ws = self._watchers()
        x = self.login(2)
        self.assertEqual(orjson.loads(self.assertSameObject(ws)), online(2))
        self.status(x, "away")
        self.assertSameObject(ws)
        self.status(x, "invisible")
        self.assertEqual(orjson.loads(self.assertSameObject(ws)), offline(2, START))
        self.status(x, "online")
        self.assertSameObject(ws)
        self.registry.logout(x)
        self.assertEqual(orjson.loads(self.assertSameObject(ws)), offline(2, START))

    def test_snapshot_reuses_the_online_line(self) -> None:
        """A snapshot of one friend reuses the line the fan-out sent."""
        ws = self._watchers()
        self.login(2, status="busy")
        line = self.assertSameObject(ws)
        late = self.login(20, [2])
        self.assertEqual(late.calls, [line])
        self.assertIs(late.calls[0], line)

    def test_grace_expiry_encoded_once(self) -> None:
        """The offline at the end of a grace is one object for all."""
        self.registry.offline_grace = 5.0
        ws = self._watchers()
        x = self.login(2)
        self.assertSameObject(ws)
        self.registry.logout(x)
        self.clock.advance(5)
        self.assertSameObject(ws)


class MutualEncodingTests(EncodingTests):
    mutual = True

    def login(self, uid: int, friends: list[int] | tuple[int, ...] = (),
              name: str = "", **fields: Any) -> FakeSession:
        # X (2) lists every watcher, so all of them see it.
        if uid == 2:
            friends = [*friends, 10, 11, 12, 20]
        return super().login(uid, friends, name, **fields)


class SlowConsumer(FakeSession):
    """A session whose delivery ends it, as a slow consumer's abort does."""

    def __init__(self, registry: Registry, user_id: int) -> None:
        super().__init__(user_id, f"slow{user_id}")
        self.registry = registry

    def deliver(self, data: bytes) -> None:
        super().deliver(data)
        self.registry.logout(self)


class ReentrancyTests(RegistryTestCase):
    """
    A session's C{deliver} may end that session at once (a slow consumer
    whose transport closes synchronously): the registry stays consistent and
    never sends an event that contradicts what the receiver was told.
    """

    def slow(self, uid: int, friends: list[int]) -> SlowConsumer:
        session = SlowConsumer(self.registry, uid)
        self.registry.login(
            session, frozenset(friends), wire.StatusChange(None, None)
        )
        return session

    def test_ended_by_its_snapshot(self) -> None:
        """A session ended by its own snapshot goes offline like any other."""
        self.login(2)
        w = self.login(3, [1])
        slow = self.slow(1, [2])
        self.assertEqual(slow.take(), [online(2)])
        self.assertEqual(self.registry.session_count(1), 0)
        self.assertEqual(w.take(), [online(1), offline(1, START)])

    def test_others_still_told(self) -> None:
        """Watchers after the one that ends during a fan-out are still told."""
        slows = [self.slow(10 + i, [2]) for i in range(3)]
        w = self.login(3, [2])
        self.login(2)
        for s in slows:
            self.assertEqual(s.take(), [online(2)])
        self.assertEqual(w.take(), [online(2)])
        self.assertEqual(self.registry.sessions, 2)

    def test_no_lone_offline_at_login(self) -> None:
        """
        A friend that ends while the new session's own login is fanned out is
        not reported offline to the new session, which was never told it was
        online: the new session gets nothing about it.
        """
        self.slow(1, [2])  # 2 is offline: no snapshot, the session stays
        x = self.login(2, [1])  # 1 is told 2 is online, and ends
        self.assertEqual(self.registry.session_count(1), 0)
        self.assertEqual(x.take(), [])

    def test_no_lone_offline_at_set_watch(self) -> None:
        """
        The same for a friend newly watched by C{set_watch}: it ends while
        the change is fanned out, and the session hears nothing of it.
        """
        self.registry.mutual = True
        x = self.login(2, [3])
        slow = self.slow(1, [2])  # 2 does not list 1: no snapshot
        self.assertEqual(slow.calls, [])
        self.watch(x, [1, 3])  # 1 now sees 2, is told, and ends
        self.assertEqual(slow.take(), [online(2)])
        self.assertEqual(self.registry.session_count(1), 0)
        self.assertEqual(x.take(), [])


class CostTests(RegistryTestCase):
    def test_change_touches_only_watchers(self) -> None:
        """
        A change of X calls C{deliver} only on the sessions watching X; the
        many sessions watching someone else are not called at all.
        """
        bystanders = [self.login(100 + i, [3, 4]) for i in range(200)]
        self.login(3)
        self.login(4)
        watchers = [self.login(10 + i, [2]) for i in range(5)]
        for s in bystanders + watchers:
            s.calls.clear()
        x = self.login(2)
        self.status(x, "away", "t")
        self.status(x, "away", "t")  # no change: no call at all
        self.registry.logout(x)
        for s in bystanders:
            self.assertEqual(s.calls, [], s)
        for s in watchers:
            self.assertEqual(len(s.calls), 3)

    def test_many_watchers_come_and_go(self) -> None:
        """
        Past L{SMALL} watchers of one user (where the reverse index changes
        form), watchers leaving by logout or list change are no longer told,
        and each remaining one is told once.
        """
        n = SMALL + 6
        watchers = [self.login(100 + i, [2, 3]) for i in range(n)]
        x = self.login(2)
        for s in watchers:
            self.assertEqual(s.take(), [online(2)])
        for s in watchers[:5]:
            self.registry.logout(s)
        for s in watchers[5:10]:
            self.watch(s, [3])
        self.status(x, "away")
        for s in watchers[:10]:
            self.assertEqual(s.calls, [])
        for s in watchers[10:]:
            self.assertEqual(s.take(), [online(2, "away", "")])
        for s in watchers[10:]:
            self.registry.logout(s)
        self.registry.logout(x)
        self.assertEqual(self.registry.sessions, 5)
        self.login(2)
        for s in watchers[5:10]:
            self.assertEqual(s.calls, [])

    def test_mutual_change_touches_only_watchers(self) -> None:
        """In mutual mode too, only X's watchers are looked at."""
        self.registry.mutual = True
        bystanders = [self.login(100 + i, [3]) for i in range(200)]
        self.login(3, list(range(100, 300)))
        watchers = [self.login(10 + i, [2]) for i in range(5)]
        for s in bystanders + watchers:
            s.calls.clear()
        x = self.login(2, [10, 11])
        self.status(x, "busy")
        self.watch(x, [10, 11, 12])
        self.registry.logout(x)
        for s in bystanders:
            self.assertEqual(s.calls, [], s)
        self.assertEqual([len(s.calls) for s in watchers], [3, 3, 2, 0, 0])


# -- the reference model and the state machine ---------------------------------

STATUSES = ["online", "away", "busy", "invisible"]
TEXTS = ["", "lunch", "brb"]
UIDS = st.integers(1, 5)
FRIEND_SETS = st.frozensets(UIDS, max_size=5)
LOGIN_FIELDS = st.fixed_dictionaries(
    {}, optional={"status": st.sampled_from(STATUSES), "text": st.sampled_from(TEXTS)}
)
STATUS_FIELDS = st.fixed_dictionaries(
    {"status": st.sampled_from(STATUSES)}, optional={"text": st.sampled_from(TEXTS)}
)
MAX_SESSIONS_PER_USER = 3
MAX_SESSIONS = 10

# A view of a friend: None (offline for this watcher) or (status, text).
View = tuple[str, str] | None
Expected = tuple[int, bool, str, str, float]


class Model:
    """
    What PROTOCOL.md says should be visible, computed the obvious way, from
    scratch, each time it is asked.  Knows nothing of the registry.
    """

    def __init__(self, grace: float, mutual: bool) -> None:
        self.grace = grace
        self.mutual = mutual
        self.now = START
        self.stopped = False
        # sid -> (user id, watch list)
        self.sessions: dict[int, tuple[int, frozenset[int]]] = {}
        # user id -> [status, text], for users with sessions or in the grace
        self.state: dict[int, list[str]] = {}
        # user id -> (when the last session ended, that session's list)
        self.in_grace: dict[int, tuple[float, frozenset[int]]] = {}
        # user id -> last_seen, for users whose grace ran out in this step
        self.expired: dict[int, float] = {}

    # -- what is visible ----------------------------------------------------

    def sessions_of(self, uid: int) -> list[int]:
        return [sid for sid, (u, _) in self.sessions.items() if u == uid]

    def lists(self, uid: int) -> set[int]:
        """Everyone that user's lists hold: its sessions', or its ghost's."""
        out: set[int] = set()
        for sid in self.sessions_of(uid):
            out |= self.sessions[sid][1]
        if uid in self.in_grace:
            out |= self.in_grace[uid][1]
        return out

    def visible(self, uid: int) -> tuple[str, str] | None:
        """The user's (status, text) if visibly online to someone, else None."""
        present = bool(self.sessions_of(uid)) or uid in self.in_grace
        if not present or uid not in self.state:
            return None
        status, text = self.state[uid]
        return None if status == "invisible" else (status, text)

    def view(self, sid: int) -> dict[int, View]:
        """What session C{sid} should currently see of each friend it watches."""
        me, watch = self.sessions[sid]
        out: dict[int, View] = {}
        for x in watch:
            assert x != me
            v = self.visible(x)
            if v is not None and self.mutual and me not in self.lists(x):
                v = None
            out[x] = v
        return out

    def views(self) -> dict[int, dict[int, View]]:
        return {sid: self.view(sid) for sid in self.sessions}

    def expected(
        self, before: dict[int, dict[int, View]]
    ) -> dict[int, list[Expected]]:
        """The events each session must have got, from views before and now."""
        out: dict[int, list[Expected]] = {}
        for sid in self.sessions:
            old = before.get(sid, {})
            events: list[Expected] = []
            if not self.stopped:
                for x, new in self.view(sid).items():
                    was = old.get(x)  # newly watched: as if it was None
                    if new == was:
                        continue
                    if new is None:
                        seen = self.expired.get(x, self.now)
                        events.append((x, False, "offline", "", seen))
                    else:
                        events.append((x, True, new[0], new[1], 0.0))
            out[sid] = sorted(events)
        return out

    # -- changes --------------------------------------------------------------

    def login(self, sid: int, uid: int, watch: frozenset[int],
              fields: dict[str, str]) -> None:
        self.expired = {}
        self.in_grace.pop(uid, None)  # back within the grace: never offline
        if uid not in self.state:
            self.state[uid] = [fields.get("status", "online"), fields.get("text", "")]
        elif "status" in fields:
            self.state[uid] = [fields["status"], fields.get("text", "")]
        elif "text" in fields:
            self.state[uid][1] = fields["text"]
        self.sessions[sid] = (uid, watch)

    def logout(self, sid: int) -> None:
        self.expired = {}
        uid, watch = self.sessions.pop(sid)
        if self.sessions_of(uid):
            return
        if self.grace > 0 and not self.stopped and self.state[uid][0] != "invisible":
            self.in_grace[uid] = (self.now, watch)
        else:
            del self.state[uid]

    def set_status(self, sid: int, status: str, text: str) -> None:
        self.expired = {}
        self.state[self.sessions[sid][0]] = [status, text]

    def set_text(self, sid: int, text: str) -> None:
        self.expired = {}
        self.state[self.sessions[sid][0]][1] = text

    def set_watch(self, sid: int, watch: frozenset[int]) -> None:
        self.expired = {}
        uid, _ = self.sessions[sid]
        self.sessions[sid] = (uid, watch)

    def advance(self, dt: float) -> None:
        self.expired = {}
        self.now += dt
        for uid, (ended, _) in list(self.in_grace.items()):
            if ended + self.grace <= self.now:
                del self.in_grace[uid]
                del self.state[uid]
                self.expired[uid] = ended

    def stop(self) -> None:
        self.expired = {}
        self.stopped = True
        self.in_grace.clear()


def parse(session: FakeSession) -> list[Expected]:
    """The session's presence events since the last call, as model tuples."""
    out: list[Expected] = []
    for e in session.take():
        assert e["type"] == "presence", e
        if e["online"] is True:
            assert set(e) == {"type", "user_id", "online", "status", "text"}, e
            out.append((e["user_id"], True, e["status"], e["text"], 0.0))
        else:
            assert e["online"] is False and e["status"] == "offline", e
            assert set(e) == {"type", "user_id", "online", "status", "last_seen"}, e
            out.append((e["user_id"], False, "offline", "", e["last_seen"]))
    return sorted(out)


class RegistryMachine(RuleBasedStateMachine):
    """Random traffic against the registry, each step checked on the model."""

    offline_grace = 0.0
    mutual = False
    nodes = 1  # registries joined by one in-memory bus

    def __init__(self) -> None:
        super().__init__()
        self.clock = Clock()
        self.clock.advance(START)
        self.hub = MemoryHub()
        self.registries = [
            Registry(
                self.clock,
                offline_grace=self.offline_grace,
                mutual=self.mutual,
                bus=self.hub.bus(f"node{i}"),
            )
            for i in range(self.nodes)
        ]
        self.where: dict[int, Registry] = {}
        self.model = Model(self.offline_grace, self.mutual)
        self.live: dict[int, FakeSession] = {}
        self.gone: list[FakeSession] = []
        self.next_sid = 0
        self.steps = 0
        self.before: dict[int, dict[int, View]] = {}

    # -- plumbing -------------------------------------------------------------

    def _begin(self) -> None:
        self.before = self.model.views()

    def _check(self) -> None:
        """Every session got exactly the model's events for this step."""
        self.steps += 1
        expected = self.model.expected(self.before)
        assert set(expected) == set(self.live)
        chunks: dict[int, list[bytes]] = {id(r): [] for r in self.registries}
        for sid, session in self.live.items():
            chunks[id(self.where[sid])].extend(session.calls)
            got = parse(session)
            assert got == expected[sid], (
                f"step {self.steps}: {session!r} (sid {sid}) got {got}, "
                f"expected {expected[sid]}"
            )
        for session in self.gone:
            assert session.calls == [], f"{session!r} told after it left"
        # Events are encoded once on each node: same line, same object.
        for node_chunks in chunks.values():
            singles: dict[bytes, bytes] = {}
            for chunk in node_chunks:
                if chunk.count(b"\n") == 1:
                    first = singles.setdefault(chunk, chunk)
                    assert first is chunk, f"{chunk!r} encoded more than once"
        if not self.model.stopped:
            for registry in self.registries:
                for uid in range(1, 6):
                    assert registry.status_of(uid) == self.model.visible(uid), uid
                    assert registry.session_count(uid) == len(
                        self.model.sessions_of(uid)
                    ), uid

    def _session(self, data: st.DataObject) -> int:
        sid: int = data.draw(st.sampled_from(sorted(self.live)), label="sid")
        return sid

    # -- rules ----------------------------------------------------------------

    @precondition(lambda self: len(self.live) < MAX_SESSIONS)
    @rule(uid=UIDS, friends=FRIEND_SETS, fields=LOGIN_FIELDS,
          node=st.integers(0, 1))
    def login(self, uid: int, friends: frozenset[int], fields: dict[str, str],
              node: int) -> None:
        if len(self.model.sessions_of(uid)) >= MAX_SESSIONS_PER_USER:
            return
        watch = friends - {uid}
        self._begin()
        sid = self.next_sid
        self.next_sid += 1
        session = FakeSession(uid, f"sid{sid}")
        self.live[sid] = session
        registry = self.where[sid] = self.registries[node % self.nodes]
        # As the protocol does: the watch list in its compact form.
        registry.login(
            session, id_list(watch), wire.status_fields(fields, required=False)
        )
        self.model.login(sid, uid, watch, fields)
        self._check()

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def logout(self, data: st.DataObject) -> None:
        sid = self._session(data)
        self._begin()
        session = self.live.pop(sid)
        self.where.pop(sid).logout(session)
        self.model.logout(sid)
        self.gone.append(session)
        self._check()

    @precondition(lambda self: self.live)
    @rule(data=st.data(), fields=STATUS_FIELDS)
    def set_status(self, data: st.DataObject, fields: dict[str, str]) -> None:
        """A C{status} message: the text is cleared when not given."""
        sid = self._session(data)
        self._begin()
        self.where[sid].set_status(
            self.live[sid], wire.status_fields(fields, required=True)
        )
        self.model.set_status(sid, fields["status"], fields.get("text", ""))
        self._check()

    @precondition(lambda self: self.live)
    @rule(data=st.data(), text=st.sampled_from(TEXTS))
    def relogin_text(self, data: st.DataObject, text: str) -> None:
        """A re-sent login carrying only C{text}: the status is left alone."""
        sid = self._session(data)
        self._begin()
        self.where[sid].set_status(
            self.live[sid], wire.status_fields({"text": text}, required=False)
        )
        self.model.set_text(sid, text)
        self._check()

    @precondition(lambda self: self.live)
    @rule(
        data=st.data(),
        mode=st.sampled_from(["friends", "add", "remove"]),
        ids=FRIEND_SETS,
    )
    def set_watch(self, data: st.DataObject, mode: str, ids: frozenset[int]
                  ) -> None:
        sid = self._session(data)
        session = self.live[sid]
        uid, current = self.model.sessions[sid]
        ids = ids - {uid}
        watch = friends_change({mode: sorted(ids)}, uid, current, 10)
        self._begin()
        self.where[sid].set_watch(session, id_list(watch))
        self.model.set_watch(sid, watch)
        self._check()

    @rule(dt=st.sampled_from([0.5, 1.0, 2.5, 3.0, 10.0]))
    def advance(self, dt: float) -> None:
        self._begin()
        self.clock.advance(dt)
        self.model.advance(dt)
        self._check()

    # Stopping one node of several is news for the others (their watchers
    # are told), unlike the model's single server: tested on its own.
    @precondition(
        lambda self: self.steps >= 30 and not self.model.stopped and self.nodes == 1
    )
    @rule()
    def stop(self) -> None:
        self._begin()
        for registry in self.registries:
            registry.stop()
        self.model.stop()
        self._check()
        assert self.clock.getDelayedCalls() == []


class OpenNoGrace(RegistryMachine):
    pass


class OpenGrace(RegistryMachine):
    offline_grace = 3.0


class MutualNoGrace(RegistryMachine):
    mutual = True


class MutualGrace(RegistryMachine):
    mutual = True
    offline_grace = 3.0


class TwoNodesOpenGrace(OpenGrace):
    nodes = 2


class TwoNodesMutualGrace(MutualGrace):
    nodes = 2


class TwoNodesMutualNoGrace(MutualNoGrace):
    nodes = 2


MACHINE_SETTINGS = settings(
    max_examples=int(os.environ.get("PRESENCE_EXAMPLES", "250")),
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


class RegistryModelTests(unittest.SynchronousTestCase):
    """The registry agrees with the reference model on random traffic."""

    def test_open_no_grace(self) -> None:
        """Open visibility, offline reported at once."""
        run_state_machine_as_test(OpenNoGrace, settings=MACHINE_SETTINGS)

    def test_open_grace(self) -> None:
        """Open visibility, with an offline grace."""
        run_state_machine_as_test(OpenGrace, settings=MACHINE_SETTINGS)

    def test_mutual_no_grace(self) -> None:
        """Mutual visibility, offline reported at once."""
        run_state_machine_as_test(MutualNoGrace, settings=MACHINE_SETTINGS)

    def test_mutual_grace(self) -> None:
        """Mutual visibility, with an offline grace."""
        run_state_machine_as_test(MutualGrace, settings=MACHINE_SETTINGS)

    def test_two_nodes_open_grace(self) -> None:
        """Two registries joined by the in-memory bus, sessions on either:
        every watcher gets exactly the events of one server (open, grace)."""
        run_state_machine_as_test(TwoNodesOpenGrace, settings=MACHINE_SETTINGS)

    def test_two_nodes_mutual_grace(self) -> None:
        """Two joined registries agree with the model (mutual, grace)."""
        run_state_machine_as_test(TwoNodesMutualGrace, settings=MACHINE_SETTINGS)

    def test_two_nodes_mutual_no_grace(self) -> None:
        """Two joined registries agree with the model (mutual, no grace)."""
        run_state_machine_as_test(TwoNodesMutualNoGrace, settings=MACHINE_SETTINGS)

