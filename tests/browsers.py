"""Browser test support: headless Debian chromium driven by playwright.

conftest.py registers the fixtures (``browser``, ``page``, ``static_site``)
once for the whole run.  Where chromium (the
Debian package ``chromium``) or the playwright package is missing, the tests
skip and say so; with ``CI=true``
that is a failure instead, so that CI cannot pass without running them.
Playwright only drives the system's chromium (``executable_path``): its own
browser downloads are never used.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

STATIC = Path(__file__).resolve().parent.parent / "presence" / "server" / "web"


def chromium_path() -> str | None:
    """The chromium to drive: $PRESENCE_CHROMIUM, or chromium on $PATH."""
    path = os.environ.get("PRESENCE_CHROMIUM") or shutil.which("chromium")
    return path if path and os.access(path, os.X_OK) else None


def missing(reason: str) -> None:
    """Skip (or, in CI, fail) because the browser cannot run."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: browser tests must run)")
    pytest.skip(reason)


@pytest.fixture(scope="module", name="browser")
def browser_fixture() -> Iterator[Any]:
    """A headless chromium with a fresh profile, for one test module.

    Per module, not per session: playwright's sync API keeps an event loop
    running while it lives, and other modules' tests run asyncio themselves.
    """
    path = chromium_path()
    if path is None:
        missing("chromium is not installed: apt-get install chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("the playwright package is not installed: pip install playwright")
    with sync_playwright() as p:
        # launch() runs the browser on a new temporary profile (a fresh
        # --user-data-dir), removed when it closes.
        b = p.chromium.launch(executable_path=path, headless=True, args=CHROMIUM_FLAGS)
        yield b
        b.close()


class PageErrors(list[str]):
    """Uncaught exceptions and console errors (CSP violations too) of a page."""


@pytest.fixture(name="page")
def page_fixture(browser: Any) -> Iterator[Any]:
    """A page in its own context; fails the test on uncaught page errors."""
    context = browser.new_context()
    p = context.new_page()
    p.set_default_timeout(10_000)
    errors = PageErrors()
    p.on("pageerror", lambda e: errors.append(f"page error: {e}"))
    p.on(
        "console",
        lambda m: errors.append(f"console {m.type}: {m.text}")
        if m.type == "error" else None,
    )
    p.errors = errors
    yield p
    context.close()


class StaticSite:
    """A child process serving presence's web resources (no WebSocket)."""

    def __init__(self) -> None:
        code = (
            "import sys\n"
            "from twisted.internet import reactor\n"
            "from twisted.web.server import Site\n"
            "from presence.server.web.resources import web_root\n"
            "port = reactor.listenTCP(0, Site(web_root()), interface='127.0.0.1')\n"
            "print('port', port.getHost().port, flush=True)\n"
            "reactor.run()\n"
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True
        )
        assert self.proc.stdout is not None
        line = ""
        timer = threading.Timer(30, self.proc.kill)
        timer.start()
        try:
            line = self.proc.stdout.readline()
        finally:
            timer.cancel()
        m = re.match(r"port (\d+)", line)
        if m is None:
            self.stop()
            raise RuntimeError(f"the static site did not start: {line!r}")
        self.url = f"http://127.0.0.1:{m.group(1)}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


@pytest.fixture(scope="session", name="static_site")
def static_site_fixture() -> Iterator[StaticSite]:
    """presence's static files (/, /presence.js, ...) on a loopback port."""
    site = StaticSite()
    yield site
    site.stop()


def listening(server: Any, what: str) -> str:
    """The endpoint of the server's ``presence <what> listening on ENDPOINT``
    log line (waited for: the TCP line may come first)."""
    line = server.wait_for_log(rf"presence {what} listening on \S+")
    m = re.search(rf"presence {what} listening on (\S+)", line)
    assert m is not None
    return m.group(1)


def port_of(endpoint: str) -> int:
    """The port of a ``tcp:HOST:PORT`` endpoint as the server logs it."""
    return int(endpoint.rsplit(":", 1)[1])
