"""``presence-token``: mint a login token with the server's secret.

A development tool and a reference for backends: the token it prints is what
a backend hands a client after its own authentication, for the client to put
in its login's C{token} field.

    presence-token --secret-file /etc/presence/secret --user 1 \\
        --friends 2,3 --ttl 3600
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from presence import wire
from presence.wire.tokens import make_token, read_secret

EXIT_USAGE = 2


def _user_id(text: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a user id: {text!r}") from None
    if not wire.is_user_id(value):
        raise argparse.ArgumentTypeError(
            f"not a user id: {text!r} (1 .. {wire.MAX_USER_ID})"
        )
    return value


def _friends(text: str) -> list[int]:
    items = [item.strip() for item in text.split(",")]
    if items == [""]:
        return []  # --friends "" : a token that lets the session watch nobody
    return [_user_id(item) for item in items]


def _ttl(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"--ttl must be positive: {text!r}")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="presence-token",
        description="Print a login token (an HS256 JWT) for a presence server "
        "started with the same --secret-file.",
    )
    p.add_argument("--secret-file", required=True, metavar="PATH",
                   help="the server's secret file")
    p.add_argument("--user", required=True, type=_user_id, metavar="ID",
                   help="the user id the token logs in as (its 'sub')")
    p.add_argument("--friends", type=_friends, default=None, metavar="ID,ID,...",
                   help="a 'friends' claim: the session may watch only these ids")
    p.add_argument("--ttl", type=_ttl, default=None, metavar="SECONDS",
                   help="lifetime; sets 'exp' (default: a token that never expires)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        secret = read_secret(args.secret_file)
    except (OSError, ValueError) as e:
        print(f"presence-token: --secret-file: {e}", file=sys.stderr)
        return EXIT_USAGE
    if args.friends is not None and args.user in args.friends:
        print("presence-token: --friends must not hold --user", file=sys.stderr)
        return EXIT_USAGE
    print(make_token(secret, args.user, friends=args.friends, ttl=args.ttl))
    return 0


if __name__ == "__main__":
    sys.exit(main())
