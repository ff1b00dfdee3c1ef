"""Keys and tokens for the token tests, made fresh in each run (no private key is committed).

RSA and EC keys come from ``cryptography``; tokens are signed with PyJWT, as
a real issuer's would be. :func:`forged_hs256` is the attacker's tool: an
HS256 token whose HMAC key is a public key's PEM bytes, made by hand
because PyJWT rightly refuses to sign so.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

#: an HS256 secret of the length RFC 7518 asks for
SECRET = secrets.token_urlsafe(40)


def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def ec_key(curve: ec.EllipticCurve | None = None) -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(curve or ec.SECP256R1())


def public_pem(key) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


def private_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def write(directory: Path, name: str, data: bytes | str) -> str:
    path = directory / name
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return str(path)


def public_jwk(key, kid: str) -> dict:
    """The JWK of ``key``'s public half, with its kid (no alg: PyJWT infers it)."""
    public = key.public_key()
    algorithm = jwt.algorithms.RSAAlgorithm if isinstance(public, rsa.RSAPublicKey) \
        else jwt.algorithms.ECAlgorithm
    jwk = algorithm.to_jwk(public, as_dict=True)
    jwk["kid"] = kid
    return jwk


def claims(sub: str | None = "alice", ttl: float = 60, **more) -> dict:
    found = {"exp": int(time.time() + ttl), **more}
    if sub is not None:
        found["sub"] = sub
    return found


def hs256(sub: str | None = "alice", ttl: float = 60, secret: str = SECRET, **more) -> str:
    return jwt.encode(claims(sub, ttl, **more), secret, algorithm="HS256")


def signed(key, algorithm: str, sub: str = "alice", ttl: float = 60, kid: str | None = None,
           **more) -> str:
    return jwt.encode(claims(sub, ttl, **more), key, algorithm=algorithm,
                      headers={"kid": kid} if kid else None)


def unsigned(sub: str = "alice", ttl: float = 60) -> str:
    """``alg: none``: no signature at all."""
    return jwt.encode(claims(sub, ttl), None, algorithm="none")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forged_hs256(hmac_key: bytes, sub: str = "alice", ttl: float = 60,
                 kid: str | None = None) -> str:
    """An HS256 token keyed with ``hmac_key`` (a public PEM): the RS/HS confusion attack."""
    header = {"alg": "HS256", "typ": "JWT", **({"kid": kid} if kid else {})}
    signing_input = _b64(json.dumps(header).encode()) + "." + \
        _b64(json.dumps(claims(sub, ttl)).encode())
    mac = hmac.new(hmac_key, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + _b64(mac)
