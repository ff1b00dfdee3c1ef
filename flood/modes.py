"""``--modes on,off``: the whole bench once per ``--hibernate`` mode, printed side by side.

Each mode gets a fresh server (its own ``--server-args``) and its own PNG, so one
mode's heap never flatters the other's. The runs themselves are
:func:`flood.bench.run_one`'s; this module only varies the arguments and joins the
results into one document.
"""

from __future__ import annotations

import argparse
import copy
import os
from collections.abc import Callable

from flood import benchtable


def mode_args(args: argparse.Namespace, mode: str) -> argparse.Namespace:
    """The arguments of one mode's run: its ``--hibernate`` flag and ``-MODE`` PNG name."""
    one = copy.copy(args)
    one.server_args = f"{args.server_args} --hibernate {mode}".strip()
    if args.plot:
        root, ext = os.path.splitext(args.plot)
        one.plot = f"{root}-{mode}{ext}"
    return one


def compare(args: argparse.Namespace, run_one: Callable[[argparse.Namespace], dict]) -> dict:
    """Run every mode in the order given, print them side by side; the JSON document."""
    runs = {mode: run_one(mode_args(args, mode)) for mode in args.modes}
    print("\n".join(benchtable.side_by_side(runs)))
    return {"command": args.command,
            "date": runs[args.modes[0]]["date"], "modes": runs}
