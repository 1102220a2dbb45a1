"""One client connection: login, keepalive, confirmations and errors.

The connection knows the wire; what the lines mean for a user (the view of
friends, reconnecting, observers) belongs to its owner, L{presence.client}.
Every timer runs on the clock it is given, so tests drive it with
L{twisted.internet.task.Clock}.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Protocol, cast

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime, ITCPTransport
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure

from presence import wire
from presence.wire import keepalive
from presence.wire.errors import NOT_FATAL_AFTER_LOGIN, ErrorCode, ProtocolError

CLIENT_PING = wire.client_message("ping")
CLIENT_PONG = wire.client_message("pong")
BYE = wire.client_message("bye")


class PresenceError(Exception):
    """The server ended or refused something, or it could not be reached.

    C{code} is the protocol's error code (8, SERVER_CONNECTION, when the
    server could not be reached or the connection broke without an error
    message); C{message} is the server's C{msg}, or a description.
    """

    def __init__(self, code: ErrorCode, message: str = "") -> None:
        self.code = code
        self.message = message or code.wording
        super().__init__(code, self.message)

    def __str__(self) -> str:
        return f"error {int(self.code)}: {self.message}"

    @classmethod
    def of(cls, code: ErrorCode, detail: str) -> PresenceError:
        """An error this client found itself, worded like the server's."""
        return cls(code, f"{code.wording}: {detail}")

    @classmethod
    def from_server(cls, msg: wire.Json) -> PresenceError:
        raw_code, text = msg.get("error"), msg.get("msg")
        try:
            code = ErrorCode(raw_code if type(raw_code) is int else -1)
        except ValueError:
            # A code newer than this client: keep the server's words for it.
            code = ErrorCode.UNKNOWN
            text = f"{text} (code {raw_code!r})"
        return cls(code, text if isinstance(text, str) else "")


class ConnectionOwner(Protocol):
    """What a L{ClientConnection} tells the session that owns it."""

    def login_line(self) -> bytes: ...

    def welcomed(self, conn: ClientConnection, timeout: float) -> None: ...

    def line_received(self, raw: bytes, msg: wire.Json) -> None: ...

    def presence_received(self, msg: wire.Json) -> None: ...

    def request_failed(self, error: PresenceError) -> None: ...

    def connection_lost(
        self, conn: ClientConnection, error: PresenceError | None
    ) -> None: ...


class ClientConnection(LineReceiver):
    """The client side of one connection.

    It logs in as soon as it connects, answers the server's pings and pings
    the server itself after C{timeout / 3} seconds in which it sent nothing
    (so the server never has to ask), and gives up on a server that has said
    nothing for a whole C{timeout} (3 unanswered pings: a dead peer or a
    half-open TCP connection).  When the welcome says C{"heartbeat":"tcp"}
    it does neither: it turns on TCP keepalive on its socket instead
    (L{presence.wire.keepalive}, the server's settings), and an idle
    connection then costs no timer on either side.

    Requests (status and friends changes) are followed by a ping: the server
    answers in order, so the pong confirms the request and an error before it
    rejects the request.  C{_pending} holds one entry per ping in flight:
    the request's Deferred, or None for a keepalive ping.
    """

    delimiter = b"\n"
    # Server lines are small; the limit only guards against a broken peer.
    MAX_LENGTH = 1 << 20
    log = Logger()

    def __init__(
        self, owner: ConnectionOwner, clock: IReactorTime, login_timeout: float
    ) -> None:
        self.owner = owner
        self.clock = clock
        self.login_timeout = login_timeout
        self.welcome: Deferred[float] = Deferred(lambda _: self._give_up("cancelled"))
        self.timeout: float | None = None
        self.heartbeat = "app"  # or "tcp", as the welcome says
        self._pending: deque[Deferred[None] | None] = deque()
        self._error: PresenceError | None = None
        self._leaving = False
        self._bye_sent = False
        self._lost = False
        self._ping_call: IDelayedCall | None = None
        self._deadline_call: IDelayedCall | None = None

    @property
    def logged_in(self) -> bool:
        return self.timeout is not None and not self._lost

    @property
    def _out(self) -> ITCPTransport:
        # Every stream transport this runs on (TCP, TLS, tests') can abort.
        assert self.transport is not None
        return cast(ITCPTransport, self.transport)

    # -- sending ------------------------------------------------------------

    def connectionMade(self) -> None:
        self._deadline_call = self.clock.callLater(
            self.login_timeout,
            self._give_up,
            f"no welcome within {self.login_timeout:g} s",
        )
        self._send(self.owner.login_line())

    def request(self, line: bytes) -> Deferred[None]:
        """Send a request; the Deferred fires once the server accepted it."""
        if not self.logged_in or self._leaving:
            return _failed(
                PresenceError.of(ErrorCode.SERVER_CONNECTION, "not connected")
            )
        done: Deferred[None] = Deferred()
        self._pending.append(done)
        self._send(line)
        self._send(CLIENT_PING)
        return done

    def bye(self) -> None:
        """Say goodbye and close, once the requests in flight are answered
        (so that their Deferreds tell the truth); no new requests meanwhile."""
        if self._leaving or self._lost:
            return
        self._leaving = True
        if self._ping_call is not None and self._ping_call.active():
            self._ping_call.cancel()
        self._ping_call = None
        self._bye_when_settled()

    def _bye_when_settled(self) -> None:
        if self._bye_sent or self._lost:
            return
        if any(d is not None and not d.called for d in self._pending):
            return
        self._bye_sent = True
        self._cancel_timers()
        if self.logged_in:
            self._out.write(BYE)
        self._out.loseConnection()

    def _send(self, line: bytes) -> None:
        self._out.write(line)
        # Logged in with JSON pings (not "tcp"): the keepalive timer runs.
        if self.timeout is not None and self.heartbeat == "app" and not self._leaving:
            self._ping_call = _restart(
                self.clock, self._ping_call, self.timeout / 3, self._keepalive
            )

    def _keepalive(self) -> None:
        self._ping_call = None
        self._pending.append(None)
        self._send(CLIENT_PING)

    # -- receiving ----------------------------------------------------------

    def lineReceived(self, line: bytes) -> None:
        self._receive(line)
        if self._leaving:
            self._bye_when_settled()

    def _receive(self, line: bytes) -> None:
        if self._bye_sent:
            return
        if self.timeout is not None and self.heartbeat == "app":
            self._deadline_call = _restart(
                self.clock, self._deadline_call, self.timeout, self._server_silent
            )
        line = line.rstrip(b"\r")
        if not line.strip():
            return
        try:
            msg = wire.decode_line(line)
            kind = wire.message_type(msg)
        except ProtocolError as e:
            self._give_up(f"the server sent a bad line ({e.message})", e.code)
            return
        self.owner.line_received(line, msg)
        handler = self._handlers.get(kind)
        if handler is not None:
            handler(self, msg)
        # Unknown types are ignored: a newer server may add some.

    def _on_welcome(self, msg: wire.Json) -> None:
        if self.timeout is not None:
            return
        timeout = msg.get("timeout")
        if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or (
            not timeout > 0
        ):
            self._give_up(f"bad timeout in welcome: {timeout!r}")
            return
        self.timeout = float(timeout)
        if self._deadline_call is not None and self._deadline_call.active():
            self._deadline_call.cancel()
        self._deadline_call = None
        if msg.get("heartbeat") == "tcp":
            # The server neither pings nor expects pings: the kernel watches
            # the connection, as it does on the server's side.
            self.heartbeat = "tcp"
            keepalive.enable(self.transport, self.timeout)
        else:
            # The first message, then silence: the keepalive starts from now.
            self._ping_call = self.clock.callLater(self.timeout / 3, self._keepalive)
            self._deadline_call = self.clock.callLater(
                self.timeout, self._server_silent
            )
        self.owner.welcomed(self, self.timeout)
        self.welcome.callback(self.timeout)

    def _on_ping(self, msg: wire.Json) -> None:
        self._send(CLIENT_PONG)

    def _on_pong(self, msg: wire.Json) -> None:
        if not self._pending:
            return
        done = self._pending.popleft()
        if done is not None and not done.called:
            done.callback(None)

    def _on_presence(self, msg: wire.Json) -> None:
        if self.timeout is not None:
            self.owner.presence_received(msg)

    def _on_error(self, msg: wire.Json) -> None:
        error = PresenceError.from_server(msg)
        if self.timeout is not None and error.code in NOT_FATAL_AFTER_LOGIN:
            # Responses come in order, so the error answers the oldest
            # request still waiting; its pong will follow and find it done.
            for done in self._pending:
                if done is not None and not done.called:
                    done.errback(error)
                    return
            self.owner.request_failed(error)
            return
        # Fatal: the server closes after it; no need to wait for that.
        self._error = error
        self._out.loseConnection()

    _handlers = {
        "welcome": _on_welcome,
        "ping": _on_ping,
        "pong": _on_pong,
        "presence": _on_presence,
        "error": _on_error,
    }

    def lineLengthExceeded(self, line: bytes) -> None:
        self._give_up(f"the server sent a line over {self.MAX_LENGTH} bytes")

    # -- ending -------------------------------------------------------------

    def _server_silent(self) -> None:
        self._deadline_call = None
        assert self.timeout is not None
        self._give_up(f"the server was silent for {self.timeout:g} s")

    def _give_up(
        self, why: str, code: ErrorCode = ErrorCode.SERVER_CONNECTION
    ) -> None:
        self._deadline_call = None
        if self._error is None:
            self._error = PresenceError.of(code, why)
        self._out.abortConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._lost = True
        self._cancel_timers()
        error = self._error
        if error is None and not self._leaving:
            error = PresenceError.of(
                ErrorCode.SERVER_CONNECTION,
                f"connection lost: {reason.getErrorMessage()}",
            )
        pending, self._pending = self._pending, deque()
        closed = error or PresenceError.of(ErrorCode.SERVER_CONNECTION, "closed")
        for done in pending:
            if done is not None and not done.called:
                done.errback(closed)
        if not self.welcome.called:
            self.welcome.errback(closed)
            # Nobody else may be waiting for the welcome: don't log it.
            self.welcome.addErrback(lambda _: None)
        self.owner.connection_lost(self, error)

    def _cancel_timers(self) -> None:
        for call in (self._ping_call, self._deadline_call):
            if call is not None and call.active():
                call.cancel()
        self._ping_call = self._deadline_call = None


def _restart(
    clock: IReactorTime,
    call: IDelayedCall | None,
    delay: float,
    f: Callable[[], None],
) -> IDelayedCall:
    if call is not None and call.active():
        call.reset(delay)
        return call
    return clock.callLater(delay, f)


def _failed(error: Exception) -> Deferred[None]:
    d: Deferred[None] = Deferred()
    d.errback(error)
    return d
