"""``python -m comet.token ID [ID...] --ttl 3600``: mint a subscriber token, print it.

For tests, operations and the demo page: a token the server accepts, made
from the same settings it reads. With an HS256 secret (``COMET_TOKEN_SECRET``
or ``--token-secret-file``, as the server takes them) it signs with that;
for a server that verifies with a public key (RS256/ES256) it needs the
private key (``--private-key PATH``, PEM), whose type picks the algorithm as
the public key's does on the server. ``--audience`` and ``--issuer`` default
to ``COMET_TOKEN_AUDIENCE`` and ``COMET_TOKEN_ISSUER``; ``--kid`` names the
key of a JWKS. The first id is ``sub``; with several, the claim ``ids`` lists
them all. The token goes to stdout and nowhere else; problems are one line on
stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
import time

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from comet import config, tokens
from comet.inputs import ID_PATTERN


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m comet.token",
        description="Mint a subscriber token for comet's --token-* settings.",
        epilog="The HS256 secret comes from COMET_TOKEN_SECRET or --token-secret-file "
               "(never from the command line); RS/ES tokens need --private-key.")
    parser.add_argument("ids", nargs="+", metavar="ID",
                        help="ids the token covers: the first is sub, all are listed in ids")
    parser.add_argument("--ttl", type=float, default=3600.0,
                        help="seconds until the token expires (default: 3600)")
    parser.add_argument("--token-secret-file", help="file holding the HS256 secret")
    parser.add_argument("--private-key", help="PEM private key (RSA: RS256, EC: ES256/384/512)")
    parser.add_argument("--kid", help="key id to put in the header (a JWKS key's kid)")
    parser.add_argument("--audience", help="aud claim (default: COMET_TOKEN_AUDIENCE)")
    parser.add_argument("--issuer", help="iss claim (default: COMET_TOKEN_ISSUER)")
    return parser


def signing_key(args: argparse.Namespace, settings: config.Settings) -> tuple[object, str]:
    """The key to sign with and its algorithm; TokenSettingsError says what is missing."""
    if args.private_key:
        return private_key_from_pem(args.private_key)
    secret = tokens.hs256_secret(settings)
    if secret is None:
        raise tokens.TokenSettingsError(
            "no key to sign with: set COMET_TOKEN_SECRET or give --token-secret-file "
            "(HS256), or --private-key PATH (RS256/ES256)")
    return secret, "HS256"


def private_key_from_pem(path: str) -> tuple[object, str]:
    try:
        with open(path, "rb") as file:
            key = load_pem_private_key(file.read(), password=None)
    except OSError as exc:
        raise tokens.TokenSettingsError(f"--private-key: cannot read {path}: "
                                        f"{exc.strerror}") from None
    except (ValueError, TypeError) as exc:
        raise tokens.TokenSettingsError(f"--private-key {path}: not an unencrypted PEM "
                                        f"private key ({exc.__class__.__name__})") from None
    if isinstance(key, rsa.RSAPrivateKey):
        return key, "RS256"
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name in tokens.EC_ALGORITHMS:
        return key, tokens.EC_ALGORITHMS[key.curve.name]
    raise tokens.TokenSettingsError(f"--private-key {path}: an RSA or EC (P-256, P-384, "
                                    f"P-521) key is needed, not {type(key).__name__}")


def mint(ids: list[str], key, algorithm: str, ttl: float, audience: str | None = None,
         issuer: str | None = None, kid: str | None = None, now: float | None = None) -> str:
    """A token covering ``ids`` for ``ttl`` seconds from ``now``."""
    issued = int(time.time() if now is None else now)
    claims: dict = {"sub": ids[0], "iat": issued, "exp": issued + max(1, round(ttl))}
    if len(ids) > 1:
        claims["ids"] = list(ids)
    if audience:
        claims["aud"] = audience
    if issuer:
        claims["iss"] = issuer
    return jwt.encode(claims, key, algorithm=algorithm, headers={"kid": kid} if kid else None)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    bad = [id for id in args.ids if not ID_PATTERN.fullmatch(id)]
    if bad:
        parser.error(f"bad id {bad[0][:40]!r}: 1 to 128 of A-Z a-z 0-9 _ . : -")
    if not args.ttl > 0:
        parser.error("--ttl must be a positive number of seconds")
    try:
        environment = config.from_environment()
        if args.token_secret_file:
            environment["token_secret_file"] = args.token_secret_file
            environment.pop("token_secret", None)  # the flag given here wins
        settings = config.Settings(**environment)
        key, algorithm = signing_key(args, settings)
    except tokens.TokenSettingsError as exc:
        parser.error(str(exc))
    print(mint(list(dict.fromkeys(args.ids)), key, algorithm, args.ttl,
               audience=args.audience or settings.token_audience,
               issuer=args.issuer or settings.token_issuer, kid=args.kid))
    return 0


if __name__ == "__main__":
    sys.exit(main())
