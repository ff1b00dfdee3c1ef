"""The page at ``GET /`` in a real headless Chromium: EventSource, WebSocket, resume, restart.

Each test starts a real server process (:mod:`tests.realserver`), a Chromium of
its own (:mod:`tests.browser`, through tests/conftest.py's ``page`` fixture) and
opens ``/?id=<user>``, which subscribes at once and keeps what it got in
``window.comet``. The test posts messages to the server over HTTP and reads
``window.comet`` back through the DevTools protocol until the expected state
holds or a deadline passes (waits, never timing assertions).

To drop streams and restart the server under the browser's feet, the page is
loaded through a :class:`tests.forwarder.Forwarder`: cutting it drops every
connection, holding it keeps the browser's reconnection waiting while the test
posts, and the request head it records shows the ``Last-Event-ID`` the browser
sent by itself.

Chromium is Debian's ``chromium``; without it these tests skip, except under
``CI=true`` where they fail (CI installs it).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

import pytest

from tests import tokenkeys
from tests.browser import Page
from tests.forwarder import Forwarder
from tests.realserver import RealServer, post

#: a short reconnection delay (ms) so EventSource comes back quickly after a cut
SSE_RETRY = ("--sse-retry", "300")

COMET = "window.comet"


@pytest.fixture
def forwarder() -> Iterator[Callable[[int], Forwarder]]:
    """Start forwarders to a port; all are stopped after the test."""
    started: list[Forwarder] = []

    def start(target_port: int) -> Forwarder:
        started.append(Forwarder(target_port))
        return started[-1]

    yield start
    for fwd in started:
        fwd.stop()


def send(server: RealServer, user: str, text: str) -> dict:
    """POST one message straight to the server; its JSON answer (message id, delivered)."""
    return post(server, f"/send/{user}", text.encode())


def wait_received(page: Page, expected: list[str], what: str) -> dict:
    """Wait until the page holds as many messages as expected (or more); its window.comet."""
    return page.wait_for(COMET, lambda c: len(c["received"]) >= len(expected), what=what)


def last_event_id(head: bytes) -> str | None:
    """The Last-Event-ID a request head carries, if any."""
    match = re.search(rb"(?im)^last-event-id:[ \t]*(\S+)", head)
    return match.group(1).decode() if match else None


def open_page(page: Page, base: str, query: str) -> dict:
    """Load the page subscribed as ``query`` says and wait for its first open."""
    page.navigate(f"{base}/?{query}")
    return page.wait_for(COMET, lambda c: c["state"] == "open" and c["opens"] == 1,
                         what=f"page /?{query} subscribed")


def drop_and_hold(fwd: Forwarder, user: str) -> bytes:
    """Cut the page's stream; return the reconnection request, held until ``release``."""
    fwd.hold()
    start = len(fwd.heads)
    fwd.cut()
    return fwd.wait_for_head(start, f"GET /events/{user} ".encode())


def test_eventsource_page_receives_every_message_posted_in_order(start_server, page):
    server = start_server(*SSE_RETRY)
    open_page(page, server.url, "id=alice")
    texts = [f"message {n}" for n in range(20)] + ["two\nlines", "caf\u00e9 \u2603"]
    for text in texts:
        assert send(server, "alice", text)["delivered"] == 1
    comet = wait_received(page, texts, "EventSource received every message")
    assert comet["received"] == texts
    assert comet["missed"] == 0 and comet["errors"] == 0 and comet["user"] == "alice"


def test_websocket_page_receives_every_message_posted_in_order(start_server, page):
    server = start_server()
    open_page(page, server.url, "id=bob&transport=ws")
    server.wait_for(lambda s: s["connections"].get("ws") == 1,
                    what="the page's WebSocket logged in")
    texts = [f"message {n}" for n in range(20)] + ["two\nlines", "caf\u00e9 \u2603"]
    for text in texts:
        assert send(server, "bob", text)["delivered"] == 1
    comet = wait_received(page, texts, "WebSocket received every message")
    assert comet["received"] == texts
    assert comet["state"] == "open" and comet["errors"] == 0


@pytest.mark.parametrize("transport", ["events", "ws"])
def test_the_page_subscribes_with_a_token_and_is_told_when_it_expires(
        start_server, page, transport):
    """With tokens on, the page passes ?token= on (EventSource cannot set headers);
    at the token's exp the SSE stream says ``expired``, the WebSocket closes 4001."""
    server = start_server("--token-leeway", "0", env={"COMET_TOKEN_SECRET": tokenkeys.SECRET})
    token = tokenkeys.hs256("dave", ttl=4)
    open_page(page, server.url, f"id=dave&transport={transport}&token={token}")
    server.wait_for(lambda s: s["connections"].get(transport) == 1,
                    what="the page logged in with its token")
    assert send(server, "dave", "with a token")["delivered"] == 1
    wait_received(page, ["with a token"], "the page received with its token")
    comet = page.wait_for(COMET, lambda c: c["state"] == "closed",
                          what="the page told that its token expired", timeout=30)
    if transport == "events":
        assert comet.get("expired") == 1
    else:
        assert comet["closeCode"] == 4001
    assert server.stats()["connections"]["total"] == 0


def test_eventsource_resumes_after_a_dropped_stream_with_nothing_lost_or_repeated(
        start_server, page, forwarder):
    server = start_server(*SSE_RETRY)
    fwd = forwarder(server.port)
    open_page(page, f"http://127.0.0.1:{fwd.port}", "id=carol")
    before = ["one", "two"]
    ids = [send(server, "carol", text)["message"] for text in before]
    wait_received(page, before, "messages before the cut")

    # The browser comes back by itself; its request waits in the forwarder while we post.
    head = drop_and_hold(fwd, "carol")
    assert last_event_id(head) == ids[-1], head.decode(errors="replace")
    meanwhile = [f"while away {n}" for n in range(5)]
    for text in meanwhile:
        send(server, "carol", text)
    fwd.release()

    page.wait_for(COMET, lambda c: c["opens"] >= 2 and c["state"] == "open",
                  what="EventSource reopened")
    after = ["back live"]
    for text in after:
        send(server, "carol", text)
    expected = before + meanwhile + after
    comet = wait_received(page, expected, "every message after the resume")
    assert comet["received"] == expected
    assert comet["missed"] == 0


def test_eventsource_after_a_server_restart_gets_the_missed_event_then_new_messages(
        start_server, page, forwarder):
    first = start_server(*SSE_RETRY)
    fwd = forwarder(first.port)
    open_page(page, f"http://127.0.0.1:{fwd.port}", "id=dave")
    old_id = send(first, "dave", "before the restart")["message"]
    wait_received(page, ["before the restart"], "the message before the restart")

    head = drop_and_hold(fwd, "dave")
    assert last_event_id(head) == old_id, head.decode(errors="replace")
    first.stop()  # its history goes with it
    second = start_server(*SSE_RETRY)
    fwd.target_port = second.port
    fwd.release()

    page.wait_for(COMET, lambda c: c["missed"] == 1 and c["state"] == "open",
                  what="the missed event from the new server")
    new_id = send(second, "dave", "after the restart")["message"]
    assert new_id.split("-")[0] != old_id.split("-")[0], "a new process has a new epoch"
    wait_received(page, ["before", "after"], "the message after the restart")

    # The missed event's id is a position of the new server: the next resume is clean.
    head = drop_and_hold(fwd, "dave")
    assert last_event_id(head) == new_id, head.decode(errors="replace")
    send(second, "dave", "while away")
    fwd.release()
    expected = ["before the restart", "after the restart", "while away"]
    comet = wait_received(page, expected, "the message sent while away from the new server")
    assert comet["received"] == expected
    assert comet["missed"] == 1
