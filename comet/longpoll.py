"""``GET /poll/<id>?since=<msg id>``: one answer per request, for clients behind
proxies that buffer streams.

With ``since``, messages kept after it answer at once; otherwise the request
waits up to ``--poll-timeout`` for the next one. ``last`` in the answer is what
the client sends as ``since`` next: the newest message it got, or, when none
came, the history's position at the start of the wait, so a client looping on
``last`` loses nothing between polls (the history covers the gap).
"""

from __future__ import annotations

from comet import transports
from comet.connection import QueuedConnection
from comet.subscriptions import Subscriptions


def poll_once(subs: Subscriptions, conn: QueuedConnection, ids: list[str],
              since: str | None) -> bytes:
    """Wait for and return the JSON answer of one long-poll."""
    position = subs.history.position()
    replay = subs.open(conn, ids, since, resume=since is not None)
    try:
        if replay is not None and (replay.messages or replay.missed):
            last = replay.messages[-1].id if replay.messages else replay.start
            return transports.poll_answer(replay.messages, last, replay.missed)
        conn.wait(subs.settings.poll_timeout)
        messages = conn.take()
        last = messages[-1].id if messages else position
        return transports.poll_answer(messages, last)
    finally:
        subs.close(conn)
