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
int objects); the reverse index holds the session itself for a user watched
by one session here, a plain list from two, and a set only past L{SMALL}
watchers, where removal by scanning would cost.  A user's L{Share} without
a list or a ghost is one object per session count, shared by every user.

Time model for long lists: a list replaced by another (or a login with
10,000 ids) is mostly ids that no other session here watches; for those the
loop only looks the id up, and they go in and out of the reverse index and
the bus in C-level bulk calls afterwards.
"""

from __future__ import annotations

from array import array
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from itertools import repeat

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
_EMPTY: frozenset[int] = frozenset()

# The watchers of one user on this node: one session, a list, or a set.
_Watchers = ISession | list[ISession] | set[ISession]

# Shares with no list and no ghost, by session count: most users' share is
# one of these few objects.
_PLAIN: dict[int, Share] = {}


def _share(sessions: int, listed: frozenset[int], ended_at: float) -> Share:
    if listed or ended_at:
        return Share(sessions, listed, ended_at)
    share = _PLAIN.get(sessions)
    if share is None:
        share = _PLAIN[sessions] = Share(sessions)
    return share


# How one event reaches several sessions (Registry's fanout): by default
# each session's deliver; a server passes its own, cheaper loop.
Fanout = Callable[[Sequence[ISession], bytes], None]


def deliver_each(sessions: Sequence[ISession], data: bytes) -> None:
    """C{session.deliver(data)} for each of C{sessions}."""
    for session in sessions:
        session.deliver(data)


def _each(watchers: _Watchers) -> tuple[ISession, ...]:
    """The sessions, copied: a delivery may end one and change the index."""
    if isinstance(watchers, (list, set)):
        return tuple(watchers)
    return (watchers,)


def id_list(ids: Iterable[int]) -> IdList:
    """The compact form of a watch list that the registry keeps."""
    return array("q", sorted(set(ids)))


class _Local:
    """A user with sessions on this node, or a ghost in its offline grace."""

    __slots__ = ("ghost", "listed", "sessions", "share", "uid")

    def __init__(self, uid: int) -> None:
        self.uid = uid
        # Only counted: the registry never needs one user's sessions (the
        # watch index and the server hold them), and a list costs 56 bytes.
        self.sessions = 0
        # Mutual mode only: how many of this user's lists (sessions and
        # ghost) hold each id.
        # (None until something is listed: open mode never needs it.)
        self.listed: dict[int, int] | None = None
        self.ghost: _Ghost | None = None  # while the offline grace runs
        self.share: Share | None = None  # as last published

    @property
    def ended_at(self) -> float:
        return self.ghost.ended_at if self.ghost is not None else 0.0


class _Ghost:
    """The offline grace of a user whose last session here ended: that
    session's list, when it ended, and the timer (only while it runs, so
    that other users carry none of it)."""

    __slots__ = ("call", "ended_at", "watch")

    def __init__(self, watch: IdList, ended_at: float, call: IDelayedCall) -> None:
        self.watch = watch
        self.ended_at = ended_at
        self.call = call


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
        fanout: Fanout | None = None,
    ) -> None:
        self.clock = clock
        self._fanout = fanout or deliver_each
        self.offline_grace = offline_grace
        self.mutual = mutual
        self.bus: IBus = bus if bus is not None else MemoryHub().bus()
        # A user with sessions and nothing else here (no ghost, no mutual
        # list) is only its session count; a _Local stands for the others,
        # and for any user while an operation changes it (see _local_of).
        self._local: dict[int, _Local | int] = {}
        self._sessions = 0  # logged in: those whose watch_list is set
        self._entries = 0  # in all the sessions' watch lists
        self._watchers: dict[int, _Watchers] = {}
        # Followed users' states as last heard (present ones only).
        self._known: dict[int, UserState] = {}
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
        if isinstance(local, _Local):
            return local.sessions
        return local or 0

    def is_online(self, uid: int) -> bool:
        state = self.bus.known(uid)
        return state is not None and state.visible

    def status_of(self, uid: int) -> tuple[str, str] | None:
        state = self.bus.known(uid)
        if state is None or not state.visible:
            return None
        return state.status, state.text

    def watching(self, session: ISession) -> frozenset[int]:
        return frozenset(session.watch_list or ())

    def watch_size(self, session: ISession) -> int:
        """How many ids C{session} watches (0 if it is not logged in here)."""
        return len(session.watch_list or ())

    @property
    def watches(self) -> int:
        """Watch-list entries of every session here (what --max-watches bounds)."""
        return self._entries

    @property
    def users(self) -> int:
        """Users with a session (or a ghost) on this node."""
        return len(self._local)

    @property
    def sessions(self) -> int:
        return self._sessions

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
        local = self._local_of(uid)
        if local is None:
            local = self._local[uid] = _Local(uid)
        ghost = local.ghost
        if ghost is not None:
            # Back within the grace: never offline.  Drop the old list's claim.
            ghost.call.cancel()
            local.ghost = None
            self._unlist(local, ghost.watch)
        local.sessions += 1
        session.watch_list = watch
        self._sessions += 1
        self._entries += len(watch)
        self._list(local, watch)
        self._publish(local, change)
        if session.watch_list is None:
            return  # it ended while its arrival was published
        # Watch only now: a friend ending during that publish must not send
        # this session an offline event for someone it was never shown.
        self._watch(session, watch)

    def logout(self, session: ISession) -> None:
        """Forget a session (closed, timed out, errored, said bye)."""
        watch = session.watch_list
        if watch is None:
            return
        session.watch_list = None
        self._sessions -= 1
        self._entries -= len(watch)
        self._unwatch(session, watch)
        local = self._local_of(session.user_id)
        assert local is not None
        local.sessions -= 1
        if local.sessions:
            self._unlist(local, watch)
            self._publish(local, None)
            return
        now = self.clock.seconds()
        state = self.bus.known(local.uid)
        invisible = state is not None and state.status == INVISIBLE
        if self.offline_grace > 0 and not self._stopping and not invisible:
            call = self.clock.callLater(self.offline_grace, self._grace_over, local)
            local.ghost = _Ghost(watch, now, call)
            self._publish(local, None)
        else:
            self._unlist(local, watch)
            self._leave(local, now)

    def set_status(self, session: ISession, change: StatusChange) -> None:
        uid: int = session.user_id
        count = self._local.get(uid)
        if type(count) is int:
            # Only sessions here: its share stands as published, and the
            # hot path of a status change needs no _Local.
            share = _share(count, _EMPTY, 0.0)
            self.bus.publish(uid, share, change, self.clock.seconds())
            return
        local = self._local_of(uid)
        assert local is not None
        self._publish(local, change)

    def set_watch(self, session: ISession, watch: Iterable[int]) -> None:
        """Replace a session's watch list; snapshot the newly watched."""
        old = session.watch_list
        assert old is not None, "set_watch on a session not logged in"
        if type(watch) is array and watch == old:
            return  # re-sent as it was (older clients do, every second)
        new_set, old_set = set(watch), set(old)
        added, removed = new_set - old_set, old_set - new_set
        if not added and not removed:
            return
        self._unwatch(session, removed)
        session.watch_list = watch if type(watch) is array else id_list(new_set)
        self._entries += len(new_set) - len(old)
        if self.mutual:
            local = self._local_of(session.user_id)
            assert local is not None
            self._list(local, added)
            self._unlist(local, removed)
            self._publish(local, None)
            if session.watch_list is None:
                return  # it ended while its change was published
        self._watch(session, added)

    def stop(self) -> None:
        """The server is stopping: tell nobody about anybody from now on."""
        self._stopping = True
        for local in list(self._local.values()):
            if not isinstance(local, _Local):
                continue
            ghost = local.ghost
            if ghost is not None:
                ghost.call.cancel()
                local.ghost = None
                if not local.sessions:
                    self._unlist(local, ghost.watch)
                    self._leave(local, ghost.ended_at)

    # -- what the bus tells -------------------------------------------------

    def user_changed(self, state: UserState) -> None:
        uid = state.uid
        watchers = self._watchers.get(uid)
        if watchers is None:
            return  # nobody here watches this user any more
        known = self._known.get(uid)
        if state.present:
            self._known[uid] = state
        elif known is not None:
            del self._known[uid]
        gather = self._gather
        if gather is not None and known is None and watchers is gather[0]:
            session, lines = gather
            if state.seen_by(session.user_id, self.mutual):
                lines.append(state.online_line())
            return
        if not self._stopping:
            self._tell(watchers, known, state)

    def resync(self, states: Sequence[UserState]) -> None:
        by_uid = {state.uid: state for state in states}
        now = self.clock.seconds()
        for uid in list(self._watchers):
            state = by_uid.get(uid)
            if state is None:
                state = UserState(uid, False, "offline", "", _EMPTY, 0, now, 0)
            self.user_changed(state)

    # -- internals ----------------------------------------------------------

    def _local_of(self, uid: int) -> _Local | None:
        """The user's _Local, stored in place of a bare count while it changes."""
        entry = self._local.get(uid)
        if entry is None or isinstance(entry, _Local):
            return entry
        local = self._local[uid] = _Local(uid)
        local.sessions = entry
        local.share = _share(entry, _EMPTY, 0.0)  # what was last published
        return local

    def _fold(self, local: _Local) -> None:
        """Store a user back as its count if nothing else is held.

        Called by _publish just before it publishes: what the bus then tells
        may end sessions and come back here, and every operation is done
        with its _Local by then, so a later one starts from the count."""
        if (
            local.ghost is None
            and not local.listed
            and local.sessions
            and local.share is _PLAIN.get(local.sessions)
            and self._local.get(local.uid) is local
        ):
            self._local[local.uid] = local.sessions

    def _publish(self, local: _Local, change: StatusChange | None) -> None:
        sessions = local.sessions
        listed = frozenset(local.listed) if local.listed else _EMPTY
        share = local.share
        if (
            share is None
            or share.sessions != sessions
            or share.listed != listed
            or (not sessions and share.ended_at != local.ended_at)
        ):
            share = local.share = _share(sessions, listed, local.ended_at)
        elif change is None:
            self._fold(local)
            return
        self._fold(local)
        self.bus.publish(local.uid, share, change, self.clock.seconds())

    def _leave(self, local: _Local, last_seen: float) -> None:
        """The node holds nothing more of this user."""
        del self._local[local.uid]
        local.share = None
        self.bus.publish(local.uid, None, None, last_seen)

    def _grace_over(self, local: _Local) -> None:
        ghost = local.ghost
        assert ghost is not None
        local.ghost = None
        self._unlist(local, ghost.watch)
        self._leave(local, ghost.ended_at)

    def _watch(self, session: ISession, uids: Iterable[int]) -> None:
        """Add C{session} as a watcher of C{uids}: snapshot, follow the new."""
        watchers, known, me = self._watchers, self._known, session.user_id
        get, mutual = watchers.get, self.mutual
        lines: list[bytes] = []
        new: list[int] = []
        for uid in uids:
            sessions = get(uid)
            if sessions is None:
                new.append(uid)  # nobody here watches it yet: in bulk below
                continue
            if isinstance(sessions, list):
                sessions.append(session)
                if len(sessions) > SMALL:
                    watchers[uid] = set(sessions)
            elif isinstance(sessions, set):
                sessions.add(session)
            else:
                watchers[uid] = [sessions, session]
            k = known.get(uid)
            if k is not None and k.seen_by(me, mutual):
                lines.append(k.online_line())
        if new:
            watchers.update(zip(new, repeat(session)))
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
        watchers = self._watchers
        get = watchers.get
        gone: list[int] = []
        for uid in uids:
            sessions = get(uid)
            if sessions is session:
                gone.append(uid)  # only this session watched it: in bulk below
            elif isinstance(sessions, list):
                if session in sessions:
                    sessions.remove(session)
                    if len(sessions) == 1:
                        watchers[uid] = sessions[0]
            elif isinstance(sessions, set):
                sessions.discard(session)
                if len(sessions) == 1:
                    (watchers[uid],) = sessions
        if gone:
            deque(map(watchers.__delitem__, gone), 0)
            known = self._known
            if known:
                deque(map(known.pop, gone, repeat(None)), 0)
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
        watchers: _Watchers,
        before: UserState | None,
        state: UserState,
    ) -> None:
        """Tell each watcher whose view of the user changed, once."""
        restated = before is not None and (before.status, before.text) != (
            state.status,
            state.text,
        )
        if not self.mutual:
            was = before is not None and before.visible
            if state.visible and (not was or restated):
                line = state.online_line()
            elif was and not state.visible:
                line = wire.offline(state.uid, state.last_seen)
            else:
                return
            if isinstance(watchers, (list, set)):
                self._fanout(tuple(watchers), line)  # a copy: see _each
            else:
                watchers.deliver(line)
            return
        on_line = off_line = b""
        for session in _each(watchers):
            w = session.user_id
            was = before is not None and before.seen_by(w, True)
            now = state.seen_by(w, True)
            if now and (not was or restated):
                on_line = on_line or state.online_line()
                session.deliver(on_line)
            elif was and not now:
                # Still visible, no longer listing this watcher: gone now.
                off_line = off_line or wire.offline(
                    state.uid,
                    state.last_seen if not state.visible else self.clock.seconds(),
                )
                session.deliver(off_line)
