"""presence-client never lets the server's text drive the terminal.

Whatever came from the server (a friend's status text, an error message) is
printed with every control character escaped: C0, DEL, C1 and the Unicode
bidirectional controls.  ``--json`` prints the server's lines as JSON that
parses to the same value, with those characters as JSON escapes.
"""

from __future__ import annotations

import argparse
import json
from contextlib import redirect_stderr
from io import StringIO

from twisted.trial.unittest import SynchronousTestCase

from presence.cli.client import parse_args
from presence.cli.format import UNSAFE, escape, json_safe
from presence.test.test_client_cli import AppTestCase
from presence.wire import MAX_USER_ID

# Every character that must never reach the terminal raw.
DANGEROUS = (
    [chr(c) for c in range(0x20)] + ["\x7f"] + [chr(c) for c in range(0x80, 0xA0)]
    + [chr(c) for c in range(0x202A, 0x202F)] + [chr(c) for c in range(0x2066, 0x206A)]
    + ["\u200e", "\u200f", "\u061c", "\u2028", "\u2029"]
)
# A terminal attack: clear the screen, set the title, ring, overwrite the line
# with a fake event, and reverse what follows.
ATTACK = "\x1b[2J\x1b]0;pwned\x07\r12:00:00  user 3 is online\b\b\u202egnp.exe\x9b31m"


def raw(text: str) -> list[str]:
    return [c for c in text if c in DANGEROUS]


class EscapeTests(SynchronousTestCase):
    def test_every_dangerous_character(self) -> None:
        """Each control character becomes visible text; nothing dangerous is
        left."""
        for c in DANGEROUS:
            escaped = escape(f"a{c}b")
            self.assertEqual(raw(escaped), [], repr(c))
            self.assertTrue(escaped.startswith("a\\") and escaped.endswith("b"),
                            escaped)
        self.assertEqual(escape("\x1b[2J"), "\\x1b[2J")
        self.assertEqual(escape("\u202e"), "\\u202e")
        self.assertEqual(len(UNSAFE.findall("".join(DANGEROUS))), len(DANGEROUS))

    def test_ordinary_text_unchanged(self) -> None:
        """Letters, accents, CJK, emoji with joiners and backslashes stay as
        they are."""
        for text in ("lunch at 12:30", "café ☕", "会议中", "👩\u200d💻 coding",
                     "C:\\temp", "tab-free"):
            self.assertEqual(escape(text), text)

    def test_json_safe(self) -> None:
        """A JSON line with control characters in its strings still parses to
        the same value, with none of them left raw."""
        value = {"type": "presence", "user_id": 2, "online": True,
                 "status": "away", "text": "".join(DANGEROUS) + ATTACK}
        # JSON allows DEL, C1 and bidi controls raw inside strings.
        line = json.dumps(value, ensure_ascii=False)
        self.assertNotEqual(raw(line), [])
        safe = json_safe(line)
        self.assertEqual(raw(safe), [])
        self.assertEqual(json.loads(safe), value)

    def test_json_safe_whitespace_outside_strings(self) -> None:
        """Tabs and carriage returns between JSON tokens become spaces."""
        line = '{"type":\t"pong"}\r'
        safe = json_safe(line)
        self.assertEqual(raw(safe), [])
        self.assertEqual(json.loads(safe), {"type": "pong"})

    def test_json_safe_keeps_clean_lines_exact(self) -> None:
        """A line without control characters is printed byte for byte."""
        line = '{"type":"presence","text":"caf\\u00e9 \\"x\\" \\\\ ok"}'
        self.assertIs(json_safe(line), line)

    def test_json_safe_not_json(self) -> None:
        """A line that is not JSON at all is still escaped."""
        self.assertEqual(raw(json_safe("garbage\x1b[2J \"open\x07")), [])


class AppEscapeTests(AppTestCase):
    def test_status_text_escaped(self) -> None:
        """A friend's status text is printed escaped, on one line."""
        app, running, peer = self.logged_in()
        peer.say(type="presence", user_id=2, online=True, status="away", text=ATTACK)
        peer.say(type="presence", user_id=2, online=True, status="busy",
                 text="\u202eevil")
        app.command("who")
        app.command("quit")
        peer.close()
        self.assertEqual(self.successResultOf(running), 0)
        for line in self.out + self.err:
            self.assertEqual(raw(line), [], line)
        self.assertIn(self.stamped("user 2 is online (away: ")
                      + escape(ATTACK) + ")", self.out)
        self.assertIn("user 2: online (busy: \\u202eevil)", self.out)

    def test_error_message_escaped(self) -> None:
        """A server's error message is printed escaped on stderr."""
        _, running = self.app()
        peer = self.endpoint.accept()
        peer.say(type="error", error=6, msg="no\x1b[2J\rfake")
        peer.close()
        self.assertEqual(self.successResultOf(running), 6)
        self.assertEqual(self.err, ["presence-client: error 6: no\\x1b[2J\\x0dfake"])

    def test_json_lines_escaped(self) -> None:
        """--json prints the same JSON values, with control characters
        escaped."""
        app, running, peer = self.logged_in("--json")
        value = {"type": "presence", "user_id": 2, "online": True,
                 "status": "away", "text": ATTACK}
        peer.say_raw(json.dumps(value, ensure_ascii=False).encode() + b"\n")
        app.command("quit")
        peer.close()
        self.assertEqual(self.successResultOf(running), 0)
        for line in self.out + self.err:
            self.assertEqual(raw(line), [], line)
        self.assertEqual(json.loads(self.out[-1]), value)


class LocalArgumentTests(SynchronousTestCase):
    def refused(self, *argv: str) -> str:
        err = StringIO()
        with self.assertRaises(SystemExit) as caught, redirect_stderr(err):
            parse_args(list(argv))
        self.assertEqual(caught.exception.code, 2)
        return err.getvalue()

    def test_bad_user_ids(self) -> None:
        """--user 0, negatives, 2**63 and non-numbers fail before connecting
        (exit 2, naming the option)."""
        for bad in ("0", "-1", str(MAX_USER_ID + 1), "1.0", "x", ""):
            self.assertIn("--user", self.refused("--user", bad))

    def test_bad_friend_ids(self) -> None:
        """--friends holding 0, a negative or a too large id fails locally."""
        for bad in ("2,0", "-3", str(MAX_USER_ID + 1)):
            self.assertIn("--friends", self.refused("--user", "1", "--friends", bad))

    def test_friend_with_yourself_left_to_the_server(self) -> None:
        """Listing yourself is not refused locally: the server answers it with
        error 6, as it did the original demo's client."""
        self.assertEqual(parse_args(["--user", "1", "--friends", "2,1"]).friends,
                         [2, 1])

    def test_bad_durations(self) -> None:
        """--for takes a positive, finite number of seconds."""
        for bad in ("0", "-1", "nan", "inf", "x"):
            self.assertIn("--for", self.refused("--user", "1", "--for", bad))

    def test_good_ids(self) -> None:
        """The largest id is accepted."""
        opts: argparse.Namespace = parse_args(
            ["--user", str(MAX_USER_ID), "--friends", "1"])
        self.assertEqual(opts.user, MAX_USER_ID)
