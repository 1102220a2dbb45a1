"""presence-client: log in, print friends' presence, take commands on stdin.

    presence-client --server tcp:127.0.0.1:8081 --user 1 --friends 2,3,4

Exit status: 0 after a normal end (--for elapsed, ``quit``, end of stdin,
SIGINT, SIGTERM), 8 when the server cannot be reached, the server's error code
when it ended the session with an error, 2 for a bad command line.

End of stdin: with --for the client keeps running until the time is up (so
it can run under a supervisor or with stdin redirected from /dev/null);
without --for, end of stdin means quit.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import react
from twisted.python.failure import Failure

from presence import wire
from presence.cli.format import Printer, escape, format_view
from presence.cli.io import Terminal, endpoint_for
from presence.client import PresenceError, Session, connect

PROG = "presence-client"

HELP = (
    "commands: status STATUS [TEXT] | add IDS | remove IDS | friends [IDS] | "
    "who | quit   (IDS: 2,3 or 2 3)"
)


def _user_id(text: str) -> int:
    try:
        uid = int(text)
    except ValueError:
        uid = 0
    if not wire.is_user_id(uid):
        raise argparse.ArgumentTypeError(
            f"not a user id (1 to {wire.MAX_USER_ID}): {text!r}")
    return uid


def parse_ids(text: str) -> list[int]:
    """"2,3,4", "2 3 4" or "" as a list of ints (the server checks them)."""
    return [int(part) for part in text.replace(",", " ").split()]


def _ids_arg(text: str) -> list[int]:
    try:
        ids = parse_ids(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of ids: {text!r}") from None
    bad = [i for i in ids if not wire.is_user_id(i)]
    if bad:
        raise argparse.ArgumentTypeError(
            f"not a user id (1 to {wire.MAX_USER_ID}): {bad[0]}")
    return ids


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, checked as far as it can be without a server."""
    # Listing yourself is left to the server (error 6, exit status 6), as
    # with the original demo's client.
    opts: argparse.Namespace = build_parser().parse_args(argv)
    return opts


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"not a positive number: {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Log in to a presence server and print friends' presence.",
        epilog=HELP + ".  Exit status: 0 after a normal end, 8 when the server "
        "cannot be reached, the server's error code when it ends the session.",
    )
    parser.add_argument(
        "--server",
        default="tcp:127.0.0.1:8081",
        help="a Twisted client endpoint (tcp:HOST:PORT, ssl:HOST:PORT, "
        "unix:PATH) or a port number on localhost (default %(default)s)",
    )
    parser.add_argument("--user", type=_user_id, required=True,
                        help="your user id (1 to 2**63-1)")
    parser.add_argument("--friends", type=_ids_arg, default=[],
                        help="ids to watch, e.g. 2,3,4")
    parser.add_argument("--status", choices=sorted(wire.STATUSES))
    parser.add_argument("--text", help="a text to go with the status")
    token = parser.add_mutually_exclusive_group()
    token.add_argument("--token", help="a JWT, for servers with a secret")
    token.add_argument("--token-file", type=Path, help="a file holding the token")
    parser.add_argument("--for", dest="duration", type=_seconds, metavar="SECONDS",
                        help="quit after this many seconds")
    parser.add_argument("--json", action="store_true",
                        help="print the server's lines, as JSON with control "
                        "characters escaped (the summary goes to stderr)")
    parser.add_argument("--reconnect", action="store_true",
                        help="reconnect with backoff when the connection drops")
    parser.add_argument("--ca-file", type=Path, metavar="PEM",
                        help="verify an ssl: server with this CA certificate")
    return parser


class ClientApp:
    """The CLI's behaviour, apart from the process: testable on a fake clock.

    C{out} prints a line for the user (stdout), C{err} a line to stderr.
    """

    def __init__(
        self,
        clock: IReactorTime,
        endpoint: Any,
        address: str,
        opts: argparse.Namespace,
        token: str | None,
        out: Callable[[str], None],
        err: Callable[[str], None],
    ) -> None:
        self.clock = clock
        self.endpoint = endpoint
        self.address = address
        self.opts = opts
        self.token = token
        # Anything may hold the server's text (a friend's status text, an
        # error message): it reaches the terminal escaped.  With --json the
        # printer makes each line terminal-safe JSON itself.
        self.err = err = _escaping(err)
        if not opts.json:
            out = _escaping(out)
        # With --json stdout holds only server lines: remarks go to stderr.
        self.note = err if opts.json else out
        self.printer = Printer(clock, out, address)
        self.session: Session | None = None
        self._connecting: Deferred[Session] | None = None
        self._quitting = False
        self._early: list[str] = []

    async def run(self) -> int:
        timer = None
        if self.opts.duration is not None:
            timer = self.clock.callLater(self.opts.duration, self.quit)
        try:
            return await self._run()
        finally:
            if timer is not None and timer.active():
                timer.cancel()

    async def _run(self) -> int:
        self._connecting = connect(
            self.clock,
            self.endpoint,
            self.opts.user,
            self.opts.friends,
            self.token,
            self.opts.status,
            self.opts.text,
            reconnect=self.opts.reconnect,
            observer=None if self.opts.json else self.printer.event,
            line_observer=self.printer.raw_line if self.opts.json else None,
            address=self.address,
        )
        try:
            self.session = await self._connecting
        except CancelledError:
            return 0
        except PresenceError as e:
            self.err(f"{PROG}: {e}")
            return int(e.code)
        if self.opts.json:
            # Counted from events even when printing lines.
            self.session.add_observer(self.printer.count)
        early, self._early = self._early, []
        for line in early:
            self.command(line)
        if self._quitting:
            self.session.bye()
        code = 0
        try:
            await self.session.when_closed()
        except PresenceError as e:
            self.err(f"{PROG}: {e}")
            code = int(e.code)
        (self.err if self.opts.json else self.note)(
            self.printer.summary(self.opts.user)
        )
        return code

    def quit(self) -> None:
        self._quitting = True
        if self.session is not None:
            self.session.bye()
        elif self._connecting is not None:
            self._connecting.cancel()

    def stdin_closed(self) -> None:
        # Without --for, the end of stdin ends the session, but only once it
        # has begun: `presence-client ... </dev/null` still logs in (and
        # exits 8 when it cannot).
        if self.opts.duration is not None:
            return
        if self.session is None and self.opts.reconnect:
            # A reconnecting client might wait for the server indefinitely.
            self.quit()
            return
        self._quitting = True
        if self.session is not None:
            self.session.bye()

    def command(self, line: str) -> None:
        words = line.split(None, 1)
        if not words:
            return
        name, rest = words[0].lower(), (words[1] if len(words) > 1 else "")
        session = self.session
        if session is None and not (name == "quit" and self.opts.reconnect):
            # Typed (or piped) before the login finished: run it after, in
            # order.  A reconnecting client may never log in: quit at once.
            self._early.append(line)
        elif name == "quit":
            self.quit()
        elif name == "help":
            self.note(HELP)
        elif session is None:
            pass
        elif name == "who":
            for text in format_view(session):
                self.note(text)
        elif name == "status":
            status, _, text = rest.strip().partition(" ")
            self._report(session.set_status(status, text.strip() or None),
                         lambda: "status is now " + _status(session))
        elif name in ("add", "remove", "friends"):
            try:
                ids = parse_ids(rest)
            except ValueError:
                self.note(f"not a list of ids: {rest!r}")
                return
            change = {"add": session.add_friends, "remove": session.remove_friends,
                      "friends": session.set_friends}[name]
            self._report(change(ids), lambda: "watching " + _watching(session))
        else:
            self.note(f"unknown command {name!r}; {HELP}")

    def _report(self, done: Deferred[None], what: Callable[[], str]) -> None:
        # Said once the server confirmed, from the session's confirmed state.
        def ok(_: None) -> None:
            self.note(self.printer.stamp(what()))

        def refused(failure: Failure) -> None:
            failure.trap(PresenceError)
            self.note(self.printer.stamp(str(failure.value)))

        done.addCallbacks(ok, refused)


def _escaping(write: Callable[[str], None]) -> Callable[[str], None]:
    def escaped(text: str) -> None:
        write(escape(text))

    return escaped


def _watching(session: Session) -> str:
    return ", ".join(map(str, sorted(session.friends))) or "nobody"


def _status(session: Session) -> str:
    status = session.status or "online"
    return f"{status}: {session.text}" if session.text else status


def read_token(opts: argparse.Namespace) -> str | None:
    if opts.token_file is not None:
        return str(opts.token_file.read_text()).strip()
    token: str | None = opts.token
    return token


async def _main(reactor: Any, opts: argparse.Namespace) -> None:
    try:
        endpoint, address = endpoint_for(reactor, opts.server, opts.ca_file)
        token = read_token(opts)
    except (ValueError, OSError) as e:
        sys.stderr.write(f"{PROG}: {e}\n")
        raise SystemExit(2) from None
    terminal = Terminal(reactor)
    app = ClientApp(reactor, endpoint, address, opts, token, terminal.write,
                    terminal.error)
    terminal.start(app.command, app.stdin_closed)
    finished: Deferred[None] = Deferred()

    def on_shutdown() -> Deferred[None] | None:
        # SIGINT and SIGTERM stop the reactor: leave politely first.
        if finished.called:
            return None
        app.quit()
        return finished

    reactor.addSystemEventTrigger("before", "shutdown", on_shutdown)
    try:
        code = await app.run()
        await terminal.close()
    finally:
        finished.callback(None)
    raise SystemExit(code)


def main(argv: list[str] | None = None) -> NoReturn:
    opts = parse_args(argv)
    react(_main, (opts,))


if __name__ == "__main__":
    main()
