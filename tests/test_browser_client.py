"""presence.js and the demo page in headless chromium, against a fake server.

The page's WebSocket is replaced by ``FakeWebSocket`` (below), which records
what the client sends and lets the test play the server's part; timers that
the client schedules for reconnecting are captured, not waited for.  The real
server is in test_browser_e2e.py.
"""

from __future__ import annotations

from typing import Any

from browsers import StaticSite

FAKE = """
window.sockets = [];
window.FakeWebSocket = class FakeWebSocket {
  constructor(url) {
    this.url = url; this.readyState = 0; this.sent = []; this.closed = null;
    window.sockets.push(this);
  }
  send(data) { this.sent.push(JSON.parse(data)); }
  close(code = 1000, reason = "") { this.closed = code; this.drop(code, reason); }
  open() { this.readyState = 1; this.onopen && this.onopen({}); }
  serve(...messages) {
    for (const m of messages) {
      this.onmessage && this.onmessage({data: JSON.stringify(m)});
    }
  }
  drop(code = 1006, reason = "") {
    if (this.readyState === 3) return;
    this.readyState = 3; this.onclose && this.onclose({code, reason});
  }
};
"""

# A harness page script: connect with the fake socket and captured timers,
# and record every event.
HARNESS = """
async ({random = 0.5, ...options}) => {
  const { connect } = await import("/presence.js");
  window.timers = [];
  window.events = [];
  const client = connect("ws://test/ws", {
    WebSocket: window.FakeWebSocket,
    setTimeout: (fn, delay) => {
      window.timers.push({fn, delay});
      return window.timers.length;
    },
    clearTimeout: (id) => {
      if (window.timers[id - 1]) window.timers[id - 1].cleared = true;
    },
    random: () => random,
    ...options,
  });
  for (const type of ["open", "online", "offline", "status", "error", "close"]) {
    client.on(type, (detail) => window.events.push([type, detail]));
  }
  window.client = client;
  await new Promise((resolve) => setTimeout(resolve, 0));
  return true;
}
"""


def welcome(uid: int) -> dict[str, Any]:
    return {"type": "welcome", "user_id": uid, "timeout": 15}


def online(uid: int, status: str = "online", text: str = "") -> dict[str, Any]:
    return {"type": "presence", "user_id": uid, "online": True, "status": status,
            "text": text}


def offline(uid: int, at: float = 1.5) -> dict[str, Any]:
    return {"type": "presence", "user_id": uid, "online": False, "status": "offline",
            "last_seen": at}


class Harness:
    """The page side of a test: start the client, play the server, read events."""

    def __init__(self, page: Any, url: str, **options: Any) -> None:
        self.page = page
        page.add_init_script(FAKE)
        page.goto(url + "/demo.css")  # any same-origin page to import from
        page.evaluate(HARNESS, options)

    def socket(self, n: int = -1) -> str:
        return f"window.sockets.at({n})"

    def open(self, n: int = -1) -> list[Any]:
        """Open the socket; return what the client sent on opening."""
        return self.page.evaluate(f"{self.socket(n)}.open(), {self.socket(n)}.sent")

    def serve(self, *messages: Any, n: int = -1) -> None:
        self.page.evaluate(f"(m) => {self.socket(n)}.serve(...m)", list(messages))

    def drop(self, code: int = 1006, n: int = -1) -> None:
        self.page.evaluate(f"{self.socket(n)}.drop({code})")

    def sent(self, n: int = -1) -> list[Any]:
        return self.page.evaluate(f"{self.socket(n)}.sent")

    def events(self) -> list[Any]:
        """The events since the last call."""
        return self.page.evaluate("window.events.splice(0)")

    def call(self, expression: str) -> Any:
        return self.page.evaluate(f"(async () => {{ {expression} }})()")

    def timers(self) -> list[Any]:
        return self.page.evaluate(
            "window.timers.map((t) => ({delay: t.delay, cleared: !!t.cleared}))"
        )

    def fire_reconnect(self) -> None:
        """Run the last reconnect timer (as if its delay had passed)."""
        self.page.evaluate(
            "(async () => { const t = window.timers.filter((t) => !t.cleared).at(-1);"
            " t.cleared = true; await t.fn(); })()"
        )

    def sockets(self) -> int:
        return self.page.evaluate("window.sockets.length")

    def login(self, uid: int, snapshot: list[Any]) -> None:
        """Answer the login: welcome, the snapshot, then the barrier pong."""
        self.open()
        self.serve(welcome(uid), *snapshot, {"type": "pong"})


def test_login_and_live_events(page: Any, static_site: StaticSite) -> None:
    """The client logs in with its options, then reports each real change once."""
    h = Harness(page, static_site.url, userId=4, friends=[3, 5, 3], token="t.o.k",
                status="away", text="lunch")
    sent = h.open()
    assert sent[0] == {"type": "login", "user_id": 4, "friends": [3, 5],
                       "token": "t.o.k", "status": "away", "text": "lunch"}
    assert sent[1] == {"type": "ping"}
    h.serve(welcome(4), online(3, "busy", "call"))
    assert h.events() == [["open", {"userId": 4, "timeout": 15}]]  # snapshot pending
    h.serve({"type": "pong"})
    assert h.events() == [["online", {"userId": 3, "status": "busy", "text": "call"}]]
    h.serve(online(3, "busy", "call"), online(3, "away", ""), online(5),
            offline(3, 7.5), offline(3), online(99))
    assert h.events() == [
        ["status", {"userId": 3, "status": "away", "text": ""}],
        ["online", {"userId": 5, "status": "online", "text": ""}],
        ["offline", {"userId": 3, "lastSeen": 7.5}],
    ]
    friends = h.call("return [...window.client.friends]")
    assert friends == [
        [3, {"online": False, "status": "offline", "text": "", "lastSeen": 7.5}],
        [5, {"online": True, "status": "online", "text": "", "lastSeen": None}],
    ]


def test_answers_pings(page: Any, static_site: StaticSite) -> None:
    """A server ping is answered by a pong."""
    h = Harness(page, static_site.url, userId=1, friends=[])
    h.login(1, [])
    h.serve({"type": "ping", "msg": "are you still there?"})
    assert h.sent()[-1] == {"type": "pong"}


def test_requests(page: Any, static_site: StaticSite) -> None:
    """Status and friends changes are sent as the protocol's messages."""
    h = Harness(page, static_site.url, userId=1, friends=[2, 3])
    h.login(1, [online(2), online(3)])
    h.events()
    h.call("window.client.setStatus('busy', 'meeting')")
    h.call("window.client.addFriends([4, 2])")
    h.call("window.client.removeFriends([3])")
    h.call("window.client.setFriends([4, 5])")
    assert h.sent()[2:] == [
        {"type": "status", "status": "busy", "text": "meeting"},
        {"type": "friends", "add": [4]},
        {"type": "friends", "remove": [3]},
        {"type": "friends", "friends": [4, 5]},
    ]
    # Unwatched friends leave the view without events; new ones start offline.
    assert h.events() == []
    assert h.call("return [...window.client.friends.keys()]") == [4, 5]
    h.serve(online(2), online(5))
    assert h.events() == [["online", {"userId": 5, "status": "online", "text": ""}]]
    assert h.call("try { window.client.setStatus('gone') } catch (e) { return 'no' }") \
        == "no"
    assert h.call("try { window.client.addFriends([0]) } catch (e) { return 'no' }") \
        == "no"


def test_reconnect_rebuilds_from_snapshot(page: Any, static_site: StaticSite) -> None:
    """After a reconnect only the differences with the new snapshot are reported."""
    h = Harness(page, static_site.url, userId=1, friends=[2, 3, 4])
    h.login(1, [online(2), online(3, "away")])
    h.events()
    h.call("window.client.setStatus('busy', 'x')")
    h.drop(1006)
    assert h.events() == [
        ["close", {"code": 1006, "reason": "", "willReconnect": True, "error": None}]
    ]
    h.fire_reconnect()
    assert h.sockets() == 2
    sent = h.open()
    # The current status is part of the new login.
    assert sent[0]["status"] == "busy" and sent[0]["text"] == "x"
    h.serve(welcome(1), online(2), online(4, "online", "hi"))
    assert [e[0] for e in h.events()] == ["open"]
    h.serve({"type": "pong"})
    assert h.events() == [
        ["offline", {"userId": 3, "lastSeen": None}],
        ["online", {"userId": 4, "status": "online", "text": "hi"}],
    ]


def test_backoff_with_jitter(page: Any, static_site: StaticSite) -> None:
    """Reconnect delays double up to maxDelay, jittered in [ceiling/2, ceiling]."""
    h = Harness(page, static_site.url, userId=1, friends=[], minDelay=100,
                maxDelay=1000, random=1)
    delays = []
    for _ in range(6):
        h.drop()
        delays.append(h.timers()[-1]["delay"])
        h.fire_reconnect()
    assert delays == [100, 200, 400, 800, 1000, 1000]
    h.login(1, [])  # a successful login resets the backoff
    h.drop()
    assert h.timers()[-1]["delay"] == 100
    h2 = Harness(page, static_site.url, userId=1, friends=[], minDelay=100, random=0)
    h2.drop()
    assert h2.timers()[-1]["delay"] == 50


def test_stops_on_refusal(page: Any, static_site: StaticSite) -> None:
    """A refused login (error 10) stops the client: no reconnect is scheduled."""
    h = Harness(page, static_site.url, userId=1, friends=[], token="bad")
    h.open()
    h.serve({"type": "error", "error": 10, "msg": "Authentication failed"})
    h.drop(1000)
    events = h.events()
    assert events[0] == ["error", {"code": 10, "message": "Authentication failed",
                                   "fatal": True}]
    assert events[1][1]["willReconnect"] is False and events[1][1]["error"] == 10
    assert [t for t in h.timers() if not t["cleared"]] == []
    assert h.call("return window.client.state") == "closed"


def test_stops_on_disconnect_by_operator(page: Any, static_site: StaticSite) -> None:
    """Error 17 (an operator disconnected the user) stops the client."""
    h = Harness(page, static_site.url, userId=1, friends=[])
    h.login(1, [])
    h.serve({"type": "error", "error": 17, "msg": "Disconnected"})
    h.drop(1000)
    assert h.events()[-1][1]["willReconnect"] is False
    assert [t for t in h.timers() if not t["cleared"]] == []


def test_retries_after_shutdown(page: Any, static_site: StaticSite) -> None:
    """Error 15 (server shutting down) is followed by a reconnect; 13 is not fatal."""
    h = Harness(page, static_site.url, userId=1, friends=[])
    h.login(1, [])
    h.events()
    h.serve({"type": "error", "error": 13, "msg": "Invalid message"})
    assert h.events() == [["error", {"code": 13, "message": "Invalid message",
                                     "fatal": False}]]
    h.serve({"type": "error", "error": 15, "msg": "Server shutting down"})
    h.drop(1000)
    assert h.events()[-1][1]["willReconnect"] is True
    h.fire_reconnect()
    assert h.sockets() == 2


def test_silent_server_is_dropped(page: Any, static_site: StaticSite) -> None:
    """A server silent for 1.5 timeouts is taken for dead: the client closes
    the socket and reconnects."""
    h = Harness(page, static_site.url, userId=1, friends=[])
    h.login(1, [])
    live = [t for t in h.timers() if not t["cleared"]]
    assert [t["delay"] for t in live] == [15 * 1500]
    h.page.evaluate(
        "(() => { const t = window.timers.filter((t) => !t.cleared).at(-1);"
        " t.cleared = true; t.fn(); })()"
    )
    assert h.page.evaluate("window.sockets[0].closed") == 4000
    assert h.events()[-1][1]["willReconnect"] is True
    h.fire_reconnect()
    assert h.sockets() == 2


def test_tcp_heartbeat_has_no_watchdog(page: Any, static_site: StaticSite) -> None:
    """When the welcome says "heartbeat":"tcp" the server will stay silent:
    the client keeps no watchdog timer (and never pings on its own)."""
    h = Harness(page, static_site.url, userId=1, friends=[])
    h.open()
    h.serve({**welcome(1), "heartbeat": "tcp"}, {"type": "pong"})
    assert [t for t in h.timers() if not t["cleared"]] == []
    assert h.sent() == [{"type": "login", "user_id": 1, "friends": []},
                        {"type": "ping"}]
    assert h.call("return window.client.state") == "open"


def test_no_reconnect_option(page: Any, static_site: StaticSite) -> None:
    """With reconnect: false a lost connection is final, and says so."""
    h = Harness(page, static_site.url, userId=1, friends=[], reconnect=False)
    h.login(1, [])
    h.events()
    h.drop(1006)
    assert h.events()[-1] == ["close", {"code": 1006, "reason": "",
                                        "willReconnect": False, "error": None}]
    assert [t for t in h.timers() if not t["cleared"]] == []
    assert h.call("return window.client.state") == "closed"


def test_close_says_bye(page: Any, static_site: StaticSite) -> None:
    """close() sends bye, closes the socket and never reconnects."""
    h = Harness(page, static_site.url, userId=1, friends=[])
    h.login(1, [])
    h.call("window.client.close()")
    assert h.sent()[-1] == {"type": "bye"}
    assert h.page.evaluate("window.sockets[0].closed") == 1000
    assert h.events()[-1][1]["willReconnect"] is False
    assert [t for t in h.timers() if not t["cleared"]] == []


# -- the demo page --------------------------------------------------------------

PAGE_FAKE = FAKE + "window.WebSocket = window.FakeWebSocket;"


def test_page_renders_form(page: Any, static_site: StaticSite) -> None:
    """/ serves the demo: the login form and the status selector, no errors."""
    response = page.goto(static_site.url + "/")
    assert response.status == 200
    assert "default-src 'none'" in response.headers["content-security-policy"]
    for selector in ("#login #user_id", "#login #friends-input", "#login #token",
                     "#login button[type=submit]"):
        assert page.locator(selector).count() == 1, selector
    options = page.locator("#status option").evaluate_all(
        "(options) => options.map((o) => o.value)"
    )
    assert options == ["online", "away", "busy", "invisible"]
    assert page.evaluate("typeof window.presenceClient") == "undefined"
    assert page.errors == []


def test_page_logs_in_from_query_string(page: Any, static_site: StaticSite) -> None:
    """/?user_id=4&friends=3,5 logs in at once and shows live, escaped state."""
    page.add_init_script(PAGE_FAKE)
    page.goto(static_site.url + "/?user_id=4&friends=3,5&token=abc")
    page.wait_for_function("window.sockets.length === 1")
    sent = page.evaluate("window.sockets[0].open(), window.sockets[0].sent")
    assert sent[0] == {"type": "login", "user_id": 4, "friends": [3, 5],
                       "token": "abc"}
    assert page.locator("#friends li").evaluate_all(
        "(items) => items.map((i) => [i.dataset.userId, i.dataset.online])"
    ) == [["3", "false"], ["5", "false"]]
    evil = '<img src=x onerror="window.pwned=1">'
    page.evaluate(
        "(m) => window.sockets[0].serve(...m)",
        [welcome(4), online(3, "away", evil), {"type": "pong"}],
    )
    item = page.locator('#friends li[data-user-id="3"]')
    assert item.get_attribute("data-online") == "true"
    assert item.locator(".text").text_content() == evil
    assert item.locator("img").count() == 0
    assert page.locator("#state").get_attribute("data-state") == "open"
    page.evaluate("(m) => window.sockets[0].serve(...m)", [offline(3)])
    assert item.get_attribute("data-online") == "false"
    # The status selector sends a status message.
    page.select_option("#status", "busy")
    page.fill("#text", "in a call")
    page.click("#set-status")
    assert page.evaluate("window.sockets[0].sent.at(-1)") == {
        "type": "status", "status": "busy", "text": "in a call"}
    assert page.evaluate("window.pwned") is None
    assert page.errors == []


def test_page_form_login(page: Any, static_site: StaticSite) -> None:
    """Submitting the form logs in with its fields."""
    page.add_init_script(PAGE_FAKE)
    page.goto(static_site.url + "/")
    page.fill("#user_id", "7")
    page.fill("#friends-input", "1, 2 3")
    page.click("#login-button")
    page.wait_for_function("window.sockets.length === 1")
    sent = page.evaluate("window.sockets[0].open(), window.sockets[0].sent")
    assert sent[0] == {"type": "login", "user_id": 7, "friends": [1, 2, 3]}
    assert page.errors == []
