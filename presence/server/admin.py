"""The admin HTTP API (C{--admin ENDPOINT}): metrics, health, presence queries
and disconnects, served by twisted.web on the server's reactor.

The API knows nothing of the registry: L{admin_site} takes callables, and the
server wires them to its registry (or, in cluster mode, to Redis):

  - C{lookup(ids)} returns, for each id in order, the user's L{UserState} or
    None when the user is absent; it may return a Deferred.
  - C{disconnect(uid)} ends every session of the user with error 17 and
    returns how many there were; it may return a Deferred.
  - C{ready()} says whether the server accepts logins now.

L{Metrics} is what the sessions and the registry count with.  Counting is
one integer addition in a plain attribute: cheaper than a prometheus_client
C{Counter} (a lock per increment), which matters on the delivery path.  The
L{Collector} turns the counts, and the gauges read from callables, into
Prometheus metrics at scrape time.

Contract: PROTOCOL.md, "Admin HTTP API"; the document: docs/openapi.yaml.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.process_collector import ProcessCollector
from twisted.internet.defer import Deferred, TimeoutError, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from presence.core.interfaces import UserState
from presence.wire import MAX_USER_ID, is_user_id

MAX_IDS = 1000
MAX_BODY = 64 * 1024
TRANSPORTS = ("tcp", "websocket", "v0")

# The codes a server sends (PROTOCOL.md: 2 and 4 are reserved, 0 and 8 never
# sent), exported at 0 from the start so that rates work from the first error.
SENT_CODES = (1, 3, 5, 6, 7, *range(9, 18))

Lookup = Callable[
    [Sequence[int]],
    "Sequence[UserState | None] | Deferred[Sequence[UserState | None]]",
]
Disconnect = Callable[[int], "int | Deferred[int]"]

log = Logger()


class Metrics:
    """What the server counts; read by L{Collector} at scrape time.

    The session calls L{connected}/L{disconnected} (with its transport:
    C{tcp}, C{websocket}, C{v0}), L{login}, L{error}; the registry calls
    L{event} per change of visible state it publishes and L{delivered} per
    message it hands to sessions.  Every call is a few integer additions.
    """

    __slots__ = ("connections", "deliveries", "errors", "events", "logins")

    def __init__(self) -> None:
        self.connections: dict[str, int] = dict.fromkeys(TRANSPORTS, 0)
        self.logins = 0
        self.events = 0
        self.deliveries = 0
        self.errors: dict[int, int] = dict.fromkeys(SENT_CODES, 0)

    def connected(self, transport: str) -> None:
        self.connections[transport] = self.connections.get(transport, 0) + 1

    def disconnected(self, transport: str) -> None:
        self.connections[transport] = self.connections.get(transport, 0) - 1

    def retransport(self, old: str, new: str) -> None:
        """A connection turned out to be another kind (a TCP one is v0)."""
        self.disconnected(old)
        self.connected(new)

    def login(self) -> None:
        self.logins += 1

    def event(self, n: int = 1) -> None:
        self.events += n

    def delivered(self, n: int = 1) -> None:
        self.deliveries += n

    def error(self, code: int) -> None:
        self.errors[code] = self.errors.get(code, 0) + 1


class Collector:
    """Prometheus metrics from a L{Metrics} and gauges read at scrape time.

    C{sessions} and C{users_online} are callables (the registry's counts);
    C{cluster_nodes} and C{redis_up}, given in cluster mode only, add
    C{presence_cluster_nodes} and C{presence_redis_up}.
    """

    def __init__(
        self,
        metrics: Metrics,
        sessions: Callable[[], int],
        users_online: Callable[[], int],
        cluster_nodes: Callable[[], int] | None = None,
        redis_up: Callable[[], bool] | None = None,
    ) -> None:
        self.metrics = metrics
        self.sessions = sessions
        self.users_online = users_online
        self.cluster_nodes = cluster_nodes
        self.redis_up = redis_up

    def collect(self) -> Iterator[Metric]:
        m = self.metrics
        connections = GaugeMetricFamily(
            "presence_connections", "Open connections, by transport.",
            labels=["transport"],
        )
        for transport, n in sorted(m.connections.items()):
            connections.add_metric([transport], n)
        yield connections
        yield GaugeMetricFamily(
            "presence_sessions", "Logged-in sessions on this node.",
            value=self.sessions(),
        )
        yield GaugeMetricFamily(
            "presence_users_online",
            "Users with a logged-in session on this node, visible or not.",
            value=self.users_online(),
        )
        yield CounterMetricFamily(
            "presence_logins", "Successful logins.", value=m.logins
        )
        yield CounterMetricFamily(
            "presence_events", "Changes of visible state published.", value=m.events
        )
        yield CounterMetricFamily(
            "presence_deliveries", "Messages handed to sessions.", value=m.deliveries
        )
        errors = CounterMetricFamily(
            "presence_errors", "Error messages sent, by code.", labels=["code"]
        )
        for code, n in sorted(m.errors.items()):
            errors.add_metric([str(code)], n)
        yield errors
        if self.cluster_nodes is not None:
            yield GaugeMetricFamily(
                "presence_cluster_nodes", "Live nodes in the cluster.",
                value=self.cluster_nodes(),
            )
        if self.redis_up is not None:
            yield GaugeMetricFamily(
                "presence_redis_up", "1 when this node reaches Redis.",
                value=1 if self.redis_up() else 0,
            )


def read_token(path: str | Path) -> bytes:
    """The admin token in C{path}, surrounding whitespace stripped."""
    token = Path(path).read_bytes().strip()
    if not token:
        raise ValueError(f"{path}: the admin token file is empty")
    return token


def state_json(uid: int, state: UserState | None) -> dict[str, Any]:
    """A user as C{/v1/presence} reports it."""
    if state is None or not state.present:
        return {"user_id": uid, "online": False, "sessions": 0}
    if not state.visible:
        return {"user_id": uid, "online": False, "sessions": state.sessions}
    return {
        "user_id": uid,
        "online": True,
        "status": state.status,
        "text": state.text,
        "sessions": state.sessions,
    }


# -- resources ----------------------------------------------------------------


def _json(request: Request, code: int, body: object) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    return json.dumps(body, separators=(",", ":")).encode() + b"\n"


class BadRequest(Exception):
    """Answered with 400 and C{{"error": message}}."""


class JsonResource(Resource):
    """A leaf answering JSON; other methods than C{methods} get a JSON 405."""

    isLeaf = True
    methods: tuple[str, ...] = ("GET", "HEAD")

    def render(self, request: Request) -> bytes | int:
        if request.postpath and request.postpath != [b""]:
            return _json(request, 404, {"error": "not found"})
        method = request.method.decode("ascii", "replace")
        if method not in self.methods:
            request.setHeader(b"allow", ", ".join(self.methods).encode())
            return _json(request, 405, {"error": f"method {method[:20]} not allowed"})
        try:
            if method == "HEAD":
                body = self.render_GET(request)
                return body if isinstance(body, int) else b""
            result: bytes | int = getattr(self, f"render_{method}")(request)
        except BadRequest as e:
            return _json(request, 400, {"error": str(e)})
        return result

    def render_GET(self, request: Request) -> bytes | int:
        raise NotImplementedError


class NotFound(JsonResource):
    def render_GET(self, request: Request) -> bytes:
        return _json(request, 404, {"error": "not found"})

    def render(self, request: Request) -> bytes | int:
        return _json(request, 404, {"error": "not found"})


class Healthz(JsonResource):
    def render_GET(self, request: Request) -> bytes:
        return _json(request, 200, {"status": "ok"})


class Readyz(JsonResource):
    def __init__(self, ready: Callable[[], bool]) -> None:
        super().__init__()
        self.ready = ready

    def render_GET(self, request: Request) -> bytes:
        if self.ready():
            return _json(request, 200, {"status": "ready"})
        return _json(request, 503, {"status": "not ready"})


class MetricsPage(JsonResource):
    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self.registry = registry

    def render_GET(self, request: Request) -> bytes:
        body = generate_latest(self.registry)
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode())
        return body


class Authorized(JsonResource):
    """A C{/v1/*} resource: checks the bearer token, answers asynchronously."""

    def __init__(
        self, token: bytes | None, clock: IReactorTime, timeout: float
    ) -> None:
        super().__init__()
        self.token = token
        self.clock = clock
        self.timeout = timeout

    def render(self, request: Request) -> bytes | int:
        if self.token is not None:
            header = request.getHeader(b"authorization") or b""
            scheme, _, given = header.partition(b" ")
            if scheme.lower() != b"bearer" or not given.strip():
                request.setHeader(b"www-authenticate", b'Bearer realm="presence"')
                return _json(request, 401, {"error": "a bearer token is needed"})
            if not hmac.compare_digest(given.strip(), self.token):
                return _json(request, 403, {"error": "wrong token"})
        return super().render(request)

    def answer_later(
        self, request: Request, d: Deferred[Any], shape: Callable[[Any], object]
    ) -> int:
        """Finish C{request} with C{shape(result)} when C{d} fires."""
        finished: list[bool] = []

        def gone(_: object) -> None:
            finished.append(True)

        request.notifyFinish().addBoth(gone)
        d.addTimeout(self.timeout, self.clock)

        def done(result: object) -> None:
            if not finished:
                request.write(_json(request, 200, shape(result)))
                request.finish()

        def failed(failure: Failure) -> None:
            if failure.check(TimeoutError):
                code, message = 503, "timed out"
            else:
                log.failure("admin API: {path}", failure, path=request.path)
                code, message = 500, "internal error"
            if not finished:
                request.write(_json(request, code, {"error": message}))
                request.finish()

        d.addCallbacks(done, failed)
        return NOT_DONE_YET


def _parse_id(text: str) -> int:
    if not text.isascii() or not text.isdigit() or text.startswith("0"):
        raise BadRequest(f"not a user id: {text[:40]!r}")
    value = int(text) if len(text) <= 19 else MAX_USER_ID + 1
    if value > MAX_USER_ID:
        raise BadRequest(f"not a user id: {text[:40]!r}")
    return value


class PresenceQuery(Authorized):
    def __init__(
        self, lookup: Lookup, token: bytes | None, clock: IReactorTime, timeout: float
    ) -> None:
        super().__init__(token, clock, timeout)
        self.lookup = lookup

    def render_GET(self, request: Request) -> int:
        raw = (request.args or {}).get(b"user_id", [])
        if not raw:
            raise BadRequest("user_id is required")
        if len(raw) > MAX_IDS:
            raise BadRequest(f"at most {MAX_IDS} user ids")
        ids = [_parse_id(r.decode("utf-8", "replace")) for r in raw]

        def shape(states: Sequence[UserState | None]) -> object:
            states = list(states)
            if len(states) != len(ids):
                raise RuntimeError("lookup answered for another number of ids")
            pairs = zip(ids, states, strict=True)
            return {"users": [state_json(u, s) for u, s in pairs]}

        d: Deferred[Any] = maybeDeferred(self.lookup, ids)
        d.addCallback(shape)
        return self.answer_later(request, d, lambda body: body)


class Disconnector(Authorized):
    methods = ("POST",)

    def __init__(
        self,
        disconnect: Disconnect,
        token: bytes | None,
        clock: IReactorTime,
        timeout: float,
    ) -> None:
        super().__init__(token, clock, timeout)
        self.disconnect = disconnect

    def render_POST(self, request: Request) -> int:
        assert request.content is not None
        body = request.content.read(MAX_BODY + 1)
        if len(body) > MAX_BODY:
            raise BadRequest("the body is too large")
        try:
            obj = json.loads(body)
        except (ValueError, UnicodeDecodeError) as e:
            raise BadRequest(f"the body is not JSON: {e}") from None
        if not isinstance(obj, dict):
            raise BadRequest('the body must be an object: {"user_id": N}')
        extra = sorted(set(obj) - {"user_id"})
        if extra:
            raise BadRequest(f"unknown fields: {', '.join(extra)[:100]}")
        uid = obj.get("user_id")
        if not is_user_id(uid):
            raise BadRequest("user_id must be an integer in 1 .. 2**63-1")
        assert isinstance(uid, int)
        d: Deferred[Any] = maybeDeferred(self.disconnect, uid)
        return self.answer_later(request, d, lambda n: {"disconnected": int(n)})


class AdminChannel(HTTPChannel):
    """HTTP/1.1 with room for 1,000 ids in a request line (about 28 KB)."""

    MAX_LENGTH = totalHeadersSize = 64 * 1024


class AdminSite(Site):
    protocol = AdminChannel  # type: ignore[assignment]


class Root(Resource):
    def getChild(self, path: bytes, request: Request) -> Resource:
        return NotFound()

    def render(self, request: Request) -> bytes:
        return _json(request, 404, {"error": "not found"})


class V1(Root):
    pass


def admin_site(
    *,
    metrics: Metrics,
    sessions: Callable[[], int],
    users_online: Callable[[], int],
    lookup: Lookup,
    disconnect: Disconnect,
    ready: Callable[[], bool],
    token: bytes | None = None,
    clock: IReactorTime | None = None,
    cluster_nodes: Callable[[], int] | None = None,
    redis_up: Callable[[], bool] | None = None,
    process_metrics: bool = True,
    timeout: float = 10.0,
) -> Site:
    """The admin API's site; listen on it with C{--admin}'s endpoint.

    C{token} (from L{read_token}) protects C{/v1/*}.  C{timeout} bounds how
    long a lookup or disconnect may take (then 503).
    """
    if clock is None:
        from twisted.internet import reactor

        clock = reactor
    assert clock is not None
    registry = CollectorRegistry(auto_describe=True)
    registry.register(
        Collector(metrics, sessions, users_online, cluster_nodes, redis_up)
    )
    if process_metrics:
        ProcessCollector(registry=registry)
    root = Root()
    root.putChild(b"metrics", MetricsPage(registry))
    root.putChild(b"healthz", Healthz())
    root.putChild(b"readyz", Readyz(ready))
    v1 = V1()
    v1.putChild(b"presence", PresenceQuery(lookup, token, clock, timeout))
    v1.putChild(b"disconnect", Disconnector(disconnect, token, clock, timeout))
    root.putChild(b"v1", v1)
    site = AdminSite(root)
    site.displayTracebacks = False
    site.noisy = False
    return site
