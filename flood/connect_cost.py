"""``python -m flood.connect_cost``: what one ``connect()`` costs as connections pile up.

Why this exists: a ramp from one source address to one port slowed sharply near
14,300 connections while the server sat idle. This tool takes the server out of the
picture (a child process that only accepts and holds) and times blocking
``connect()`` calls per thousand, with the share of even local ports in each
thousand, from one source address or several (``--source``, bound with
IP_BIND_ADDRESS_NO_PORT as the flood does). See docs/flood.rst for what it showed.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time

from comet.hostlimits import ephemeral_ports, raise_open_files_limit
from flood.sources import bind_source, parse_sources

HOLDER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 0)); s.listen(65535)
print(s.getsockname()[1], flush=True)
held = []
while True:
    held.append(s.accept()[0])
"""


def measure(port: int, count: int, sources: list[str], step: int, out=print) -> list[dict]:
    """Connect ``count`` times; one row per ``step`` connections: mean and max microseconds."""
    rows, socks = [], []
    t_batch, worst, even = 0.0, 0.0, 0
    for i in range(1, count + 1):
        sock = socket.socket()
        if sources:
            bind_source(sock, sources[i % len(sources)])
        t = time.perf_counter()
        sock.connect(("127.0.0.1", port))
        dt = time.perf_counter() - t
        socks.append(sock)
        t_batch += dt
        worst = max(worst, dt)
        even += sock.getsockname()[1] % 2 == 0
        if i % step == 0:
            row = {"connections": i, "mean_us": round(t_batch / step * 1e6, 1),
                   "max_us": round(worst * 1e6, 1), "even_port_share": round(even / step, 3)}
            rows.append(row)
            out(f"{i:>7} connections  connect() mean {row['mean_us']:>8.1f} us  "
                f"max {row['max_us']:>9.1f} us  even local ports {row['even_port_share']:.0%}")
            t_batch, worst, even = 0.0, 0.0, 0
    for sock in socks:
        sock.close()
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m flood.connect_cost", description=__doc__)
    p.add_argument("--connections", type=int, default=19000, help="how many (default 19000)")
    p.add_argument("--source", help="source addresses as flood --source (default: none bound)")
    p.add_argument("--step", type=int, default=1000, help="report every N (default 1000)")
    args = p.parse_args(argv)
    raise_open_files_limit()
    holder = subprocess.Popen([sys.executable, "-c", HOLDER], stdout=subprocess.PIPE, text=True)
    try:
        port = int(holder.stdout.readline())
        span = ephemeral_ports()
        shown = f"{span[0]} {span[1]}" if span else "unreadable"
        print(f"ip_local_port_range {shown}; holder on port {port}")
        measure(port, args.connections, parse_sources(args.source) if args.source else [],
                args.step)
    finally:
        holder.kill()
        holder.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
