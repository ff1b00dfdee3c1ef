"""flood.precheck: bench's flags against a host's limits, each refusal with its limit and fix.

The hosts here are plain values (:class:`flood.precheck.Host`): the comparisons and the
wording are pure functions of them. Reading the real host is tested against /proc;
bench refusing as a process, starting nothing, is in tests/test_flood_bench.py.
"""

from __future__ import annotations

import resource

import pytest

from comet import capacity, hostlimits
from flood import bench, precheck
from flood.precheck import Host

GIB = capacity.KIB_PER_GIB

#: A host like this one: 23 GiB free, 2.4 M files, 20,000 per process, the default ports.
ROOMY = Host(available_kib=23 * GIB, file_max=2_466_170, files_in_use=20_000,
             nofile_hard=20_000, port_range=(32768, 60999), somaxconn=65535,
             tcp_mem=[287898, 383867, 575796])
#: The bench of the million (docs/benchmarks.rst), which this host held.
MILLION = ["--connections", "1000000", "--workers", "56", "--redis-server", "--rate", "3500",
           "--source", "127.0.0.2-127.0.0.250"]


def args(*argv: str):
    return bench._checked(bench.build_parser(), list(argv))


def host(**changes) -> Host:
    return Host(**{**ROOMY.__dict__, **changes})


def refusals(argv, on: Host = ROOMY) -> list[str]:
    return precheck.check(args(*argv), on).refusals


def test_a_small_run_and_the_million_fit_this_host():
    assert refusals(["--connections", "200"]) == []
    assert refusals(MILLION) == []


def test_too_little_memory_is_refused_with_the_most_connections_that_fit():
    found = refusals(MILLION, host(available_kib=9 * GIB))
    assert len(found) == 1 and found[0].startswith("memory: 1,000,000 connections need 13.75 GiB")
    assert "9.00 GiB available (MemAvailable): lower --connections to ~" in found[0]
    most = int(found[0].split("~")[1].split()[0].replace(",", ""))
    exp = precheck.experiment(args(*MILLION), most, 20_000)
    assert capacity.with_margin(capacity.memory_needed_kib(capacity.DEFAULT_FIGURES, exp)) \
        <= 9 * GIB
    assert 500_000 < most < 700_000
    nothing = refusals(MILLION, host(available_kib=GIB // 2))[0]
    assert nothing.endswith("free memory (not one connection fits beside the processes' own)")


def test_unknown_free_memory_is_a_refusal_not_a_guess():
    found = refusals(["--connections", "200"], host(available_kib=None))
    assert found == [found[0]] and "MemAvailable is not in /proc/meminfo" in found[0]


def test_too_few_files_system_wide_names_file_max_and_the_files_in_use():
    found = refusals(MILLION, host(file_max=1_500_000, files_in_use=100_000))
    assert found == [
        "files: 1,000,000 connections open 2,060,264 files here (2,000,000 sockets and what "
        "each process keeps for itself), fs.file-max 1,500,000 less 100,000 in use "
        "(fs.file-nr) leaves 1,400,000: sysctl -w fs.file-max=2225800 or lower --connections "
        "to ~660,000"]


def test_connections_beyond_one_process_s_files_say_how_many_workers():
    found = refusals(["--connections", "30000", "--source", "127.0.0.2-127.0.0.3"])
    assert found == ["open files: 30,000 connections over 1 server process(es) need 31,000 "
                     "files in each, RLIMIT_NOFILE hard is 20,000: --workers 2 --redis-server "
                     "(at most 19,000 connections each)"]
    assert refusals(["--connections", "30000", "--source", "127.0.0.2-127.0.0.3",
                     "--workers", "2", "--redis-server"]) == []


def test_too_few_flood_processes_given_by_procs_is_refused():
    found = refusals(["--connections", "30000", "--workers", "2", "--redis-server",
                      "--source", "127.0.0.2-127.0.0.3", "--procs", "1"])
    assert found == ["open files: 30,000 connections over --procs 1 flood processes need "
                     "30,064 files in each, RLIMIT_NOFILE hard is 20,000: --procs 2, or leave "
                     "--procs out (bench then starts as many as the limit needs)"]


def test_too_few_source_addresses_name_source_and_the_range_that_fits():
    found = refusals([*MILLION[:-1], "127.0.0.2-127.0.0.5"])
    assert found == ["ports: 1,000,000 connections need 36 source addresses (28,232 ephemeral "
                     "ports each: net.ipv4.ip_local_port_range 32768 60999), --source gives 4: "
                     "--source 127.0.0.2-127.0.0.37, or 127.0.0.2-127.0.0.72 to keep each "
                     "address under half the range, where connect() stays fast"]
    assert "without --source there is 1" in refusals(MILLION[:-2])[0]
    wide = refusals(MILLION[:-2], host(port_range=(1024, 65535)))[0]
    assert "need 16 source addresses (64,512 ephemeral ports each" in wide


def test_more_addresses_than_loopback_has_means_more_hosts():
    found = [r for r in refusals(["--connections", str(10 ** 12)]) if r.startswith("ports")]
    assert found[0].endswith("more than 127.0.0.0/8 holds from 127.0.0.2: run the flood on "
                             "more hosts")


def test_a_remote_target_needs_addresses_of_this_hosts_interfaces():
    found = refusals(["--connections", "100000", "--target", "http://10.1.2.3:8000",
                      "--server-pid", "1"])
    assert found == [found[0]] and found[0].endswith(
        "without --source there is 1: --source with 4 addresses of this host's interfaces")


def test_a_backlog_shorter_than_two_seconds_of_arrivals_is_refused():
    found = refusals(MILLION, host(somaxconn=4096))
    assert found == ["listen backlog: --rate 3500 brings 7,000 connections in 2 s, which a busy "
                     "server must hold in its backlog; net.core.somaxconn 4,096 caps it: sysctl "
                     "-w net.core.somaxconn=7000 or lower --rate to 2048"]
    assert refusals(["--connections", "200", "--rate", "3500"], host(somaxconn=128)) != []
    assert refusals(["--connections", "100", "--rate", "3500"], host(somaxconn=128)) == []


def test_unread_data_is_memory_and_socket_buffer_pages():
    argv = ["--connections", "10000", "--workers", "2", "--redis-server", "--unread"]
    assert refusals(argv) == []                              # 10,000 x 17 pages: 170,000 pages
    found = refusals(argv, host(tcp_mem=[1000, 2000, 100_000]))
    assert found == ["socket buffers: 10,000 connections with --unread-bytes 65,536 each need "
                     "174,000 pages, net.ipv4.tcp_mem allows 100,000 at most: sysctl -w "
                     "net.ipv4.tcp_mem='1000 2000 174000' or lower --connections or "
                     "--unread-bytes"]
    terms = precheck.check(args(*argv), ROOMY).summary()["terms"]
    assert terms["socket buffers, unread"] == 10_000 * 17 * 4096


def test_a_running_target_is_checked_only_for_what_the_flood_needs():
    tight = host(somaxconn=16, tcp_mem=[1, 2, 3], available_kib=GIB)
    argv = ["--connections", "10000", "--target", "http://127.0.0.1:8000", "--server-pid", "1"]
    assert refusals(argv, tight) == []
    terms = precheck.check(args(*argv), tight).summary()["terms"]
    assert set(terms) == {"flood, per connection", "kernel slab", "flood processes' own"}
    assert terms["kernel slab"] == 10_000 * 5 * 1024                  # the client ends only


def test_every_refusal_of_a_run_that_fits_nothing_is_given_at_once():
    found = refusals(["--connections", "50000000"])
    assert [r.split(":")[0] for r in found] == ["memory", "files", "open files", "ports"]
    assert "lower --connections to ~1,700,000 or free memory" in found[0]


def test_the_summary_is_the_prediction_in_bytes():
    verdict = precheck.check(args(*MILLION), ROOMY)
    summary = verdict.summary()
    assert summary["predicted_bytes"] == sum(summary["terms"].values())
    assert summary["predicted_growth_bytes"] == pytest.approx(1_000_000 * 10.97 * 1024, rel=0.01)
    assert summary["with_margin_bytes"] > summary["predicted_bytes"]
    assert any(line.strip().startswith("total while clients read") for line in verdict.plan)


@pytest.mark.parametrize("n, shown", [(1_141_948, 1_100_000), (638_765, 630_000), (45, 45),
                                      (0, 0), (999, 990)])
def test_about_rounds_down_to_two_significant_figures(n, shown):
    assert precheck.about(n) == shown


def test_the_host_read_from_proc_is_this_hosts():
    here = precheck.read_host()
    assert here.available_kib > 0 and here.file_max > 0 and here.files_in_use > 0
    assert here.nofile_hard in (resource.getrlimit(resource.RLIMIT_NOFILE)[1], 1 << 20)
    assert here.port_range == hostlimits.ephemeral_ports()
    assert here.somaxconn > 0 and len(here.tcp_mem) == 3
