"""The ``twistd presence`` plugin: command-line options and the service."""

from __future__ import annotations

import math
import os
import resource
import signal
from typing import Any

from twisted.application.service import IService
from twisted.internet import endpoints
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.logger import Logger
from twisted.python import usage
from twisted.web.server import Site

from presence.cluster.bus import RedisBus
from presence.cluster.options import ClusterOptions, build_bus
from presence.cluster.options import check as check_cluster
from presence.server.admin import admin_site, read_token
from presence.server.config import MIB, Config
from presence.server.context import Server
from presence.server.gcpolicy import FreezeSurvivors
from presence.server.lines import LineFactory
from presence.server.logs import LOG_FORMATS, LogTarget
from presence.server.pidfile import PidfileKeeper
from presence.server.proxied import PREFIX, GatedEndpoint, is_proxied
from presence.server.service import PresenceService
from presence.server.session import Session
from presence.server.signals import SignalService
from presence.server.turn import turn_end
from presence.server.web.resources import web_root
from presence.server.web.websocket import websocket_resource
from presence.wire.tokens import TokenVerifier, read_secrets, weakness

log = Logger()

# File descriptors kept back for what is not a client: listening sockets, the
# reactor's waker and epoll, log files, the secret file.
FD_RESERVE = 16


HEARTBEATS = ("app", "tcp")

# Numeric options: their type, and whether 0 means something (no grace, exact
# timers) or nothing (a zero timeout or limit would refuse everyone).
NUMBERS: dict[str, tuple[type[int] | type[float], bool]] = {
    "timeout": (float, False),
    "offline-grace": (float, True),
    "timer-slack": (float, True),
    "max-line": (int, False),
    "max-friends": (int, False),
    "max-watches": (int, False),
    "max-connections": (int, False),
    "max-per-ip": (int, False),
    "max-sessions": (int, False),
    "max-buffer": (int, False),
    "max-login-line": (int, False),
    "max-unfinished": (int, False),
    "max-unsent": (int, False),
    "turn-budget": (int, False),
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


class Options(ClusterOptions, usage.Options):
    """The options of C{twistd presence}, checked as a whole in postOptions."""

    synopsis = "[options]"
    longdesc = "Run a presence server: clients log in with one JSON line and are "\
        "told at once when a friend comes online, goes offline or changes status."

    optParameters = [
        ["port", "p", "tcp:8081",
         "Where to listen: a port number or a Twisted endpoint string "
         "(tcp:PORT, ssl:PORT:privateKey=KEY:certKey=CERT, unix:PATH, ...); "
         "behind a proxy that sends the PROXY protocol, haproxy:tcp:PORT."],
        ["timeout", "t", 15.0,
         "Seconds of silence before a client is dropped (error 1); the server "
         "pings after half of it. Also the login timeout."],
        ["heartbeat", None, "app",
         "app: the server pings a silent client after half the timeout and "
         "drops it (error 1) after the timeout; tcp: no pings and no idle "
         "drop, TCP keepalive (derived from --timeout) finds dead peers."],
        ["gc", None, "freeze",
         "freeze: after each full garbage collection its survivors are "
         "frozen, so the next walks only newer objects (shorter pauses with "
         "many sessions); default: Python's collector as it comes."],
        ["offline-grace", None, 0.0,
         "Seconds a user whose last session ended stays online for others, in "
         "case it comes back."],
        ["visibility", None, "open",
         "open: a watcher sees whom it lists; mutual: only those who list it too."],
        ["max-line", None, MIB, "Longest line accepted, in bytes (error 9)."],
        ["max-friends", None, 10_000, "Most ids in a watch list (error 11)."],
        ["max-watches", None, 10_000_000,
         "Most watch-list entries of all sessions together (a login or list "
         "that would pass it: error 11)."],
        ["max-connections", None, 20_000, "Most connections at once (error 16)."],
        ["max-per-ip", None, 1_000,
         "Most connections from one source address (error 16)."],
        ["max-sessions", None, 32, "Most sessions of one user (error 16)."],
        ["max-buffer", None, MIB,
         "Most bytes queued for a client that does not read before it is cut "
         "off (error 14)."],
        ["max-login-line", None, MIB // 2,
         "Longest line accepted before the login, in bytes (error 9)."],
        ["max-unfinished", None, 128 * MIB,
         "Most bytes of unfinished lines held for all connections together "
         "(the connection that adds more: error 16)."],
        ["max-unsent", None, 256 * MIB,
         "Most bytes queued for all clients that do not read, together; the "
         "one sent more past it is cut off (error 14)."],
        ["turn-budget", None, 500,
         "Work one connection may do in a reactor turn (about one unit per "
         "delivery, message and KiB) before the rest waits for the next turn "
         "and its socket is read more slowly."],
        ["timer-slack", None, 0.25,
         "Seconds a ping or timeout may come late, so that one wakeup serves "
         "many idle connections."],
        ["secret-file", None, None,
         "File holding the HMAC secrets, one per line (any is accepted); "
         "logins must then carry a JWT (HS256). SIGHUP re-reads it."],
        ["websocket", None, None,
         "Also serve browsers: a Twisted endpoint string (or port number) for "
         "WebSocket at /ws, the browser client at /presence.js and a demo "
         "page at /."],
        ["admin", None, None,
         "Serve the admin HTTP API (/metrics, /healthz, /readyz, /v1/...) on "
         "this endpoint; bind it privately (e.g. tcp:9090:interface=127.0.0.1)."],
        ["admin-token-file", None, None,
         "File holding the bearer token that /v1/* of the admin API requires."],
        ["log-format", None, "text",
         "text: one readable line per event; json: one JSON object per line "
         "(twisted.logger's eventAsJSON, plus 'text' and 'level')."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["allowed-origin"] = []

    def opt_port(self, value: str) -> None:
        self["port"] = _endpoint(value)

    def opt_websocket(self, value: str) -> None:
        self["websocket"] = _endpoint(value)

    def opt_admin(self, value: str) -> None:
        self["admin"] = _endpoint(value)

    def opt_allowed_origin(self, value: str) -> None:
        """A web origin allowed to connect over WebSocket, such as
        https://app.example.com (repeat for several; default: any)."""
        self["allowed-origin"].append(value)

    @property
    def endpoint_description(self) -> str:
        """The --port endpoint, with a listen backlog fit for login storms."""
        return with_backlog(self["port"])

    def postOptions(self) -> None:
        for name in NUMBERS:
            self[name] = number(name, self[name])
        check_cluster(self)
        if self["visibility"] not in ("open", "mutual"):
            raise usage.UsageError("--visibility must be open or mutual")
        if self["gc"] not in ("freeze", "default"):
            raise usage.UsageError(
                f"--gc must be freeze or default, not {self['gc']!r}")
        if self["heartbeat"] not in HEARTBEATS:
            raise usage.UsageError(
                f"--heartbeat must be app or tcp, not {self['heartbeat']!r}")
        if self["log-format"] not in LOG_FORMATS:
            raise usage.UsageError(
                f"--log-format must be {' or '.join(LOG_FORMATS)}, "
                f"not {self['log-format']!r}")
        from twisted.internet import reactor

        limits = (self["timeout"], self["max-connections"])
        self["endpoint"] = server_endpoint(reactor, "port", self["port"], *limits)
        for option in ("websocket", "admin"):
            if self[option] is not None:
                self[f"{option}-endpoint"] = server_endpoint(
                    reactor, option, self[option], *limits
                )
        if self["admin-token-file"] is not None:
            if self["admin"] is None:
                raise usage.UsageError("--admin-token-file needs --admin")
            try:
                self["admin-token"] = read_token(self["admin-token-file"])
            except (OSError, ValueError) as e:
                raise usage.UsageError(f"--admin-token-file: {e}") from None
        else:
            self["admin-token"] = None
        if self["secret-file"] is not None:
            # Absolute: SIGHUP re-reads it after a daemon's chdir.
            self["secret-file"] = os.path.abspath(self["secret-file"])
            try:
                self["secrets"] = read_secrets(self["secret-file"])
            except (OSError, ValueError) as e:
                raise usage.UsageError(f"--secret-file: {e}") from None
            self["secret"] = self["secrets"][0]
        else:
            self["secret"] = None
            self["secrets"] = []

    def config(self, max_connections: int | None = None) -> Config:
        return Config(
            timeout=self["timeout"],
            heartbeat=self["heartbeat"],
            offline_grace=self["offline-grace"],
            mutual=self["visibility"] == "mutual",
            max_line=self["max-line"],
            max_friends=self["max-friends"],
            max_watches=self["max-watches"],
            max_connections=max_connections or self["max-connections"],
            max_per_ip=self["max-per-ip"],
            max_sessions=self["max-sessions"],
            max_buffer=self["max-buffer"],
            timer_slack=self["timer-slack"],
            max_login_line=self["max-login-line"],
            max_unfinished=self["max-unfinished"],
            max_unsent=self["max-unsent"],
            turn_budget=self["turn-budget"],
        )


def _endpoint(value: str) -> str:
    """An endpoint option: a port number means tcp:PORT (haproxy:PORT,
    haproxy:tcp:PORT)."""
    if value.isdigit():
        return f"tcp:{value}"
    if is_proxied(value) and value[len(PREFIX):].isdigit():
        return f"{PREFIX}tcp:{value[len(PREFIX):]}"
    return value


def with_backlog(description: str) -> str:
    """An endpoint string with a listen backlog fit for login storms.

    Twisted's default backlog of 50 drops connection attempts in a burst
    (clients then retry only after a second); 1024 unless one is given.
    Behind ``haproxy:`` it goes on the endpoint inside, which listens.
    """
    if is_proxied(description):
        return PREFIX + with_backlog(description[len(PREFIX):])
    kind = description.split(":", 1)[0]
    if kind in ("tcp", "tcp6", "ssl", "unix") and "backlog=" not in description:
        description += ":backlog=1024"
    return description


def server_endpoint(reactor: Any, option: str, description: str,
                    timeout: float, limit: int) -> IStreamServerEndpoint:
    """The endpoint for C{description}, or a UsageError naming C{option}.

    A ``haproxy:`` endpoint is gated (L{presence.server.proxied}): its
    protocols are connected once the PROXY header has told the client's
    address; a connection silent for C{timeout} seconds is closed, and at
    most C{limit} may wait so.
    """
    try:
        endpoint: IStreamServerEndpoint = endpoints.serverFromString(
            reactor, with_backlog(description))
    except Exception as e:
        # Unknown kinds, bad parameters, unreadable TLS keys: all the
        # operator's to fix, none worth a traceback.
        raise usage.UsageError(f"--{option} {description}: {e}") from None
    if is_proxied(description):
        endpoint = GatedEndpoint(endpoint, reactor, timeout, limit)
    return endpoint


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
    """The server's service tree: front ends, signal handlers, pidfile keeper.

    The shared pieces (configuration, token verifier; registry and deadline
    heap inside the factory for now) are built once, here, and handed to
    every front end: adding a front end is one C{add_front_end} line.
    """
    from twisted.internet import reactor

    twistd: Any = getattr(options, "parent", None) or {}
    secrets: list[bytes] = options["secrets"]
    if not secrets:
        log.warn(
            "no --secret-file: user ids are NOT authenticated, any client may "
            "log in as any user"
        )
    _warn_weak(secrets)
    config = options.config(connection_budget(options["max-connections"]))
    verifier = TokenVerifier(secrets) if secrets else None

    service = PresenceService(reactor=reactor)
    target = LogTarget.for_twistd(options["log-format"], twistd)
    if target is not None:
        service.log_observer = target.observer
    PidfileKeeper(twistd).setServiceParent(service)
    reload = Reload(options["secret-file"], verifier, target)
    SignalService(reactor, {signal.SIGHUP: reload.hup, signal.SIGUSR1: reload.usr1}
                  ).setServiceParent(service)

    # Cluster mode: the Redis bus starts before the front ends listen.
    bus = build_bus(options, reactor)
    if bus is not None:
        bus.setServiceParent(service)

    # Front ends: one line each, all on one Server.
    server = Server(reactor, config, verifier, bus)
    if bus is not None:
        bus.on_disconnect = server.disconnect
        end = turn_end(reactor)
        if end is not None:
            bus.at_turn_end = end.later
    service.add_front_end(
        options["endpoint"], LineFactory(server), _scheme(options["port"]),
        options["port"],
    )
    if options["websocket"] is not None:
        service.add_front_end(
            options["websocket-endpoint"],
            websocket_site(server, options["allowed-origin"]),
            _scheme(options["websocket"]),
            options["websocket"],
            name="websocket",
        )
    if options["admin"] is not None:
        service.add_front_end(
            options["admin-endpoint"],
            _admin(server, bus, options["admin-token"], reactor),
            _scheme(options["admin"]),
            options["admin"],
            name="admin",
        )
    if options["gc"] == "freeze":
        # Last: what the others made at start is frozen with the code.
        FreezeSurvivors().setServiceParent(service)
    return service


def _admin(
    server: Server, bus: RedisBus | None, token: bytes | None, reactor: Any
) -> Site:
    """The admin API on this server; in cluster mode it asks Redis, so that
    /v1/* answers for the whole cluster and /readyz reflects Redis."""
    if bus is None:
        return admin_site(
            metrics=server.metrics,
            sessions=lambda: server.registry.sessions,
            users_online=lambda: server.registry.users,
            lookup=lambda uids: [server.registry.bus.known(u) for u in uids],
            disconnect=server.disconnect,
            ready=lambda: not server.stopping,
            token=token,
            clock=reactor,
        )
    return admin_site(
        metrics=server.metrics,
        sessions=lambda: server.registry.sessions,
        users_online=lambda: server.registry.users,
        lookup=lambda uids: Deferred.fromCoroutine(bus.read(uids)),
        disconnect=lambda uid: Deferred.fromCoroutine(bus.disconnect(uid)),
        ready=lambda: bus.up and not server.stopping,
        token=token,
        clock=reactor,
        redis_up=lambda: bus.up,
    )


def _scheme(description: str) -> str:
    """How the listening line names an endpoint's kind: tcp, ssl, unix, ...,
    and haproxy:tcp (haproxy:ssl, ...) behind the PROXY protocol."""
    if is_proxied(description):
        return PREFIX + _scheme(description[len(PREFIX):])
    return description.split(":", 1)[0] if ":" in description else "tcp"


def websocket_site(server: Server, allowed_origins: list[str]) -> Site:
    """The WebSocket port: /ws on the shared server, /presence.js, /."""
    site = Site(
        web_root(
            websocket_resource(
                lambda peer: Session(server, peer),
                server.config.max_line,
                allowed_origins,
                # --heartbeat tcp: upgraded connections get TCP keepalive.
                server.config.timeout if server.config.heartbeat == "tcp" else None,
            )
        )
    )
    site.noisy = False
    site.displayTracebacks = False
    return site


def _warn_weak(secrets: list[bytes]) -> None:
    for n, secret in enumerate(secrets, 1):
        weak = weakness(secret)
        if weak:
            which = f"secret {n}: " if len(secrets) > 1 else ""
            log.warn("{which}{weakness}", which=which, weakness=weak)


class Reload:
    """What SIGHUP and SIGUSR1 do.

    SIGHUP re-reads ``--secret-file`` (a file that cannot be read, or holds
    no secret, leaves the secrets in use and says why) and reopens the log
    file.  SIGUSR1 rotates the log file, as twistd does.  Sessions are not
    touched: a new secret applies to the next logins.
    """

    def __init__(self, secret_file: str | None, verifier: TokenVerifier | None,
                 target: LogTarget | None) -> None:
        self.secret_file = secret_file
        self.verifier = verifier
        self.target = target

    def hup(self) -> None:
        log.info("SIGHUP: reloading")
        if self.target is not None:
            self.target.reopen()
        self.reload_secrets()

    def usr1(self) -> None:
        if self.target is None:
            log.info("SIGUSR1 ignored: the log is not a file of this server's")
            return
        self.target.rotate()

    def reload_secrets(self) -> None:
        if self.secret_file is None or self.verifier is None:
            log.info("no --secret-file: no secrets to re-read")
            return
        in_use = len(self.verifier.secrets)
        try:
            secrets = read_secrets(self.secret_file)
        except (OSError, ValueError) as e:
            log.error(
                "cannot re-read --secret-file, keeping the {n} secret{s} in use: "
                "{err}", n=in_use, s="" if in_use == 1 else "s", err=e)
            return
        self.verifier.replace(secrets)
        _warn_weak(secrets)
        log.info("{n} secret{s} read from {path}", n=len(secrets),
                 s="" if len(secrets) == 1 else "s", path=self.secret_file)
