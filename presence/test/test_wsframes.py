"""The WebSocket frames the server reads itself, past wsproto
(presence.server.web.wsframes), checked against wsproto's own client frames,
and the server's reads over its real HTTP upgrade (test doubles of
presence.test.support)."""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase
from wsproto import Connection, ConnectionType
from wsproto.events import (
    BytesMessage,
    CloseConnection,
    Message,
    Ping,
    Pong,
    TextMessage,
)

from presence.server.web import wsframes
from presence.test.support import Harness


def client(*events: Any) -> bytes:
    """What a wsproto client sends for C{events} (masked frames)."""
    conn = Connection(ConnectionType.CLIENT)
    return b"".join(conn.send(e) for e in events)


class ClientMessagesTests(SynchronousTestCase):
    def test_whole_text_frames(self) -> None:
        """Whole masked text frames, short and 16-bit long, one or several in
        a read, are read as wsproto reads them."""
        texts = ['{"type":"ping"}', "é" * 100, "x" * 35_000, ""]
        for text in texts[:3]:
            self.assertEqual(
                wsframes.client_messages(client(TextMessage(text))),
                [text.encode()],
            )
        data = client(*(TextMessage(t) for t in texts[:2] + texts[3:]))
        self.assertEqual(
            wsframes.client_messages(data),
            [t.encode() for t in texts[:2] + texts[3:]],
        )

    def test_what_is_left_to_wsproto(self) -> None:
        """Anything but whole, final, masked text frames of UTF-8 is left to
        wsproto (None), even after whole frames in the same read."""
        whole = client(TextMessage("ok"))
        cases = {
            "ping": client(Ping(b"hi")),
            "close": client(CloseConnection(1000)),
            "binary": client(BytesMessage(b"data")),
            "fragment": client(Message(data="a", message_finished=False)),
            "cut": whole[:-1],
            "64-bit length": client(TextMessage("y" * 70_000)),
            "not UTF-8": b"\x81\x82" + b"\0\0\0\0" + b"\xff\xfe",
            "unmasked": b"\x81\x02ok",
            "RSV1": b"\xc1" + whole[1:],
            "16-bit length under 126": b"\x81\xfe\x00\x02" + b"\0\0\0\0ok",
        }
        for name, data in cases.items():
            self.assertIsNone(wsframes.client_messages(data), name)
            self.assertIsNone(wsframes.client_messages(whole + data), name)

    def test_unmask(self) -> None:
        """Unmasking is XOR with the key repeated, at any length."""
        key = b"\x01\x02\x03\x04"
        for n in range(0, 13):
            payload = bytes(range(n))
            expected = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
            self.assertEqual(wsframes.unmask(payload, key), expected)


class ServerReadsTests(SynchronousTestCase):
    """Over the server's real HTTP upgrade, with wsproto's receive_data counted."""

    def setUp(self) -> None:
        self.fed: list[bytes] = []
        receive = Connection.receive_data

        def counting(conn: Connection, data: bytes | None) -> None:
            if conn.client is False and data is not None:
                self.fed.append(data)
            receive(conn, data)

        self.patch(Connection, "receive_data", counting)
        self.h = Harness(frontend="websocket")

    def test_readable_on_this_wsproto(self) -> None:
        """The installed wsproto and Twisted have what the reader relies on
        (if this fails after an upgrade, every read goes to wsproto:
        correct, slower; adapt presence/server/web/wsframes.py)."""
        c = self.h.login(1)
        self.assertTrue(c.proto._reads)
        self.assertTrue(wsframes.wsproto_idle(c.proto.ws))

    def test_whole_messages_skip_wsproto(self) -> None:
        """Whole text messages reach the session without wsproto, and are
        handled as through it: a status change is told to a watcher."""
        talker = self.h.login(1)
        watcher = self.h.login(2, [1])
        self.fed.clear()
        talker.send({"type": "status", "status": "away", "text": "é"})
        self.assertEqual(self.fed, [])
        self.assertEqual(
            [(m["user_id"], m["status"], m["text"]) for m in watcher.received()],
            [(1, "away", "é")],
        )

    def test_the_rest_through_wsproto(self) -> None:
        """A ping frame goes through wsproto (answered with a pong frame, and
        the connection stays idle for the reader); a message in two
        fragments is read by wsproto and handled once; the whole message
        after them is read past wsproto again."""
        c = self.h.login(1)
        self.fed.clear()
        c.channel.dataReceived(c.ws.send(Ping(b"hi")))
        self.assertEqual(len(self.fed), 1)
        c._read()
        self.assertEqual(c._pending, [Pong(b"hi")])
        c._pending.clear()
        first = c.ws.send(Message(data='{"type":', message_finished=False))
        c.channel.dataReceived(first)
        self.assertFalse(wsframes.wsproto_idle(c.proto.ws))
        c.channel.dataReceived(c.ws.send(Message(data='"ping"}')))
        self.assertEqual(len(self.fed), 3)
        self.assertEqual([m["type"] for m in c.received()], ["pong"])
        self.assertTrue(wsframes.wsproto_idle(c.proto.ws))
        c.send({"type": "ping"})
        self.assertEqual(len(self.fed), 3)
        self.assertEqual([m["type"] for m in c.received()], ["pong"])

    def test_bad_utf8_left_to_wsproto(self) -> None:
        """A text frame that is not UTF-8 is read by wsproto, which ends the
        connection (close code 1007) as before."""
        c = self.h.login(1)
        self.fed.clear()
        c.channel.dataReceived(b"\x81\x82\0\0\0\0\xff\xfe")
        self.assertEqual(len(self.fed), 1)
        sent = c.transport.value()
        self.assertEqual((sent[:1], sent[2:4]), (b"\x88", b"\x03\xef"))  # close, 1007
        self.assertTrue(c.closed)
