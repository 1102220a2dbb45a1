"""A blocking line client for end-to-end tests (plain sockets, no reactor)."""

from __future__ import annotations

import json
import socket
import time
from typing import Any


class WireClient:
    def __init__(self, host: str, port: int, timeout: float = 10) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.file = self.sock.makefile("rb")
        self.timeout = timeout

    def send(self, message: dict[str, Any] | bytes) -> None:
        data = message if isinstance(message, bytes) else (
            json.dumps(message).encode() + b"\n")
        self.sock.sendall(data)

    def recv(self, timeout: float | None = None) -> dict[str, Any] | None:
        """The next message; None when the server closed the connection."""
        self.sock.settimeout(self.timeout if timeout is None else timeout)
        line = self.file.readline()
        if not line:
            return None
        return json.loads(line)

    def recv_until(self, predicate: Any, timeout: float = 10) -> list[dict[str, Any]]:
        """Messages up to and including the first matching C{predicate}."""
        deadline = time.monotonic() + timeout
        seen: list[dict[str, Any]] = []
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out; got {seen}")
            message = self.recv(left)
            if message is None:
                raise AssertionError(f"connection closed; got {seen}")
            seen.append(message)
            if predicate(message):
                return seen

    def collect(self, seconds: float) -> list[dict[str, Any]]:
        """Everything that arrives in the next C{seconds} (the demo's "stay for")."""
        deadline = time.monotonic() + seconds
        seen: list[dict[str, Any]] = []
        while (left := deadline - time.monotonic()) > 0:
            try:
                message = self.recv(left)
            except TimeoutError:
                break
            if message is None:
                break
            seen.append(message)
        return seen

    def drain(self, quiet: float = 0.3) -> list[dict[str, Any]]:
        """Everything that arrives until C{quiet} seconds pass with nothing new."""
        seen: list[dict[str, Any]] = []
        while True:
            try:
                message = self.recv(quiet)
            except TimeoutError:
                return seen
            if message is None:
                return seen
            seen.append(message)

    def login(self, user_id: int, friends: list[int], **fields: Any
              ) -> dict[str, Any]:
        self.send({"user_id": user_id, "friends": friends, **fields})
        welcome = self.recv()
        assert welcome is not None
        return welcome

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def presence_events(messages: list[dict[str, Any]]) -> list[tuple[int, bool]]:
    return [(m["user_id"], m["online"]) for m in messages if m["type"] == "presence"]
