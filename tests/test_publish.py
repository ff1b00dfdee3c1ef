"""POST /send and /broadcast: answers and limits; /stats and /health (who may publish:
tests/test_publisher_keys.py)."""

import requests


def test_send_answers_json_with_the_count(server):
    answer = requests.post(server.url + "/send/nobody", data=b"x", timeout=10)
    assert answer.status_code == 200
    assert answer.headers["Content-Type"] == "application/json"
    assert answer.json()["delivered"] == 0 and answer.json()["id"] == "nobody"


def test_send_with_a_bad_id_is_400(server):
    answer = requests.post(server.url + "/send/" + "x" * 129, data=b"x", timeout=10)
    assert answer.status_code == 400 and "bad id" in answer.text


def test_empty_message_is_400(server):
    answer = requests.post(server.url + "/broadcast", data=b"", timeout=10)
    assert answer.status_code == 400 and "empty" in answer.text


def test_chunked_message_over_the_limit_is_413(start_server):
    server = start_server("--max-message", "100")
    answer = requests.post(server.url + "/send/a", data=iter([b"x" * 60, b"y" * 60]), timeout=10)
    assert answer.status_code == 413


def test_stats_has_every_field(server):
    stats = server.stats()
    assert set(stats) >= {"pid", "uptime", "connections", "ids", "messages", "rss_bytes",
                          "rss_per_connection", "accepted", "refused", "slow_consumers"}
    assert stats["connections"] == {"total": 0}
    assert set(stats["messages"]) == {"in", "out", "dropped"}
    assert stats["rss_bytes"] > 0 and stats["pid"] == server.proc.pid


def test_health(server):
    answer = requests.get(server.url + "/health", timeout=10)
    assert answer.status_code == 200 and answer.text == "ok\n"


def test_memory_by_line_needs_tracemalloc(start_server):
    plain = start_server()
    assert "error" in requests.get(plain.url + "/stats/memory", timeout=10).json()
    traced = start_server("--tracemalloc", "1")
    lines = requests.get(traced.url + "/stats/memory", timeout=30).json()
    assert lines["traced_bytes"] > 0 and lines["lines"][0]["where"].count(":") >= 1
