"""A node's changes of one turn as Redis commands (no Redis needed)."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from presence.cluster import scripts
from presence.cluster.batch import APPLY_BATCH, Change, Turn, applies, apply_one

INC = "node/abcd"


def change(uid: int, mode: str = "set") -> Change:
    return (uid, mode, "1|0|0||0||0|" if mode == "set" else "", "", "away", "1",
            "x", "5.000000", "5.000000")


class TurnCommands(SynchronousTestCase):
    def test_lone_change_is_one_apply(self) -> None:
        """A lone change is one APPLY, with the user's hash as its key and
        the change's arguments in APPLY's order, then the tombstone TTL."""
        turn = Turn()
        turn.changes.append(change(7))
        commands, removed = turn.commands(INC, set(), True)
        self.assertEqual(commands, [apply_one(INC, change(7))])
        self.assertEqual(
            commands[0],
            ("EVALSHA", scripts.APPLY.sha, 1, "{u:7}:h", 7, INC, "set",
             "1|0|0||0||0|", "", "away", "1", "x", "5.000000", "5.000000",
             scripts.TOMBSTONE_TTL),
        )
        self.assertEqual(removed, [])

    def test_order(self) -> None:
        """Users added: one SADD first; then the changes in order, many per
        APPLY_MANY call (keys in order, then the incarnation, the TTL and
        each change's nine arguments); the users removed come back for an
        SREM after them."""
        turn = Turn()
        turn.added.append(1)
        turn.changes += [change(1), change(2), change(1, "del")]
        turn.removed.append((1, 5.0))
        commands, removed = turn.commands(INC, set(), True)
        self.assertEqual(commands[0], ("SADD", scripts.users_key(INC), 1))
        [many] = commands[1:]
        self.assertEqual(many[:6], ("EVALSHA", scripts.APPLY_MANY.sha, 3,
                                    "{u:1}:h", "{u:2}:h", "{u:1}:h"))
        self.assertEqual(many[6:8], (INC, scripts.TOMBSTONE_TTL))
        self.assertEqual(many[8:], change(1) + change(2) + change(1, "del"))
        self.assertEqual(removed, [(1, 5.0)])

    def test_held_again_not_removed(self) -> None:
        """A user removed and held again within the turn stays in the users
        set (no SREM): a survivor must still find it there."""
        turn = Turn()
        turn.changes += [change(3, "del"), change(3)]
        turn.removed.append((3, 5.0))
        turn.added.append(3)
        _, removed = turn.commands(INC, {3}, True)
        self.assertEqual(removed, [])

    def test_chunks(self) -> None:
        """More changes than APPLY_BATCH go out in several APPLY_MANY calls,
        in order, none longer than APPLY_BATCH."""
        changes = [change(uid) for uid in range(1, 2 * APPLY_BATCH + 2)]
        calls = applies(INC, changes, True)
        self.assertEqual([c[2] for c in calls], [APPLY_BATCH, APPLY_BATCH, 1])
        self.assertEqual({c[1] for c in calls}, {scripts.APPLY_MANY.sha})
        self.assertEqual([c[3] for c in calls],
                         ["{u:1}:h", f"{{u:{APPLY_BATCH + 1}}}:h",
                          f"{{u:{2 * APPLY_BATCH + 1}}}:h"])

    def test_one_by_one_without_many(self) -> None:
        """Where APPLY_MANY is not used (Redis Cluster), each change is its
        own APPLY, in order."""
        changes = [change(1), change(2)]
        self.assertEqual(applies(INC, changes, False),
                         [apply_one(INC, c) for c in changes])
