"""C{presence-bench --transport v0}: the bench's users as the demo's clients.

L{V0Bench} is the bench run (L{Bench}) with load workers whose users speak
protocol v0 (L{presence.bench.v0load}) to the server's line port, where the
server tells v0 from v1 by itself.  What the figures mean for a protocol in
which the client pulls, one event per message, once a second:

  - A delivery is an event a client has actually received (a reply
    C{{"online":...}}); events still queued in the server are not.
  - The clients pull at most C{users / poll} events per second, whatever the
    server could do: at 2,000 users that is 2,000/s, while 2,000 changes/s
    with 20 friends queue 40,000/s.  So a fan-out phase waits, after its
    sending, until the queues have drained (L{drain_bound}), and its CPU is
    that of the whole phase, drain included.
  - Every delivery takes a poll, and the demo's poll is its whole login
    again: the polls cost the server far more than the events do.  The
    comparison's CPU per delivery is therefore the raw one, polls included
    (net of the idle rate, which here is the polling, the events vanish in
    its noise over a long drain).  Its parts: C{cpu_us_per_poll} (the hold's
    CPU per poll answered) and C{cpu_us_per_event_net} (what the events add
    to the polls while the changes come in, per event queued).
  - Latency is from a change to the receipt of its event, paired in the
    controller (L{pair}) since a v0 event names neither friend nor time.  It
    is the wait for the next poll plus the wait behind the queued events,
    not the server's speed: it cannot be compared with a push protocol's.
"""

from __future__ import annotations

import math
from array import array
from dataclasses import replace
from typing import Any

from presence.bench.runner import Bench, percentiles
from presence.bench.v0load import V0Worker


def _arrays(reply: dict[str, Any], prefix: str) -> tuple[array[int], array[float],
                                                          array[int]]:
    raw = reply["v0"]
    uid, when, online = array("i"), array("d"), array("b")
    uid.frombytes(raw[prefix + "_uid"])
    when.frombytes(raw[prefix + "_time"])
    online.frombytes(raw[prefix + "_online"])
    return uid, when, online


def pair(replies: list[dict[str, Any]], graph: list[list[int]]) -> dict[str, Any]:
    """Each event a watcher received, paired with the change it tells of.

    A watcher's events come in the order in which the server queued them,
    which is the order of its friends' changes; so the k-th event a watcher
    received in the phase tells of the k-th change, by send time, among its
    friends.  Changes sent within the same instant by different workers may
    reach the server in the other order: the pair is then off by that
    instant, and the direction (online or offline) may disagree, which
    C{mismatched} counts; C{max_shift_ms} bounds the error of such pairs
    (the send-time gap to the nearest change of the right direction);
    C{unexplained} counts those with none near, a pairing gone wrong.
    Events beyond the changes (left from an earlier
    phase) are C{unpaired}.
    """
    sends: list[tuple[float, int, int]] = []
    for r in replies:
        uids, times, onlines = _arrays(r, "sent")
        sends.extend(zip(times, uids, onlines, strict=True))
    sends.sort()
    told: dict[int, list[tuple[float, int]]] = {}
    for when, uid, online in sends:
        for watcher in graph[uid]:
            told.setdefault(watcher, []).append((when, online))
    received: dict[int, list[tuple[float, int]]] = {}
    for r in replies:
        uids, times, onlines = _arrays(r, "recv")
        for uid, when, online in zip(uids, times, onlines, strict=True):
            received.setdefault(uid, []).append((when, online))
    lat = array("d")
    mismatched = unexplained = unpaired = 0
    shift = 0.0
    for watcher, events in received.items():
        changes = told.get(watcher, [])
        for k, (when, online) in enumerate(events):
            if k >= len(changes):
                unpaired += 1
                continue
            sent, direction = changes[k]
            lat.append(when - sent)
            if direction != online:
                mismatched += 1
                near = _shift(changes, k, online)
                if near is None:
                    unexplained += 1
                else:
                    shift = max(shift, near)
    return {"latency": percentiles(lat), "changes": len(sends),
            "mismatched": mismatched, "unexplained": unexplained,
            "unpaired": unpaired, "max_shift_ms": shift * 1000.0}


def _shift(changes: list[tuple[float, int]], k: int, online: int) -> float | None:
    """How far in send time the k-th change is from the nearest one in the
    direction the event had: what a reordered pair may be off by."""
    sent = changes[k][0]
    best = math.inf
    for j in range(max(0, k - 64), min(len(changes), k + 65)):
        if changes[j][1] == online:
            best = min(best, abs(changes[j][0] - sent))
    return best if best != math.inf else None


def drain_bound(users: int, friends: int, events: float, poll: float) -> float:
    """Seconds for the clients to pull what C{events} changes queue: the
    average watcher's share, doubled for the unlucky ones, one per poll."""
    per_watcher = events * friends / max(1, users)
    return (2 * per_watcher + 10) * poll


class V0Bench(Bench):
    """The bench run with every user a v0 client of the line port."""

    worker_class = V0Worker
    transport = "v0"

    def worker_config(self) -> dict[str, Any]:
        return {"poll": self.opts.v0_poll}

    def run_events(
        self, tag: str, kind: str, command: tuple[Any, ...], seconds: float,
        label: str,
    ) -> dict[str, Any]:
        saved = self.opts
        o = self.opts
        if kind == "fanout":
            rate = command[1] * o.workers
            # Flat out, the window bounds what waits: deliveries, not changes.
            events = rate * seconds if rate else o.window / max(1, o.friends)
            bound = drain_bound(o.users, o.friends, events, o.v0_poll)
            self.opts = replace(o, drain_timeout=max(o.drain_timeout,
                                                     math.ceil(bound)))
        try:
            res = super().run_events(tag, kind, command, seconds, label)
        finally:
            self.opts = saved
        res["v0_poll"] = saved.v0_poll
        return res

    def phase_hold(self) -> None:
        super().phase_hold()
        hold = self.results["hold"]
        polls = hold.get("pings_answered")  # polls answered with a pong
        if polls and hold.get("server_cpu_s") is not None:
            hold["cpu_us_per_poll"] = hold["server_cpu_s"] / polls * 1e6

    def annotate(self, kind: str, res: dict[str, Any],
                 replies: list[dict[str, Any]]) -> None:
        if kind != "fanout":
            return
        paired = pair(replies, self.graph)
        res["latency"] = paired.pop("latency")
        res["v0_pairing"] = paired
        events = res.get("expected_deliveries")
        if events and res.get("send_server_cpu_s") is not None:
            # Over the drain the polls' CPU swamps the events'; while the
            # changes come in, what they add to the polls stands out.
            net = res["send_server_cpu_s"] - self.idle_cpu_rate * res["send_wall_s"]
            res["cpu_us_per_event_net"] = max(0.0, net) / events * 1e6
