"""Memory under login churn: RSS of a server after many short sessions.

    python tools/churn_rss.py --logins 20000 --timeout 60

Starts ``twistd -n --pidfile= presence --timeout T`` on a free loopback port,
keeps C{--idle} sessions logged in, logs in and closes C{--logins} sessions
(C{--parallel} at a time), and prints the server's RSS before and after.
Each closed session's deadline used to stay in the timer heap, holding the
whole connection, until its old deadline came up (issue 9, finding 4).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

from presence.bench.launch import rss_kib

LISTENING = re.compile(rb"presence listening on tcp:[\d.]+:(\d+)")




def session(port: int, uid: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b'{"user_id": %d, "friends": [%d]}\n' % (uid, uid + 1))
        data = b""
        while b"\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                raise RuntimeError("closed before welcome")
            data += chunk
        s.sendall(b'{"type":"bye"}\n')
        while s.recv(4096):
            pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--logins", type=int, default=20_000)
    parser.add_argument("--parallel", type=int, default=8)
    parser.add_argument("--timeout", default="60")
    parser.add_argument("--idle", type=int, default=100,
                        help="sessions that stay logged in meanwhile")
    args = parser.parse_args()
    twistd = shutil.which("twistd", path=os.path.dirname(sys.executable)) or "twistd"
    with tempfile.TemporaryDirectory() as cwd:
        proc = subprocess.Popen(
            [twistd, "-n", "--pidfile=", "presence", "--port",
             "tcp:0:interface=127.0.0.1", "--timeout", args.timeout,
             "--max-per-ip", "100000"],
            cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert proc.stdout is not None
        port = 0
        for line in proc.stdout:
            m = LISTENING.search(line)
            if m:
                port = int(m.group(1))
                break
        # Keep reading the log so that the server never blocks on it.
        with ThreadPoolExecutor(args.parallel + 1) as pool:
            pool.submit(lambda: [None for _ in proc.stdout])  # type: ignore[union-attr]
            idle = [socket.create_connection(("127.0.0.1", port))
                    for _ in range(args.idle)]
            for n, s in enumerate(idle):
                s.sendall(b'{"user_id": %d, "friends": []}\n' % (10**9 + n))
            before = rss_kib(proc.pid)
            started = time.monotonic()
            list(pool.map(lambda n: session(port, n + 1), range(args.logins)))
            took = time.monotonic() - started
            after = rss_kib(proc.pid)
            for s in idle:
                s.close()
            proc.terminate()
            proc.wait(10)
    print(f"{args.idle} idle sessions, {args.logins} logins at --timeout "
          f"{args.timeout} in {took:.1f} s: "
          f"RSS {before / 1024:.1f} MiB -> {after / 1024:.1f} MiB "
          f"({(after - before) * 1024 / args.logins:.0f} bytes per login)")


if __name__ == "__main__":
    main()
