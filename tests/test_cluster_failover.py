"""Redis failover to a replica behind HAProxy, as docs/cluster.rst
("Sentinel or replica failover") tells operators to set it up.

Two real redis-servers (a master and its replica), a real HAProxy whose
backend is the block printed in docs/cluster.rst (read from the file, so the
documented health check is the one tested), and two presence nodes whose
``--redis`` is HAProxy's address.  The master is killed and the replica
promoted with ``REPLICAOF NO ONE``, which is what Sentinel does.

Skipped where redis-server or haproxy is missing (Debian packages
redis-server and haproxy), except in CI (CI=true), where .ci/run installs
both.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from redisfixtures import start_redis
from test_cluster_e2e import Start, changes_told_after_outage, node

from presence.cluster.redisserver import RedisServer, free_port, required

DOCS = Path(__file__).resolve().parent.parent / "docs" / "cluster.rst"
# Health checks every 100 ms instead of the documented 1 s keep the test short;
# everything else in the backend block is the documentation's.
CHECK_INTERVAL = "inter 100ms"


def documented_backend() -> list[str]:
    """The HAProxy backend block of docs/cluster.rst, line by line."""
    text = DOCS.read_text()
    start = text.index("sends traffic to the master only::")
    block = []
    for line in text[start:].splitlines()[2:]:
        if line and not line.startswith("    "):
            break
        block.append(line[4:])
    while block and not block[-1]:
        block.pop()
    assert block and block[0] == "backend redis", block
    return block


class HAProxy:
    """haproxy in the foreground, in front of two redis-servers."""

    def __init__(self, directory: Path, first: int, second: int) -> None:
        binary = shutil.which("haproxy")
        if binary is None:
            message = "haproxy is not installed (Debian package haproxy)"
            if required():
                pytest.fail(message + " (CI=true: cluster tests never skip)")
            pytest.skip(message)
        self.port = free_port()
        backend = []
        servers = iter([first, second])
        for line in documented_backend():
            if line.strip().startswith("server "):
                line = re.sub(r"\d+\.\d+\.\d+\.\d+:\d+",
                              f"127.0.0.1:{next(servers)}", line)
                line = line.replace("inter 1s", CHECK_INTERVAL)
                assert CHECK_INTERVAL in line, line
            backend.append(line)
        config = directory / "haproxy.cfg"
        config.write_text("\n".join([
            "defaults",
            "    mode tcp",
            "    timeout connect 1s",
            "    timeout client 1m",
            "    timeout server 1m",
            "frontend redis_in",
            f"    bind 127.0.0.1:{self.port}",
            "    default_backend redis",
            *backend,
            "",
        ]))
        self.proc = subprocess.Popen(
            [binary, "-db", "-f", str(config)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()
        if self.proc.stderr is not None:
            self.proc.stderr.close()


def wait_for(what: str, check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def reachable_through(proxy: HAProxy) -> bool:
    """Whether a PING through HAProxy is answered (its backend is up)."""
    probe = RedisServer(proxy.port)
    try:
        return probe.command("PING", timeout=1.0) == b"PONG"
    except OSError:
        return False
    finally:
        shutil.rmtree(probe.dir, ignore_errors=True)


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[RedisServer, RedisServer, HAProxy]]:
    """A master, its replica (in sync), and HAProxy sending to the master."""
    master = start_redis()
    replica = start_redis()
    proxy = None
    try:
        replica.command("REPLICAOF", "127.0.0.1", master.port)
        wait_for("the replica's link to the master", lambda: replica.info(
            "replication").get("master_link_status") == "up")
        proxy = HAProxy(tmp_path, master.port, replica.port)
        wait_for("HAProxy to pass its first health check",
                 lambda: reachable_through(proxy))
        yield master, replica, proxy
    finally:
        if proxy is not None:
            proxy.close()
        replica.close()
        master.close()


def test_failover_to_replica_behind_haproxy(
    start_server: Start, pair: tuple[RedisServer, RedisServer, HAProxy]
) -> None:
    """The master killed and its replica promoted: both nodes log Redis lost
    and back; a watcher is told exactly the changes made meanwhile on the
    other node, once each; and changes flow through the new master after."""
    master, replica, proxy = pair
    n1 = node(start_server, proxy.url, "n1")
    n2 = node(start_server, proxy.url, "n2")

    def kill_master() -> None:
        # What the replica holds before the kill is what the new master
        # starts with.
        wait_for("the replica to catch up", lambda: replica.info(
            "replication").get("slave_repl_offset") == master.info(
            "replication").get("master_repl_offset"))
        master.stop(signal.SIGKILL)

    def promote() -> None:
        replica.command("REPLICAOF", "NO", "ONE")  # what Sentinel does

    changes_told_after_outage(n1, n2, kill_master, promote, back_within=15,
                              told_within=10)
    keys = replica.command("DBSIZE")
    assert isinstance(keys, int) and keys > 0
