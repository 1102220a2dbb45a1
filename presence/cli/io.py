"""presence-client's process plumbing: the server endpoint, stdin and stdout."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import HostnameEndpoint, clientFromString, wrapClientTLS
from twisted.internet.interfaces import IHalfCloseableProtocol, IStreamClientEndpoint
from twisted.internet.protocol import connectionDone
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.internet.stdio import StandardIO
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure
from zope.interface import implementer


def endpoint_for(
    reactor: Any, server: str, ca_file: Path | None = None
) -> tuple[IStreamClientEndpoint, str]:
    """The endpoint for --server, and the address to name it by.

    A bare port number means that port on 127.0.0.1.  With C{ca_file} an
    C{ssl:HOST:PORT} server must present a certificate for HOST signed by
    that CA.
    """
    if server.isdigit():
        server = f"tcp:127.0.0.1:{server}"
    if ca_file is None:
        return clientFromString(reactor, server), server
    if not server.startswith("ssl:"):
        raise ValueError(f"--ca-file needs an ssl: server, not {server!r}")
    host, port = _host_port(server[len("ssl:"):])
    trust = Certificate.loadPEM(ca_file.read_bytes())
    tcp = HostnameEndpoint(reactor, host, port)
    return wrapClientTLS(optionsForClientTLS(host, trustRoot=trust), tcp), server


def _host_port(description: str) -> tuple[str, int]:
    # Endpoint strings escape colons (IPv6 addresses) with a backslash.
    parts = [p.replace("\\:", ":") for p in re.split(r"(?<!\\):", description)]
    named = dict(p.split("=", 1) for p in parts if "=" in p)
    plain = [p for p in parts if "=" not in p]
    host = named.get("host") or (plain[0] if plain else "")
    port = named.get("port") or (plain[1] if len(plain) > 1 else "")
    if not host or not port.isdigit():
        raise ValueError(f"expected ssl:HOST:PORT, not 'ssl:{description}'")
    return host, int(port)


@implementer(IHalfCloseableProtocol)
class _Lines(LineReceiver):
    """Commands from stdin; half-closeable so that EOF on stdin leaves
    stdout open."""

    delimiter = b"\n"

    def __init__(self, on_line: Callable[[str], None], on_eof: Callable[[], None]):
        self.on_line = on_line
        self.on_eof = on_eof
        self.gone: Deferred[None] = Deferred()

    def lineReceived(self, line: bytes) -> None:
        self.on_line(line.decode("utf-8", "replace").strip())

    def readConnectionLost(self) -> None:
        rest = self.clearLineBuffer()
        if rest.strip():
            self.lineReceived(rest)
        self.on_eof()

    def writeConnectionLost(self) -> None:
        # Whoever read stdout went away; the session goes on regardless.
        pass

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if not self.gone.called:
            self.gone.callback(None)


class Terminal:
    """stdout and stdin through L{StandardIO}, so neither blocks the reactor.

    When stdin cannot be read at all (a closed descriptor) it counts as an
    empty stdin, and stdout is written to directly.
    """

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self._lines: _Lines | None = None
        self._stdio: StandardIO | None = None

    def start(self, on_line: Callable[[str], None], on_eof: Callable[[], None]
              ) -> None:
        lines = _Lines(on_line, on_eof)
        try:
            self._stdio = StandardIO(lines, reactor=self.reactor)
        except OSError:
            self.reactor.callLater(0, on_eof)
            return
        self._lines = lines

    def write(self, text: str) -> None:
        data = text.encode("utf-8", "replace") + b"\n"
        if self._stdio is not None:
            self._stdio.write(data)
        else:
            sys.stdout.buffer.write(data)
            sys.stdout.flush()

    def error(self, text: str) -> None:
        sys.stderr.write(text + "\n")
        sys.stderr.flush()

    def close(self) -> Deferred[None]:
        """Flush stdout; fires once everything written is out."""
        if self._lines is None or self._stdio is None:
            return succeed(None)
        self._stdio.loseConnection()
        return self._lines.gone
