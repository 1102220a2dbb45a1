"""The core's seams: what a session is to the registry, and what a bus is.

A L{Registry} holds the sessions of one process (one *node*).  It does not
decide on its own what a user's visible state is: it tells an L{IBus} what
its node holds of each user (a L{Share}), and the bus, which hears every
node, answers with the user's global L{UserState}.  Watchers are told about
the difference between the old and the new state.

  - L{presence.core.bus.MemoryHub} is the bus of a single process (and joins
    several registries in tests); it answers synchronously.
  - The Redis bridge of cluster mode is another; it answers later, from the
    reactor, and orders answers by L{UserState.version}.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from zope.interface import Attribute, Interface

from presence import wire
from presence.wire import StatusChange
from presence.wire.frozen import quick_init

INVISIBLE = "invisible"


class ISession(Interface):
    """A logged-in connection, as the registry sees it."""

    user_id = Attribute("The user id this session logged in as (int).")
    watch_list = Attribute(
        "The registry's own slot: the ids the session watches (an IdList), or"
        " None while it is not logged in.  Kept on the session rather than in"
        " a dict of the registry's, which would cost 40 bytes a session."
        "  Starts as None; only the registry sets it."
    )

    def deliver(data: bytes) -> None:
        """Send one or more encoded server lines to the client."""


@dataclass(frozen=True, slots=True)
class Share:
    """What one node holds of one user.

    C{sessions} counts the node's live sessions of the user; 0 means a
    *ghost*: the last session ended at C{ended_at} and the offline grace is
    running.  C{listed} is, in mutual mode, the ids that the node's sessions
    (or its ghost) list; it is empty in open mode.
    """

    sessions: int
    listed: frozenset[int] = frozenset()
    ended_at: float = 0.0


@quick_init  # one is built per change
@dataclass(frozen=True, slots=True)
class UserState:
    """A user as every watcher in the cluster sees it.

    C{present} while some node holds a session or a ghost of the user.
    C{status} and C{text} are the last written (shared by every session);
    C{listed} is the union of the nodes' lists (mutual mode); C{sessions}
    counts live sessions on every node; C{last_seen} is when the user stopped
    being visibly online (meaningful when not L{visible}).  C{version} grows
    with every change of what watchers see; a bus never reports an older
    version of a user after a newer one.  C{line} caches L{online_line}
    (not part of the value).
    """

    uid: int
    present: bool
    status: str
    text: str
    listed: frozenset[int]
    sessions: int
    last_seen: float
    version: int
    line: bytes | None = field(default=None, compare=False, repr=False)

    @property
    def visible(self) -> bool:
        return self.present and self.status != INVISIBLE

    def online_line(self) -> bytes:
        """The encoded online event of this state.

        Encoded once, shared by the fan-out and every later snapshot (the
        state object lives as long as the user's state is current).
        """
        line = self.line
        if line is None:
            line = wire.online(self.uid, self.status, self.text)
            object.__setattr__(self, "line", line)  # a cache, not the value
        return line

    def seen_by(self, watcher: int, mutual: bool) -> bool:
        """Whether a session of C{watcher} that watches this user sees it online."""
        return self.visible and (not mutual or watcher in self.listed)


class IStateListener(Interface):
    """What a bus tells a registry (L{presence.core.registry.Registry})."""

    def user_changed(state: UserState) -> None:
        """C{state} is now the user's state; tell the local watchers the change.

        Called for users this node follows, in version order per user.  A
        state for a user nobody here watches any more is ignored.
        """

    def resync(states: Sequence[UserState]) -> None:
        """These are the states of every followed user that is present.

        Followed users missing from C{states} are absent.  Used after the bus
        lost its backing store (a Redis outage): watchers are told exactly
        what changed meanwhile.
        """


class IBus(Interface):
    """How a registry hears of and tells other nodes (see the module doc)."""

    node = Attribute("This node's id (str).")

    def attach(listener: IStateListener) -> None:
        """Report followed users' states to C{listener} from now on."""

    def publish(
        uid: int, share: Share | None, change: StatusChange | None, at: float
    ) -> None:
        """This node's share of C{uid} is now C{share} (None: it holds none).

        C{change} is a status write by one of the node's sessions (a login's
        C{status}/C{text}, or a C{status} message); a user who was absent
        starts with C{change}'s status or "online".  C{at} is the node's
        clock: when a removal makes the user absent, C{at} is its
        C{last_seen} (for a ghost whose grace ran out, when it ended).
        """

    def follow(uids: Iterable[int]) -> None:
        """Start reporting these users (not followed before) to the listener.

        The listener gets, through C{user_changed}, the state of each that
        is present, then every later change.
        """

    def unfollow(uids: Iterable[int]) -> None:
        """Stop reporting these users (nobody here watches them any more)."""

    def known(uid: int) -> UserState | None:
        """The user's state as far as this node knows now, None if absent.

        Exact for the in-memory bus; a remote bus answers from what it has
        heard (followed users).
        """
