"""The wire format: decoding and validating client lines, encoding server lines.

Everything that knows what a byte on the wire means lives here, so the server,
the client library and the tests agree on one definition.  Decoding raises
L{ProtocolError} with the code PROTOCOL.md assigns; it never raises anything
else, whatever the bytes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from presence.wire.errors import ErrorCode, ProtocolError
from presence.wire.frozen import maker, quick_init

MAX_USER_ID = 2**63 - 1
STATUSES = frozenset({"online", "away", "busy", "invisible"})
MAX_TEXT = 256
PING_MSG = "are you still there?"

Json = dict[str, Any]


# -- decoding -----------------------------------------------------------------


def decode_line(line: bytes) -> Json:
    """Parse one line (without its terminator) into a JSON object.

    orjson rejects invalid UTF-8, lone surrogates, NaN/Infinity and nesting
    deeper than 1024 levels, so none of those can reach the rest of the server.
    """
    try:
        obj = orjson.loads(line)
    except (orjson.JSONDecodeError, RecursionError, ValueError, TypeError) as e:
        raise ProtocolError(ErrorCode.JSON_DECODING, str(e).split(":")[0]) from None
    if type(obj) is not dict:
        raise ProtocolError(ErrorCode.JSON_DECODING, "not a JSON object")
    return obj


def message_type(obj: Json) -> str:
    """The message's C{type}; a message without one is a login."""
    kind = obj.get("type", "login")
    if type(kind) is not str:
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, "type must be a string")
    return kind


def is_user_id(value: object) -> bool:
    # bool is a subclass of int, and 1.0 == 1: only a real int counts.
    return type(value) is int and 1 <= value <= MAX_USER_ID


def user_id(value: object) -> int:
    if value is None:
        raise ProtocolError(ErrorCode.INVALID_USER_ID, "user_id is missing")
    if not is_user_id(value):
        raise ProtocolError(
            ErrorCode.INVALID_USER_ID, f"not a user id: {_short(value)}"
        )
    assert isinstance(value, int)
    return value


def id_set(value: object, field: str, me: int, max_friends: int) -> frozenset[int]:
    """Validate a list of user ids: 5 for a bad id, then 6 for oneself, then 11."""
    if type(value) is not list:
        raise ProtocolError(ErrorCode.INVALID_USER_ID, f"{field} must be a list of ids")
    # A long list is checked in C: all ints (not bools, not floats), then
    # the range; only a bad list is walked to name its first bad item.
    if value and (
        set(map(type, value)) != {int} or min(value) < 1 or max(value) > MAX_USER_ID
    ):
        for item in value:
            if not is_user_id(item):
                raise ProtocolError(
                    ErrorCode.INVALID_USER_ID, f"{field} holds {_short(item)}"
                )
    ids = frozenset(value)
    if me in ids:
        raise ProtocolError(ErrorCode.FRIEND_WITH_YOURSELF)
    if len(ids) > max_friends:
        raise ProtocolError(
            ErrorCode.TOO_MANY_FRIENDS, f"{len(ids)} > {max_friends}"
        )
    return ids


@quick_init  # one is built per status message
@dataclass(frozen=True, slots=True)
class StatusChange:
    """A status and/or text to apply; None means "leave as it is"."""

    status: str | None
    text: str | None


# StatusChange(...), built the faster way: one per status message.
_new_change = maker(StatusChange)


def status_fields(obj: Json, *, required: bool) -> StatusChange:
    """Read C{status} and C{text} (error 13 when either is wrong).

    In a C{status} message the status is required and a missing text clears
    the text; in a login both are optional and a missing one is left alone.
    """
    status = obj.get("status")
    if status is None:
        if required:
            raise ProtocolError(ErrorCode.INVALID_MESSAGE, "status is required")
    elif type(status) is not str or status not in STATUSES:
        raise ProtocolError(
            ErrorCode.INVALID_MESSAGE,
            f"status must be one of {', '.join(sorted(STATUSES))}",
        )
    text = obj.get("text")
    if text is not None:
        if type(text) is not str:
            raise ProtocolError(ErrorCode.INVALID_MESSAGE, "text must be a string")
        if len(text) > MAX_TEXT:
            raise ProtocolError(
                ErrorCode.INVALID_MESSAGE, f"text is longer than {MAX_TEXT} characters"
            )
    elif status is not None:
        # Setting a status without a text clears the text.
        text = ""
    return _new_change(status, text)


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


# -- encoding -----------------------------------------------------------------


def encode(message: Json) -> bytes:
    """One server line: compact JSON and the C{\\n} terminator."""
    return orjson.dumps(message) + b"\n"


def welcome(uid: int, timeout: float, heartbeat: str = "app") -> bytes:
    # 15, not 15.0, as the demo wrote it; a fraction stays a fraction.
    seconds: float = int(timeout) if float(timeout).is_integer() else timeout
    if heartbeat == "app":
        # Today's welcome, byte for byte: clients that compare it still work.
        return encode({"type": "welcome", "user_id": uid, "timeout": seconds})
    return encode(
        {"type": "welcome", "user_id": uid, "timeout": seconds, "heartbeat": heartbeat}
    )


def online(uid: int, status: str, text: str) -> bytes:
    return encode(
        {"type": "presence", "user_id": uid, "online": True, "status": status,
         "text": text}
    )


def offline(uid: int, last_seen: float) -> bytes:
    return encode(
        {"type": "presence", "user_id": uid, "online": False, "status": "offline",
         "last_seen": last_seen}
    )


def error(code: ErrorCode, detail: str = "") -> bytes:
    msg = code.wording if not detail else f"{code.wording}: {detail}"
    return encode({"type": "error", "error": int(code), "msg": msg})


PING = encode({"type": "ping", "msg": PING_MSG})
PONG = encode({"type": "pong"})


def client_message(kind: str, **fields: object) -> bytes:
    """A client line, for the client library and tests."""
    body: Json = {} if kind == "login" else {"type": kind}
    body.update({k: v for k, v in fields.items() if v is not None})
    return encode(body)


def ids(values: Iterable[int]) -> list[int]:
    return sorted(set(values))
