"""A client that stops reading (SIGSTOP), issue 12: dropped as a slow consumer within
its bound, every other client unaffected, the server's memory bounded.

Every client is a real process (``tests/subscriberproc.py``) on one id: an honest
subscriber on each of ``/test/``, ``/events/`` and ``/ws/``, and one more on the
transport under test that the test stops with SIGSTOP, its receive buffer set small
so that it fills after a known number of bytes. Then large messages (60,000 bytes)
are published one by one. What fills: the stopped client's receive buffer, the
server's send buffer for it (at most ``tcp_wmem``'s maximum), then the server's
queue for it (``--queue-limit`` messages), and the next message drops it. No
timing is asserted: the bound is a number of messages, and every wait is for a
condition, with a generous limit.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from tests.realserver import wait_until

MESSAGE = 60_000
QUEUE_LIMIT = 16
#: the stopped client's receive buffer (the kernel doubles it for its bookkeeping)
RCVBUF = 16 * 1024
#: messages published in all: enough that a server buffering them for the stopped
#: client instead of dropping it would grow by well over RSS_MARGIN
TOTAL = 600
#: RSS growth allowed over the publishing. Buffering every message the stopped client
#: missed would be ~31 MB (520 x 60 KB); what is bounded is its queue (16 x 60 KB) plus
#: what the fan-out of 36 MB to the honest subscribers leaves in the allocator: seen here
#: 6.0 to 6.6 MiB, the same for 400 messages as for 600 (a fixed cost, not per message).
RSS_MARGIN = 16 * 2**20
#: seconds one write may block: a dropped WebSocket with a frame half written keeps its
#: socket this long at most, to finish the frame and send its 1008 close frame after it
WRITE_TIMEOUT = 5
#: the slow-consumer ends (comet/ends.py): the queue filled, or one write blocked too long
SLOW_ENDS = ("slow consumer", "write timed out")


def wmem_max() -> int:
    with open("/proc/sys/net/ipv4/tcp_wmem") as f:
        return int(f.read().split()[2])


def drop_bound() -> int:
    """Messages after which the stopped client must have been dropped: what the kernel
    can hold for it on both ends, plus its queue, plus a margin of 16 for framing."""
    return (wmem_max() + 2 * RCVBUF) // MESSAGE + QUEUE_LIMIT + 16


def slow_drops(now: dict, before: dict) -> int:
    """Slow-consumer drops ``/stats`` counted since ``before``, whatever their reason."""
    return sum(now["drops"].get(r, 0) - before["drops"].get(r, 0) for r in SLOW_ENDS)


class Subscriber:
    """One ``python -m tests.subscriberproc`` process and the lines it wrote."""

    def __init__(self, port: int, transport: str, id: str, out: Path,
                 rcvbuf: int | None = None) -> None:
        self.transport, self.out = transport, out
        args = ["--rcvbuf", str(rcvbuf)] if rcvbuf else []
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.subscriberproc", str(port),
                                      transport, id, str(out), *args])

    def lines(self) -> list[str]:
        try:
            return self.out.read_text().splitlines()
        except FileNotFoundError:
            return []

    def got(self) -> list[str]:
        return [line.split(" ", 1)[1] for line in self.lines() if line.startswith("got ")]

    def ended(self) -> str | None:
        return next((line for line in self.lines() if line.startswith("ended")), None)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)  # a stopped process dies only once resumed
            self.proc.kill()
        self.proc.wait(10)


@pytest.mark.parametrize("stopped", ["test", "events", "ws"])
def test_a_stopped_client_is_dropped_and_nobody_else_loses_a_message(start_server, stopped,
                                                                        tmp_path):
    server = start_server("--queue-limit", str(QUEUE_LIMIT), "--write-timeout",
                          str(WRITE_TIMEOUT), "--interval", "3600")
    honest = [Subscriber(server.port, t, "room", tmp_path / f"honest-{t}")
              for t in ("test", "events", "ws")]
    slow = Subscriber(server.port, stopped, "room", tmp_path / "stopped", rcvbuf=RCVBUF)
    everyone = [*honest, slow]
    try:
        wait_until(lambda: all("ready" in s.lines() for s in everyone), 30, "all ready")
        server.wait_for(lambda s: s["connections"]["total"] == 4, what="4 held")
        os.kill(slow.proc.pid, signal.SIGSTOP)
        before = server.stats()
        dropped_after = None
        for n in range(1, TOTAL + 1):
            body = f"m{n} ".encode().ljust(MESSAGE, b"x")
            answer = requests.post(f"{server.url}/send/room", data=body, timeout=30)
            assert answer.status_code == 200, answer.text
            if dropped_after is None and slow_drops(server.stats(), before):
                dropped_after = n
        sent = [f"m{n}" for n in range(1, TOTAL + 1)]
        for sub in honest:
            wait_until(lambda sub=sub: len(sub.got()) >= TOTAL or sub.ended(), 60,
                       f"{sub.transport} got every message")
        after = server.wait_for(lambda s: s["connections"]["total"] == 3,
                                timeout=WRITE_TIMEOUT + 30, what="the stopped client let go")

        grew = (after["rss_bytes"] - before["rss_bytes"]) / 2**20
        print(f"dropped after message {dropped_after} (bound {drop_bound()}); "
              f"RSS grew {grew:.1f} MiB; drops {after['drops']}")
        assert dropped_after is not None and dropped_after <= drop_bound(), \
            (dropped_after, drop_bound())
        for sub in honest:
            assert sub.got() == sent, f"{sub.transport}: {len(sub.got())} of {TOTAL}"
            assert sub.ended() is None, (sub.transport, server.log_text()[-3000:])
        assert slow_drops(after, before) == 1, after["drops"]
        assert after["slow_consumers"] - before["slow_consumers"] == after["drops"].get(
            "slow consumer", 0) - before["drops"].get("slow consumer", 0)
        assert after["connections"][stopped] == 1  # the honest one of its transport
        assert after["rss_bytes"] - before["rss_bytes"] <= RSS_MARGIN

        os.kill(slow.proc.pid, signal.SIGCONT)
        wait_until(lambda: slow.ended() is not None, 30, "the stopped client sees its end")
        assert len(slow.got()) < TOTAL
        assert slow.proc.wait(30) == 0
    finally:
        for sub in everyone:
            sub.stop()

