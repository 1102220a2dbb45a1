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
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

T = TypeVar("T")


def quick_init(cls: type[T]) -> type[T]:
    """Replace C{cls.__init__} (a frozen, slotted dataclass with plain
    defaults and no C{__post_init__}) with one that sets its slots directly."""
    params = getattr(cls, "__dataclass_params__", None)
    if params is None or not params.frozen or "__slots__" not in vars(cls):
        raise TypeError(f"{cls.__name__} is not a frozen, slotted dataclass")
    if hasattr(cls, "__post_init__"):
        raise TypeError(f"{cls.__name__} has a __post_init__")
    names: list[str] = []
    args: list[str] = []
    namespace: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if not f.init or f.default_factory is not dataclasses.MISSING:
            raise TypeError(f"{cls.__name__}.{f.name}: not a plain field")
        names.append(f.name)
        namespace[f"set_{f.name}"] = vars(cls)[f.name].__set__
        if f.default is dataclasses.MISSING:
            args.append(f.name)
        else:
            namespace[f"default_{f.name}"] = f.default
            args.append(f"{f.name}=default_{f.name}")
    lines = [f"def __init__(self, {', '.join(args)}):"]
    lines += [f"    set_{name}(self, {name})" for name in names] or ["    pass"]
    exec("\n".join(lines), namespace)  # code from the fields' own names
    init = namespace["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__doc__ = cls.__init__.__doc__
    cls.__init__ = init  # type: ignore[method-assign]
    return cls
