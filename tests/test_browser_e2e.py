"""Two browser pages and a TCP client on a real ``twistd -n presence`` with
``--websocket``: they see each other come, change status and go, and a page
reconnects after a server restart.

The server must log ``presence websocket listening on tcp:HOST:PORT`` for
the WebSocket endpoint, as it logs ``presence listening on`` for TCP.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

from browsers import listening, port_of
from conftest import ServerProcess
from sockets import LineSocket

WS = "tcp:0:interface=127.0.0.1"


def friend(page: Any, uid: int) -> Any:
    return page.locator(f'#friends li[data-user-id="{uid}"]')


def wait_online(page: Any, uid: int, online: bool) -> None:
    page.wait_for_selector(
        f'#friends li[data-user-id="{uid}"][data-online="{str(online).lower()}"]',
        state="attached",
    )


def wait_status(page: Any, uid: int, status: str) -> None:
    page.wait_for_selector(
        f'#friends li[data-user-id="{uid}"][data-status="{status}"]', state="attached"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_pages_and_tcp_client_see_each_other(
    start_server: Callable[..., ServerProcess], browser: Any
) -> None:
    """Pages of users 1 and 2 and a TCP client of user 3 see each other come
    online, see a status change made in a page, and see a page go."""
    server = start_server("--websocket", WS)
    base = f"http://127.0.0.1:{port_of(listening(server, 'websocket'))}"
    context = browser.new_context()
    try:
        page1 = context.new_page()
        page1.goto(base + "/?user_id=1&friends=2,3")
        page1.wait_for_selector('#state[data-state="open"]')
        with LineSocket(server.host, server.port) as tcp:
            tcp.login(3, [1, 2])
            seen = tcp.presence()
            assert (seen["user_id"], seen["online"]) == (1, True)
            wait_online(page1, 3, True)

            page2 = context.new_page()
            page2.goto(base + "/?user_id=2&friends=1,3")
            wait_online(page2, 1, True)
            wait_online(page2, 3, True)
            wait_online(page1, 2, True)
            seen = tcp.presence()
            assert (seen["user_id"], seen["online"]) == (2, True)

            page2.select_option("#status", "away")
            page2.fill("#text", "<b>lunch</b>")
            page2.click("#set-status")
            wait_status(page1, 2, "away")
            assert friend(page1, 2).locator(".text").text_content() == "<b>lunch</b>"
            seen = tcp.presence()
            assert (seen["user_id"], seen["status"], seen["text"]) == (
                2, "away", "<b>lunch</b>")

            tcp.send({"type": "status", "status": "busy", "text": "call"})
            wait_status(page1, 3, "busy")
            wait_status(page2, 3, "busy")

            page2.close()
            wait_online(page1, 2, False)
            seen = tcp.presence()
            assert (seen["user_id"], seen["online"]) == (2, False)
        wait_online(page1, 3, False)
        assert page1.locator('#state[data-state="open"]').count() == 1
    finally:
        context.close()


def test_page_reconnects_after_restart(
    start_server: Callable[..., ServerProcess], page: Any
) -> None:
    """A page whose server restarts reconnects on its own and is live again."""
    ws = f"tcp:{free_port()}:interface=127.0.0.1"
    server = start_server("--websocket", ws)
    page.goto(f"http://127.0.0.1:{port_of(listening(server, 'websocket'))}"
              "/?user_id=1&friends=3")
    page.wait_for_selector('#state[data-state="open"]')
    with LineSocket(server.host, server.port) as tcp:
        tcp.login(3, [1])
        wait_online(page, 3, True)
        server.stop()
    page.wait_for_selector('#state[data-state="connecting"]')
    wait_online(page, 3, True)  # the view stands until a new snapshot says otherwise
    server = start_server("--websocket", ws)
    page.wait_for_selector('#state[data-state="open"]', timeout=20_000)
    wait_online(page, 3, False)  # not in the new server's snapshot
    with LineSocket(server.host, server.port) as tcp:
        tcp.login(3, [1])
        wait_online(page, 3, True)
