"""presence-bench --transport websocket: the load workers' WebSocket client.

The frames the client builds are read back with wsproto (the library under
Twisted's WebSocket server), and the frames it reads are built with the
server's own L{text_frame}, so that neither side is checked only against
itself.  No server here: the worker is fed a server's bytes as a test writes
them (tests/test_bench_quick.py runs the whole bench over WebSocket).
"""

from __future__ import annotations

import multiprocessing
import socket
from typing import Any

import orjson
from twisted.trial.unittest import SynchronousTestCase
from wsproto.frame_protocol import FrameProtocol, Opcode

from presence.bench.cli import parse_args
from presence.bench.graph import friend_graph
from presence.bench.loadgen import (
    C_COMPLETE,
    C_DELIVERED,
    C_ERRORS,
    C_LOST,
    C_PINGS,
    C_WELCOMED,
    CLOSED,
    LOGGING_IN,
    NCOUNTERS,
    WELCOMED,
)
from presence.bench.runner import Bench, Options
from presence.bench.wsbench import WebSocketBench, bench_for, tcp_address
from presence.bench.wsload import (
    FRAME_ERROR,
    HANDSHAKE_ERROR,
    PING,
    FrameReader,
    WebSocketConn,
    WebSocketError,
    WebSocketWorker,
    accept_for,
    client_frame,
    mask,
    text_frames,
    upgrade_request,
    worker_config,
)
from presence.server.web.wsframes import text_frame

KEY = b"dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455 1.3's example


def response(key: bytes = KEY, status: bytes = b"101 Switching Protocols",
             accept: bytes | None = None) -> bytes:
    """A server's upgrade response to C{key}, as Twisted writes one."""
    return (
        b"HTTP/1.1 " + status + b"\r\n"
        b"Server: TwistedWeb\r\n"
        b"upgrade: WebSocket\r\n"
        b"Connection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + (accept or accept_for(key)) + b"\r\n"
        b"\r\n"
    )


def server_reads(data: bytes) -> list[tuple[Opcode, bytes, bool]]:
    """The frames a server (wsproto) reads in C{data}: opcode, unmasked
    payload (a text frame's decoded by wsproto as UTF-8, encoded back
    here), whether the message is finished."""
    protocol = FrameProtocol(client=False, extensions=[])
    protocol.receive_bytes(data)
    out = []
    for f in protocol.received_frames():
        payload = f.payload
        assert isinstance(payload, str | bytes | bytearray), payload  # no close
        as_bytes = payload.encode() if isinstance(payload, str) else bytes(payload)
        out.append((f.opcode, as_bytes, f.message_finished))
    return out


def feed_bytewise(reader: FrameReader, data: bytes) -> list[bytes]:
    """What C{reader} returns when C{data} comes one byte per read."""
    out: list[bytes] = []
    for i in range(len(data)):
        out.extend(reader.feed(data[i:i + 1]))
    return out


def opened_reader() -> FrameReader:
    reader = FrameReader(KEY)
    reader.feed(response())
    return reader


class ClientFrameTests(SynchronousTestCase):
    """The client's frames, as a server reads them."""

    def test_accept_of_the_rfc_example(self) -> None:
        """Sec-WebSocket-Accept of RFC 6455's example key is the RFC's."""
        self.assertEqual(accept_for(KEY), b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")

    def test_mask_is_its_own_inverse(self) -> None:
        """Masking twice with the same key gives the payload back, for every
        length modulo 4; the masked bytes are the payload XOR the key."""
        key = b"\x01\x02\x03\x04"
        for n in range(0, 9):
            payload = bytes(range(65, 65 + n))
            self.assertEqual(mask(mask(payload, key), key), payload)
        self.assertEqual(mask(b"\x00\x00\x00\x00\x00", key),
                         b"\x01\x02\x03\x04\x01")

    def test_lengths_7_16_and_64_bits(self) -> None:
        """Masked text frames of 0, 125 (7-bit length), 126 and 65,535
        (16-bit) and 65,536 bytes (64-bit) are read by wsproto as one
        finished text message each, with the payload unmasked."""
        for n in (0, 125, 126, 300, 65535, 65536):
            payload = (b"x" * n)
            frame = client_frame(payload)
            self.assertEqual(server_reads(frame), [(Opcode.TEXT, payload, True)],
                             n)
        self.assertEqual(len(client_frame(b"x" * 125)), 2 + 4 + 125)
        self.assertEqual(len(client_frame(b"x" * 126)), 4 + 4 + 126)
        self.assertEqual(len(client_frame(b"x" * 65536)), 10 + 4 + 65536)

    def test_mask_bit_and_key(self) -> None:
        """A frame has FIN and the text opcode, the mask bit, and the key
        it was given, and the payload masked with it."""
        frame = client_frame(b"hello", key=b"abcd")
        self.assertEqual(frame[:2], b"\x81\x85")
        self.assertEqual(frame[2:6], b"abcd")
        self.assertEqual(mask(frame[6:], b"abcd"), b"hello")

    def test_text_frames_of_lines(self) -> None:
        """The line protocol's bytes become one text frame per line, without
        the newline; empty lines send nothing."""
        data = b'{"type":"pong"}\n\n{"type":"status"}\n'
        self.assertEqual(
            server_reads(text_frames(data)),
            [(Opcode.TEXT, b'{"type":"pong"}', True),
             (Opcode.TEXT, b'{"type":"status"}', True)])

    def test_pong_frame(self) -> None:
        """A control frame keeps its opcode (a pong answering a ping)."""
        self.assertEqual(server_reads(client_frame(b"p", 0xA)),
                         [(Opcode.PONG, b"p", True)])

    def test_upgrade_request(self) -> None:
        """The upgrade request asks for /ws with version 13 and the key,
        and ends with its blank line."""
        request = upgrade_request("127.0.0.1", 8090, KEY)
        lines = request.split(b"\r\n")
        self.assertEqual(lines[0], b"GET /ws HTTP/1.1")
        self.assertIn(b"Host: 127.0.0.1:8090", lines)
        self.assertIn(b"Upgrade: websocket", lines)
        self.assertIn(b"Sec-WebSocket-Key: " + KEY, lines)
        self.assertIn(b"Sec-WebSocket-Version: 13", lines)
        self.assertTrue(request.endswith(b"\r\n\r\n"))


class HandshakeTests(SynchronousTestCase):
    """The upgrade response, however it is split across reads."""

    def test_split_anywhere(self) -> None:
        """The response in two reads, split at every byte, opens the reader
        once, at the read that completes it, and the frames in that read
        after the blank line are returned from it."""
        data = response() + text_frame(b'{"type":"welcome"}')
        end = len(response())
        for cut in range(1, len(data)):
            reader = FrameReader(KEY)
            first = reader.feed(data[:cut])
            self.assertEqual(reader.opened, cut >= end, cut)
            reader.opened = False
            second = reader.feed(data[cut:])
            self.assertEqual(first + second, [b'{"type":"welcome"}'], cut)
            self.assertEqual(reader.opened, cut < end, cut)
            self.assertTrue(reader.open)

    def test_byte_by_byte(self) -> None:
        """One byte per read: the same messages as in one read."""
        reader = FrameReader(KEY)
        frames = text_frame(b"a" * 200) + text_frame(b"b")
        self.assertEqual(feed_bytewise(reader, response() + frames),
                         [b"a" * 200, b"b"])

    def test_refused(self) -> None:
        """A response other than 101 (the origin check's 403) is refused."""
        reader = FrameReader(KEY)
        with self.assertRaises(WebSocketError):
            reader.feed(b"HTTP/1.1 403 Forbidden\r\ncontent-type: text/plain\r\n\r\n")
        self.assertFalse(reader.open)

    def test_wrong_accept(self) -> None:
        """A 101 whose Sec-WebSocket-Accept is not the key's is refused."""
        with self.assertRaises(WebSocketError):
            FrameReader(KEY).feed(response(accept=accept_for(b"other")))

    def test_not_http(self) -> None:
        """A line-protocol server's JSON is not an upgrade response."""
        with self.assertRaises(WebSocketError):
            FrameReader(KEY).feed(b'{"type":"error","error":3}\n\r\n\r\n')

    def test_header_names_any_case(self) -> None:
        """Header names are read without regard to case."""
        data = response().replace(b"Sec-WebSocket-Accept", b"sec-websocket-accept")
        reader = FrameReader(KEY)
        self.assertEqual(reader.feed(data), [])
        self.assertTrue(reader.opened)

    def test_endless_head(self) -> None:
        """A response with no end to its headers is refused, not buffered
        without bound."""
        reader = FrameReader(KEY)
        with self.assertRaises(WebSocketError):
            for _ in range(20):
                reader.feed(b"X-Filler: " + b"y" * 1000 + b"\r\n")


class FrameReaderTests(SynchronousTestCase):
    """The server's frames, built by the server's own text_frame."""

    def test_lengths_split_anywhere(self) -> None:
        """Messages of 7-bit, 16-bit (126 bytes and up) and 64-bit lengths
        come out whole and in order, in one read and one byte per read."""
        payloads = [b"x" * n for n in (1, 125, 126, 127, 1000, 65535, 65536)]
        data = b"".join(text_frame(p) for p in payloads)
        self.assertEqual(text_frame(b"x" * 126)[1], 126)  # 16-bit length
        self.assertEqual(opened_reader().feed(data), payloads)
        small = b"".join(text_frame(p) for p in payloads[:5])
        self.assertEqual(feed_bytewise(opened_reader(), small), payloads[:5])

    def test_split_in_the_extended_length(self) -> None:
        """A read that ends inside a 16-bit length, or inside the payload,
        returns nothing until the rest comes."""
        frame = text_frame(b"y" * 300)
        for cut in (1, 2, 3, 4, 5, 299):
            reader = opened_reader()
            self.assertEqual(reader.feed(frame[:cut]), [], cut)
            self.assertEqual(reader.feed(frame[cut:]), [b"y" * 300], cut)

    def test_fragmented_message(self) -> None:
        """A text message in a first frame and a continuation comes out
        whole; a ping between them is collected, not a message."""
        data = (b"\x01\x03abc" + b"\x89\x01p" + b"\x80\x02de")
        reader = opened_reader()
        self.assertEqual(reader.feed(data), [b"abcde"])
        self.assertEqual(reader.pings, [b"p"])

    def test_continuation_without_start(self) -> None:
        """A continuation with no message begun is an error."""
        with self.assertRaises(WebSocketError):
            opened_reader().feed(b"\x80\x01x")

    def test_close_frame(self) -> None:
        """The messages before a close frame are returned; the reader is then
        closed and reads no further."""
        data = text_frame(b"bye") + b"\x88\x02\x03\xe8" + text_frame(b"after")
        reader = opened_reader()
        self.assertEqual(reader.feed(data), [b"bye"])
        self.assertTrue(reader.closed)

    def test_masked_server_frame_is_read(self) -> None:
        """A masked frame (which a server should not send) is unmasked."""
        self.assertEqual(opened_reader().feed(client_frame(b"hi")), [b"hi"])


class WebSocketWorkerTests(SynchronousTestCase):
    """One worker of 1, with 10 users of 3 friends; its connections are one
    end of a socket pair whose other end a test reads and writes to."""

    def setUp(self) -> None:
        config = {"workers": 1, "host": "127.0.0.1", "port": 1, "addresses": 1,
                  "users": 10, "friends": 3, "seed": 1,
                  **worker_config("127.0.0.1", 8090)}
        self.counters = [0.0] * NCOUNTERS
        self.pipe, theirs = multiprocessing.Pipe()
        self.addCleanup(self.pipe.close)
        self.addCleanup(theirs.close)
        self.worker = WebSocketWorker(0, config, theirs, self.counters, None)
        self.addCleanup(self.worker.ep.close)
        self.graph = friend_graph(10, 3, 1)

    def conn(self, uid: int) -> tuple[WebSocketConn, socket.socket]:
        """A connection of C{uid} that has sent its upgrade request, and the
        server's end of it."""
        mine, other = socket.socketpair()
        self.addCleanup(mine.close)
        self.addCleanup(other.close)
        other.settimeout(5)
        c = WebSocketConn(uid, mine, live=True)
        c.state = LOGGING_IN
        c.login = text_frames(self.worker.login_bytes(uid, None))
        self.worker.conns[c.fd] = c
        self.worker.by_uid[uid] = c
        return c, other

    def read_all(self, sock: socket.socket) -> bytes:
        sock.setblocking(False)
        try:
            return sock.recv(1 << 20)
        except BlockingIOError:
            return b""

    def opened(self, uid: int) -> tuple[WebSocketConn, socket.socket]:
        c, other = self.conn(uid)
        self.worker.received(c, response(c.reader.key), 0.0)
        self.read_all(other)  # the login frame
        return c, other

    def test_connect_sends_the_upgrade_first(self) -> None:
        """A new connection's first bytes are the upgrade request to the
        WebSocket port, with its own key; its login waits, as a frame."""
        listener = socket.socket()
        self.addCleanup(listener.close)
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        self.worker.ports = [port]
        self.worker.connect(3, live=True)
        c = self.worker.by_uid[3]
        assert isinstance(c, WebSocketConn)
        self.addCleanup(self.worker.drop, c)
        self.assertEqual(c.out, upgrade_request("127.0.0.1", port, c.reader.key))
        [(opcode, payload, _)] = server_reads(c.login)
        self.assertEqual(opcode, Opcode.TEXT)
        self.assertEqual(orjson.loads(payload),
                         {"user_id": 3, "friends": self.graph[3]})

    def test_login_frame_after_the_101(self) -> None:
        """The login goes out as one masked text frame once the 101 has come,
        not before."""
        c, other = self.conn(4)
        self.worker.received(c, response(c.reader.key)[:20], 0.0)
        self.assertEqual(self.read_all(other), b"")
        self.worker.received(c, response(c.reader.key)[20:], 0.0)
        [(opcode, payload, _)] = server_reads(self.read_all(other))
        self.assertEqual(opcode, Opcode.TEXT)
        self.assertEqual(orjson.loads(payload)["user_id"], 4)

    def test_messages_as_lines(self) -> None:
        """The server's frames go through the same handling as lines: the
        welcome, the snapshot that completes the login, a presence event of
        this phase with its latency, in reads split inside a frame."""
        worker = self.worker
        worker.kind = "login"  # as start_login sets it, without connecting
        c, _ = self.opened(2)
        data = text_frame(b'{"type":"welcome","user_id":2}') + b"".join(
            text_frame(b'{"type":"presence","user_id":%d,"online":true}' % f)
            for f in self.graph[2])
        worker.received(c, data[:7], 0.0)
        worker.received(c, data[7:], 0.0)
        self.assertEqual(c.state, WELCOMED)
        self.assertEqual(self.counters[C_WELCOMED], 1)
        self.assertEqual(self.counters[C_COMPLETE], 1)
        worker.start_phase("f1", "fanout")
        event = text_frame(
            b'{"type":"presence","user_id":5,"online":true,"status":"away",'
            b'"text":"t:f1:100.250000"}')
        worker.received(c, event, 100.5)
        self.assertEqual(self.counters[C_DELIVERED], 1)
        self.assertEqual(list(worker.lat), [0.25])

    def test_ping_message_and_ping_frame(self) -> None:
        """The server's JSON ping is answered by a JSON pong in a text frame,
        a WebSocket ping frame by a pong frame with its payload."""
        c, other = self.opened(2)
        self.worker.received(c, text_frame(b'{"type":"ping"}') + b"\x89\x02hi", 0.0)
        self.assertEqual(self.counters[C_PINGS], 1)
        self.assertCountEqual(server_reads(self.read_all(other)), [
            (Opcode.TEXT, b'{"type":"pong"}', True), (Opcode.PONG, b"hi", True)])

    def test_status_is_a_text_frame(self) -> None:
        """A status change is the line protocol's status message in one
        masked text frame."""
        c, _ = self.opened(2)
        self.worker.phase_tag = "f0"
        [(opcode, payload, _)] = server_reads(self.worker.status_line(c))
        self.assertEqual(opcode, Opcode.TEXT)
        message = orjson.loads(payload)
        self.assertEqual(message["type"], "status")
        self.assertTrue(message["text"].startswith("t:f0:"))

    def test_error_then_close(self) -> None:
        """An error message then a close frame: the error is counted, and the
        connection is lost."""
        c, _ = self.opened(2)
        self.worker.received(
            c, text_frame(b'{"type":"error","error":9}') + b"\x88\x02\x03\xe8", 0.0)
        self.assertEqual(self.worker.errors, {9: 1})
        self.assertEqual(c.state, CLOSED)
        self.assertEqual(self.counters[C_LOST], 1)

    def test_refused_upgrade(self) -> None:
        """A refused upgrade is a handshake error and a lost connection."""
        c, _ = self.conn(2)
        self.worker.received(c, b"HTTP/1.1 404 Not Found\r\n\r\n", 0.0)
        self.assertEqual(self.worker.errors, {HANDSHAKE_ERROR: 1})
        self.assertEqual(self.counters[C_ERRORS], 1)
        self.assertEqual(c.state, CLOSED)

    def test_bad_frame(self) -> None:
        """An unknown opcode after the upgrade is a frame error."""
        c, _ = self.opened(2)
        self.worker.received(c, b"\x83\x00", 0.0)
        self.assertEqual(self.worker.errors, {FRAME_ERROR: 1})
        self.assertEqual(c.state, CLOSED)

    def test_ping_opcode_constant(self) -> None:
        """The ping opcode is RFC 6455's (0x9), as wsproto has it."""
        self.assertEqual(PING, Opcode.PING.value)


class WebSocketBenchTests(SynchronousTestCase):
    """The option, and the bench it picks."""

    def test_transport_option(self) -> None:
        """--transport is lines by default; websocket is accepted, with
        --quick and with --against redis."""
        self.assertEqual(parse_args([]).transport, "lines")
        args = parse_args(["--quick", "--against", "redis",
                           "--transport", "websocket"])
        self.assertEqual(args.transport, "websocket")
        self.assertEqual(args.users, 200)

    def test_bench_for(self) -> None:
        """Each transport has its bench run; an unknown one is an error."""
        self.assertIs(bench_for("lines"), Bench)
        self.assertIs(bench_for("websocket"), WebSocketBench)
        with self.assertRaises(ValueError):
            bench_for("carrier-pigeon")

    def test_server_gets_a_websocket_port(self) -> None:
        """The server the WebSocket bench starts also listens for WebSocket
        on a free loopback port, after the line protocol's options."""
        options = WebSocketBench(Options(users=10)).server_options(1024)
        self.assertEqual(options[-2:],
                         ["--websocket", "tcp:0:interface=127.0.0.1:backlog=4096"])
        self.assertEqual(options[:-2], Bench(Options(users=10)).server_options(1024))

    def test_workers_connect_to_the_websocket_port(self) -> None:
        """The workers' config names the WebSocket port the server logged;
        with --server (no port started), the address given is kept."""
        bench = WebSocketBench(Options(users=10))
        bench.websocket = tcp_address("tcp:127.0.0.1:8090")
        config: dict[str, Any] = bench.worker_config()
        self.assertEqual((config["port"], config["ports"]), (8090, [8090]))
        self.assertEqual(WebSocketBench(Options()).worker_config(),
                         {"transport": "websocket"})
        with self.assertRaises(ValueError):
            tcp_address("unix:/tmp/x")
