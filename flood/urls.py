"""URL lists for the flood: writing them (``python -m flood.urls``) and reading them back.

This module owns the URL file format: one ``http://host[:port]/path`` a line, blank
lines and ``#`` comments allowed. Reading never raises on a bad line: the line is
skipped, counted, and the first few are kept so the flood can name them. It knows
nothing of sockets; a :class:`Destination` is what the connecting code needs from a URL.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import NamedTuple, TextIO
from urllib.parse import urlsplit

from flood.transport import TRANSPORTS

#: How many bad lines a :class:`UrlList` keeps verbatim for the error message.
BAD_EXAMPLES = 5


class Destination(NamedTuple):
    """Where one connection goes: parsed once per connection, not kept for the run."""

    host: str
    port: int
    path: str  #: path plus query, as sent on the request line


class BadUrl(ValueError):
    """A line that is not an ``http://`` URL we can request."""


def parse_url(url: str) -> Destination:
    """Split an URL into host, port and request target; why it is bad, if it is."""
    if not url or any(c.isspace() for c in url):
        raise BadUrl("empty or contains whitespace")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise BadUrl(str(exc)) from None
    if parts.scheme != "http":
        raise BadUrl(f"scheme {parts.scheme or '(none)'!r} is not http")
    if not parts.hostname:
        raise BadUrl("no host")
    if parts.fragment:
        raise BadUrl("has a #fragment")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return Destination(parts.hostname, port if port is not None else 80, path)


@dataclass
class UrlList:
    """The good URLs of a file, and an account of the lines that were skipped."""

    urls: list[str] = field(default_factory=list)
    blank: int = 0  #: blank lines and ``#`` comments
    bad: int = 0  #: lines that are not usable URLs
    bad_examples: list[str] = field(default_factory=list)  #: "line N: why: text"

    def describe_skipped(self) -> str:
        """One line for the operator, empty when nothing was wrong."""
        if not self.bad:
            return ""
        unnamed = self.bad - len(self.bad_examples)
        more = f"; and {unnamed} more" if unnamed else ""
        return f"skipped {self.bad} bad URL line(s): " + "; ".join(self.bad_examples) + more


def read_urls(lines: Iterable[str], index: int = 0, count: int = 1) -> UrlList:
    """Keep the usable URLs; a bad line is counted and never stops the flood.

    With ``count`` > 1 this is one flood process's share: line number ``index``,
    ``index + count``, ... of the lines that are not blank or comments, and only
    those are checked (a bad one is skipped, and counted, by the process whose
    share it is). A million URLs cost each of 50 processes 128 MB and 6 s of CPU
    when each kept and checked them all.
    """
    result = UrlList()
    candidate = -1
    for lineno, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            result.blank += 1
            continue
        candidate += 1
        if candidate % count != index:
            continue
        try:
            parse_url(line)
        except BadUrl as exc:
            result.bad += 1
            if len(result.bad_examples) < BAD_EXAMPLES:
                result.bad_examples.append(f"line {lineno}: {exc}: {line[:80]!r}")
            continue
        result.urls.append(line)
    return result


def load_urls(path: str, index: int = 0, count: int = 1) -> UrlList:
    """Read an URL file (``-`` is standard input), or one process's share of it
    (:func:`read_urls`). Undecodable bytes count as bad lines."""
    if path == "-":
        return read_urls(sys.stdin, index, count)
    with open(path, encoding="utf-8", errors="replace") as fh:
        return read_urls(fh, index, count)


def parse_ports(spec: str) -> list[int]:
    """``8000``, ``8000-8005`` or ``8000,8002,8004`` to a list of ports."""
    ports: list[int] = []
    for part in spec.split(","):
        lo, sep, hi = part.strip().partition("-")
        first, last = int(lo), int(hi) if sep else int(lo)
        if not (0 < first <= last < 65536):
            raise ValueError(f"bad port range {part!r}")
        ports.extend(range(first, last + 1))
    return ports


def generate(n: int, base: str = "http://127.0.0.1:8000", ports: list[int] | None = None,
             path: str = "/test/", start: int = 1) -> Iterable[str]:
    """The seed's URL file, ids ``start..start+n-1``, ports taken round robin."""
    dest = parse_url(base.rstrip("/") + "/")
    host = f"[{dest.host}]" if ":" in dest.host else dest.host
    ports = ports or [dest.port]
    prefix = "/" + path.strip("/") + "/"
    for i in range(n):
        yield f"http://{host}:{ports[i % len(ports)]}{prefix}{start + i}"


def write_urls(out: TextIO, urls: Iterable[str]) -> int:
    count = 0
    for url in urls:
        out.write(url + "\n")
        count += 1
    return count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m flood.urls",
        description="Write N flood URLs, one a line (the seed's /tmp/mochi-urls.txt).")
    parser.add_argument("n", type=int, help="how many URLs")
    parser.add_argument("--base", default="http://127.0.0.1:8000",
                        help="scheme, host and default port (default %(default)s)")
    parser.add_argument("--ports", help="spread over these ports: 8001-8006 or 8001,8003")
    parser.add_argument("--path", help="path before the id (default: the transport's, /test/)")
    parser.add_argument("--transport", default="stream", choices=list(TRANSPORTS),
                        help="take the path of this transport: "
                             + ", ".join(t.path for t in TRANSPORTS.values()))
    parser.add_argument("--start", type=int, default=1, help="first id (default 1)")
    args = parser.parse_args(argv)
    if args.n < 0:
        parser.error("N must be >= 0")
    try:
        ports = parse_ports(args.ports) if args.ports else None
        path = args.path or TRANSPORTS[args.transport].path
        urls = generate(args.n, args.base, ports, path, args.start)
        write_urls(sys.stdout, urls)
    except (ValueError, BadUrl) as exc:
        parser.error(str(exc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
