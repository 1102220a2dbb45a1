"""End to end: 50 hostile connections while well-behaved users go about their day.

For a bounded time (FUZZ_SECONDS), 50 connections send random and malformed
lines (junk bytes, bad UTF-8, huge and unterminated lines, random JSON, logins
with bad ids, messages before login, abrupt closes) to a real server, while
three scripted users log in and out and change status.  The scripted watcher
must see exactly the events the script causes, every line any client gets
must be valid, and the server must stay up and keep accepting logins.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from typing import Any

import orjson
from conftest import StartServer
from sockets import LineSocket

from presence.wire.errors import ErrorCode

FUZZERS = 50
FUZZ_SECONDS = 5.0
MAX_LINE = 4096
SERVER_TYPES = {"welcome", "presence", "ping", "pong", "error"}
# Scripted users are 1..3; fuzzers only ever name ids far from them.
A, B, C = 1, 2, 3


class Stats:
    """What the fuzzing connections sent and got back, for the assertions:
    error codes received by count, and in C{bad} every server line that was
    not a valid message."""

    def __init__(self) -> None:
        self.sent = 0
        self.connections = 0
        self.errors: dict[int, int] = {}
        self.lines = 0
        self.bad: list[bytes] = []


def junk_id(rng: random.Random) -> Any:
    return rng.choice([
        rng.randint(1000, 1100), 0, -1, 2**63, 2**64, 1.0, "1", True, None, [],
        {"a": 1}, 1e400,
    ])


def junk_value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randint(0, 7 if depth < 3 else 4)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False, 0, -1, 2**70, 1.5, float("nan")])
    if kind == 2:
        return "".join(chr(rng.randint(1, 0x2FFF)) for _ in range(rng.randint(0, 20)))
    if kind == 3:
        return junk_id(rng)
    if kind == 4:
        return rng.choice(["login", "ping", "status", "friends", "bye", "away"])
    if kind == 5:
        return [junk_value(rng, depth + 1) for _ in range(rng.randint(0, 5))]
    return {rng.choice(["type", "user_id", "friends", "add", "remove", "status",
                        "text", "token", "x"]): junk_value(rng, depth + 1)
            for _ in range(rng.randint(0, 5))}


def junk_message(rng: random.Random, me: int) -> dict[str, Any]:
    kind = rng.randint(0, 6)
    if kind == 0:
        return {"type": "status", "status": rng.choice(["away", "busy", "zzz", 5]),
                "text": rng.choice(["", "x" * 256, "x" * 257, None, 7])}
    if kind == 1:
        return {"type": "friends",
                rng.choice(["friends", "add", "remove"]): [
                    rng.choice([A, B, C, me, rng.randint(1000, 1100)])
                    for _ in range(rng.randint(0, 5))]}
    if kind == 2:
        return {"user_id": rng.choice([me, junk_id(rng)]), "friends": [A, B, C]}
    if kind == 3:
        return {"type": rng.choice(["ping", "pong", "nope", "bye", 3, None])}
    obj = junk_value(rng)
    if isinstance(obj, dict) and "user_id" in obj:
        obj["user_id"] = junk_id(rng)
    return obj if isinstance(obj, dict) else {"value": obj}


def junk_bytes(rng: random.Random, me: int) -> bytes:
    kind = rng.randint(0, 9)
    if kind == 0:
        return bytes(rng.randrange(256) for _ in range(rng.randint(0, 80)))
    if kind == 1:
        return b"\xff\xfe\xc3(\n"
    if kind == 2:
        return b"x" * rng.choice([MAX_LINE - 1, MAX_LINE + 1, 3 * MAX_LINE]) + b"\n"
    if kind == 3:
        return b"[" * 5000 + b"\n"
    if kind == 4:
        return b"\n\r\n  \n"
    try:
        text = json.dumps(junk_message(rng, me))
    except (ValueError, OverflowError):
        text = "{"
    return text.encode("utf-8", "surrogatepass") + rng.choice([b"\n", b"\r\n", b""])


async def drain(reader: asyncio.StreamReader, stats: Stats) -> None:
    """Read everything the server sends a fuzzer; check every line is valid."""
    try:
        while True:
            line = await reader.readline()
            if not line:
                return
            stats.lines += 1
            try:
                message = orjson.loads(line)
                assert message["type"] in SERVER_TYPES
                if message["type"] == "error":
                    code = ErrorCode(message["error"])
                    assert message["msg"].startswith(code.wording)
                    stats.errors[code] = stats.errors.get(code, 0) + 1
            except Exception:
                stats.bad.append(line)
    except (ConnectionError, asyncio.LimitOverrunError, ValueError):
        return


async def fuzzer(index: int, host: str, port: int, deadline: float,
                 stats: Stats) -> None:
    rng = random.Random(index)
    me = 1000 + index
    while time.monotonic() < deadline:
        try:
            reader, writer = await asyncio.open_connection(host, port, limit=2**20)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        stats.connections += 1
        reading = asyncio.ensure_future(drain(reader, stats))
        try:
            if rng.random() < 0.6:
                login = {"user_id": me, "friends": [A, B, C]}
                writer.write(orjson.dumps(login) + b"\n")
            for _ in range(rng.randint(1, 30)):
                if reading.done() or time.monotonic() >= deadline:
                    break
                writer.write(junk_bytes(rng, me))
                stats.sent += 1
                await writer.drain()
                if rng.random() < 0.2:
                    await asyncio.sleep(0.01)
        except (ConnectionError, OSError):
            pass
        finally:
            if rng.random() < 0.5:
                writer.transport.abort()
            else:
                writer.close()
            try:
                await asyncio.wait_for(reading, 5)
            except asyncio.TimeoutError:
                reading.cancel()


class Scripted:
    """A well-behaved client on asyncio streams."""

    def __init__(self, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def login(cls, host: str, port: int, uid: int, friends: list[int],
                    **fields: Any) -> Scripted:
        reader, writer = await asyncio.open_connection(host, port)
        client = cls(reader, writer)
        client.send({"user_id": uid, "friends": friends, **fields})
        welcome = await client.recv()
        assert welcome["type"] == "welcome", welcome
        return client

    def send(self, obj: dict[str, Any]) -> None:
        self.writer.write(orjson.dumps(obj) + b"\n")

    async def recv(self) -> dict[str, Any]:
        line = await asyncio.wait_for(self.reader.readline(), 10)
        assert line, "connection closed"
        message: dict[str, Any] = orjson.loads(line)
        return message

    async def event(self) -> tuple[int, bool, str, str | None]:
        while True:
            message = await self.recv()
            if message["type"] == "ping":
                self.send({"type": "pong"})
                continue
            assert message["type"] == "presence", message
            return (message["user_id"], message["online"], message["status"],
                    message.get("text"))

    async def closed(self) -> None:
        while await asyncio.wait_for(self.reader.readline(), 10):
            pass

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except ConnectionError:
            pass


async def scenario(host: str, port: int, deadline: float) -> int:
    """Rounds of logins, status changes and logouts; A must see exactly these."""
    a = await Scripted.login(host, port, A, [B, C])
    rounds = 0
    while time.monotonic() < deadline:
        text = f"round {rounds}"
        b = await Scripted.login(host, port, B, [A])
        assert await a.event() == (B, True, "online", "")
        b.send({"type": "status", "status": "away", "text": text})
        assert await a.event() == (B, True, "away", text)
        c = await Scripted.login(host, port, C, [], status="busy", text=text)
        assert await a.event() == (C, True, "busy", text)
        c.send({"type": "status", "status": "invisible"})
        assert await a.event() == (C, False, "offline", None)
        b.send({"type": "bye"})
        await b.closed()
        assert await a.event() == (B, False, "offline", None)
        c.send({"type": "status", "status": "online", "text": "back"})
        assert await a.event() == (C, True, "online", "back")
        await c.close()
        assert await a.event() == (C, False, "offline", None)
        rounds += 1
    # Nothing else arrived: the next line is the answer to this ping.
    a.send({"type": "ping"})
    assert (await a.recv())["type"] == "pong"
    await a.close()
    return rounds


async def run(host: str, port: int, stats: Stats) -> int:
    deadline = time.monotonic() + FUZZ_SECONDS
    tasks = [fuzzer(i, host, port, deadline, stats) for i in range(FUZZERS)]
    rounds, *_ = await asyncio.gather(scenario(host, port, deadline), *tasks)
    assert isinstance(rounds, int)
    return rounds


def test_fuzz_while_serving(start_server: StartServer) -> None:
    """50 hostile connections for a few seconds: the scripted users see exactly
    their events, every line sent to anyone is valid with a defined error code,
    and the server stays up and accepts a new login afterwards."""
    server = start_server("--max-line", str(MAX_LINE))
    stats = Stats()
    rounds = asyncio.run(run(server.host, server.port, stats))
    assert rounds >= 1
    assert stats.bad == []
    assert stats.connections >= FUZZERS and stats.sent > 0
    # The junk met the errors it should have.
    for code in (ErrorCode.JSON_DECODING, ErrorCode.LINE_TOO_LONG):
        assert stats.errors.get(code, 0) > 0, stats.errors
    assert server.proc.poll() is None
    with LineSocket(server.host, server.port) as b, \
            LineSocket(server.host, server.port) as a:
        b.login(B)
        a.login(A, [B])
        assert a.presence()["user_id"] == B
    assert not [line for line in server.lines
                if "Traceback" in line or "Unhandled" in line
                or "unexpected error" in line]
    print(f"{rounds} scripted rounds; {stats.connections} fuzz connections, "
          f"{stats.sent} junk messages; errors {stats.errors}")
