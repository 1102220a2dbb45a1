"""The load generator: worker processes, each holding thousands of connections.

Each worker is a separate process (C{multiprocessing}, spawned) running a
plain C{epoll} loop over non-blocking sockets: no framework, so that the
load generator spends as little CPU as possible per message and the server
stays the bottleneck on a small machine.  A worker owns the users
C{graph.assign(users, workers, index)}; every connection binds its own
loopback source address (C{graph.source_address}) so that the server's
per-address limit is not hit.

The controller (L{presence.bench.runner}) drives the workers with small
command tuples over a pipe; they answer when a command's work is finished.
Live figures the controller polls (connections, deliveries, busy time...)
are written straight into a shared array of doubles, one row per worker
(see the C{C_*} indices).

Clients behave like real idle clients: they answer the server's C{ping}
with C{pong} and otherwise stay silent unless a phase makes them change
their status or reconnect.  They speak the line protocol; subclasses speak
it over WebSocket (L{presence.bench.wsload}) or speak Redis instead
(L{presence.bench.redisload}), each message still handled by L{Worker.messages}
or its like.

Latency: a status change carries C{text="t:<phase>:<time.time()>"}; the
watcher that receives it subtracts that from its own C{time.time()} (all
processes share the machine's clock).  For offline events, the closing
worker stores the close time in a shared array indexed by user id.

With C{--cluster N} (config C{nodes}, C{ports}) user u connects to node
C{u % N}; latencies count only deliveries from a user on another node, and
each worker tallies the deliveries of every change, keyed by its sender and
send time, so that the controller can find a change told twice or not at all.
"""

from __future__ import annotations

import errno
import gc
import heapq
import itertools
import os
import random
import resource
import select
import socket
import time
from array import array
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

import orjson

from presence.bench.graph import assign, friend_graph, source_address

# Columns of a worker's row in the shared counters array.
C_CONNECTED = 0  # sockets currently open (or connecting)
C_WELCOMED = 1  # sessions currently logged in
C_COMPLETE = 2  # logins complete with their snapshot (login phase)
C_DELIVERED = 3  # presence events received in the current phase
C_EXPECTED = 4  # presence events expected from the events sent this phase
C_SENT = 5  # status changes / disconnects sent in the current phase
C_PINGS = 6  # server pings answered (cumulative)
C_ERRORS = 7  # error messages received (cumulative)
C_LOST = 8  # connections the server closed unexpectedly (cumulative)
C_FAILED = 9  # connects that failed (cumulative)
C_LAST_RECV = 10  # time.time() of the last presence event in the phase
C_BUSY = 11  # seconds spent outside epoll.poll (cumulative)
NCOUNTERS = 12

IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
LATE = 0.010  # an event sent this much after its scheduled time is late
RECV_SIZE = 256 * 1024
MAX_SAMPLES = 5_000_000  # latency samples kept per worker and phase
STATUSES = (b"online", b"away", b"busy")
EPOLLIN = select.EPOLLIN
EPOLLOUT = select.EPOLLOUT
EPOLLERR = select.EPOLLERR | select.EPOLLHUP

CONNECTING, LOGGING_IN, WELCOMED, CLOSED = range(4)


def raise_nofile() -> int:
    """Raise this process's soft file limit to the hard limit; return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = max(soft, 1 << 20)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


class Conn:
    """One client connection (one session of one user)."""

    __slots__ = (
        "buf",
        "closing",
        "complete",
        "fd",
        "live",
        "out",
        "seen",
        "sock",
        "state",
        "t_connect",
        "uid",
    )

    def __init__(self, uid: int, sock: socket.socket, live: bool) -> None:
        self.uid = uid
        self.sock = sock
        self.fd = sock.fileno()
        self.buf = b""
        self.out = b""
        self.state = CONNECTING
        self.live = live  # counts latencies (a fresh login's snapshot would not)
        self.closing = False
        self.complete = False
        self.seen: set[int] | None = set()
        self.t_connect = time.monotonic()


class Worker:
    """One load-generator process: its share of the users' connections.

    It runs an C{epoll} loop over their sockets, answers the server's pings,
    and carries out the controller's commands (log in, change statuses at a
    rate, churn), counting deliveries and latencies in the shared counters
    and its own arrays for the controller to collect.
    """

    conn_class = Conn  # what a connection holds (a subclass may add to it)

    def __init__(
        self,
        index: int,
        config: dict[str, Any],
        pipe: Connection,
        counters: Any,
        close_times: Any,
    ) -> None:
        self.index = index
        self.config = config
        self.pipe = pipe
        self.counters = counters
        self.close_times = close_times
        self.base = index * NCOUNTERS
        self.nworkers: int = config["workers"]
        self.host: str = config["host"]
        self.port: int = config["port"]
        self.nodes: int = config.get("nodes") or 1
        self.ports: list[int] = config.get("ports") or [self.port]
        # Deliveries per change (sender, send time) in this phase (cluster).
        self.tally: dict[tuple[int, str], int] | None = (
            {} if self.nodes > 1 else None)
        self.addresses: int = config["addresses"]
        self.graph = friend_graph(config["users"], config["friends"], config["seed"],
                                  self.nodes)
        self.mine = assign(config["users"], self.nworkers, index)
        self.rng = random.Random(config["seed"] * 1000 + index)
        self.ep = select.epoll()
        self.conns: dict[int, Conn] = {}  # by fd
        self.by_uid: dict[int, Conn] = {}  # the current connection of each user
        self.timers: list[tuple[float, int, Callable[[], None]]] = []
        self.seq = itertools.count()
        self.running = True
        self.phase_tag = ""
        self.kind = "idle"
        self.lat = array("d")
        self.off_lat = array("d")
        self.relogin = array("d")
        self.errors: dict[int, int] = {}
        self.first_send = 0.0
        # login state
        self.order: list[int] = []
        self.next_login = 0
        self.inflight = 0
        self.concurrency = 1
        self.login_done = 0
        self.login_reply_sent = True
        self.first_connect = 0.0
        self.last_complete = 0.0
        # fan-out / churn state
        self.pending: dict[str, Any] | None = None
        self.rbuf = bytearray(RECV_SIZE)
        self.rview = memoryview(self.rbuf)

    # -- plumbing -------------------------------------------------------------

    def add(self, col: int, value: float = 1.0) -> None:
        self.counters[self.base + col] += value

    def total(self, col: int) -> float:
        c = self.counters
        return float(sum(c[w * NCOUNTERS + col] for w in range(self.nworkers)))

    def later(self, delay: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self.timers, (time.monotonic() + delay, next(self.seq), fn))

    def at(self, when: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self.timers, (when, next(self.seq), fn))

    def reply(self, *message: Any) -> None:
        self.pipe.send(message)

    def run(self) -> None:
        self.ep.register(self.pipe.fileno(), EPOLLIN)
        pipe_fd = self.pipe.fileno()
        busy_col = self.base + C_BUSY
        counters = self.counters
        t_awake = time.monotonic()
        while self.running:
            timeout = 0.1
            if self.timers:
                timeout = max(0.0, min(timeout, self.timers[0][0] - time.monotonic()))
            t_sleep = time.monotonic()
            counters[busy_col] += t_sleep - t_awake
            events = self.ep.poll(timeout, 4096)
            t_awake = time.monotonic()
            now = time.time()
            for fd, ev in events:
                if fd == pipe_fd:
                    self.command(self.pipe.recv())
                    continue
                c = self.conns.get(fd)
                if c is None:
                    continue
                if ev & EPOLLOUT:
                    self.on_writable(c)
                if ev & (EPOLLIN | EPOLLERR) and c.state != CLOSED:
                    if c.state == CONNECTING:
                        self.on_writable(c)
                    else:
                        self.on_readable(c, now)
            timers = self.timers
            while timers and timers[0][0] <= time.monotonic():
                _, _, fn = heapq.heappop(timers)
                fn()
        for c in list(self.conns.values()):
            self.close(c)
        self.reply("quit")

    # -- commands ---------------------------------------------------------------

    def command(self, message: tuple[Any, ...]) -> None:
        name = message[0]
        if name == "login":
            self.start_login(int(message[1]))
        elif name == "phase":
            self.start_phase(str(message[1]), str(message[2]))
        elif name == "fanout":
            self.start_fanout(float(message[1]), float(message[2]), int(message[3]))
        elif name == "churn":
            self.start_churn(float(message[1]), float(message[2]), float(message[3]))
        elif name == "collect":
            self.reply("collect", self.collect())
        elif name == "freeze":
            gc.collect()
            gc.freeze()
            self.reply("freeze")
        elif name == "quit":
            self.running = False
        else:
            self.reply("error", f"unknown command {name!r}")

    def start_phase(self, tag: str, kind: str) -> None:
        self.phase_tag = tag
        self.kind = kind
        for col in (C_DELIVERED, C_EXPECTED, C_SENT, C_LAST_RECV):
            self.counters[self.base + col] = 0.0
        self.lat = array("d")
        self.off_lat = array("d")
        self.relogin = array("d")
        self.first_send = 0.0
        if self.tally is not None:
            self.tally = {}
        self.reply("phase")

    def collect(self) -> dict[str, Any]:
        row = self.counters[self.base : self.base + NCOUNTERS]
        return {
            "lat": self.lat.tobytes(),
            "tally": self.tally,
            "off_lat": self.off_lat.tobytes(),
            "relogin": self.relogin.tobytes(),
            "delivered": int(row[C_DELIVERED]),
            "expected": int(row[C_EXPECTED]),
            "sent": int(row[C_SENT]),
            "last_recv": row[C_LAST_RECV],
            "first_send": self.first_send,
            "errors": dict(self.errors),
            "connected": int(row[C_CONNECTED]),
            "welcomed": int(row[C_WELCOMED]),
        }

    # -- connections ------------------------------------------------------------

    def connect(self, uid: int, live: bool, text: str | None = None) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            sock.setsockopt(socket.SOL_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            sock.bind((source_address(uid, self.addresses), 0))
            err = sock.connect_ex((self.host, self.ports[uid % len(self.ports)]))
        except OSError as e:
            err = e.errno or errno.EIO
        c = self.conn_class(uid, sock, live)
        if err not in (0, errno.EINPROGRESS):
            sock.close()
            self.connect_failed(c)
            return
        c.out = self.login_bytes(uid, text)
        self.conns[c.fd] = c
        self.by_uid[uid] = c
        self.add(C_CONNECTED)
        self.ep.register(c.fd, EPOLLIN | EPOLLOUT)

    def login_bytes(self, uid: int, text: str | None) -> bytes:
        """What a new connection of user C{uid} sends first."""
        login: dict[str, Any] = {"user_id": uid, "friends": self.graph[uid]}
        if text is not None:
            login["status"] = "online"
            login["text"] = text
        return orjson.dumps(login) + b"\n"

    def pong_bytes(self) -> bytes:
        """What a connection answers the server's ping with."""
        return b'{"type":"pong"}\n'

    def connect_failed(self, c: Conn) -> None:
        self.add(C_FAILED)
        c.state = CLOSED
        if self.kind == "login" and c.live:
            self.inflight -= 1
            self.login_done += 1
            self.check_login()
            self.pump()

    def on_writable(self, c: Conn) -> None:
        if c.state == CONNECTING:
            err = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self.drop(c)
                self.connect_failed(c)
                return
            c.state = LOGGING_IN
        if c.out:
            data, c.out = c.out, b""
            self.write(c, data)
            if c.state == CLOSED:
                return
        if not c.out:
            self.ep.modify(c.fd, EPOLLIN)

    def write(self, c: Conn, data: bytes) -> None:
        if c.out:
            c.out += data
            return
        try:
            n = c.sock.send(data)
        except BlockingIOError:
            n = 0
        except OSError:
            self.lost(c)
            return
        if n < len(data):
            c.out = data[n:]
            self.ep.modify(c.fd, EPOLLIN | EPOLLOUT)

    def drop(self, c: Conn) -> None:
        """Forget a socket (no counting)."""
        if c.state == CLOSED:
            return
        if c.state == WELCOMED:
            self.add(C_WELCOMED, -1)
        c.state = CLOSED
        self.add(C_CONNECTED, -1)
        self.conns.pop(c.fd, None)
        if self.by_uid.get(c.uid) is c:
            del self.by_uid[c.uid]
        try:
            self.ep.unregister(c.fd)
        except OSError:
            pass
        c.sock.close()

    def close(self, c: Conn) -> None:
        c.closing = True
        self.drop(c)

    def lost(self, c: Conn) -> None:
        if c.state == CLOSED:
            return
        was_complete = c.complete
        was_welcomed = c.state == WELCOMED
        self.drop(c)
        if not c.closing:
            self.add(C_LOST)
        if self.kind == "login" and c.live and not was_complete:
            if not was_welcomed:
                self.inflight -= 1
            self.login_done += 1
            self.check_login()
            self.pump()

    def on_readable(self, c: Conn, now: float) -> None:
        # recv_into a reused buffer: recv(n) would allocate n bytes per call
        # (an mmap for large n) only to shrink it to the few bytes received.
        try:
            n = c.sock.recv_into(self.rbuf)
        except BlockingIOError:
            return
        except OSError:
            n = 0
        if not n:
            self.lost(c)
            return
        self.received(c, self.rview[:n].tobytes(), now)

    def received(self, c: Conn, data: bytes, now: float) -> None:
        """Handle what the server sent on C{c}: presence lines."""
        if c.buf:
            data = c.buf + data
        lines = data.split(b"\n")
        c.buf = lines.pop()
        self.messages(c, lines, now)

    def messages(self, c: Conn, lines: list[bytes], now: float) -> None:
        """Handle the server's messages on C{c}, one JSON object each (a
        line without its C{\n}, or a WebSocket text message)."""
        counters = self.counters
        base = self.base
        tag = self.phase_tag
        tally = self.tally
        for line in lines:
            if not line or line == b"\r":
                continue
            try:
                msg = orjson.loads(line)
                kind = msg.get("type")
            except (orjson.JSONDecodeError, AttributeError):
                self.errors[-1] = self.errors.get(-1, 0) + 1
                continue
            if kind == "presence":
                uid = msg.get("user_id")
                counters[base + C_DELIVERED] += 1
                counters[base + C_LAST_RECV] = now
                if msg.get("online"):
                    if not c.complete and c.seen is not None:
                        c.seen.add(uid)
                        if c.state == WELCOMED and len(c.seen) >= len(
                            self.graph[c.uid]
                        ):
                            self.completed(c)
                    text = msg.get("text")
                    if c.live and text and text[:2] == "t:":
                        ptag, _, stamp = text[2:].partition(":")
                        local = False  # sender on the watcher's node
                        if tally is not None and ptag == tag and type(uid) is int:
                            key = (uid, stamp)
                            tally[key] = tally.get(key, 0) + 1
                            local = not (uid - c.uid) % self.nodes
                        if ptag == tag and not local and len(self.lat) < MAX_SAMPLES:
                            try:
                                self.lat.append(now - float(stamp))
                            except ValueError:
                                pass
                else:
                    if not c.complete and c.seen is not None:
                        c.seen.discard(uid)
                    if c.live and self.kind == "churn" and type(uid) is int:
                        closed_at = self.close_times[uid]
                        if closed_at > 0 and len(self.off_lat) < MAX_SAMPLES:
                            self.off_lat.append(now - closed_at)
            elif kind == "ping":
                self.write(c, self.pong_bytes())
                counters[base + C_PINGS] += 1
            elif kind == "welcome":
                self.welcomed(c)
            elif kind == "error":
                code = msg.get("error", -2)
                code = code if type(code) is int else -2
                self.errors[code] = self.errors.get(code, 0) + 1
                counters[base + C_ERRORS] += 1
            if c.state == CLOSED:
                return

    def welcomed(self, c: Conn) -> None:
        if c.state != LOGGING_IN:
            return
        c.state = WELCOMED
        self.add(C_WELCOMED)
        if c.live and self.kind == "login":
            self.inflight -= 1
            self.pump()
        elif not c.live:
            self.relogin.append(time.monotonic() - c.t_connect)
        if c.seen is not None and len(c.seen) >= len(self.graph[c.uid]):
            self.completed(c)

    def completed(self, c: Conn) -> None:
        c.complete = True
        c.seen = None
        if c.live and self.kind == "login":
            self.add(C_COMPLETE)
            self.login_done += 1
            self.last_complete = time.time()
            self.check_login()

    # -- login --------------------------------------------------------------------

    def start_login(self, concurrency: int) -> None:
        self.kind = "login"
        self.order = list(self.mine)
        self.rng.shuffle(self.order)
        self.next_login = 0
        self.inflight = 0
        self.login_done = 0
        self.concurrency = max(1, concurrency)
        self.login_reply_sent = False
        self.first_connect = time.time()
        self.pump()
        self.check_login()

    def pump(self) -> None:
        while self.inflight < self.concurrency and self.next_login < len(self.order):
            uid = self.order[self.next_login]
            self.next_login += 1
            self.inflight += 1
            self.connect(uid, live=True)

    def check_login(self) -> None:
        if self.login_reply_sent or self.login_done < len(self.order):
            return
        self.login_reply_sent = True
        self.kind = "idle"
        self.reply(
            "login",
            {
                "first_connect": self.first_connect,
                "last_complete": self.last_complete,
                "complete": int(self.counters[self.base + C_COMPLETE]),
                "errors": dict(self.errors),
            },
        )

    # -- fan-out --------------------------------------------------------------------

    def senders(self) -> list[Conn]:
        return [c for c in self.by_uid.values() if c.state == WELCOMED and c.live]

    def send_time(self) -> float:
        """Now, as a status change carries it (the first one of a phase is kept)."""
        stamp = time.time()
        if not self.first_send:
            self.first_send = stamp
        return stamp

    def status_line(self, c: Conn) -> bytes:
        stamp = self.send_time()
        status = STATUSES[self.rng.randrange(3)]
        return b'{"type":"status","status":"%s","text":"t:%s:%.6f"}\n' % (
            status,
            self.phase_tag.encode(),
            stamp,
        )

    def start_fanout(self, rate: float, duration: float, window: int) -> None:
        """Send status changes at C{rate}/s (0: as fast as the window allows).

        The window counts undelivered notifications of all workers together
        (expected minus delivered, from the shared counters).
        """
        self.kind = "fanout"
        pool = self.senders()
        t0 = time.monotonic()
        st: dict[str, Any] = {
            "pool": pool,
            "rate": rate,
            "t0": t0,
            "end": t0 + duration,
            "total": int(rate * duration) if rate > 0 else 0,
            "sent": 0,
            "late": 0,
            "max_lag": 0.0,
            "window": window,
            "blocked": 0,
        }
        self.pending = st
        if not pool:
            self.finish_fanout()
            return
        self.later(0, self.fanout_tick)

    def send_event(self, st: dict[str, Any]) -> bool:
        pool: list[Conn] = st["pool"]
        for _ in range(8):
            c = pool[self.rng.randrange(len(pool))]
            if c.state == WELCOMED and not c.out:
                break
        else:
            st["blocked"] += 1
            return False
        self.write(c, self.status_line(c))
        self.add(C_EXPECTED, len(self.graph[c.uid]))
        self.add(C_SENT)
        st["sent"] += 1
        return True

    def fanout_tick(self) -> None:
        st = self.pending
        if st is None:
            return
        now = time.monotonic()
        rate: float = st["rate"]
        if rate > 0:
            due = min(st["total"], int((now - st["t0"]) * rate) + 1)
            while st["sent"] < due:
                lag = now - (st["t0"] + st["sent"] / rate)
                if lag > LATE:
                    st["late"] += 1
                if lag > st["max_lag"]:
                    st["max_lag"] = lag
                if not self.send_event(st):
                    break
            if st["sent"] >= st["total"] or now >= st["end"] + 1.0:
                self.finish_fanout()
                return
            self.at(st["t0"] + st["sent"] / rate, self.fanout_tick)
        else:
            if now >= st["end"]:
                self.finish_fanout()
                return
            budget = 64
            while budget and (
                self.total(C_EXPECTED) - self.total(C_DELIVERED) < st["window"]
            ):
                budget -= 1
                if not self.send_event(st):
                    break
            self.later(0 if budget == 0 else 0.0005, self.fanout_tick)

    def finish_fanout(self) -> None:
        st = self.pending
        assert st is not None
        self.pending = None
        scheduled = st["total"] if st["rate"] > 0 else st["sent"]
        self.reply(
            "fanout",
            {
                "sent": st["sent"],
                "scheduled": scheduled,
                "late": st["late"],
                "max_lag": st["max_lag"],
                "blocked": st["blocked"],
            },
        )

    # -- churn ------------------------------------------------------------------------

    def start_churn(self, rate: float, duration: float, delay: float) -> None:
        """Disconnect C{rate} users/s for C{duration}; each returns after C{delay}."""
        self.kind = "churn"
        t0 = time.monotonic()
        st: dict[str, Any] = {
            "rate": rate,
            "t0": t0,
            "total": int(rate * duration),
            "sent": 0,
            "late": 0,
            "max_lag": 0.0,
            "away": 0,
            "skipped": 0,
            "delay": delay,
            "deadline": t0 + duration + delay + 15.0,
            "done": False,
        }
        self.pending = st
        if rate <= 0 or not self.mine:
            self.finish_churn()
            return
        self.later(0, self.churn_tick)

    def churn_tick(self) -> None:
        st = self.pending
        if st is None or st["done"]:
            return
        now = time.monotonic()
        rate: float = st["rate"]
        due = min(st["total"], int((now - st["t0"]) * rate) + 1)
        while st["sent"] < due:
            lag = now - (st["t0"] + st["sent"] / rate)
            if lag > LATE:
                st["late"] += 1
            st["max_lag"] = max(st["max_lag"], lag)
            st["sent"] += 1
            for _ in range(16):
                uid = self.mine[self.rng.randrange(len(self.mine))]
                c = self.by_uid.get(uid)
                if c is not None and c.state == WELCOMED:
                    break
            else:
                st["skipped"] += 1  # nobody to disconnect: not the bench's delay
                continue
            self.close_times[uid] = stamp = time.time()
            if not self.first_send:
                self.first_send = stamp
            self.close(c)
            self.add(C_SENT)
            st["away"] += 1
            self.later(st["delay"], lambda uid=uid: self.reconnect(uid))  # type: ignore[misc]
        if st["sent"] >= st["total"]:
            self.later(0.05, self.churn_wait)
            return
        self.at(st["t0"] + st["sent"] / rate, self.churn_tick)

    def reconnect(self, uid: int) -> None:
        st = self.pending
        if st is not None:
            st["away"] -= 1
        if uid in self.by_uid:
            return
        self.connect(uid, live=False, text=f"t:{self.phase_tag}:{time.time():.6f}")

    def churn_wait(self) -> None:
        st = self.pending
        if st is None:
            return
        back = all(
            c.state == WELCOMED for c in self.by_uid.values() if not c.live
        )
        if (st["away"] == 0 and back) or time.monotonic() > st["deadline"]:
            self.finish_churn()
        else:
            self.later(0.05, self.churn_wait)

    def finish_churn(self) -> None:
        st = self.pending
        assert st is not None
        st["done"] = True
        self.pending = None
        self.reply(
            "churn",
            {
                "sent": st["sent"],
                "scheduled": st["total"] - st["skipped"],
                "skipped": st["skipped"],
                "late": st["late"],
                "max_lag": st["max_lag"],
                "not_back": st["away"]
                + sum(1 for c in self.by_uid.values() if c.state != WELCOMED),
            },
        )


def worker_main(
    index: int,
    config: dict[str, Any],
    pipe: Connection,
    counters: Any,
    close_times: Any,
    worker_class: type[Worker] = Worker,
) -> None:
    """Entry point of a worker process (C{worker_class}: which client it is)."""
    raise_nofile()
    cpus = config.get("cpus")
    if cpus:
        try:
            os.sched_setaffinity(0, set(cpus))
        except OSError:
            pass
    gc.set_threshold(100_000, 50, 100)
    worker = worker_class(index, config, pipe, counters, close_times)
    pipe.send(("ready", os.getpid()))
    try:
        worker.run()
    except KeyboardInterrupt:
        pass
