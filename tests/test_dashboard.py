"""``GET /dashboard`` in a real headless Chromium, and its stream ``/dashboard/events``.

The page test loads the dashboard from a real server, opens streams and
publishes over real sockets, and waits (with a deadline) until the page's own
figures (``window.dashboard``, what it drew from its EventSource) show them.
The stream's bounds are tested over raw HTTP: who may ask (``--metrics-from``),
how many streams one process holds, ``?every=``, the end at shutdown, and the
whole server's sums under ``--workers``.

With ``COMET_DASHBOARD_PNG=path`` the page test also writes its screenshot there
(docs/dashboard.png is made so).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import requests

from comet.dashboard import MOST_STREAMS, Dashboards, event, every_of
from comet.inputs import BadRequest
from tests.chunked import open_stream
from tests.realserver import post, wait_until
from tests.sse import open_events
from tests.test_metrics import get_from
from tests.workerservers import WorkersServer, events_on_every_worker

DASHBOARD = "window.dashboard"

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_the_page_draws_connections_and_messages_as_they_change(start_server, page, tmp_path):
    server = start_server("--interval", "1")  # a /test/ stream's leaving is seen at a tick
    page.viewport(1000, 860)
    page.navigate(f"{server.url}/dashboard?every=0.5")
    page.wait_for(DASHBOARD, lambda d: d["state"] == "open" and d["events"] >= 2
                  and d["latest"]["connections"]["total"] == 0, what="the empty server shown")

    streams = [open_events(server.port, f"/events/d{n}") for n in range(3)]
    chunked = open_stream(server.port, "/test/d3")
    for stream in streams:
        stream.next_event()  # the opening: logged in
    chunked.next_chunk()
    shown = page.wait_for(DASHBOARD, lambda d: d["latest"]["connections"].get("events") == 3
                          and d["latest"]["connections"].get("test") == 1,
                          what="four connections shown by transport")
    assert shown["latest"]["connections"]["total"] == 4 and shown["latest"]["ids"] == 4
    assert shown["latest"]["kb"] is not None, "memory per connection once some are held"

    for n in range(10):
        assert post(server, "/send/d0", b"one %d" % n)["delivered"] == 1
    for n in range(5):
        assert post(server, "/broadcast", b"all %d" % n)["delivered"] == 4
    shown = page.wait_for(DASHBOARD, lambda d: d["latest"]["messages"]["out"] == 10 + 5 * 4
                          and d["peakOutRate"] > 0 and d["latest"]["messages"]["in"] == 15,
                          what="the deliveries and their rate shown")
    assert shown["polylines"] >= 3, "a line in each chart"
    assert shown["points"] <= 300

    png = page.screenshot(tmp_path / "dashboard.png")
    assert png.startswith(PNG_SIGNATURE) and len(png) > 10_000
    if os.environ.get("COMET_DASHBOARD_PNG"):
        shutil.copyfile(tmp_path / "dashboard.png", Path(os.environ["COMET_DASHBOARD_PNG"]))

    for stream in streams:
        stream.close()
    chunked.close()
    page.wait_for(DASHBOARD, lambda d: d["latest"]["connections"]["total"] == 0,
                  what="the closed connections gone from the page")


def test_the_page_and_its_stream_answer_only_the_peers_of_metrics_from(start_server):
    server = start_server("--metrics-from", "127.0.0.1")
    for path in ("/dashboard", "/dashboard/events", "/dashboard/events?every=1"):
        status, body = get_from(server, path, "127.0.0.2")
        assert status == 403 and body == "not from this address (--metrics-from)\n", path
    status, body = get_from(server, "/dashboard", "127.0.0.1")
    assert status == 200 and "<svg" in body and "EventSource" in body
    assert "//" not in body.replace("// ", ""), "nothing fetched from elsewhere"
    assert " src=" not in body and "<link" not in body
    stream = open_events(server.port, "/dashboard/events")
    snapshot = json.loads(stream.next_message().data)
    assert snapshot["limits"]["refused"]["metrics from elsewhere"] == 3
    stream.close()


def test_a_process_holds_a_bounded_number_of_dashboard_streams(start_server):
    server = start_server()
    held = [open_events(server.port, "/dashboard/events") for _ in range(MOST_STREAMS)]
    for stream in held:
        stream.next_message()
    refused = requests.get(server.url + "/dashboard/events", timeout=10)
    assert refused.status_code == 503 and refused.headers["Retry-After"]
    assert f"{MOST_STREAMS} dashboard streams held already" in refused.text
    held.pop().close()
    answers = []

    def admitted() -> bool:
        answer = requests.get(server.url + "/dashboard/events", timeout=10, stream=True)
        answer.close()
        answers.append(answer.status_code)
        return answer.status_code == 200

    # The server learns the viewer left when a write fails (a tick or two later).
    wait_until(admitted, what="the freed place given again")
    assert set(answers[:-1]) <= {503}
    assert server.stats()["limits"]["refused"]["dashboard streams"] >= 1
    for stream in held:
        stream.close()


@pytest.mark.parametrize("every", ["0", "0.1", "61", "abc", "nan", "", "1e999"])
def test_every_out_of_bounds_is_a_400(start_server, every):
    server = start_server()
    answer = requests.get(f"{server.url}/dashboard/events?every={every}", timeout=10)
    assert answer.status_code == 400 and "0.5 to 60" in answer.text
    server.wait_for_log("400 GET /dashboard/events: every=")


def test_a_dashboard_stream_ends_cleanly_at_shutdown(start_server):
    server = start_server()
    stream = open_events(server.port, "/dashboard/events?every=60")
    first = stream.next_event()
    assert first.retry is not None and first.data is None
    assert json.loads(stream.next_message().data)["connections"]["total"] == 0
    server.proc.terminate()
    last = stream.next_message()
    assert (last.event, last.data) == ("shutdown", "server shutting down")
    assert stream.response.next_chunk() == b"", "the last chunk: a clean end"
    assert server.proc.wait(15) == 0
    stream.close()


def test_the_stream_shows_the_whole_servers_sums_across_workers(redis_server):
    srv = WorkersServer("--redis", redis_server.url, "--interval", "60").start()
    try:
        subscribers = events_on_every_worker(srv)
        dashboard = open_events(srv.port, "/dashboard/events")
        snapshot = json.loads(dashboard.next_message().data)
        workers = snapshot["workers"]
        assert len(workers) == 2 and all("error" not in w for w in workers)
        assert snapshot["connections"]["events"] == len(subscribers) == sum(
            w["connections"]["events"] for w in workers)
        dashboard.close()
        for stream in subscribers:
            stream.close()
    finally:
        srv.stop()


# -- the pure parts -----------------------------------------------------------------------


def test_every_is_read_from_the_query_and_bounded():
    assert every_of("") == 1.0 and every_of("every=2.5") == 2.5 and every_of("x=1") == 1.0
    assert every_of("every=0.5") == 0.5 and every_of("every=60") == 60.0
    for bad in ("every=", "every=0.49", "every=inf", "every=-1", "every=" + "9" * 400):
        with pytest.raises(BadRequest) as refused:
            every_of(bad)
        assert refused.value.status.startswith("400") and len(refused.value.reason) < 100


def test_an_event_is_one_data_line_of_json():
    data = event({"text": "two\nlines", "n": 1})
    assert data.startswith(b"data: ") and data.endswith(b"\n\n") and data.count(b"\n") == 2
    assert json.loads(data[6:]) == {"text": "two\nlines", "n": 1}


def test_streams_ticking_together_share_one_snapshot():
    taken = []

    def snapshot() -> dict:
        taken.append(1)
        return {"n": len(taken)}

    shared = Dashboards(snapshot, shared_for=3600.0)
    assert shared.fresh() == shared.fresh() == event({"n": 1}) and len(taken) == 1
    each = Dashboards(snapshot, shared_for=0.0)
    assert each.fresh() != each.fresh() and len(taken) == 3


def test_a_stream_gives_its_place_back_once_iterated_or_not():
    dashboards = Dashboards(dict)
    streams = [dashboards.open("") for _ in range(MOST_STREAMS)]
    with pytest.raises(BadRequest) as full:
        dashboards.open("")
    assert full.value.status.startswith("503") and full.value.limit == "dashboard streams"
    streams[0].close()
    streams[0].close()
    assert dashboards.held == MOST_STREAMS - 1
    body = iter(streams[1])
    assert next(body).startswith(b"retry: ") and next(body) == event({})
    dashboards.stop()
    assert next(body) == b"event: shutdown\ndata: server shutting down\n\n"
    with pytest.raises(StopIteration):
        next(body)
    with pytest.raises(BadRequest) as stopping:
        dashboards.open("")
    assert "shutting down" in stopping.value.reason
