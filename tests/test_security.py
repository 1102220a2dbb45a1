"""End to end: a server started with --secret-file demands tokens."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from conftest import ServerProcess, StartServer, script, twistd
from sockets import LineSocket

from presence.wire.tokens import make_token

SECRET = b"e2e-secret-" + b"7" * 40


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "secret"
    # Surrounding whitespace is not part of the secret.
    path.write_bytes(b"\n" + SECRET + b"\n")
    return path


@pytest.fixture
def secure(start_server: StartServer, secret_file: Path) -> ServerProcess:
    return start_server("--secret-file", str(secret_file))


def token_cli(secret_file: Path, *args: str) -> str:
    """A token printed by the presence-token console script."""
    out = subprocess.run(
        [script("presence-token"), "--secret-file", str(secret_file), *args],
        check=True, capture_output=True, text=True, timeout=30,
    )
    return out.stdout.strip()


def test_good_token(secure: ServerProcess, secret_file: Path) -> None:
    """A token from presence-token logs its user in; friends see it online."""
    with LineSocket(secure.host, secure.port) as two, \
            LineSocket(secure.host, secure.port) as one:
        two.login(2, [1], token=token_cli(secret_file, "--user", "2"))
        welcome = one.login(1, [2], token=token_cli(secret_file, "--user", "1",
                                                     "--ttl", "600"))
        assert welcome["user_id"] == 1
        assert one.presence()["user_id"] == 2
        event = two.presence()
        assert (event["user_id"], event["online"]) == (1, True)


@pytest.mark.parametrize(
    "token",
    [
        None,
        "",
        "not-a-jwt",
        make_token(b"another-secret-" + b"x" * 40, 1),
        make_token(SECRET, 2),
        make_token(SECRET, 1, ttl=1, now=0),
    ],
    ids=["missing", "empty", "garbage", "wrong-secret", "other-user", "expired"],
)
def test_bad_token(secure: ServerProcess, token: str | None) -> None:
    """A bad token gets error 10, the connection is closed, and the user's
    watchers are told nothing."""
    with LineSocket(secure.host, secure.port) as watcher, \
            LineSocket(secure.host, secure.port) as intruder:
        watcher.login(9, [1], token=make_token(SECRET, 9))
        fields = {} if token is None else {"token": token}
        intruder.send({"user_id": 1, "friends": [9], **fields})
        error = intruder.expect_error(10)
        assert error["msg"].startswith("Authentication failed")
        # Nothing about user 1 came before the pong.
        assert watcher.roundtrip() == []
    secure.wait_for_log(r"refused: Authentication failed")


def test_friends_claim_limits_visibility(
    secure: ServerProcess, secret_file: Path
) -> None:
    """A token's friends claim limits whom the session sees, whatever it lists."""
    with LineSocket(secure.host, secure.port) as two, \
            LineSocket(secure.host, secure.port) as three, \
            LineSocket(secure.host, secure.port) as one:
        two.login(2, token=make_token(SECRET, 2))
        three.login(3, token=make_token(SECRET, 3))
        one.login(1, [2, 3], token=token_cli(secret_file, "--user", "1",
                                             "--friends", "2"))
        assert one.presence()["user_id"] == 2
        three.send({"type": "status", "status": "busy", "text": "secret meeting"})
        three.roundtrip()
        two.send({"type": "status", "status": "away"})
        event = one.presence()
        assert (event["user_id"], event["status"]) == (2, "away")
        # Asking to watch 3 again is silently narrowed by the claim.
        one.send({"type": "friends", "add": [3]})
        assert one.roundtrip() == []
        three.send({"type": "bye"})
        three.expect_closed()
        assert one.roundtrip() == []


def test_no_secret_warns(start_server: StartServer) -> None:
    """Without --secret-file, the server says that user ids are not checked."""
    server = start_server()
    server.wait_for_log(r"NOT authenticated")


def test_empty_secret_file_refused(tmp_path: Path) -> None:
    """An empty secret file is a usage error: the server does not start open."""
    empty = tmp_path / "empty"
    empty.write_bytes(b"  \n")
    result = subprocess.run(
        [twistd(), "-n", "--pidfile=", "presence", "--port",
         "tcp:0:interface=127.0.0.1", "--secret-file", str(empty)],
        capture_output=True, text=True, timeout=30,
    )
    assert result.returncode != 0
    assert "secret-file" in result.stdout + result.stderr


def test_cli_with_token(secure: ServerProcess, secret_file: Path) -> None:
    """presence-client logs in with a presence-token token, and exits with
    code 10 when the token is refused."""
    exe = script("presence-client")
    server = f"tcp:{secure.host}:{secure.port}"
    good = subprocess.run(
        [exe, "--server", server, "--user", "1", "--for", "0.5", "--json",
         "--token", token_cli(secret_file, "--user", "1")],
        capture_output=True, text=True, timeout=60,
    )
    assert good.returncode == 0, good.stderr
    assert '"welcome"' in good.stdout
    bad = subprocess.run(
        [exe, "--server", server, "--user", "1", "--for", "5",
         "--token", token_cli(secret_file, "--user", "2")],
        capture_output=True, text=True, timeout=60,
    )
    assert bad.returncode == 10, (bad.stdout, bad.stderr)
    assert "Authentication failed" in bad.stderr
