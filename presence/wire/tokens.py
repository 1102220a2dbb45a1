"""Login tokens: HS256 JWTs whose C{sub} is the user id (PyJWT does the work).

Whatever a client puts in C{token}, L{TokenVerifier.verify} answers with the
claim or with L{ProtocolError} 10; nothing else escapes it.
"""

from __future__ import annotations

import time
from pathlib import Path

import jwt

from presence import wire
from presence.wire.errors import ErrorCode, ProtocolError

ALGORITHM = "HS256"
LEEWAY = 60  # seconds of clock skew tolerated on "exp"
# RFC 7518 3.2: an HS256 key should hold at least 256 bits.
MIN_SECRET = 32


def read_secret(path: str | Path) -> bytes:
    secret = Path(path).read_bytes().strip()
    if not secret:
        raise ValueError(f"secret file {path} is empty")
    return secret


def weakness(secret: bytes) -> str:
    """Why C{secret} is too weak for HS256, or "" (the server logs it)."""
    if len(secret) < MIN_SECRET:
        return (
            f"the token secret is {len(secret)} bytes long: use at least "
            f"{MIN_SECRET} random bytes (e.g. openssl rand -hex 32)"
        )
    return ""


class TokenVerifier:
    """Checks a login's token against the server's secret."""

    def __init__(self, secret: bytes) -> None:
        if not secret:
            raise ValueError("the token secret is empty")
        self._secret = secret

    def verify(self, token: object, uid: int) -> frozenset[int] | None:
        """Return the C{friends} claim (None when absent); raise error 10."""
        if type(token) is not str or not token:
            raise ProtocolError(ErrorCode.AUTHENTICATION_FAILED, "token required")
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[ALGORITHM],
                leeway=LEEWAY,
                options={"require": ["sub"]},
            )
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
