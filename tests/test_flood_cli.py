"""``python -m flood`` end to end against real little servers (see tests/floodservers.py)."""

from __future__ import annotations

import json
import re

from tests.floodservers import chunk_server, run_flood, write_urls
from tests.realserver import free_port

STATS = re.compile(r"^Stats: \{(\d+),(\d+),(\d+)\}$", re.M)


def last_stats(out: str) -> tuple[int, int, int]:
    return tuple(int(x) for x in STATS.findall(out)[-1])


def test_broken_streams_are_closed_with_their_reason_and_the_flood_goes_on(tmp_path):
    with chunk_server() as port:
        paths = [f"/good/{i}" for i in range(5)] + ["/midchunk/1", "/malformed/1",
                                                   "/end/1", "/missing/1"]
        result = run_flood(write_urls(tmp_path, port, paths), "--wait", "0",
                           "--report", "0.5", "--duration", "1.5")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert re.search(r"^Closed: closed mid-chunk \(http://\S+/midchunk/1\)$", out, re.M)
    assert re.search(r"^Closed: malformed chunk size b'zz' \(http://\S+/malformed/1\)$", out, re.M)
    assert re.search(r"^Closed: stream ended \(http://\S+/end/1\)$", out, re.M)
    assert re.search(r"^Closed: status 404 \(http://\S+/missing/1\)$", out, re.M)
    active, closed, chunks = last_stats(out)
    assert (active, closed) == (5, 4)
    # five welcomes + ticks, plus 1 (midchunk) + 1 (malformed) + 3 (end) chunks
    assert chunks >= 5 + 5


def test_duration_ends_the_run_with_a_summary_and_a_json_file(tmp_path):
    out_json = tmp_path / "run.json"
    with chunk_server() as port:
        result = run_flood(write_urls(tmp_path, port, [f"/good/{i}" for i in range(20)]),
                           "--wait", "1", "--report", "0.3", "--duration", "1",
                           "--json", str(out_json))
    assert result.returncode == 0, result.stderr
    assert "Summary:" in result.stdout
    assert last_stats(result.stdout)[:2] == (20, 0)
    doc = json.loads(out_json.read_text())
    summary = doc["summary"]
    assert summary["connected"] == summary["active_at_end"] == summary["attempted"] == 20
    assert summary["closed"] == 0 and summary["procs"] == 1
    assert summary["chunks"] >= 20
    assert summary["client_rss_ready_bytes"] > 0 and summary["client_kb_per_conn"] is not None
    assert doc["series"] and {"t", "active", "closed", "chunks", "latency"} <= set(doc["series"][0])


def test_two_processes_print_one_summed_line(tmp_path):
    out_json = tmp_path / "run.json"
    with chunk_server() as port:
        paths = [f"/good/{i}" for i in range(6)] + ["/ts/1", "/ts/2", "/malformed/1"]
        result = run_flood(write_urls(tmp_path, port, paths), "--wait", "0", "--procs", "2",
                           "--report", "0.5", "--duration", "2", "--json", str(out_json))
    assert result.returncode == 0, result.stderr
    active, closed, _ = last_stats(result.stdout)
    assert (active, closed) == (8, 1)
    summary = json.loads(out_json.read_text())["summary"]
    assert summary["procs"] == 2
    assert summary["latency"]["count"] == 2  # one stamped message on each of the two /ts/ streams
    assert summary["closed_reasons"] == {"malformed chunk size": 1}


def test_unreachable_server_counts_closed_and_exits_nonzero(tmp_path):
    port = free_port()
    result = run_flood(write_urls(tmp_path, port, ["/test/1", "/test/2"]), "--wait", "0",
                       "--report", "0.2")
    assert result.returncode == 1
    assert result.stdout.count("Closed: Connection refused") == 2
    assert last_stats(result.stdout) == (0, 2, 0)
    assert "no connection was ever established" in result.stderr


def test_bad_url_lines_are_skipped_named_and_the_rest_flooded(tmp_path):
    with chunk_server() as port:
        urls = tmp_path / "urls.txt"
        urls.write_text(f"# header\n\nnot a url\nhttp://127.0.0.1:{port}/good/1\n"
                        "https://127.0.0.1/x\n")
        result = run_flood(str(urls), "--wait", "0", "--report", "0.3", "--duration", "0.6")
    assert result.returncode == 0, result.stderr
    assert "skipped 2 bad URL line(s): line 3:" in result.stderr
    assert last_stats(result.stdout)[:2] == (1, 0)


def test_a_file_of_nothing_usable_is_a_usage_error(tmp_path):
    urls = tmp_path / "urls.txt"
    urls.write_text("# only comments\n\n")
    assert run_flood(str(urls)).returncode == 2


def test_an_unknown_transport_is_refused_clearly(tmp_path):
    urls = write_urls(tmp_path, 8000, ["/test/1"])
    result = run_flood(urls, "--transport", "carrier-pigeon")
    assert result.returncode == 2
    assert "--transport" in result.stderr and "sse" in result.stderr


def interrupt_after_first_stats(args: list[str]) -> tuple[int, str]:
    """Start the flood, wait for its first Stats line, send SIGINT as Ctrl-C would."""
    import signal
    import sys

    import gevent.subprocess

    from tests.floodservers import ROOT
    proc = gevent.subprocess.Popen([sys.executable, "-m", "flood", *args], cwd=ROOT,
                                   stdout=gevent.subprocess.PIPE, text=True)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("Stats:"):
            proc.send_signal(signal.SIGINT)
            break
    rest, _ = proc.communicate(timeout=30)
    return proc.returncode, "".join(lines) + rest


def test_ctrl_c_prints_the_summary_and_closes_everything(tmp_path):
    with chunk_server() as port:
        urls = write_urls(tmp_path, port, [f"/good/{i}" for i in range(4)])
        for extra in ([], ["--procs", "2"]):
            code, out = interrupt_after_first_stats([urls, "--wait", "0", "--report", "0.5",
                                                     *extra])
            assert code == 0, out
            assert "Summary:" in out
            assert last_stats(out)[:2] == (4, 0)
