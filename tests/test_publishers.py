"""comet.publishers, comet.ratelimit and comet.burstlog without a server: keys, buckets, lines."""

from __future__ import annotations

import hmac
import logging

import pytest

from comet import config, publishers
from comet.burstlog import BurstLog
from comet.publishers import KeyFile, PublisherKeys, PublisherSettingsError, PublishRefused
from comet.ratelimit import RateLimiter, retry_after

KEYS = ("first-key-0123456789", "second-key-0123456789", "third-key-0123456789")


def refused(keys: PublisherKeys, environ: dict) -> PublishRefused:
    with pytest.raises(PublishRefused) as caught:
        keys.identify(environ)
    return caught.value


@pytest.mark.parametrize("environ, key", [
    ({}, None),
    ({"HTTP_AUTHORIZATION": "Bearer k1"}, "k1"),
    ({"HTTP_AUTHORIZATION": "bearer  k1 "}, "k1"),
    ({"HTTP_X_API_KEY": "k2"}, "k2"),
    ({"HTTP_AUTHORIZATION": "Bearer k1", "HTTP_X_API_KEY": "k2"}, "k1"),
    ({"HTTP_AUTHORIZATION": "Basic azE=", "HTTP_X_API_KEY": "k2"}, "k2"),
    ({"HTTP_AUTHORIZATION": "Basic azE="}, None),
    ({"HTTP_AUTHORIZATION": "Bearer "}, None),
])
def test_the_key_comes_from_a_bearer_header_else_x_api_key(environ, key):
    assert publishers.presented_key(environ) == key


@pytest.mark.parametrize("address", ["127.0.0.1", "127.8.9.10", "::1"])
def test_without_keys_loopback_publishes_as_one_publisher(address):
    assert PublisherKeys().identify({"REMOTE_ADDR": address}) == publishers.LOOPBACK


def test_without_keys_others_are_refused_403():
    refusal = refused(PublisherKeys(), {"REMOTE_ADDR": "192.0.2.7",
                                        "HTTP_AUTHORIZATION": "Bearer anything"})
    assert refusal.status.startswith("403") and refusal.reason == publishers.NOT_LOOPBACK


def test_with_keys_loopback_needs_one_too():
    keys = PublisherKeys(KEYS)
    missing = refused(keys, {"REMOTE_ADDR": "127.0.0.1"})
    assert missing.status.startswith("401") and missing.reason == publishers.MISSING
    assert dict(missing.headers)["WWW-Authenticate"].startswith("Bearer")
    wrong = refused(keys, {"REMOTE_ADDR": "127.0.0.1", "HTTP_X_API_KEY": "nope"})
    assert wrong.status.startswith("403") and wrong.reason == publishers.WRONG
    for key in KEYS:
        who = keys.identify({"REMOTE_ADDR": "192.0.2.7", "HTTP_AUTHORIZATION": f"Bearer {key}"})
        assert who == publishers.fingerprint(key)
    assert keys.identities == {publishers.fingerprint(k) for k in KEYS}


@pytest.mark.parametrize("given", [KEYS[0], KEYS[2], "not-a-key", KEYS[0][:-1], "x" * 500])
def test_every_key_is_compared_whatever_matches(monkeypatch, given):
    """The comparison is hmac.compare_digest of equal-length digests against every key,
    with no early exit: as many compare_digest calls for a first-key match as for none."""
    calls = []
    real = hmac.compare_digest

    def counting(a, b):
        calls.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(publishers.hmac, "compare_digest", counting)
    keys = PublisherKeys(KEYS)
    try:
        keys.identify({"HTTP_X_API_KEY": given})
    except PublishRefused:
        pass
    assert calls == [(32, 32)] * len(KEYS)


def test_a_key_file_skips_blanks_and_comments(tmp_path):
    path = tmp_path / "keys"
    path.write_text("# publishers of the shop\n\n  one-key-0123456789  \n#two\n"
                    "three-key-0123456789\n")
    assert KeyFile(str(path)).keys == ("one-key-0123456789", "three-key-0123456789")


@pytest.mark.parametrize("text, said", [
    ("", "no key in it"),
    ("# only a comment\n\n", "no key in it"),
    ("good-key-0123456789\nsecret with blanks\n", "line 2: not printable ASCII"),
])
def test_an_unusable_key_file_is_an_error_that_quotes_no_key(tmp_path, text, said):
    path = tmp_path / "keys"
    path.write_text(text)
    with pytest.raises(PublisherSettingsError, match=said) as error:
        KeyFile(str(path))
    assert "secret" not in str(error.value)


def test_a_missing_key_file_is_an_error(tmp_path):
    with pytest.raises(PublisherSettingsError, match="cannot read"):
        KeyFile(str(tmp_path / "nowhere"))


def test_a_changed_file_is_read_again_and_a_broken_one_keeps_the_last_keys(tmp_path, caplog):
    path = tmp_path / "keys"
    path.write_text("old-key-0123456789\n")
    now = [0.0]
    keys = PublisherKeys(file=KeyFile(str(path)), clock=lambda: now[0])
    path.write_text("new-key-0123456789\n")
    assert keys.identify({"HTTP_X_API_KEY": "old-key-0123456789"})  # checked once a second
    now[0] += publishers.CHECK_EVERY
    assert refused(keys, {"HTTP_X_API_KEY": "old-key-0123456789"}).reason == publishers.WRONG
    assert keys.identify({"HTTP_X_API_KEY": "new-key-0123456789"})
    with caplog.at_level(logging.WARNING, logger="comet.publishers"):
        for broken in ("", "# emptied\n", None):
            if broken is None:
                path.unlink()
            else:
                path.write_text(broken)
            now[0] += publishers.CHECK_EVERY
            assert keys.identify({"HTTP_X_API_KEY": "new-key-0123456789"})
    warnings = [r for r in caplog.records if "keeping the last good" in r.getMessage()]
    assert len(warnings) == 1
    path.write_text("newest-key-0123456789\n")
    keys.reload()  # SIGHUP: whatever the clock says
    assert keys.identify({"HTTP_X_API_KEY": "newest-key-0123456789"})
    assert "new-key-0123456789" not in caplog.text and "newest-key" not in caplog.text


def test_keys_from_the_environment_and_the_file_add_up(tmp_path):
    path = tmp_path / "keys"
    path.write_text("file-key-0123456789\n")
    settings = config.load(["--publish-key-file", str(path)], environ={
        "COMET_PUBLISH_KEYS": "env-a-0123456789, env-b-0123456789",
        "COMET_PUBLISH_KEY": "legacy-0123456789"})
    keys = publishers.keys_for(settings)
    assert len(keys.identities) == 4
    assert "4 publisher keys (3 from the environment, 1 from" in keys.describe()
    for key in ("env-a-0123456789", "env-b-0123456789", "legacy-0123456789",
                "file-key-0123456789"):
        assert keys.identify({"HTTP_X_API_KEY": key}) == publishers.fingerprint(key)
    assert "env-a" not in repr(settings) and "legacy" not in repr(settings)


@pytest.mark.parametrize("value, said", [(",", "key 1 of the list is empty"),
                                         ("good-key,secret key", "key 2 of the list is not")])
def test_a_bad_key_list_names_the_position_not_the_key(value, said):
    with pytest.raises(SystemExit, match=said) as error:
        config.load([], environ={"COMET_PUBLISH_KEYS": value})
    assert "secret" not in str(error.value)


def test_the_publish_key_flag_is_refused_without_repeating_it(capsys):
    with pytest.raises(SystemExit):
        config.load(["--publish-key", "sekrit-value"], environ={})
    err = capsys.readouterr().err
    assert "COMET_PUBLISH_KEY" in err and "sekrit-value" not in err


# -- publishes per second per key -----------------------------------------------------------

def test_a_bucket_holds_a_second_and_refills_at_the_rate():
    now = [100.0]
    limiter = RateLimiter(5, clock=lambda: now[0])
    assert all(limiter.take("k", 1, {"k"}) is None for _ in range(5))
    wait = limiter.take("k", 1, {"k"})
    assert wait == pytest.approx(0.2)
    now[0] += 0.2
    assert limiter.take("k", 1, {"k"}) is None
    assert limiter.take("other", 5, {"k", "other"}) is None  # a bucket each


def test_a_batch_counts_its_messages_and_a_big_one_leaves_a_debt():
    now = [0.0]
    limiter = RateLimiter(2, clock=lambda: now[0])
    assert limiter.take("k", 1, {"k"}) is None
    assert limiter.take("k", 2, {"k"}) == pytest.approx(0.5)  # one left, two asked
    now[0] += 10
    assert limiter.take("k", 7, {"k"}) is None  # over a second's worth: passes when full
    assert limiter.take("k", 1, {"k"}) == pytest.approx(3.0)  # -5 tokens: 3 s to one
    assert retry_after(0.01) == "1" and retry_after(2.1) == "3"


def test_buckets_are_bounded_by_who_may_publish():
    limiter = RateLimiter(1)
    for generation in range(50):
        current = {f"key{generation}", "loopback"}
        limiter.take(f"key{generation}", 1, current)
        limiter.take("loopback", 1, current)
        assert len(limiter) <= len(current)


# -- one log line per burst ------------------------------------------------------------------

def test_a_burst_is_one_line_then_a_summary_then_quiet(caplog):
    pending = []
    burst = BurstLog(logging.getLogger("test.burst"), window=10, level=logging.INFO,
                     later=lambda delay, call: pending.append(call))
    with caplog.at_level(logging.INFO, logger="test.burst"):
        for n in range(100):
            burst.log("refused", "refused: request %d", n)
        assert [r.getMessage() for r in caplog.records] == ["refused: request 0"]
        assert len(pending) == 1
        pending.pop()()
        assert caplog.records[-1].getMessage() == \
            "99 more refused in 10 s (refused), the last: refused: request 99"
        pending.pop()()  # a quiet period ends the burst, no line
        assert len(caplog.records) == 2 and not pending and len(burst) == 0
        burst.log("refused", "refused: %s", "again")
        assert caplog.records[-1].getMessage() == "refused: again"
