"""comet.tokens without a server: verifying, covering, finding and hiding subscriber tokens."""

from __future__ import annotations

import json
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from comet import config, tokens
from comet.inputs import ids_of
from tests import tokenkeys as keys


def verifier(environ=None, argv=()) -> tokens.TokenVerifier | None:
    """A verifier from settings as the server reads them (fresh settings: no cache hit)."""
    return tokens.verifier_for(config.load(list(argv), environ=environ or {}))


@pytest.fixture(scope="module")
def rsa_key():
    return keys.rsa_key()


@pytest.fixture(scope="module")
def ec_key():
    return keys.ec_key()


@pytest.fixture
def hs() -> tokens.TokenVerifier:
    return verifier(environ={"COMET_TOKEN_SECRET": keys.SECRET})


def reason(check: tokens.TokenVerifier, token: str | None) -> str:
    with pytest.raises(tokens.TokenRefused) as refused:
        check.verify(token)
    return refused.value.reason


# -- settings ------------------------------------------------------------------------

def test_no_token_setting_leaves_subscribing_open():
    assert verifier() is None


def test_the_secret_is_read_from_a_file_stripped(tmp_path):
    path = keys.write(tmp_path, "secret", f"  {keys.SECRET}\n")
    check = verifier(argv=["--token-secret-file", path])
    assert check.verify(keys.hs256())["sub"] == "alice"


def test_the_secret_is_never_a_flag_and_never_in_the_repr(capsys):
    for argv in (["--token-secret", keys.SECRET], [f"--token-secret={keys.SECRET}"],
                 ["--token-sec", keys.SECRET]):
        with pytest.raises(SystemExit):
            config.load(argv, environ={})
        err = capsys.readouterr().err
        assert keys.SECRET not in err and "COMET_TOKEN_SECRET" in err or "--token-sec" in err
    settings = config.load([], environ={"COMET_TOKEN_SECRET": keys.SECRET})
    assert settings.token_secret == keys.SECRET
    assert keys.SECRET not in repr(settings) and "token_secret=" not in repr(settings)


@pytest.mark.parametrize("environ, argv, said", [
    ({"COMET_TOKEN_SECRET": keys.SECRET}, ["--token-public-key", "/k.pem"],
     "COMET_TOKEN_SECRET and --token-public-key"),
    ({}, ["--token-public-key", "/k.pem", "--token-jwks", "/k.json"],
     "--token-public-key and --token-jwks"),
    ({"COMET_TOKEN_SECRET": "too short"}, [], "at least 32"),
    ({}, ["--token-secret-file", "/nonexistent/secret"], "cannot read /nonexistent/secret"),
    ({}, ["--token-public-key", "/nonexistent/key.pem"], "cannot read"),
])
def test_unusable_token_settings_are_one_clear_error(environ, argv, said):
    with pytest.raises(tokens.TokenSettingsError, match=said):
        verifier(environ=environ, argv=argv)


def test_a_short_secret_is_refused_without_showing_it():
    with pytest.raises(tokens.TokenSettingsError) as error:
        verifier(environ={"COMET_TOKEN_SECRET": "hunter2-hunter2"})
    assert "hunter2" not in str(error.value)


def test_a_private_key_or_garbage_is_not_a_public_key(tmp_path, rsa_key):
    for name, data in [("private.pem", keys.private_pem(rsa_key)), ("junk.pem", b"junk")]:
        path = keys.write(tmp_path, name, data)
        with pytest.raises(tokens.TokenSettingsError, match="not a PEM public key"):
            verifier(argv=["--token-public-key", path])


@pytest.mark.parametrize("document, said", [
    ("not json", "not JSON"),
    ('{"keys": []}', 'no "keys" list'),
    ('{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}', "symmetric"),
    ('{"keys": [{"kty": "RSA", "n": "x"}]}', "unusable"),
])
def test_a_bad_jwks_file_is_one_clear_error(tmp_path, document, said):
    path = keys.write(tmp_path, "jwks.json", document)
    with pytest.raises(tokens.TokenSettingsError, match=said):
        verifier(argv=["--token-jwks", path])


def test_a_jwks_of_several_keys_needs_a_kid_on_each(tmp_path, rsa_key, ec_key):
    jwks = {"keys": [keys.public_jwk(rsa_key, "a"), keys.public_jwk(ec_key, "b")]}
    del jwks["keys"][1]["kid"]
    path = keys.write(tmp_path, "jwks.json", json.dumps(jwks))
    with pytest.raises(tokens.TokenSettingsError, match="each needs a kid"):
        verifier(argv=["--token-jwks", path])


# -- algorithms, pinned by the key ------------------------------------------------------

def test_hs256_accepts_its_own_tokens_and_refuses_others(hs):
    assert hs.verify(keys.hs256("bob"))["sub"] == "bob"
    assert reason(hs, keys.hs256(secret="another secret of at least 32 bytes....")) == \
        "bad signature"
    assert reason(hs, keys.unsigned()) == "algorithm not allowed"


def test_hs256_refuses_an_rs256_token(hs, rsa_key):
    assert reason(hs, keys.signed(rsa_key, "RS256")) == "algorithm not allowed"


@pytest.mark.parametrize("make, algorithm", [(keys.rsa_key, "RS256"), (keys.ec_key, "ES256")])
def test_a_pem_public_key_pins_its_algorithm(tmp_path, make, algorithm):
    key = make()
    path = keys.write(tmp_path, "public.pem", keys.public_pem(key))
    check = verifier(argv=["--token-public-key", path])
    assert check.describe.startswith(algorithm)
    assert check.verify(keys.signed(key, algorithm))["sub"] == "alice"
    assert reason(check, keys.signed(make(), algorithm)) == "bad signature"
    assert reason(check, keys.unsigned()) == "algorithm not allowed"
    assert reason(check, keys.hs256()) == "algorithm not allowed"


def test_an_hs256_token_keyed_with_the_public_pem_is_refused(tmp_path, rsa_key):
    """The RS/HS confusion: the public key's PEM bytes used as an HMAC secret."""
    pem = keys.public_pem(rsa_key)
    check = verifier(argv=["--token-public-key", keys.write(tmp_path, "public.pem", pem)])
    assert reason(check, keys.forged_hs256(pem)) == "algorithm not allowed"


def test_an_ec_p384_key_means_es384(tmp_path):
    from cryptography.hazmat.primitives.asymmetric import ec
    key = keys.ec_key(ec.SECP384R1())
    check = verifier(argv=["--token-public-key",
                           keys.write(tmp_path, "p384.pem", keys.public_pem(key))])
    assert check.verify(keys.signed(key, "ES384"))["sub"] == "alice"
    assert reason(check, keys.signed(keys.ec_key(), "ES256")) == "algorithm not allowed"


def test_jwks_picks_the_key_by_kid_and_pins_its_algorithm(tmp_path, rsa_key, ec_key):
    jwks = {"keys": [keys.public_jwk(rsa_key, "rsa-1"), keys.public_jwk(ec_key, "ec-1")]}
    check = verifier(argv=["--token-jwks", keys.write(tmp_path, "jwks.json", json.dumps(jwks))])
    assert check.verify(keys.signed(rsa_key, "RS256", kid="rsa-1"))["sub"] == "alice"
    assert check.verify(keys.signed(ec_key, "ES256", sub="bob", kid="ec-1"))["sub"] == "bob"
    assert reason(check, keys.signed(ec_key, "ES256", kid="rsa-1")) == "algorithm not allowed"
    assert reason(check, keys.signed(rsa_key, "RS256", kid="nobody")) == "unknown key"
    assert reason(check, keys.signed(rsa_key, "RS256")) == "unknown key"
    rsa_pem = keys.public_pem(rsa_key)
    assert reason(check, keys.forged_hs256(rsa_pem, kid="rsa-1")) == "algorithm not allowed"


def test_a_jwks_of_one_key_needs_no_kid(tmp_path, ec_key):
    jwks = {"keys": [keys.public_jwk(ec_key, "only")]}
    check = verifier(argv=["--token-jwks", keys.write(tmp_path, "jwks.json", json.dumps(jwks))])
    assert check.verify(keys.signed(ec_key, "ES256"))["sub"] == "alice"


# -- claims ------------------------------------------------------------------------------

def test_exp_is_required_and_checked_with_the_leeway():
    check = verifier(environ={"COMET_TOKEN_SECRET": keys.SECRET}, argv=["--token-leeway", "0"])
    assert reason(check, keys.hs256(ttl=-5)) == "expired"
    import jwt
    assert reason(check, jwt.encode({"sub": "a"}, keys.SECRET, algorithm="HS256")) == \
        "missing a required claim"
    lenient = verifier(environ={"COMET_TOKEN_SECRET": keys.SECRET},
                       argv=["--token-leeway", "60"])
    claims = lenient.verify(keys.hs256(ttl=-5))
    assert lenient.expires_at(claims) == claims["exp"] + 60


def test_audience_and_issuer_are_checked_when_set():
    check = verifier(environ={"COMET_TOKEN_SECRET": keys.SECRET},
                     argv=["--token-audience", "comet", "--token-issuer", "https://auth"])
    assert check.verify(keys.hs256(aud="comet", iss="https://auth"))
    assert reason(check, keys.hs256(aud="other", iss="https://auth")) == "wrong audience"
    assert reason(check, keys.hs256(aud="comet", iss="https://evil")) == "wrong issuer"
    assert reason(check, keys.hs256(iss="https://auth")) == "missing a required claim"


def test_not_yet_valid_and_bad_claims_are_refused(hs):
    assert reason(hs, keys.hs256(nbf=int(time.time()) + 3600)) == "not yet valid"
    assert reason(hs, keys.hs256(ids="alice")) == "bad ids claim"
    assert reason(hs, keys.hs256(ids=["a", 1])) == "bad ids claim"
    assert reason(hs, keys.hs256(sub=None, exp="soon")) == "malformed token"


def test_sub_and_ids_cover_what_they_name(hs):
    claims = hs.verify(keys.hs256("alice", ids=["bob", "team"]))
    assert hs.covers(claims, ["alice", "bob", "team"])
    assert not hs.covers(claims, ["alice", "eve"])
    only_ids = hs.verify(keys.hs256(sub=None, ids=["x"]))
    assert hs.covers(only_ids, ["x"]) and not hs.covers(only_ids, ["alice"])


# -- where it comes from, and where it must not go ---------------------------------------

def test_the_token_comes_from_header_then_query_then_cookie():
    assert tokens.token_of({}) is None
    assert tokens.token_of({"HTTP_AUTHORIZATION": "Bearer h", "QUERY_STRING": "token=q",
                            "HTTP_COOKIE": "comet_token=c"}) == "h"
    assert tokens.token_of({"QUERY_STRING": "id=b&token=q",
                            "HTTP_COOKIE": "comet_token=c"}) == "q"
    assert tokens.token_of({"HTTP_COOKIE": "theme=dark; comet_token=c; x=1"}) == "c"
    assert tokens.token_of({"HTTP_AUTHORIZATION": "Basic dXNlcg=="}) is None


def test_the_token_parameter_is_not_an_id():
    assert ids_of("alice", "id=bob&token=abc.def.ghi") == ["alice", "bob"]


@pytest.mark.parametrize("line", [
    "GET /events/a?token=SECRET HTTP/1.1",
    "GET /events/a?id=b&token=SECRET&last_event_id=1 HTTP/1.1",
    "GET /ws/a?%74oken=SECRET HTTP/1.1",
    "Invalid HTTP method: 'GET /x?token=SECRET\\r\\n'",
])
def test_a_request_line_loses_its_token(line):
    hidden = tokens.redacted(line)
    assert "SECRET" not in hidden and "[redacted]" in hidden


def test_other_parameters_stay_in_the_request_line():
    line = "GET /events/a?id=b&mytoken=keep&last_event_id=1 HTTP/1.1"
    assert tokens.redacted(line) == line


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=300),
                 st.lists(st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnop"
                                           "qrstuvwxyz0123456789-_=", max_size=60),
                          min_size=1, max_size=4).map(".".join)))
def test_any_string_as_a_token_is_refused_cleanly(text):
    """Whatever a client sends as a token, the answer is a refusal with a fixed reason
    (a 401), never another exception (a 500), and never an echo of the token."""
    check = tokens.verifier_for(_HS_SETTINGS)
    with pytest.raises(tokens.TokenRefused) as refused:
        check.verify(text)
    assert refused.value.reason in _REASONS


_HS_SETTINGS = config.load([], environ={"COMET_TOKEN_SECRET": keys.SECRET})
_REASONS = {reason for _, reason in tokens._REASONS} | {tokens.MISSING, "bad ids claim"}
