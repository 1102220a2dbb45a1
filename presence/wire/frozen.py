"""A cheaper constructor for frozen, slotted dataclasses built once per event.

A frozen dataclass's generated C{__init__} sets each field with
C{object.__setattr__(self, name, value)}: a generic attribute lookup by
name per field, several times the cost of a plain assignment.  A status
change builds three such values (the C{StatusChange} and C{Status} it is
parsed into, the user's new C{UserState}); their constructors were about a
seventh of the server's instructions per change
(C{tools/fanout_cost.py --callgrind}, docs/performance.rst "Write path").

L{quick_init} gives such a class an C{__init__} that sets each slot
through its own descriptor instead, skipping the lookup.  The class stays
what the dataclass made it (frozen: assignment still raises; equality,
hash and repr unchanged); only construction is cheaper.

Calling a slot's descriptor is still a call per field (about 500
instructions each).  L{maker} goes further for the few places that build
one per event: it builds the value as an instance of a plain twin class
with the same slots (a plain assignment per field, which CPython
specializes) and then makes it an instance of the frozen class by
assigning C{__class__}, which CPython allows between classes whose slots
are the same.  The value is then in every way one the class made.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def _plain_fields(cls: type) -> list[dataclasses.Field[Any]]:
    """The fields of C{cls}, a frozen, slotted dataclass with plain defaults
    and no C{__post_init__} (else TypeError)."""
    params = getattr(cls, "__dataclass_params__", None)
    if params is None or not params.frozen or "__slots__" not in vars(cls):
        raise TypeError(f"{cls.__name__} is not a frozen, slotted dataclass")
    if hasattr(cls, "__post_init__"):
        raise TypeError(f"{cls.__name__} has a __post_init__")
    fields = list(dataclasses.fields(cls))
    for f in fields:
        if not f.init or f.default_factory is not dataclasses.MISSING:
            raise TypeError(f"{cls.__name__}.{f.name}: not a plain field")
    return fields


def _parameters(fields: list[dataclasses.Field[Any]], namespace: dict[str, Any]
                ) -> str:
    """The generated C{__init__}'s parameter list; each default is put in
    C{namespace} under C{default_NAME}, where the list refers to it."""
    args = []
    for f in fields:
        if f.default is dataclasses.MISSING:
            args.append(f.name)
        else:
            namespace[f"default_{f.name}"] = f.default
            args.append(f"{f.name}=default_{f.name}")
    return ", ".join(args)


def quick_init(cls: type[T]) -> type[T]:
    """Replace C{cls.__init__} (a frozen, slotted dataclass with plain
    defaults and no C{__post_init__}) with one that sets its slots directly."""
    fields = _plain_fields(cls)
    names = [f.name for f in fields]
    namespace: dict[str, Any] = {
        f"set_{name}": vars(cls)[name].__set__ for name in names
    }
    lines = [f"def __init__(self, {_parameters(fields, namespace)}):"]
    lines += [f"    set_{name}(self, {name})" for name in names] or ["    pass"]
    exec("\n".join(lines), namespace)  # code from the fields' own names
    init = namespace["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__doc__ = cls.__init__.__doc__
    cls.__init__ = init  # type: ignore[method-assign]
    return cls


def maker(cls: type[T]) -> Callable[..., T]:
    """A constructor for C{cls} (a frozen, slotted dataclass with plain
    defaults, as for L{quick_init}), with its C{__init__}'s arguments, that
    builds the value through a twin class (see the module doc): for hot
    paths; C{cls(...)} stays the way everywhere else."""
    fields = _plain_fields(cls)
    namespace: dict[str, Any] = {"cls": cls}
    lines = [f"def __init__(self, {_parameters(fields, namespace)}):"]
    lines += [f"    self.{f.name} = {f.name}" for f in fields]
    lines += ["    self.__class__ = cls"]
    exec("\n".join(lines), namespace)  # code from the fields' own names
    twin = type(f"_{cls.__name__}Twin", (), {
        "__slots__": vars(cls)["__slots__"], "__init__": namespace["__init__"],
        "__module__": cls.__module__,
    })
    return twin
