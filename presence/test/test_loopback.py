"""Two real clients over real loopback sockets see each other."""

from __future__ import annotations

from typing import Any

import orjson
from twisted.internet import defer, endpoints, reactor
from twisted.protocols.basic import LineOnlyReceiver
from twisted.trial.unittest import TestCase

from presence.server.context import Server
from presence.server.lines import LineFactory
from presence.server.service import PresenceService


class LineClient(LineOnlyReceiver):
    delimiter = b"\n"

    def __init__(self) -> None:
        self.messages: defer.DeferredQueue[dict[str, Any]] = defer.DeferredQueue()
        self.closed: defer.Deferred[None] = defer.Deferred()

    def lineReceived(self, line: bytes) -> None:
        self.messages.put(orjson.loads(line))

    def send(self, message: dict[str, Any]) -> None:
        self.sendLine(orjson.dumps(message))

    def connectionLost(self, reason: object = None) -> None:
        self.closed.callback(None)


class LoopbackTests(TestCase):
    timeout = 20

    @defer.inlineCallbacks
    def test_two_clients_see_each_other(self):
        """Over TCP on port 0, user 1 sees user 2 come online and go offline."""
        factory = LineFactory(Server(reactor))
        endpoint = endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
        service = PresenceService(endpoint, factory, reactor)
        service.startService()
        port = yield service.listening
        self.addCleanup(service.stopService)
        where = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)

        one = yield endpoints.connectProtocol(where, LineClient())
        one.send({"user_id": 1, "friends": [2]})
        welcome = yield one.messages.get()
        self.assertEqual(welcome, {"type": "welcome", "user_id": 1, "timeout": 15})

        two = yield endpoints.connectProtocol(where, LineClient())
        two.send({"user_id": 2, "friends": [1], "status": "away", "text": "hi"})
        self.assertEqual((yield two.messages.get())["type"], "welcome")
        snapshot = yield two.messages.get()
        self.assertEqual((snapshot["user_id"], snapshot["online"]), (1, True))

        event = yield one.messages.get()
        self.assertEqual(event, {"type": "presence", "user_id": 2, "online": True,
                                 "status": "away", "text": "hi"})
        two.send({"type": "bye"})
        yield two.closed
        event = yield one.messages.get()
        self.assertEqual((event["user_id"], event["online"]), (2, False))
        one.transport.loseConnection()
        yield one.closed
