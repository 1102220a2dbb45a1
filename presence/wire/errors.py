"""The protocol's error codes, one enum for the server, the client and tests."""

from __future__ import annotations

import enum


class ErrorCode(enum.IntEnum):
    """A protocol error code, as sent in an error's C{error} field.

    L{wording} is the fixed text that starts its C{msg} (PROTOCOL.md, "Errors").
    """

    # 0..8 keep the original demo's numbers and wording: its clients match on them.
    NO_ERROR = 0
    CLIENT_TIMEOUT = 1
    UNKNOWN_CLIENT_TIMEOUT = 2
    JSON_DECODING = 3
    JSON_ENCODING = 4
    INVALID_USER_ID = 5
    FRIEND_WITH_YOURSELF = 6
    UNKNOWN = 7
    SERVER_CONNECTION = 8
    LINE_TOO_LONG = 9
    AUTHENTICATION_FAILED = 10
    TOO_MANY_FRIENDS = 11
    NOT_LOGGED_IN = 12
    INVALID_MESSAGE = 13
    SLOW_CONSUMER = 14
    SERVER_SHUTTING_DOWN = 15
    TOO_MANY_CONNECTIONS = 16
    DISCONNECTED = 17

    @property
    def wording(self) -> str:
        return _WORDING[self]


_WORDING = {
    ErrorCode.NO_ERROR: "No Error",
    ErrorCode.CLIENT_TIMEOUT: "Client timeout",
    ErrorCode.UNKNOWN_CLIENT_TIMEOUT: "Unknown Client timeout",
    ErrorCode.JSON_DECODING: "JSON decoding Error",
    ErrorCode.JSON_ENCODING: "JSON encoding Error",
    ErrorCode.INVALID_USER_ID: "Invalid UserID",
    ErrorCode.FRIEND_WITH_YOURSELF: "You can't be friend with yourself",
    ErrorCode.UNKNOWN: "Unknown Error",
    ErrorCode.SERVER_CONNECTION: "Server Connection Error",
    ErrorCode.LINE_TOO_LONG: "Line too long",
    ErrorCode.AUTHENTICATION_FAILED: "Authentication failed",
    ErrorCode.TOO_MANY_FRIENDS: "Too many friends",
    ErrorCode.NOT_LOGGED_IN: "Not logged in",
    ErrorCode.INVALID_MESSAGE: "Invalid message",
    ErrorCode.SLOW_CONSUMER: "Slow consumer",
    ErrorCode.SERVER_SHUTTING_DOWN: "Server shutting down",
    ErrorCode.TOO_MANY_CONNECTIONS: "Too many connections",
    ErrorCode.DISCONNECTED: "Disconnected",
}


NOT_FATAL_AFTER_LOGIN: frozenset[ErrorCode] = frozenset(
    {
        ErrorCode.INVALID_USER_ID,
        ErrorCode.FRIEND_WITH_YOURSELF,
        ErrorCode.TOO_MANY_FRIENDS,
        ErrorCode.INVALID_MESSAGE,
    }
)
"""The errors that, after login, answer one request and leave the session open.

The server sends them without closing; a client takes them as the answer to
its oldest request still waiting. Every other error (and every error in a
login) is fatal: the server closes the connection after it (PROTOCOL.md,
"Errors").
"""


class ProtocolError(Exception):
    """A message broke the protocol; the session answers with C{code}."""

    def __init__(self, code: ErrorCode, detail: str = "") -> None:
        self.code = code
        self.detail = detail
        super().__init__(self.message)

    @property
    def message(self) -> str:
        if self.detail:
            return f"{self.code.wording}: {self.detail}"
        return self.code.wording
