"""Limits that protect one server process from a few greedy clients: what is over them.

Two limits are asked at admission (:meth:`comet.hub.Hub.admit`), before a
subscriber's answer begins:

* ``--max-per-ip``: connections held at once (streams, SSE, WebSockets,
  waiting long-polls) by one client, counted by :class:`ClientTable`. An IPv4
  client is its address; an IPv6 client is its /64 (one host is usually
  given a whole /64, so counting single addresses would let it take 2**64
  places); an IPv4-mapped IPv6 address counts as the IPv4 one. Over the
  limit: **429** Too Many Requests, since this client, not the server, is
  over it. The table has an entry only while its client holds a connection,
  so it grows with connections held, never with clients ever seen.
* ``--max-new-per-second``: subscriber requests admitted per second by this
  process, a :class:`~comet.ratelimit.TokenBucket` (a burst of one second's worth, refilled
  continuously). Over it: **503** with ``Retry-After: 1``, the server's own
  pace being the limit. Each process (each ``--workers`` worker) has its own.

Nothing here knows HTTP beyond the status line a refusal carries; the hub
counts refusals by :attr:`Refused.kind` and logs them once per burst.
"""

from __future__ import annotations

import ipaddress
import logging
import sys

from comet.ratelimit import TokenBucket

log = logging.getLogger(__name__)

#: seconds a refused client is told to wait (Retry-After) when nothing better is known
RETRY_AFTER = 5

#: the kinds of refusal ``/stats`` counts under ``limits``
PER_ADDRESS = "connections per address"
NEW_PER_SECOND = "new connections per second"
TOO_MANY_IDS = "ids per connection"
REQUEST_LINE_TOO_LONG = "request line too long"
HEAD_TOO_LARGE = "request head too large"
HEAD_TOO_SLOW = "request head too slow"
FRAME_TOO_BIG = "websocket frame too big"
#: subscriptions (comet.broker.graph): a follow over a user's or an id's limit (409),
#: too many ?to= ids in one request (400)
FOLLOWEES_PER_USER = "followees per user"
SUBSCRIBERS_PER_ID = "subscribers per id"
FOLLOW_IDS = "ids per subscribe request"
#: /metrics or /stats asked from an address --metrics-from does not list
METRICS_FROM = "metrics from elsewhere"
#: a dashboard stream asked for while a process holds as many as it may (comet.dashboard)
DASHBOARD_STREAMS = "dashboard streams"


class Refused(Exception):
    """No room for this connection now: its status, why, and when to try again."""

    def __init__(self, reason: str, retry_after: int = RETRY_AFTER,
                 status: str = "503 Service Unavailable", kind: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after
        self.status = status
        #: the limit's name in ``/stats`` (None: the server is full or stopping)
        self.kind = kind


def client_key(address: str) -> str:
    """Whom a connection from ``address`` counts against: the IPv4 address, or the /64
    of an IPv6 one. Anything else (a Unix socket's empty address) is itself."""
    if ":" not in address:
        return address
    try:
        ip = ipaddress.IPv6Address(address.split("%")[0])
    except ValueError:
        return address
    if ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return f"{ipaddress.IPv6Address(int(ip) >> 64 << 64)}/64"


class ClientTable:
    """Connections held per client, for ``--max-per-ip``: an entry only while it is above 0."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._held: dict[str, int] = {}
        #: connections counted in the table now (the sum of its entries)
        self.total = 0

    def __len__(self) -> int:
        return len(self._held)

    def full(self, key: str) -> bool:
        return self._held.get(key, 0) >= self.limit

    def add(self, key: str) -> None:
        self._held[key] = self._held.get(key, 0) + 1
        self.total += 1

    def remove(self, key: str) -> None:
        held = self._held.get(key)
        if held is None:  # a bug: a connection released twice, or never counted
            log.error("connection of %s released but not counted", key)
            return
        self.total -= 1
        if held > 1:
            self._held[key] = held - 1
        else:
            del self._held[key]


class Limits:
    """The per-client table and the new-connections bucket of one process, per the settings
    (either may be off: 0)."""

    def __init__(self, max_per_ip: int, max_new_per_second: int) -> None:
        #: connections held per client; None when --max-per-ip is 0 (nothing is counted)
        self.clients = ClientTable(max_per_ip) if max_per_ip else None
        #: admissions this second; None when --max-new-per-second is 0
        self.bucket = (TokenBucket(max_new_per_second) if max_new_per_second else None)

    def key(self, address: str | None) -> str | None:
        """The table's key for a client at ``address`` (one string shared by all its
        connections), or None when connections per client are not counted."""
        if self.clients is None or address is None:
            return None
        return sys.intern(client_key(address))

    def check(self, key: str | None) -> Refused | None:
        """Why a connection of ``key`` would be refused now, or None; takes nothing."""
        if key is not None and self.clients.full(key):
            return Refused(f"{key} holds {self.clients.limit} connections already "
                           f"(--max-per-ip)", RETRY_AFTER, "429 Too Many Requests", PER_ADDRESS)
        if self.bucket is not None and not self.bucket.ready():
            return Refused(f"over {self.bucket.rate} new connections a second "
                           f"(--max-new-per-second)", 1, kind=NEW_PER_SECOND)
        return None

    def take(self, key: str | None) -> Refused | None:
        """:meth:`check`, and when it passes, this connection's place in the bucket."""
        refused = self.check(key)
        if refused is None and self.bucket is not None:
            self.bucket.take(1)
        return refused

    def snapshot(self) -> dict:
        clients = self.clients
        return {"addresses": len(clients) if clients is not None else 0,
                "held": clients.total if clients is not None else 0}
