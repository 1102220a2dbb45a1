"""How shares and states are written in Redis (see L{presence.cluster.scripts})."""

from __future__ import annotations

from presence.core.interfaces import Share, UserState

_EMPTY: frozenset[int] = frozenset()


# The last time formatted: a change formats its time up to three times (the
# status write's, the change's, and the write's in the share), and formatting
# a float is most of what encoding a change for the scripts costs.
_last_at = 0.0
_last_text = "0.000000"


def format_at(at: float) -> str:
    """A time as the scripts store it (Unix seconds, microseconds)."""
    global _last_at, _last_text
    if at == _last_at:
        return _last_text
    if not at:
        return "0.000000"  # (a share's ended_at while it has sessions)
    text = f"{at:.6f}"
    _last_at, _last_text = at, text
    return text


def encode_listed(listed: frozenset[int]) -> str:
    """Ids as the scripts compare them: decimal strings, sorted as strings."""
    return ",".join(sorted(map(str, listed)))


def decode_listed(text: bytes | str) -> frozenset[int]:
    if not text:
        return _EMPTY
    if isinstance(text, str):
        text = text.encode()
    return frozenset(map(int, text.split(b",")))


def encode_share(
    share: Share,
    since: float = 0.0,
    write: tuple[str, bool, str, float] | None = None,
) -> str:
    """``SESSIONS|ENDED_AT|SINCE|LISTED|SA|STATUS|HAS_TEXT|TEXT``: the share,
    since when this node holds one, and the status its sessions last wrote
    (when, status or "", whether a text, the text)."""
    status, has_text, text, sa = write or ("", False, "", 0.0)
    return (
        f"{share.sessions}|{format_at(share.ended_at)}|{format_at(since)}|"
        f"{encode_listed(share.listed)}|{format_at(sa)}|{status}|"
        f"{'1' if has_text else '0'}|{text}"
    )


def share_kept(encoded: str) -> int:
    """The length of an encoded share's first four fields (the share proper,
    before the status write): what mode "status" of the scripts checks."""
    end = -1
    for _ in range(4):
        end = encoded.index("|", end + 1)
    return end + 1


def absent(uid: int, version: int, last_seen: float = 0.0) -> UserState:
    return UserState(uid, False, "offline", "", _EMPTY, 0, last_seen, version)


def decode_event(payload: bytes) -> UserState:
    """A state published on a user's channel: ``ID|`` and the state as the
    user's hash stores it."""
    uid, state = payload.split(b"|", 1)
    return decode_state(int(uid), state)


def decode_state(uid: int, state: bytes) -> UserState:
    """A user's state as its hash stores it (the event without ``ID|``):
    present, or a tombstone (absent, with its version)."""
    version, present, status, sessions, last_seen, listed, text = state.split(
        b"|", 6
    )
    return UserState(
        uid,
        present == b"1",
        status.decode(),
        text.decode(),
        decode_listed(listed),
        int(sessions),
        float(last_seen),
        int(version),
    )
