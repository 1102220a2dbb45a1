"""The admin HTTP API over real loopback sockets (port 0), with fake callables."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import Clock
from twisted.trial import unittest
from twisted.web.client import Agent, FileBodyProducer, readBody
from twisted.web.http_headers import Headers

from presence.core.interfaces import UserState
from presence.server import admin
from presence.wire import MAX_USER_ID


def state(
    uid: int, status: str = "online", text: str = "", sessions: int = 1
) -> UserState:
    return UserState(
        uid=uid, present=True, status=status, text=text, listed=frozenset(),
        sessions=sessions, last_seen=0.0, version=1,
    )


class Fakes:
    """What the server would pass to admin_site, with knobs for the tests."""

    def __init__(self) -> None:
        self.metrics = admin.Metrics()
        self.sessions = 3
        self.users = 2
        self.is_ready = True
        self.states: dict[int, UserState] = {}
        self.lookups: list[list[int]] = []
        self.pending: Deferred[Any] | None = None
        self.called: Deferred[None] = Deferred()
        self.disconnected: list[int] = []
        self.fail = False

    def lookup(self, ids: Sequence[int]) -> Any:
        self.lookups.append(list(ids))
        if self.fail:
            raise RuntimeError("the bus is broken")
        answer = [self.states.get(i) for i in ids]
        if self.pending is not None:
            # Tell the test on the next reactor turn, once the request's
            # handler has returned (and set its timeout).
            reactor.callLater(0, self.called.callback, None)
            return self.pending
        return answer

    def disconnect(self, uid: int) -> Any:
        self.disconnected.append(uid)
        if self.pending is not None:
            # Tell the test on the next reactor turn, once the request's
            # handler has returned (and set its timeout).
            reactor.callLater(0, self.called.callback, None)
            return self.pending
        return 2


class AdminTestCase(unittest.TestCase):
    token: bytes | None = None

    def setUp(self) -> None:
        self.fakes = Fakes()
        self.clock = Clock()
        self.site = self.make_site()
        self.port = reactor.listenTCP(0, self.site, interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.base = f"http://127.0.0.1:{self.port.getHost().port}"  # type: ignore[attr-defined]
        self.agent = Agent(reactor)

    def make_site(self, **kwargs: Any) -> Any:
        f = self.fakes
        return admin.admin_site(
            metrics=f.metrics,
            sessions=lambda: f.sessions,
            users_online=lambda: f.users,
            lookup=f.lookup,
            disconnect=f.disconnect,
            ready=lambda: f.is_ready,
            token=self.token,
            clock=self.clock,
            **kwargs,
        )

    @inlineCallbacks
    def request(
        self,
        path: str,
        method: bytes = b"GET",
        body: bytes | None = None,
        headers: dict[bytes, bytes] | None = None,
    ) -> Any:
        h = Headers()
        for k, v in (headers or {}).items():
            h.addRawHeader(k, v)
        producer = None if body is None else FileBodyProducer(_bytes_io(body))
        response = yield self.agent.request(
            method, (self.base + path).encode(), h, producer
        )
        content = yield readBody(response)
        return response, content

    @inlineCallbacks
    def json(self, path: str, **kwargs: Any) -> Any:
        response, content = yield self.request(path, **kwargs)
        self.assertEqual(
            response.headers.getRawHeaders(b"content-type"), [b"application/json"]
        )
        return response.code, json.loads(content)


def _bytes_io(data: bytes) -> Any:
    from io import BytesIO

    return BytesIO(data)


class HealthTests(AdminTestCase):
    @inlineCallbacks
    def test_healthz(self) -> Any:
        """/healthz answers 200 while the process runs."""
        code, body = yield self.json("/healthz")
        self.assertEqual((code, body), (200, {"status": "ok"}))

    @inlineCallbacks
    def test_readyz_follows_callable(self) -> Any:
        """/readyz asks the ready callable on each request: 200, then 503."""
        code, _ = yield self.json("/readyz")
        self.assertEqual(code, 200)
        self.fakes.is_ready = False
        code, body = yield self.json("/readyz")
        self.assertEqual((code, body), (503, {"status": "not ready"}))

    @inlineCallbacks
    def test_unknown_paths(self) -> Any:
        """Unknown paths, below leaves too, are 404 with a JSON error."""
        for path in ("/nope", "/v1", "/v1/nope", "/healthz/x", "/", "/v1/presence/1"):
            code, body = yield self.json(path)
            self.assertEqual((path, code, body), (path, 404, {"error": "not found"}))

    @inlineCallbacks
    def test_method_not_allowed(self) -> Any:
        """A method a resource lacks is 405 with Allow and a JSON error."""
        response, content = yield self.request("/healthz", method=b"DELETE")
        self.assertEqual(response.code, 405)
        self.assertIn(b"GET", response.headers.getRawHeaders(b"allow")[0])
        self.assertIn("error", json.loads(content))
        response, _ = yield self.request("/v1/disconnect")
        self.assertEqual(response.code, 405)
        self.assertEqual(response.headers.getRawHeaders(b"allow"), [b"POST"])


class MetricsTests(AdminTestCase):
    @inlineCallbacks
    def scrape(self) -> Any:
        response, content = yield self.request("/metrics")
        self.assertEqual(response.code, 200)
        self.assertTrue(
            response.headers.getRawHeaders(b"content-type")[0].startswith(
                b"text/plain"
            )
        )
        lines = content.decode().splitlines()
        return {
            line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in lines
            if line and not line.startswith("#")
        }

    @inlineCallbacks
    def test_counters_and_gauges(self) -> Any:
        """/metrics exports the counts the server made and the gauges' values."""
        m = self.fakes.metrics
        m.connected("tcp")
        m.connected("tcp")
        m.connected("websocket")
        m.retransport("tcp", "v0")
        m.connected("tcp")
        m.disconnected("tcp")
        m.login()
        m.login()
        m.event(3)
        m.delivered(7)
        m.delivered()
        m.error(14)
        values = yield self.scrape()
        self.assertEqual(values['presence_connections{transport="tcp"}'], 1)
        self.assertEqual(values['presence_connections{transport="websocket"}'], 1)
        self.assertEqual(values['presence_connections{transport="v0"}'], 1)
        self.assertEqual(values["presence_sessions"], 3)
        self.assertEqual(values["presence_users_online"], 2)
        self.assertEqual(values["presence_logins_total"], 2)
        self.assertEqual(values["presence_events_total"], 3)
        self.assertEqual(values["presence_deliveries_total"], 8)
        self.assertEqual(values['presence_errors_total{code="14"}'], 1)
        self.assertEqual(values['presence_errors_total{code="17"}'], 0)
        self.assertNotIn("presence_cluster_nodes", values)
        self.assertNotIn("presence_redis_up", values)
        self.assertIn("process_resident_memory_bytes", values)

    @inlineCallbacks
    def test_gauges_read_at_scrape_time(self) -> Any:
        """Gauges come from the callables at each scrape, not at start."""
        values = yield self.scrape()
        self.assertEqual(values["presence_sessions"], 3)
        self.fakes.sessions = 41
        self.fakes.users = 40
        values = yield self.scrape()
        self.assertEqual(values["presence_sessions"], 41)
        self.assertEqual(values["presence_users_online"], 40)

    @inlineCallbacks
    def test_cluster_gauges(self) -> Any:
        """In cluster mode the node count and Redis reachability are exported."""
        self.port.stopListening()
        up = [True]
        self.site = self.make_site(cluster_nodes=lambda: 4, redis_up=lambda: up[0])
        self.port = reactor.listenTCP(0, self.site, interface="127.0.0.1")
        self.base = f"http://127.0.0.1:{self.port.getHost().port}"  # type: ignore[attr-defined]
        values = yield self.scrape()
        self.assertEqual(values["presence_cluster_nodes"], 4)
        self.assertEqual(values["presence_redis_up"], 1)
        up[0] = False
        values = yield self.scrape()
        self.assertEqual(values["presence_redis_up"], 0)
        yield self.port.stopListening()


class PresenceTests(AdminTestCase):
    @inlineCallbacks
    def test_states_in_order(self) -> Any:
        """Users come back in the order asked, shaped by what watchers see."""
        self.fakes.states = {
            1: state(1, "away", "lunch", sessions=2),
            3: state(3, "invisible", sessions=1),
        }
        code, body = yield self.json("/v1/presence?user_id=3&user_id=2&user_id=1")
        self.assertEqual(code, 200)
        self.assertEqual(
            body,
            {
                "users": [
                    {"user_id": 3, "online": False, "sessions": 1},
                    {"user_id": 2, "online": False, "sessions": 0},
                    {"user_id": 1, "online": True, "status": "away", "text": "lunch",
                     "sessions": 2},
                ]
            },
        )
        self.assertEqual(self.fakes.lookups, [[3, 2, 1]])

    @inlineCallbacks
    def test_asynchronous_lookup(self) -> Any:
        """A lookup that returns a Deferred is answered when it fires."""
        self.fakes.pending = Deferred()
        result = self.json(f"/v1/presence?user_id={MAX_USER_ID}")
        yield self.fakes.called
        self.fakes.pending.callback([state(MAX_USER_ID)])
        code, body = yield result
        self.assertEqual(code, 200)
        self.assertEqual(body["users"][0]["user_id"], MAX_USER_ID)
        self.assertTrue(body["users"][0]["online"])

    @inlineCallbacks
    def test_lookup_timeout(self) -> Any:
        """A lookup that never answers gets 503 after the timeout."""
        self.fakes.pending = Deferred()
        result = self.json("/v1/presence?user_id=1")
        yield self.fakes.called
        self.clock.advance(10)
        code, body = yield result
        self.assertEqual((code, body), (503, {"error": "timed out"}))

    @inlineCallbacks
    def test_lookup_failure(self) -> Any:
        """A lookup that raises is a 500, logged, and the server goes on."""
        self.fakes.fail = True
        code, body = yield self.json("/v1/presence?user_id=1")
        self.assertEqual((code, body), (500, {"error": "internal error"}))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    @inlineCallbacks
    def test_bad_ids(self) -> Any:
        """Ids that are not 1 .. 2**63-1, or none, are 400; the lookup is not asked."""
        for query in (
            "", "?user_id=", "?user_id=0", "?user_id=-1", "?user_id=1.0",
            "?user_id=abc", f"?user_id={MAX_USER_ID + 1}", "?user_id=01",
            "?user_id=%EF%BC%91", "?user_id=1&user_id=x", "?user_id=" + "9" * 400,
        ):
            code, body = yield self.json("/v1/presence" + query)
            self.assertEqual((query, code), (query, 400))
            self.assertIsInstance(body["error"], str)
        self.assertEqual(self.fakes.lookups, [])

    @inlineCallbacks
    def test_at_most_1000_ids(self) -> Any:
        """1,000 ids are answered; 1,001 are a 400."""
        query = "&".join(f"user_id={i}" for i in range(1, 1001))
        code, body = yield self.json("/v1/presence?" + query)
        self.assertEqual((code, len(body["users"])), (200, 1000))
        code, body = yield self.json("/v1/presence?" + query + "&user_id=5")
        self.assertEqual(code, 400)
        self.assertIn("1000", body["error"])

    @inlineCallbacks
    def test_1000_long_ids(self) -> Any:
        """1,000 ids of 19 digits (a 28 KB request line) are answered."""
        query = "&".join(f"user_id={MAX_USER_ID - i}" for i in range(1000))
        code, body = yield self.json("/v1/presence?" + query)
        self.assertEqual((code, len(body["users"])), (200, 1000))


class DisconnectTests(AdminTestCase):
    def post(self, body: bytes, **kwargs: Any) -> Any:
        return self.json("/v1/disconnect", method=b"POST", body=body, **kwargs)

    @inlineCallbacks
    def test_disconnect(self) -> Any:
        """POST /v1/disconnect calls disconnect and reports the count."""
        code, body = yield self.post(b'{"user_id": 7}')
        self.assertEqual((code, body), (200, {"disconnected": 2}))
        self.assertEqual(self.fakes.disconnected, [7])

    @inlineCallbacks
    def test_asynchronous_disconnect(self) -> Any:
        """A disconnect that returns a Deferred is answered when it fires."""
        self.fakes.pending = Deferred()
        result = self.post(b'{"user_id": 7}')
        yield self.fakes.called
        self.fakes.pending.callback(5)
        code, body = yield result
        self.assertEqual((code, body), (200, {"disconnected": 5}))

    @inlineCallbacks
    def test_bad_bodies(self) -> Any:
        """Bodies that are not {"user_id": id} are 400; nobody is disconnected."""
        for body in (
            b"", b"{", b"[1]", b'"x"', b"{}", b'{"user_id": true}',
            b'{"user_id": 1.0}', b'{"user_id": "1"}', b'{"user_id": 0}',
            b'{"user_id": 9223372036854775808}', b'{"user_id": 1, "x": 2}',
            b"\xff\xfe", b'{"user_id": 1' + b" " * admin.MAX_BODY + b"}",
        ):
            code, answer = yield self.post(body)
            self.assertEqual((body[:40], code), (body[:40], 400))
            self.assertIsInstance(answer["error"], str)
        self.assertEqual(self.fakes.disconnected, [])


class TokenTests(AdminTestCase):
    token = b"s3cret-admin-token"

    @inlineCallbacks
    def test_missing_token(self) -> Any:
        """/v1/* without a bearer token is 401 with WWW-Authenticate."""
        for headers in ({}, {b"authorization": b"Basic czNjcmV0"},
                        {b"authorization": b"Bearer "}):
            response, _ = yield self.request("/v1/presence?user_id=1", headers=headers)
            self.assertEqual(response.code, 401)
            self.assertTrue(response.headers.getRawHeaders(b"www-authenticate"))
        self.assertEqual(self.fakes.lookups, [])

    @inlineCallbacks
    def test_wrong_token(self) -> Any:
        """A wrong token is 403, for both endpoints, and nothing is done."""
        headers = {b"authorization": b"Bearer s3cret-admin-tokeN"}
        code, _ = yield self.json("/v1/presence?user_id=1", headers=headers)
        self.assertEqual(code, 403)
        code, _ = yield self.json(
            "/v1/disconnect", method=b"POST", body=b'{"user_id":1}', headers=headers
        )
        self.assertEqual(code, 403)
        self.assertEqual((self.fakes.lookups, self.fakes.disconnected), ([], []))

    @inlineCallbacks
    def test_right_token(self) -> Any:
        """The right token, compared with hmac.compare_digest, lets requests in."""
        compared: list[tuple[bytes, bytes]] = []
        real = admin.hmac.compare_digest

        def spy(a: bytes, b: bytes) -> bool:
            compared.append((a, b))
            return real(a, b)

        self.patch(admin.hmac, "compare_digest", spy)
        headers = {b"authorization": b"bearer " + self.token}
        code, _ = yield self.json("/v1/presence?user_id=1", headers=headers)
        self.assertEqual(code, 200)
        self.assertEqual(compared, [(self.token, self.token)])

    @inlineCallbacks
    def test_open_endpoints(self) -> Any:
        """/metrics, /healthz and /readyz need no token."""
        for path in ("/metrics", "/healthz", "/readyz"):
            response, _ = yield self.request(path)
            self.assertEqual((path, response.code), (path, 200))


class UnitTests(unittest.TestCase):
    def test_read_token(self) -> None:
        """The token file's content is used with surrounding whitespace stripped."""
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b"  abc def\n\n")
        self.assertEqual(admin.read_token(path), b"abc def")

    def test_empty_token_file(self) -> None:
        """An empty token file is refused rather than accepting an empty token."""
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b" \n")
        self.assertRaises(ValueError, admin.read_token, path)

    def test_state_json(self) -> None:
        """A ghost in its grace is online with no sessions; absent is offline."""
        ghost = UserState(1, True, "busy", "", frozenset(), 0, 0.0, 3)
        self.assertEqual(
            admin.state_json(1, ghost),
            {"user_id": 1, "online": True, "status": "busy", "text": "", "sessions": 0},
        )
        gone = UserState(2, False, "online", "", frozenset(), 0, 5.0, 4)
        self.assertEqual(
            admin.state_json(2, gone), {"user_id": 2, "online": False, "sessions": 0}
        )
