"""A power-law friends graph for the series' part 3: Barabási-Albert, reproducible, in arrays.

The part 3 load is a million users each following about 15 others, the
followed picked by preferential attachment, so a few users have thousands of
followers and most have a handful: the shape of a real social graph, and
the shape that makes a notify's fan-out uneven. Users join one at a time;
each new user follows ``m`` distinct earlier users, each picked with
probability proportional to how many links it already has (its degree).

The textbook way keeps a list with every link's two ends and draws from it
(``networkx.barabasi_albert_graph``): a Python loop per link and a dict of
sets per user, minutes and gigabytes at 15 M links. Here the same process is
drawn with numpy, all at once. Lay the links out in order, link ``e`` being
the ``e % m``-th of user ``m + e // m``, and its two ends at positions
``2e`` (whom it follows) and ``2e + 1`` (the user itself). A user drawing
uniformly from the ends of the links before its own is exactly preferential
attachment. An odd position is a user known from its index alone; an even
one is the followed end of an earlier link, which is itself a draw: so draw
every position first, then resolve the even ones by following them back
(pointer jumping, all links at once, each round resolving about half of
those left; ~25 rounds at 15 M). A user that drew the same id twice draws
that link again, and every link is resolved again (those that had followed
its first draw back change too, as in the sequential process), until no
user has a repeat. Repeats are common while the graph is young, so the first
:data:`SEQUENTIAL_USERS` users are drawn one at a time by the textbook loop,
and the rest, whose repeats are rare, at once.

Memory: two int32 arrays of the links (120 MB at 15 M) plus working arrays
while drawing (a million users: about 5 s, and 0.5 GB of RSS at the peak
here). Users are indices ``0 .. n-1``; as ids they are ``start + index``
(``start`` 1, as :mod:`flood.urls` numbers its URLs).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

#: users drawn one at a time, exactly, before the rest are drawn at once: where
#: repeats are common (a young graph has few ends to pick from), and where
#: every later link's draws lead back to
SEQUENTIAL_USERS = 20_000

@dataclass
class FriendsGraph:
    """``followers_of``/``follows``: who follows whom, link ``e`` being ``follower[e] ->
    followed[e]``; links of one follower are consecutive, ``m`` each."""

    users: int
    m: int
    seed: int
    follower: np.ndarray  #: int32, the user that follows, per link
    followed: np.ndarray  #: int32, the user it follows, per link

    @property
    def links(self) -> int:
        return len(self.follower)

    def in_degrees(self) -> np.ndarray:
        """Followers per user: the fan-out of a notify from each."""
        return np.bincount(self.followed, minlength=self.users)

    def summary(self) -> dict:
        """What a report says of the graph: size and how uneven the fan-out is."""
        degrees = self.in_degrees()
        return {"users": self.users, "m": self.m, "seed": self.seed, "links": self.links,
                "followers_mean": round(float(degrees.mean()), 3),
                "followers_p50": int(np.percentile(degrees, 50)),
                "followers_p99": int(np.percentile(degrees, 99)),
                "followers_max": int(degrees.max()),
                "without_followers": int((degrees == 0).sum())}

    def lines(self, start: int = 1, per_line: int | None = None) -> Iterator[str]:
        """``subscriber id id ...`` a line, every user with its followees (at most
        ``per_line`` a line; a user with more gets several lines): what
        ``python -m comet.graphload`` reads."""
        per_line = per_line or self.m
        ids = self.followed.reshape(-1, self.m) + start
        first = self.users - ids.shape[0]  # the first m users follow no one
        for row, targets in enumerate(ids.tolist()):
            subscriber = str(first + row + start)
            for at in range(0, len(targets), per_line):
                yield subscriber + " " + " ".join(map(str, targets[at:at + per_line])) + "\n"


def barabasi_albert(users: int, m: int = 15, seed: int = 0,
                    sequential: int = SEQUENTIAL_USERS) -> FriendsGraph:
    """Draw the graph: users ``m .. users-1`` each follow ``m`` distinct earlier users.

    User ``m`` follows the first ``m`` (who follow no one); each later user
    picks by degree, as above. The same ``(users, m, seed)`` always gives the
    same graph. ``sequential``: users drawn by the loop before the rest at once.
    """
    if m < 1:
        raise ValueError("m must be at least 1")
    if users <= m:
        raise ValueError(f"a graph with m={m} needs more than {m} users")
    if (users - m) * m * 2 >= 2**31:
        raise ValueError("too many links for int32 positions")
    rng = np.random.default_rng(seed)
    joiner = np.repeat(np.arange(m, users, dtype=np.int32), m)  #: each link's follower
    followed = np.empty(len(joiner), dtype=np.int32)
    followed[:m] = np.arange(m, dtype=np.int32)  # user m's links: the first m users
    early = (max(sequential, m + 1) - m) * m if users > sequential else len(joiner)
    _draw_in_order(followed, joiner, m, m, early, rng)
    # a link may draw any end of the links before its follower's own: 2m(joiner - m) of them
    picks = np.zeros(len(joiner), dtype=np.int32)
    picks[early:] = rng.random(len(joiner) - early) * (2 * m) * (joiner[early:] - m)
    drawing = np.arange(early, len(joiner), dtype=np.int32)
    while len(drawing):
        _resolve(followed, picks, joiner, early)
        drawing = _repeats(followed, m, early)
        picks[drawing] = rng.random(len(drawing)) * (2 * m) * (joiner[drawing] - m)
    return FriendsGraph(users, m, seed, joiner, followed)


def _draw_in_order(followed: np.ndarray, joiner: np.ndarray, m: int, first: int, end: int,
                   rng: np.random.Generator) -> None:
    """Links ``first .. end`` drawn one user after another (the textbook loop, exact)."""
    ends = followed[:end].tolist()  # Python ints: a loop over a list is what is fast here
    users = joiner[:end].tolist()
    for row in range(first, end, m):
        span = 2 * m * (users[row] - m)
        taken: set[int] = set()
        while len(taken) < m:
            at = int(rng.random() * span)
            taken.add(users[at >> 1] if at & 1 else ends[at >> 1])
        ends[row:row + m] = sorted(taken)
    followed[first:end] = ends[first:end]


def _resolve(followed: np.ndarray, picks: np.ndarray, joiner: np.ndarray, fixed: int) -> None:
    """Whom each link from ``fixed`` on follows, given every link's drawn position
    (pointer jumping); the links before ``fixed`` are final."""
    open_links = np.arange(fixed, len(picks), dtype=np.int32)
    at = picks[fixed:]
    while len(open_links):
        odd = (at & 1) == 1
        earlier = at >> 1  # the link whose end the position is
        # an odd position is that link's follower; an even one its followed end,
        # final for a link before ``fixed``, else that link's own draw
        known = ~odd & (earlier < fixed)
        followed[open_links[odd]] = joiner[earlier[odd]]
        followed[open_links[known]] = followed[earlier[known]]
        keep = ~(odd | known)
        open_links, at = open_links[keep], picks[earlier[keep]]


def _repeats(followed: np.ndarray, m: int, first: int) -> np.ndarray:
    """Links from ``first`` on that repeat an id their follower already follows
    (every one but the first of each repeated id)."""
    rows = followed[first:].reshape(-1, m)
    order = np.argsort(rows, axis=1, kind="stable")
    ranked = np.take_along_axis(rows, order, axis=1)
    again = np.zeros_like(rows, dtype=bool)
    np.put_along_axis(again, order[:, 1:], ranked[:, 1:] == ranked[:, :-1], axis=1)
    return (np.flatnonzero(again.ravel()) + first).astype(np.int32)
