"""The friend graph: seeded, random, symmetric, about C{friends} per user.

Every process of the benchmark rebuilds the same graph from C{(users,
friends, seed)}, so only three integers cross process boundaries.

The graph is the union of C{friends // 2} random Hamiltonian cycles (each
gives every user two friends), plus a random perfect matching when
C{friends} is odd.  Edges drawn twice collapse, so a few users end up with
slightly fewer friends; nobody has more.  It is symmetric: X lists W exactly
when W lists X, so the server's default and C{--visibility mutual} modes
deliver the same events, and the users watching X are X's own friends.

With C{nodes} above one (C{presence-bench --cluster N}, where user u connects
to node C{u % N}), each cycle and the matching walk the users in an order
that takes the next user from the next node, so that nearly every edge joins
two nodes: the friends a change reaches sit on other nodes, and the bench
measures the cluster's path, not a node's local one.  Only where the node
classes' sizes differ (users not a multiple of N) do a few edges stay within
a node (L{cross_fraction} says how many).
"""

from __future__ import annotations

import random


def friend_graph(
    users: int, friends: int, seed: int, nodes: int = 1
) -> list[list[int]]:
    """C{result[uid]} is the sorted friend list of user C{uid} (ids 1..users).

    C{result[0]} is an empty placeholder so that user ids index directly.
    C{nodes} above one: edges join users of different C{uid % nodes}.
    """
    if users < 1:
        raise ValueError("users must be at least 1")
    friends = max(0, min(friends, users - 1))
    rng = random.Random(seed)
    adjacency: list[set[int]] = [set() for _ in range(users + 1)]
    ids = list(range(1, users + 1))

    def link(a: int, b: int) -> None:
        if a != b:
            adjacency[a].add(b)
            adjacency[b].add(a)

    def walk() -> None:
        if nodes <= 1:
            rng.shuffle(ids)
            return
        # Shuffle each node's users, then deal them round-robin: consecutive
        # users in the walk sit on consecutive nodes.
        classes = [[u for u in range(1, users + 1) if u % nodes == r]
                   for r in (*range(1, nodes), 0)]
        for members in classes:
            rng.shuffle(members)
        ids[:] = [members[i] for i in range(len(classes[0]))
                  for members in classes if i < len(members)]

    for _ in range(friends // 2):
        walk()
        for i in range(users):
            link(ids[i], ids[(i + 1) % users])
    if friends % 2:
        walk()
        for i in range(0, users - 1, 2):
            link(ids[i], ids[i + 1])
    return [sorted(s) for s in adjacency]


def cross_fraction(graph: list[list[int]], nodes: int) -> float:
    """The fraction of the graph's edges that join two nodes (C{uid % nodes})."""
    edges = cross = 0
    for uid, friends in enumerate(graph):
        for f in friends:
            if f > uid:
                edges += 1
                cross += uid % nodes != f % nodes
    return cross / edges if edges else 0.0


def assign(users: int, workers: int, worker: int) -> list[int]:
    """The user ids that worker C{worker} (0-based) of C{workers} connects."""
    return list(range(worker + 1, users + 1, workers))


def source_address(uid: int, addresses: int) -> str:
    """The loopback source address a user's connection binds to: 127.0.0.2..."""
    index = (uid - 1) % addresses
    return f"127.0.{(index + 2) // 256}.{(index + 2) % 256}"
