"""The framer: lines and concatenated JSON objects, split wherever reads end.

Every case is checked with the whole input in one read and split at every
byte position (and byte by byte): the messages must be the same, up to one
difference the contract allows (an object whose C{\\n} arrives in a later read
is reported as an object, and its C{\\n} as a blank line).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from presence.wire.errors import ErrorCode, ProtocolError
from presence.wire.framing import LINE, MAX_DEPTH, OBJECT, Ending, Framer, Message

BIG = 1 << 20


def frame(
    chunks: Iterable[bytes], limit: int = BIG
) -> tuple[list[Message], ErrorCode | None]:
    """Feed the chunks in order: the messages, and the error code if any."""
    framer = Framer(limit)
    messages: list[Message] = []
    try:
        for chunk in chunks:
            for message in framer.feed(chunk):
                messages.append(message)
    except ProtocolError as e:
        return messages, e.code
    return messages, None


def normal(messages: list[Message]) -> list[Message]:
    """Merge an object and the blank line that is its late C{\\n} into a line."""
    result: list[Message] = []
    for message in messages:
        if message == (b"", LINE) and result and result[-1][1] is OBJECT:
            result[-1] = (result[-1][0], LINE)
        else:
            result.append(message)
    return result


def splits(data: bytes) -> Iterator[list[bytes]]:
    """The data in one read, in two reads split at every position, and byte
    by byte."""
    yield [data]
    for i in range(len(data) + 1):
        yield [data[:i], data[i:]]
    yield [data[i : i + 1] for i in range(len(data))]


class FramingTestMixin:
    assertEqual: Callable[..., None]
    assertIsNone: Callable[..., None]

    def assertFrames(
        self, data: bytes, expected: list[Message], limit: int = BIG,
        error: ErrorCode | None = None,
    ) -> None:
        """C{data} in one read gives exactly C{expected} (then C{error}); split
        anywhere, the same up to late terminators."""
        self.assertEqual(frame([data], limit), (expected, error))
        for chunks in splits(data):
            messages, code = frame(chunks, limit)
            self.assertEqual(
                (normal(messages), code), (normal(expected), error), chunks
            )


class LineTests(FramingTestMixin, SynchronousTestCase):
    def test_line(self) -> None:
        """A line is one message, ended by its C{\\n}."""
        self.assertFrames(b'{"type":"ping"}\n', [(b'{"type":"ping"}', LINE)])

    def test_crlf(self) -> None:
        """C{\\r\\n} ends a line too; the C{\\r} is dropped, wherever the read
        boundary falls."""
        self.assertFrames(b'{"a":1}\r\n', [(b'{"a":1}', LINE)])
        self.assertFrames(b"abc\r\n", [(b"abc", LINE)])

    def test_cr_inside_line_kept(self) -> None:
        """Only one C{\\r} right before the C{\\n} is a terminator."""
        self.assertFrames(b"a\rb\r\r\n", [(b"a\rb\r", LINE)])

    def test_several_lines(self) -> None:
        """Several lines in one read are reported in order."""
        self.assertFrames(
            b'{"a":1}\n{"b":2}\r\n{"c":3}\n',
            [(b'{"a":1}', LINE), (b'{"b":2}', LINE), (b'{"c":3}', LINE)],
        )

    def test_blank_lines(self) -> None:
        """Blank and whitespace-only lines are reported, as C{b""}, one each."""
        self.assertFrames(
            b'\n\r\n  \t\r\n\x0b\x0c\n{"a":1}\n\n',
            [(b"", LINE)] * 4 + [(b'{"a":1}', LINE), (b"", LINE)],
        )

    def test_not_an_object(self) -> None:
        """Lines that do not start with C{{} pass through as they are (the
        decoder answers error 3)."""
        for line in (b"abc", b"[1]", b'"x"', b"1", b'[{"a":1}]', b"}", b"}{",
                     b"\x00\xff", b'\x0b{"a":1}'):
            self.assertFrames(line + b"\n", [(line, LINE)])

    def test_leading_whitespace(self) -> None:
        """Whitespace before a message is not part of its payload."""
        self.assertFrames(b' \t {"a":1}\n', [(b'{"a":1}', LINE)])
        self.assertFrames(b"  abc \n", [(b"abc ", LINE)])

    def test_unterminated_line_waits(self) -> None:
        """A line without its C{\\n} is held, however many reads it takes."""
        framer = Framer(BIG)
        for chunk in (b"ab", b"c", b"d"):
            self.assertEqual(list(framer.feed(chunk)), [])
        self.assertEqual(framer.pending, 4)
        self.assertEqual(list(framer.feed(b"\n")), [(b"abcd", LINE)])
        self.assertEqual(framer.pending, 0)

    def test_pending(self) -> None:
        """C{pending} counts the bytes of the unfinished message, whitespace
        included, and is 0 exactly when nothing is carried over."""
        framer = Framer(BIG)
        self.assertEqual(framer.pending, 0)
        for chunk, pending in ((b"", 0), (b'{"a":1}\n', 0), (b"  ", 2),
                               (b'{"a"', 6), (b":1}", 0), (b"\r", 1), (b"\n", 0),
                               (b"x\ny", 1), (b"\n", 0)):
            list(framer.feed(chunk))
            self.assertEqual(framer.pending, pending, chunk)

    def test_newline_ends_an_open_object(self) -> None:
        """A C{\\n} ends the message even inside an open object or string: the
        line goes to the decoder, and the next message starts afresh."""
        self.assertFrames(
            b'{"a":\n{"b":1}\n', [(b'{"a":', LINE), (b'{"b":1}', LINE)]
        )
        self.assertFrames(
            b'{"a":"x\ny"}\n{"c":"\\\n', [
                (b'{"a":"x', LINE), (b'y"}', LINE), (b'{"c":"\\', LINE)]
        )


class ObjectTests(FramingTestMixin, SynchronousTestCase):
    def test_object_without_terminator(self) -> None:
        """A complete top-level object with nothing after it is a message at
        once, ended as an object (the demo's Go client's login)."""
        login = b'{"user_id":1,"friends":[2,3,4]}'
        self.assertFrames(login, [(login, OBJECT)])

    def test_object_reported_when_complete(self) -> None:
        """Nothing is reported before the closing brace arrives, and the
        object exactly when it does, for every read boundary."""
        login = b'{"user_id":1,"friends":[2,3,4]}'
        for i in range(1, len(login)):
            framer = Framer(BIG)
            self.assertEqual(list(framer.feed(login[:i])), [])
            self.assertEqual(list(framer.feed(login[i:])), [(login, OBJECT)])

    def test_repeated_logins(self) -> None:
        """The demo client's login, sent again and again, is one message each
        time."""
        login = b'{"user_id":1,"friends":[2,3,4]}'
        framer = Framer(BIG)
        for _ in range(3):
            self.assertEqual(list(framer.feed(login)), [(login, OBJECT)])

    def test_late_newline(self) -> None:
        """An object whose C{\\n} comes in a later read: the object at once,
        then its C{\\n} as a blank line."""
        framer = Framer(BIG)
        self.assertEqual(list(framer.feed(b'{"a":1}')), [(b'{"a":1}', OBJECT)])
        self.assertEqual(list(framer.feed(b" \r\n")), [(b"", LINE)])

    def test_objects_and_lines_mixed(self) -> None:
        """Several objects and lines in one read, in order: an object followed
        by another message on the same line ends as an object."""
        self.assertFrames(
            b'{"a":1}{"b":2}\n',
            [(b'{"a":1}', OBJECT), (b'{"b":2}', LINE)],
        )
        self.assertFrames(
            b'{"a":1} \t{"b":2}\r\nabc\n{"c":3}  {"d":4}',
            [(b'{"a":1}', OBJECT), (b'{"b":2}', LINE), (b"abc", LINE),
             (b'{"c":3}', OBJECT), (b'{"d":4}', OBJECT)],
        )

    def test_garbage_after_object(self) -> None:
        """Bytes after an object on its line are a message of their own (the
        decoder answers 3 for them)."""
        self.assertFrames(
            b'{"a":1}x}\n', [(b'{"a":1}', OBJECT), (b"x}", LINE)]
        )
        self.assertFrames(
            b'{"a":1}}', [(b'{"a":1}', OBJECT)]
        )

    def test_braces_in_strings(self) -> None:
        """Braces and escaped quotes inside strings do not end an object."""
        obj = b'{"a":"}{","b":"\\"}","c":"\\\\","d":"{\\\\\\"}"}'
        json.loads(obj)
        self.assertFrames(obj, [(obj, OBJECT)])
        self.assertFrames(obj + obj + b"\n", [(obj, OBJECT), (obj, LINE)])

    def test_escapes(self) -> None:
        """Every escape, including C{\\u} escapes of quotes and backslashes,
        is skipped as a unit."""
        obj = b'{"a":"\\u0022\\u005c\\n\\t\\/\\b\\f\\r","b":"\\\\\\\\"}'
        json.loads(obj)
        self.assertFrames(obj + b"{}", [(obj, OBJECT), (b"{}", OBJECT)])

    def test_nested(self) -> None:
        """Nested objects and arrays: only the top-level brace ends it."""
        obj = b'{"a":{"b":{"c":1}},"d":[{"e":2},{}],"f":{}}'
        self.assertFrames(obj + obj, [(obj, OBJECT), (obj, OBJECT)])

    def test_empty_and_spaced_objects(self) -> None:
        """C{{}} and objects with whitespace inside are objects."""
        self.assertFrames(
            b'{}{ "a" : { } }\n', [(b"{}", OBJECT), (b'{ "a" : { } }', LINE)]
        )

    def test_unicode(self) -> None:
        """UTF-8 text (and bytes that are not UTF-8) pass through unchanged."""
        obj = '{"text":"caf\u00e9 \u2603 \U0001f600 }"}'.encode()
        self.assertFrames(
            obj + b"\xff{}\n", [(obj, OBJECT), (b"\xff{}", LINE)])

    def test_depth(self) -> None:
        """Nesting as deep as orjson allows is an object; one more is error 3
        at once, without waiting for the rest."""
        deep = b'{"a":' * (MAX_DEPTH - 1) + b"{}" + b"}" * (MAX_DEPTH - 1)
        self.assertEqual(frame([deep]), ([(deep, OBJECT)], None))
        self.assertEqual(
            frame([b'{"a":' * MAX_DEPTH + b"{"]), ([], ErrorCode.JSON_DECODING)
        )
        self.assertEqual(
            frame([b"{" * 1000, b"{" * 100]), ([], ErrorCode.JSON_DECODING)
        )


class LimitTests(FramingTestMixin, SynchronousTestCase):
    LIMIT = 16

    def test_line_at_limit(self) -> None:
        """A line of exactly the limit is allowed, with C{\\n} or C{\\r\\n}."""
        line = b"x" * self.LIMIT
        self.assertFrames(line + b"\n", [(line, LINE)], self.LIMIT)
        self.assertFrames(line + b"\r\n", [(line, LINE)], self.LIMIT)
        obj = b'{"a":"' + b"x" * (self.LIMIT - 8) + b'"}'
        self.assertFrames(obj + b"\r\n", [(obj, LINE)], self.LIMIT)

    def test_line_over_limit(self) -> None:
        """A line of the limit plus one is error 9."""
        for line in (b"x" * (self.LIMIT + 1),
                     b'{"a":"' + b"x" * (self.LIMIT - 7) + b'"}',
                     b" " * (self.LIMIT + 1)):
            self.assertFrames(
                line + b"\n", [], self.LIMIT, ErrorCode.LINE_TOO_LONG)
            self.assertFrames(
                line + b"\r\n", [], self.LIMIT, ErrorCode.LINE_TOO_LONG)

    def test_unterminated_over_limit(self) -> None:
        """Error 9 comes as soon as the limit is passed, before any
        terminator, for a line and for an object that is still open."""
        for first in (b"x", b"{", b" "):
            pending = first + b'"' * (self.LIMIT - 1)
            framer = Framer(self.LIMIT)
            self.assertEqual(list(framer.feed(pending)), [])
            self.assertRaisesCode(framer.feed(b"y"), ErrorCode.LINE_TOO_LONG)

    def test_cr_at_limit_plus_one(self) -> None:
        """A C{\\r} after a full line waits for the next byte: C{\\n} makes a
        line of the limit, anything else is error 9."""
        line = b"x" * self.LIMIT
        framer = Framer(self.LIMIT)
        self.assertEqual(list(framer.feed(line + b"\r")), [])
        self.assertEqual(list(framer.feed(b"\n")), [(line, LINE)])
        framer = Framer(self.LIMIT)
        self.assertEqual(list(framer.feed(line + b"\r")), [])
        self.assertRaisesCode(framer.feed(b"x"), ErrorCode.LINE_TOO_LONG)

    def test_cr_inside_open_object(self) -> None:
        """Inside an open object a C{\\r} cannot be a terminator: the limit
        plus one is error 9 at once."""
        framer = Framer(self.LIMIT)
        self.assertRaisesCode(
            framer.feed(b'{"a":' + b" " * (self.LIMIT - 5) + b"\r"),
            ErrorCode.LINE_TOO_LONG,
        )

    def test_object_at_limit(self) -> None:
        """An object of exactly the limit is allowed without a terminator; one
        byte more is error 9."""
        obj = b'{"a":"' + b"x" * (self.LIMIT - 8) + b'"}'
        self.assertEqual(len(obj), self.LIMIT)
        self.assertFrames(obj, [(obj, OBJECT)], self.LIMIT)
        self.assertFrames(obj + obj, [(obj, OBJECT)] * 2, self.LIMIT)
        big = b'{"a":"' + b"x" * (self.LIMIT - 7) + b'"}'
        self.assertFrames(big, [], self.LIMIT, ErrorCode.LINE_TOO_LONG)

    def test_limit_per_message(self) -> None:
        """The limit applies to each message, not to a line holding several
        objects."""
        obj = b'{"a":"' + b"x" * (self.LIMIT - 8) + b'"}'
        self.assertFrames(obj * 3 + b"\n", [(obj, OBJECT)] * 2 + [(obj, LINE)],
                          self.LIMIT)

    def test_whitespace_counts(self) -> None:
        """Whitespace before a message counts toward its length (as it did
        toward a line's)."""
        obj = b'{"a":"' + b"x" * (self.LIMIT - 8) + b'"}'
        self.assertFrames(b" " + obj + b"\n", [], self.LIMIT,
                          ErrorCode.LINE_TOO_LONG)
        self.assertFrames(obj + b" " + obj, [(obj, OBJECT)], self.LIMIT,
                          ErrorCode.LINE_TOO_LONG)

    def test_messages_before_error(self) -> None:
        """The messages before the error in the same read come first; after
        the error every feed raises it again."""
        framer = Framer(self.LIMIT)
        result = framer.feed(b'{"a":1}\n{}' + b"x" * (self.LIMIT + 2))
        it = iter(result)
        self.assertEqual(next(it), (b'{"a":1}', LINE))
        self.assertEqual(next(it), (b"{}", OBJECT))
        self.assertRaisesCode(it, ErrorCode.LINE_TOO_LONG)
        self.assertRaisesCode(framer.feed(b"\n"), ErrorCode.LINE_TOO_LONG)

    def assertRaisesCode(self, messages: Iterable[Message], code: ErrorCode) -> None:
        try:
            list(messages)
        except ProtocolError as e:
            self.assertEqual(e.code, code)
        else:
            self.fail(f"no error {code}")


class LinearWorkTests(SynchronousTestCase):
    """The work per byte received stays bounded: nothing is re-scanned."""

    def count(self) -> dict[str, int]:
        """Count the bytes every scan of a carried message is given."""
        counts = {"scanned": 0, "object": 0}
        scan, obj = Framer._scan, Framer._object

        def counting_scan(self: Framer, seg: bytes, *args: Any) -> None:
            counts["scanned"] += len(seg)
            scan(self, seg, *args)

        def counting_object(self: Framer, seg: bytes, pos: int, n: int) -> int:
            counts["object"] += n - pos
            return obj(self, seg, pos, n)

        self.patch(Framer, "_scan", counting_scan)
        self.patch(Framer, "_object", counting_object)
        return counts

    def test_trickled_braces(self) -> None:
        """A megabyte of open object, then its closing braces one byte per
        read: every byte is scanned once, and the object comes out whole."""
        counts = self.count()
        head = b'{"a":' * 1000 + b'"' + b"x" * BIG + b'"'
        framer = Framer(2 * BIG)
        self.assertEqual(list(framer.feed(head)), [])
        for _ in range(999):
            self.assertEqual(list(framer.feed(b"}")), [])
        self.assertEqual(framer.pending, len(head) + 999)
        self.assertEqual(list(framer.feed(b"}")), [(head + b"}" * 1000, OBJECT)])
        total = len(head) + 1000
        self.assertLessEqual(counts["scanned"], total)
        self.assertLessEqual(counts["object"], total)

    def test_byte_by_byte_login(self) -> None:
        """A login sent one byte per read is scanned one byte per read."""
        counts = self.count()
        login = b'{"user_id":1,"friends":[' + b"2," * 5000 + b'3],"text":"}{"}'
        framer = Framer(BIG)
        got: list[Message] = []
        for i in range(len(login)):
            got += framer.feed(login[i : i + 1])
        self.assertEqual(got, [(login, OBJECT)])
        self.assertLessEqual(counts["scanned"], len(login))
        self.assertLessEqual(counts["object"], len(login))

    def test_trickled_line(self) -> None:
        """A long line trickled in small reads is joined once, at its end."""
        counts = self.count()
        framer = Framer(BIG)
        line = b"[" + b"1," * 100000 + b"1]"
        for i in range(0, len(line), 7):
            self.assertEqual(list(framer.feed(line[i : i + 7])), [])
        self.assertEqual(list(framer.feed(b"\n")), [(line, LINE)])
        self.assertLessEqual(counts["scanned"], len(line))
        self.assertEqual(counts["object"], 0)

    def test_whole_lines_not_scanned(self) -> None:
        """Whole lines of one object each take the fast path: no scan."""
        counts = self.count()
        framer = Framer(BIG)
        data = b'{"type":"status","status":"away","text":"x"}\n' * 100
        self.assertEqual(len(list(framer.feed(data))), 100)
        self.assertEqual(counts["scanned"], 0)


# -- property -----------------------------------------------------------------

SETTINGS = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

json_text = st.text(
    alphabet=st.sampled_from(list('ab{}[]"\\:, \t\u00e9\u2603\n\r/')), max_size=8
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | json_text,
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(json_text, children, max_size=3),
    max_leaves=6,
)
objects = st.dictionaries(json_text, json_values, max_size=4)
whitespace = st.text(alphabet=" \t", max_size=2)
# A line that is not an object: no \n, no \r, not starting with "{" or blank.
other_lines = st.text(
    alphabet=st.sampled_from(list('ab1[]{}"\\ \x0b')), min_size=1, max_size=8
).filter(lambda s: s[0] not in "{ \t" and not s.isspace())


@st.composite
def streams(draw: Any) -> tuple[bytes, list[Message]]:
    """Random messages, encoded as a client might: the bytes and the expected
    messages (as they would come from one read)."""
    data = b""
    expected: list[Message] = []
    for _ in range(draw(st.integers(0, 8))):
        kind = draw(st.sampled_from(["object", "line", "blank"]))
        if kind == "blank":
            if expected and expected[-1][1] is OBJECT:
                continue  # it would be that object's own terminator
            data += draw(whitespace).encode() + draw(st.sampled_from([b"\n", b"\r\n"]))
            expected.append((b"", LINE))
        elif kind == "line":
            line = draw(other_lines).encode()
            data += draw(whitespace).encode() + line + draw(
                st.sampled_from([b"\n", b"\r\n"]))
            expected.append((line, LINE))
        else:
            obj = json.dumps(
                draw(objects), ensure_ascii=draw(st.booleans()),
                separators=draw(st.sampled_from([(",", ":"), (", ", ": ")])),
            ).encode()
            ending: Ending = draw(st.sampled_from([LINE, OBJECT]))
            data += draw(whitespace).encode() + obj
            if ending is LINE:
                data += draw(whitespace).encode() + draw(
                    st.sampled_from([b"\n", b"\r\n"]))
            expected.append((obj, ending))
    return data, expected


class PropertyTests(SynchronousTestCase):
    @SETTINGS
    @given(streams(), st.data())
    def test_random_splits(self, stream: tuple[bytes, list[Message]],
                           data: Any) -> None:
        """A random sequence of messages, cut into random reads, gives back
        the same messages (up to late terminators)."""
        raw, expected = stream
        self.assertEqual(frame([raw]), (expected, None))
        cuts = sorted(data.draw(st.lists(st.integers(0, len(raw)), max_size=12)))
        chunks = [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=True)]
        messages, error = frame(chunks)
        self.assertIsNone(error)
        self.assertEqual(normal(messages), normal(expected))
        for payload, _ in messages:
            if payload.startswith(b"{"):
                json.loads(payload)

    @SETTINGS
    @given(
        st.lists(
            st.sampled_from([b"{", b"}", b'"', b"\\", b"\n", b"\r", b" ", b"\t",
                             b"a", b"\x0b", b"[", b":", b"{}", b'"}"', b'{"a":1}']),
            max_size=40,
        ).map(b"".join),
        st.data(),
    )
    def test_any_bytes_any_splits(self, raw: bytes, data: Any) -> None:
        """Any bytes at all, cut anywhere, give the same messages as in one
        read (up to late terminators), and never anything but messages or a
        L{ProtocolError}."""
        whole, error = frame([raw])
        cuts = sorted(data.draw(st.lists(st.integers(0, len(raw)), max_size=10)))
        chunks = [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=True)]
        messages, code = frame(chunks)
        self.assertEqual((normal(messages), code), (normal(whole), error))


def reference(data: bytes, limit: int) -> tuple[list[Message], ErrorCode | None]:
    """The rules of the framing, one byte at a time, for input in one read:
    plain and slow, to check the framer against."""
    messages: list[Message] = []
    start = 0  # where the current message's bytes begin
    state, body, depth, in_str, esc = "start", 0, 0, False, False
    i, n = 0, len(data)

    def line_end(end: int) -> int:
        """The length of the line data[start:end], without a final \\r."""
        return end - start - (1 if end > start and data[end - 1] == 0x0D else 0)

    while i < n:
        c = data[i : i + 1]
        if c == b"\n":
            length = line_end(i)
            if length > limit:
                return messages, ErrorCode.LINE_TOO_LONG
            payload = b"" if state == "start" else data[body:i]
            if payload.endswith(b"\r"):
                payload = payload[:-1]
            messages.append((b"" if payload.isspace() else payload, LINE))
            start, state = i + 1, "start"
        elif state == "start":
            if c == b"{":
                state, body, depth, in_str, esc = "object", i, 1, False, False
            elif c not in (b" ", b"\t", b"\r"):
                state, body = "line", i
        elif state == "object":
            if esc:
                esc = False
            elif in_str:
                esc = c == b"\\"
                in_str = c != b'"'
            elif c == b'"':
                in_str = True
            elif c == b"{":
                depth += 1
                if depth > MAX_DEPTH:
                    return messages, ErrorCode.JSON_DECODING
            elif c == b"}":
                depth -= 1
                if depth == 0:
                    end = j = i + 1
                    while j < n and data[j : j + 1] in (b" ", b"\t", b"\r"):
                        j += 1
                    if j < n and data[j : j + 1] == b"\n":
                        if line_end(j) > limit:
                            return messages, ErrorCode.LINE_TOO_LONG
                        messages.append((data[body:end], LINE))
                        start, state, i = j + 1, "start", j + 1
                        continue
                    if end - start > limit:
                        return messages, ErrorCode.LINE_TOO_LONG
                    messages.append((data[body:end], OBJECT))
                    start, state = end, "start"
        i += 1
    pending = n - start
    if pending > limit + 1 or (
        pending == limit + 1 and (data[-1:] != b"\r" or state == "object")
    ):
        return messages, ErrorCode.LINE_TOO_LONG
    return messages, None


class ReferenceTests(SynchronousTestCase):
    @settings(SETTINGS, max_examples=1000)
    @given(
        st.lists(
            st.sampled_from([b"{", b"}", b'"', b"\\", b"\n", b"\r", b" ", b"\t",
                             b"a", b"\x0b", b"[", b":", b"{}", b'"}"', b'{"a":1}',
                             b"\r\n", b"\\\\", b'\\"', b'"\\""', b'"\\\\"',
                             b'{"a":"\\"}"}']),
            max_size=14,
        ).map(b"".join),
    )
    def test_same_as_reference(self, raw: bytes) -> None:
        """In one read, the framer gives what the byte-by-byte reference
        gives, with every limit: the same messages and the same error at the
        same point."""
        for limit in range(len(raw) + 2):
            self.assertEqual(frame([raw], limit), reference(raw, limit), limit)
