"""quick_init and maker (presence.wire.frozen): the same values as the
dataclass's own constructor, still frozen; only classes they can handle are
accepted."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from presence.core.interfaces import UserState
from presence.wire import StatusChange
from presence.wire.frozen import maker, quick_init
from presence.wire.messages import Status


@dataclass(frozen=True, slots=True)
class Reference:
    a: int
    b: str
    c: frozenset[int] = frozenset()
    d: bytes | None = field(default=None, compare=False)


@quick_init
@dataclass(frozen=True, slots=True)
class Quick:
    a: int
    b: str
    c: frozenset[int] = frozenset()
    d: bytes | None = field(default=None, compare=False)


def values(obj: Any) -> tuple[Any, ...]:
    return tuple(getattr(obj, f.name) for f in dataclasses.fields(obj))


class QuickInitTests(SynchronousTestCase):
    def test_same_values(self) -> None:
        """Positional, keyword and default arguments give the fields the
        dataclass's own constructor gives them; equality, hash and repr
        follow."""
        calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = [
            ((1, "x"), {}),
            ((1, "x", frozenset({2})), {}),
            ((1,), {"b": "y", "d": b"z"}),
            ((), {"d": b"", "c": frozenset(), "b": "", "a": 0}),
        ]
        for args, kwargs in calls:
            ref, quick = Reference(*args, **kwargs), Quick(*args, **kwargs)
            self.assertEqual(values(quick), values(ref))
            self.assertEqual(hash(quick), hash(Quick(*values(ref))))
            self.assertEqual(repr(quick), repr(ref).replace("Reference", "Quick"))

    def test_bad_calls_still_refused(self) -> None:
        """Missing, unknown and repeated arguments are TypeErrors, as before."""
        self.assertRaises(TypeError, Quick, 1)
        self.assertRaises(TypeError, Quick, 1, "x", e=2)
        self.assertRaises(TypeError, Quick, 1, "x", a=2)

    def test_still_frozen(self) -> None:
        """Assigning to a field still raises."""
        quick = Quick(1, "x")
        with self.assertRaises(dataclasses.FrozenInstanceError):
            quick.a = 2  # type: ignore[misc]

    def test_the_classes_that_use_it(self) -> None:
        """UserState, StatusChange and Status are built with it and hold
        what they are given."""
        state = UserState(7, True, "away", "t", frozenset({1}), 2, 3.5, 9)
        self.assertEqual(
            values(state), (7, True, "away", "t", frozenset({1}), 2, 3.5, 9, None)
        )
        self.assertEqual(values(StatusChange("busy", None)), ("busy", None))
        change = StatusChange(None, "x")
        self.assertIs(Status(change).change, change)
        for cls in (UserState, StatusChange, Status):
            self.assertEqual(cls.__init__.__qualname__, f"{cls.__name__}.__init__")

    def test_refuses_what_it_cannot_handle(self) -> None:
        """Classes that are not frozen and slotted, or need more than plain
        defaults, are refused at once."""

        @dataclass(slots=True)
        class NotFrozen:
            a: int

        @dataclass(frozen=True)
        class NoSlots:
            a: int

        @dataclass(frozen=True, slots=True)
        class Factory:
            a: list[int] = field(default_factory=list)

        @dataclass(frozen=True, slots=True)
        class PostInit:
            a: int

            def __post_init__(self) -> None:
                pass

        for cls in (NotFrozen, NoSlots, Factory, PostInit):
            self.assertRaises(TypeError, quick_init, cls)


class MakerTests(SynchronousTestCase):
    """maker(cls): values built through the twin class are the class's own."""

    def test_same_values(self) -> None:
        """The made value is an instance of the class (exactly), with the
        fields, equality, hash and repr of the class's own constructor."""
        make = maker(Quick)
        calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = [
            ((1, "x"), {}),
            ((1, "x", frozenset({2})), {}),
            ((1,), {"b": "y", "d": b"z"}),
        ]
        for args, kwargs in calls:
            made, quick = make(*args, **kwargs), Quick(*args, **kwargs)
            self.assertIs(type(made), Quick)
            self.assertEqual(values(made), values(quick))
            self.assertEqual(made, quick)
            self.assertEqual(hash(made), hash(quick))
            self.assertEqual(repr(made), repr(quick))

    def test_still_frozen(self) -> None:
        """Assigning to a made value's field still raises."""
        made = maker(Quick)(1, "x")
        with self.assertRaises(dataclasses.FrozenInstanceError):
            made.a = 2  # type: ignore[misc]

    def test_bad_calls_refused(self) -> None:
        """Missing and unknown arguments are TypeErrors."""
        make = maker(Quick)
        self.assertRaises(TypeError, make, 1)
        self.assertRaises(TypeError, make, 1, "x", e=2)

    def test_refuses_what_it_cannot_handle(self) -> None:
        """A class that is not frozen and slotted is refused at once; a
        plain frozen, slotted dataclass is made as its constructor makes it."""

        @dataclass(slots=True)
        class NotFrozen:
            a: int

        self.assertRaises(TypeError, maker, NotFrozen)
        self.assertEqual(maker(Reference)(1, "x"), Reference(1, "x"))

    def test_the_classes_that_use_it(self) -> None:
        """UserState, StatusChange and Status made this way are theirs."""
        state = maker(UserState)(7, True, "away", "t", frozenset({1}), 2, 3.5, 9)
        self.assertIs(type(state), UserState)
        self.assertEqual(
            state, UserState(7, True, "away", "t", frozenset({1}), 2, 3.5, 9)
        )
        other = UserState(7, True, "away", "t", frozenset(), 1, 0.0, 1)
        self.assertEqual(state.online_line(), other.online_line())
        self.assertIs(type(maker(StatusChange)("busy", None)), StatusChange)
        self.assertIs(type(maker(Status)(StatusChange(None, "x"))), Status)
