"""Subscriptions between users: who follows whom, the graph ``/notify`` fans out by.

A user (a *subscriber*) follows ids; a notify from an id goes to everyone who
follows it. Every broker holds one graph behind :class:`Graph`: the
in-process :class:`MemoryGraph` here, or Redis sets
(:mod:`comet.broker.redisgraph`) that every worker and machine shares. Both
keep two sides of each relation, written together in one step: what a
subscriber follows (to list it) and who follows an id (to notify them).

Bounds, checked in that same step so a request is taken whole or not at all:
``max_following`` ids per subscriber and ``max_followers`` subscribers per
id; a refused request changes nothing (:class:`GraphFull` says which limit).
A subscriber's list is read in pages in id order, the cursor being the last id
of the page before: stable while the list changes, the same on every broker.

Nothing here knows HTTP, connections or messages: delivering a notify is the
hub's (:meth:`comet.hub.Hub.notify_many`).
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import NamedTuple, Protocol

#: which limit a refused follow is over (``GraphFull.limit``)
FOLLOWING = "following"
FOLLOWERS = "followers"


class GraphFull(Exception):
    """A follow over a limit: ``limit`` is :data:`FOLLOWING` or :data:`FOLLOWERS`,
    ``id`` the subscriber or the followed id that is full. Nothing was changed."""

    def __init__(self, limit: str, id: str, bound: int) -> None:
        super().__init__(f"{id} is at its limit of {bound} {limit}")
        self.limit = limit
        self.id = id
        self.bound = bound


class Page(NamedTuple):
    """One page of a subscriber's followees, in id order; ``next`` is the cursor of the
    page after (its last id), None when this is the last."""

    following: list[str]
    next: str | None


class Graph(Protocol):
    """What the hub needs of a broker's graph; every method may raise
    :class:`~comet.broker.BrokerUnavailable`."""

    def follow(self, subscriber: str, ids: Sequence[str], max_following: int,
               max_followers: int) -> int:
        """``subscriber`` follows ``ids`` (taken whole or refused with :class:`GraphFull`);
        returns how many it did not follow before."""

    def unfollow(self, subscriber: str, ids: Sequence[str]) -> int:
        """``subscriber`` follows ``ids`` no more; returns how many it did follow."""

    def following(self, subscriber: str, after: str | None, limit: int) -> Page:
        """At most ``limit`` of the ids ``subscriber`` follows, after ``after`` in id order."""

    def followers(self, id: str) -> list[str]:
        """Every subscriber of ``id`` (at most ``max_followers``: the follow bound them)."""

    def followers_many(self, ids: Sequence[str]) -> list[list[str]]:
        """:meth:`followers` of each of ``ids``, in their order, in one round trip where
        the graph is remote: a bulk notify reads them all before it publishes."""


def page_of(ordered: Sequence[str], after: str | None, limit: int) -> Page:
    """The page after ``after`` of ids in order: shared by the graphs that sort in Python."""
    start = bisect.bisect_right(ordered, after) if after is not None else 0
    found = list(ordered[start:start + limit])
    more = start + limit < len(ordered)
    return Page(found, found[-1] if more and found else None)


class MemoryGraph:
    """The in-process :class:`Graph`: two dicts of sets; an id with no relation costs nothing."""

    def __init__(self) -> None:
        #: subscriber -> the ids it follows
        self._following: dict[str, set[str]] = {}
        #: id -> the subscribers that follow it
        self._followers: dict[str, set[str]] = {}
        #: relations held (each once, though kept on both sides)
        self._links = 0

    def follow(self, subscriber: str, ids: Sequence[str], max_following: int,
               max_followers: int) -> int:
        mine = self._following.get(subscriber, set())
        new = [id for id in dict.fromkeys(ids) if id not in mine]
        if len(mine) + len(new) > max_following:
            raise GraphFull(FOLLOWING, subscriber, max_following)
        for id in new:
            if len(self._followers.get(id, ())) >= max_followers:
                raise GraphFull(FOLLOWERS, id, max_followers)
        if new:
            self._following.setdefault(subscriber, set()).update(new)
            for id in new:
                self._followers.setdefault(id, set()).add(subscriber)
            self._links += len(new)
        return len(new)

    def unfollow(self, subscriber: str, ids: Sequence[str]) -> int:
        mine = self._following.get(subscriber)
        if not mine:
            return 0
        gone = [id for id in dict.fromkeys(ids) if id in mine]
        for id in gone:
            mine.discard(id)
            theirs = self._followers[id]
            theirs.discard(subscriber)
            if not theirs:
                del self._followers[id]
        if not mine:
            del self._following[subscriber]
        self._links -= len(gone)
        return len(gone)

    def following(self, subscriber: str, after: str | None, limit: int) -> Page:
        return page_of(sorted(self._following.get(subscriber, ())), after, limit)

    def followers(self, id: str) -> list[str]:
        return list(self._followers.get(id, ()))

    def followers_many(self, ids: Sequence[str]) -> list[list[str]]:
        return [self.followers(id) for id in ids]

    def snapshot(self) -> dict:
        """What ``/stats`` shows of the graph held in this process."""
        return {"subscribers": len(self._following), "followed": len(self._followers),
                "links": self._links}
