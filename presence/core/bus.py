"""The in-memory bus: one process's nodes, or several registries in tests.

L{MemoryHub} is the reference for what any bus computes (the Redis bridge's
scripts do the same in Lua): from every node's L{Share} of a user and the
status writes, the user's global L{UserState}, with a new version only when
something watchers see changes.  It answers synchronously.

A listener may publish while it is being told of a change (a delivery that
ends a session ends its user's share): such a publish is queued and handled
when the current one is done, so that every listener hears every user's
states in the order they happened.

A hub with one node (a server without a cluster) stores less: a user's
record is its L{UserState} alone (one node's share follows from it: its
session count and list), and the node is told of every user's changes
rather than only of those it follows, so following costs nothing (the
registry ignores users nobody watches, as L{IStateListener} allows).  The
second node's bus turns that into the general form.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Sequence

from zope.interface import implementer

from presence.core.interfaces import IBus, IStateListener, Share, UserState
from presence.wire import StatusChange
from presence.wire.frozen import maker

_EMPTY: frozenset[int] = frozenset()
# UserState(...), built the faster way: one per change.
_new_state = maker(UserState)


class _Record:
    """A present user: each node's share, and the status last written.

    Nearly every user is held by one node, so that node's share sits in the
    record itself (a dict per user would cost about 180 bytes); a dict holds
    the shares only while two nodes or more hold one.
    """

    __slots__ = ("many", "node", "share", "state")

    def __init__(self, state: UserState) -> None:
        self.state = state
        self.node: str | None = None  # the one node holding a share, if one
        self.share: Share | None = None
        self.many: dict[str, Share] | None = None  # from two nodes on

    def shares(self) -> list[tuple[str, Share]]:
        if self.many is not None:
            return list(self.many.items())
        if self.node is not None:
            assert self.share is not None
            return [(self.node, self.share)]
        return []

    def holds(self, node: str) -> bool:
        return node == self.node if self.many is None else node in self.many

    def put(self, node: str, share: Share) -> None:
        many = self.many
        if many is not None:
            many[node] = share
        elif self.node is None or self.node == node:
            self.node, self.share = node, share
        else:
            assert self.share is not None
            self.many = {self.node: self.share, node: share}
            self.node = self.share = None

    def drop(self, node: str) -> None:
        many = self.many
        if many is None:
            if self.node == node:
                self.node = self.share = None
            return
        many.pop(node, None)
        if len(many) == 1:
            ((self.node, self.share),) = many.items()
            self.many = None


class MemoryHub:
    """Shares and states of every user, for the nodes joined to it."""

    def __init__(self) -> None:
        # A bare UserState: held by the only node (see the module doc).
        self._records: dict[int, _Record | UserState] = {}
        # The users each node follows: a set per node, so that a watch list
        # of 10,000 ids is followed and unfollowed in one C-level call;
        # None for a node that follows every user (the only node).
        self._follows: dict[str, set[int] | None] = {}
        # The node of the first bus while no other bus was made.
        self._solo: str | None = None
        self._buses: dict[str, MemoryBus] = {}
        self._version = 0
        self._queue: deque[Callable[[], None]] = deque()
        self._running = False

    def bus(self, node: str = "local") -> MemoryBus:
        """The bus of node C{node} (one per node)."""
        if not self._buses:
            self._solo = node
        elif self._solo is not None and node != self._solo:
            records, solo = self._records, self._solo
            for uid, record in records.items():
                records[uid] = self._open(record, solo)
            self._solo = None
        bus = self._buses[node] = MemoryBus(self, node)
        return bus

    def state(self, uid: int) -> UserState | None:
        record = self._records.get(uid)
        if record is None or isinstance(record, UserState):
            return record
        return record.state

    def node_lost(self, node: str, at: float) -> None:
        """Node C{node} is gone: drop its shares (users last seen at C{at})."""
        self._buses.pop(node, None)
        solo = self._solo
        held = [
            u
            for u, r in self._records.items()
            if (node == solo if isinstance(r, UserState) else r.holds(node))
        ]
        for uid in held:
            self.publish(node, uid, None, None, at)
        self._follows.pop(node, None)

    # -- what the buses call ---------------------------------------------------

    def publish(
        self,
        node: str,
        uid: int,
        share: Share | None,
        change: StatusChange | None,
        at: float,
    ) -> None:
        if self._running:
            self._queue.append(lambda: self._apply(node, uid, share, change, at))
            return
        # Not inside another publish (nearly always): applied at once, as
        # _run would, without a closure and a trip through the queue (this
        # runs once per status change).
        self._running = True
        try:
            self._apply(node, uid, share, change, at)
            queue = self._queue
            while queue:
                queue.popleft()()
        finally:
            self._running = False

    def follow(self, node: str, uids: Iterable[int]) -> None:
        uids = list(uids)
        if node not in self._follows:
            self._follows[node] = None if node == self._solo else set()
        follows = self._follows[node]
        if follows is not None:
            follows.update(uids)

        def tell() -> None:
            bus = self._buses.get(node)
            if bus is None or bus.listener is None or node not in self._follows:
                return
            follows = self._follows[node]
            # Most of a long new list is usually absent: skip those in C.
            for uid in filter(self._records.__contains__, uids):
                state = self.state(uid)
                if state is not None and (follows is None or uid in follows):
                    bus.listener.user_changed(state)

        self._run(tell)

    def unfollow(self, node: str, uids: Iterable[int]) -> None:
        follows = self._follows.get(node)
        if follows is not None:
            follows.difference_update(uids)

    def _nodes(self, uid: int) -> list[str]:
        """The nodes that follow C{uid}."""
        return [
            node
            for node, follows in self._follows.items()
            if follows is None or uid in follows
        ]

    def _open(self, record: _Record | UserState, node: str | None) -> _Record:
        """The general form of a record (a bare state is C{node}'s alone)."""
        if not isinstance(record, UserState):
            return record
        assert node is not None
        opened = _Record(record)
        opened.put(node, Share(record.sessions, record.listed))
        return opened

    # -- internals -------------------------------------------------------------

    def _run(self, job: Callable[[], None]) -> None:
        self._queue.append(job)
        if self._running:
            return  # the loop below gets to it, in order
        self._running = True
        try:
            while self._queue:
                self._queue.popleft()()
        finally:
            self._running = False

    def _apply(
        self,
        node: str,
        uid: int,
        share: Share | None,
        change: StatusChange | None,
        at: float,
    ) -> None:
        entry = self._records.get(uid)
        if node == self._solo and not isinstance(entry, _Record):
            # The only node: its share is the user's one share.
            if share is None:
                if entry is None:
                    return
                self._settle(uid, entry, (), change, at, None)
            else:
                old = entry if entry is not None else _absent(uid, change, at)
                self._settle(uid, old, (share,), change, at, None)
            return
        record = self._open(entry, self._solo) if entry is not None else None
        if share is None:
            if record is None or not record.holds(node):
                return  # nothing held here (a ghost another node replaced)
            record.drop(node)
        elif record is None:
            record = _Record(_absent(uid, change, at))
        if share is not None:
            # A ghost stands only for a user with no session anywhere: one
            # coming back replaces ghosts, and a node whose last session of a
            # user ends while others hold some keeps no ghost.
            if share.sessions:
                for other, held in record.shares():
                    if not held.sessions:
                        record.drop(other)
                record.put(node, share)
            elif any(s.sessions for n, s in record.shares() if n != node):
                record.drop(node)
            else:
                record.put(node, share)
        shares = [held for _, held in record.shares()]
        self._settle(uid, record.state, shares, change, at, record)

    def _settle(
        self,
        uid: int,
        old: UserState,
        shares: Sequence[Share],
        change: StatusChange | None,
        at: float,
        record: _Record | None,
    ) -> None:
        """Store the user's state from its C{shares}; tell followers of news.

        C{record} is None for a user of the only node (stored as its bare
        state); a record whose one share is the only node's is stored bare
        too.
        """
        present = bool(shares)
        status, text = old.status, old.text
        if present and change is not None and old.present:
            status = change.status if change.status is not None else status
            text = change.text if change.text is not None else text
        listed: frozenset[int] = _EMPTY
        for share in shares:
            if share.listed:
                listed = share.listed if not listed else listed | share.listed
        sessions = 0
        for share in shares:  # (no generator: this runs once per change)
            sessions += share.sessions
        if not present:
            status, text = "offline", ""
        visible = present and status != "invisible"
        last_seen = old.last_seen
        if old.visible and not visible:
            last_seen = at
        news = (present, status, text, listed) != (
            old.present, old.status, old.text, old.listed
        )
        state = old
        if news:
            self._version += 1
            state = _new_state(
                uid, present, status, text, listed, sessions, last_seen, self._version
            )
        elif sessions != old.sessions:
            state = _new_state(
                uid, present, status, text, listed, sessions, last_seen, old.version
            )
        if not present:
            self._records.pop(uid, None)
        elif record is None or (
            self._solo is not None
            and record.many is None
            and record.node == self._solo
        ):
            self._records[uid] = state  # the share follows from it
        else:
            record.state = state
            self._records[uid] = record
        if news:
            solo = self._solo
            if solo is not None:
                # One bus, following every user once it follows any.
                nodes: Iterable[str] = (solo,) if solo in self._follows else ()
            else:
                nodes = self._nodes(uid)
            for node in nodes:
                bus = self._buses.get(node)
                if bus is not None and bus.listener is not None:
                    bus.listener.user_changed(state)


def _absent(uid: int, change: StatusChange | None, at: float) -> UserState:
    """A user absent until now: the first session's login sets the status."""
    status = change.status if change and change.status else "online"
    text = change.text if change and change.text is not None else ""
    return UserState(uid, False, status, text, _EMPTY, 0, at, 0)


@implementer(IBus)
class MemoryBus:
    """One node's view of a L{MemoryHub}."""

    def __init__(self, hub: MemoryHub, node: str) -> None:
        self.hub = hub
        self.node = node
        self.listener: IStateListener | None = None

    def attach(self, listener: IStateListener) -> None:
        self.listener = listener

    def publish(
        self, uid: int, share: Share | None, change: StatusChange | None, at: float
    ) -> None:
        self.hub.publish(self.node, uid, share, change, at)

    def follow(self, uids: Iterable[int]) -> None:
        self.hub.follow(self.node, uids)

    def unfollow(self, uids: Iterable[int]) -> None:
        self.hub.unfollow(self.node, uids)

    def known(self, uid: int) -> UserState | None:
        return self.hub.state(uid)
