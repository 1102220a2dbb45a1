"""The client library: log in, watch friends, change status, leave.

    from presence.client import connect

    session = await connect(reactor, "tcp:127.0.0.1:8081", 1, [2, 3, 4])
    session.add_observer(print)          # one event per presence change
    await session.set_status("away", "lunch")
    await session.bye()

L{connect} fires with a L{Session} once the server's C{welcome} arrived, or
fails with L{PresenceError} (code 8 when the server cannot be reached).  With
C{reconnect=True} a L{ClientService} keeps the session alive across lost
connections, with exponential backoff and jitter, logging in again with the
same watch list and status.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, cast

from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.endpoints import clientFromString
from twisted.internet.error import ConnectingCancelledError
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from presence import wire
from presence.client.protocol import ClientConnection, PresenceError
from presence.wire.errors import ErrorCode, ProtocolError

__all__ = [
    "Connected",
    "Disconnected",
    "ErrorReceived",
    "Event",
    "Friend",
    "PresenceChanged",
    "PresenceError",
    "Retrying",
    "Session",
    "connect",
    "default_retry_policy",
]

# Refusals of a login that the same login would get again: retrying is futile.
LOGIN_REFUSALS = frozenset(
    {
        ErrorCode.JSON_DECODING,
        ErrorCode.INVALID_USER_ID,
        ErrorCode.FRIEND_WITH_YOURSELF,
        ErrorCode.LINE_TOO_LONG,
        ErrorCode.AUTHENTICATION_FAILED,
        ErrorCode.TOO_MANY_FRIENDS,
        ErrorCode.NOT_LOGGED_IN,
        ErrorCode.INVALID_MESSAGE,
    }
)


@dataclass(frozen=True, slots=True)
class Friend:
    """What the session knows about one friend it watches."""

    user_id: int
    online: bool = False
    status: str = "offline"
    text: str = ""
    last_seen: float | None = None


@dataclass(frozen=True, slots=True)
class Connected:
    """The server welcomed the session (again, when C{reconnected})."""

    user_id: int
    timeout: float
    reconnected: bool


@dataclass(frozen=True, slots=True)
class PresenceChanged:
    """A presence event; C{previous} is the friend's state before it."""

    friend: Friend
    previous: Friend | None


@dataclass(frozen=True, slots=True)
class ErrorReceived:
    """The server refused a request; the session goes on."""

    error: PresenceError


@dataclass(frozen=True, slots=True)
class Disconnected:
    """The connection ended: C{error} is None after C{bye}."""

    error: PresenceError | None
    reconnecting: bool


@dataclass(frozen=True, slots=True)
class Retrying:
    """The next connection attempt, number C{attempt}, is C{delay} s away."""

    attempt: int
    delay: float


Event = Connected | PresenceChanged | ErrorReceived | Disconnected | Retrying
Observer = Callable[[Event], object]


def default_retry_policy() -> Callable[[int], float]:
    """1 s, 2 s, 4 s ... up to 30 s, each plus up to 1 s of jitter."""
    return backoffPolicy(initialDelay=0.5, maxDelay=30.0, factor=2.0)


def connect(
    reactor: IReactorTime,
    endpoint: str | IStreamClientEndpoint,
    user_id: int,
    friends: Iterable[int],
    token: str | None = None,
    status: str | None = None,
    text: str | None = None,
    *,
    reconnect: bool = False,
    retry_policy: Callable[[int], float] | None = None,
    observer: Observer | None = None,
    line_observer: Callable[[bytes], object] | None = None,
    address: str | None = None,
    login_timeout: float = 30.0,
) -> Deferred[Session]:
    """Log in; fire with the L{Session} once the server welcomed it.

    C{endpoint} is a client endpoint or a Twisted endpoint string; C{reactor}
    is the clock of every timer (and, for a string, the reactor that
    connects).  C{observer} and C{line_observer} are added before anything
    arrives, so they see the welcome and the whole snapshot.  C{address}
    names the server in messages.

    Without C{reconnect} the Deferred fails with L{PresenceError}: the
    server's code when it refused the login, 8 when it cannot be reached.
    With C{reconnect} unreachable servers are retried (following
    C{retry_policy}, see L{default_retry_policy}); only a login refusal that
    would repeat itself (L{LOGIN_REFUSALS}) makes it fail.
    """
    if isinstance(endpoint, str):
        address = address or endpoint
        endpoint = cast(IStreamClientEndpoint, clientFromString(reactor, endpoint))
    session = Session(
        reactor,
        user_id,
        friends,
        token,
        status,
        text,
        address=address or repr(endpoint),
        login_timeout=login_timeout,
    )
    if observer is not None:
        session.add_observer(observer)
    if line_observer is not None:
        session.add_line_observer(line_observer)
    if reconnect:
        return session._start_service(endpoint, retry_policy or default_retry_policy())
    return session._connect_once(endpoint)


class Session:
    """A logged-in user: its watch list, status, and view of friends.

    C{friends}, C{status} and C{text} are what the server has accepted;
    a change is applied here once the server confirmed it.  C{view} maps
    each watched friend (and any friend the server reported) to a L{Friend};
    it is cleared when the connection drops and rebuilt from the snapshot
    that follows the next welcome, so it never shows a stale friend online.
    """

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        user_id: int,
        friends: Iterable[int],
        token: str | None = None,
        status: str | None = None,
        text: str | None = None,
        *,
        address: str = "",
        login_timeout: float = 30.0,
    ) -> None:
        self.clock = clock
        self.user_id = user_id
        self.friends = frozenset(friends)
        self.token = token
        self.status = status
        self.text = text
        self.address = address
        self.login_timeout = login_timeout
        self.timeout: float | None = None
        self._view: dict[int, Friend] = {}
        self._reset_view()
        self._observers: list[Observer] = []
        self._line_observers: list[Callable[[bytes], object]] = []
        self._conn: ClientConnection | None = None
        self._welcomes = 0
        self._ended = False
        self._end_error: PresenceError | None = None
        self._closed_waiters: list[Deferred[None]] = []
        # Reconnecting sessions only:
        self._service: ClientService | None = None
        self._policy: Callable[[int], float] = default_retry_policy()
        self._attempts = 0
        self._stopping = False
        self._first: Deferred[Session] | None = None

    # -- the public API ------------------------------------------------------

    @property
    def view(self) -> Mapping[int, Friend]:
        return MappingProxyType(self._view)

    @property
    def connected(self) -> bool:
        return self._conn is not None and self._conn.logged_in

    def online(self) -> list[Friend]:
        return [f for _, f in sorted(self._view.items()) if f.online]

    def add_observer(self, observer: Observer) -> None:
        self._observers.append(observer)

    def remove_observer(self, observer: Observer) -> None:
        self._observers.remove(observer)

    def add_line_observer(self, observer: Callable[[bytes], object]) -> None:
        """Call C{observer} with every line the server sends, as sent."""
        self._line_observers.append(observer)

    def set_status(self, status: str, text: str | None = None) -> Deferred[None]:
        """Share a status (online, away, busy, invisible) and a text."""

        def apply() -> None:
            self.status, self.text = status, text or ""

        def check() -> None:
            wire.status_fields({"status": status, "text": text}, required=True)

        return self._change(
            wire.client_message("status", status=status, text=text), apply, check
        )

    def set_friends(self, ids: Iterable[int]) -> Deferred[None]:
        """Replace the watch list."""
        new = list(ids)
        return self._change(
            wire.client_message("friends", friends=new),
            lambda: self._watch(frozenset(new)),
            lambda: self._check_ids(new, "friends"),
        )

    def add_friends(self, ids: Iterable[int]) -> Deferred[None]:
        new = list(ids)
        return self._change(
            wire.client_message("friends", add=new),
            lambda: self._watch(self.friends | frozenset(new)),
            lambda: self._check_ids(new, "add"),
        )

    def remove_friends(self, ids: Iterable[int]) -> Deferred[None]:
        gone = list(ids)
        return self._change(
            wire.client_message("friends", remove=gone),
            lambda: self._watch(self.friends - frozenset(gone)),
            lambda: self._check_ids(gone, "remove"),
        )

    def bye(self) -> Deferred[None]:
        """Leave; fires when the connection is closed (and retries stopped)."""
        if self._ended:
            return succeed(None)
        if self._service is not None:
            if self._conn is not None:
                self._conn.bye()
            self._stop(None)
        elif self._conn is not None:
            self._conn.bye()
        waiting = self.when_closed()
        waiting.addErrback(lambda _: None)
        return waiting

    def when_closed(self) -> Deferred[None]:
        """Fires when the session ended: with None after L{bye}, or with
        the L{PresenceError} that ended it (the server's, or 8 when the
        connection broke and the session does not reconnect)."""
        if self._ended:
            return fail(self._end_error) if self._end_error else succeed(None)
        waiter: Deferred[None] = Deferred()
        self._closed_waiters.append(waiter)
        return waiter

    # -- what the connection tells us ------------------------------------------

    def login_line(self) -> bytes:
        return wire.client_message(
            "login",
            user_id=self.user_id,
            friends=wire.ids(self.friends),
            token=self.token,
            status=self.status,
            text=self.text,
        )

    def welcomed(self, conn: ClientConnection, timeout: float) -> None:
        self._conn = conn
        self.timeout = timeout
        self._attempts = 0
        self._reset_view()
        self._emit(Connected(self.user_id, timeout, self._welcomes > 0))
        self._welcomes += 1
        if self._first is not None and not self._first.called:
            self._first.callback(self)

    def line_received(self, raw: bytes, msg: wire.Json) -> None:
        for observer in list(self._line_observers):
            self._call(observer, raw)

    def presence_received(self, msg: wire.Json) -> None:
        friend = _friend(msg)
        if friend is None:
            self.log.warn("ignoring a malformed presence event: {msg!r}", msg=msg)
            return
        previous = self._view.get(friend.user_id)
        self._view[friend.user_id] = friend
        self._emit(PresenceChanged(friend, previous))

    def request_failed(self, error: PresenceError) -> None:
        self._emit(ErrorReceived(error))

    def connection_lost(
        self, conn: ClientConnection, error: PresenceError | None
    ) -> None:
        welcomed = conn.timeout is not None
        if conn is self._conn:
            self._conn = None
            self.timeout = None
            self._reset_view()
        if self._service is None:
            if welcomed:
                self._end(error)
            return
        if self._stopping:
            return
        if error is not None and (
            error.code == ErrorCode.AUTHENTICATION_FAILED
            or (not welcomed and error.code in LOGIN_REFUSALS)
        ):
            self._stop(error)
            return
        self._emit(Disconnected(error, reconnecting=True))

    # -- connecting ------------------------------------------------------------

    def _connect_once(self, endpoint: IStreamClientEndpoint) -> Deferred[Session]:
        def connected(conn: ClientConnection) -> Deferred[Session]:
            return conn.welcome.addCallback(lambda _: self)

        def unreachable(failure: Failure) -> Failure:
            if failure.check(ConnectingCancelledError):
                # What TCP endpoints raise when cancelled: one type for callers.
                return Failure(CancelledError())
            if not failure.check(PresenceError, CancelledError):
                return Failure(self._unreachable(failure))
            error = failure.value
            if (
                isinstance(error, PresenceError)
                and error.code == ErrorCode.SERVER_CONNECTION
            ):
                # Connected, then lost before the welcome (a TLS handshake
                # that failed, a login timeout): name the server too.
                detail = error.message.removeprefix(f"{error.code.wording}: ")
                return Failure(PresenceError.of(
                    error.code, f"cannot log in at {self.address}: {detail}"))
            return failure

        connecting: Deferred[Any] = endpoint.connect(_ConnectionFactory(self))
        return connecting.addCallback(connected).addErrback(unreachable)

    def _start_service(
        self, endpoint: IStreamClientEndpoint, policy: Callable[[int], float]
    ) -> Deferred[Session]:
        self._policy = policy
        self._first = Deferred(lambda _: self._stop(None))
        self._service = ClientService(
            _ReportingEndpoint(endpoint, self._attempt_failed),
            _ConnectionFactory(self),
            retryPolicy=self._next_delay,
            clock=self.clock,
        )
        self._service.startService()
        return self._first

    def _next_delay(self, _: int) -> float:
        # ClientService counts failed TCP connects only; a server that
        # accepts and then refuses (too many connections, shutting down)
        # must back off too, so the session counts every attempt since the
        # last welcome.
        self._attempts += 1
        delay = self._policy(self._attempts)
        self._emit(Retrying(self._attempts, delay))
        return delay

    def _attempt_failed(self, failure: Failure) -> None:
        cancelled = failure.check(CancelledError, ConnectingCancelledError)
        if not self._stopping and not cancelled:
            self._emit(Disconnected(self._unreachable(failure), reconnecting=True))

    def _unreachable(self, failure: Failure) -> PresenceError:
        return PresenceError.of(
            ErrorCode.SERVER_CONNECTION,
            f"cannot connect to {self.address}: {failure.getErrorMessage()}",
        )

    def _stop(self, error: PresenceError | None) -> None:
        if self._stopping or self._service is None:
            return
        self._stopping = True
        self._service.stopService().addCallback(lambda _: self._end(error))

    def _end(self, error: PresenceError | None) -> None:
        if self._ended:
            return
        self._ended = True
        self._end_error = error
        self._emit(Disconnected(error, reconnecting=False))
        if self._first is not None and not self._first.called:
            self._first.errback(error or CancelledError())
        waiters, self._closed_waiters = self._closed_waiters, []
        for waiter in waiters:
            if error is None:
                waiter.callback(None)
            else:
                waiter.errback(error)

    # -- changes ---------------------------------------------------------------

    def _change(
        self, line: bytes, apply: Callable[[], None], check: Callable[[], None]
    ) -> Deferred[None]:
        if self._conn is not None and self._conn.logged_in:
            return self._conn.request(line).addCallback(lambda _: apply())
        if self._service is None or self._stopping:
            return fail(PresenceError.of(ErrorCode.SERVER_CONNECTION, "not connected"))
        # Between two connections: the change goes with the next login, so
        # check it as the server would, or that login would be refused.
        try:
            check()
        except ProtocolError as e:
            return fail(PresenceError(e.code, e.message))
        apply()
        return succeed(None)

    def _check_ids(self, ids: list[int], field: str) -> None:
        wire.id_set(ids, field, self.user_id, sys.maxsize)

    def _watch(self, friends: frozenset[int]) -> None:
        self.friends = friends
        for gone in self._view.keys() - friends:
            del self._view[gone]
        for new in friends - self._view.keys():
            self._view[new] = Friend(new)

    def _reset_view(self) -> None:
        self._view = {uid: Friend(uid) for uid in sorted(self.friends)}

    def _emit(self, event: Event) -> None:
        for observer in list(self._observers):
            self._call(observer, event)

    def _call(self, observer: Callable[[Any], object], arg: object) -> None:
        # One broken observer must not break the connection or the others.
        try:
            observer(arg)
        except Exception:
            self.log.failure("presence client observer {observer!r} failed",
                             observer=observer)


def _friend(msg: wire.Json) -> Friend | None:
    uid = msg.get("user_id")
    if not isinstance(uid, int) or not wire.is_user_id(uid):
        return None
    online = msg.get("online") is True
    status = msg.get("status")
    text = msg.get("text")
    last_seen = msg.get("last_seen")
    return Friend(
        uid,
        online,
        status if isinstance(status, str) else ("online" if online else "offline"),
        text if isinstance(text, str) else "",
        float(last_seen)
        if isinstance(last_seen, (int, float)) and not isinstance(last_seen, bool)
        else None,
    )


class _ConnectionFactory(Factory):
    """Builds each connection of a L{Session}, on its clock and login timeout."""

    noisy = False

    def __init__(self, session: Session) -> None:
        self.session = session

    def buildProtocol(self, addr: object) -> ClientConnection:
        conn = ClientConnection(self.session, self.session.clock,
                                self.session.login_timeout)
        conn.factory = self
        return conn


@implementer(IStreamClientEndpoint)
class _ReportingEndpoint:
    """An endpoint that tells the session about each failed attempt
    (ClientService only logs them)."""

    def __init__(
        self, inner: IStreamClientEndpoint, failed: Callable[[Failure], None]
    ) -> None:
        self.inner = inner
        self.failed = failed

    def connect(self, factory: Any) -> Deferred[Any]:
        def report(failure: Failure) -> Failure:
            self.failed(failure)
            return failure

        attempt: Deferred[Any] = self.inner.connect(factory)
        return attempt.addErrback(report)
