"""Client messages as typed values: one call from bytes to a checked message.

L{parse} decodes a line and validates every field of the message it holds,
so the session dispatches on the message's class and never goes back to
the codec field by field.  A login keeps the order in which PROTOCOL.md
checks it (JSON 3, C{user_id} 5, token 10, C{friends} 5/6/11, C{status}/
C{text} 13): the token can only be checked by the server, so the first
error found after C{user_id} is carried in L{Login.problem} for the session
to raise once the token has passed.
"""

from __future__ import annotations

from dataclasses import dataclass

from presence.wire import (
    Json,
    StatusChange,
    decode_line,
    id_set,
    message_type,
    status_fields,
    user_id,
)
from presence.wire.errors import ErrorCode, ProtocolError
from presence.wire.frozen import maker, quick_init


@dataclass(frozen=True, slots=True)
class Login:
    """A login, or a login re-sent on a logged-in connection."""

    user_id: int
    friends: frozenset[int]
    token: object
    change: StatusChange
    problem: ProtocolError | None = None


@dataclass(frozen=True, slots=True)
class Ping:
    """C{{"type": "ping"}}: answered by pong."""


@dataclass(frozen=True, slots=True)
class Pong:
    """C{{"type": "pong"}}: the answer to a server ping."""


@dataclass(frozen=True, slots=True)
class Bye:
    """C{{"type": "bye"}}: the client is leaving."""


@quick_init  # one is built per status message
@dataclass(frozen=True, slots=True)
class Status:
    """C{{"type": "status"}}: the user's status and text."""

    change: StatusChange


@dataclass(frozen=True, slots=True)
class Friends:
    """C{{"type": "friends"}}: a new watch list, or ids to add and remove."""

    friends: frozenset[int] | None
    add: frozenset[int] = frozenset()
    remove: frozenset[int] = frozenset()

    def apply(self, current: frozenset[int], max_friends: int) -> frozenset[int]:
        """The watch list this message asks for, given the current one."""
        if self.friends is not None:
            return self.friends
        result = (current - self.remove) | self.add
        if len(result) > max_friends:
            raise ProtocolError(
                ErrorCode.TOO_MANY_FRIENDS, f"{len(result)} > {max_friends}"
            )
        return result


Message = Login | Ping | Pong | Bye | Status | Friends

# Status(...), built the faster way: one per status message.
_new_status = maker(Status)

PING, PONG, BYE = Ping(), Pong(), Bye()


def parse(line: bytes, max_friends: int, me: int | None) -> Message:
    """Decode and validate one line (without its terminator).

    C{me} is the connection's user id, None before its login.  Raises
    L{ProtocolError} with PROTOCOL.md's code for the first problem, except a
    login's problems after its C{user_id} (see L{Login.problem}).
    """
    obj = decode_line(line)
    kind = message_type(obj)
    if me is None and kind != "login":
        raise ProtocolError(ErrorCode.NOT_LOGGED_IN, "log in first")
    if kind == "login":
        return _login(obj, max_friends)
    if kind == "ping":
        return PING
    if kind == "pong":
        return PONG
    if kind == "bye":
        return BYE
    if kind == "status":
        return _new_status(status_fields(obj, required=True))
    if kind == "friends":
        assert me is not None
        return friends_message(obj, me, max_friends)
    raise ProtocolError(ErrorCode.INVALID_MESSAGE, f"unknown type {kind[:40]!r}")


def _login(obj: Json, max_friends: int) -> Login:
    uid = user_id(obj.get("user_id"))
    token = obj.get("token")
    try:
        friends = id_set(obj.get("friends", []), "friends", uid, max_friends)
        change = status_fields(obj, required=False)
    except ProtocolError as e:
        return Login(uid, frozenset(), token, StatusChange(None, None), e)
    return Login(uid, friends, token, change)


def friends_message(obj: Json, me: int, max_friends: int) -> Friends:
    """Validate a C{friends} message's fields (C{me}: the sender's id)."""
    has_list = "friends" in obj
    has_delta = "add" in obj or "remove" in obj
    if has_list == has_delta:
        raise ProtocolError(
            ErrorCode.INVALID_MESSAGE, "give either friends, or add and/or remove"
        )
    if has_list:
        return Friends(id_set(obj["friends"], "friends", me, max_friends))
    return Friends(
        None,
        id_set(obj.get("add", []), "add", me, max_friends),
        id_set(obj.get("remove", []), "remove", me, max_friends),
    )


def friends_change(
    obj: Json, me: int, current: frozenset[int], max_friends: int
) -> frozenset[int]:
    """The watch list a C{friends} message asks for, validated."""
    return friends_message(obj, me, max_friends).apply(current, max_friends)
