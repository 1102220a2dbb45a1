"""Which Redis client for cluster mode: CPU per published and received event.

    python tools/redis_clients.py                  # every client, 20,000 events
    python tools/redis_clients.py --events 50000 --window 64

Starts a redis-server on a free loopback port (or uses ``--port``), then runs
each client in a child process of its own (a reactor cannot be swapped in one
process).  Each child opens two connections, as the bus does: one SUBSCRIBEs
to a channel, the other runs a small Lua script (EVALSHA) that PUBLISHes an
event of about 60 bytes on it, keeping ``--window`` scripts in flight.  It
reports:

  - the child's CPU per event (user + system, from getrusage), published and
    received, parse included;
  - the reactor's own cost: CPU per second of the same child idle with both
    connections open (the floor it pays when nothing happens);
  - redis-server's CPU per event (INFO cpu), the same for every client.

The clients: txredisapi (pure-Python parser, then with hiredis) on Twisted's
default reactor (epoll), and redis-py's asyncio client (hiredis when
installed) on Twisted's asyncio reactor (``pip install redis`` first: the
project itself does not depend on redis-py).  Loopback only, bounded in time.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

SCRIPT = "redis.call('PUBLISH', KEYS[1], ARGV[1]) return 1"
PAYLOAD = "42|1732921234567890|1|away|2|1732921234.5|7,9|out for lunch"
CLIENTS = ("txredisapi", "txredisapi-hiredis", "redis-py-asyncio")


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def child_txredisapi(port: int, events: int, window: int, hiredis: bool) -> None:
    import txredisapi
    from twisted.internet import defer, endpoints, protocol, reactor, task

    if hiredis and getattr(txredisapi, "hiredis", None) is None:
        raise SystemExit("hiredis is not installed")

    received = [0]
    done: defer.Deferred[None] = defer.Deferred()

    class Sub(txredisapi.SubscriberProtocol):
        def messageReceived(self, pattern: Any, channel: Any, message: Any) -> None:
            received[0] += 1
            if received[0] == events:
                done.callback(None)

    # With hiredis installed, txredisapi's RedisProtocol is its HiredisProtocol;
    # the pure-Python parser is BaseRedisProtocol's (LineReceiver's) own.
    if hiredis:
        base: Any = txredisapi.HiredisProtocol
        sub_class: Any = Sub
    else:

        class PureSub(Sub):
            dataReceived = txredisapi.LineReceiver.dataReceived

        base = txredisapi.BaseRedisProtocol
        sub_class = PureSub

    async def connect(cls: Any) -> Any:
        factory = protocol.Factory()
        factory.buildProtocol = lambda addr: cls(  # type: ignore[method-assign]
            charset=None, convertNumbers=False
        )
        ep = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port)
        proto: Any = await ep.connect(factory)
        proto.factory = factory
        await proto.whenConnected()
        return proto

    async def main() -> None:
        sub = await connect(sub_class)
        cmd = await connect(base)
        await sub.subscribe(["{u:42}"])
        sha = await cmd.script_load(SCRIPT)
        if isinstance(sha, bytes):
            sha = sha.decode()
        await task.deferLater(reactor, 0.2, lambda: None)
        start_cpu, start = cpu(), time.monotonic()
        sent = [0]

        def more(_: object = None) -> None:
            if sent[0] < events:
                sent[0] += 1
                cmd.evalsha(sha, ["{u:42}"], [PAYLOAD]).addCallback(more)

        for _ in range(window):
            more()
        await done
        busy_cpu, wall = cpu() - start_cpu, time.monotonic() - start
        idle_start = cpu()
        await task.deferLater(reactor, 2.0, lambda: None)
        idle_cpu = cpu() - idle_start
        idle = idle_cpu / 2
        print(json.dumps({"cpu": busy_cpu, "wall": wall, "idle_cpu_per_s": idle}))

    def run() -> None:
        d = defer.ensureDeferred(main())
        d.addErrback(lambda f: print(f.getTraceback(), file=sys.stderr))
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(run)
    reactor.run()


def child_redispy(port: int, events: int, window: int) -> None:
    from twisted.internet import asyncioreactor

    asyncioreactor.install()
    import asyncio

    import redis.asyncio as aioredis
    from twisted.internet import defer, reactor

    async def main() -> None:
        cmd = aioredis.Redis(host="127.0.0.1", port=port)
        pubsub = aioredis.Redis(host="127.0.0.1", port=port).pubsub()
        await pubsub.subscribe("{u:42}")
        await pubsub.get_message(timeout=1.0)  # the subscribe confirmation
        sha = await cmd.script_load(SCRIPT)
        await asyncio.sleep(0.2)

        async def receive() -> None:
            got = 0
            while got < events:
                msg = await pubsub.get_message(timeout=10.0)
                if msg is not None and msg["type"] == "message":
                    got += 1

        start_cpu, start = cpu(), time.monotonic()
        receiver = asyncio.ensure_future(receive())
        sent = 0
        # One connection in the pool per in-flight command would be unfair:
        # pipeline in windows instead, as redis-py users do for throughput.
        while sent < events:
            n = min(window, events - sent)
            pipe = cmd.pipeline(transaction=False)
            for _ in range(n):
                pipe.evalsha(sha, 1, "{u:42}", PAYLOAD)
            sent += n
            await pipe.execute()
        await receiver
        busy_cpu, wall = cpu() - start_cpu, time.monotonic() - start
        idle_start = cpu()
        await asyncio.sleep(2.0)
        idle_cpu = cpu() - idle_start
        idle = idle_cpu / 2
        print(json.dumps({"cpu": busy_cpu, "wall": wall, "idle_cpu_per_s": idle}))

    def run() -> None:
        d = defer.Deferred.fromFuture(asyncio.ensure_future(main()))
        d.addErrback(lambda f: print(f.getTraceback(), file=sys.stderr))
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(run)
    reactor.run()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def redis_cpu(port: int) -> float:
    out = subprocess.run(
        ["redis-cli", "-p", str(port), "INFO", "cpu"],
        capture_output=True, text=True, check=True,
    ).stdout
    fields = dict(
        line.split(":", 1) for line in out.splitlines() if ":" in line
    )
    return float(fields["used_cpu_user"]) + float(fields["used_cpu_sys"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--window", type=int, default=64)
    parser.add_argument("--port", type=int, help="an existing redis-server")
    parser.add_argument("--child", choices=CLIENTS, help=argparse.SUPPRESS)
    parser.add_argument("--only", choices=CLIENTS, action="append")
    args = parser.parse_args()
    if args.child:
        if args.child == "redis-py-asyncio":
            child_redispy(args.port, args.events, args.window)
        else:
            child_txredisapi(
                args.port, args.events, args.window, args.child.endswith("hiredis")
            )
        return

    server = None
    tmp = tempfile.mkdtemp()
    port = args.port
    if port is None:
        if shutil.which("redis-server") is None:
            raise SystemExit("redis-server not found (Debian package redis-server)")
        port = free_port()
        server = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", tmp],
            stdout=subprocess.DEVNULL,
        )
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), 0.1).close()
                break
            except OSError:
                time.sleep(0.05)
    try:
        print(f"{args.events} events, window {args.window}, redis on port {port}")
        print(f"{'client':22} {'µs CPU/event':>13} {'events/s':>10} "
              f"{'idle ms CPU/s':>14} {'redis µs/event':>15}")
        for client in args.only or CLIENTS:
            before = redis_cpu(port)
            out = subprocess.run(
                [sys.executable, __file__, "--child", client, "--port", str(port),
                 "--events", str(args.events), "--window", str(args.window)],
                capture_output=True, text=True, timeout=300,
            )
            if out.returncode or not out.stdout.strip():
                print(f"{client:22} failed: {out.stderr.strip()[-500:]}")
                continue
            result = json.loads(out.stdout.strip().splitlines()[-1])
            spent = redis_cpu(port) - before
            print(
                f"{client:22} {result['cpu'] / args.events * 1e6:13.1f} "
                f"{args.events / result['wall']:10.0f} "
                f"{result['idle_cpu_per_s'] * 1e3:14.2f} "
                f"{spent / args.events * 1e6:15.1f}"
            )
    finally:
        if server is not None:
            server.terminate()
            server.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
