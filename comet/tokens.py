"""Who may listen: subscriber tokens (JWTs that PyJWT verifies), where they come from.

With no token setting subscribing is open, as before. With one of
``COMET_TOKEN_SECRET`` / ``--token-secret-file`` (HS256), ``--token-public-key``
(a PEM public key: RS256 for RSA, ES256/384/512 for an EC key) or
``--token-jwks`` (a JWKS file: the token's ``kid`` picks the key), a subscriber
must bring a JWT:

* from ``Authorization: Bearer <jwt>``, the ``?token=`` query parameter (an
  EventSource cannot set headers) or the ``comet_token`` cookie, in that order
  (:func:`token_of`);
* signed with the configured key by the one algorithm that key implies: the
  algorithm is pinned by the server's key, never read from the token, so
  ``alg: none`` and an HS256 token "signed" with an RSA public key's PEM are
  refused like any bad signature;
* with ``exp`` (required; ``exp`` and ``nbf`` get ``--token-leeway`` of clock
  skew), and ``aud``/``iss`` as configured;
* covering every id the request logs in as: ``sub`` is one id, a claim ``ids``
  (a list of strings) lists more (:meth:`TokenVerifier.covers`).

:meth:`TokenVerifier.verify` raises :class:`TokenRefused` with a short fixed
reason (``"expired"``, ``"bad signature"``...) that the app answers as a 401
and ``/stats`` counts; nothing of the token is ever in a reason, so none can
reach a log line. :func:`redacted` strips ``token=`` values out of a request
line for the access log.

Bad token settings (two keys, an unreadable or malformed key file, a short
secret) are a :class:`TokenSettingsError` at start. Nothing here knows the
router, a transport or a connection's life.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import parse_qs, unquote_plus

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from jwt.exceptions import InvalidSubjectError

from comet import config

#: the cookie a page may set instead of a header or a query parameter
COOKIE = "comet_token"

#: the query parameter that carries a token (EventSource cannot set headers)
QUERY_PARAMETER = "token"

#: RFC 7518 3.2: an HS256 key must be at least as long as the hash (256 bits)
MIN_SECRET_BYTES = 32

#: the algorithm each EC curve signs with (RFC 7518 3.4)
EC_ALGORITHMS = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}

#: the settings that each give the key tokens are verified with: at most one may be set
KEY_SETTINGS = ("token_secret", "token_secret_file", "token_public_key", "token_jwks")

#: what a token must carry, whatever else is configured
REQUIRED_CLAIMS = ["exp"]

#: the reason given (and counted) for a request that brings no token
MISSING = "missing token"

#: the reason given (and counted) for a valid token that does not cover an id asked for
NOT_COVERED = "id not covered"

#: a query parameter in a request line: its name, and its value up to the next one or a blank
_PARAMETER = re.compile(r"(?<=[?&;])([^=&;\s?]+)=([^&;\s]*)")


class TokenSettingsError(ValueError):
    """The token settings cannot be used: said once at start, the server does not run."""


class TokenRefused(Exception):
    """A subscriber's token is missing or invalid; ``reason`` is short, fixed, token-free."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


#: PyJWT's refusals, most specific first, as the reasons clients and /stats see
_REASONS: tuple[tuple[type[Exception], str], ...] = (
    (jwt.ExpiredSignatureError, "expired"),
    (jwt.ImmatureSignatureError, "not yet valid"),
    (jwt.InvalidAudienceError, "wrong audience"),
    (jwt.InvalidIssuerError, "wrong issuer"),
    (jwt.MissingRequiredClaimError, "missing a required claim"),
    (jwt.InvalidAlgorithmError, "algorithm not allowed"),
    (jwt.InvalidSignatureError, "bad signature"),
    (InvalidSubjectError, "bad sub claim"),
    (jwt.DecodeError, "malformed token"),
    (jwt.InvalidTokenError, "invalid token"),
)


class TokenVerifier:
    """Verifies subscriber tokens against one configured key (or key set)."""

    def __init__(self, keys: Mapping[str | None, tuple[Any, str]], *, describe: str,
                 audience: str | None = None, issuer: str | None = None,
                 leeway: float = 30.0) -> None:
        #: kid -> (key, the one algorithm it verifies); key None: the only key, any kid
        self._keys = dict(keys)
        #: what the server logs at start: the kind of key, never the key
        self.describe = describe
        self.audience = audience
        self.issuer = issuer
        self.leeway = leeway

    def verify(self, token: str | None) -> dict:
        """The token's claims, or :class:`TokenRefused` saying why not."""
        if not token:
            raise TokenRefused(MISSING)
        key, algorithm = self._key_for(token)
        try:
            claims = jwt.decode(token, key, algorithms=[algorithm], audience=self.audience,
                                issuer=self.issuer, leeway=self.leeway,
                                options={"require": REQUIRED_CLAIMS})
        except jwt.InvalidTokenError as exc:
            raise TokenRefused(_reason(exc)) from None
        except (ValueError, TypeError, OverflowError):  # a claim PyJWT could not read
            raise TokenRefused("malformed token") from None
        if not _is_list_of_text(claims.get("ids", [])):
            raise TokenRefused("bad ids claim")
        if not isinstance(claims["exp"], int | float) or isinstance(claims["exp"], bool):
            raise TokenRefused("malformed token")
        return claims

    def _key_for(self, token: str) -> tuple[Any, str]:
        """The key and algorithm the token's ``kid`` names (the only one, without a set)."""
        if None in self._keys:
            return self._keys[None]
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.InvalidTokenError:
            raise TokenRefused("malformed token") from None
        found = self._keys.get(kid) if isinstance(kid, str) else None
        if found is None:
            raise TokenRefused("unknown key")
        return found

    @staticmethod
    def covers(claims: Mapping[str, Any], ids: Iterable[str]) -> bool:
        """Does the token let its bearer log in as every one of ``ids``?"""
        allowed = set(claims.get("ids", ()))
        if isinstance(claims.get("sub"), str):
            allowed.add(claims["sub"])
        return all(id in allowed for id in ids)

    def expires_at(self, claims: Mapping[str, Any]) -> float:
        """When a connection opened with this token must end (epoch seconds): the
        moment the token itself would no longer be accepted."""
        return float(claims["exp"]) + self.leeway


def _reason(exc: Exception) -> str:
    return next(reason for kind, reason in _REASONS if isinstance(exc, kind))


def _is_list_of_text(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


# -- where a token comes from ------------------------------------------------------------

def token_of(environ: Mapping[str, str]) -> str | None:
    """The token a request brings: the ``Authorization: Bearer`` header, else ``?token=``,
    else the ``comet_token`` cookie; None when there is none."""
    scheme, _, value = environ.get("HTTP_AUTHORIZATION", "").strip().partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    given = parse_qs(environ.get("QUERY_STRING", "")).get(QUERY_PARAMETER)
    if given:
        return given[0]
    for pair in environ.get("HTTP_COOKIE", "").split(";"):
        name, _, value = pair.strip().partition("=")
        if name == COOKIE and value:
            return value.strip('"')
    return None


def redacted(text: str) -> str:
    """``text`` (a request line) with the value of every ``token`` parameter hidden,
    however its name is spelled (``%74oken`` is ``token`` to the query parser)."""
    return _PARAMETER.sub(_hide_token, text)


def _hide_token(match: re.Match) -> str:
    name = match.group(1)
    if unquote_plus(name).lower() != QUERY_PARAMETER:
        return match.group(0)
    return f"{name}=[redacted]"


# -- the settings ----------------------------------------------------------------------

@functools.cache
def verifier_for(settings) -> TokenVerifier | None:
    """The verifier the settings ask for, or None: subscribing open to anyone.

    Cached per settings object, so that the check at start and every app made
    from the same settings (a forked worker's included) read the key files once.
    """
    given = [name for name in KEY_SETTINGS if getattr(settings, name)]
    if len(given) > 1:
        names = " and ".join(config.BY_NAME[name].flag or config.BY_NAME[name].env
                             for name in given)
        raise TokenSettingsError(f"subscriber tokens are verified with one key, but {names} "
                                 "are set: give one")
    common = {"audience": settings.token_audience, "issuer": settings.token_issuer,
              "leeway": settings.token_leeway}
    secret = hs256_secret(settings)
    if secret is not None:
        where = settings.token_secret_file or "COMET_TOKEN_SECRET"
        return TokenVerifier({None: (secret, "HS256")}, describe=f"HS256 (secret from {where})",
                             **common)
    if settings.token_public_key:
        path = settings.token_public_key
        key, algorithm = public_key_from_pem(_read(path, "--token-public-key").encode(), path)
        return TokenVerifier({None: (key, algorithm)},
                             describe=f"{algorithm} (public key {path})", **common)
    if settings.token_jwks:
        path = settings.token_jwks
        keys = keys_from_jwks(_read(path, "--token-jwks"), path)
        algorithms = ", ".join(sorted({algorithm for _, algorithm in keys.values()}))
        return TokenVerifier(keys, describe=f"{algorithms} (JWKS {path}, {len(keys)} keys)",
                             **common)
    return None


def hs256_secret(settings) -> bytes | None:
    """The HS256 secret the settings give (``COMET_TOKEN_SECRET``, else the file), or None."""
    if settings.token_secret:
        return _checked_secret(settings.token_secret, "COMET_TOKEN_SECRET")
    if settings.token_secret_file:
        path = settings.token_secret_file
        return _checked_secret(_read(path, "--token-secret-file").strip(),
                               f"--token-secret-file {path}")
    return None


def _read(path: str, flag: str) -> str:
    try:
        with open(path, encoding="utf-8") as file:
            return file.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise TokenSettingsError(f"{flag}: cannot read {path}: "
                                 f"{getattr(exc, 'strerror', None) or exc}") from None


def _checked_secret(secret: str, where: str) -> bytes:
    data = secret.encode("utf-8")
    if len(data) < MIN_SECRET_BYTES:
        raise TokenSettingsError(f"{where}: the HS256 secret is {len(data)} bytes; it must be "
                                 f"at least {MIN_SECRET_BYTES} (RFC 7518 3.2)")
    return data


def public_key_from_pem(pem: bytes, where: str) -> tuple[Any, str]:
    """A PEM public key and the one algorithm its type means (RSA: RS256; EC: by curve)."""
    try:
        key = load_pem_public_key(pem)
    except (ValueError, TypeError) as exc:
        raise TokenSettingsError(f"--token-public-key {where}: not a PEM public key "
                                 f"({exc.__class__.__name__})") from None
    if isinstance(key, rsa.RSAPublicKey):
        return key, "RS256"
    if isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name in EC_ALGORITHMS:
        return key, EC_ALGORITHMS[key.curve.name]
    raise TokenSettingsError(f"--token-public-key {where}: an RSA or EC (P-256, P-384, P-521) "
                             f"public key is needed, not {type(key).__name__}")


def keys_from_jwks(text: str, where: str) -> dict[str | None, tuple[Any, str]]:
    """kid -> (key, algorithm) of a JWKS file's public keys; every key must be usable.

    PyJWT's :class:`~jwt.PyJWKSet` skips keys it cannot use; a key left out
    silently would refuse its tokens for no visible reason, so each is read
    on its own first and any it cannot read is an error here. Symmetric
    (``oct``) keys are refused: a JWKS file is for public keys, and a secret
    has its own setting. A set of one key needs no ``kid`` in the tokens.
    """
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise TokenSettingsError(f"--token-jwks {where}: not JSON ({exc})") from None
    raw = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(raw, list) or not raw:
        raise TokenSettingsError(f'--token-jwks {where}: no "keys" list')
    for number, item in enumerate(raw, 1):
        problem = _jwk_problem(item)
        if problem:
            raise TokenSettingsError(f"--token-jwks {where}: key {number}: {problem}")
    keys: dict[str | None, tuple[Any, str]] = {}
    for jwk in jwt.PyJWKSet(raw):
        if jwk.key_id in keys:
            raise TokenSettingsError(f"--token-jwks {where}: kid {jwk.key_id!r} twice")
        keys[jwk.key_id] = (jwk.key, jwk.algorithm_name)
    if len(keys) == 1:
        return {None: next(iter(keys.values()))}
    if None in keys:
        raise TokenSettingsError(f"--token-jwks {where}: with several keys each needs a kid")
    return keys


def _jwk_problem(item: Any) -> str | None:
    if not isinstance(item, dict):
        return "not a JSON object"
    if item.get("kty") == "oct" or str(item.get("alg", "")).startswith("HS"):
        return "a symmetric (oct/HS) key: give secrets as --token-secret-file"
    if "d" in item:
        return "a private key: the server needs only the public part"
    try:
        jwt.PyJWK(item)
    except jwt.PyJWTError as exc:
        return f"unusable ({exc.__class__.__name__})"
    return None
