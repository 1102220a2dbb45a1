"""Send at once when nothing is queued, as asyncio's transports do.

C{transport.write} only queues: the bytes go out on the next reactor turn,
after two epoll_ctl calls to turn write interest on and off again.  For a
presence server, whose writes are small and mostly find the socket idle,
that doubles the CPU a notification costs and adds a turn of latency.  When
the transport has nothing queued, L{write_now} writes the bytes to the
transport's socket (one write(2), with C{os.write} on its descriptor: the
same system call as the socket's C{send()}, with fewer instructions around
it, no tuple of arguments to parse and no timeout logic); whatever the
kernel does not take, and every write while anything is queued, goes through
C{transport.write} as usual, so bytes keep their order and Twisted keeps
managing the buffer, producers and errors.

This leans on C{FileDescriptor}'s buffer attributes.  Each transport is
checked for them; if a Twisted release changes them, every connection falls
back to plain C{transport.write} (correct, just slower), and
C{presence.test.test_writer} fails, so that an upgrade cannot slow the server
down unnoticed.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import abstract, tcp

_ATTRIBUTES = ("dataBuffer", "_tempDataLen", "connected", "disconnecting", "socket")


def supported(transport: Any) -> bool:
    """Whether C{transport} is a TCP server connection with the expected buffer."""
    return (
        type(transport) is tcp.Server
        and isinstance(transport, abstract.FileDescriptor)
        and all(hasattr(transport, name) for name in _ATTRIBUTES)
        and type(transport._tempDataLen) is int
        and type(transport.dataBuffer) is bytes
    )


def direct_fd(transport: Any) -> int:
    """The descriptor to write C{transport}'s bytes to directly (L{write_now}),
    or -1 if it is not L{supported}.

    Until Twisted first queues bytes, C{dataBuffer} and C{disconnecting}
    are still the class's defaults, and CPython 3.11 reads a class
    attribute through an instance by the slow, generic lookup every time
    (two per write); set on the instance, to the same values, they are read
    as fast as any other.  Every connection sets them in the same order, so
    the instances still share their dict's keys.
    """
    if not supported(transport):
        return -1
    transport.dataBuffer = transport.dataBuffer
    transport.disconnecting = transport.disconnecting
    fd: int = transport.fileno()
    return fd


# The direct write (a module global: one lookup; tests count its calls).
_send = os.write


def write_now(transport: Any, fd: int, data: bytes) -> None:
    """Write C{data} on a L{supported} transport: at once if nothing is queued.

    C{fd}: the transport's C{fileno()}, taken when the connection was made
    (while the transport is connected its socket is open, so the descriptor
    is still this connection's).  (C{LineProtocol.write} holds a copy of
    this, inlined: it runs once per delivery.)
    """
    t = transport
    # Nothing is queued when both buffers are empty: doWrite sets dataBuffer
    # back to b"" once it has sent all of it (test_writer checks this).
    if t._tempDataLen or t.dataBuffer or not t.connected or t.disconnecting:
        t.write(data)
        return
    try:
        sent = _send(fd, data)
    except OSError:
        # EAGAIN, or a broken connection: queue it, and let the reactor send
        # it later or find the error and report it, as for any write.
        t.write(data)
        return
    if sent < len(data):
        t.write(data[sent:])
