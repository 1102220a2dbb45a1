"""TCP keepalive for ``--heartbeat tcp``: the kernel finds dead peers.

With ``--heartbeat tcp`` neither side sends JSON pings; instead each TCP
socket asks the kernel to probe a silent peer and to give up on one that
does not answer, or that leaves written data unacknowledged, after about
the protocol's ``timeout`` T.  The server and the client library derive the
same settings from T (L{Keepalive.for_timeout}), on the app heartbeat's
schedule:

  - C{TCP_KEEPIDLE} T/2 (rounded, at least 1 s): the first probe after
    this much silence, as the server's ping after T/2;
  - C{TCP_KEEPINTVL} an eighth of the rest (at least 1 s) and
    C{TCP_KEEPCNT} as many probes as fill the rest: 15 s gives 7 probes,
    1 s apart, after 8 s of silence;
  - C{TCP_USER_TIMEOUT} T, in milliseconds: data unacknowledged for this
    long ends the connection, and (Linux) so does a peer silent for this
    long once a probe is out.

So a peer that vanishes is found T seconds after its last packet (the
settings are whole seconds: under 2 s, at the first probe after T).  A
probe, unlike a ping, is not retransmitted: several probes, any one of
which is enough when answered, keep a short burst of packet loss from
ending a live connection.
A live idle peer costs one probe and its answer per T/2, in the kernel:
the server process is not woken.  Each option that the platform lacks is
skipped (macOS has no C{TCP_USER_TIMEOUT}).  Non-TCP sockets (UNIX) get
nothing: a UNIX socket's peer is a local process, whose end the kernel
reports at once.

No Twisted here: the client library uses it as well.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from functools import lru_cache

# The second half of the timeout is probed every eighth of it (at least
# every second).
PROBES = 8
# Linux's upper bounds for the idle time and interval (MAX_TCP_KEEPIDLE,
# MAX_TCP_KEEPINTVL), the count (MAX_TCP_KEEPCNT) and TCP_USER_TIMEOUT (an
# int of milliseconds).
MAX_SECONDS = 32767
MAX_PROBES = 127
MAX_USER_TIMEOUT_MS = 2**31 - 1


@dataclass(frozen=True, slots=True)
class Keepalive:
    """The keepalive settings of one socket (see the module docstring)."""

    idle: int
    interval: int
    count: int
    user_timeout_ms: int

    @classmethod
    def for_timeout(cls, timeout: float) -> Keepalive:
        """The settings that find a dead peer in about C{timeout} seconds."""
        idle = min(MAX_SECONDS, max(1, _round(timeout / 2)))
        rest = max(0.0, timeout - idle)
        interval = min(MAX_SECONDS, max(1, int(rest / PROBES)))
        count = min(MAX_PROBES, max(1, _round(rest / interval)))
        user_timeout = min(MAX_USER_TIMEOUT_MS, max(1, _round(timeout * 1000)))
        return cls(idle, interval, count, user_timeout)

    def options(self) -> list[tuple[int, int, int]]:
        """C{(level, option, value)} for setsockopt, those this platform has."""
        wanted = [
            ("TCP_KEEPIDLE", self.idle),
            ("TCP_KEEPINTVL", self.interval),
            ("TCP_KEEPCNT", self.count),
            ("TCP_USER_TIMEOUT", self.user_timeout_ms),
        ]
        found = [(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)]
        for name, value in wanted:
            option = getattr(socket, name, None)
            if option is not None:
                found.append((socket.IPPROTO_TCP, option, value))
        return found


def _round(x: float) -> int:
    # Half up, not to even: 15 s gives 8 s of idle, not 7 and 8 by turns.
    return int(x + 0.5)


def socket_of(transport: object) -> socket.socket | None:
    """The TCP socket under a Twisted transport, or None (UNIX, a test's).

    Wrapping transports (TLS, the PROXY protocol's) hand unknown attributes
    on to the transport they wrap, so ``socket`` reaches the real one.
    """
    sock = getattr(transport, "socket", None)
    if not isinstance(sock, socket.socket):
        return None
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return None
    return sock


def enable(transport: object, timeout: float) -> bool:
    """Turn keepalive on for C{transport}'s TCP socket; whether there was one.

    A socket that refuses an option (closed meanwhile) keeps what was set:
    the connection is going anyway.
    """
    sock = socket_of(transport)
    if sock is None:
        return False
    try:
        for level, option, value in _options(timeout):
            sock.setsockopt(level, option, value)
    except OSError:
        return False
    return True


@lru_cache(maxsize=8)
def _options(timeout: float) -> tuple[tuple[int, int, int], ...]:
    # Every connection of a server has the same timeout: derive once.
    return tuple(Keepalive.for_timeout(timeout).options())
