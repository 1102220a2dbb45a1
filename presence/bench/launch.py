"""Starting C{twistd -n presence} as a process: the project's one launcher.

The bench starts its server under test with it, and the end-to-end tests
(C{tests/conftest.py}) start theirs. It needs none of the bench extra (no
psutil), and nothing of the server but its command line.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from presence.bench.loadgen import raise_nofile

LISTENING = re.compile(r"presence listening on (\S+)")


def script(name: str) -> str:
    """Console script C{name} installed beside this Python (in its virtual
    environment), else just C{name}, for a search of PATH."""
    return shutil.which(name, path=os.path.dirname(sys.executable)) or name


def twistd() -> str:
    """The C{twistd} of this Python's environment."""
    return script("twistd")


class LaunchedServer:
    """C{twistd -n presence} in a subprocess: the one launcher of the project.

    The bench starts its server under test with it (L{for_bench}), and the
    end-to-end tests (C{tests/conftest.py}) start theirs. C{options} follow
    C{presence} on the command line; C{prefix} goes before C{twistd} (such as
    C{prlimit --nofile=64:64}). The process runs in C{cwd} (a new temporary
    directory by default) and writes its log to C{log_path} (a new file in
    C{cwd} by default), never to a pipe, so that a busy server never waits for
    its reader. Once the log says "presence listening on ADDRESS", the
    constructor returns: C{address} is that endpoint (such as
    C{tcp:127.0.0.1:PORT}, C{haproxy:tcp:127.0.0.1:PORT} or C{unix:/path})
    and C{host}/C{port} its TCP part
    (C{127.0.0.1}/0 for a UNIX socket). If the server exits or does not listen
    within C{start_timeout} seconds, it is stopped and RuntimeError raised with
    the end of its log.
    """

    def __init__(
        self,
        options: list[str],
        *,
        cwd: Path | None = None,
        log_path: Path | None = None,
        prefix: list[str] | None = None,
        cpus: set[int] | None = None,
        start_timeout: float = 30.0,
    ) -> None:
        self.workdir = cwd or Path(tempfile.mkdtemp(prefix="presence-server-"))
        if log_path is None:
            fd, name = tempfile.mkstemp(dir=self.workdir, prefix="twistd-",
                                        suffix=".log")
            os.close(fd)
            log_path = Path(name)
        self.log_path = log_path
        self.argv = [*(prefix or []), twistd(), "-n", "--pidfile=", "presence",
                     *options]
        self.nofile: int | None = None  # the file limit set for it, if any
        with open(self.log_path, "wb") as log:  # the child keeps its own copy
            self.proc = subprocess.Popen(
                self.argv,
                cwd=self.workdir,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        if cpus:
            try:
                os.sched_setaffinity(self.proc.pid, cpus)
            except OSError:
                pass
        self.pid = self.proc.pid
        self.address = self._wait_listening(start_timeout)
        self.host, self.port = "127.0.0.1", 0
        # haproxy:tcp:HOST:PORT behind the PROXY protocol.
        address = self.address.removeprefix("haproxy:")
        if address.startswith(("tcp:", "ssl:")):
            _, self.host, port_text = address.rsplit(":", 2)
            self.port = int(port_text)

    @classmethod
    def for_bench(
        cls,
        options: list[str],
        log_path: Path | None = None,
        cpus: set[int] | None = None,
        backlog: int = 4096,
    ) -> LaunchedServer:
        """The server under test of the bench: on a free loopback port with a
        deep backlog, and the file limit raised to the hard limit."""
        nofile = raise_nofile()  # inherited by the child
        port = f"tcp:0:interface=127.0.0.1:backlog={backlog}"
        server = cls(["--port", port, *options], log_path=log_path, cpus=cpus)
        server.nofile = nofile
        return server

    @property
    def log(self) -> str:
        """Everything the server has written so far."""
        return self.log_path.read_text(errors="replace")

    @property
    def lines(self) -> list[str]:
        """The server's log lines so far."""
        return self.log.splitlines()

    def _wait_listening(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = LISTENING.search(self.log)
            if m:
                return m.group(1)
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(
            f"server did not start ({' '.join(self.argv)}):\n{self.log[-3000:]}")

    def wait_for_log(self, pattern: str, timeout: float = 10) -> str:
        """The first log line that matches C{pattern}, waiting for it to come."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.lines:
                if regex.search(line):
                    return line
            time.sleep(0.02)
        raise AssertionError(f"no log line matching {pattern!r}:\n{self.log}")

    def endpoint(self) -> str:
        """A client endpoint string for its TCP address."""
        return f"tcp:{self.host}:{self.port}"

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int | None:
        """Send C{sig} (and SIGKILL after C{timeout} seconds); the exit code."""
        return stop_process(self.proc, sig, timeout)


def stop_process(proc: subprocess.Popen[Any], sig: int = signal.SIGTERM,
                 timeout: float = 10.0) -> int | None:
    """Send C{sig} to C{proc} if it runs, SIGKILL after C{timeout} seconds;
    its exit code."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return proc.returncode


def rss_kib(pid: int) -> int:
    """A process's resident set size in KiB, from /proc."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")
