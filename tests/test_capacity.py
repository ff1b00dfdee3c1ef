"""comet.capacity: the figures, the whole experiment's memory and what fits, as pure arithmetic.

The printed plan is comet.tune's and is tested there (tests/test_tune.py); here only
functions of figures and experiments, and the figures read back from bench documents.
"""

from __future__ import annotations

import json

import pytest

from comet import benchjson, capacity
from comet.capacity import Experiment
from flood.transport import TRANSPORTS as FLOOD_TRANSPORTS
from tests.million import MILLION, MILLION_GREW

#: The million's shape: 56 workers and their master, Redis started, 51 flood processes here.
BENCH_SHAPE = dict(server_processes=57, redis=True, redis_started=True, flood_processes=51)


def million_figures(tmp_path) -> capacity.Figures:
    path = tmp_path / "b1m.json"
    path.write_text(json.dumps(MILLION))
    return benchjson.load_figures(path)


def grows_kib(figures: capacity.Figures, exp: Experiment) -> float:
    return sum(t.kib for t in capacity.memory_terms(figures, exp) if t.grows)


def test_a_bench_document_gives_every_figure_of_the_experiment(tmp_path):
    figures = million_figures(tmp_path)
    assert figures.server_kb == {"test": MILLION["server_pss_kb_per_conn"]}  # PSS, not RSS
    assert figures.unmeasured == ("events", "poll", "ws")                   # stream is /test/
    assert figures.kernel_kb_per_socket == pytest.approx(9.9982 / 2, abs=1e-4)
    assert figures.redis_kb == MILLION["redis_kb_per_conn"]
    assert figures.flood_kb == MILLION["client_kb_per_conn"]
    assert figures.server_process_kb == pytest.approx(680913920 / 57 / 1024)
    assert figures.redis_process_kb == 16146432 / 1024
    # a flood process when ready: the interpreter (default) and the million URLs it read
    each = 6728237056 / 51 / 1024
    assert figures.flood_process_kb + 1_000_000 * figures.flood_url_kb == pytest.approx(each)
    assert figures.measured == (pytest.approx(MILLION_GREW / 1024), 998466)
    assert figures.origin["redis_kb"] == "b1m.json: redis_kb_per_conn"


def test_the_model_predicts_the_millions_growth_within_ten_percent(tmp_path):
    for figures in (million_figures(tmp_path), capacity.DEFAULT_FIGURES):
        predicted = grows_kib(figures, Experiment(998466, **BENCH_SHAPE)) * 1024
        assert predicted == pytest.approx(MILLION_GREW, rel=0.10)


def test_every_component_of_a_bench_on_one_host_is_a_term():
    terms = capacity.memory_terms(capacity.DEFAULT_FIGURES,
                                  Experiment(1_000_000, transport="test", **BENCH_SHAPE))
    kib = {t.name: t.kib for t in terms}
    assert list(kib) == ["server userland, test", "Redis, per id", "flood, per connection",
                         "kernel slab", "server processes' own", "Redis's own",
                         "flood processes' own"]
    assert kib["server userland, test"] == pytest.approx(1_000_000 * 0.43)
    assert kib["kernel slab"] == pytest.approx(2_000_000 * 5.0)        # both ends here
    assert kib["server processes' own"] == pytest.approx(57 * 11_700)
    assert kib["flood processes' own"] == pytest.approx(51 * 26_500 + 1_000_000 * 0.102)
    assert all(t.origin for t in terms)
    assert capacity.memory_needed_kib(capacity.DEFAULT_FIGURES, Experiment(
        1_000_000, transport="test", **BENCH_SHAPE)) == pytest.approx(sum(kib.values()), abs=1)


def test_only_what_runs_here_counts():
    figures = capacity.DEFAULT_FIGURES
    server_only = {t.name for t in capacity.memory_terms(figures, Experiment(1000))}
    assert server_only == {"server userland, poll", "kernel slab", "server processes' own"}
    flood_only = capacity.memory_terms(figures, Experiment(1000, server_processes=0,
                                                           flood_processes=1))
    assert {t.name for t in flood_only} == {"flood, per connection", "kernel slab",
                                            "flood processes' own"}
    assert Experiment(1000, server_processes=0, flood_processes=1).sockets == 1000


def test_the_clients_path_picks_its_figure_and_an_unmeasured_one_the_worst():
    figures = capacity.DEFAULT_FIGURES
    assert figures.server_kb_for("events") == ("events", 0.44)
    assert figures.server_kb_for(None) == ("poll", 0.90)
    assert figures.server_kb_for("nonesuch") == ("poll", 0.90)


def test_floods_transport_names_map_to_the_paths_the_server_serves():
    assert set(capacity.BENCH_TRANSPORTS) == set(FLOOD_TRANSPORTS)
    for name, transport in FLOOD_TRANSPORTS.items():
        assert capacity.BENCH_TRANSPORTS[name] == transport.path.strip("/")
    assert set(capacity.BENCH_TRANSPORTS.values()) == set(capacity.TRANSPORTS)


def test_unread_data_is_memory_and_pages_of_socket_buffers():
    assert capacity.unread_pages(0) == 0
    assert capacity.unread_pages(65536) == 17          # 16 pages and the queue's: ~68 KB here
    exp = Experiment(10_000, unread_bytes=65536)
    unread = [t for t in capacity.memory_terms(capacity.DEFAULT_FIGURES, exp)
              if t.name == "socket buffers, unread"]
    assert unread[0].kib == 10_000 * 17 * 4
    assert capacity.socket_buffer_pages(10_000, 65536, backlog=4000) == 4000 + 170_000
    assert capacity.socket_buffer_pages(10_000, 0, backlog=4000) == 4000


def test_most_connections_is_the_largest_that_fits_with_the_margin():
    figures = capacity.DEFAULT_FIGURES

    def experiment_for(n: int) -> Experiment:
        return Experiment(n, server_processes=3, redis=True, redis_started=True,
                          flood_processes=max(n // 19_936 + 1, 1))

    available = 8 * capacity.KIB_PER_GIB
    most = capacity.most_connections(figures, experiment_for, available, at_most=10_000_000)
    assert 0 < most < 10_000_000
    assert capacity.with_margin(capacity.memory_needed_kib(figures, experiment_for(most))) \
        <= available
    assert capacity.with_margin(capacity.memory_needed_kib(figures, experiment_for(most + 1))) \
        > available
    assert capacity.most_connections(figures, experiment_for, available, at_most=1000) == 1000
    assert capacity.most_connections(figures, experiment_for, 1, at_most=1000) == 0
    assert capacity.with_margin(1000) == 1100


def test_flat_bench_json_is_one_transport_and_default_kernel(tmp_path):
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps({"server_kb_per_conn": 1.5}))
    figures = benchjson.load_figures(bench)
    assert figures.server_kb == {"test": 1.5}
    assert figures.kernel_kb_per_socket == capacity.DEFAULT_FIGURES.kernel_kb_per_socket
    assert figures.origin["kernel_kb_per_socket"].startswith("default: ")
    assert figures.redis_kb == capacity.DEFAULT_FIGURES.redis_kb and figures.measured is None
    bench.write_text(json.dumps({"server_kb_per_conn": 1, "kernel_kb_per_conn": 5,
                                 "loopback": False}))
    assert benchjson.load_figures(bench).kernel_kb_per_socket == 5.0


def test_flood_bench_json_fields_are_read(tmp_path):
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps({"server_kb_per_conn": 16.5, "slab_kb_per_conn": 7.5,
                                 "tcp_mem_kb_per_conn": 0.5, "held": 10000}))
    figures = benchjson.load_figures(bench)
    assert figures.server_kb == {"test": 16.5}
    assert figures.kernel_kb_per_socket == 4.0                  # (7.5 + 0.5) over two ends
    # a PSS growth that is not positive (60 connections: noise) leaves the RSS figure
    bench.write_text(json.dumps({"server_kb_per_conn": 0.5, "server_pss_kb_per_conn": -0.1,
                                 "transport": "sse"}))
    assert benchjson.load_figures(bench).server_kb == {"events": 0.5}
    bench.write_text(json.dumps({"server_kb_per_conn": 16.5, "slab_kb_per_conn": -0.2,
                                 "tcp_mem_kb_per_conn": 0}))
    with pytest.raises(ValueError, match="must be a positive number"):
        benchjson.load_figures(bench)
