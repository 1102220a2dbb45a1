"""Removing twistd's pidfile when the server has given up root.

twistd writes the pidfile as root, then switches to ``--uid``/``--gid``; at
exit the unprivileged process may not remove the file (that needs write
access to its directory, usually root's ``/run``), and twistd only logs "No
permission to delete pid file".  A stale pidfile then stops the next start
if its number was reused.

L{remove_when_gone} keeps that one right at root: before privileges are shed
it forks a helper that does nothing but wait on a pipe.  The pipe closes when
the server exits, however it exits (SIGKILL included); the helper then
removes the pidfile if it still names the server, and exits.  It ignores
SIGTERM, SIGINT and SIGHUP (a supervisor signalling the whole group must not
stop it before its one job), holds no other descriptor, and uses no CPU.
"""

from __future__ import annotations

import os
import signal
from typing import Any

from twisted.application.service import Service
from twisted.logger import Logger


def remove_when_gone(pidfile: str) -> int:
    """Fork the helper for C{pidfile} (absolute or relative to the current
    directory); return its process id."""
    path = os.path.abspath(pidfile)
    server = os.getpid()
    read_end, write_end = os.pipe()
    child = os.fork()
    if child:
        os.close(read_end)
        # Kept open (and not inherited) for as long as the server lives.
        os.set_inheritable(write_end, False)
        return child
    try:  # pragma: no cover (runs in the forked helper)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP,
                       signal.SIGUSR1):
            signal.signal(signum, signal.SIG_IGN)
        os.setsid()
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.closerange(3, read_end)
        os.closerange(read_end + 1, 65536)
        while True:
            try:
                if not os.read(read_end, 1):
                    break
            except InterruptedError:
                continue
        try:
            with open(path) as f:
                named = f.read().strip()
            if named == str(server):
                os.unlink(path)
        except OSError:
            pass
    finally:
        os._exit(0)


class PidfileKeeper(Service):
    """Starts L{remove_when_gone} under twistd when it will shed root.

    C{twistd} is twistd's own options (the plugin options' C{parent}): it
    has written C{pidfile} by the time C{privilegedStartService} runs, and
    switches to C{uid}/C{gid} right after.  Once the helper has the job,
    twistd is told there is no pidfile, so that it does not warn that it
    cannot remove it.
    """

    log = Logger()

    def __init__(self, twistd: Any) -> None:
        self.twistd = twistd
        self.helper: int | None = None

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        twistd = self.twistd
        pidfile = twistd.get("pidfile")
        sheds = twistd.get("uid") is not None or twistd.get("gid") is not None
        if pidfile and sheds and os.geteuid() == 0:
            self.helper = remove_when_gone(pidfile)
            twistd["pidfile"] = ""
            self.log.info("pidfile {path} will be removed at exit by process "
                          "{pid}", path=pidfile, pid=self.helper)
