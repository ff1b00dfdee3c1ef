"""flood.urls: writing URL files and reading them back, bad lines included."""

from __future__ import annotations

import pytest

from flood import urls
from flood.transport import TRANSPORTS


def test_generate_writes_the_seeds_urls_one_port_by_default():
    assert list(urls.generate(3)) == [
        "http://127.0.0.1:8000/test/1",
        "http://127.0.0.1:8000/test/2",
        "http://127.0.0.1:8000/test/3",
    ]


def test_generate_spreads_round_robin_over_ports():
    got = list(urls.generate(4, "http://localhost:9000", urls.parse_ports("8001-8003")))
    assert got == [
        "http://localhost:8001/test/1",
        "http://localhost:8002/test/2",
        "http://localhost:8003/test/3",
        "http://localhost:8001/test/4",
    ]


def test_parse_ports_accepts_lists_and_ranges_and_refuses_nonsense():
    assert urls.parse_ports("8000,8002-8003") == [8000, 8002, 8003]
    for bad in ("8005-8001", "0", "70000", "x"):
        with pytest.raises(ValueError):
            urls.parse_ports(bad)


def test_command_line_prints_n_lines(capsys):
    assert urls.main(["5", "--ports", "8001-8002", "--start", "10"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 5
    assert lines[0] == "http://127.0.0.1:8001/test/10"
    assert lines[4] == "http://127.0.0.1:8001/test/14"


@pytest.mark.parametrize("name", list(TRANSPORTS))
def test_command_line_transport_takes_the_path_the_flood_requests(capsys, name):
    assert urls.main(["1", "--transport", name]) == 0
    assert capsys.readouterr().out == f"http://127.0.0.1:8000{TRANSPORTS[name].path}1\n"


def test_parse_url_gives_host_port_and_request_target():
    assert urls.parse_url("http://127.0.0.1:8001/test/7?id=a&id=b") == (
        "127.0.0.1", 8001, "/test/7?id=a&id=b")
    assert urls.parse_url("http://example") == ("example", 80, "/")


@pytest.mark.parametrize("line", [
    "https://127.0.0.1/test/1", "127.0.0.1:8000/test/1", "http://:8000/x",
    "http://127.0.0.1:99999/x", "http://127.0.0.1:8000/a b", "http://h/x#frag",
])
def test_parse_url_refuses_what_the_flood_cannot_request(line):
    with pytest.raises(urls.BadUrl):
        urls.parse_url(line)


def test_bad_lines_are_skipped_counted_and_the_first_few_named():
    lines = ["", "# a comment", "http://127.0.0.1:8000/test/1", "   "]
    lines += [f"garbage {i}" for i in range(7)]
    lines += ["http://127.0.0.1:8000/test/2\n"]
    got = urls.read_urls(lines)
    assert got.urls == ["http://127.0.0.1:8000/test/1", "http://127.0.0.1:8000/test/2"]
    assert (got.blank, got.bad) == (3, 7)
    assert len(got.bad_examples) == urls.BAD_EXAMPLES
    assert got.bad_examples[0].startswith("line 5:")
    text = got.describe_skipped()
    assert "skipped 7 bad URL line(s)" in text and "and 2 more" in text


def test_undecodable_bytes_are_a_bad_line_not_a_crash(tmp_path):
    path = tmp_path / "urls.txt"
    path.write_bytes(b"http://127.0.0.1:8000/test/1\n\xff\xfe\x00junk\n")
    got = urls.load_urls(str(path))
    assert got.urls == ["http://127.0.0.1:8000/test/1"]
    assert got.bad == 1


def test_each_process_keeps_only_its_share_and_checks_only_that(tmp_path):
    path = tmp_path / "urls.txt"
    good = [f"http://127.0.0.1:8000/test/{i}" for i in range(7)]
    lines = [good[0], "# comment", good[1], "", "junk", *good[2:]]
    path.write_text("\n".join(lines) + "\n")
    # the lines that are not blank or comments, numbered from 0: junk is number 2
    candidates = [good[0], good[1], "junk", *good[2:]]
    shares = [urls.load_urls(str(path), index, 3) for index in range(3)]
    assert [share.urls for share in shares] == [candidates[0::3], candidates[1::3],
                                                [u for u in candidates[2::3] if u != "junk"]]
    assert [share.bad for share in shares] == [0, 0, 1]
    assert sorted(sum((share.urls for share in shares), [])) == sorted(good)
