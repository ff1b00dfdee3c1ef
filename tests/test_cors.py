"""--allow-origin: CORS headers for /events, /poll and /ws; none by default. And the page."""

import requests


def get(server, path, origin):
    return requests.get(server.url + path, headers={"Origin": origin}, timeout=10, stream=True)


def test_no_cors_headers_by_default(server):
    answer = get(server, "/poll/x?since=0000-1", "http://elsewhere.example")
    assert "Access-Control-Allow-Origin" not in answer.headers


def test_listed_origin_is_echoed_and_others_are_not(start_server):
    server = start_server("--allow-origin", "http://a.example, http://b.example")
    allowed = get(server, "/poll/x?since=0000-1", "http://b.example")
    assert allowed.headers["Access-Control-Allow-Origin"] == "http://b.example"
    assert allowed.headers["Vary"] == "Origin"
    other = get(server, "/poll/x?since=0000-1", "http://c.example")
    assert "Access-Control-Allow-Origin" not in other.headers


def test_star_allows_event_streams_from_anywhere(start_server):
    server = start_server("--allow-origin", "*")
    events = get(server, "/events/x", "http://anywhere.example")
    assert events.headers["Access-Control-Allow-Origin"] == "*"
    events.close()
    publishing = requests.post(server.url + "/send/x", data=b"m", timeout=10,
                               headers={"Origin": "http://anywhere.example"})
    assert "Access-Control-Allow-Origin" not in publishing.headers


def test_preflight_allows_last_event_id(start_server):
    server = start_server("--allow-origin", "*")
    answer = requests.options(server.url + "/events/x", timeout=10,
                              headers={"Origin": "http://a.example",
                                       "Access-Control-Request-Method": "GET",
                                       "Access-Control-Request-Headers": "last-event-id"})
    assert answer.status_code == 204
    assert answer.headers["Access-Control-Allow-Headers"] == "Last-Event-ID, Authorization"
    assert answer.headers["Access-Control-Allow-Origin"] == "*"


def test_the_page_is_self_contained(server):
    page = requests.get(server.url + "/", timeout=10)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    assert "new EventSource(" in page.text and "/send/" in page.text
    assert "http://" not in page.text and "https://" not in page.text  # no CDN
