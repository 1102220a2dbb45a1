"""The original demo's Go client, byte for byte, in Python (protocol v0).

The demo (github.com/nick-uk/TCP-Concurrency-Demo, ``client/client.go``)
ships a client that presence must serve unchanged; PROTOCOL.md, "Protocol
v0", describes it.  L{tcp_client} behaves as its C{TCPClient} does:

  - sleep C{joindelay}, then dial with a 15 s timeout (C{TCP_NODELAY} on, as
    Go sets it); a failure returns at once with error 8 and no counts;
  - write the login as Go's C{json.Marshal} writes it (compact, fields
    C{user_id} and C{friends}, each left out when zero or empty, no
    terminator) in one write, then do one read into a 256-byte buffer (15 s
    deadline on each), sleep one second, and repeat;
  - a read containing C{msg} is unmarshalled into C{{msg, error}}: error 0 is
    a pong, any other code ends the loop with that code; any other read is
    unmarshalled into C{{online}} and counts one online (true) or offline
    (false); a read that does not unmarshal (two JSON values in one read, a
    value cut by the 256-byte buffer) ends the loop with the code it had;
    a write or read error (EOF included) ends the loop;
  - C{stayalive} after the dial the connection is closed (whatever the loop
    is doing, and even if it ended early) and the counts and the last
    C{{msg, error}} are returned.

The Go client runs its loop in a goroutine while the caller waits for
C{stayalive}; here one thread does both, checking the deadline before each
write and bounding each read and sleep by it, which puts the same bytes on
the wire at the same times.  Run one per thread to run several at once.
"""

from __future__ import annotations

import json
import socket
import time
from dataclasses import dataclass, field
from typing import Any

TIMEOUT = 15.0
RECV_SIZE = 256
ROUND = 1.0  # the sleep between rounds (tests of this module shorten it)
INT64 = (-(2**63), 2**63 - 1)


@dataclass
class PongMsg:
    """The Go client's C{PongMsg}: the last C{{msg, error}} it read."""

    msg: str = ""
    error: int = 0


@dataclass
class DemoResult:
    """What C{TCPClient} returns, plus what happened, for test messages."""

    offlines: int = 0
    onlines: int = 0
    pong: PongMsg = field(default_factory=PongMsg)
    ended: str = "stayalive"  # why the loop stopped (the Go client logs it)
    reads: list[bytes] = field(default_factory=list)

    @property
    def error(self) -> int:
        return self.pong.error


def marshal_login(user_id: int, friends: list[int]) -> bytes:
    """Go's C{json.Marshal(CliRequest{UserID, Friends})}, C{omitempty} and
    all."""
    body: dict[str, Any] = {}
    if user_id:
        body["user_id"] = user_id
    if friends:
        body["friends"] = friends
    return json.dumps(body, separators=(",", ":")).encode()


class _Pairs(list[tuple[str, Any]]):
    """A JSON object's members, in order (duplicates kept)."""


class UnmarshalError(Exception):
    """C{json.Unmarshal} returned an error."""


def unmarshal(data: bytes, target: Any, fields: dict[str, type]) -> None:
    """C{json.Unmarshal(data, &target)} for a struct of C{fields} (JSON name to
    type: C{str}, C{int} or C{bool}), as Go does it: exactly one JSON value
    (whitespace around it allowed); C{null} changes nothing; keys matched
    case-insensitively, unknown keys ignored, the last duplicate wins; a
    value of the wrong type is an error, but the other fields are still set.
    Bytes that are not UTF-8 become U+FFFD, as in Go.
    """
    text = data.decode("utf-8", errors="replace")

    def no_constants(name: str) -> Any:
        raise UnmarshalError(f"invalid character {name[0]!r} looking for value")

    try:
        value = json.loads(text, object_pairs_hook=_Pairs,
                           parse_constant=no_constants)
    except json.JSONDecodeError as e:
        raise UnmarshalError(str(e)) from None
    if value is None:
        return
    if not isinstance(value, _Pairs):
        raise UnmarshalError(f"cannot unmarshal {type(value).__name__} into struct")
    first_error: str | None = None
    for key, item in value:
        name = key.lower()
        kind = fields.get(name)
        if kind is None or item is None:
            continue
        ok = (
            type(item) is str if kind is str
            else type(item) is bool if kind is bool
            else type(item) is int and INT64[0] <= item <= INT64[1]
        )
        if ok:
            setattr(target, name, item)
        elif first_error is None:
            first_error = f"cannot unmarshal {item!r} into field {name}"
    if first_error is not None:
        raise UnmarshalError(first_error)


@dataclass
class _Notify:
    online: bool = False


def tcp_client(
    host: str,
    port: int,
    user_id: int,
    friends: list[int],
    joindelay: float = 0.0,
    stayalive: float = 1.0,
) -> DemoResult:
    """The demo's C{TCPClient(targetHost, userid, friends, joindelay,
    stayalive)}: returns the offline and online counts and the last
    C{{msg, error}} (error 8 when the dial fails)."""
    result = DemoResult()
    logtag = f"[user{user_id}] "
    time.sleep(joindelay)
    try:
        sock = socket.create_connection((host, port), timeout=TIMEOUT)
    except OSError as e:
        result.pong = PongMsg(logtag + str(e), 8)
        result.ended = f"dial: {e}"
        return result
    # Go's net package turns Nagle's algorithm off on every TCP connection.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        deadline = time.monotonic() + stayalive
        request = marshal_login(user_id, friends)
        _loop(sock, request, deadline, result)
        # The Go client holds the connection until stayalive, whatever
        # happened to its loop.
        remaining = deadline - time.monotonic()
        if remaining > 0:
            time.sleep(remaining)
    finally:
        sock.close()
    return result


def _loop(sock: socket.socket, request: bytes, deadline: float,
          result: DemoResult) -> None:
    while True:
        if time.monotonic() >= deadline:
            return  # closed while the loop slept: the last reply stands
        result.pong = PongMsg()
        try:
            sock.settimeout(TIMEOUT)
            sock.sendall(request)
        except OSError as e:
            result.ended = f"write: {e}"
            return
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return  # closed while the read was waiting: nothing counted
        try:
            sock.settimeout(min(TIMEOUT, remaining))
            data = sock.recv(RECV_SIZE)
        except TimeoutError:
            if remaining < TIMEOUT:
                return  # the close at stayalive interrupted the read
            result.ended = "read: i/o timeout"
            return
        except OSError as e:
            result.ended = f"read: {e}"
            return
        if not data:
            result.ended = "read: EOF"
            return
        result.reads.append(data)
        if b"msg" in data:
            try:
                unmarshal(data, result.pong, {"msg": str, "error": int})
            except UnmarshalError as e:
                result.ended = f"unmarshal: {e} ({data!r})"
                return
            if result.pong.error != 0:
                result.ended = f"error {result.pong.error}"
                return
        else:
            status = _Notify()
            try:
                unmarshal(data, status, {"online": bool})
            except UnmarshalError as e:
                result.ended = f"unmarshal: {e} ({data!r})"
                return
            if status.online:
                result.onlines += 1
            else:
                result.offlines += 1
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        time.sleep(min(ROUND, remaining))
