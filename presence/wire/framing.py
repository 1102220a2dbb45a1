"""Splitting a client's byte stream into messages: lines and concatenated JSON.

A message ends at a C{\\n} (a I{line}; a C{\\r} before it is dropped), or where
a complete top-level JSON object closes with no C{\\n} after it (an
I{object}: concatenated JSON, as the original demo's Go client sends its login
with C{json.Marshal} and no terminator).  PROTOCOL.md, "Framing", is the
contract; L{Framer} implements it without any I/O::

    framer = Framer(max_line)
    try:
        for payload, ending in framer.feed(data):
            ...                      # handle the message
    except ProtocolError as e:       # 9 (too long) or 3 (nesting too deep)
        ...                          # fatal: answer it and close

The rules, in the order they are applied:

  - Every C{\\n} ends the message it is in, whatever state it is in (inside a
    string, an unclosed object, anything).  Lines are the unit of the v1
    protocol; an object cut by a C{\\n} is reported as a line and the decoder
    answers error 3, as before.
  - Whitespace (space, tab, C{\\r}) before a message's first byte is skipped.
    A line holding nothing else is reported as a blank line, C{(b"", LINE)}:
    it carries no message, but counts as activity.  A line of other
    whitespace-only bytes (C{\\x0b}, C{\\x0c}) is blank too, as it always was.
  - A message whose first byte is C{{} is scanned as an object: nesting depth,
    strings and escapes are tracked, across reads.  When its top-level C{}}
    arrives: if only whitespace and then C{\\n} follow, it is reported as a
    line; otherwise (another message follows, or nothing more has arrived
    yet) as an object, at once.  An object whose C{\\n} arrives in a later
    read is thus reported as an object, and its C{\\n} then as a blank line.
  - A message whose first byte is anything else is a line: it is passed on at
    its C{\\n} as it is, and the decoder answers error 3.
  - C{max_line}: a message longer than the limit is error 9, raised as soon as
    the bytes received of it exceed the limit, before any terminator.  A
    message's length runs from the end of the previous message (its C{\\n},
    or its closing C{}}), whitespace included, to its own end, without the
    terminator: C{\\n} or C{\\r\\n} for a line, the C{}} itself for an
    object.  A message of exactly the limit is allowed; C{limit + 1} bytes
    ending in C{\\r} wait for the next byte, since the C{\\r} may belong to
    C{\\r\\n}.  Only in one corner does the read boundary matter: the
    whitespace between an object and its C{\\n} counts toward the object
    when the C{\\n} comes in the same read, else toward the blank line that
    the late C{\\n} makes.
  - An object nested deeper than orjson accepts (1024) is error 3 at once.

Work stays linear in the bytes received: each read is split once on C{\\n}
(C speed); complete lines are looked at once (the common case, one whole line
per read, costs a C{find} more than the C{split}); only the unterminated tail
of a read is carried, as a bytearray that grows by appending, with the
scanner's state (depth, in-string, escape), so a message trickling in byte by
byte, or C{}} by C{}} after a megabyte, is never re-scanned or re-joined.
Inside an object the next interesting byte is found with C{bytes.find}, each
kind's position cached until passed, so every byte is looked at a bounded
number of times in C; a read that cannot change an open message's state (no
C{\\n}, and no brace, quote or backslash where they would count) is just
appended.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Iterator

from presence.wire.errors import ErrorCode, ProtocolError

# orjson refuses nesting deeper than this; a deeper object can never decode.
MAX_DEPTH = 1024


class Ending(enum.Enum):
    """How a message ended."""

    LINE = "line"
    """At a C{\\n} (C{\\r\\n} accepted): the v1 framing."""

    OBJECT = "object"
    """At the C{}} closing a top-level object, with no C{\\n} after it (yet)."""


LINE = Ending.LINE
OBJECT = Ending.OBJECT

Message = tuple[bytes, Ending]

# Scanner states between reads.
_START = 0  # (false) no byte of the message yet but whitespace
_LINE = 1  # a message that is not an object: wait for its \n
_OBJECT = 2  # inside an object

_NOT_WS = re.compile(rb"[^ \t\r]")
_WS = b" \t\r"
# Byte values: "x in data" and find with an int skip the buffer protocol and
# cost a fraction of the same with a one-byte bytes object.
_NL = 0x0A
_CR = 0x0D
_QUOTE = 0x22
_BACKSLASH = 0x5C
_LBRACE = 0x7B
_RBRACE = 0x7D
_SHORT = 512


class Framer:
    """Split one connection's input into messages, incrementally.

    Feed it every read, in order, and handle the messages L{feed} returns, in
    order: at once, or over several reactor turns (the framer's state is
    already past them when C{feed} returns).  After an error, every feed
    raises it again.
    """

    __slots__ = ("_buf", "_cr", "_depth", "_error", "_esc", "_in_str", "_limit",
                 "_mode", "_pending")

    def __init__(self, max_line: int) -> None:
        self._limit = max_line
        self._mode = _START
        # Bytes of the unfinished message received so far (for the limit),
        # from the end of the previous message, whitespace included.
        self._pending = 0
        # Its bytes from its first non-blank byte on (LINE and OBJECT modes).
        self._buf = bytearray()
        self._depth = 0
        self._in_str = False
        self._esc = False
        self._cr = False  # the last byte carried was \r
        self._error: ProtocolError | None = None

    @property
    def pending(self) -> int:
        """How many bytes of an unfinished message have been received (0
        exactly when nothing is carried over: the next read starts afresh)."""
        return self._pending

    def feed(self, data: bytes) -> Iterable[Message]:
        """The messages that C{data} completes, in order.

        Each is C{(payload, ending)}: the message's bytes without leading
        whitespace, terminator or trailing C{\\r} (C{b""} for a blank line).
        When the stream breaks a rule, iterating over the result yields the
        messages before the error and then raises L{ProtocolError} (9, or 3
        for nesting too deep); so does every later call.
        """
        if self._error is not None:
            return _raising([], self._error)
        out: list[Message] = []
        try:
            if self._mode or self._pending:
                # Something is carried from earlier reads: the first segment
                # continues it.
                if _NL not in data:
                    mode = self._mode
                    if not data:
                        pass
                    elif mode == _LINE or (
                        # Nothing in it can change an open object's state.
                        mode == _OBJECT
                        and not self._esc
                        and _QUOTE not in data
                        and _BACKSLASH not in data
                        and (self._in_str or (
                            _LBRACE not in data and _RBRACE not in data))
                    ):
                        self._hold(data)
                    else:
                        self._scan(data, False, out)
                    return out
                parts = data.split(b"\n")
                tail = parts.pop()
                self._scan(parts[0], True, out)
                del parts[0]
            else:
                parts = data.split(b"\n")
                tail = parts.pop()
            limit = self._limit
            for raw in parts:
                line = raw[:-1] if raw[-1:] == b"\r" else raw
                first = line[:1]
                if first == b"{":
                    # One object per line, the usual case: its first "}" is
                    # its last byte (or it has none: the decoder answers 3).
                    p = line.find(_RBRACE)
                    if p == len(line) - 1 or p < 0:
                        if len(line) > limit:
                            raise _too_long(limit)
                        out.append((line, LINE))
                        continue
                elif not first:
                    out.append((b"", LINE))
                    continue
                elif first not in _WS:
                    if len(line) > limit:
                        raise _too_long(limit)
                    out.append((b"" if line.isspace() else line, LINE))
                    continue
                # Leading whitespace, or several objects on one line.
                self._scan(raw, True, out)
            if tail:
                self._scan(tail, False, out)
        except ProtocolError as e:
            self._error = e
            return _raising(out, e)
        return out

    # -- the general case --------------------------------------------------

    def _scan(self, seg: bytes, terminated: bool, out: list[Message]) -> None:
        """Scan one segment (no C{\\n} in it) from the carried state.

        C{terminated}: a C{\\n} follows the segment.  Otherwise the state at
        its end is carried to the next read.
        """
        n = len(seg)
        limit = self._limit
        pos = 0  # where scanning resumes
        mark = 0  # where the current message's bytes began in seg
        body = 0  # where its body (first non-blank byte) began in seg
        while True:
            mode = self._mode
            if mode == _START:
                if pos < n and seg[pos] not in _WS:
                    i = pos
                else:
                    m = _NOT_WS.search(seg, pos)
                    i = n if m is None else m.start()
                if i == n:
                    break
                body = i
                if seg[i] != _LBRACE:
                    self._mode = _LINE
                    break
                # A short flat object without escapes (most messages) is
                # closed by its first "}" when the quotes before it pair up.
                # (Longer ones go to the scanner: counting is slower than
                # finding.)
                p = seg.find(_RBRACE, i, i + _SHORT)
                if (
                    p >= 0
                    and seg.find(_LBRACE, i + 1, p) < 0
                    and seg.find(_BACKSLASH, i, p) < 0
                    and not seg.count(_QUOTE, i, p) & 1
                ):
                    end = p + 1
                else:
                    self._mode = _OBJECT
                    self._depth = 1
                    end = self._object(seg, i + 1, n)
            elif mode == _LINE:
                break
            else:
                end = self._object(seg, pos, n)
            if end < 0:
                break
            # The top-level object closed just before seg[end].
            length = self._pending + end - mark
            if end == n:
                rest = False
            elif seg[end] not in _WS:
                rest = True
            else:
                rest = _NOT_WS.search(seg, end) is not None
            if not rest and terminated:
                # Only whitespace up to the \n: a line after all.
                length = self._pending + n - mark - (1 if self._ends_cr(seg) else 0)
                if length > limit:
                    raise _too_long(limit)
                out.append((self._take(seg, body, end), LINE))
                self._reset()
                return
            if length > limit:
                raise _too_long(limit)
            out.append((self._take(seg, body, end), OBJECT))
            self._reset()
            pos = mark = end
        if terminated:
            cr = self._ends_cr(seg)
            length = self._pending + n - mark - (1 if cr else 0)
            if length > limit:
                raise _too_long(limit)
            if self._mode == _START:
                payload = b""
            else:
                payload = self._take(seg, body, n - 1 if cr and n else n)
                if cr and not n:
                    payload = payload[:-1]  # the \r came in an earlier read
                if payload.isspace():
                    payload = b""
            self._reset()
            out.append((payload, LINE))
            return
        # Carry the unfinished message to the next read.
        if self._mode != _START and body < n:
            self._buf += seg[body:] if body else seg
        if n:
            self._pending += n - mark
            self._cr = seg[-1] == _CR
        total = self._pending
        if total > limit and (
            total > limit + 1 or not self._cr or self._mode == _OBJECT
        ):
            raise _too_long(limit)

    def _hold(self, data: bytes) -> None:
        """Carry a whole read that cannot end the message (a trickle)."""
        self._buf += data
        total = self._pending = self._pending + len(data)
        self._cr = data[-1] == _CR
        limit = self._limit
        if total > limit and (
            total > limit + 1 or not self._cr or self._mode == _OBJECT
        ):
            raise _too_long(limit)

    def _object(self, seg: bytes, pos: int, n: int) -> int:
        """Scan an open object in C{seg[pos:]}: the index after its top-level
        C{}}, or -1 when it is still open at the end (state saved)."""
        depth = self._depth
        if self._in_str:
            pos = self._string(seg, pos, n)
            if pos < 0:
                return -1
        find = seg.find
        lb = find(_LBRACE, pos)
        if lb < 0:
            lb = n
        rb = find(_RBRACE, pos)
        if rb < 0:
            rb = n
        q = find(_QUOTE, pos)
        if q < 0:
            q = n
        while True:
            if q < lb and q < rb:
                pos = self._string(seg, q + 1, n)
                if pos < 0:
                    self._depth = depth
                    return -1
                # Braces inside the string do not count: look again after it.
                if lb < pos:
                    lb = find(_LBRACE, pos)
                    if lb < 0:
                        lb = n
                if rb < pos:
                    rb = find(_RBRACE, pos)
                    if rb < 0:
                        rb = n
                q = find(_QUOTE, pos)
                if q < 0:
                    q = n
            elif lb < rb:
                depth += 1
                if depth > MAX_DEPTH:
                    raise ProtocolError(
                        ErrorCode.JSON_DECODING, f"nesting deeper than {MAX_DEPTH}"
                    )
                lb = find(_LBRACE, lb + 1)
                if lb < 0:
                    lb = n
            elif rb < n:
                depth -= 1
                if depth == 0:
                    self._depth = 0
                    return rb + 1
                rb = find(_RBRACE, rb + 1)
                if rb < 0:
                    rb = n
            else:
                self._depth = depth
                return -1

    def _string(self, seg: bytes, pos: int, n: int) -> int:
        """Scan the rest of a string from C{seg[pos]}: the index after its
        closing quote, or -1 when it is still open at the end (state saved)."""
        if self._esc:
            if pos >= n:
                return -1
            pos += 1  # the escaped byte, whatever it is
            self._esc = False
        q = seg.find(_QUOTE, pos)
        if q < 0:
            q = n
        while True:
            b = seg.find(_BACKSLASH, pos, q)
            if b < 0:
                if q == n:
                    self._in_str = True
                    return -1
                self._in_str = False
                return q + 1
            if b + 1 == n:
                self._in_str = True
                self._esc = True
                return -1
            pos = b + 2
            if pos > q:  # the quote found was escaped
                q = seg.find(_QUOTE, pos)
                if q < 0:
                    q = n

    def _ends_cr(self, seg: bytes) -> bool:
        return seg[-1] == _CR if seg else self._cr

    def _take(self, seg: bytes, start: int, end: int) -> bytes:
        """The message's body: what is carried plus C{seg[start:end]}."""
        if not self._buf:
            return seg[start:end] if start or end != len(seg) else seg
        self._buf += seg[start:end]
        payload = bytes(self._buf)
        self._buf = bytearray()
        return payload

    def _reset(self) -> None:
        self._mode = _START
        self._pending = 0
        self._depth = 0
        self._in_str = False
        self._esc = False
        self._cr = False


def _raising(messages: list[Message], error: ProtocolError) -> Iterator[Message]:
    yield from messages
    raise error


def _too_long(limit: int) -> ProtocolError:
    return ProtocolError(ErrorCode.LINE_TOO_LONG, f"limit {limit}")
