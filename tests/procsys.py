"""A /proc/sys-like tree in a temp dir, for the tests of what reads sysctls."""

from __future__ import annotations

from pathlib import Path


def write_tree(root: Path, values: dict[str, str | None]) -> Path:
    """One file per sysctl (``net.core.somaxconn`` -> ``net/core/somaxconn``); None: absent."""
    for name, value in values.items():
        if value is not None:
            path = root / name.replace(".", "/")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(value + "\n")
    return root
