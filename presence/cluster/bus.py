"""L{RedisBus}: the bus of cluster mode, on Redis (see docs/cluster.rst).

A node publishes its L{Share} of each user and the status writes of its
sessions with one script call each (L{presence.cluster.scripts.APPLY}), which
computes the user's global state as L{presence.core.bus.MemoryHub} does and
PUBLISHes each new version on the user's channel.  The node SUBSCRIBEs to the
channels of the users its sessions watch (many per command), then reads their
states, and tells its listener each state newer than the last it told.

Two connections, as Synapse does with txredisapi: one in subscribed mode, one
for commands.  When either is lost the node keeps serving: publishes are
remembered as its current shares.  When both are back it re-asserts every
share (a status write applies only if newer than the stored one), subscribes
again, reads every followed user's state back and calls the listener's
C{resync}: the registry tells its watchers exactly what changed meanwhile.

Liveness: every node refreshes its entry in a sorted set (Redis time) at
least once a second; any node that finds an entry older than the TTL declares
that node dead, takes a lease on it and removes its shares, many users per
script (its users go offline, last seen when the node was last alive).  A
node that finds itself declared dead (it was cut off for longer than the TTL)
joins again under a new incarnation, so that the cleanup of the old one
cannot remove what it asserts again.
"""

from __future__ import annotations

import os
import random
import secrets
import socket
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import txredisapi
from twisted.application import service
from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet import defer, task
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from presence.cluster import scripts
from presence.cluster.batch import Change, Turn, applies, apply_one
from presence.cluster.codec import (
    absent,
    decode_event,
    decode_state,
    encode_share,
    format_at,
    share_kept,
)
from presence.cluster.connection import (
    CommandConnection,
    ConnectionFactory,
    RedisAddress,
    SubscriberConnection,
    encode_text,
)
from presence.cluster.scripts import Script
from presence.core.interfaces import IBus, IStateListener, Share, UserState
from presence.wire import StatusChange

log = Logger()

# Channels per SUBSCRIBE command, ids per SADD, users per cleanup round, and
# users per cleanup script (REAP_MANY: long enough to spread the cost of a
# call, short enough not to hold Redis for more than a few milliseconds).
CHUNK = 5000
REAP_CHUNK = 2000
REAP_BATCH = 100
_CONTROL = scripts.CONTROL.encode()

# A status write remembered for re-asserting: status ("" = none), whether the
# text is written, the text, and when (the node's clock).
_Write = tuple[str, bool, str, float]


def default_node_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class _Batch:
    """A SUBSCRIBE command sent: confirmations still due, then what to do."""

    __slots__ = ("remaining", "uids", "waiter")

    def __init__(
        self, remaining: int, uids: list[int], waiter: defer.Deferred[None] | None
    ) -> None:
        self.remaining = remaining
        self.uids = uids
        self.waiter = waiter


@implementer(IBus)
class RedisBus(service.Service):
    """One node's bus on Redis.  Start it as a service (it connects then)."""

    def __init__(
        self,
        address: RedisAddress,
        node: str | None = None,
        ttl: float = 10.0,
        reactor: Any = None,
        batch_delay: float = 0.0,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as default

            reactor = default
        self.address = address
        self.node = node or default_node_id()
        self.ttl = ttl
        # Refresh (and judge others) twice a second, or ten times per TTL when
        # that is shorter; reconnect as often: a node cut off for less than
        # the TTL minus about two of these is back before it is judged dead.
        self.interval = min(ttl / 10, 0.5)
        # A connection that answers nothing for this long is dropped.
        self.silence = max(ttl / 2, 2 * self.interval)
        # How long a change may wait for others to share its script call: 0,
        # the end of the reactor turn (no delay: Twisted writes then anyway);
        # more trades latency for fewer wakeups of Redis (docs/cluster.rst).
        self.batch_delay = batch_delay
        self._reactor = reactor
        self.incarnation = self._new_incarnation()
        self._registered = False
        self._joined = False
        self._up_since: float | None = None
        self.up = False
        self.listener: IStateListener | None = None
        # Set by the server: end this node's sessions of a user (the admin
        # API's disconnect, from whichever node it was asked of).
        self.on_disconnect: Callable[[int], object] | None = None
        # Set by the server: run a call once the reactor has handled the
        # events of this turn (False: it is not handling any, use callLater).
        # Cheaper than a callLater(0), and the turn's commands go out in
        # this reactor iteration instead of the next.
        self.at_turn_end: Callable[[Callable[[], None]], bool] | None = None

        # What this node holds.
        self._shares: dict[int, Share] = {}
        self._writes: dict[int, _Write] = {}
        self._since: dict[int, float] = {}  # when this node's share began
        self._gone: dict[int, float] = {}  # removed while Redis was away
        # What it follows, and what it told.
        self._followed: set[int] = set()
        self._versions: dict[int, int] = {}
        self._states: dict[int, UserState] = {}
        self._buffer: dict[int, tuple[UserState, bool]] = {}  # while recovering
        # Subscriptions on the current subscriber connection.
        self._requested: set[int] = set()
        self._to_sub: set[int] = set()
        self._to_unsub: set[int] = set()
        self._batches: deque[_Batch] = deque()
        self._flush_call: IDelayedCall | None = None
        # This turn's changes, sent at its end (L{batch}).
        self._turn: Turn | None = None
        self._turn_call: IDelayedCall | None = None

        self._cmd: CommandConnection | None = None
        self._sub: SubscriberConnection | None = None
        self._services: list[ClientService] = []
        self._generation = 0
        self._recovering = True
        self._asserted = False
        self._beat_sent: float | None = None
        self._ping_sent: float | None = None
        self._lost_logged = False
        self._reaping: set[str] = set()
        self._reap_many = True  # False once Redis Cluster refused a batch
        self._apply_many = True  # likewise
        self._up_waiters: list[defer.Deferred[None]] = []
        # Kept as they were after Redis lost its data, until confirmed.
        self._unconfirmed: set[int] = set()
        self._calls: list[IDelayedCall] = []
        self._beat = task.LoopingCall(self._tick)
        self._beat.clock = reactor
        self.stats = {"applies": 0, "apply_scripts": 0, "subscribes": 0,
                      "reads": 0, "resyncs": 0, "reap_scripts": 0}

    def _new_incarnation(self) -> str:
        return f"{self.node}/{secrets.token_hex(4)}"

    # -- service ---------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        # (Twisted's default jitter adds up to a second: too much here.)
        jitter = self.interval / 4
        policy = backoffPolicy(
            initialDelay=min(0.1, self.interval), factor=2.0,
            maxDelay=self.interval, jitter=lambda: random.random() * jitter,
        )
        for kind in (CommandConnection, SubscriberConnection):
            factory = ConnectionFactory(kind, self, self.address)
            endpoint = self.address.endpoint(self._reactor, timeout=self.silence)
            svc = ClientService(endpoint, factory, retryPolicy=policy,
                                clock=self._reactor)
            self._services.append(svc)
            svc.startService()
        self._beat.start(self.interval, now=False)
        log.info(
            "cluster node {node} (incarnation {inc}) using Redis at {address}, "
            "node TTL {ttl} s",
            node=self.node, inc=self.incarnation, address=str(self.address),
            ttl=self.ttl,
        )

    async def _stop(self) -> None:
        if self._beat.running:
            self._beat.stop()
        for call in self._calls:
            if call.active():
                call.cancel()
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._send_turn()
        cmd = self._cmd
        if cmd is not None and self._asserted:
            try:
                await _within(self._reactor, 2.0, cmd.call("PING"))
                now = await self._heartbeat(cmd, "leave")
                await _within(
                    self._reactor, 3.0,
                    defer.ensureDeferred(
                        self._reap(cmd, self.incarnation, float(now[1]))
                    ),
                )
            except Exception as e:
                log.warn("leaving the cluster cleanly failed: {e!r}", e=e)
        self._generation += 1
        for svc in self._services:
            await svc.stopService()
        self._services = []

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        return defer.ensureDeferred(self._stop())

    # -- IBus ------------------------------------------------------------------

    def attach(self, listener: IStateListener) -> None:
        self.listener = listener

    def publish(
        self, uid: int, share: Share | None, change: StatusChange | None, at: float
    ) -> None:
        before = self._shares.get(uid)
        had = before is not None
        write: _Write | None = None
        if share is None:
            self._shares.pop(uid, None)
            self._writes.pop(uid, None)
            self._since.pop(uid, None)
        else:
            self._shares[uid] = share
            if not had:
                self._since[uid] = at
            if change is not None:
                write = (change.status or "", change.text is not None,
                         change.text or "", at)
                prev = self._writes.get(uid)
                if prev is not None:
                    self._writes[uid] = (
                        write[0] or prev[0], write[1] or prev[1],
                        write[2] if write[1] else prev[2], at,
                    )
                else:
                    self._writes[uid] = write
        # A removal is remembered (with its time, the user's last_seen) until
        # Redis confirms it: a reconnect sends the unconfirmed ones again.
        if share is None:
            if had:
                self._gone[uid] = at
        else:
            self._gone.pop(uid, None)
        if not self._asserted or self._cmd is None:
            return
        turn = self._turn
        if turn is None:
            turn = self._turn = Turn()
            at_end = self.at_turn_end
            if self.batch_delay or at_end is None or not at_end(self._send_turn):
                self._turn_call = self._reactor.callLater(self.batch_delay,
                                                          self._send_turn)
        if share is None:
            if had:
                turn.changes.append(self._change(uid, "del", None, None, at))
                turn.removed.append((uid, at))
        else:
            if not had:
                turn.added.append(uid)
            # Only the status write can change: the scripts' shortcut.
            mode = "status" if share == before and share.sessions else "set"
            turn.changes.append(self._change(uid, mode, share, write, at))

    def _send_turn(self) -> None:
        """Send what this turn's publishes have to tell Redis (L{batch})."""
        turn, self._turn = self._turn, None
        if self._turn_call is not None:
            if self._turn_call.active():
                self._turn_call.cancel()
            self._turn_call = None
        cmd = self._cmd
        if turn is None or cmd is None or not self._asserted:
            return  # (a recovery asserts everything again)
        commands, removed = turn.commands(self.incarnation, self._shares,
                                          self._apply_many)
        self.stats["applies"] += len(turn.changes)
        cmd.send_many([encode_text(c) for c in commands], len(commands))
        self.stats["apply_scripts"] += len(commands) - bool(turn.added)
        if removed:
            d = cmd.call("SREM", scripts.users_key(self.incarnation),
                         *(uid for uid, _ in removed))
            d.addCallback(self._removed, removed)
            self._send(d)

    def _drop_turn(self) -> None:
        self._turn = None
        if self._turn_call is not None and self._turn_call.active():
            self._turn_call.cancel()
        self._turn_call = None

    def _removed(self, _: object, removed: list[tuple[int, float]]) -> None:
        for uid, at in removed:
            if self._gone.get(uid) == at:
                del self._gone[uid]

    def follow(self, uids: Iterable[int]) -> None:
        for uid in uids:
            self._followed.add(uid)
            self._to_unsub.discard(uid)
            self._to_sub.add(uid)
        self._schedule_flush()

    def unfollow(self, uids: Iterable[int]) -> None:
        for uid in uids:
            self._followed.discard(uid)
            self._versions.pop(uid, None)
            self._states.pop(uid, None)
            self._buffer.pop(uid, None)
            self._to_sub.discard(uid)
            self._to_unsub.add(uid)
        self._schedule_flush()

    def known(self, uid: int) -> UserState | None:
        return self._states.get(uid)

    # -- more than IBus --------------------------------------------------------

    def flush(self) -> defer.Deferred[Any]:
        """Fires when Redis has answered every command sent so far (this
        turn's publishes are sent first)."""
        self._send_turn()
        if self._cmd is None:
            return defer.fail(txredisapi.ConnectionError("not connected"))
        d: defer.Deferred[Any] = self._cmd.call("PING")
        return d

    def when_up(self) -> defer.Deferred[None]:
        """Fires when the bus is (or is next) up: registered, shares
        asserted, followed users read back."""
        if self.up:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._up_waiters.append(d)
        return d

    async def sync(self) -> None:
        """Wait until every follow so far has been subscribed and read back,
        every command answered, and every event Redis sent so far received.

        With several nodes: C{sync} each publisher, then each subscriber.
        """
        self._send_turn()
        cmd, sub = self._cmd, self._sub
        if cmd is None or sub is None:
            raise txredisapi.ConnectionError("Redis is unreachable")
        self._flush()
        waiter: defer.Deferred[None] = defer.Deferred()
        self._batches.append(_Batch(0, [], waiter))
        self._advance()
        await waiter
        await cmd.call("PING")
        await sub.ping()

    async def read(self, uids: Sequence[int]) -> list[UserState | None]:
        """The stored states of these users (None: absent), from Redis."""
        self._send_turn()
        cmd = self._cmd
        if cmd is None:
            raise txredisapi.ConnectionError("Redis is unreachable")
        return await self._read(cmd, uids)

    async def disconnect(self, uid: int) -> int:
        """End every session of C{uid} on every node (the admin API's
        C{/v1/disconnect}): each node, this one included, calls its
        C{on_disconnect(uid)}.  Returns the user's live sessions as Redis
        counts them just before."""
        self._send_turn()
        cmd = self._cmd
        if cmd is None:
            raise txredisapi.ConnectionError("Redis is unreachable")
        state = (await self._read(cmd, [uid]))[0]
        await cmd.call("PUBLISH", scripts.CONTROL, f"disconnect|{uid}")
        return state.sessions if state is not None and state.present else 0

    async def live_nodes(self) -> int:
        """How many nodes are live now (for metrics)."""
        cmd = self._cmd
        if cmd is None:
            raise txredisapi.ConnectionError("Redis is unreachable")
        count: int = await cmd.call("ZCARD", scripts.NODES)
        return count

    # -- connections -----------------------------------------------------------

    def connection_ready(self, conn: Any) -> None:
        if isinstance(conn, SubscriberConnection):
            self._sub = conn
            self._requested.clear()
            self._batches.clear()
            self._to_sub = set(self._followed)
            self._to_unsub.clear()
            self._ping_sent = None
            conn.send("SUBSCRIBE", scripts.CONTROL)
            self._batches.append(_Batch(1, [], None))
            self._flush()
        else:
            self._cmd = conn
            self._beat_sent = None
        if self._cmd is not None and self._sub is not None:
            self._start_recovery()

    def connection_lost(self, conn: Any, reason: Failure) -> None:
        if conn is self._sub:
            self._sub = None
            self._requested.clear()
            self._batches.clear()
        elif conn is self._cmd:
            self._cmd = None
        else:
            return
        self._lose(reason.getErrorMessage())

    def _lose(self, why: str) -> None:
        self._drop_turn()
        self._up_since = None
        self._generation += 1
        self._recovering = True
        self._asserted = False
        if self.up or not self._lost_logged:
            log.warn(
                "Redis lost ({why}): serving local sessions, reconnecting",
                why=why,
            )
            self._lost_logged = True
        self.up = False

    def message(self, channel: bytes, payload: bytes) -> None:
        if channel == _CONTROL:
            self._control(payload)
            return
        try:
            state = decode_event(payload)
        except ValueError:
            log.error("bad event from Redis: {payload!r}", payload=payload[:200])
            return
        self._offer(state, True)

    def _control(self, payload: bytes) -> None:
        what, _, arg = payload.partition(b"|")
        if what == b"disconnect" and arg.isdigit():
            if self.on_disconnect is not None:
                self.on_disconnect(int(arg))
        else:
            log.warn("unknown cluster control message {p!r}", p=payload[:100])

    def subscribed(self) -> None:
        if self._batches:
            self._batches[0].remaining -= 1
        self._advance()

    # -- subscriptions ---------------------------------------------------------

    def _schedule_flush(self) -> None:
        if self._flush_call is None and self._sub is not None:
            self._flush_call = self._reactor.callLater(0, self._flush)

    def _flush(self) -> None:
        if self._flush_call is not None:
            if self._flush_call.active():
                self._flush_call.cancel()
            self._flush_call = None
        sub = self._sub
        if sub is None:
            return
        unsubs = [u for u in self._to_unsub if u in self._requested]
        self._to_unsub.clear()
        for i in range(0, len(unsubs), CHUNK):
            chunk = unsubs[i:i + CHUNK]
            sub.send("UNSUBSCRIBE", *map(scripts.channel, chunk))
            self._requested.difference_update(chunk)
        fresh: list[int] = []
        again: list[int] = []
        for uid in self._to_sub:
            (again if uid in self._requested else fresh).append(uid)
        self._to_sub.clear()
        for i in range(0, len(fresh), CHUNK):
            chunk = fresh[i:i + CHUNK]
            sub.send("SUBSCRIBE", *map(scripts.channel, chunk))
            self.stats["subscribes"] += 1
            self._requested.update(chunk)
            self._batches.append(_Batch(len(chunk), chunk, None))
        if again:
            # Subscribed already (followed again): just read them, after the
            # subscriptions in flight.
            self._batches.append(_Batch(0, again, None))
            self._advance()

    def _advance(self) -> None:
        while self._batches and self._batches[0].remaining <= 0:
            batch = self._batches.popleft()
            if batch.waiter is not None:
                batch.waiter.callback(None)
            uids = [u for u in batch.uids if u in self._followed]
            if uids and self._cmd is not None:
                d = defer.ensureDeferred(self._read(self._cmd, uids))
                d.addCallback(self._offer_read, self._generation)
                self._send(d)

    def _offer_read(self, states: list[UserState | None], generation: int) -> None:
        if generation != self._generation:
            return  # the recovery reads everything again
        for state in states:
            if state is not None:
                self._offer(state, False)

    def _offer(self, state: UserState, event: bool) -> None:
        uid = state.uid
        if uid not in self._followed:
            return
        if self._recovering:
            held = self._buffer.get(uid)
            if held is None or held[0].version < state.version:
                self._buffer[uid] = (state, event)
            return
        if state.version <= self._versions.get(uid, -1):
            return
        self._unconfirmed.discard(uid)
        self._versions[uid] = state.version
        if state.present:
            self._states[uid] = state
        elif self._states.pop(uid, None) is None and not event:
            return  # read back absent: nothing to tell
        if self.listener is not None:
            self.listener.user_changed(state)

    # -- Redis commands --------------------------------------------------------

    def _send(self, d: defer.Deferred[Any]) -> None:
        d.addErrback(self._failed)

    def command_failed(self, error: Exception) -> None:
        """A command sent without waiting for its reply failed."""
        self._failed(Failure(error))

    def _failed(self, failure: Failure) -> None:
        if failure.check(txredisapi.ConnectionError, defer.CancelledError):
            return  # the recovery after the reconnect puts it right
        error = str(failure.value) if failure.check(txredisapi.ResponseError) else ""
        if error.startswith("NOSCRIPT"):
            # Scripts flushed under us: reconnect, which loads them again and
            # re-asserts everything (a command may have been lost).
            self._reconnect("Redis forgot our scripts: reconnecting")
            return
        if error.startswith("CROSSSLOT") and self._apply_many:
            # Redis Cluster refused an APPLY_MANY (its users' keys sit in
            # several slots): those changes are lost, so re-assert everything
            # as after an outage, one APPLY per change from now on.
            self._apply_many = False
            self._reconnect("Redis Cluster: one script per change; reconnecting")
            return
        log.failure("Redis command failed", failure)

    def _reconnect(self, why: str) -> None:
        if self._cmd is not None and self._asserted:
            log.warn(why)
            self._asserted = False
            self._cmd.transport.loseConnection()

    def _evalsha(
        self,
        cmd: CommandConnection,
        script: Script,
        keys: Sequence[str],
        args: Sequence[str | int],
    ) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = cmd.call(
            "EVALSHA", script.sha, len(keys), *keys, *args
        )
        return d

    def _apply(
        self,
        cmd: CommandConnection,
        uid: int,
        mode: str,
        share: Share | None,
        write: _Write | None,
        at: float,
        incarnation: str | None = None,
    ) -> defer.Deferred[Any]:
        """Run one APPLY now (not at the end of the turn)."""
        self.stats["applies"] += 1
        self.stats["apply_scripts"] += 1
        change = self._change(uid, mode, share, write, at)
        return cmd.call(*apply_one(incarnation or self.incarnation, change))

    def _change(
        self,
        uid: int,
        mode: str,
        share: Share | None,
        write: _Write | None,
        at: float,
    ) -> Change:
        """A change as the APPLY scripts take it (see their arguments)."""
        status, has_text, text, written = write or ("", False, "", at)
        encoded = "" if share is None else encode_share(
            share, self._since.get(uid, at), self._writes.get(uid))
        return (
            uid,
            mode,
            encoded,
            str(share_kept(encoded)) if mode == "status" else "",
            status,
            "1" if has_text else "0",
            text,
            format_at(at),
            format_at(written),
        )

    def _heartbeat(self, cmd: CommandConnection, mode: str) -> defer.Deferred[Any]:
        # Judge others only after being up for a TTL ourselves: after a Redis
        # outage every node gets that long to reconnect before it is dead.
        since = self._up_since
        judge = since is not None and self._reactor.seconds() - since >= self.ttl
        return self._evalsha(
            cmd,
            scripts.HEARTBEAT,
            (scripts.NODES, scripts.DEAD, scripts.NAMES),
            (self.incarnation, format_at(self.ttl), mode, self.node,
             "1" if judge else "0"),
        )

    async def _read(
        self, cmd: CommandConnection, uids: Sequence[int]
    ) -> list[UserState | None]:
        """Every user's stored state, in one round trip (pipelined HGETs)."""
        self.stats["reads"] += 1
        ds = [cmd.call("HGET", scripts.user_key(uid), scripts.STATE)
              for uid in uids]
        replies = await defer.gatherResults(ds, consumeErrors=True)
        return [
            None if state is None else decode_state(uid, state)
            for uid, state in zip(uids, replies, strict=True)
        ]

    # -- recovery --------------------------------------------------------------

    def _start_recovery(self) -> None:
        self._drop_turn()
        self._generation += 1
        self._recovering = True
        self._asserted = False
        generation = self._generation
        d = defer.ensureDeferred(self._recover(generation))
        d.addErrback(self._recovery_failed, generation)

    def _recovery_failed(self, failure: Failure, generation: int) -> None:
        if generation != self._generation or failure.check(
            txredisapi.ConnectionError
        ):
            return  # lost again: the next connection recovers
        log.failure("recovery from a Redis outage failed; retrying", failure)
        self._reactor.callLater(1.0, self._retry_recovery, generation)

    def _retry_recovery(self, generation: int) -> None:
        if generation == self._generation and self._cmd and self._sub:
            self._start_recovery()

    async def _recover(self, generation: int) -> None:
        cmd = self._cmd
        assert cmd is not None
        for script in scripts.SCRIPTS:
            await cmd.call("SCRIPT", "LOAD", script.source)
        if generation != self._generation:
            return
        reply = await self._heartbeat(cmd, "beat" if self._registered else "register")
        gone = reply[0] == b"gone"
        if gone:
            if self._registered:
                old, self.incarnation = self.incarnation, self._new_incarnation()
                log.warn(
                    "Redis no longer counts {old} as live (declared dead, or Redis "
                    "lost its data): joining again as {inc}",
                    old=old, inc=self.incarnation,
                )
            reply = await self._heartbeat(cmd, "register")
        if generation != self._generation:
            return
        self._registered = True
        # Gone: Redis lost its data (or declared us dead); the other nodes may
        # not have asserted their users again yet.
        lost = gone
        self._claim(cmd, reply)

        # Re-assert every share; remove the ones dropped meanwhile.
        members = await cmd.call(
            "SMEMBERS", scripts.users_key(self.incarnation)
        )
        if generation != self._generation:
            return
        key = scripts.users_key(self.incarnation)
        held = list(self._shares.items())
        for i in range(0, len(held), CHUNK):
            chunk = [uid for uid, _ in held[i:i + CHUNK]]
            cmd.send("SADD", key, *chunk)
        now = self._reactor.seconds()
        changes = [self._change(uid, "assert", share, self._writes.get(uid), now)
                   for uid, share in held]
        stale = {int(m) for m in members or ()}
        stale.update(self._gone)
        stale.difference_update(self._shares)
        changes.extend(
            self._change(uid, "undo", None, None, self._gone.get(uid, now))
            for uid in stale)
        for command in applies(self.incarnation, changes, self._apply_many):
            self.stats["apply_scripts"] += 1
            cmd.send(*command)
        self.stats["applies"] += len(changes)
        gone = sorted(stale)
        for i in range(0, len(gone), CHUNK):
            cmd.send("SREM", key, *gone[i:i + CHUNK])
        self._gone.clear()
        self._asserted = True

        # Every followed user: subscribed, then read back.
        self._flush()
        waiter: defer.Deferred[None] = defer.Deferred()
        self._batches.append(_Batch(0, [], waiter))
        self._advance()
        await waiter
        if generation != self._generation:
            return
        uids = list(self._followed)
        read = await self._read(cmd, uids)
        if generation != self._generation:
            return
        first = not self._joined
        self._joined = True
        self._finish_recovery(uids, read, lost)
        log.info(
            "{what}: {held} users asserted, {stale} removed, {n} followed "
            "users read back",
            what=f"joined the cluster as {self.incarnation}" if first
            else "Redis is back",
            held=len(held), stale=len(stale), n=len(uids),
        )

    def _finish_recovery(
        self, uids: list[int], read: list[UserState | None], lost: bool
    ) -> None:
        """Tell the listener what Redis holds now (C{resync}).

        When Redis lost its data, users this node knew present and finds
        absent may just not be asserted again yet by their nodes: they stay
        as they were for a TTL (an event from their node ends the wait),
        then whatever Redis holds is told.  So a restart of Redis does not
        flap users that never left.
        """
        before = self._states
        best: dict[int, UserState] = {}
        for uid, state in zip(uids, read, strict=True):
            if state is not None and uid in self._followed:
                best[uid] = state
        later: list[UserState] = []
        for uid, (state, _event) in self._buffer.items():
            if uid not in self._followed:
                continue
            if uid in best or uid in uids:
                if uid not in best or best[uid].version < state.version:
                    best[uid] = state
            else:
                later.append(state)  # followed during the recovery
        self._buffer.clear()
        self._recovering = False
        self._states = {}
        self._versions = {}
        waiting: list[int] = []
        for uid in uids:
            if uid not in self._followed:
                continue
            state = best.get(uid)
            if lost and uid in before and (state is None or not state.present):
                self._states[uid] = before[uid]
                self._versions[uid] = -1
                waiting.append(uid)
                continue
            if state is None:
                self._versions[uid] = -1
                continue
            self._versions[uid] = state.version
            if state.present:
                self._states[uid] = state
        self.stats["resyncs"] += 1
        self.up = True
        self._up_since = self._reactor.seconds()
        self._lost_logged = False
        if self.listener is not None:
            self.listener.resync(list(self._states.values()))
        waiters, self._up_waiters = self._up_waiters, []
        for d in waiters:
            d.callback(None)
        for state in later:
            self._offer(state, True)
        if waiting:
            self._unconfirmed.update(waiting)
            call = self._reactor.callLater(
                self.ttl, self._confirm, self._generation, waiting
            )
            self._calls = [c for c in self._calls if c.active()] + [call]

    def _confirm(self, generation: int, uids: list[int]) -> None:
        """Read again the users kept as they were after Redis lost its data,
        unless an event told their state meanwhile."""
        uids = [u for u in uids if u in self._unconfirmed and u in self._followed]
        self._unconfirmed.difference_update(uids)
        cmd = self._cmd
        if not uids or generation != self._generation or cmd is None:
            return
        d = defer.ensureDeferred(self._read(cmd, uids))
        d.addCallback(self._confirmed, uids, generation)
        self._send(d)

    def _confirmed(
        self, states: list[UserState | None], uids: list[int], generation: int
    ) -> None:
        if generation != self._generation:
            return
        for uid, state in zip(uids, states, strict=True):
            if uid not in self._followed or self._versions.get(uid, -1) >= 0:
                continue  # told by an event meanwhile
            if state is None:
                state = absent(uid, 0, self._reactor.seconds())
            self._offer(state, True)

    # -- liveness --------------------------------------------------------------

    def _tick(self) -> None:
        now = self._reactor.seconds()
        sub = self._sub
        if sub is not None:
            if sub.pings and self._ping_sent is not None:
                if self._silent(sub, self._ping_sent, now):
                    log.warn("Redis subscriber connection silent: dropping it")
                    sub.transport.abortConnection()
            else:
                self._ping_sent = now
                self._send(sub.ping())
        cmd = self._cmd
        if cmd is not None:
            cmd.read_replies()  # (errors of the scripts sent since the last tick)
        if cmd is None or not self._registered or self._recovering:
            return  # (the recovery refreshes the liveness itself)
        if self._beat_sent is not None:
            if self._silent(cmd, self._beat_sent, now):
                log.warn("Redis command connection silent: dropping it")
                cmd.transport.abortConnection()
            return
        self._beat_sent = now
        d = self._heartbeat(cmd, "beat")
        d.addCallbacks(self._beaten, self._beat_failed,
                       callbackArgs=(cmd, self._generation))
        self._send(d)

    def _silent(self, conn: Any, sent: float, now: float) -> bool:
        """Whether C{conn}, asked at C{sent}, has said nothing at all for
        C{silence} seconds.  Any reply counts, not only the one awaited: a
        node short of CPU reads its events seconds late, and dropping a
        connection that still delivers them would turn a slow node into an
        outage (a resync that tells watchers only the difference)."""
        if conn.received != conn.counted:
            conn.counted, conn.heard = conn.received, now
        return now - max(sent, conn.heard) > self.silence

    def _beat_failed(self, failure: Failure) -> Failure:
        # Answered with an error (OOM, READONLY...): beat again next tick, or
        # this node would stop refreshing its liveness for good and be
        # declared dead while connected.
        self._beat_sent = None
        return failure

    def _beaten(
        self, reply: list[Any], cmd: CommandConnection, generation: int
    ) -> None:
        self._beat_sent = None
        if generation != self._generation or cmd is not self._cmd:
            return
        if reply[0] == b"gone":
            self._lose("this node was declared dead")
            self._start_recovery()
            return
        self._claim(cmd, reply)

    def _claim(self, cmd: CommandConnection, reply: list[Any]) -> None:
        for i in range(2, len(reply) - 1, 2):
            incarnation = reply[i].decode()
            if incarnation in self._reaping:
                continue
            self._reaping.add(incarnation)
            d = defer.ensureDeferred(self._reap(cmd, incarnation, float(reply[i + 1])))
            d.addBoth(_passthrough(self._reaping.discard, incarnation))
            self._send(d)

    async def _reap(
        self, cmd: CommandConnection, incarnation: str, last: float
    ) -> None:
        """Remove a dead incarnation's shares (its users last seen at C{last})."""
        key = scripts.users_key(incarnation)
        if incarnation != self.incarnation:
            log.warn(
                "cluster node {inc} silent since {last:.3f}: removing its shares",
                inc=incarnation, last=last,
            )
        removed = 0
        while True:
            members = await cmd.call("SRANDMEMBER", key, REAP_CHUNK)
            if not members:
                break
            try:
                await defer.gatherResults(
                    self._reap_calls(cmd, members, incarnation, last),
                    consumeErrors=True,
                )
            except defer.FirstError as e:
                if not (self._reap_many and "CROSSSLOT" in str(e.subFailure.value)):
                    raise
                log.info("Redis Cluster: cleaning up one user per script")
                self._reap_many = False
                continue  # the same members again, one by one
            await cmd.call("SREM", key, *members)
            removed += len(members)
        await self._evalsha(
            cmd, scripts.REAPED, (scripts.DEAD, scripts.NAMES, key), (incarnation,)
        )
        if incarnation != self.incarnation:
            log.info("cluster node {inc}: {n} shares removed", inc=incarnation,
                     n=removed)


    def _reap_calls(
        self, cmd: CommandConnection, members: list[bytes], incarnation: str,
        last: float,
    ) -> list[defer.Deferred[Any]]:
        """The scripts that remove C{incarnation}'s share of C{members}, all
        sent at once (their replies are awaited together)."""
        if not self._reap_many:
            return [self._apply(cmd, int(m), "reap", None, None, last, incarnation)
                    for m in members]
        calls = []
        for i in range(0, len(members), REAP_BATCH):
            batch = [int(m) for m in members[i : i + REAP_BATCH]]
            keys = [scripts.user_key(uid) for uid in batch]
            self.stats["reap_scripts"] += 1
            calls.append(self._evalsha(
                cmd, scripts.REAP_MANY, keys,
                (incarnation, format_at(last), scripts.TOMBSTONE_TTL, *batch)))
        return calls


def _passthrough(f: Any, *args: Any) -> Any:
    def call(result: object) -> object:
        f(*args)
        return result

    return call


def _within(
    reactor: Any, seconds: float, d: defer.Deferred[Any]
) -> defer.Deferred[Any]:
    d.addTimeout(seconds, reactor)
    return d
