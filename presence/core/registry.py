"""The sans-IO presence core: who is here, who watches whom, what changed.

A L{Registry} holds one node's sessions.  It never touches a socket or the
reactor: sessions are L{ISession} providers that it tells about changes by
calling C{deliver} with ready-encoded lines, and it reads the time and runs
the offline-grace timers through an injected L{IReactorTime} (C{task.Clock}
in tests).

What a user's visible state is, the registry learns from its L{IBus}: it
publishes what this node holds of each of its users (a L{Share}: sessions,
the mutual-mode list, a ghost during the grace) and status writes, follows
the users its sessions watch, and tells local watchers the difference
between the state it knew and the state the bus reports.  With the default
in-memory bus that is all synchronous and in one process; with the Redis
bus it spans a cluster, and the same code tells the watchers.

Cost model: a change of user X touches only the sessions watching X (the
reverse index C{_watchers}) and encodes each event once for all of them; a
session's own list changes touch only the ids that changed.

Memory model: a server holds tens of thousands of idle sessions, so their
state is kept compact.  A watch list is an C{array('q')} (8 bytes an id, no
int objects); the reverse index holds a plain list of sessions per watched
user, and switches to a set only past L{SMALL} watchers, where removal by
scanning would cost.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Sequence

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from zope.interface import implementer

from presence import wire
from presence.core.bus import MemoryHub
from presence.core.interfaces import (
    INVISIBLE,
    IBus,
    ISession,
    IStateListener,
    Share,
    UserState,
)
from presence.wire import StatusChange

__all__ = ["SMALL", "ISession", "IdList", "Registry", "id_list"]

SMALL = 64  # watchers of one user kept in a list; more go in a set

IdList = array  # array('q') of distinct user ids, sorted
_NO_IDS = array("q")
_EMPTY: frozenset[int] = frozenset()
_NO_CHANGE = StatusChange(None, None)


def id_list(ids: Iterable[int]) -> IdList:
    """The compact form of a watch list that the registry keeps."""
    return array("q", sorted(set(ids)))


class _Local:
    """A user with sessions on this node, or a ghost in its offline grace."""

    __slots__ = ("ended_at", "ghost", "grace", "listed", "sessions", "share", "uid")

    def __init__(self, uid: int) -> None:
        self.uid = uid
        self.sessions: list[ISession] = []
        # Mutual mode only: how many of this user's lists (sessions and
        # ghost) hold each id.
        # (None until something is listed: open mode never needs it.)
        self.listed: dict[int, int] | None = None
        # Offline grace: the last session's list and when it ended, kept until
        # the grace runs out or a session comes back.
        self.ghost: IdList = _NO_IDS
        self.ended_at = 0.0
        self.grace: IDelayedCall | None = None
        self.share: Share | None = None  # as last published


class _Known:
    """A followed user's state as last heard, with its encoded online event."""

    __slots__ = ("line", "state")

    def __init__(self, state: UserState) -> None:
        self.state = state
        self.line: bytes | None = None

    def online_line(self) -> bytes:
        # One encoding, shared by the fan-out and every later snapshot.
        line = self.line
        if line is None:
            state = self.state
            line = self.line = wire.online(state.uid, state.status, state.text)
        return line


@implementer(IStateListener)
class Registry:
    """One node's sessions and watch lists, told of users' states by a bus."""

    def __init__(
        self,
        clock: IReactorTime,
        *,
        offline_grace: float = 0.0,
        mutual: bool = False,
        bus: IBus | None = None,
    ) -> None:
        self.clock = clock
        self.offline_grace = offline_grace
        self.mutual = mutual
        self.bus: IBus = bus if bus is not None else MemoryHub().bus()
        self._local: dict[int, _Local] = {}
        self._watching: dict[ISession, IdList] = {}
        self._watchers: dict[int, list[ISession] | set[ISession]] = {}
        self._known: dict[int, _Known] = {}
        self._stopping = False
        # While a session's newly watched users are followed: that session
        # and its snapshot lines, so that the snapshot is one write.
        self._gather: tuple[ISession, list[bytes]] | None = None
        self.bus.attach(self)

    # -- queries ------------------------------------------------------------

    def session_count(self, uid: int) -> int:
        """Live sessions of C{uid} (on every node, as far as the bus knows)."""
        state = self.bus.known(uid)
        if state is not None:
            return state.sessions
        local = self._local.get(uid)
        return len(local.sessions) if local else 0

    def is_online(self, uid: int) -> bool:
        state = self.bus.known(uid)
        return state is not None and state.visible

    def status_of(self, uid: int) -> tuple[str, str] | None:
        state = self.bus.known(uid)
        if state is None or not state.visible:
            return None
        return state.status, state.text

    def watching(self, session: ISession) -> frozenset[int]:
        return frozenset(self._watching.get(session, ()))

    @property
    def users(self) -> int:
        """Users with a session (or a ghost) on this node."""
        return len(self._local)

    @property
    def sessions(self) -> int:
        return len(self._watching)

    # -- changes ------------------------------------------------------------

    def login(
        self, session: ISession, watch: Iterable[int], change: StatusChange
    ) -> None:
        """Add a logged-in session; then send it the snapshot of its friends.

        C{watch} is best given as an L{id_list}: it is then kept as it is.
        """
        if type(watch) is not array:
            watch = id_list(watch)
        uid: int = session.user_id
        local = self._local.get(uid)
        if local is None:
            local = self._local[uid] = _Local(uid)
        if local.grace is not None:
            # Back within the grace: never offline.  Drop the old list's claim.
            local.grace.cancel()
            local.grace = None
            self._unlist(local, local.ghost)
            local.ghost = _NO_IDS
        local.sessions.append(session)
        self._watching[session] = watch
        self._list(local, watch)
        self._publish(local, change)
        if session not in self._watching:
            return  # it ended while its arrival was published
        # Watch only now: a friend ending during that publish must not send
        # this session an offline event for someone it was never shown.
        self._watch(session, watch)

    def logout(self, session: ISession) -> None:
        """Forget a session (closed, timed out, errored, said bye)."""
        watch = self._watching.pop(session, None)
        if watch is None:
            return
        self._unwatch(session, watch)
        local = self._local[session.user_id]
        local.sessions.remove(session)
        if local.sessions:
            self._unlist(local, watch)
            self._publish(local, None)
            return
        now = self.clock.seconds()
        state = self.bus.known(local.uid)
        invisible = state is not None and state.status == INVISIBLE
        if self.offline_grace > 0 and not self._stopping and not invisible:
            local.ghost = watch
            local.ended_at = now
            local.grace = self.clock.callLater(
                self.offline_grace, self._grace_over, local
            )
            self._publish(local, None)
        else:
            self._unlist(local, watch)
            self._leave(local, now)

    def set_status(self, session: ISession, change: StatusChange) -> None:
        self._publish(self._local[session.user_id], change)

    def set_watch(self, session: ISession, watch: Iterable[int]) -> None:
        """Replace a session's watch list; snapshot the newly watched."""
        old = self._watching[session]
        new_set, old_set = set(watch), set(old)
        added, removed = new_set - old_set, old_set - new_set
        if not added and not removed:
            return
        self._unwatch(session, removed)
        self._watching[session] = (
            watch if type(watch) is array else id_list(new_set)
        )
        local = self._local[session.user_id]
        if self.mutual:
            self._list(local, added)
            self._unlist(local, removed)
            self._publish(local, None)
            if session not in self._watching:
                return  # it ended while its change was published
        self._watch(session, added)

    def stop(self) -> None:
        """The server is stopping: tell nobody about anybody from now on."""
        self._stopping = True
        for local in list(self._local.values()):
            if local.grace is not None:
                local.grace.cancel()
                local.grace = None
                if not local.sessions:
                    self._unlist(local, local.ghost)
                    self._leave(local, local.ended_at)

    # -- what the bus tells -------------------------------------------------

    def user_changed(self, state: UserState) -> None:
        uid = state.uid
        watchers = self._watchers.get(uid)
        if watchers is None:
            return  # nobody here watches this user any more
        known = self._known.get(uid)
        new = _Known(state)
        if state.present:
            self._known[uid] = new
        elif known is not None:
            del self._known[uid]
        gather = self._gather
        if gather is not None and known is None and len(watchers) == 1:
            session, lines = gather
            if session in watchers:
                if state.seen_by(session.user_id, self.mutual):
                    lines.append(new.online_line())
                return
        if not self._stopping:
            self._tell(watchers, known, new)

    def resync(self, states: Sequence[UserState]) -> None:
        by_uid = {state.uid: state for state in states}
        now = self.clock.seconds()
        for uid in list(self._watchers):
            state = by_uid.get(uid)
            if state is None:
                state = UserState(uid, False, "offline", "", _EMPTY, 0, now, 0)
            self.user_changed(state)

    # -- internals ----------------------------------------------------------

    def _publish(self, local: _Local, change: StatusChange | None) -> None:
        sessions = len(local.sessions)
        listed = frozenset(local.listed) if local.listed else _EMPTY
        share = local.share
        if (
            share is None
            or share.sessions != sessions
            or share.listed != listed
            or (not sessions and share.ended_at != local.ended_at)
        ):
            share = local.share = Share(
                sessions, listed, local.ended_at if not sessions else 0.0
            )
        elif change is None:
            return
        self.bus.publish(local.uid, share, change, self.clock.seconds())

    def _leave(self, local: _Local, last_seen: float) -> None:
        """The node holds nothing more of this user."""
        del self._local[local.uid]
        local.share = None
        self.bus.publish(local.uid, None, None, last_seen)

    def _grace_over(self, local: _Local) -> None:
        local.grace = None
        self._unlist(local, local.ghost)
        local.ghost = _NO_IDS
        self._leave(local, local.ended_at)

    def _watch(self, session: ISession, uids: Iterable[int]) -> None:
        """Add C{session} as a watcher of C{uids}: snapshot, follow the new."""
        watchers, known, me = self._watchers, self._known, session.user_id
        mutual = self.mutual
        lines: list[bytes] = []
        new: list[int] = []
        for uid in uids:
            sessions = watchers.get(uid)
            if sessions is None:
                watchers[uid] = [session]
                new.append(uid)
                continue
            if type(sessions) is list:
                sessions.append(session)
                if len(sessions) > SMALL:
                    watchers[uid] = set(sessions)
            else:
                sessions.add(session)  # type: ignore[union-attr]
            k = known.get(uid)
            if k is not None and k.state.seen_by(me, mutual):
                lines.append(k.online_line())
        if new:
            # The bus answers with the state of each that is present (an
            # asynchronous bus later, through user_changed).
            self._gather = (session, lines)
            try:
                self.bus.follow(new)
            finally:
                self._gather = None
        if lines and not self._stopping:
            session.deliver(b"".join(lines))

    def _unwatch(self, session: ISession, uids: Iterable[int]) -> None:
        gone: list[int] = []
        watchers = self._watchers
        for uid in uids:
            sessions = watchers.get(uid)
            if sessions is None:
                continue
            if type(sessions) is list:
                if session in sessions:
                    sessions.remove(session)
            else:
                sessions.discard(session)  # type: ignore[union-attr]
            if not sessions:
                del watchers[uid]
                self._known.pop(uid, None)
                gone.append(uid)
        if gone:
            self.bus.unfollow(gone)

    def _list(self, local: _Local, ids: Iterable[int]) -> None:
        """Count ids into the user's mutual list."""
        if not self.mutual:
            return
        listed = local.listed
        if listed is None:
            listed = local.listed = {}
        for uid in ids:
            listed[uid] = listed.get(uid, 0) + 1

    def _unlist(self, local: _Local, ids: Iterable[int]) -> None:
        """Count ids out of the user's mutual list."""
        if not self.mutual:
            return
        listed = local.listed
        if listed is None:
            return
        for uid in ids:
            n = listed.get(uid, 0) - 1
            if n <= 0:
                listed.pop(uid, None)
            else:
                listed[uid] = n

    def _tell(
        self,
        watchers: list[ISession] | set[ISession],
        old: _Known | None,
        new: _Known,
    ) -> None:
        """Tell each watcher whose view of the user changed, once."""
        state = new.state
        before = old.state if old is not None else None
        restated = before is not None and (before.status, before.text) != (
            state.status,
            state.text,
        )
        if not self.mutual:
            was = before is not None and before.visible
            if state.visible and (not was or restated):
                line = new.online_line()
            elif was and not state.visible:
                line = wire.offline(state.uid, state.last_seen)
            else:
                return
            # Copy: a delivery may end a session and so change the collection.
            for session in tuple(watchers):
                session.deliver(line)
            return
        on_line = off_line = b""
        for session in tuple(watchers):
            w = session.user_id
            was = before is not None and before.seen_by(w, True)
            now = state.seen_by(w, True)
            if now and (not was or restated):
                on_line = on_line or new.online_line()
                session.deliver(on_line)
            elif was and not now:
                # Still visible, no longer listing this watcher: gone now.
                off_line = off_line or wire.offline(
                    state.uid,
                    state.last_seen if not state.visible else self.clock.seconds(),
                )
                session.deliver(off_line)
