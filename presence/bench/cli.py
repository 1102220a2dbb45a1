"""C{presence-bench}: the command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EXTRA = "pip install 'presence[bench]'"


def parse_rates(text: str) -> list[float | None]:
    """C{"500,2000,max"}: events per second; C{max} is as fast as possible."""
    rates: list[float | None] = []
    for item in text.split(","):
        item = item.strip().lower()
        if not item:
            continue
        if item in ("max", "fast", "0"):
            rates.append(None)
            continue
        value = float(item)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"bad rate {item!r}")
        rates.append(value)
    if len(rates) > 50:
        raise argparse.ArgumentTypeError("at most 50 rates")
    return rates


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="presence-bench",
        description="Drive a presence server with N logged-in users and measure "
        "memory, idle CPU, login rate, fan-out CPU and latency, and churn.",
    )
    p.add_argument("--users", type=int, default=1000, help="connections (default 1000)")
    p.add_argument("--friends", type=int, default=20, help="friends per user (20)")
    p.add_argument("--seed", type=int, default=1, help="friend graph seed (1)")
    p.add_argument("--hold", type=float, default=30.0,
                   help="seconds all users sit idle (30; >= timeout to see heartbeats)")
    p.add_argument("--rates", type=parse_rates,
                   default=parse_rates("500,1000,2000,max"),
                   help="fan-out status changes per second, comma separated; 'max' "
                   "is as fast as the in-flight window allows (500,1000,2000,max)")
    p.add_argument("--rate", type=float, default=None,
                   help="a single fan-out rate (instead of --rates)")
    p.add_argument("--phase-seconds", type=float, default=10.0,
                   help="seconds of sending per fan-out rate (10)")
    p.add_argument("--window", type=int, default=4000,
                   help="deliveries in flight in the 'max' phase (4000)")
    p.add_argument("--churn-rate", type=float, default=200.0,
                   help="disconnects per second in the churn phase (200)")
    p.add_argument("--churn-seconds", type=float, default=10.0,
                   help="seconds of churn, 0 to skip (10)")
    p.add_argument("--churn-delay", type=float, default=1.0,
                   help="seconds before a churned user reconnects (1)")
    p.add_argument("--workers", type=int, default=2, help="load processes (2)")
    p.add_argument("--login-concurrency", type=int, default=400,
                   help="logins in flight, all workers together (400)")
    p.add_argument("--per-address", type=int, default=900,
                   help="connections per source address 127.0.0.x (900)")
    p.add_argument("--addresses", type=int, default=0,
                   help="source addresses to use (default: users / per-address)")
    p.add_argument("--server", default=None,
                   help="HOST:PORT of a running server instead of starting one")
    p.add_argument("--server-pid", type=int, default=None,
                   help="pid of the --server process (default: found by its port)")
    p.add_argument("--timeout", type=float, default=15.0,
                   help="--timeout of the server started (15)")
    p.add_argument("--server-arg", action="append", default=[], metavar="ARG",
                   help="extra option for the server started (repeatable), "
                   "e.g. --server-arg=--max-friends=100")
    p.add_argument("--server-log", type=Path, default=None,
                   help="where the started server's output goes (a temp dir)")
    p.add_argument("--no-pin", dest="pin", action="store_false",
                   help="do not pin the server to the first CPU and the load "
                   "generator to the others")
    p.add_argument("--drain-timeout", type=float, default=30.0,
                   help="seconds to wait for deliveries after a phase (30)")
    p.add_argument("--login-timeout", type=float, default=0.0,
                   help="seconds allowed for the login phase (default max(60, N/100))")
    p.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                   help="before starting, wait up to this long for other processes "
                   "to stop using the CPUs (0)")
    p.add_argument("--out", type=Path, default=None, help="write results JSON here")
    p.add_argument("--plot", type=Path, default=None, help="write a PNG plot here")
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bars on stderr")
    p.add_argument("--transport", choices=["lines", "websocket", "v0"],
                   default="lines",
                   help="how the users speak to presence: JSON lines over TCP "
                   "(lines, the default), one JSON message per WebSocket text "
                   "frame at /ws of a --websocket port the bench adds (websocket; "
                   "with --server, HOST:PORT is then the WebSocket port), or "
                   "protocol v0 as the original demo's clients poll (v0; "
                   "docs/performance.rst, 'Every path against Redis')")
    p.add_argument("--v0-poll", type=float, default=1.0, metavar="SECONDS",
                   help="with --transport v0: seconds a client waits after each "
                   "reply before it asks again (1, the demo's)")
    p.add_argument("--against", choices=["redis"], default=None,
                   help="compare with redis-server pub/sub on the same load, in "
                   "alternating rounds (docs/performance.rst, 'Against Redis'); "
                   "with --cluster N, the N nodes and their Redis against one "
                   "redis-server")
    p.add_argument("--rounds", type=int, default=2,
                   help="with --against: rounds of each server (2)")
    p.add_argument("--quick", action="store_true",
                   help="a small, short run of every phase (" + QUICK_TEXT + ")")
    p.add_argument("--cluster", type=int, default=0, metavar="N",
                   help="start a redis-server and N nodes with --redis; user u "
                   "connects to node u %% N, most friends on other nodes "
                   "(docs/cluster.rst, 'Benchmark')")
    p.add_argument("--redis-unix", action="store_true",
                   help="with --cluster: the nodes reach Redis by its Unix "
                   "socket, not TCP on loopback")
    return p


# --quick and --against change these defaults; options given still win.
QUICK = {"users": 200, "friends": 5, "hold": 2.0, "rates": [200.0, None],
         "phase_seconds": 2.0, "churn_rate": 20.0, "churn_seconds": 1.0,
         "churn_delay": 0.2, "drain_timeout": 10.0, "rounds": 1}
QUICK_TEXT = "200 users, 5 friends, 2 s phases, one round each"
AGAINST = {"users": 2000, "rates": [2000.0, None]}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.against:
        parser.set_defaults(**AGAINST)
    if args.quick:
        parser.set_defaults(**QUICK)
    return parser.parse_args(argv) if args.against or args.quick else args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        # psutil, tqdm and matplotlib come with the "bench" extra, not with
        # the server: say so instead of failing with a traceback.
        from presence.bench.report import print_report, targets, write_json, write_plot
        from presence.bench.runner import Options
        from presence.bench.server import parse_server
        from presence.bench.wsbench import bench_for

        if args.plot:
            import matplotlib  # noqa: F401  (write_plot imports it late)
    except ImportError as e:
        raise SystemExit(
            f"presence-bench: {e.name} is not installed; install it with {EXTRA}"
        ) from None
    if args.users < 2 or args.users > 1_000_000:
        raise SystemExit("presence-bench: --users must be 2..1000000")
    if args.workers < 1 or args.workers > 64:
        raise SystemExit("presence-bench: --workers must be 1..64")
    if args.against and args.server:
        raise SystemExit("presence-bench: --against starts its own servers; "
                         "no --server")
    if args.rounds < 1 or args.rounds > 20:
        raise SystemExit("presence-bench: --rounds must be 1..20")
    if args.cluster and (args.cluster < 2 or args.cluster > 16 or args.server):
        raise SystemExit("presence-bench: --cluster must be 2..16, without --server")
    if args.v0_poll <= 0:
        raise SystemExit("presence-bench: --v0-poll must be above 0")
    if args.cluster and args.transport != "lines":
        raise SystemExit("presence-bench: --cluster drives the line protocol only; "
                         "no --transport websocket")
    if args.redis_unix and not args.cluster:
        raise SystemExit("presence-bench: --redis-unix needs --cluster")
    server = None
    if args.server:
        try:
            server = parse_server(args.server)
        except ValueError as e:
            raise SystemExit(f"presence-bench: --server: {e}") from None
    opts = Options(
        users=args.users,
        friends=args.friends,
        seed=args.seed,
        hold=args.hold,
        rates=[args.rate] if args.rate else args.rates,
        phase_seconds=args.phase_seconds,
        churn_rate=args.churn_rate,
        churn_seconds=args.churn_seconds,
        churn_delay=args.churn_delay,
        workers=args.workers,
        login_concurrency=args.login_concurrency,
        window=args.window,
        per_address=args.per_address,
        addresses=args.addresses,
        server=server,
        server_pid=args.server_pid,
        server_args=args.server_arg,
        timeout=args.timeout,
        pin=args.pin,
        progress=args.progress,
        drain_timeout=args.drain_timeout,
        login_timeout=args.login_timeout,
        server_log=args.server_log,
        wait_quiet=args.wait_quiet,
        transport=args.transport,
        v0_poll=args.v0_poll,
        redis_unix=args.redis_unix,
    )
    if args.against:
        from presence.bench.against_report import run_against

        return run_against(opts, args.rounds, args.out, args.plot, args.cluster)
    if args.cluster:
        from presence.bench.cluster import ClusterBench
        from presence.bench.cluster_report import cluster_targets, print_cluster
        from presence.cluster.redisserver import RedisMissing

        try:
            results = ClusterBench(opts, args.cluster).run()
        except RedisMissing as e:
            raise SystemExit(f"presence-bench: --cluster: {e}") from None
        results["targets"] = cluster_targets(results)
    else:
        results = bench_for(opts.transport)(opts).run()
        results["targets"] = targets(results)
    print_report(results, sys.stdout)
    if args.cluster:
        print_cluster(results, sys.stdout)
    if args.out:
        write_json(results, args.out)
    if args.plot:
        write_plot(results, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
