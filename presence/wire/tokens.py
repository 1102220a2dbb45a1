"""Login tokens: HS256 JWTs whose C{sub} is the user id (PyJWT does the work).

Whatever a client puts in C{token}, L{TokenVerifier.verify} answers with the
claim or with L{ProtocolError} 10; nothing else escapes it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import jwt

from presence import wire
from presence.wire.errors import ErrorCode, ProtocolError

ALGORITHM = "HS256"
LEEWAY = 60  # seconds of clock skew tolerated on "exp"
# RFC 7518 3.2: an HS256 key should hold at least 256 bits.
MIN_SECRET = 32


def read_secrets(path: str | Path) -> list[bytes]:
    """The secrets in a secret file: one per line, surrounding whitespace and
    blank lines ignored.  Several secrets allow rotation without a restart
    (PROTOCOL.md "Tokens"): a token signed with any of them is accepted."""
    secrets = [line.strip() for line in Path(path).read_bytes().splitlines()]
    secrets = [s for s in secrets if s]
    if not secrets:
        raise ValueError(f"secret file {path} is empty")
    return secrets


def read_secret(path: str | Path) -> bytes:
    """The first secret of a secret file (see L{read_secrets})."""
    return read_secrets(path)[0]


def weakness(secret: bytes) -> str:
    """Why C{secret} is too weak for HS256, or "" (the server logs it)."""
    if len(secret) < MIN_SECRET:
        return (
            f"the token secret is {len(secret)} bytes long: use at least "
            f"{MIN_SECRET} random bytes (e.g. openssl rand -hex 32)"
        )
    return ""


class TokenVerifier:
    """Checks a login's token against the server's secrets (any one of them).

    L{replace} swaps the secrets in place (the server does it on SIGHUP): the
    next login is checked against the new ones, sessions already logged in
    are not affected.
    """

    def __init__(self, secret: bytes | Sequence[bytes]) -> None:
        self._secrets: tuple[bytes, ...] = ()
        self.replace(secret)

    @property
    def secrets(self) -> tuple[bytes, ...]:
        return self._secrets

    def replace(self, secret: bytes | Sequence[bytes]) -> None:
        secrets = (secret,) if isinstance(secret, bytes) else tuple(secret)
        if not secrets or not all(secrets):
            raise ValueError("the token secret is empty")
        self._secrets = secrets

    def verify(self, token: object, uid: int) -> frozenset[int] | None:
        """Return the C{friends} claim (None when absent); raise error 10."""
        if type(token) is not str or not token:
            raise ProtocolError(ErrorCode.AUTHENTICATION_FAILED, "token required")
        try:
            claims = self._decode(token)
        except jwt.ExpiredSignatureError:
            raise ProtocolError(
                ErrorCode.AUTHENTICATION_FAILED, "token expired"
            ) from None
        except jwt.InvalidTokenError as e:
            raise ProtocolError(
                ErrorCode.AUTHENTICATION_FAILED, f"invalid token ({type(e).__name__})"
            ) from None
        except Exception as e:
            # PyJWT is meant to raise only InvalidTokenError; should some odd
            # token slip past that, it is still just a refused token.
            raise ProtocolError(
                ErrorCode.AUTHENTICATION_FAILED, f"invalid token ({type(e).__name__})"
            ) from None
        sub = claims.get("sub")
        if type(sub) is not str or sub != str(uid):
            raise ProtocolError(
                ErrorCode.AUTHENTICATION_FAILED, "token is for another user"
            )
        friends = claims.get("friends")
        if friends is None:
            return None
        if type(friends) is not list or not all(wire.is_user_id(f) for f in friends):
            raise ProtocolError(
                ErrorCode.AUTHENTICATION_FAILED, "friends claim is not a list of ids"
            )
        return frozenset(friends)

    def _decode(self, token: str) -> dict[str, object]:
        # The signature is checked before the claims: a token that fails on
        # its signature is tried with the next secret; any other refusal
        # (malformed, expired, ...) is final.
        *others, last = self._secrets
        for secret in others:
            try:
                return self._decode_with(token, secret)
            except jwt.InvalidSignatureError:
                continue
        return self._decode_with(token, last)

    @staticmethod
    def _decode_with(token: str, secret: bytes) -> dict[str, object]:
        claims: dict[str, object] = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],
            leeway=LEEWAY,
            options={"require": ["sub"]},
        )
        return claims


def make_token(
    secret: bytes,
    uid: int,
    friends: list[int] | None = None,
    ttl: float | None = None,
    now: float | None = None,
) -> str:
    """A token for C{uid}, for development tools and as a reference for backends."""
    claims: dict[str, object] = {"sub": str(uid)}
    issued = time.time() if now is None else now
    claims["iat"] = int(issued)
    if ttl is not None:
        claims["exp"] = int(issued + ttl)
    if friends is not None:
        claims["friends"] = sorted(set(friends))
    return jwt.encode(claims, secret, algorithm=ALGORITHM)
