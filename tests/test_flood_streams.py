"""flood.worker / flood.reader / flood.sources in-process: held streams cost no greenlet each,
source addresses are bound round robin."""

from __future__ import annotations

import gc

import gevent
import greenlet
import pytest
from gevent.server import StreamServer

from flood.sources import parse_sources
from flood.worker import Flood, Plan
from tests.floodservers import HEAD, chunk, chunk_server


def live_greenlets() -> int:
    return sum(1 for o in gc.get_objects() if isinstance(o, greenlet.greenlet) and not o.dead)


def test_held_streams_are_read_without_a_greenlet_each():
    seen = {}
    before = live_greenlets()  # what earlier tests of this process left running
    with chunk_server() as port:
        urls = [f"http://127.0.0.1:{port}/good/{i}" for i in range(300)]
        flood = Flood(Plan(duration=1.5, concurrency=50), urls, lambda line: None)

        def look():
            if flood.counters.active == 300 and "greenlets" not in seen:
                seen["greenlets"] = live_greenlets()
                seen["chunks_then"] = flood.counters.chunks

        final = flood.run(on_tick=look, tick=0.1)
    assert final["active"] == 300 and final["closed"] == 0
    # 300 server handlers live in this process too; the flood adds only a handful
    assert seen["greenlets"] - before < 300 + 20
    assert final["chunks"] > seen["chunks_then"]  # the streams kept being read


def test_source_addresses_are_bound_round_robin():
    peers = []

    def handle(sock, addr):
        peers.append(addr[0])
        sock.recv(4096)
        sock.sendall(HEAD + chunk("hi\n"))
        while sock.recv(4096):
            pass

    server = StreamServer(("127.0.0.1", 0), handle)
    server.start()
    try:
        urls = [f"http://127.0.0.1:{server.server_port}/test/{i}" for i in range(6)]
        plan = Plan(duration=0.5, sources=parse_sources("127.0.0.2-127.0.0.4"))
        final = Flood(plan, urls, lambda line: None).run()
    finally:
        server.stop(timeout=1)
    assert final["active"] == 6
    assert sorted(peers) == ["127.0.0.2"] * 2 + ["127.0.0.3"] * 2 + ["127.0.0.4"] * 2


def test_stop_ends_a_flood_without_duration():
    with chunk_server() as port:
        flood = Flood(Plan(), [f"http://127.0.0.1:{port}/good/1"], lambda line: None)
        gevent.spawn_later(0.3, flood.stop)
        assert flood.run()["active"] == 1


def test_parse_sources_forms():
    assert parse_sources("127.0.0.2") == ["127.0.0.2"]
    assert parse_sources("127.0.0.2-4") == ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
    assert parse_sources("127.0.0.254-127.0.1.1") == [
        "127.0.0.254", "127.0.0.255", "127.0.1.0", "127.0.1.1"]
    assert parse_sources("127.0.0.0/30") == ["127.0.0.1", "127.0.0.2"]
    assert parse_sources("127.0.0.5, 127.0.0.2") == ["127.0.0.5", "127.0.0.2"]
    for bad in ("", "127.0.0.9-127.0.0.2", "nonsense", "300.0.0.1"):
        with pytest.raises(ValueError):
            parse_sources(bad)


def test_port_warning_names_the_even_half_and_the_whole_range():
    from comet.hostlimits import LINUX_EPHEMERAL_PORTS, ephemeral_ports, ports_per_source
    from flood.sources import port_warning
    half = ports_per_source(ephemeral_ports() or LINUX_EPHEMERAL_PORTS) // 2
    assert port_warning({"127.0.0.1:8000": half}, []) == ""
    assert "the even half" in port_warning({"127.0.0.1:8000": half + 1}, [])
    assert port_warning({"127.0.0.1:8000": half + 1}, ["127.0.0.2", "127.0.0.3"]) == ""
    assert "the rest will fail" in port_warning({"127.0.0.1:8000": 2 * half + 10}, [])


def test_connect_cost_reports_a_row_per_step(capsys):
    from flood.connect_cost import main
    assert main(["--connections", "40", "--step", "20", "--source", "127.0.0.2"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if "connect() mean" in line]
    assert len(rows) == 2 and rows[1].split()[0] == "40"
