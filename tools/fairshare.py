"""Measure the fair share (PROTOCOL.md, "Fair share"): can one client hold
the server?

    python tools/fairshare.py                          # this checkout's server
    python tools/fairshare.py --turn-budget 250        # passed to the server
    python tools/fairshare.py --twistd /work/venv-before/bin/twistd --label before
    python tools/fairshare.py --summary results.jsonl  # medians per label

It starts a server (``twistd -n presence`` on 127.0.0.1, an ephemeral port),
logs in --watchers sessions that watch user 1, user 1 itself, and a
bystander (user 2, in a child process of its own, so that reading the
watchers' traffic here does not delay it) that sends a ping every
--interval seconds and records each round trip.  Then:

burst
    user 1 writes --lines status changes in one write (1,000 lines: 49 KB).
    Figures: the bystander's ping round trips that overlap the burst (p50,
    p99, max), the time until every watcher has every change, and
    deliveries (watchers x lines) per second over that time.
term
    a fresh server, the same burst, and SIGTERM half way through it (half
    the burst time measured above; --term-after S, or 0.5 s with
    --no-burst): the time from SIGTERM to the server's exit.
big
    (unless --no-big) user 3 re-sends --big-logins logins of about 1 MiB
    (10,000 ids, padded), then replaces its 10,000-id watch list
    --big-lists times (two disjoint lists in turn, in one write); the
    bystander's ping round trips meanwhile, and lines handled per second.

One JSON line of figures goes to stdout (append it to a file and run
--summary on it).  Loopback only; every wait is bounded (--max-seconds), and
the server is killed if it does not stop.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import selectors
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from typing import Any

HOST = "127.0.0.1"
WATCHER_BASE = 1_000_000
PING = b'{"type":"ping"}\n'
PONG = b'{"type":"pong"}\n'


class Conn:
    """A client socket and what it has received (counted, not parsed)."""

    def __init__(self, port: int, login: bytes) -> None:
        self.sock = socket.create_connection((HOST, port), timeout=10)
        self.sock.setblocking(False)
        self.out = bytearray(login)
        self.rest = b""
        self.welcomed = False
        self.presence = 0
        self.pongs = 0
        self.error = b""
        self.closed = False

    def feed(self, data: bytes) -> None:
        buf = self.rest + data
        end = buf.rfind(b"\n") + 1
        done, self.rest = buf[:end], buf[end:]
        if not done:
            return
        self.presence += done.count(b'"type":"presence"')
        self.pongs += done.count(b'"type":"pong"')
        if not self.welcomed and b'"type":"welcome"' in done:
            self.welcomed = True
        if b'"type":"ping"' in done:
            self.out += PONG
        if b'"type":"error"' in done and not self.error:
            i = done.find(b'"type":"error"')
            self.error = done[max(0, done.rfind(b"\n", 0, i) + 1) : i + 80]


def pump(conns: list[Conn], done: Any, seconds: float) -> bool:
    """Read and write for every connection until done() or the time is up."""
    sel = selectors.DefaultSelector()
    live = {c.sock.fileno(): c for c in conns if not c.closed}
    for c in live.values():
        sel.register(c.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, c)
    deadline = time.monotonic() + seconds
    try:
        while not done():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            for key, mask in sel.select(min(left, 0.05)):
                c = key.data
                if mask & selectors.EVENT_WRITE and c.out:
                    try:
                        n = c.sock.send(c.out[:262144])
                        del c.out[:n]
                    except (BlockingIOError, InterruptedError):
                        pass
                    except OSError:
                        c.out.clear()
                if mask & selectors.EVENT_READ:
                    try:
                        data = c.sock.recv(1 << 20)
                    except (BlockingIOError, InterruptedError):
                        continue
                    except OSError:
                        data = b""
                    if data:
                        c.feed(data)
                    else:
                        c.closed = True
                        sel.unregister(c.sock)
                        continue
                want = selectors.EVENT_READ | (selectors.EVENT_WRITE if c.out else 0)
                if key.events != want:
                    sel.modify(c.sock, want, c)
            if not sel.get_map():
                return bool(done())
        return True
    finally:
        sel.close()


# -- the server ---------------------------------------------------------------


def start_server(
    args: argparse.Namespace, log: str
) -> tuple[subprocess.Popen[bytes], int]:
    cmd = [
        args.twistd, "-n", "--pidfile=", f"--logfile={log}", "presence",
        "--port", f"tcp:0:interface={HOST}",
        "--max-per-ip", str(args.watchers + 100),
        *args.server_args,
    ]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    pattern = re.compile(rf"listening on tcp:{re.escape(HOST)}:(\d+)")
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            with open(log) as f:
                m = pattern.search(f.read())
        except FileNotFoundError:
            m = None
        if m:
            return proc, int(m.group(1))
        time.sleep(0.05)
    stop_server(proc)
    sys.exit(f"the server did not start: {' '.join(cmd)} (see {log})")


def stop_server(proc: subprocess.Popen[bytes], seconds: float = 30) -> float:
    """SIGTERM, and the seconds until the process ended (SIGKILL past seconds)."""
    t0 = time.monotonic()
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(seconds)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return time.monotonic() - t0


def login_all(port: int, watchers: int, seconds: float) -> tuple[list[Conn], Conn]:
    """The watchers (in batches, within the listen backlog), then user 1."""
    conns: list[Conn] = []
    for start in range(0, watchers, 50):
        batch = [
            Conn(port, b'{"user_id":%d,"friends":[1]}\n' % (WATCHER_BASE + i))
            for i in range(start, min(start + 50, watchers))
        ]
        conns += batch
        if not pump(batch, lambda b=batch: all(c.welcomed for c in b), seconds):
            sys.exit("watchers were not welcomed in time")
    user1 = Conn(port, b'{"user_id":1,"friends":[]}\n')
    everyone = [*conns, user1]
    if not pump(
        everyone, lambda: user1.welcomed and all(c.presence for c in conns), seconds
    ):
        sys.exit("user 1's online event did not reach every watcher in time")
    return conns, user1


def burst_lines(n: int) -> bytes:
    return b"".join(
        b'{"type":"status","status":"%s","text":"%04d"}\n'
        % (b"away" if i % 2 else b"busy", i % 10000)
        for i in range(n)
    )


# -- the bystander (a child process) --------------------------------------------


def bystander_main(port: int, interval: float, seconds: float) -> None:
    """Log in as user 2, ping every interval until stdin closes; print the
    round trips as JSON [[sent, received], ...] (time.monotonic, shared by
    the processes of one machine)."""
    sock = socket.create_connection((HOST, port), timeout=10)
    sock.sendall(b'{"user_id":2,"friends":[]}\n')
    buf = b""
    while b'"type":"welcome"' not in buf:
        data = sock.recv(65536)
        if not data:
            sys.exit("bystander: closed before welcome")
        buf += data
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    sel = selectors.DefaultSelector()
    sel.register(sys.stdin, selectors.EVENT_READ)
    sock.setblocking(True)
    trips: list[list[float]] = []
    deadline = time.monotonic() + seconds
    next_ping = time.monotonic()
    while time.monotonic() < deadline:
        if sel.select(max(0.0, next_ping - time.monotonic())):
            break  # stdin: stop
        sent = time.monotonic()
        sock.sendall(PING)
        buf = b""
        sock.settimeout(max(0.1, deadline - sent))
        try:
            while b'"type":"pong"' not in buf:
                data = sock.recv(65536)
                if not data:
                    break
                buf += data
        except OSError:
            break
        received = time.monotonic()
        if b'"type":"pong"' not in buf:
            break
        trips.append([sent, received])
        next_ping = max(sent + interval, received)
    json.dump(trips, sys.stdout)
    sys.stdout.write("\n")


class Bystander:
    def __init__(self, port: int, args: argparse.Namespace) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--bystander", str(port),
             "--interval", str(args.interval), "--max-seconds", str(args.max_seconds)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        )
        assert self.proc.stdout is not None
        if self.proc.stdout.readline() != b"ready\n":
            sys.exit("the bystander did not log in")

    def stop(self) -> list[list[float]]:
        out, _ = self.proc.communicate(b"stop\n", timeout=30)
        return json.loads(out)


def during(trips: list[list[float]], start: float, end: float) -> dict[str, float]:
    """Round trips (ms) that overlap [start, end]: p50, p99, max, count."""
    rtts = sorted((r - s) * 1000 for s, r in trips if r >= start and s <= end)
    if not rtts:
        return {"n": 0}
    p99 = rtts[min(len(rtts) - 1, int(0.99 * len(rtts)))]
    return {"n": len(rtts), "p50": round(statistics.median(rtts), 2),
            "p99": round(p99, 2), "max": round(rtts[-1], 2)}


# -- the scenarios --------------------------------------------------------------


def scenario_burst(args: argparse.Namespace, log: str) -> dict[str, Any]:
    proc, port = start_server(args, log)
    try:
        watchers, user1 = login_all(port, args.watchers, args.max_seconds)
        bystander = Bystander(port, args)
        pump([*watchers, user1], lambda: False, 0.5)  # idle round trips first
        base = [c.presence for c in watchers]
        data = burst_lines(args.lines)
        t0 = time.monotonic()
        user1.out += data
        complete = pump(
            [*watchers, user1],
            lambda: all(
                c.presence - b >= args.lines
                for c, b in zip(watchers, base, strict=True)
            ),
            args.max_seconds,
        )
        t1 = time.monotonic()
        pump([*watchers, user1], lambda: False, 0.2)
        trips = bystander.stop()
        got = sum(c.presence - b for c, b in zip(watchers, base, strict=True))
        idle = during(trips, trips[0][0], t0 - 0.001) if trips else {"n": 0}
        errors = sorted({c.error.decode(errors="replace") for c in watchers if c.error})
        for c in [*watchers, user1]:
            c.sock.close()
        return {
            "bytes": len(data),
            "complete": complete,
            "burst_s": round(t1 - t0, 3),
            "deliveries": got,
            "deliveries_per_s": round(got / (t1 - t0)),
            "ping_idle": idle,
            "ping_burst": during(trips, t0, t1),
            "errors": errors[:3],
        }
    finally:
        stop_server(proc)


def scenario_term(args: argparse.Namespace, log: str, after: float) -> dict[str, Any]:
    proc, port = start_server(args, log)
    try:
        watchers, user1 = login_all(port, args.watchers, args.max_seconds)
        everyone = [*watchers, user1]
        user1.out += burst_lines(args.lines)
        pump(everyone, lambda: False, after)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        # Keep reading, as live clients would, until the server has exited.
        pump(everyone, lambda: proc.poll() is not None, args.max_seconds)
        try:
            proc.wait(args.max_seconds)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        t1 = time.monotonic()
        for c in everyone:
            c.sock.close()
        return {"term_after_s": round(after, 3), "term_s": round(t1 - t0, 3)}
    finally:
        stop_server(proc)


def scenario_big(args: argparse.Namespace, log: str) -> dict[str, Any]:
    proc, port = start_server(args, log)
    try:
        big = Conn(port, b'{"user_id":3,"friends":[]}\n')
        if not pump([big], lambda: big.welcomed, args.max_seconds):
            sys.exit("user 3 was not welcomed")
        bystander = Bystander(port, args)
        pump([big], lambda: False, 0.3)
        result: dict[str, Any] = {}
        ids = [
            b",".join(b"%d" % (10**15 + k * 10_000 + i) for i in range(10_000))
            for k in (0, 1)
        ]
        mib = 1 << 20
        logins = b""
        for k in range(args.big_logins):
            line = b'{"user_id":3,"friends":[' + ids[k % 2] + b"]"
            logins += line + b" " * (mib - len(line) - 1) + b"}\n"
        lists = b"".join(
            b'{"type":"friends","friends":[' + ids[k % 2] + b"]}\n"
            for k in range(args.big_lists)
        )
        marks = []
        for name, data, pongs, count in (
            ("big_logins", logins, args.big_logins + 1, args.big_logins),
            ("big_lists", lists, 1, args.big_lists),
        ):
            before = big.pongs
            t0 = time.monotonic()
            big.out += data + PING
            ok = pump(
                [big],
                lambda before=before, pongs=pongs: big.pongs - before >= pongs,
                args.max_seconds,
            )
            marks.append((name, t0, time.monotonic(), len(data), ok, count))
            pump([big], lambda: False, 0.2)
        trips = bystander.stop()
        for name, t0, t1, size, ok, count in marks:
            result[name] = {"bytes": size, "s": round(t1 - t0, 3), "complete": ok,
                            "lines": count, "per_s": round(count / (t1 - t0), 1),
                            "ping": during(trips, t0, t1)}
        if big.error:
            result["big_error"] = big.error.decode(errors="replace")
        big.sock.close()
        return result
    finally:
        stop_server(proc)


# -- summary --------------------------------------------------------------------


FIELDS = [
    ("ping p50 ms", ("burst", "ping_burst", "p50")),
    ("ping p99 ms", ("burst", "ping_burst", "p99")),
    ("ping max ms", ("burst", "ping_burst", "max")),
    ("all delivered s", ("burst", "burst_s")),
    ("deliveries/s", ("burst", "deliveries_per_s")),
    ("SIGTERM s", ("term", "term_s")),
    ("1 MiB logins: ping max ms", ("big", "big_logins", "ping", "max")),
    ("10k lists: ping p50 ms", ("big", "big_lists", "ping", "p50")),
    ("10k lists: ping p99 ms", ("big", "big_lists", "ping", "p99")),
    ("10k lists: ping max ms", ("big", "big_lists", "ping", "max")),
    ("10k lists: lists/s", ("big", "big_lists", "per_s")),
    ("load avg", ("load", 0)),
]


def get(d: Any, path: tuple[Any, ...]) -> Any:
    for p in path:
        try:
            d = d[p]
        except (KeyError, IndexError, TypeError):
            return None
    return d


def number(v: float) -> str:
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"


def summary(path: str) -> None:
    runs: dict[str, list[dict[str, Any]]] = defaultdict(list)
    with open(path) as f:
        for line in f:
            if line.strip():
                r = json.loads(line)
                runs[r["label"]].append(r)
    labels = list(runs)
    head = " | ".join(f"{k} ({len(runs[k])})" for k in labels)
    print(f"| figure (median of runs) | {head} |")
    print("|---" * (len(labels) + 1) + "|")
    for name, p in FIELDS:
        cells = []
        for k in labels:
            values = [v for v in (get(r, p) for r in runs[k]) if v is not None]
            cells.append(number(statistics.median(values)) if values else "-")
        print(f"| {name} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--twistd", default=os.path.join(os.path.dirname(sys.executable), "twistd")
    )
    parser.add_argument("--label", default="", help="names the run in the JSON line")
    parser.add_argument("--watchers", type=int, default=500)
    parser.add_argument("--lines", type=int, default=1000)
    parser.add_argument("--interval", type=float, default=0.005, help="ping every, s")
    parser.add_argument("--big-logins", type=int, default=10)
    parser.add_argument("--big-lists", type=int, default=50)
    parser.add_argument("--no-big", action="store_true")
    parser.add_argument("--no-burst", action="store_true")
    parser.add_argument("--no-term", action="store_true")
    parser.add_argument("--term-after", type=float, help="s (default: half the burst)")
    parser.add_argument("--max-seconds", type=float, default=120, help="each wait, s")
    parser.add_argument("--summary", metavar="FILE", help="medians of a JSONL file")
    parser.add_argument("--bystander", type=int, help=argparse.SUPPRESS)
    args, server_args = parser.parse_known_args()
    args.server_args = server_args
    if args.summary:
        summary(args.summary)
        return
    if args.bystander:
        bystander_main(args.bystander, args.interval, args.max_seconds)
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, 4 * args.watchers + 1024))
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    with tempfile.TemporaryDirectory(prefix="fairshare-") as tmp:
        log = os.path.join(tmp, "server.log")
        result: dict[str, Any] = {
            "label": args.label or " ".join(server_args) or "default",
            "twistd": args.twistd,
            "server_args": server_args,
            "watchers": args.watchers,
            "lines": args.lines,
            "load": [round(x, 2) for x in os.getloadavg()],
        }
        if not args.no_burst:
            result["burst"] = scenario_burst(args, log)
        if not args.no_term:
            after = args.term_after
            if after is None and "burst" in result:
                after = max(0.05, result["burst"]["burst_s"] / 2)
            elif after is None:
                after = 0.5
            result["term"] = scenario_term(args, log + ".term", after)
        if not args.no_big:
            result["big"] = scenario_big(args, log + ".big")
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
