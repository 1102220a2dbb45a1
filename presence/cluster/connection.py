"""Connections to Redis: the address, and txredisapi's protocols wired to a bus.

txredisapi parses replies (with hiredis when installed) and runs commands;
Twisted's L{ClientService} connects, reconnects with backoff and hands each
new connection over.  A bus gets, for each of its two connections (commands,
and SUBSCRIBE), a call when it is ready (after AUTH and SELECT) and when it
is lost.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import parse_qs, unquote, urlsplit

import txredisapi
from twisted.internet import abstract, defer, endpoints, protocol, ssl, tcp, unix
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure

log = Logger()


@dataclass(frozen=True)
class RedisAddress:
    """Where Redis is: C{redis://[[user]:password@]host[:port][/db]},
    rediss:// (TLS), or C{unix://[[user]:password@]/path/redis.sock[?db=N]}
    (a Redis on this machine, by its Unix socket: C{path})."""

    host: str
    port: int = 6379
    db: int = 0
    password: str | None = None
    username: str | None = None
    tls: bool = False
    path: str | None = None

    @classmethod
    def parse(cls, url: str) -> RedisAddress:
        """Read a Redis URL (ValueError with the reason when it is not one)."""
        parts = urlsplit(url)
        if parts.scheme == "unix":
            return cls._parse_unix(url)
        if parts.scheme not in ("redis", "rediss"):
            raise ValueError(f"not a redis://, rediss:// or unix:// URL: {url!r}")
        if parts.query or parts.fragment:
            raise ValueError("a Redis URL takes no query or fragment")
        try:
            port = parts.port or 6379
        except ValueError as e:
            raise ValueError(f"bad port in Redis URL: {e}") from None
        path = parts.path.strip("/")
        if path and not path.isdigit():
            raise ValueError(f"the database in a Redis URL is a number: {path!r}")
        return cls(
            host=parts.hostname or "localhost",
            port=port,
            db=int(path) if path else 0,
            password=unquote(parts.password) if parts.password is not None else None,
            username=unquote(parts.username) if parts.username else None,
            tls=parts.scheme == "rediss",
        )

    @classmethod
    def _parse_unix(cls, url: str) -> RedisAddress:
        parts = urlsplit(url)
        if parts.hostname or parts.port or parts.fragment:
            raise ValueError("a unix:// URL names a socket path, not a host")
        if not parts.path.startswith("/"):
            raise ValueError(f"the socket path must be absolute: {url!r}")
        query = parse_qs(parts.query, keep_blank_values=True, strict_parsing=False)
        if set(query) - {"db"} or len(query.get("db", [])) > 1:
            raise ValueError("a unix:// URL takes only ?db=N")
        db = query.get("db", ["0"])[0]
        if not db.isdigit():
            raise ValueError(f"the database in a Redis URL is a number: {db!r}")
        return cls(
            host="",
            port=0,
            db=int(db),
            password=unquote(parts.password) if parts.password is not None else None,
            username=unquote(parts.username) if parts.username else None,
            path=unquote(parts.path),
        )

    def __str__(self) -> str:
        """The URL, without the password (for logs)."""
        auth = ""
        if self.password is not None:
            auth = f"{self.username or ''}:***@"
        if self.path is not None:
            return f"unix://{auth}{self.path}" + (f"?db={self.db}" if self.db else "")
        host = f"[{self.host}]" if ":" in self.host else self.host
        scheme = "rediss" if self.tls else "redis"
        return f"{scheme}://{auth}{host}:{self.port}/{self.db}"

    def endpoint(self, reactor: Any, timeout: float) -> IStreamClientEndpoint:
        if self.path is not None:
            unix: IStreamClientEndpoint = endpoints.UNIXClientEndpoint(
                reactor, self.path, timeout=timeout)
            return unix
        ep: IStreamClientEndpoint = endpoints.HostnameEndpoint(
            reactor, self.host, self.port, timeout=timeout
        )
        if self.tls:
            ep = endpoints.wrapClientTLS(ssl.optionsForClientTLS(self.host), ep)
        return ep


class ConnectionOwner(Protocol):
    """What a connection tells its bus."""

    def connection_ready(self, conn: Any) -> None: ...
    def connection_lost(self, conn: Any, reason: Failure) -> None: ...
    def message(self, channel: bytes, payload: bytes) -> None: ...
    def subscribed(self) -> None: ...
    def command_failed(self, error: Exception) -> None: ...


# The plain client transports that L{_Owned.write} sends on directly (as
# presence.server.writer does for the server's: the cluster layer may not
# import it); and the attributes that relies on.
_DIRECT = (tcp.Client, unix.Client)
_ATTRIBUTES = ("dataBuffer", "_tempDataLen", "connected", "disconnecting", "socket")


def direct(transport: Any) -> bool:
    """Whether L{_Owned.write} may send on C{transport}'s socket itself."""
    return (
        type(transport) in _DIRECT
        and isinstance(transport, abstract.FileDescriptor)
        and all(hasattr(transport, name) for name in _ATTRIBUTES)
        and type(transport._tempDataLen) is int
        and type(transport.dataBuffer) is bytes
    )


class _Owned:
    owner: ConnectionOwner
    transport: Any
    _direct = False
    # Replies received so far, and the count and time the bus last saw
    # (L{presence.cluster.bus.RedisBus._silent}): a connection that delivers
    # a backlog is slow, not silent.
    received = 0
    counted = 0
    heard = 0.0

    def _tell_ready(self, _: object) -> None:
        self.owner.connection_ready(self)

    def write(self, data: bytes) -> None:
        """Send C{data} now when nothing is queued (one send(2)), else queue
        it: C{transport.write} would send it on the next reactor turn, after
        turning write interest on and off (two epoll_ctl calls), which was a
        third of a node's system calls per change it publishes."""
        t = self.transport
        if not self._direct or (
            t._tempDataLen or t.dataBuffer or not t.connected or t.disconnecting
        ):
            t.write(data)
            return
        try:
            sent = t.socket.send(data)
        except OSError:
            # EAGAIN, or a broken connection: the reactor sends it later or
            # finds the error, as for any write.
            t.write(data)
            return
        if sent < len(data):
            t.write(data[sent:])


def _replies(self: Any, data: bytes, unpause: bool = False) -> None:
    """txredisapi's C{HiredisProtocol.dataReceived} without what the bus never
    needs: a copy of every list reply through C{tryConvertData} (the bus's
    connections take bytes as they come: no charset, no number conversion)
    and MULTI bookkeeping (the bus sends no MULTI)."""
    reader = self._reader
    if data:
        reader.feed(data)
    reply = reader.gets()
    while reply is not False:
        self.replyReceived(reply)
        reply = reader.gets()


def encode(args: tuple[str | bytes | int, ...]) -> bytes:
    """A command in RESP."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def encode_text(args: tuple[str | int, ...]) -> bytes:
    """L{encode} for commands of text and numbers (the scripts' calls): one
    string built and encoded at once, which takes about a third off."""
    text = "".join([f"${len(s)}\r\n{s}\r\n" for s in map(str, args)])
    if not text.isascii():
        return encode(args)  # (lengths are in bytes, not characters)
    return b"*%d\r\n" % len(args) + text.encode()


class CommandConnection(txredisapi.RedisProtocol, _Owned):
    """The connection that runs scripts and reads.

    txredisapi parses the replies and runs AUTH and SELECT; once ready, the
    bus's commands go through L{call} and L{send}, which cost a third of
    txredisapi's C{execute_command} (no reply queue, no timeout call per
    command): replies are matched to commands in order.

    The replies to L{send} (a script's "1" or "0" for each change) matter
    only when they are errors, and reading each as it comes woke the node
    once per change it published.  So while no L{call} waits for its reply
    the connection does not read (on a plain TCP or Unix socket): the
    replies wait in the socket until a call, or L{read_replies} (the bus's
    every heartbeat tick), reads them all at once.  An error, or Redis
    closing the connection, is then seen at most a tick late.
    """

    # Calls whose replies are awaited (their Deferreds in C{waiting}).
    awaited = 0
    # Whether the transport is registered for reading, and whether it may
    # stop (a plain socket: a TLS transport's reads are its own business).
    reading = True
    _pausable = False

    def dataReceived(self, data: bytes, unpause: bool = False) -> None:
        if txredisapi.hiredis is not None:
            _replies(self, data)
        else:
            super().dataReceived(data, unpause)
        if not self.awaited and self._pausable and self._ready:
            self.reading = False
            self.transport.stopReading()

    def read_replies(self) -> None:
        """Read what Redis has answered so far (from the next reactor turn)."""
        t = self.transport
        if not self.reading and t.connected and not t.disconnecting:
            # (A transport that is closing stopped reading for good.)
            self.reading = True
            t.startReading()

    def connectionMade(self) -> None:
        self.waiting: deque[defer.Deferred[Any] | None] = deque()
        self._direct = self._pausable = direct(self.transport)
        super().connectionMade()
        self.whenConnected().addCallback(self._tell_ready)

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        waiting, self.waiting = self.waiting, deque()
        for d in waiting:
            if d is not None:
                d.errback(txredisapi.ConnectionError("Lost connection"))
        super().connectionLost(reason)
        self.owner.connection_lost(self, reason)

    def call(self, *args: str | bytes | int) -> defer.Deferred[Any]:
        """Run a command; the Deferred fires with its reply (errback: error)."""
        if not self._ready:
            return defer.fail(txredisapi.ConnectionError("Not connected"))
        d: defer.Deferred[Any] = defer.Deferred()
        self.waiting.append(d)
        self.awaited += 1
        self.read_replies()
        self.write(encode(args))
        return d

    def send(self, *args: str | bytes | int) -> None:
        """Run a command whose reply only matters if it is an error."""
        if self._ready:
            self.waiting.append(None)
            self.write(encode(args))

    def send_many(self, commands: list[bytes], count: int) -> None:
        """Run C{count} commands, already in RESP (L{encode}), whose replies
        only matter if they are errors: one write for them all."""
        if self._ready:
            self.waiting.extend([None] * count)
            self.write(b"".join(commands))

    def replyReceived(self, reply: Any) -> None:
        self.received += 1
        if self.waiting:
            d = self.waiting.popleft()
            if d is not None:
                self.awaited -= 1
            if isinstance(reply, Exception):
                if d is None:
                    self.owner.command_failed(reply)
                else:
                    d.errback(reply)
            elif d is not None:
                d.callback(reply)
            return
        super().replyReceived(reply)  # AUTH and SELECT while connecting


class SubscriberConnection(txredisapi.SubscriberProtocol, _Owned):
    """The connection in subscribed mode: events, confirmations, pongs."""

    if txredisapi.hiredis is not None:
        dataReceived = _replies

    def connectionMade(self) -> None:
        self.pongs: deque[defer.Deferred[None]] = deque()
        self._direct = direct(self.transport)
        super().connectionMade()
        self.whenConnected().addCallback(self._tell_ready)

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        super().connectionLost(reason)
        pongs, self.pongs = self.pongs, deque()
        for d in pongs:
            d.errback(txredisapi.ConnectionError("Lost connection"))
        self.owner.connection_lost(self, reason)

    def send(self, *args: str | bytes | int) -> None:
        self.write(encode(args))

    @property
    def pings(self) -> int:
        """PINGs not answered yet."""
        return len(self.pongs)

    def ping(self) -> defer.Deferred[None]:
        """Fires when Redis answers: every event it sent before has arrived."""
        d: defer.Deferred[None] = defer.Deferred()
        self.pongs.append(d)
        self.send("PING")
        return d

    def replyReceived(self, reply: Any) -> None:
        self.received += 1
        if isinstance(reply, list) and reply:
            kind = reply[0]
            if isinstance(kind, str):
                kind = kind.encode()
            if kind == b"message":
                self.owner.message(reply[1], reply[2])
                return
            if kind == b"subscribe":
                self.owner.subscribed()
                return
            if kind == b"unsubscribe":
                return
            if kind == b"pong":
                if self.pongs:
                    self.pongs.popleft().callback(None)
                return
        elif reply in (b"PONG", "PONG") and self.pongs and self._ready:
            # PING answered while subscribed to nothing
            self.pongs.popleft().callback(None)
            return
        # AUTH and SELECT while connecting.
        self.replyQueue.put(reply)


class ConnectionFactory(protocol.Factory):
    """Builds one kind of connection for a bus (what txredisapi's protocol
    expects of its factory, too)."""

    isLazy = False
    noisy = False

    def __init__(
        self,
        kind: type[CommandConnection] | type[SubscriberConnection],
        owner: ConnectionOwner,
        address: RedisAddress,
    ) -> None:
        self.kind = kind
        self.owner = owner
        self.address = address

    def buildProtocol(self, addr: object) -> protocol.Protocol:
        a = self.address
        conn = self.kind(
            charset=None,
            convertNumbers=False,
            password=a.password,
            username=a.username,
            dbid=a.db or None,
        )
        conn.factory = self
        conn.owner = self.owner
        return conn

    def stopTrying(self) -> None:
        """AUTH or SELECT failed: ClientService keeps retrying (with backoff)."""

    def connectionError(self, why: str) -> None:
        log.error("{why}", why=why)
