"""The admin API in cluster mode: it answers for the whole cluster.

Node A serves the admin API; users are on node B.  ``/v1/presence`` on A
reports them, ``/v1/disconnect`` on A ends B's sessions with error 17, and
``/readyz`` follows Redis: 503 while it is down, 200 once it is back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from browsers import listening, port_of
from conftest import StartServer
from sockets import wait_until
from test_admin_e2e import call
from test_cluster_e2e import login, node

from presence.cluster.redisserver import RedisServer

TOKEN = "e2e-admin-token"


def test_admin_answers_for_the_cluster(
    start_server: StartServer, redis_server: RedisServer, tmp_path: Path
) -> None:
    """/v1/presence and /v1/disconnect on one node see and reach users on
    another; /readyz is 503 while Redis is down and 200 when it is back."""
    token_file = tmp_path / "admin-token"
    token_file.write_text(TOKEN)
    a = node(
        start_server, redis_server.url, "a",
        "--admin", "tcp:0:interface=127.0.0.1", "--admin-token-file", str(token_file),
    )
    base = f"http://127.0.0.1:{port_of(listening(a, 'admin'))}"
    b = node(start_server, redis_server.url, "b")
    first = login(b, 7, [], status="away", text="lunch")
    second = login(b, 7, [])

    def seven() -> tuple[int, Any]:
        return call(base, "/v1/presence?user_id=7&user_id=8")

    wait_until(lambda: seven()[1]["users"][0]["online"] is True)
    status, body = seven()
    assert status == 200
    assert body["users"][0] == {
        "user_id": 7, "online": True, "status": "away", "text": "lunch",
        "sessions": 2,
    }
    assert body["users"][1] == {"user_id": 8, "online": False, "sessions": 0}

    status, body = call(base, "/v1/disconnect", body={"user_id": 7})
    assert status == 200 and body["disconnected"] == 2, body
    for client in (first, second):
        error = client.expect_error(17)
        assert error["msg"].startswith("Disconnected")
    wait_until(lambda: seven()[1]["users"][0]["online"] is False)

    assert call(base, "/readyz", token=None)[0] == 200
    redis_server.stop()
    wait_until(lambda: call(base, "/readyz", token=None)[0] == 503, timeout=20)
    redis_server.start()
    wait_until(lambda: call(base, "/readyz", token=None)[0] == 200, timeout=30)
