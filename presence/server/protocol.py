"""The IO layer: one L{PresenceProtocol} per TCP (or TLS, or UNIX) connection.

It turns lines into registry calls and registry deliveries into writes.  All
timers (login timeout, pings, idle timeout, slow-consumer cut-off, the close
failsafe) run on the factory's clock so that tests drive them with
C{task.Clock}.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IDelayedCall, IPushProducer, ITCPTransport
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver
from twisted.protocols.policies import TimeoutMixin
from zope.interface import implementer

from presence import wire
from presence.core.registry import IdList, ISession, id_list
from presence.server.writer import supported, write_now
from presence.wire import Json
from presence.wire.errors import ErrorCode, ProtocolError

if TYPE_CHECKING:
    from twisted.python.failure import Failure

    from presence.server.factory import PresenceFactory

# Errors after login that leave the session open (PROTOCOL.md, "fatal").
NOT_FATAL_AFTER_LOGIN = frozenset(
    {
        ErrorCode.INVALID_USER_ID,
        ErrorCode.FRIEND_WITH_YOURSELF,
        ErrorCode.TOO_MANY_FRIENDS,
        ErrorCode.INVALID_MESSAGE,
    }
)

EXIT_REASONS = {
    ErrorCode.CLIENT_TIMEOUT: "client timeout",
    ErrorCode.SLOW_CONSUMER: "slow consumer",
    ErrorCode.SERVER_SHUTTING_DOWN: "server shutting down",
}

# How long a closing connection may take to flush its last line before it is
# aborted (a client that does not read would otherwise hold it forever).
CLOSE_FAILSAFE = 5.0


@implementer(ISession, IPushProducer)
class PresenceProtocol(LineOnlyReceiver, TimeoutMixin):
    log = Logger()
    delimiter = b"\n"
    factory: PresenceFactory
    # A TCP, TLS or UNIX transport: ITransport plus IConsumer (producers) and
    # abortConnection, which no single Twisted interface spells out.
    transport: Any

    def __init__(self) -> None:
        self.user_id: int | None = None
        self.friends: IdList = id_list(())
        self.claim: frozenset[int] | None = None
        self.peer = ""
        self.host: str | None = None  # IP address, for the per-address limit
        self._chunks: list[bytes] = []
        self._pending = 0
        self._pinged = False
        self._closing = False
        self._exit = "connection closed"
        self._paused = False
        self._unsent = 0
        self._paused_call: IDelayedCall | None = None
        self._failsafe: IDelayedCall | None = None
        self.deadline: float | None = None
        self.deadline_seq = 0
        self._direct = False

    # -- connection lifetime -------------------------------------------------

    def connectionMade(self) -> None:
        factory = self.factory
        self.MAX_LENGTH = factory.config.max_line
        if ITCPTransport.providedBy(self.transport):
            # Small writes must not wait for the peer's delayed ACK.
            self.transport.setTcpNoDelay(True)
        self.transport.registerProducer(self, True)
        self._direct = supported(self.transport)
        self.peer = factory.connection_made(self)
        refusal = factory.refusal(self)
        if refusal:
            self.fatal(ProtocolError(ErrorCode.TOO_MANY_CONNECTIONS, refusal))
            return
        self.setTimeout(factory.config.timeout)

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.setTimeout(None)
        for call in (self._paused_call, self._failsafe):
            if call is not None and call.active():
                call.cancel()
        self._closing = True
        factory = self.factory
        factory.connection_lost(self)
        if self.user_id is not None:
            factory.registry.logout(self)
            self.log.info(
                "user {uid} exits: {reason} ({n} left)",
                uid=self.user_id,
                reason=self._exit,
                n=_sessions(factory.registry.session_count(self.user_id)),
            )

    # -- reading -------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        # Unlike LineOnlyReceiver, keep partial lines as a list of chunks: a
        # line trickling in byte by byte must not cost quadratic copying.
        if self._closing:
            return
        # Idle clients send little but keep-alives: answer those without
        # splitting and decoding (the same effect as the general path).
        keepalive = _KEEPALIVE.get(data)
        if (
            keepalive is not None
            and self.user_id is not None
            and not self._chunks
            and keepalive[1] <= self.MAX_LENGTH
        ):
            self._pinged = False
            self.resetTimeout()
            if keepalive[0]:
                self.deliver(keepalive[0])
            return
        if b"\n" not in data:
            self._chunks.append(data)
            self._pending += len(data)
            self._check_pending()
            return
        if self._chunks:
            self._chunks.append(data)
            data = b"".join(self._chunks)
            self._chunks = []
            self._pending = 0
        *lines, rest = data.split(b"\n")
        for line in lines:
            if self._closing:
                return
            self.lineReceived(line)
        if rest and not self._closing:
            self._chunks.append(rest)
            self._pending = len(rest)
            self._check_pending()

    def _check_pending(self) -> None:
        # A line longer than the limit is refused before its end arrives; a
        # trailing "\r" may still belong to a "\r\n" terminator.
        limit = self.MAX_LENGTH
        if self._pending > limit + 1 or (
            self._pending == limit + 1 and not self._chunks[-1].endswith(b"\r")
        ):
            self.lineLengthExceeded(b"")

    def lineLengthExceeded(self, line: bytes) -> None:
        self._chunks = []
        self._pending = 0
        self.fatal(ProtocolError(ErrorCode.LINE_TOO_LONG, f"limit {self.MAX_LENGTH}"))

    def lineReceived(self, line: bytes) -> None:
        if self.user_id is not None:
            # Activity keeps a session alive; before the login nothing but
            # the login itself stops the login timeout.
            self._pinged = False
            self.resetTimeout()
        if line.endswith(b"\r"):
            line = line[:-1]
        if len(line) > self.MAX_LENGTH:
            self.lineLengthExceeded(line)
            return
        if not line or line.isspace():
            return
        try:
            obj = wire.decode_line(line)
            if self.user_id is None:
                self._login(obj)
            else:
                self._message(obj)
        except ProtocolError as e:
            if self.user_id is not None and e.code in NOT_FATAL_AFTER_LOGIN:
                self.deliver(wire.error(e.code, e.detail))
            else:
                self.fatal(e)
        except Exception:
            # Nothing a client sends may escape the protocol; an error here is
            # ours, and costs this session only.
            self.log.failure("unexpected error handling a line from {peer}",
                             peer=self.peer)
            self.fatal(ProtocolError(ErrorCode.UNKNOWN))

    # -- messages ------------------------------------------------------------

    def _login(self, obj: Json) -> None:
        factory = self.factory
        config = factory.config
        if wire.message_type(obj) != "login":
            raise ProtocolError(ErrorCode.NOT_LOGGED_IN, "log in first")
        uid = wire.user_id(obj.get("user_id"))
        claim = None
        if factory.verifier is not None:
            claim = factory.verifier.verify(obj.get("token"), uid)
        friends = wire.id_set(
            obj.get("friends", []), "friends", uid, config.max_friends
        )
        change = wire.status_fields(obj, required=False)
        registry = factory.registry
        if registry.session_count(uid) >= config.max_sessions:
            raise ProtocolError(
                ErrorCode.TOO_MANY_CONNECTIONS,
                f"user {uid} has {config.max_sessions} sessions",
            )
        self.user_id = uid
        self.friends = id_list(friends)
        self.claim = claim
        self.deliver(wire.welcome(uid, config.timeout))
        registry.login(self, self._watch(self.friends), change)
        # From now on the timer is the ping schedule: a ping after timeout/2 of
        # silence, error 1 after another timeout/2.
        self.setTimeout(config.timeout / 2)
        self.log.info(
            "user {uid} joins ({n}) from {peer}",
            uid=uid,
            n=_sessions(registry.session_count(uid)),
            peer=self.peer,
        )

    def _message(self, obj: Json) -> None:
        kind = wire.message_type(obj)
        handler = _HANDLERS.get(kind)
        if handler is None:
            raise ProtocolError(
                ErrorCode.INVALID_MESSAGE, f"unknown type {kind[:40]!r}"
            )
        handler(self, obj)

    def _on_ping(self, obj: Json) -> None:
        self.deliver(wire.PONG)

    def _on_pong(self, obj: Json) -> None:
        pass  # the line itself was the point: it reset the idle timer

    def _on_bye(self, obj: Json) -> None:
        self._exit = "bye"
        self.close()

    def _on_status(self, obj: Json) -> None:
        self.factory.registry.set_status(self, wire.status_fields(obj, required=True))

    def _on_friends(self, obj: Json) -> None:
        assert self.user_id is not None
        friends = wire.friends_change(
            obj, self.user_id, frozenset(self.friends), self.factory.config.max_friends
        )
        self._set_friends(friends)

    def _on_login(self, obj: Json) -> None:
        # Older clients re-send their login every second: it updates the
        # list and status and counts as a ping.
        uid = wire.user_id(obj.get("user_id"))
        if uid != self.user_id:
            raise ProtocolError(
                ErrorCode.INVALID_MESSAGE, "already logged in as another user"
            )
        friends = wire.id_set(
            obj.get("friends", []), "friends", uid, self.factory.config.max_friends
        )
        change = wire.status_fields(obj, required=False)
        self._set_friends(friends)
        if change.status is not None or change.text is not None:
            self.factory.registry.set_status(self, change)
        self.deliver(wire.PONG)

    def _set_friends(self, friends: frozenset[int]) -> None:
        self.friends = id_list(friends)
        self.factory.registry.set_watch(self, self._watch(self.friends))

    def _watch(self, friends: IdList) -> IdList:
        # A token's friends claim silently narrows what the session may watch.
        claim = self.claim
        if claim is None:
            return friends
        return id_list(f for f in friends if f in claim)

    # -- writing and backpressure --------------------------------------------

    def deliver(self, data: bytes) -> None:
        if self._closing:
            return
        if self._paused:
            self._unsent += len(data)
            if self._unsent > self.factory.config.max_buffer:
                self.slow_consumer()
                return
        if self._direct:
            write_now(self.transport, data)
        else:
            self.transport.write(data)

    def pauseProducing(self) -> None:
        # The transport's buffer is full: the client is not reading.  Twisted
        # calls this on every write while it stays full, so only the first
        # call starts the count.
        if self._paused:
            return
        self._paused = True
        self._unsent = 0
        if self._paused_call is None and not self._closing:
            self._paused_call = self.factory.clock.callLater(
                self.factory.config.timeout, self.slow_consumer
            )

    def resumeProducing(self) -> None:
        self._paused = False
        self._unsent = 0
        if self._paused_call is not None:
            if self._paused_call.active():
                self._paused_call.cancel()
            self._paused_call = None

    def stopProducing(self) -> None:
        pass  # connectionLost follows and cleans up

    def slow_consumer(self) -> None:
        call, self._paused_call = self._paused_call, None
        if call is not None and call.active():
            call.cancel()  # cut off by --max-buffer before the paused timer
        if self._closing:
            return
        self.fatal(ProtocolError(ErrorCode.SLOW_CONSUMER), abort=True)

    # -- timers --------------------------------------------------------------

    # TimeoutMixin's interface, on the factory's shared deadline heap instead
    # of a DelayedCall per connection (see presence.core.timers for why).

    timeOut: float | None = None  # type: ignore[assignment]

    def setTimeout(self, period: float | None) -> float | None:
        previous, self.timeOut = self.timeOut, period
        deadlines = self.factory.deadlines
        if period is None:
            deadlines.cancel(self)
        else:
            deadlines.set(self, self.factory.clock.seconds() + period)
        return previous

    def resetTimeout(self) -> None:
        if self.timeOut is not None:
            self.factory.deadlines.postpone(
                self, self.factory.clock.seconds() + self.timeOut
            )

    def deadline_reached(self) -> None:
        self.timeoutConnection()

    def timeoutConnection(self) -> None:
        if self.user_id is not None and not self._pinged:
            self._pinged = True
            self.deliver(wire.PING)
            self.setTimeout(self.factory.config.timeout / 2)
            return
        self.fatal(ProtocolError(ErrorCode.CLIENT_TIMEOUT))

    # -- closing -------------------------------------------------------------

    def fatal(self, error: ProtocolError, abort: bool = False) -> None:
        """Write a fatal error, then close (abort when the client is not reading)."""
        if self._closing:
            return
        self._exit = EXIT_REASONS.get(error.code, error.message.lower())
        if self.user_id is None:
            self.log.info("{peer} refused: {msg}", peer=self.peer, msg=error.message)
        self.transport.write(wire.error(error.code, error.detail))
        if abort or self._paused:
            self._closing = True
            self.setTimeout(None)
            self.transport.abortConnection()
        else:
            self.close()

    def close(self) -> None:
        """Close cleanly after flushing; abort if the flush never finishes."""
        if self._closing:
            return
        self._closing = True
        self.setTimeout(None)
        # A paused streaming producer would keep loseConnection waiting.
        self.transport.unregisterProducer()
        self.transport.loseConnection()
        self._failsafe = self.factory.clock.callLater(
            CLOSE_FAILSAFE, self.transport.abortConnection
        )


def _sessions(n: int) -> str:
    return "1 session" if n == 1 else f"{n} sessions"


# Whole reads that are a lone ping (answered by pong) or pong (no answer),
# with the answer and the line's length without its terminator.
_KEEPALIVE: dict[bytes, tuple[bytes, int]] = {
    b"%s%s" % (line, end): (answer, len(line))
    for kind, answer in (("ping", wire.PONG), ("pong", b""))
    for line in (b'{"type":"%s"}' % kind.encode(), b'{"type": "%s"}' % kind.encode())
    for end in (b"\n", b"\r\n")
}

_HANDLERS: dict[str, Any] = {
    "ping": PresenceProtocol._on_ping,
    "pong": PresenceProtocol._on_pong,
    "bye": PresenceProtocol._on_bye,
    "status": PresenceProtocol._on_status,
    "friends": PresenceProtocol._on_friends,
    "login": PresenceProtocol._on_login,
}
