"""A node's changes of one reactor turn, as few Redis commands as they allow.

The registry publishes one change at a time; every change made in one turn
of the reactor (a burst of logins, several status lines read at once) goes
to Redis at the end of the turn, when the bus's L{Turn} is sent: one SADD of
the users the node starts holding, then the changes in order, many per
L{scripts.APPLY_MANY} call (one L{scripts.APPLY} each on Redis Cluster, or
for a lone change), then one SREM of the users it stopped holding.  Sending
at the end of the turn delays nothing: Twisted writes to the socket only
when the turn is over anyway.

The users set stays a superset of what the node holds (PROTOCOL.md
"Cluster": a survivor cleans up after a dead node from it): the SADD goes
before the changes and the SREM after them, and a user held again by the end
of the turn is not removed from it.
"""

from __future__ import annotations

from collections.abc import Container

from presence.cluster import scripts

# Changes per APPLY_MANY call: long enough to spread the cost of a call,
# short enough not to hold Redis for more than a few milliseconds.
APPLY_BATCH = 100

# One change, as the scripts take it: uid, mode, share, kept, status ("" =
# none), has_text ("1"/"0"), text, at, status_at (see scripts.APPLY).
Change = tuple[int, str, str, str, str, str, str, str, str]
Command = tuple[str | int, ...]


class Turn:
    """What a node has to tell Redis at the end of this reactor turn."""

    __slots__ = ("added", "changes", "removed")

    def __init__(self) -> None:
        self.added: list[int] = []
        self.changes: list[Change] = []
        self.removed: list[tuple[int, float]] = []  # (uid, when)

    def commands(
        self, incarnation: str, held: Container[int], many: bool
    ) -> tuple[list[Command], list[tuple[int, float]]]:
        """The commands to send, in order, and the removals (uid, when) for
        which an SREM follows them: those not held again by now."""
        out: list[Command] = []
        if self.added:
            out.append(("SADD", scripts.users_key(incarnation), *self.added))
        out.extend(applies(incarnation, self.changes, many))
        return out, [(uid, at) for uid, at in self.removed if uid not in held]


def apply_one(incarnation: str, change: Change) -> Command:
    """The EVALSHA of APPLY for one change."""
    uid, *args = change
    return ("EVALSHA", scripts.APPLY.sha, 1, scripts.user_key(uid), uid,
            incarnation, *args, scripts.TOMBSTONE_TTL)


def applies(incarnation: str, changes: list[Change], many: bool) -> list[Command]:
    """The script calls that make C{changes}, in order: APPLY_BATCH per
    APPLY_MANY when C{many}, else (and for a lone change) one APPLY each."""
    if not many or len(changes) == 1:
        return [apply_one(incarnation, c) for c in changes]
    out: list[Command] = []
    for i in range(0, len(changes), APPLY_BATCH):
        chunk = changes[i:i + APPLY_BATCH]
        keys = [scripts.user_key(c[0]) for c in chunk]
        args: list[str | int] = [incarnation, scripts.TOMBSTONE_TTL]
        for change in chunk:
            args.extend(change)
        out.append(("EVALSHA", scripts.APPLY_MANY.sha, len(keys), *keys, *args))
    return out
