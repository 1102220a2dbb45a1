"""Cluster mode: many presence processes as one service, through Redis.

L{RedisBus} is the core's L{presence.core.interfaces.IBus} on Redis;
L{presence.cluster.options} adds C{--redis}, C{--node-id} and C{--node-ttl}
to the server's options and builds the bus from them.  See docs/cluster.rst.
"""

from presence.cluster.bus import RedisBus, default_node_id
from presence.cluster.connection import RedisAddress

__all__ = ["RedisAddress", "RedisBus", "default_node_id"]
