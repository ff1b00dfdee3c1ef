"""POST /send: a batch of messages for many ids, newline-delimited JSON, all or nothing."""

from __future__ import annotations

import json
import subprocess

import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st

from comet.inputs import BadRequest, parse_batch
from tests.sse import open_events

NDJSON = {"Content-Type": "application/x-ndjson"}


def lines(*items) -> bytes:
    return b"".join(json.dumps(item).encode() + b"\n" for item in items)


# -- the parser alone -----------------------------------------------------------------------

def test_each_line_is_an_id_and_its_message_as_utf8():
    body = lines({"id": "a", "message": "hi"}, {"id": "b.2", "message": "café"}) + b"\n\n"
    assert parse_batch(body, 100) == [("a", b"hi"), ("b.2", "café".encode())]


@pytest.mark.parametrize("body, why", [
    (b"", "empty batch"),
    (b"\n \n", "empty batch"),
    (b'{"id": "a", "message": "x"}\nnot json\n', "line 2: not JSON"),
    (b'["a", "x"]', "line 1: not an object"),
    (b'{"id": "a"}', "line 1: not an object"),
    (b'{"id": "a", "message": "x", "extra": 1}', "line 1: not an object"),
    (b'{"id": "a b", "message": "x"}', "line 1: bad id"),
    (b'{"id": 7, "message": "x"}', "line 1: bad id"),
    (b'{"id": "' + b"i" * 129 + b'", "message": "x"}', "line 1: bad id"),
    (b'{"id": "a", "message": ""}', "line 1: message must be a non-empty string"),
    (b'{"id": "a", "message": 5}', "line 1: message must be a non-empty string"),
    (b'{"id": "a", "message": "' + b"m" * 11 + b'"}', "line 1: message of 11 bytes"),
    (b'{"id": "a", "message": "\\ud800"}', "line 1: message is not Unicode text"),
    (b'{"id": "a", "message": "\xff"}', "line 1: not JSON"),
    (b"[" * 100_000, "line 1: not JSON"),
])
def test_a_bad_line_refuses_the_batch_and_names_the_line(body, why):
    with pytest.raises(BadRequest) as refused:
        parse_batch(body, 10)
    assert refused.value.status.startswith("400") and why in refused.value.reason


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_any_bytes_give_a_batch_or_a_400(body):
    try:
        batch = parse_batch(body, 64)
    except BadRequest as refused:
        assert refused.status.startswith("400")
    else:
        assert batch and all(0 < len(data) <= 64 for _, data in batch)


# -- against the real server ----------------------------------------------------------------

def test_a_batch_reaches_each_id_in_order(server):
    alice, bob = (open_events(server.port, f"/events/{who}") for who in ("alice", "bob"))
    alice.next_event(), bob.next_event()
    body = lines({"id": "alice", "message": "a1"}, {"id": "bob", "message": "b1"},
                 {"id": "alice", "message": "a2"}, {"id": "nobody", "message": "kept"})
    answer = requests.post(server.url + "/send", data=body, headers=NDJSON, timeout=10)
    assert answer.status_code == 200 and answer.json() == {"accepted": 4, "delivered": 3}
    assert [alice.next_message().data for _ in range(2)] == ["a1", "a2"]
    assert bob.next_message().data == "b1"
    assert server.stats()["messages"]["in"] == 4


def test_a_bad_batch_publishes_nothing(server):
    body = lines({"id": "a", "message": "fine"}) + b'{"id": "b", "message": ""}\n'
    answer = requests.post(server.url + "/send", data=body, headers=NDJSON, timeout=10)
    assert answer.status_code == 400
    assert answer.text == "line 2: message must be a non-empty string; nothing was published\n"
    assert server.stats()["messages"]["in"] == 0
    server.wait_for_log("line 2: message must be a non-empty string")


def test_a_batch_needs_its_content_type_and_fits_in_max_batch(start_server):
    server = start_server("--max-batch", "100")
    plain = requests.post(server.url + "/send", data=lines({"id": "a", "message": "m"}),
                          headers={"Content-Type": "text/plain"}, timeout=10)
    assert plain.status_code == 415 and "application/x-ndjson" in plain.text
    big = lines(*({"id": "a", "message": "m" * 20} for _ in range(5)))
    answer = requests.post(server.url + "/send", data=big, headers=NDJSON, timeout=10)
    assert answer.status_code == 413
    assert requests.get(server.url + "/send", timeout=10).status_code == 405
    assert server.stats()["messages"]["in"] == 0


def test_the_documented_curl_line_works(server):
    body = "\n".join(['{"id": "alice", "message": "hi"}', '{"id": "bob", "message": "yo"}'])
    done = subprocess.run(["curl", "-s", "--data-binary", "@-", "-H",
                           "Content-Type: application/x-ndjson", server.url + "/send"],
                          input=body + "\n", capture_output=True, text=True, timeout=30)
    assert json.loads(done.stdout) == {"accepted": 2, "delivered": 0}
