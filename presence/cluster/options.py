"""The cluster options of ``twistd presence``: --redis, --node-id, --node-ttl.

The server's L{twisted.python.usage.Options} takes them by inheriting
L{ClusterOptions} (usage.Options gathers C{optParameters} from every base
class), checks them in its C{postOptions} with L{check}, and builds the bus
with L{build_bus} (None without C{--redis}: one process, in memory).
"""

from __future__ import annotations

import re
from typing import Any

from twisted.python import usage

from presence.cluster.bus import RedisBus, default_node_id
from presence.cluster.connection import RedisAddress

MIN_TTL = 1.0
_NODE_ID = re.compile(r"[!-~]{1,200}")  # printable ASCII, no spaces


def _ttl(value: str) -> float:
    ttl = float(value)
    if not ttl >= MIN_TTL:
        raise ValueError(f"{value} is less than {MIN_TTL:g}")
    return ttl


_ttl.__name__ = "seconds"


def _batch(value: str) -> float:
    ms = float(value)
    if not 0 <= ms <= 1000:
        raise ValueError(f"{value} is not between 0 and 1000")
    return ms


_batch.__name__ = "milliseconds"


class ClusterOptions:
    """A mix-in of cluster parameters for a usage.Options subclass."""

    optParameters: list[list[Any]] = [
        ["redis", None, None,
         "Run as one node of a cluster sharing this Redis: "
         "redis://[[user]:password@]host[:port][/db], or rediss:// for TLS."],
        ["node-id", None, None,
         "This node's name in the cluster (default: hostname:pid)."],
        ["node-ttl", None, 10.0,
         "Seconds a node may go without refreshing its liveness in Redis "
         "before the others declare it dead and its users offline.", _ttl],
        ["redis-batch-ms", None, 0.0,
         "Milliseconds a change may wait for others to share one script call "
         "in Redis (0: only those of the same reactor turn). More costs "
         "latency and saves Redis CPU.", _batch],
    ]


def check(options: usage.Options) -> None:
    """Validate the cluster options (UsageError names what is wrong)."""
    url = options.get("redis")
    if url is None:
        if options.get("node-id") is not None:
            raise usage.UsageError("--node-id needs --redis")
        if options.get("redis-batch-ms"):
            raise usage.UsageError("--redis-batch-ms needs --redis")
        return
    try:
        options["redis-address"] = RedisAddress.parse(url)
    except ValueError as e:
        raise usage.UsageError(f"--redis: {e}") from None
    node = options.get("node-id")
    if node is not None and not _NODE_ID.fullmatch(node):
        raise usage.UsageError(
            "--node-id: 1 to 200 printable ASCII characters, no spaces"
        )


def build_bus(options: usage.Options, reactor: Any = None) -> RedisBus | None:
    """The node's bus (a service to start), or None without --redis."""
    if options.get("redis") is None:
        return None
    address = options.get("redis-address") or RedisAddress.parse(options["redis"])
    return RedisBus(
        address,
        options.get("node-id") or default_node_id(),
        float(options.get("node-ttl", 10.0)),
        reactor,
        float(options.get("redis-batch-ms", 0.0)) / 1000,
    )
