"""The import rule: which layer of presence may import which.

Every module of the package is read with L{ast} (nothing is imported), and
each import is checked against L{LAYERS}:

    =================  ==============================  ===========================
    layer              may import of presence          Twisted / zope.interface
    =================  ==============================  ===========================
    presence           nothing                         nothing
                       (its own __init__: anything may import it)
    presence.wire      nothing else                    nothing
    presence.core      wire                            twisted.internet.interfaces,
                                                       twisted.logger,
                                                       zope.interface only
    presence.server    wire, core, cluster             any
    presence.cluster   wire, core                      any
    ...redisserver     nothing                         nothing
    presence.client    wire                            any
    presence.cli       wire, client                    any
    presence.bench     wire, cluster.redisserver       any
    presence.test      (exempt)
    =================  ==============================  ===========================

What counts as an import:
  - C{import a.b} and C{from a.b import c} anywhere in a module: at the top,
    inside functions and classes, under C{try}; relative imports are resolved.
    C{from a import b} counts as importing C{a.b}, so that
    C{from twisted.internet import reactor} is seen for what it is.
  - C{importlib.import_module("a.b")} and C{__import__("a.b")} with a literal
    name.
  - Imports under C{if TYPE_CHECKING:} count for the presence layers: an
    annotation that names a higher layer is a dependency all the same (use an
    interface from L{presence.core.interfaces} instead). They are exempt from
    the Twisted column only: annotations cannot start a reactor or open a
    socket. C{presence.wire} gets no such exemption, since it must read without
    Twisted at all.

A module of C{presence} outside every layer (a new top-level package) fails
too, so that a new package is placed in the rule before it grows.
"""

from __future__ import annotations

import ast
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

import presence

# Third-party roots the rule constrains; other libraries are not its business.
FOREIGN = ("twisted", "zope")


@dataclass(frozen=True)
class Layer:
    """One layer of the package: what its modules may import.

    C{presence} lists the other layers its modules may import (a layer may
    always import itself). C{foreign} is None when any Twisted and
    zope.interface module may be imported, else the prefixes that may be;
    C{foreign_typing} the same for imports under C{TYPE_CHECKING}.
    """

    name: str
    presence: frozenset[str]
    foreign: tuple[str, ...] | None = None
    foreign_typing: tuple[str, ...] | None = None


TOP = "presence"
# The package's own __init__: every import of presence runs it, so it imports
# nothing of presence, and anything may import it (e.g. __version__).
ROOT = Layer(TOP, frozenset(), foreign=(), foreign_typing=())

LAYERS: tuple[Layer, ...] = (
    Layer("presence.wire", frozenset(), foreign=(), foreign_typing=()),
    Layer(
        "presence.core",
        frozenset({"presence.wire"}),
        foreign=("twisted.internet.interfaces", "twisted.logger", "zope.interface"),
    ),
    Layer(
        "presence.server",
        frozenset({"presence.wire", "presence.core", "presence.cluster"}),
    ),
    Layer("presence.cluster", frozenset({"presence.wire", "presence.core"})),
    # A throw-away redis-server for tests and benchmarks: the standard library
    # only, so that the bench can start one without importing the bus.
    Layer("presence.cluster.redisserver", frozenset(), foreign=(), foreign_typing=()),
    Layer("presence.client", frozenset({"presence.wire"})),
    Layer("presence.cli", frozenset({"presence.wire", "presence.client"})),
    # The bench starts the server as a process and talks to it over sockets
    # (and, for --cluster, a redis-server).
    Layer("presence.bench",
          frozenset({"presence.wire", "presence.cluster.redisserver"})),
)

EXEMPT = ("presence.test",)


def within(name: str, prefix: str) -> bool:
    """C{name} is the module C{prefix} or inside it."""
    return name == prefix or name.startswith(prefix + ".")


@dataclass(frozen=True)
class Import:
    """One import found in a module's source."""

    module: str  # the importing module
    path: Path
    line: int
    target: str  # the absolute dotted name imported
    statement: str  # the import as written
    typing_only: bool  # under "if TYPE_CHECKING:"


@dataclass(frozen=True)
class Violation:
    """An import the rule forbids, worded for a failing test."""

    imp: Import
    reason: str

    def __str__(self) -> str:
        i = self.imp
        return (f"{i.path}:{i.line}: {i.module} imports {i.target} "
                f"({i.statement}): {self.reason}")


def module_name(root: Path, path: Path) -> str:
    """The dotted name of the module at C{path}; C{root} is the top package."""
    parts = [root.name, *path.relative_to(root).with_suffix("").parts]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


class _Reader(ast.NodeVisitor):
    """Collects a module's imports, knowing which are under TYPE_CHECKING."""

    def __init__(self, module: str, package: str, path: Path) -> None:
        self.module, self.package, self.path = module, package, path
        self.typing_only = False
        self.found: list[Import] = []

    def _add(self, node: ast.AST, target: str) -> None:
        self.found.append(Import(self.module, self.path, getattr(node, "lineno", 0),
                                 target, ast.unparse(node), self.typing_only))

    def visit_If(self, node: ast.If) -> None:
        if not _is_type_checking(node.test):
            self.generic_visit(node)
            return
        self.visit(node.test)
        was, self.typing_only = self.typing_only, True
        for stmt in node.body:
            self.visit(stmt)
        self.typing_only = was
        for stmt in node.orelse:
            self.visit(stmt)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(node, alias.name)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = node.module or ""
        if node.level:
            parts = self.package.split(".")
            if node.level - 1 >= len(parts):
                raise ValueError(f"{self.path}:{node.lineno}: relative import "
                                 "beyond the top package")
            anchor = ".".join(parts[: len(parts) - (node.level - 1)])
            base = f"{anchor}.{base}" if base else anchor
        for alias in node.names:
            self._add(node, base if alias.name == "*" else f"{base}.{alias.name}")

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        name = func.id if isinstance(func, ast.Name) else (
            func.attr if isinstance(func, ast.Attribute) else "")
        if (name in ("import_module", "__import__") and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)):
            self._add(node, node.args[0].value)
        self.generic_visit(node)


def read_imports(root: Path) -> Iterator[Import]:
    """Every import in every module below the package directory C{root}."""
    for path in sorted(root.rglob("*.py")):
        module = module_name(root, path)
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        reader = _Reader(module, package, path)
        reader.visit(ast.parse(path.read_text(encoding="utf-8"), str(path)))
        yield from reader.found


def layer_of(module: str, layers: tuple[Layer, ...] = LAYERS) -> Layer | None:
    """The innermost layer that holds C{module}; the root module is L{ROOT}."""
    if module == TOP:
        return ROOT
    holding = [layer for layer in layers if within(module, layer.name)]
    return max(holding, key=lambda layer: len(layer.name), default=None)


def check(imp: Import, modules: set[str], layers: tuple[Layer, ...] = LAYERS,
          exempt: tuple[str, ...] = EXEMPT) -> str | None:
    """Why the rule forbids C{imp}, or None when it may stand.

    C{modules} are the names of the package's modules, to tell C{from presence
    import __version__} (the root module's contents) from a package that is in
    no layer.
    """
    if any(within(imp.module, e) for e in exempt):
        return None
    layer = layer_of(imp.module, layers)
    if layer is None:
        return "the module is in no layer: add its package to LAYERS"
    if within(imp.target, TOP):
        if any(within(imp.target, e) for e in exempt):
            return f"{layer.name} may not import test code"
        target = layer_of(imp.target, layers)
        if target is None:
            head = ".".join(imp.target.split(".")[:2])
            if head in modules:
                return f"{imp.target} is in no layer"
            target = ROOT  # a name in the root module, such as __version__
        if target == layer or target == ROOT or target.name in layer.presence:
            return None
        allowed = ", ".join(sorted(layer.presence)) or "nothing else of presence"
        return f"{layer.name} may import only {allowed}"
    if imp.target.split(".")[0] in FOREIGN:
        allowed_foreign = layer.foreign_typing if imp.typing_only else layer.foreign
        if allowed_foreign is None or any(within(imp.target, p)
                                          for p in allowed_foreign):
            return None
        if not allowed_foreign:
            return f"{layer.name} may not import Twisted or zope.interface"
        return (f"{layer.name} may import of Twisted only "
                f"{', '.join(allowed_foreign)}")
    return None


def violations(root: Path, layers: tuple[Layer, ...] = LAYERS,
               exempt: tuple[str, ...] = EXEMPT) -> list[Violation]:
    """Every import below C{root} that the rule forbids."""
    imports = list(read_imports(root))
    modules = {module_name(root, path) for path in root.rglob("*.py")}
    found = []
    for imp in imports:
        reason = check(imp, modules, layers, exempt)
        if reason is not None:
            found.append(Violation(imp, reason))
    return found


class LayersTests(SynchronousTestCase):
    """The package itself keeps the import rule."""

    def test_package_keeps_the_rule(self) -> None:
        """No module of presence imports what its layer may not."""
        root = Path(presence.__file__).parent
        found = violations(root)
        self.assertEqual(found, [], "\n" + "\n".join(map(str, found)))

    def test_reads_the_package(self) -> None:
        """The reader sees the package's modules and their imports at all."""
        root = Path(presence.__file__).parent
        modules = {imp.module for imp in read_imports(root)}
        for layer in ("presence.wire", "presence.core", "presence.server",
                      "presence.client", "presence.cli", "presence.bench"):
            self.assertTrue(any(within(m, layer) for m in modules), layer)


SYNTHETIC = {
    "__init__.py": "__version__ = '0'\n",
    "wire/__init__.py": """
        from presence.wire import errors
        from . import errors as again
        """,
    "wire/errors.py": """
        import enum

        def later():
            import twisted.internet.defer
        """,
    "core/__init__.py": "",
    "core/registry.py": """
        from __future__ import annotations
        import zope.interface
        from twisted.internet.interfaces import IReactorTime
        from twisted.logger import Logger
        from twisted.internet import reactor
        from ..wire import errors
        from ..server import session

        class Registry:
            def run(self):
                from presence.client import Session
        """,
    "core/typed.py": """
        from typing import TYPE_CHECKING
        if TYPE_CHECKING:
            from twisted.internet.defer import Deferred
            from presence.server.session import Session
        else:
            from twisted.internet import task
        """,
    "server/__init__.py": "",
    "server/session.py": """
        import importlib
        from twisted.internet import reactor
        from presence.core import registry
        from presence.cluster import bus
        from presence.client import protocol
        from presence.test import support
        plugin = importlib.import_module("presence.cli.client")
        """,
    "cluster/__init__.py": "from presence.server import session\n",
    "client/__init__.py": "from presence.wire import errors\nimport presence.cli\n",
    "cli/__init__.py": """
        from presence.client import Session
        from presence import __version__
        """,
    "bench/__init__.py": """
        import psutil
        from presence.wire import errors
        from presence.server import tap
        """,
    "test/__init__.py": "from presence.server import session\n",
    "web/__init__.py": "from presence.wire import errors\n",
}


class CheckerTests(SynchronousTestCase):
    """The checker on a small synthetic package: it can fail, and says why."""

    def setUp(self) -> None:
        self.root = Path(self.mktemp()) / "presence"
        for relative, text in SYNTHETIC.items():
            path = self.root / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(textwrap.dedent(text).lstrip("\n"))

    def found(self) -> set[tuple[str, int, str]]:
        return {(v.imp.module, v.imp.line, v.imp.target)
                for v in violations(self.root)}

    def test_finds_every_violation(self) -> None:
        """Each forbidden import is found (top level, in functions, relative,
        under TYPE_CHECKING, dynamic), and every allowed one passes."""
        self.assertEqual(self.found(), {
            # wire: no Twisted, even in a function
            ("presence.wire.errors", 4, "twisted.internet.defer"),
            # core: the reactor, a relative import of server, client in a method
            ("presence.core.registry", 5, "twisted.internet.reactor"),
            ("presence.core.registry", 7, "presence.server.session"),
            ("presence.core.registry", 11, "presence.client.Session"),
            # TYPE_CHECKING: Twisted allowed for annotations, server not; the
            # else branch runs
            ("presence.core.typed", 4, "presence.server.session.Session"),
            ("presence.core.typed", 6, "twisted.internet.task"),
            # server: client, tests and the CLI (dynamic import) are not its
            ("presence.server.session", 5, "presence.client.protocol"),
            ("presence.server.session", 6, "presence.test.support"),
            ("presence.server.session", 7, "presence.cli.client"),
            ("presence.cluster", 1, "presence.server.session"),
            ("presence.client", 2, "presence.cli"),
            ("presence.bench", 3, "presence.server.tap"),
            # a package outside every layer
            ("presence.web", 1, "presence.wire.errors"),
        })

    def test_message_names_module_and_import(self) -> None:
        """A violation names the file, line, module, import as written and rule."""
        messages = {(v.imp.module, v.imp.target): str(v)
                    for v in violations(self.root)}
        registry = self.root / "core" / "registry.py"
        self.assertEqual(
            messages["presence.core.registry", "twisted.internet.reactor"],
            f"{registry}:5: presence.core.registry imports twisted.internet.reactor"
            " (from twisted.internet import reactor): presence.core may import of"
            " Twisted only twisted.internet.interfaces, twisted.logger,"
            " zope.interface",
        )
        self.assertEqual(
            messages["presence.core.registry", "presence.server.session"],
            f"{registry}:7: presence.core.registry imports presence.server.session"
            " (from ..server import session): presence.core may import only"
            " presence.wire",
        )
        self.assertEqual(
            messages["presence.web", "presence.wire.errors"],
            f"{self.root / 'web' / '__init__.py'}:1: presence.web imports"
            " presence.wire.errors (from presence.wire import errors): the module"
            " is in no layer: add its package to LAYERS",
        )

    def test_clean_tree_passes(self) -> None:
        """Without the offending modules nothing is reported."""
        for relative in ("wire/errors.py", "core/registry.py", "core/typed.py",
                         "server/session.py", "cluster/__init__.py",
                         "client/__init__.py", "bench/__init__.py",
                         "web/__init__.py"):
            (self.root / relative).unlink()
        self.assertEqual(violations(self.root), [])

    def test_relative_import_beyond_top(self) -> None:
        """A relative import above the top package is an error, not a pass."""
        (self.root / "wire" / "bad.py").write_text("from ... import x\n")
        self.assertRaises(ValueError, violations, self.root)
