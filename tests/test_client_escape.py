"""presence-client against a real server: a friend's status text full of
terminal control sequences reaches the terminal escaped; bad ids on the
command line fail before any connection."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys

import orjson
from conftest import ServerProcess
from sockets import LineSocket

# Clear the screen, set the window title, ring, return to the line's start
# and print a fake event, backspace, reverse the text, a C1 CSI.
ATTACK = "\x1b[2J\x1b]0;pwned\x07\r12:00:00  user 3 is online\b\u202egnp.exe\x9b31m"
UNSAFE = re.compile(
    "[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029"
    "\u202a-\u202e\u2066-\u2069]")


def presence_client() -> str:
    found = shutil.which("presence-client", path=os.path.dirname(sys.executable))
    return found or "presence-client"


def run_client(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([presence_client(), *args], stdin=subprocess.DEVNULL,
                          capture_output=True, timeout=30)


def test_status_text_escaped(server: ServerProcess) -> None:
    """The friend's status text is printed with every control character
    escaped; --json prints the same JSON value, escaped as JSON."""
    with LineSocket(server.host, server.port) as friend:
        friend.login(2, [], status="away", text=ATTACK)
        plain = run_client("--server", server.endpoint(), "--user", "1",
                           "--friends", "2", "--for", "1")
        as_json = run_client("--server", server.endpoint(), "--user", "1",
                             "--friends", "2", "--for", "1", "--json")
    assert plain.returncode == 0, plain.stderr
    out = plain.stdout.decode()
    assert UNSAFE.search(out) is None, repr(out)
    assert "user 2 is online (away: \\x1b[2J\\x1b]0;pwned\\x07\\x0d12:00:00  " \
        "user 3 is online\\x08\\u202egnp.exe\\x9b31m)" in out, out
    assert as_json.returncode == 0, as_json.stderr
    out = as_json.stdout.decode()
    assert UNSAFE.search(out) is None, repr(out)
    events = [orjson.loads(line) for line in out.splitlines()]
    assert {"type": "presence", "user_id": 2, "online": True, "status": "away",
            "text": ATTACK} in events


def test_bad_ids_refused_locally() -> None:
    """--user 0 and other bad ids exit 2 with a message naming the option,
    without connecting (the port is closed: connecting would exit 8)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"tcp:127.0.0.1:{s.getsockname()[1]}"
    for args, option in ((["--user", "0"], "--user"),
                         (["--user", "-5"], "--user"),
                         (["--user", "1", "--friends", "2,0"], "--friends")):
        done = run_client("--server", closed, *args)
        assert done.returncode == 2, (args, done.stderr)
        assert option in done.stderr.decode(), done.stderr
        assert b"Server Connection Error" not in done.stderr
