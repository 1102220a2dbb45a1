"""L{Session}: one client connection's protocol, whatever carries its bytes.

A session holds everything PROTOCOL.md asks of a connection: the login, the
messages, the limits, the keep-alive schedule, backpressure accounting and
closing.  It talks to its front end (TCP lines, v0, WebSocket) only through
L{IPeer}: write, close, abort, pause and resume reading.  A front end only
frames bytes: it hands the session one message at a time (L{Session.line})
and tells it when its transport fills up or drains.

Every timer runs on the server's clock (C{task.Clock} in tests): the login
timeout, pings and the idle timeout on the shared deadline heap
(L{presence.core.timers.Deadlines}), the rarer slow-consumer cut-off and
close failsafe as plain C{callLater}s.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any

from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from zope.interface import Attribute, Interface, implementer

from presence import wire
from presence.core.interfaces import ISession
from presence.core.registry import Fanout, IdList, id_list
from presence.server.context import Server
from presence.server.v0 import V0Replies
from presence.wire.errors import NOT_FATAL_AFTER_LOGIN, ErrorCode, ProtocolError
from presence.wire.messages import Bye, Friends, Login, Message, Ping, Status, parse

EXIT_REASONS = {
    ErrorCode.CLIENT_TIMEOUT: "client timeout",
    ErrorCode.SLOW_CONSUMER: "slow consumer",
    ErrorCode.SERVER_SHUTTING_DOWN: "server shutting down",
}

# How long a closing connection may take to flush its last line before it is
# aborted (a client that does not read would otherwise hold it forever).
CLOSE_FAILSAFE = 5.0

# A turn's lines for one session go to the transport before the turn ends
# once they reach this size: Twisted's transports pause their producer at
# 64 KiB, and that is where slow-consumer accounting starts.
FLUSH_EARLY = 64 * 1024


class IPeer(Interface):
    """What a session needs of its front end."""

    kind = Attribute('The front end: "tcp" or "websocket" (metrics).')
    address = Attribute("The peer's address as logs print it (str).")
    host = Attribute("The peer's IP address for per-address limits, or None.")

    def write(data: bytes) -> None:
        """Send one or more encoded server lines (the front end frames them)."""

    def close() -> None:
        """Close after what was written is flushed."""

    def abort() -> None:
        """Close at once, dropping what is unsent."""

    def pause_reading() -> None:
        """Stop reading from the client (TCP pushes back)."""

    def resume_reading() -> None:
        """Read from the client again."""


@implementer(ISession)
class Session:
    """One client connection's state and protocol logic (see the module doc)."""

    log = Logger()
    # Tens of thousands of these sit idle: no __dict__.
    __slots__ = (
        "_exit", "_failsafe", "_inbox", "_next_turn", "_out", "_out_size",
        "_paused", "_paused_call", "_pinged", "_queued", "_throttled", "_timeout",
        "_unsent", "claim", "closing", "deadline", "deadline_seq", "friends",
        "host", "peer", "server", "user_id", "v0", "watch_list",
    )

    def __init__(self, server: Server, peer: IPeer) -> None:
        self.server = server
        self.peer = peer
        self.host: str | None = peer.host
        self.user_id: int | None = None
        self.watch_list: IdList | None = None  # the registry's (ISession)
        self.friends: IdList = id_list(())
        self.claim: frozenset[int] | None = None
        # Protocol v0: what replaces the pushed lines (see presence.server.v0).
        self.v0: V0Replies | None = None
        self.closing = False
        self._pinged = False
        self._exit = "connection closed"
        self._paused = False
        self._unsent = 0
        # This turn's lines, written in one go when the turn ends (see
        # presence.server.outbox); None while empty, as nearly always, and a
        # lone line is kept as bytes: a list per delivery is a container the
        # garbage collector counts, and more young collections at 19,000
        # sessions meant full ones during churn (p99 5 ms -> 190 ms).
        self._out: bytes | list[bytes] | None = None
        self._out_size = 0  # of the lines, once there are two or more
        self._paused_call: IDelayedCall | None = None
        self._failsafe: IDelayedCall | None = None
        self._timeout: float | None = None
        # Fair share: messages received but not handled yet, the call that
        # handles more of them next turn, and whether reading is paused.
        # A ProtocolError stands for a framing error, in its place.
        # (None while empty: most sessions never queue, and a deque costs.)
        self._inbox: deque[bytes | ProtocolError] | None = None
        self._queued = 0  # bytes of messages in the inbox
        self._next_turn: IDelayedCall | None = None
        self._throttled = False
        # The deadline heap's bookkeeping (presence.core.timers.TimerOwner).
        self.deadline: float | None = None
        self.deadline_seq = 0

    # -- what the front end calls --------------------------------------------

    def start(self) -> None:
        """The connection is up: count it, refuse it, or start its login timer."""
        self.server.metrics.connected(self.peer.kind)
        refusal = self.server.connection_made(self)
        if refusal:
            self.fatal(ProtocolError(ErrorCode.TOO_MANY_CONNECTIONS, refusal))
            return
        self._set_timer(self.server.config.timeout)

    @property
    def busy(self) -> bool:
        """Whether received messages wait to be handled (fair share)."""
        return bool(self._inbox)

    def received(self, lines: Iterable[bytes]) -> None:
        """Handle messages in order, as many as this turn's budget allows.

        What is left waits for the next reactor turn, and the front end
        stops reading meanwhile, so that TCP pushes back on a client that
        sends faster than its share: nothing is lost, and one read holding
        a thousand messages cannot hold the reactor.
        """
        if self.closing:
            return
        if self._inbox is None and type(lines) is list and len(lines) == 1:
            # One message and none waiting (an idle client's read, nearly
            # always): handled at once, as _turn would, without the queue.
            line = lines[0]
            server = self.server
            if line and server.unfinished + len(line) > server.config.max_unfinished:
                self.fatal(unfinished_too_much())
            else:
                self.line(line)
            return
        lines = list(lines)
        size = sum(map(len, lines))
        self._queued += size
        server = self.server
        server.unfinished += size
        if self._inbox is None:
            self._inbox = deque(lines)
        else:
            self._inbox.extend(lines)
        if size and server.unfinished > server.config.max_unfinished:
            self.fatal(unfinished_too_much())
            return
        if self._next_turn is None:
            self._turn()

    def _turn(self) -> None:
        self._next_turn = None
        server, inbox = self.server, self._inbox
        if inbox is None:
            return
        stop = server.work + server.config.turn_budget
        while inbox and not self.closing:
            line = inbox.popleft()
            if isinstance(line, ProtocolError):
                self.fatal(line)
            else:
                self._queued -= len(line)
                server.unfinished -= len(line)
                self.line(line)
            if server.work >= stop:
                break
        if self.closing:
            self._drop_inbox()
            return
        if inbox:
            if not self._throttled:
                self._throttled = True
                self.peer.pause_reading()
            self._next_turn = server.clock.callLater(0, self._turn)
            return
        self._inbox = None
        if self._throttled:
            self._throttled = False
            self.peer.resume_reading()

    def line(self, line: bytes) -> None:
        """Handle one message (a line without its terminator; maybe blank)."""
        if self.closing:
            return
        self.server.line_work += 1 + (len(line) >> 10)
        if self.user_id is not None:
            # Activity keeps a session alive; before the login nothing but
            # the login itself stops the login timeout.
            self.active()
        if not line or line.isspace():
            return
        if self.user_id is None and len(line) > self.server.config.max_login_line:
            self.fatal(login_line_too_long(self.server.config.max_login_line))
            return
        try:
            self._handle(parse(line, self.server.config.max_friends, self.user_id))
        except ProtocolError as e:
            if self.user_id is not None and e.code in NOT_FATAL_AFTER_LOGIN:
                self.server.metrics.error(e.code)
                self.deliver(wire.error(e.code, e.detail))
            else:
                self.fatal(e)
        except Exception:
            # Nothing a client sends may escape the session; an error here is
            # ours, and costs this session only.
            self.log.failure(
                "unexpected error handling a line from {peer}", peer=self.peer.address
            )
            self.fatal(ProtocolError(ErrorCode.UNKNOWN))
        if self.v0 is not None and not self.closing:
            before = self.v0.pending
            self._write(self.v0.reply())
            self.server.unsent += self.v0.pending - before

    def active(self) -> None:
        """The client sent something: it is alive (after the login)."""
        self._pinged = False
        if self._timeout is not None:
            self.server.deadlines.postpone(
                self, self.server.clock.seconds() + self._timeout
            )

    def framing_error(self, error: ProtocolError) -> None:
        """The input broke the framing (error 9, or 3): fatal, in its turn."""
        if self._inbox:
            self._inbox.append(error)  # after what came before it
        else:
            self.fatal(error)

    def use_v0(self) -> None:
        """This is a v0 connection: answer each message once, push nothing."""
        self.v0 = V0Replies(self.server.config.max_buffer)
        self.server.metrics.retransport(self.peer.kind, "v0")

    def transport_paused(self) -> None:
        """The transport's buffer is full: the client is not reading.

        Twisted says so on every write while it stays full, so only the
        first call starts the count.
        """
        if self._paused:
            return
        self._paused = True
        self._unsent = 0
        if self._paused_call is None and not self.closing:
            self._paused_call = self.server.clock.callLater(
                self.server.config.timeout, self.slow_consumer
            )

    def _drop_inbox(self) -> None:
        self._inbox = None
        self.server.unfinished -= self._queued
        self._queued = 0

    def _drop_unsent(self) -> None:
        self.server.unsent -= self._unsent
        self._unsent = 0

    def _drop_v0_events(self) -> None:
        if self.v0 is not None:
            self.server.unsent -= self.v0.pending
            self.v0.pending = 0

    def transport_resumed(self) -> None:
        self._paused = False
        self._drop_unsent()
        if self._paused_call is not None:
            if self._paused_call.active():
                self._paused_call.cancel()
            self._paused_call = None

    def lost(self) -> None:
        """The connection is gone (closed by either side, or aborted)."""
        self._set_timer(None)
        self._drop_inbox()
        self._drop_unsent()
        self._drop_v0_events()
        self._out = None  # the connection is gone: nowhere to write it
        for call in (self._paused_call, self._failsafe, self._next_turn):
            if call is not None and call.active():
                call.cancel()
        self.closing = True
        server = self.server
        server.metrics.disconnected("v0" if self.v0 is not None else self.peer.kind)
        if self.user_id is not None:
            server.registry.logout(self)
            self.log.info(
                "user {uid} exits: {reason} ({n} left) from {peer}",
                uid=self.user_id,
                reason=self._exit,
                n=_sessions(server.registry.session_count(self.user_id)),
                peer=self.peer.address,
            )
        # Counted out last: the shutdown waits for this, and its "presence
        # stopped" must come after the exit line.
        server.connection_lost(self)

    # -- messages ------------------------------------------------------------

    def _handle(self, message: Message) -> None:
        # A status change first: by far the commonest message of all.
        if isinstance(message, Status):
            self.server.registry.set_status(self, message.change)
        elif isinstance(message, Login):
            if self.user_id is None:
                self._login(message)
            else:
                self._relogin(message)
        elif isinstance(message, Ping):
            self.deliver(wire.PONG)
        elif isinstance(message, Friends):
            if message.friends is not None:
                self._set_friends(message.friends)  # no set of the old list
            else:
                self._set_friends(
                    message.apply(
                        frozenset(self.friends), self.server.config.max_friends
                    )
                )
        elif isinstance(message, Bye):
            self._exit = "bye"
            self.close()
        # Pong: the line itself was the point, it reset the idle timer.

    def _login(self, message: Login) -> None:
        server = self.server
        config = server.config
        uid = message.user_id
        claim = None
        if server.verifier is not None:
            claim = server.verifier.verify(message.token, uid)
        if message.problem is not None:
            raise message.problem
        registry = server.registry
        if registry.session_count(uid) >= config.max_sessions:
            raise ProtocolError(
                ErrorCode.TOO_MANY_CONNECTIONS,
                f"user {uid} has {config.max_sessions} sessions (--max-sessions)",
            )
        self._room_for(message.friends if claim is None else message.friends & claim)
        self.user_id = uid
        self.friends = id_list(message.friends)
        self.claim = claim
        server.metrics.login()
        self.deliver(wire.welcome(uid, config.timeout, config.heartbeat))
        registry.login(self, self._watch(self.friends), message.change)
        # From now on the timer is the ping schedule: a ping after timeout/2 of
        # silence, error 1 after another timeout/2.  With --heartbeat tcp the
        # kernel's keepalive watches the peer: no timer at all, so an idle
        # session costs the server nothing.
        self._set_timer(config.timeout / 2 if config.heartbeat == "app" else None)
        self.log.info(
            "user {uid} joins ({n}) from {peer}",
            uid=uid,
            n=_sessions(registry.session_count(uid)),
            peer=self.peer.address,
        )

    def _relogin(self, message: Login) -> None:
        # Older clients re-send their login every second: it updates the
        # list and status and counts as a ping.
        if message.user_id != self.user_id:
            raise ProtocolError(
                ErrorCode.INVALID_MESSAGE, "already logged in as another user"
            )
        if message.problem is not None:
            raise message.problem
        self._set_friends(message.friends)
        change = message.change
        if change.status is not None or change.text is not None:
            self.server.registry.set_status(self, change)
        self.deliver(wire.PONG)

    def _set_friends(self, friends: frozenset[int]) -> None:
        claim = self.claim
        self._room_for(friends if claim is None else friends & claim)
        self.friends = id_list(friends)
        self.server.registry.set_watch(self, self._watch(self.friends))

    def _room_for(self, watch: frozenset[int]) -> None:
        """Error 11 if watching C{watch} would pass --max-watches (the
        session's current list, if any, gives its entries back)."""
        registry, limit = self.server.registry, self.server.config.max_watches
        current = registry.watch_size(self)
        if len(watch) > current and registry.watches - current + len(watch) > limit:
            raise ProtocolError(
                ErrorCode.TOO_MANY_FRIENDS,
                f"the server watches {limit} ids in all (--max-watches)",
            )

    def _watch(self, friends: IdList) -> IdList:
        # A token's friends claim silently narrows what the session may watch.
        claim = self.claim
        if claim is None:
            return friends
        return id_list(f for f in friends if f in claim)

    # -- writing and backpressure --------------------------------------------

    def deliver(self, data: bytes) -> None:
        if self.closing:
            return
        if self.v0 is not None:
            # Events wait for the v0 client to ask: they count as unsent.
            v0, server = self.v0, self.server
            before = v0.pending
            fed = v0.feed(data)
            server.unsent += v0.pending - before
            if not fed or server.unsent > server.config.max_unsent:
                self.fatal(ProtocolError(ErrorCode.SLOW_CONSUMER))
            return
        if self._paused:
            # Twisted holds what a paused client has not read: bound it per
            # client and for all clients together.
            size = len(data)
            self._unsent += size
            server = self.server
            server.unsent += size
            if (
                self._unsent > server.config.max_buffer
                or server.unsent > server.config.max_unsent
            ):
                self.slow_consumer()
                return
        server = self.server
        server.metrics.deliveries += 1  # also fair share's work (Server.work)
        out = self._out
        if out is None:
            # The common case, a lone line: no size kept (FLUSH_EARLY is
            # about many), and the outbox's bookkeeping inlined.
            self._out = data
            outbox = server.outbox
            outbox.dirty.append(self)
            if outbox.call is None:
                outbox.schedule()
            return
        if isinstance(out, bytes):
            self._out = [out, data]
            size = len(out) + len(data)
        else:
            out.append(data)
            size = self._out_size + len(data)
        self._out_size = size
        if size >= FLUSH_EARLY:
            # Let the transport see it now: its buffer may be full, and
            # then backpressure (and --max-buffer) counts what follows.
            self.flush()

    def flush(self) -> None:
        """Write this turn's lines in one write (the outbox calls it)."""
        out = self._out
        if out is not None:
            self._out = None
            if isinstance(out, bytes):
                self.peer.write(out)
            else:
                self._out_size = 0
                self.peer.write(b"".join(out))

    def _write(self, data: bytes) -> None:
        """Write C{data} now, after this turn's lines (so in order)."""
        out, self._out = self._out, None
        if isinstance(out, bytes):
            data = out + data
        elif out is not None:
            self._out_size = 0
            out.append(data)
            data = b"".join(out)
        self.peer.write(data)

    def slow_consumer(self) -> None:
        self._drop_unsent()  # Twisted drops it with the connection
        call, self._paused_call = self._paused_call, None
        if call is not None and call.active():
            call.cancel()  # cut off by --max-buffer before the paused timer
        if self.closing:
            return
        self.fatal(ProtocolError(ErrorCode.SLOW_CONSUMER), abort=True)

    # -- timers --------------------------------------------------------------

    def _set_timer(self, period: float | None) -> None:
        self._timeout = period
        deadlines = self.server.deadlines
        if period is None:
            deadlines.cancel(self)
        else:
            deadlines.set(self, self.server.clock.seconds() + period)

    def deadline_reached(self) -> None:
        if self.user_id is not None and not self._pinged:
            self._pinged = True
            self.deliver(wire.PING)
            self._set_timer(self.server.config.timeout / 2)
            return
        self.fatal(ProtocolError(ErrorCode.CLIENT_TIMEOUT))

    # -- closing -------------------------------------------------------------

    def fatal(self, error: ProtocolError, abort: bool = False) -> None:
        """Write a fatal error, then close (abort when the client is not reading)."""
        if self.closing:
            return
        self._exit = EXIT_REASONS.get(error.code, error.message.lower())
        self.server.metrics.error(error.code)
        if self.user_id is None and self.server.refusals.refused(
            self.host or self.peer.address, error.message
        ):
            self.log.info(
                "{peer} refused: {msg}", peer=self.peer.address, msg=error.message
            )
        if self.v0 is not None:
            self._drop_v0_events()
            self._write(self.v0.fatal(error.code))
        else:
            self._write(wire.error(error.code, error.detail))
        if abort or self._paused:
            self.closing = True
            self._set_timer(None)
            self.peer.abort()
        else:
            self.close()

    def close(self) -> None:
        """Close cleanly after flushing; abort if the flush never finishes."""
        if self.closing:
            return
        self.closing = True
        self._set_timer(None)
        self.flush()
        self.peer.close()
        self._failsafe = self.server.clock.callLater(CLOSE_FAILSAFE, self.peer.abort)


def fanout_for(server: Server) -> Fanout:
    """The fan-out of C{server}'s registry: one event to several of its
    sessions (L{presence.core.registry.Fanout}).

    It does the work of L{Session.deliver} in its loop for a session that is
    open, pushed to and not paused (nearly every one): a Python call less
    per delivery, the outbox's list and flush looked up once per event, and
    the deliveries counted once.  Any other session gets C{deliver}.
    """
    outbox, metrics = server.outbox, server.metrics

    # (Any: the registry types them as ISession; a server's are Sessions.)
    def deliver_all(sessions: Sequence[Any], data: bytes) -> None:
        if outbox.call is None:
            outbox.schedule()  # at most an empty flush if nobody is added
        push = outbox.dirty.append
        slow = 0
        for s in sessions:
            if s.closing or s.v0 is not None or s._paused:
                s.deliver(data)
                slow += 1
                continue
            out = s._out
            if out is None:
                s._out = data
                push(s)
                continue
            if type(out) is bytes:
                s._out = [out, data]
                size = len(out) + len(data)
            else:
                out.append(data)
                size = s._out_size + len(data)
            s._out_size = size
            if size >= FLUSH_EARLY:
                s.flush()
        metrics.deliveries += len(sessions) - slow  # also fair share's work

    return deliver_all


def flush_all(sessions: list[Any]) -> None:
    """L{Session.flush} for each of C{sessions}, inlined: the server's
    outbox's flush (L{presence.server.outbox.FlushAll}), a Python call less
    per write."""
    for s in sessions:
        out = s._out
        if out is None:
            continue  # flushed early, or lost
        s._out = None
        try:
            if type(out) is bytes:
                s.peer.write(out)
            else:
                s._out_size = 0
                s.peer.write(b"".join(out))
        except Exception:
            # A bug in one front end must not keep the others' lines.
            Session.log.failure("writing a session's lines failed")


def unfinished_too_much() -> ProtocolError:
    """Error 16: this read would pass --max-unfinished for the server."""
    return ProtocolError(
        ErrorCode.TOO_MANY_CONNECTIONS, "the server holds too much unfinished input"
    )


def login_line_too_long(limit: int) -> ProtocolError:
    """Error 9 for a line over --max-login-line before the login."""
    return ProtocolError(ErrorCode.LINE_TOO_LONG, f"limit {limit} before the login")


def _sessions(n: int) -> str:
    return "1 session" if n == 1 else f"{n} sessions"
