"""How presence-client words events: one readable line each."""

from __future__ import annotations

import re
import time
from collections.abc import Callable

import orjson
from twisted.internet.interfaces import IReactorTime

from presence.client import (
    Connected,
    Disconnected,
    ErrorReceived,
    Event,
    Friend,
    PresenceChanged,
    Retrying,
    Session,
)

# What must never reach a terminal raw from the server: C0 controls (ESC
# starts colour, cursor and title sequences; CR and BS overwrite a line; BEL
# rings), DEL, C1 controls (U+009B is a one-character CSI), and the Unicode
# bidirectional controls that reorder what follows them (U+061C, U+200E/F,
# U+202A-E, U+2066-9), plus the line and paragraph separators.
UNSAFE = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029"
    "\u202a-\u202e\u2066-\u2069]"
)


def _escape_char(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape(text: str) -> str:
    """C{text} with every unsafe character as a visible escape (ESC: \\x1b,
    U+202E: \\u202e); everything else, backslashes included, as it is."""
    return UNSAFE.sub(_escape_char, text)


def json_safe(line: str) -> str:
    """A server line for ``--json``: the same JSON value, terminal-safe.

    Inside strings an unsafe character becomes its JSON escape (\\u001b), so
    the line parses to exactly the same value; between tokens, tabs and
    carriage returns (the only ones JSON allows there) become spaces.  A line
    with nothing unsafe is returned as it is.  A line that is not JSON is
    escaped all the same.
    """
    if UNSAFE.search(line) is None:
        return line
    out = []
    in_string = backslash = False
    for c in line:
        if in_string:
            if backslash:
                backslash = False
            elif c == "\\":
                backslash = True
            elif c == '"':
                in_string = False
            if UNSAFE.match(c):
                c = f"\\u{ord(c):04x}"
        elif c == '"':
            in_string = True
        elif c in "\t\r":
            c = " "
        elif UNSAFE.match(c):
            c = escape(c)
        out.append(c)
    return "".join(out)


def hms(when: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(when))


def status_detail(friend: Friend) -> str:
    """" (away: lunch)", " (away)", " (online: lunch)", or "" for plain online."""
    if friend.text:
        return f" ({friend.status}: {friend.text})"
    if friend.status != "online":
        return f" ({friend.status})"
    return ""


def describe(event: Event, address: str) -> str | None:
    """The line for an event, without its time; None for nothing to say."""
    if isinstance(event, PresenceChanged):
        friend, before = event.friend, event.previous
        if not friend.online:
            if friend.last_seen is None:
                return f"user {friend.user_id} went offline"
            return (f"user {friend.user_id} went offline "
                    f"(last seen {hms(friend.last_seen)})")
        if before is not None and before.online:
            return f"user {friend.user_id} changed status{status_detail(friend)}"
        return f"user {friend.user_id} is online{status_detail(friend)}"
    if isinstance(event, Connected):
        verb = "reconnected" if event.reconnected else "connected"
        return f"{verb} to {address} as user {event.user_id}"
    if isinstance(event, ErrorReceived):
        return str(event.error)
    if isinstance(event, Disconnected) and event.reconnecting:
        return f"disconnected: {event.error.message if event.error else 'closed'}"
    if isinstance(event, Retrying):
        return f"reconnecting in {event.delay:.1f} s (attempt {event.attempt})"
    return None


def format_view(session: Session) -> list[str]:
    """The answer to ``who``: one line per watched friend."""
    lines = []
    for uid, friend in sorted(session.view.items()):
        if friend.online:
            lines.append(f"user {uid}: online{status_detail(friend)}")
        elif friend.last_seen is not None:
            lines.append(f"user {uid}: offline (last seen {hms(friend.last_seen)})")
        else:
            lines.append(f"user {uid}: offline")
    return lines or ["watching nobody"]


class Printer:
    """Prints events (or the server's lines) and counts notifications."""

    def __init__(self, clock: IReactorTime, out: Callable[[str], None],
                 address: str) -> None:
        self.clock = clock
        self.out = out
        self.address = address
        self.online = 0
        self.offline = 0
        self.changes = 0

    def stamp(self, text: str) -> str:
        return f"{hms(self.clock.seconds())}  {text}"

    def event(self, event: Event) -> None:
        self.count(event)
        text = describe(event, self.address)
        if text is not None:
            self.out(self.stamp(text))

    def raw_line(self, raw: bytes) -> None:
        # Keepalive traffic is not news.
        try:
            kind = orjson.loads(raw).get("type")
        except (orjson.JSONDecodeError, AttributeError):
            kind = None
        if kind not in ("ping", "pong"):
            self.out(json_safe(raw.decode("utf-8", "replace")))

    def count(self, event: Event) -> None:
        if not isinstance(event, PresenceChanged):
            return
        if not event.friend.online:
            self.offline += 1
        elif event.previous is not None and event.previous.online:
            self.changes += 1
        else:
            self.online += 1

    def summary(self, user_id: int) -> str:
        text = (f"user {user_id} quit: {self.online} online and "
                f"{self.offline} offline notifications")
        if self.changes:
            plural = "s" if self.changes != 1 else ""
            text += f" ({self.changes} status change{plural})"
        return text
