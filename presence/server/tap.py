"""The ``twistd presence`` plugin: command-line options and the service."""

from __future__ import annotations

import math
import resource

from twisted.application.service import IService
from twisted.internet import endpoints
from twisted.logger import Logger
from twisted.python import usage

from presence.server.factory import MIB, Config, PresenceFactory
from presence.server.service import PresenceService
from presence.wire.tokens import TokenVerifier, read_secret, weakness

log = Logger()

# File descriptors kept back for what is not a client: listening sockets, the
# reactor's waker and epoll, log files, the secret file.
FD_RESERVE = 16


# Numeric options: their type, and whether 0 means something (no grace, exact
# timers) or nothing (a zero timeout or limit would refuse everyone).
NUMBERS: dict[str, tuple[type[int] | type[float], bool]] = {
    "timeout": (float, False),
    "offline-grace": (float, True),
    "timer-slack": (float, True),
    "max-line": (int, False),
    "max-friends": (int, False),
    "max-connections": (int, False),
    "max-per-ip": (int, False),
    "max-sessions": (int, False),
    "max-buffer": (int, False),
}


def number(name: str, value: object) -> int | float:
    """C{value} of option C{--name} as its number, or a UsageError saying why.

    Refused: what does not parse, NaN and infinities (``--timeout nan`` used
    to be accepted and welcomed clients with ``"timeout":null``), negatives,
    and 0 where 0 means nothing.
    """
    kind, zero_ok = NUMBERS[name]
    text = str(value).strip()
    what = "a whole number" if kind is int else "a number"
    try:
        parsed: int | float = kind(text)
    except ValueError:
        raise usage.UsageError(f"--{name} must be {what}, not {text!r}") from None
    if not math.isfinite(parsed):
        raise usage.UsageError(f"--{name} must be a finite number, not {text!r}")
    if parsed < 0 or (parsed == 0 and not zero_ok):
        least = "0 or more" if zero_ok else "more than 0"
        raise usage.UsageError(f"--{name} must be {least}, not {text!r}")
    return parsed


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = "Run a presence server: clients log in with one JSON line and are "\
        "told at once when a friend comes online, goes offline or changes status."

    optParameters = [
        ["port", "p", "tcp:8081",
         "Where to listen: a port number or a Twisted endpoint string "
         "(tcp:PORT, ssl:PORT:privateKey=KEY:certKey=CERT, unix:PATH, ...)."],
        ["timeout", "t", 15.0,
         "Seconds of silence before a client is dropped (error 1); the server "
         "pings after half of it. Also the login timeout."],
        ["offline-grace", None, 0.0,
         "Seconds a user whose last session ended stays online for others, in "
         "case it comes back."],
        ["visibility", None, "open",
         "open: a watcher sees whom it lists; mutual: only those who list it too."],
        ["max-line", None, MIB, "Longest line accepted, in bytes (error 9)."],
        ["max-friends", None, 10_000, "Most ids in a watch list (error 11)."],
        ["max-connections", None, 20_000, "Most connections at once (error 16)."],
        ["max-per-ip", None, 1_000,
         "Most connections from one source address (error 16)."],
        ["max-sessions", None, 32, "Most sessions of one user (error 16)."],
        ["max-buffer", None, MIB,
         "Most bytes queued for a client that does not read before it is cut "
         "off (error 14)."],
        ["timer-slack", None, 0.25,
         "Seconds a ping or timeout may come late, so that one wakeup serves "
         "many idle connections."],
        ["secret-file", None, None,
         "File holding the HMAC secret; logins must then carry a JWT (HS256)."],
    ]

    def opt_port(self, value: str) -> None:
        self["port"] = f"tcp:{value}" if value.isdigit() else value

    @property
    def endpoint_description(self) -> str:
        """The --port endpoint, with a listen backlog fit for login storms.

        Twisted's default backlog of 50 drops connection attempts in a burst
        (clients then retry only after a second); 1024 unless one is given.
        """
        description: str = self["port"]
        kind = description.split(":", 1)[0]
        if kind in ("tcp", "tcp6", "ssl", "unix") and "backlog=" not in description:
            description += ":backlog=1024"
        return description

    def postOptions(self) -> None:
        for name in NUMBERS:
            self[name] = number(name, self[name])
        if self["visibility"] not in ("open", "mutual"):
            raise usage.UsageError("--visibility must be open or mutual")
        if self["secret-file"] is not None:
            try:
                self["secret"] = read_secret(self["secret-file"])
            except (OSError, ValueError) as e:
                raise usage.UsageError(f"--secret-file: {e}") from None
        else:
            self["secret"] = None

    def config(self, max_connections: int | None = None) -> Config:
        return Config(
            timeout=self["timeout"],
            offline_grace=self["offline-grace"],
            mutual=self["visibility"] == "mutual",
            max_line=self["max-line"],
            max_friends=self["max-friends"],
            max_connections=max_connections or self["max-connections"],
            max_per_ip=self["max-per-ip"],
            max_sessions=self["max-sessions"],
            max_buffer=self["max-buffer"],
            timer_slack=self["timer-slack"],
        )


def connection_budget(wanted: int) -> int:
    """Raise the file limit as far as allowed; fit C{wanted} connections in it.

    Running out of descriptors makes accept() fail in a tight loop; refusing
    with error 16 below the limit keeps the server responsive instead.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted + FD_RESERVE
    if soft != resource.RLIM_INFINITY and (soft < target):
        new = target if hard == resource.RLIM_INFINITY else min(target, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
            soft = new
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY:
        return wanted
    spare = soft - FD_RESERVE if soft > 2 * FD_RESERVE else soft // 2
    budget = max(1, min(wanted, spare))
    if budget < wanted:
        log.warn(
            "file limit {soft} allows {budget} connections, not {wanted}: "
            "raise it (ulimit -n) to hold more",
            soft=soft, budget=budget, wanted=wanted,
        )
    return budget


def makeService(options: Options) -> IService:
    from twisted.internet import reactor

    secret = options["secret"]
    if secret is None:
        log.warn(
            "no --secret-file: user ids are NOT authenticated, any client may "
            "log in as any user"
        )
    elif weakness(secret):
        log.warn("{weakness}", weakness=weakness(secret))
    config = options.config(connection_budget(options["max-connections"]))
    factory = PresenceFactory(
        reactor,
        config,
        TokenVerifier(secret) if secret is not None else None,
    )
    description = options["port"]
    endpoint = endpoints.serverFromString(reactor, options.endpoint_description)
    scheme = description.split(":", 1)[0] if ":" in description else "tcp"
    return PresenceService(endpoint, factory, reactor, scheme)
