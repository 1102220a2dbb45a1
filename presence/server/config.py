"""L{Config}: the server's limits and timings, as the options set them."""

from __future__ import annotations

from dataclasses import dataclass

MIB = 1024 * 1024


@dataclass(frozen=True)
class Config:
    """Every tunable of a running server (see docs/operations.rst)."""

    timeout: float = 15.0
    # "app": JSON ping/pong on the deadline heap; "tcp": the kernel's
    # keepalive finds dead peers (presence.wire.keepalive), no server timer
    # after the login.
    heartbeat: str = "app"
    offline_grace: float = 0.0
    mutual: bool = False
    max_line: int = MIB
    max_friends: int = 10_000
    # Watch-list entries of all sessions together (each costs at most about
    # 120 bytes: docs/security.rst), so that the defaults fit in 2 GB.
    max_watches: int = 10_000_000
    max_connections: int = 20_000
    max_per_ip: int = 1_000
    max_sessions: int = 32
    max_buffer: int = MIB
    # Before the login a line may be this long (a login with 10,000 ids and
    # a token claiming as many fits), so that clients who have not logged
    # in cannot make the server hold --max-line each.
    max_login_line: int = MIB // 2
    # Unfinished input (lines not yet ended) the server holds for all
    # connections together; past it, the connection that adds is refused.
    max_unfinished: int = 128 * MIB
    # Output held for clients that do not read, all together; past it, the
    # client that is sent more is cut off as a slow consumer (14).
    max_unsent: int = 256 * MIB
    # Pings and timeouts may fire this much late, so that one wakeup serves
    # many connections (presence.core.timers).
    timer_slack: float = 0.0
    # Work one connection may do in a reactor turn before the rest of what
    # it sent waits for the next turn (and its socket is not read): about
    # one unit per delivery, per message and per KiB received.
    turn_budget: int = 500
