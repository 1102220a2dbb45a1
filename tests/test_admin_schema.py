"""The admin API against its OpenAPI document (docs/openapi.yaml), by
schemathesis: generated requests, valid and invalid, to a real admin site
(fake callables behind it) in a child process on a loopback port."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

TOKEN = "schema-test-token"
DOCUMENT = Path(__file__).resolve().parent.parent / "docs" / "openapi.yaml"

SERVER = """
import sys
from twisted.internet import reactor
from presence.core.interfaces import UserState
from presence.server.admin import Metrics, admin_site

def lookup(ids):
    # Even ids are online (some away with a text, some invisible), odd absent.
    return [
        UserState(u, True, ("away", "invisible", "online")[u % 3], "x" * (u % 7),
                  frozenset(), 1 + u % 4, 0.0, 1) if u % 2 == 0 else None
        for u in ids
    ]

site = admin_site(
    metrics=Metrics(), sessions=lambda: 1, users_online=lambda: 1, lookup=lookup,
    disconnect=lambda uid: uid % 3, ready=lambda: True, token=sys.argv[1].encode(),
)
port = reactor.listenTCP(0, site, interface="127.0.0.1")
print("port", port.getHost().port, flush=True)
reactor.run()
"""


@pytest.fixture(scope="module")
def admin_url() -> Iterator[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER, TOKEN], stdout=subprocess.PIPE, text=True
    )
    timer = threading.Timer(30, proc.kill)
    timer.start()
    assert proc.stdout is not None
    line = proc.stdout.readline()
    timer.cancel()
    m = re.match(r"port (\d+)", line)
    assert m, f"the admin site did not start: {line!r}"
    yield f"http://127.0.0.1:{m.group(1)}"
    proc.terminate()
    proc.wait(10)


def test_admin_api_conforms(admin_url: str, tmp_path: Path) -> None:
    """Every generated request gets an answer that the document allows:
    documented status codes, content types, headers and bodies; no server
    error; invalid input refused with 400; /v1 requests without the token
    refused; undocumented methods refused with 405.

    Runs schemathesis's own command line (its pytest plugin does not work
    with pytest 9), every check, a fixed seed, a bounded number of examples.
    """
    st = Path(sys.executable).with_name("schemathesis")
    result = subprocess.run(
        [
            str(st), "run", str(DOCUMENT), "--url", admin_url,
            "--header", f"Authorization: Bearer {TOKEN}",
            "--checks", "all", "--max-examples", "40", "--seed", "1",
            "--workers", "1", "--request-timeout", "10",
            "--generation-database", "none", "--no-color",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
