"""What one wakeup of Redis costs Redis on this machine, whatever the script.

    python tools/redis_floor.py                  # 3 rounds of 2,000 requests

Starts a redis-server on a free loopback port (and Unix socket).  One client
sends a request and waits for its answer, either at once again (back to
back) or after sleeping 1 ms (paced, as the cluster bench's changes arrive:
Redis sleeps between two of them).  The requests: PING, and an EVALSHA of a
script that only PUBLISHes 60 bytes to one subscriber (the least a change
can do).  Reported: Redis's CPU (INFO cpu, user + system) per request, over
TCP and over the Unix socket, each round in turn.  These are times on a
shared machine: read them with the load average printed beside them.
"""

from __future__ import annotations

import argparse
import os
import socket
import time

from presence.cluster.redisserver import RedisServer, encode


def redis_cpu(redis: RedisServer) -> float:
    info = redis.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def connect(redis: RedisServer, kind: str) -> socket.socket:
    if kind == "unix":
        s = socket.socket(socket.AF_UNIX)
        s.connect(redis.socket)
        return s
    s = socket.create_connection(("127.0.0.1", redis.port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def measure(redis: RedisServer, kind: str, what: str, paced: bool, n: int,
            sha: str) -> float:
    """Redis's CPU microseconds per request."""
    client, sub = connect(redis, kind), connect(redis, kind)
    try:
        sub.sendall(encode("SUBSCRIBE", "ch"))
        sub.recv(100)
        command = (encode("PING") if what == "PING"
                   else encode("EVALSHA", sha, 0, "x" * 60))
        before = redis_cpu(redis)
        for _ in range(n):
            client.sendall(command)
            client.recv(100)
            if what != "PING":
                sub.recv(200)
            if paced:
                time.sleep(0.001)
        return (redis_cpu(redis) - before) / n * 1e6
    finally:
        client.close()
        sub.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    redis = RedisServer().start()
    try:
        raw = redis.command("SCRIPT", "LOAD",
                            "redis.call('PUBLISH', 'ch', ARGV[1]) return 1")
        assert isinstance(raw, bytes)
        sha = raw.decode()
        rows: dict[tuple[str, str, bool], list[float]] = {}
        print(f"load average before: {os.getloadavg()[0]:.2f}")
        for _ in range(args.rounds):
            for kind in ("tcp", "unix"):
                for what in ("PING", "EVALSHA+PUBLISH"):
                    for paced in (False, True):
                        rows.setdefault((kind, what, paced), []).append(
                            measure(redis, kind, what, paced, args.requests, sha))
        print(f"load average after: {os.getloadavg()[0]:.2f}")
        print("Redis CPU per request (us), each round:")
        for (kind, what, paced), values in rows.items():
            how = "paced 1 ms" if paced else "back to back"
            print(f"  {kind:4s} {what:16s} {how:12s} "
                  + "  ".join(f"{v:6.1f}" for v in values))
    finally:
        redis.close()


if __name__ == "__main__":
    main()
