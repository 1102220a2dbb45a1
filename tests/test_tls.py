"""End to end: the server on a TLS endpoint, certificates made in the test."""

from __future__ import annotations

import datetime
import ipaddress
import json
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import ServerProcess, StartServer, script
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from sockets import LineSocket


@dataclass
class Pki:
    """The files of a test PKI: a CA, an unrelated CA, and a server key and
    certificate that the first CA signs (PEM)."""

    ca: Path
    other_ca: Path
    key: Path
    cert: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _ca(cn: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True,
                content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A CA, a server certificate it signs for localhost and 127.0.0.1, and an
    unrelated CA."""
    d = tmp_path_factory.mktemp("pki")
    ca_key, ca_cert = _ca("presence test CA")
    _, other_cert = _ca("some other CA")
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([
                x509.DNSName("localhost"),
                x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            ]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None),
                       critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                       critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pki = Pki(d / "ca.pem", d / "other-ca.pem", d / "server.key", d / "server.pem")
    pki.ca.write_bytes(_pem(ca_cert))
    pki.other_ca.write_bytes(_pem(other_cert))
    pki.key.write_bytes(key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ))
    pki.cert.write_bytes(_pem(cert))
    return pki


@pytest.fixture
def tls_server(start_server: StartServer, pki: Pki) -> ServerProcess:
    return start_server(
        "--port",
        f"ssl:0:privateKey={pki.key}:certKey={pki.cert}:interface=127.0.0.1",
    )


def context(ca: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def test_listening_address(tls_server: ServerProcess) -> None:
    """The server reports its TLS address as ssl:HOST:PORT."""
    tls_server.wait_for_log(r"presence listening on ssl:127\.0\.0\.1:\d+")


@pytest.mark.parametrize("name", ["127.0.0.1", "localhost"])
def test_login_over_tls(tls_server: ServerProcess, pki: Pki, name: str) -> None:
    """A client verifying the certificate against the CA (by IP address or by
    host name) logs in and sees its friend."""
    ctx = context(pki.ca)
    with LineSocket(tls_server.host, tls_server.port, tls=ctx,
                    server_hostname=name) as two, \
            LineSocket(tls_server.host, tls_server.port, tls=ctx,
                       server_hostname=name) as one:
        assert isinstance(one.sock, ssl.SSLSocket)
        assert one.sock.version() in ("TLSv1.2", "TLSv1.3")
        two.login(2, [1])
        assert one.login(1, [2]) == {"type": "welcome", "user_id": 1, "timeout": 15}
        assert one.presence()["user_id"] == 2
        assert two.presence()["user_id"] == 1


def test_wrong_ca_fails(tls_server: ServerProcess, pki: Pki) -> None:
    """A client that trusts another CA refuses the server's certificate."""
    with pytest.raises(ssl.SSLCertVerificationError):
        LineSocket(tls_server.host, tls_server.port, tls=context(pki.other_ca))


def test_wrong_name_fails(tls_server: ServerProcess, pki: Pki) -> None:
    """The certificate is for localhost/127.0.0.1 only: another name fails."""
    with pytest.raises(ssl.SSLCertVerificationError):
        LineSocket(tls_server.host, tls_server.port, tls=context(pki.ca),
                   server_hostname="presence.example.com")


def test_plaintext_client_gets_nothing(tls_server: ServerProcess, pki: Pki) -> None:
    """A client speaking plain JSON to the TLS port is not logged in, and the
    server goes on serving TLS clients."""
    with LineSocket(tls_server.host, tls_server.port, timeout=5) as plain:
        plain.send({"user_id": 1, "friends": [2]})
        try:
            data = plain.sock.recv(4096)
        except (ConnectionResetError, TimeoutError):
            data = b""
        assert b"welcome" not in data
    with LineSocket(tls_server.host, tls_server.port, tls=context(pki.ca)) as good:
        good.login(3)
    assert not any("user 1 joins" in line for line in tls_server.lines)


def presence_client(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([script("presence-client"), *args],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_cli_right_ca(tls_server: ServerProcess, pki: Pki, host: str) -> None:
    """presence-client --ca-file with the server's CA logs in over TLS."""
    result = presence_client(
        "--server", f"ssl:{host}:{tls_server.port}", "--ca-file", str(pki.ca),
        "--user", "1", "--friends", "2", "--for", "0.5", "--json",
    )
    assert result.returncode == 0, result.stderr
    first = json.loads(result.stdout.splitlines()[0])
    assert first == {"type": "welcome", "user_id": 1, "timeout": 15}


def test_cli_wrong_ca(tls_server: ServerProcess, pki: Pki) -> None:
    """presence-client --ca-file with another CA fails clearly: exit 8, a
    message naming the certificate problem, and no login on the server."""
    result = presence_client(
        "--server", f"ssl:127.0.0.1:{tls_server.port}", "--ca-file",
        str(pki.other_ca), "--user", "1", "--for", "0.5",
    )
    assert result.returncode == 8, (result.stdout, result.stderr)
    assert result.stdout == ""
    assert "Server Connection Error" in result.stderr
    assert "certificate verify failed" in result.stderr
    assert not any("user 1 joins" in line for line in tls_server.lines)


def test_slow_consumer_over_tls(start_server: StartServer, pki: Pki) -> None:
    """A TLS client that stops reading is cut off at --max-buffer like a plain
    one: its user goes offline for its watchers, who keep every event."""
    server = start_server(
        "--port",
        f"ssl:0:privateKey={pki.key}:certKey={pki.cert}:interface=127.0.0.1",
        "--max-buffer", "65536",
    )
    ctx = context(pki.ca)
    with LineSocket(server.host, server.port, tls=ctx) as talker, \
            LineSocket(server.host, server.port, tls=ctx, rcvbuf=4096) as slow, \
            LineSocket(server.host, server.port, tls=ctx) as watcher:
        talker.login(100)
        slow.login(1, [100])
        assert slow.presence()["user_id"] == 100
        watcher.login(2, [100, 1])
        assert {watcher.presence()["user_id"] for _ in range(2)} == {1, 100}
        sent, offline = 0, None
        while offline is None and sent < 60_000:
            talker.send(*({"type": "status", "status": "away",
                           "text": f"{sent + k:08d}" + "y" * 248}
                          for k in range(200)))
            expected = sent
            sent += 200
            while expected < sent:
                event = watcher.presence()
                if event["user_id"] == 1:
                    assert event["online"] is False
                    offline = event
                    continue
                assert event["text"].startswith(f"{expected:08d}")
                expected += 1
        assert offline is not None, "the slow TLS client was never cut off"
        server.wait_for_log(r"user 1 exits: slow consumer")
        slow.expect_closed(timeout=30)
