"""Options and makeService: what ``twistd presence`` accepts and builds."""

from __future__ import annotations

from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from presence.server.config import Config
from presence.server.proxied import GatedEndpoint
from presence.server.service import PresenceService
from presence.server.tap import Options, _scheme, makeService, with_backlog


class OptionsTests(SynchronousTestCase):
    def parse(self, *args: str) -> Options:
        options = Options()
        options.parseOptions(list(args))
        return options

    def test_defaults(self) -> None:
        """With no options: tcp:8081 and PROTOCOL.md's defaults."""
        options = self.parse()
        self.assertEqual(options["port"], "tcp:8081")
        self.assertEqual(options.config(), Config(timer_slack=0.25))
        self.assertIsNone(options["secret"])

    def test_port_number(self) -> None:
        """A bare port number means tcp:PORT."""
        self.assertEqual(self.parse("--port", "9000")["port"], "tcp:9000")

    def test_port_endpoint(self) -> None:
        """An endpoint string is taken as it is."""
        self.assertEqual(
            self.parse("--port", "unix:/tmp/p.sock")["port"], "unix:/tmp/p.sock"
        )

    def test_backlog(self) -> None:
        """A listen backlog of 1024 is added unless the endpoint names one."""
        for given, used in (
            ("tcp:8081", "tcp:8081:backlog=1024"),
            ("tcp:8081:interface=::1", "tcp:8081:interface=::1:backlog=1024"),
            ("unix:/tmp/s", "unix:/tmp/s:backlog=1024"),
            ("tcp:8081:backlog=7", "tcp:8081:backlog=7"),
            ("systemd:domain=INET:index=0", "systemd:domain=INET:index=0"),
        ):
            self.assertEqual(with_backlog(given), used)
        self.assertEqual(self.parse("--port", "8081").endpoint_description,
                         "tcp:8081:backlog=1024")

    def test_haproxy_endpoint(self) -> None:
        """Behind ``haproxy:`` the backlog goes on the endpoint inside, a bare
        port means haproxy:tcp:PORT, and the endpoint built is the gated one
        (connected once the PROXY header told the address) around Twisted's,
        with the login timeout and --max-connections."""
        for given, used in (
            ("haproxy:tcp:8081", "haproxy:tcp:8081:backlog=1024"),
            ("haproxy:tcp:8081:backlog=7", "haproxy:tcp:8081:backlog=7"),
            ("haproxy:unix:/tmp/s", "haproxy:unix:/tmp/s:backlog=1024"),
        ):
            self.assertEqual(with_backlog(given), used)
        options = self.parse("--port", "haproxy:8081", "--websocket",
                             "haproxy:tcp:8082:interface=127.0.0.1",
                             "--timeout", "4", "--max-connections", "99")
        self.assertEqual(options["port"], "haproxy:tcp:8081")
        for name, port in (("endpoint", 8081), ("websocket-endpoint", 8082)):
            gated = options[name]
            self.assertIsInstance(gated, GatedEndpoint)
            self.assertEqual((gated.timeout, gated.limit), (4.0, 99))
            inner = gated.endpoint._wrappedEndpoint  # Twisted's PROXY wrapper's
            self.assertEqual((inner._port, inner._backlog), (port, 1024))
        self.assertEqual(_scheme("haproxy:tcp:8081"), "haproxy:tcp")
        self.assertEqual(_scheme("tcp:8081"), "tcp")
        self.assertNotIsInstance(self.parse()["endpoint"], GatedEndpoint)

    def test_bad_endpoint(self) -> None:
        """An endpoint string Twisted cannot use is a usage error naming
        --port, not a traceback at start."""
        for bad in ("nonsense:1", "tcp:x", "tcp:8081:interface=::1",
                    "ssl:8443:privateKey=/nonexistent.pem"):
            with self.assertRaises(usage.UsageError) as e:
                self.parse("--port", bad)
            self.assertIn(f"--port {bad}", str(e.exception))

    def test_all_options(self) -> None:
        """Every option reaches the configuration."""
        options = self.parse(
            "--timeout", "30", "--offline-grace", "2.5", "--visibility", "mutual",
            "--max-line", "4096", "--max-friends", "50", "--max-connections", "99",
            "--max-per-ip", "7", "--max-sessions", "3", "--max-buffer", "2048",
            "--timer-slack", "0.5", "--max-watches", "5000",
        )
        self.assertEqual(options.config(), Config(
            timeout=30, offline_grace=2.5, mutual=True, max_line=4096,
            max_friends=50, max_connections=99, max_per_ip=7, max_sessions=3,
            max_buffer=2048, timer_slack=0.5, max_watches=5000))

    def test_bad_values(self) -> None:
        """Bad values are usage errors, not tracebacks."""
        for args in (("--timeout", "0"), ("--timeout", "x"), ("--offline-grace", "-1"),
                     ("--visibility", "friends"), ("--max-line", "-5"),
                     ("--secret-file", "/nonexistent/secret")):
            self.assertRaises(usage.UsageError, self.parse, *args)

    def test_numbers_refused_with_the_option_named(self) -> None:
        """NaN, infinities, negatives, zero where zero means nothing, and
        non-numbers are refused for every numeric option, naming the option."""
        positive = ["timeout", "max-line", "max-friends", "max-connections",
                    "max-per-ip", "max-sessions", "max-buffer", "max-watches"]
        non_negative = ["offline-grace", "timer-slack"]
        for name in positive + non_negative:
            bad = ["nan", "NaN", "inf", "-inf", "Infinity", "1e999", "-1", "-0.5",
                   "x", "", "1,5"]
            if name in positive:
                bad += ["0", "0.0", "-0"]
            for value in bad:
                with self.assertRaises(usage.UsageError, msg=(name, value)) as e:
                    self.parse(f"--{name}", value)
                self.assertIn(f"--{name}", str(e.exception))

    def test_integers_are_whole(self) -> None:
        """Byte and count limits take whole numbers only."""
        for name in ("max-line", "max-friends", "max-connections", "max-per-ip",
                     "max-sessions", "max-buffer", "max-watches"):
            for value in ("1.5", "1e3"):
                self.assertRaises(usage.UsageError, self.parse, f"--{name}", value)

    def test_log_format(self) -> None:
        """--log-format is text (default) or json."""
        self.assertEqual(self.parse()["log-format"], "text")
        self.assertEqual(self.parse("--log-format", "json")["log-format"], "json")
        with self.assertRaises(usage.UsageError) as e:
            self.parse("--log-format", "xml")
        self.assertIn("--log-format", str(e.exception))

    def test_heartbeat(self) -> None:
        """--heartbeat is app (default) or tcp, and reaches the configuration;
        anything else is refused, naming the option."""
        self.assertEqual(self.parse().config().heartbeat, "app")
        self.assertEqual(self.parse("--heartbeat", "tcp").config().heartbeat, "tcp")
        for value in ("TCP", "none", ""):
            with self.assertRaises(usage.UsageError) as e:
                self.parse("--heartbeat", value)
            self.assertIn("--heartbeat", str(e.exception))

    def test_zero_where_it_means_something(self) -> None:
        """0 is a valid --offline-grace (none) and --timer-slack (exact timers)."""
        options = self.parse("--offline-grace", "0", "--timer-slack", "0")
        self.assertEqual(options.config().offline_grace, 0)
        self.assertEqual(options.config().timer_slack, 0)

    def test_secret_file(self) -> None:
        """--secret-file reads the secret, surrounding whitespace stripped."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("  s3cret \n")
        self.assertEqual(self.parse("--secret-file", path)["secret"], b"s3cret")

    def test_empty_secret_file(self) -> None:
        """An empty secret file is refused."""
        path = self.mktemp()
        open(path, "w").close()
        self.assertRaises(usage.UsageError, self.parse, "--secret-file", path)


class MakeServiceTests(SynchronousTestCase):
    def test_service(self) -> None:
        """makeService builds a PresenceService with the options' configuration."""
        options = Options()
        options.parseOptions(["--port", "tcp:0", "--timeout", "20",
                              "--max-connections", "10"])
        service = makeService(options)
        assert isinstance(service, PresenceService)
        self.assertEqual(service.factory.server.config.timeout, 20)
        self.assertEqual(service.factory.server.config.max_connections, 10)
        self.assertIsNone(service.factory.server.verifier)

    def test_secret(self) -> None:
        """With a secret, the factory verifies tokens."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("k")
        options = Options()
        options.parseOptions(["--secret-file", path])
        service = makeService(options)
        assert isinstance(service, PresenceService)
        self.assertIsNotNone(service.factory.server.verifier)
