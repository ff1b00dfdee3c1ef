"""GET /poll/<id>: answers at once with what came after ?since=, else waits for the next."""

import threading

import requests

from tests.realserver import post


def poll(server, path, **params):
    return requests.get(server.url + path, params=params, timeout=30)


def test_answers_at_once_with_messages_after_since(server):
    start = post(server, "/send/p", b"zero")["message"]
    one, two = (post(server, "/send/p", b) ["message"] for b in (b"one", b"two"))
    answer = poll(server, "/poll/p", since=start)
    assert answer.status_code == 200 and answer.headers["Content-Type"] == "application/json"
    assert answer.json() == {"messages": [{"id": one, "data": "one"}, {"id": two, "data": "two"}],
                             "last": two}


def test_without_since_waits_for_the_next_message(server):
    result = {}
    waiter = threading.Thread(target=lambda: result.update(answer=poll(server, "/poll/w")))
    waiter.start()
    server.wait_for(lambda s: s["connections"].get("poll") == 1, what="poll waiting")
    sent = post(server, "/send/w", b"hello")
    waiter.join(30)
    assert result["answer"].json() == {"messages": [{"id": sent["message"], "data": "hello"}],
                                       "last": sent["message"]}
    assert server.stats()["connections"]["total"] == 0


def test_timeout_answers_empty_with_a_position_to_continue_from(start_server):
    server = start_server("--poll-timeout", "0.3")
    answer = poll(server, "/poll/t").json()
    assert answer["messages"] == [] and answer["last"].endswith("-0")
    sent = post(server, "/send/t", b"later")
    assert poll(server, "/poll/t", since=answer["last"]).json()["messages"][0]["id"] == \
        sent["message"]


def test_a_client_looping_on_last_loses_nothing(start_server):
    server = start_server("--poll-timeout", "0.5")
    sent, got = [], []
    last = poll(server, "/poll/loop").json()["last"]

    def publish():
        for n in range(40):
            sent.append(post(server, "/send/loop", b"%d" % n)["message"])

    publisher = threading.Thread(target=publish)
    publisher.start()
    while len(got) < 40:
        answer = poll(server, "/poll/loop", since=last).json()
        assert "missed" not in answer
        got.extend(m["id"] for m in answer["messages"])
        last = answer["last"]
    publisher.join(30)
    assert got == sent


def test_since_from_another_epoch_says_missed(server):
    answer = poll(server, "/poll/e", since="0000-5").json()
    assert answer["missed"] is True and answer["messages"] == []


def test_bad_since_is_400(server):
    answer = poll(server, "/poll/e", since="bad\x7f")  # not printable
    assert answer.status_code == 400
