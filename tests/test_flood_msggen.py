"""flood.msggen and flood.ids: paced, stamped messages; errors counted, never fatal."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from flood.ids import Popularity, parse_ids
from flood.latency import TS_TOKEN
from tests.floodservers import publish_server, run_module
from tests.realserver import free_port


def test_messages_carry_a_timestamp_and_never_exceed_the_rate(tmp_path):
    received: list = []
    out = tmp_path / "msggen.json"
    with publish_server(received) as port:
        result = run_module("flood.msggen", "--base", f"http://127.0.0.1:{port}",
                            "--ids", "1-20", "--rate", "40", "--duration", "1",
                            "--report", "0.5", "--json", str(out))
    assert result.returncode == 0, result.stderr
    totals = json.loads(out.read_text())["result"]
    assert 0 < totals["sent"] <= 40 + 1  # paced: message k is due at k/rate
    assert totals["sent"] == totals["ok"] == len(received) == totals["delivered"]
    assert totals["errors"] == 0 and totals["statuses"] == {"200": totals["sent"]}
    assert all(TS_TOKEN.search(body) for _, body in received)
    assert {ident for ident, _ in received} <= {str(i) for i in range(1, 21)}
    assert "Total:" in result.stdout and "errors 0" in result.stdout


def test_server_errors_are_counted_by_kind(tmp_path):
    received: list = []
    out = tmp_path / "msggen.json"
    with publish_server(received) as port:
        result = run_module("flood.msggen", "--base", f"http://127.0.0.1:{port}",
                            "--ids", "bad1,bad2", "--rate", "20", "--duration", "0.5",
                            "--json", str(out))
    totals = json.loads(out.read_text())["result"]
    assert result.returncode == 1  # nothing was accepted
    assert totals["errors"] == totals["sent"] > 0
    assert totals["error_kinds"] == {"HTTP 500": totals["sent"]}
    assert "HTTP 500" in result.stdout


def test_unreachable_server_is_errors_not_a_crash(tmp_path):
    out = tmp_path / "msggen.json"
    result = run_module("flood.msggen", "--base", f"http://127.0.0.1:{free_port()}",
                        "--rate", "10", "--duration", "0.3", "--json", str(out))
    totals = json.loads(out.read_text())["result"]
    assert result.returncode == 1
    assert totals["error_kinds"] == {"connection error": totals["sent"]}


def test_ports_spread_ids_as_flood_urls_does():
    from flood.msggen import Generator
    from flood.urls import generate
    gen = Generator("http://127.0.0.1:8000", parse_ids("1-6"), 1, ports=[8001, 8002, 8003])
    stream_port = {u.rsplit("/", 1)[1]: u.split(":")[2].split("/")[0]
                   for u in generate(6, ports=[8001, 8002, 8003])}
    for ident in map(str, range(1, 7)):
        assert gen.url_for(ident) == f"http://127.0.0.1:{stream_port[ident]}/send/{ident}"


def test_skew_makes_the_first_ids_popular():
    ids = parse_ids("1-1000")
    zipf_pop, flat_pop = Popularity(ids, skew=1.0, seed=1), Popularity(ids, skew=0.0, seed=1)
    zipf = Counter(zipf_pop.pick() for _ in range(20000))
    flat = Counter(flat_pop.pick() for _ in range(20000))
    assert zipf["1"] > 10 * flat["1"]
    assert zipf["1"] > zipf["10"] > zipf["500"]


def test_parse_ids():
    assert parse_ids("1-3,alice") == ["1", "2", "3", "alice"]
    assert parse_ids("a-b") == ["a-b"]
    for bad in ("", "5-1"):
        with pytest.raises(ValueError):
            parse_ids(bad)


def test_ctrl_c_stops_the_generator_with_its_totals():
    import signal
    import sys

    import gevent.subprocess

    from tests.floodservers import ROOT
    received: list = []
    with publish_server(received) as port:
        proc = gevent.subprocess.Popen(
            [sys.executable, "-m", "flood.msggen", "--base", f"http://127.0.0.1:{port}",
             "--rate", "50", "--report", "0.2"], cwd=ROOT, stdout=gevent.subprocess.PIPE,
            text=True)
        first = proc.stdout.readline()
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=30)
    assert first.startswith("Sent:")
    assert proc.returncode == 0
    assert "Total:" in rest


def test_batch_sends_many_messages_per_request_as_newline_delimited_json(tmp_path):
    received: list = []
    paths: list = []
    out = tmp_path / "msggen.json"
    with publish_server(received, paths) as port:
        result = run_module("flood.msggen", "--base", f"http://127.0.0.1:{port}",
                            "--ids", "1-20", "--rate", "400", "--duration", "1",
                            "--concurrency", "2", "--batch", "50", "--json", str(out))
    assert result.returncode == 0, result.stderr
    totals = json.loads(out.read_text())["result"]
    assert totals["sent"] == totals["ok"] == len(received) == totals["delivered"] > 0
    assert set(paths) == {"/send"} and len(paths) < totals["sent"]
    assert all(TS_TOKEN.search(body) for _, body in received)


def test_batch_against_the_real_server_is_all_accepted(start_server, tmp_path):
    server = start_server()
    out = tmp_path / "msggen.json"
    result = run_module("flood.msggen", "--base", server.url, "--ids", "1-30", "--rate", "300",
                        "--duration", "0.5", "--batch", "20", "--json", str(out))
    assert result.returncode == 0, result.stderr
    totals = json.loads(out.read_text())["result"]
    assert totals["errors"] == 0 and totals["statuses"] == {"200": totals["sent"]}
    assert server.stats()["messages"]["in"] == totals["sent"] > 0
