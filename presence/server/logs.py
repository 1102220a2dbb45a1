"""What the server's log lines look like, and where they go.

* L{format_peer}: one spelling of a peer address for every log line
  (``192.0.2.1:5000``, ``[2001:db8::1]:5000``, ``unix:/run/p.sock``).
* L{RefusalLimiter}: one client refused thousands of times a second must not
  write thousands of lines; the first refusal from an address is logged, the
  rest are counted and summed up once per interval.
* L{LogTarget}: the log observer (``--log-format text`` or ``json``) on the
  file twistd would have used, which SIGHUP reopens (after logrotate moved it)
  and SIGUSR1 rotates as twistd does.
"""

from __future__ import annotations

import ipaddress
import sys
from typing import IO, Any

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.interfaces import IAddress, IDelayedCall, IReactorTime
from twisted.logger import (
    FileLogObserver,
    ILogObserver,
    LogEvent,
    Logger,
    eventAsJSON,
    formatEvent,
    textFileLogObserver,
)
from twisted.python.logfile import LogFile

LOG_FORMATS = ("text", "json")


def ipv6_text(host: str) -> str:
    """An IPv6 address in its one short form (C{2001:db8::9}): the kernel
    gives it so, but Twisted's PROXY v2 parser spells out every group
    (C{2001:db8:0:0:0:0:0:9})."""
    try:
        return ipaddress.IPv6Address(host).compressed
    except ValueError:
        return host


def format_peer(address: IAddress | None) -> str:
    """A peer address for a log line: C{host:port} with IPv6 hosts in brackets
    (C{[::1]:5000}), C{unix:PATH} for UNIX sockets (C{unix:} when the peer
    has no name, as UNIX clients usually have not)."""
    if isinstance(address, IPv6Address):
        return f"[{ipv6_text(address.host)}]:{address.port}"
    if isinstance(address, IPv4Address):
        return f"{address.host}:{address.port}"
    if isinstance(address, UNIXAddress):
        name = address.name
        if isinstance(name, bytes):
            name = name.decode("utf-8", "backslashreplace")
        return f"unix:{name or ''}"
    return str(address)


class RefusalLimiter:
    """Rate-limits the log lines about refused connections, per source address.

    The session asks C{limiter.refused(host, reason)} each time it refuses a
    connection and logs its usual line only when that returns True: the first
    time an address is refused in a quiet period.  Later refusals from the
    same address are counted; every C{interval} seconds each address with
    refusals counted gets one summary line::

        192.0.2.1 refused 9186 more times in the last 10 s: Too many connections: ...

    An address stays tracked while it keeps being refused, so a steady attack
    costs one line per interval; after a whole interval without refusals it is
    forgotten, and its next refusal is logged in full again.  At most
    C{max_hosts} addresses are tracked at once (memory stays bounded when
    many addresses are refused); refusals from others are summed up in one
    line for all of them.
    """

    def __init__(
        self,
        clock: IReactorTime,
        interval: float = 10.0,
        max_hosts: int = 10_000,
        log: Logger | None = None,
    ) -> None:
        self.clock = clock
        self.interval = interval
        self.max_hosts = max_hosts
        self.log = log if log is not None else Logger()
        # host -> [refusals not logged since the last summary, last reason]
        self._hosts: dict[str, list[Any]] = {}
        self._others = 0  # refusals of untracked hosts since the last summary
        self._other_hosts: set[str] = set()
        self._other_reason = ""
        self._call: IDelayedCall | None = None

    def __len__(self) -> int:
        """Addresses tracked now."""
        return len(self._hosts)

    def refused(self, host: str, reason: str) -> bool:
        """Count a refusal of C{host}; True when the caller should log it."""
        entry = self._hosts.get(host)
        if entry is not None:
            entry[0] += 1
            entry[1] = reason
            return False
        self._arm()
        if len(self._hosts) >= self.max_hosts:
            self._others += 1
            if len(self._other_hosts) < self.max_hosts:
                self._other_hosts.add(host)
            self._other_reason = reason
            return False
        self._hosts[host] = [0, reason]
        return True

    def flush(self) -> None:
        """Log the summaries now (the timer does it every C{interval})."""
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        self._summarise()

    def _arm(self) -> None:
        if self._call is None:
            self._call = self.clock.callLater(self.interval, self._tick)

    def _tick(self) -> None:
        self._call = None
        self._summarise()
        if self._hosts:
            self._arm()

    def _summarise(self) -> None:
        quiet = []
        for host, entry in self._hosts.items():
            count, reason = entry
            if not count:
                quiet.append(host)
                continue
            entry[0] = 0
            self.log.info(
                "{host} refused {count} more {times} in the last {interval:g} s: "
                "{reason}",
                host=host, count=count, times=_times(count),
                interval=self.interval, reason=reason,
            )
        for host in quiet:
            del self._hosts[host]
        if self._others:
            self.log.info(
                "{count} more refusals from {hosts} other addresses in the last "
                "{interval:g} s: {reason}",
                count=self._others, hosts=_at_least(len(self._other_hosts),
                                                     self.max_hosts),
                interval=self.interval, reason=self._other_reason,
            )
            self._others = 0
            self._other_hosts.clear()


def _at_least(n: int, cap: int) -> str:
    return f"{n} or more" if n >= cap else str(n)


def _times(n: int) -> str:
    return "time" if n == 1 else "times"


# -- where the log goes -------------------------------------------------------


def json_line(event: LogEvent) -> str:
    """One event as one line of JSON: Twisted's own serialisation
    (L{eventAsJSON}, which L{twisted.logger.eventsFromJSONLogFile} reads back)
    plus C{text}, the line the text format would show, and C{level} as a
    plain name, for log collectors."""
    extra = {"text": formatEvent(event)}
    level = event.get("log_level")
    if level is not None:
        extra["level"] = level.name
    return eventAsJSON({**event, **extra}) + "\n"


def observer_for(log_format: str, out: IO[Any]) -> ILogObserver:
    """The observer writing events to C{out} in C{log_format}."""
    if log_format == "json":
        return FileLogObserver(out, json_line)
    if log_format == "text":
        return textFileLogObserver(out)
    raise ValueError(f"unknown log format {log_format!r}")


class LogTarget:
    """The log's destination under twistd, chosen as twistd itself would
    choose it (standard output with ``-n`` and no ``--logfile``; else
    ``--logfile`` or C{twistd.log}, a L{LogFile}), with the observer for
    ``--log-format``.

    C{reopen} (SIGHUP) opens the file again at its path, for logrotate's
    "move, then signal" way; if that fails, logging goes on to the old file
    and the failure is logged.  C{rotate} (SIGUSR1) rotates it as twistd does.
    """

    log = Logger()

    def __init__(self, log_format: str, path: str | None) -> None:
        self.path = path
        self.file: LogFile | None = None
        out: IO[Any]
        if path is None:
            out = sys.stdout
        else:
            self.file = LogFile.fromFullPath(path)
            out = self.file  # type: ignore[assignment]
        self.observer = observer_for(log_format, out)

    @classmethod
    def for_twistd(cls, log_format: str, twistd: Any) -> LogTarget | None:
        """The target for twistd's options, or None when twistd's own choice
        must stand (``--logger``, ``--syslog``, or ``--logfile -`` of a
        daemon, which twistd refuses itself)."""
        if twistd.get("logger") or twistd.get("syslog"):
            return None
        logfile, nodaemon = twistd.get("logfile"), twistd.get("nodaemon")
        if logfile == "-":
            return cls(log_format, None) if nodaemon else None
        if nodaemon and not logfile:
            return cls(log_format, None)
        return cls(log_format, logfile or "twistd.log")

    def reopen(self) -> None:
        if self.file is None:
            return
        try:
            # LogFile.reopen closes first: check that the path can be opened
            # so that a failure leaves the old file in use.
            with open(self.file.path, "ab"):
                pass
            self.file.reopen()
        except OSError as e:
            self.log.error("cannot reopen the log file {path}: {err}",
                           path=self.file.path, err=e)
        else:
            self.log.info("log file {path} reopened", path=self.file.path)

    def rotate(self) -> None:
        if self.file is None:
            self.log.info("SIGUSR1: logging to standard output, nothing to rotate")
            return
        try:
            self.file.rotate()
        except OSError as e:
            self.log.error("cannot rotate the log file {path}: {err}",
                           path=self.file.path, err=e)

