"""The sans-IO presence core: who is online, who watches whom, what changed.

The registry never touches a socket or the reactor.  It is handed sessions
(anything that provides L{ISession}), tells them about changes by calling
C{deliver} with ready-encoded lines, and reads time and schedules the
offline-grace timers through an injected L{IReactorTime} (C{task.Clock} in
tests).  A distributed backend replaces this class; a cluster bridge can feed
sessions of other processes in as L{ISession} providers whose C{deliver}
forwards or ignores, without changing how local watchers are told.

Cost model: a change of user X touches only the sessions watching X (the
reverse index C{_watchers}) and encodes each event once for all of them; a
session's own list changes touch only the ids that changed.

Memory model: a server holds tens of thousands of idle sessions, so their
state is kept compact.  A watch list is an C{array('q')} (8 bytes an id, no
int objects; a 20-id frozenset costs 2.2 KB); the reverse index holds a
plain list of sessions per watched user, and switches to a set only when a
user has more than L{SMALL} watchers, where removal by scanning would cost.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable
from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from zope.interface import Attribute, Interface

from presence import wire
from presence.wire import StatusChange

INVISIBLE = "invisible"
SMALL = 64  # watchers of one user kept in a list; more go in a set

IdList = array  # array('q') of distinct user ids, sorted
_NO_IDS = array("q")


def id_list(ids: Iterable[int]) -> IdList:
    """The compact form of a watch list that the registry keeps."""
    return array("q", sorted(set(ids)))


class ISession(Interface):
    """A logged-in connection, as the registry sees it."""

    user_id = Attribute("The user id this session logged in as (int).")

    def deliver(data: bytes) -> None:
        """Send one or more encoded server lines to the client."""


class _User:
    """What the registry knows of one user with at least one session."""

    __slots__ = ("ended_at", "ghost", "grace", "line", "listed", "sessions",
                 "status", "text", "uid")

    def __init__(self, uid: int, status: str, text: str) -> None:
        self.uid = uid
        self.sessions: list[Any] = []
        self.status = status
        self.text = text
        # Mutual mode only: how many of this user's session lists hold each id.
        self.listed: dict[int, int] = {}
        # Offline grace: the last session's list and when it ended, kept until
        # the grace runs out or a session comes back.
        self.ghost: IdList = _NO_IDS
        self.ended_at = 0.0
        self.grace: IDelayedCall | None = None
        # The encoded "online" event, shared by fan-out and snapshots.
        self.line: bytes | None = None

    @property
    def visible(self) -> bool:
        return bool(self.sessions or self.grace) and self.status != INVISIBLE

    def online_line(self) -> bytes:
        line = self.line
        if line is None:
            line = self.line = wire.online(self.uid, self.status, self.text)
        return line


class Registry:
    """Presence state for one server process, with no IO of its own."""

    def __init__(
        self,
        clock: IReactorTime,
        *,
        offline_grace: float = 0.0,
        mutual: bool = False,
    ) -> None:
        self.clock = clock
        self.offline_grace = offline_grace
        self.mutual = mutual
        self._users: dict[int, _User] = {}
        self._watching: dict[Any, IdList] = {}
        self._watchers: dict[int, list[Any] | set[Any]] = {}
        self._stopping = False

    # -- queries ------------------------------------------------------------

    def session_count(self, uid: int) -> int:
        user = self._users.get(uid)
        return len(user.sessions) if user else 0

    def is_online(self, uid: int) -> bool:
        user = self._users.get(uid)
        return user is not None and user.visible

    def status_of(self, uid: int) -> tuple[str, str] | None:
        user = self._users.get(uid)
        if user is None or not user.visible:
            return None
        return user.status, user.text

    def watching(self, session: Any) -> frozenset[int]:
        return frozenset(self._watching.get(session, ()))

    @property
    def users(self) -> int:
        return len(self._users)

    @property
    def sessions(self) -> int:
        return len(self._watching)

    # -- changes ------------------------------------------------------------

    def login(self, session: Any, watch: Iterable[int], change: StatusChange) -> None:
        """Add a logged-in session; then send it the snapshot of its friends.

        C{watch} is best given as an L{id_list}: it is then kept as it is.
        """
        if type(watch) is not array:
            watch = id_list(watch)
        uid: int = session.user_id
        user = self._users.get(uid)
        if user is None:
            user = self._users[uid] = _User(
                uid, change.status or "online", change.text or ""
            )
            was_visible, before = False, (user.status, user.text)
        else:
            was_visible, before = user.visible, (user.status, user.text)
            self._apply_status(user, change)
        lost: Iterable[int] = ()
        if user.grace is not None:
            # Back within the grace: never offline.  Drop the old list's claim.
            user.grace.cancel()
            user.grace = None
            lost = self._unlist(user, user.ghost)
            user.ghost = _NO_IDS
        user.sessions.append(session)
        self._watching[session] = watch
        gained = self._list(user, watch)
        self._publish(user, was_visible, before, gained, lost)
        if session not in self._watching:
            return  # it ended while its arrival was published
        # Watch only now: a friend ending during that publish must not send
        # this session an offline event for someone it was never shown.
        for uid in watch:
            self._add_watcher(uid, session)
        self._snapshot(session, watch)

    def logout(self, session: Any) -> None:
        """Forget a session (closed, timed out, errored, said bye)."""
        watch = self._watching.pop(session, None)
        if watch is None:
            return
        self._unwatch(session, watch)
        user = self._users[session.user_id]
        user.sessions.remove(session)
        if user.sessions:
            lost = self._unlist(user, watch)
            self._publish(user, user.visible, (user.status, user.text), (), lost)
            return
        now = self.clock.seconds()
        if user.status == INVISIBLE:
            self._forget(user)
        elif self.offline_grace > 0 and not self._stopping:
            user.ghost = watch
            user.ended_at = now
            user.grace = self.clock.callLater(
                self.offline_grace, self._grace_over, user
            )
        else:
            self._go_offline(user, now)

    def set_status(self, session: Any, change: StatusChange) -> None:
        user = self._users[session.user_id]
        was_visible, before = user.visible, (user.status, user.text)
        self._apply_status(user, change)
        self._publish(user, was_visible, before, (), ())

    def set_watch(self, session: Any, watch: Iterable[int]) -> None:
        """Replace a session's watch list; snapshot the newly watched."""
        new, old = set(watch), set(self._watching[session])
        added, removed = new - old, old - new
        if not added and not removed:
            return
        user = self._users[session.user_id]
        for uid in removed:
            self._drop_watcher(uid, session)
        self._watching[session] = watch if type(watch) is array else id_list(new)
        gained = self._list(user, added)
        lost = self._unlist(user, removed)
        self._publish(user, user.visible, (user.status, user.text), gained, lost)
        if session not in self._watching:
            return  # it ended while its change was published
        for uid in added:
            self._add_watcher(uid, session)
        self._snapshot(session, added)

    def stop(self) -> None:
        """The server is stopping: tell nobody about anybody from now on."""
        self._stopping = True
        for user in self._users.values():
            if user.grace is not None:
                user.grace.cancel()
                user.grace = None

    # -- internals ----------------------------------------------------------

    def _apply_status(self, user: _User, change: StatusChange) -> None:
        if change.status is not None:
            user.status = change.status
        if change.text is not None:
            user.text = change.text
        user.line = None

    def _unwatch(self, session: Any, watch: Iterable[int]) -> None:
        for uid in watch:
            self._drop_watcher(uid, session)

    def _add_watcher(self, uid: int, session: Any) -> None:
        sessions = self._watchers.get(uid)
        if sessions is None:
            self._watchers[uid] = [session]
        elif type(sessions) is list:
            sessions.append(session)
            if len(sessions) > SMALL:
                self._watchers[uid] = set(sessions)
        else:
            sessions.add(session)  # type: ignore[union-attr]

    def _drop_watcher(self, uid: int, session: Any) -> None:
        sessions = self._watchers.get(uid)
        if sessions is None:
            return
        if type(sessions) is list:
            if session in sessions:
                sessions.remove(session)
        else:
            sessions.discard(session)  # type: ignore[union-attr]
        if not sessions:
            del self._watchers[uid]

    def _list(self, user: _User, ids: Iterable[int]) -> set[int]:
        """Count ids into the user's mutual list; return the newly listed."""
        if not self.mutual:
            return set()
        listed, gained = user.listed, set()
        for uid in ids:
            n = listed.get(uid, 0)
            if n == 0:
                gained.add(uid)
            listed[uid] = n + 1
        return gained

    def _unlist(self, user: _User, ids: Iterable[int]) -> set[int]:
        """Count ids out of the user's mutual list; return those no longer in."""
        if not self.mutual:
            return set()
        listed, lost = user.listed, set()
        for uid in ids:
            n = listed.get(uid, 0) - 1
            if n <= 0:
                listed.pop(uid, None)
                lost.add(uid)
            else:
                listed[uid] = n
        return lost

    def _sees(self, user: _User, watcher: int) -> bool:
        return not self.mutual or watcher in user.listed

    def _publish(
        self,
        user: _User,
        was_visible: bool,
        before: tuple[str, str],
        gained: Iterable[int],
        lost: Iterable[int],
    ) -> None:
        """Tell each watcher of C{user} whose view of it changed, once."""
        if self._stopping:
            return
        watchers = self._watchers.get(user.uid)
        if not watchers:
            return
        visible = user.visible
        restated = before != (user.status, user.text)
        if not self.mutual:
            if visible and (not was_visible or restated):
                self._send(watchers, user.online_line())
            elif was_visible and not visible:
                self._send(watchers, wire.offline(user.uid, self.clock.seconds()))
            return
        gained, lost = set(gained), set(lost)
        on_line = off_line = b""
        listed = user.listed
        for session in list(watchers):
            w = session.user_id
            now_listed = w in listed
            old = was_visible and ((now_listed and w not in gained) or w in lost)
            new = visible and now_listed
            if new and (not old or restated):
                on_line = on_line or user.online_line()
                session.deliver(on_line)
            elif old and not new:
                off_line = off_line or wire.offline(user.uid, self.clock.seconds())
                session.deliver(off_line)

    def _send(self, sessions: Iterable[Any], line: bytes) -> None:
        # Copy: a delivery may end a session and so change the collection.
        for session in tuple(sessions):
            session.deliver(line)

    def _snapshot(self, session: Any, ids: Iterable[int]) -> None:
        if self._stopping:
            return
        users, me = self._users, session.user_id
        lines = [
            user.online_line()
            for uid in ids
            if (user := users.get(uid)) is not None
            and user.visible
            and self._sees(user, me)
        ]
        if lines:
            session.deliver(b"".join(lines))

    def _go_offline(self, user: _User, last_seen: float) -> None:
        if not self._stopping:
            watchers = self._watchers.get(user.uid)
            if watchers:
                line = wire.offline(user.uid, last_seen)
                self._send(
                    [s for s in watchers if self._sees(user, s.user_id)]
                    if self.mutual
                    else watchers,
                    line,
                )
        self._forget(user)

    def _grace_over(self, user: _User) -> None:
        user.grace = None
        self._go_offline(user, user.ended_at)

    def _forget(self, user: _User) -> None:
        # The user's mutual list and ghost go with it: nobody sees it any more.
        del self._users[user.uid]
