"""Running ``twistd presence`` with any twistd options, in either mode.

C{conftest.ServerProcess} always runs ``twistd -n --pidfile= presence``; the
operations tests also need a pidfile, ``--uid``, a log file, the JSON log
format, daemon mode and servers that must fail to start.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import orjson
import pytest
from conftest import twistd

from presence.bench.launch import stop_process

# A free loopback port chosen by the kernel.
ANY_PORT = "tcp:0:interface=127.0.0.1"
LISTENING = re.compile(r"presence listening on tcp6?:([\d.]+|\[[\da-f:]+\]):(\d+)")


def command(twistd_args: list[str], args: list[str]) -> list[str]:
    return [twistd(), *twistd_args, "presence", *args]


class Running:
    """A foreground server (``twistd -n ...``): its output lines, its port."""

    def __init__(self, twistd_args: list[str], args: list[str], cwd: Path,
                 prefix: list[str] | None = None, json_log: bool = False,
                 listening_in: Path | None = None) -> None:
        self.json_log = json_log
        self.proc = subprocess.Popen(
            [*(prefix or []), *command(["-n", *twistd_args], args)], cwd=cwd,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        self.lines: list[str] = []
        self.port = 0
        self._listening = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if listening_in is not None:
            self._watch(listening_in)
        if not self._listening.wait(30):
            self.stop()
            raise RuntimeError("server did not start:\n" + self.log)

    def _watch(self, logfile: Path) -> None:
        # The log goes to a file: look for the port there.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and self.proc.poll() is None:
            if logfile.exists():
                m = LISTENING.search(logfile.read_text())
                if m:
                    self.port = int(m.group(2))
                    self._listening.set()
                    return
            time.sleep(0.02)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            self.lines.append(line)
            text = self.text(line) if self.json_log else line
            m = LISTENING.search(text or "")
            if m and not self._listening.is_set():
                self.port = int(m.group(2))
                self._listening.set()

    @staticmethod
    def text(line: str) -> str | None:
        """The text of a JSON log line (None if it is not one)."""
        try:
            event = orjson.loads(line)
        except orjson.JSONDecodeError:
            return None
        text = event.get("text") if isinstance(event, dict) else None
        return text if isinstance(text, str) else None

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, pattern: str, lines: list[str] | None = None,
                 timeout: float = 10) -> str:
        """The first line matching C{pattern} (of C{lines}, by default the
        output), waiting for it."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines if lines is None else lines):
                if regex.search(line):
                    return line
            time.sleep(0.02)
        raise AssertionError(f"no line matching {pattern!r}:\n{self.log}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10) -> int | None:
        code = stop_process(self.proc, sig, timeout)
        self._reader.join(5)
        return code


def run(twistd_args: list[str], args: list[str], cwd: Path,
        prefix: list[str] | None = None, timeout: float = 30
        ) -> subprocess.CompletedProcess[str]:
    """Run twistd to its end (a server that must not start, or the parent of
    a daemon); its status and output."""
    return subprocess.run(
        [*(prefix or []), *command(twistd_args, args)], cwd=cwd,
        capture_output=True, text=True, timeout=timeout,
    )


def without_net_bind_service() -> list[str]:
    """A command prefix taking away the right to bind ports below 1024 (root
    has it, through CAP_NET_BIND_SERVICE; other users do not)."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv (util-linux) is needed to drop CAP_NET_BIND_SERVICE")
    return [setpriv, "--inh-caps=-net_bind_service",
            "--bounding-set=-net_bind_service"]


def running(pid: int) -> bool:
    """Whether process C{pid} runs (a zombie that no one reaps does not:
    a daemon's parent is whatever reaps orphans here, maybe nothing)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


def wait_gone(pid: int, timeout: float = 10) -> None:
    """Wait until process C{pid} (not a child of ours) has exited."""
    deadline = time.monotonic() + timeout
    while running(pid):
        if time.monotonic() > deadline:
            raise AssertionError(f"process {pid} still running")
        time.sleep(0.02)
