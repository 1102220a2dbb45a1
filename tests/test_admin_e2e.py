"""The admin HTTP API of a real ``twistd -n presence --admin ...``.

The server must log ``presence admin listening on tcp:HOST:PORT`` for the
admin endpoint, as it logs ``presence listening on`` for TCP.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from browsers import listening, port_of
from conftest import ServerProcess
from sockets import LineSocket, wait_until

TOKEN = "e2e-admin-token"


def call(
    base: str, path: str, token: str | None = TOKEN, body: Any = None
) -> tuple[int, Any]:
    request = urllib.request.Request(base + path)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    if body is not None:
        request.data = json.dumps(body).encode()
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            data = response.read()
            kind = response.headers.get("content-type", "")
            return response.status, json.loads(data) if "json" in kind else data
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def metrics(base: str) -> dict[str, float]:
    _, text = call(base, "/metrics", token=None)
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.decode().splitlines()
        if line and not line.startswith("#")
    }


def admin(start_server: Callable[..., ServerProcess], tmp_path: Path) -> Any:
    token_file = tmp_path / "admin-token"
    token_file.write_text(f"  {TOKEN}\n")
    server = start_server(
        "--admin", "tcp:0:interface=127.0.0.1", "--admin-token-file", str(token_file)
    )
    return server, f"http://127.0.0.1:{port_of(listening(server, 'admin'))}"


def test_presence_metrics_and_disconnect(
    start_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    """The API reports who is online, counts in /metrics, and ends a user's
    sessions with error 17."""
    server, base = admin(start_server, tmp_path)
    assert call(base, "/healthz", token=None)[0] == 200
    assert call(base, "/readyz", token=None)[0] == 200
    with LineSocket(server.host, server.port) as a1, \
            LineSocket(server.host, server.port) as a2, \
            LineSocket(server.host, server.port) as b, \
            LineSocket(server.host, server.port) as c:
        a1.login(1, [2])
        a2.login(1, [2])
        b.login(2, [1], status="away", text="lunch")
        c.login(3, [], status="invisible")
        b.roundtrip()  # its snapshot (1 online) read
        c.roundtrip()

        code, body = call(base, "/v1/presence?user_id=3&user_id=2&user_id=1&user_id=4")
        assert code == 200
        assert body == {"users": [
            {"user_id": 3, "online": False, "sessions": 1},
            {"user_id": 2, "online": True, "status": "away", "text": "lunch",
             "sessions": 1},
            {"user_id": 1, "online": True, "status": "online", "text": "",
             "sessions": 2},
            {"user_id": 4, "online": False, "sessions": 0},
        ]}
        assert call(base, "/v1/presence?user_id=1", token=None)[0] == 401
        assert call(base, "/v1/presence?user_id=1", token="wrong")[0] == 403
        assert call(base, "/v1/presence?user_id=0")[0] == 400

        values = metrics(base)
        assert values['presence_connections{transport="tcp"}'] == 4
        assert values["presence_sessions"] == 4
        assert values["presence_logins_total"] >= 4

        assert call(base, "/v1/disconnect", body={"user_id": 1}) == (
            200, {"disconnected": 2})
        for s in (a1, a2):
            error, _ = s.recv_until(lambda m: m.get("type") == "error")
            assert error["error"] == 17, error
            s.expect_closed()
        seen = b.presence()
        assert (seen["user_id"], seen["online"]) == (1, False)
        wait_until(lambda: metrics(base)["presence_sessions"] == 2)
        assert metrics(base)['presence_errors_total{code="17"}'] == 2
