"""flood.bench at N=200 against the real comet server: the JSON has every figure."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import comet.server  # noqa: F401  (a broken server is a collection error here, never a skip)
from tests.floodservers import ROOT
from tests.realserver import free_port

N = 200

FIGURES = {
    "command", "date", "target", "tcp", "connections_requested", "rate_requested",
    "held", "closed", "closed_reasons", "accept_rate_per_s", "ramp_s",
    "server_pids", "server_processes", "server_rss_before", "server_rss_after",
    "server_kb_per_conn", "server_pss_before", "server_pss_after", "server_pss_kb_per_conn",
    "slab_before", "slab_after", "slab_kb_per_conn",
    "tcp_mem_pages_before", "tcp_mem_pages_after", "tcp_mem_kb_per_conn",
    "tcp_inuse_before", "tcp_inuse_after",
    "client_processes", "client_rss_before", "client_rss_after", "client_kb_per_conn",
    "server_stats_after", "fanout", "series", "plot",
}
FANOUT = {"answer", "answer_s", "expected", "received", "count", "p50_ms", "p99_ms", "max_ms",
          "all_received_ms", "deliveries_per_s", "buckets"}
SERIES = {"t", "active", "closed", "chunks", "attempted", "pending", "client_rss_bytes",
          "server_rss_bytes", "server_cpu_percent"}


def bench(tmp_path, *extra: str) -> dict:
    out, png = tmp_path / "bench.json", tmp_path / "bench.png"
    result = subprocess.run(
        [sys.executable, "-m", "flood.bench", "--connections", str(N), "--rate", "2000",
         "--hold", "0.5", "--interval", "1", "--json", str(out), "--plot", str(png), *extra],
        cwd=ROOT, capture_output=True, text=True, timeout=100)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "server RSS" in result.stdout and "broadcast fan-out" in result.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return json.loads(out.read_text())


def check(doc: dict) -> None:
    assert FIGURES <= set(doc), FIGURES - set(doc)
    assert FANOUT <= set(doc["fanout"]), FANOUT - set(doc["fanout"])
    assert doc["series"] and SERIES <= set(doc["series"][-1])
    assert doc["held"] == N and doc["closed"] == 0
    assert doc["fanout"]["answer"]["delivered"] == N
    assert doc["fanout"]["received"] == N and doc["fanout"]["all_received_ms"] is not None
    assert doc["server_stats_after"]["connections"]["total"] == N
    assert doc["server_rss_after"] > 0 and doc["server_pss_after"] > 0
    assert doc["client_rss_after"] > 0 and doc["client_processes"] == 1
    assert doc["accept_rate_per_s"] > 0


def test_bench_starts_the_server_and_reports_every_figure(tmp_path):
    check(bench(tmp_path))


def test_bench_measures_a_running_server_given_by_target_and_pid(tmp_path):
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "comet.server", "--host", "127.0.0.1", "--port", str(port),
         "--interval", "1"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        doc = bench(tmp_path, "--target", f"http://127.0.0.1:{port}",
                    "--server-pid", str(server.pid))
        assert server.poll() is None  # bench leaves a server it did not start running
    finally:
        server.terminate()
        server.wait(timeout=15)
    check(doc)
    assert doc["server_pids"] == [server.pid]


def test_bench_sse_repeated_broadcasts_churn_and_server_args(tmp_path):
    doc = bench(tmp_path, "--transport", "sse", "--broadcasts", "3", "--churn",
                "--server-args", "--heartbeat 0.5")
    check(doc)
    assert doc["transport"] == "sse" and doc["server_command"][-2:] == ["--heartbeat", "0.5"]
    assert doc["server_stats_after"]["connections"]["events"] == N
    fan = doc["fanout"]
    assert len(fan["broadcasts"]) == 3 and len(fan["all_received_ms_each"]) == 3
    assert all(b["received"] == N for b in fan["broadcasts"])  # each counted on its own
    assert sorted(fan["all_received_ms_each"])[1] == fan["all_received_ms"]  # the median
    churn = doc["churn"]
    assert churn["empty"] and churn["stats"]["timers"] == 0
    assert churn["rss_after"] > 0 and churn["rss_percent"] > 0


def test_bench_modes_run_both_and_print_them_side_by_side(tmp_path):
    out = tmp_path / "modes.json"
    result = subprocess.run(
        [sys.executable, "-m", "flood.bench", "--connections", "50", "--hold", "0.3",
         "--interval", "1", "--modes", "on,off", "--no-plot", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=100)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "--hibernate on | --hibernate off" in result.stdout
    doc = json.loads(out.read_text())
    for mode in ("on", "off"):
        run = doc["modes"][mode]
        assert run["held"] == 50 and run["server_command"][-2:] == ["--hibernate", mode]


def test_bench_unread_clients_leave_data_in_the_socket_buffers(tmp_path):
    out = tmp_path / "unread.json"
    result = subprocess.run(
        [sys.executable, "-m", "flood.bench", "--connections", "50", "--hold", "0.3",
         "--transport", "ws", "--unread", "--unread-bytes", "16384", "--no-plot",
         "--json", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=100)
    assert result.returncode == 0, result.stdout + result.stderr
    doc = json.loads(out.read_text())
    assert doc["held"] == 50 and doc["fanout"] is None
    assert doc["unread"]["bytes_per_connection"] >= 16384
    assert doc["unread"]["delivered"] == [50, 50]


def test_a_broken_comet_server_fails_this_module_instead_of_skipping_it(tmp_path):
    """If ``comet.server`` cannot be imported, every bench figure is unmeasured: an error."""
    (tmp_path / "break_comet_server.py").write_text(
        "import sys\nsys.modules['comet.server'] = None  # import comet.server now fails\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "break_comet_server", "--collect-only", "-q",
         "-p", "no:cacheprovider", "tests/test_flood_bench.py"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert "skipped" not in result.stdout.lower(), result.stdout
    assert result.returncode == pytest.ExitCode.INTERRUPTED, result.stdout
    assert "comet.server" in result.stdout


def test_bench_records_the_arguments_main_was_given_not_sys_argv(tmp_path):
    from flood import bench
    out = tmp_path / "given.json"
    argv = ["--connections", "20", "--hold", "0.3", "--interval", "1", "--no-plot",
            "--json", str(out)]
    assert bench.main(argv) == 0
    assert json.loads(out.read_text())["command"] == ["flood.bench", *argv]
