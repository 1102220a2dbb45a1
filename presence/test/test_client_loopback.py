"""The client library against the real server, in process, over loopback TCP."""

from __future__ import annotations

import functools
import socket
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from twisted.application.internet import backoffPolicy
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, DeferredQueue, ensureDeferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.trial.unittest import TestCase

from presence.client import (
    Connected,
    Disconnected,
    Event,
    Friend,
    PresenceChanged,
    PresenceError,
    Session,
    connect,
)
from presence.server.context import Server
from presence.server.lines import LineFactory
from presence.server.service import PresenceService
from presence.wire.errors import ErrorCode

E = TypeVar("E")


def async_test(
    f: Callable[[Any], Coroutine[Any, Any, None]],
) -> Callable[[Any], Deferred[None]]:
    @functools.wraps(f)
    def run(self: Any) -> Deferred[None]:
        return ensureDeferred(f(self))

    return run


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Events:
    """An observer that queues events, to wait for them one by one."""

    def __init__(self) -> None:
        self.queue: DeferredQueue[Event] = DeferredQueue()

    def __call__(self, event: Event) -> None:
        self.queue.put(event)

    async def next(self, kind: type[E]) -> E:
        """The next event of this kind (others before it are skipped)."""
        while True:
            event = await self.queue.get()
            if isinstance(event, kind):
                return event


class LoopbackTests(TestCase):
    """The client library against a real server over loopback TCP."""

    timeout = 30

    async def start_server(self, port: int = 0) -> int:
        factory = LineFactory(Server(reactor))
        endpoint = TCP4ServerEndpoint(reactor, port, interface="127.0.0.1")
        service = PresenceService(endpoint, factory, reactor)
        service.startService()
        self.service = service
        self.addCleanup(lambda: service.stopService() if service.running else None)
        listening = await service.listening
        host = listening.getHost()
        assert isinstance(host, IPv4Address)
        return host.port

    async def login(self, user_id: int, friends: list[int], **kwargs: Any
                    ) -> tuple[Session, Events]:
        events = Events()
        session = await connect(reactor, f"tcp:127.0.0.1:{self.port}",
                                user_id, friends, observer=events, **kwargs)
        self.addCleanup(session.bye)
        return session, events

    @async_test
    async def test_events_arrive(self):
        """A watcher sees its friend come online with status and text, and go
        offline with a last-seen time; its view follows."""
        self.port = await self.start_server()
        one, events = await self.login(1, [2])
        two, _ = await self.login(2, [1], status="away", text="lunch")
        online = await events.next(PresenceChanged)
        self.assertEqual(online.friend, Friend(2, True, "away", "lunch"))
        self.assertEqual(one.online(), [Friend(2, True, "away", "lunch")])
        await two.bye()
        offline = await events.next(PresenceChanged)
        self.assertFalse(offline.friend.online)
        self.assertIsNotNone(offline.friend.last_seen)
        self.assertEqual(one.online(), [])

    @async_test
    async def test_status_and_friend_changes(self):
        """Status changes reach watchers; removing a friend drops it from
        the view, adding it back brings its snapshot before confirmation."""
        self.port = await self.start_server()
        one, events = await self.login(1, [2])
        two, _ = await self.login(2, [])
        await events.next(PresenceChanged)
        await two.set_status("busy", "meeting")
        self.assertEqual((two.status, two.text), ("busy", "meeting"))
        changed = await events.next(PresenceChanged)
        self.assertEqual(changed.friend, Friend(2, True, "busy", "meeting"))
        await one.remove_friends([2])
        self.assertNotIn(2, one.view)
        await one.add_friends([2])
        self.assertEqual(one.view[2], Friend(2, True, "busy", "meeting"))
        await one.set_friends([3])
        self.assertEqual(dict(one.view), {3: Friend(3)})

    @async_test
    async def test_server_errors_give_their_code(self):
        """A refused login fails with the server's code; a refused change
        fails with its code and the session goes on."""
        self.port = await self.start_server()
        with self.assertRaises(PresenceError) as caught:
            await self.login(5, [2, 5])
        self.assertEqual(caught.exception.code, ErrorCode.FRIEND_WITH_YOURSELF)
        one, _ = await self.login(1, [2])
        with self.assertRaises(PresenceError) as caught:
            await one.add_friends([1])
        self.assertEqual(caught.exception.code, ErrorCode.FRIEND_WITH_YOURSELF)
        with self.assertRaises(PresenceError) as caught:
            await one.set_status("sleeping")
        self.assertEqual(caught.exception.code, ErrorCode.INVALID_MESSAGE)
        await one.set_status("away")
        self.assertTrue(one.connected)

    @async_test
    async def test_unreachable(self):
        """Nothing listening: error 8, naming the address."""
        self.port = free_port()
        with self.assertRaises(PresenceError) as caught:
            await self.login(1, [2])
        self.assertEqual(caught.exception.code, ErrorCode.SERVER_CONNECTION)
        self.assertIn(f"tcp:127.0.0.1:{self.port}", caught.exception.message)

    @async_test
    async def test_reconnect_rebuilds_view(self):
        """After a server restart on the same port a reconnecting session
        logs in again; its view shows a friend online only once the new
        server says so."""
        self.port = await self.start_server(free_port())
        fast = backoffPolicy(initialDelay=0.05, factor=2, maxDelay=0.5,
                             jitter=lambda: 0.0)
        one, events = await self.login(1, [2], reconnect=True, retry_policy=fast,
                                       status="busy")
        two, _ = await self.login(2, [])
        await events.next(PresenceChanged)
        self.assertEqual([f.user_id for f in one.online()], [2])

        await self.service.stopService()
        with self.assertRaises(PresenceError) as caught:
            await two.when_closed()
        self.assertEqual(caught.exception.code, ErrorCode.SERVER_SHUTTING_DOWN)
        dropped = await events.next(Disconnected)
        self.assertTrue(dropped.reconnecting)
        self.assertEqual(one.online(), [])

        await self.start_server(self.port)
        again = await events.next(Connected)
        self.assertTrue(again.reconnected)
        self.assertEqual(one.view[2], Friend(2))
        self.assertEqual(one.online(), [])

        await self.login(2, [])
        back = await events.next(PresenceChanged)
        self.assertEqual(back.friend, Friend(2, True, "online", ""))
        # The new login carried the status: a new watcher sees user 1 busy.
        watcher, seen = await self.login(3, [1])
        self.assertEqual((await seen.next(PresenceChanged)).friend.status, "busy")
        await watcher.bye()
