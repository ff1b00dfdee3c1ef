"""Which user ids get messages: id ranges and a Zipf-like popularity (``--ids``, ``--skew``).

The series' part 2 generator sends to random users, some far more popular than
others. With skew ``s`` the k-th id of the list is picked with weight ``1 / k**s``:
0 is uniform, 1 is classic Zipf (the first id gets about as many messages as the
next ten together, for 10,000 ids).
"""

from __future__ import annotations

import bisect
import itertools
import random


def parse_ids(spec: str) -> list[str]:
    """``1-10000``, ``a,b,c`` or a mix (``1-3,alice``); order kept, as popularity rank."""
    out: list[str] = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        if sep and lo.isdigit() and hi.isdigit():
            if int(hi) < int(lo):
                raise ValueError(f"bad id range {part!r}")
            out.extend(str(i) for i in range(int(lo), int(hi) + 1))
        else:
            out.append(part)
    if not out:
        raise ValueError("no ids given")
    return out


class Popularity:
    """Draws ids with weight ``1 / rank**skew``; one bisect per draw."""

    def __init__(self, ids: list[str], skew: float = 0.0, seed: int | None = None) -> None:
        if skew < 0:
            raise ValueError("skew must be >= 0")
        self.ids = ids
        self.skew = skew
        self.random = random.Random(seed)
        weights = (1.0 / (rank ** skew) for rank in range(1, len(ids) + 1))
        self._cumulative = list(itertools.accumulate(weights)) if skew else None

    def pick(self) -> str:
        if self._cumulative is None:
            return self.ids[self.random.randrange(len(self.ids))]
        x = self.random.random() * self._cumulative[-1]
        return self.ids[bisect.bisect_right(self._cumulative, x)]
