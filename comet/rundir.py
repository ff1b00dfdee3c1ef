"""The run directory where a master's workers find each other: its name, made safely, removed.

Every worker of one master serves its ``/stats`` snapshot on a unix socket
in a directory of that master (:mod:`comet.siblings`), named
``w<index>-<pid>.sock`` so that a reader knows whose it is without asking.
comet's own master makes a fresh directory (``tempfile.mkdtemp``) and hands
it to the workers it forks. A gunicorn master hands its workers nothing of
ours, so they agree on a name made from its pid (:func:`for_gunicorn_master`),
and the first to come makes the directory (:func:`make_private`);
the last worker out removes it (:func:`remove_if_empty`), and
``conf/gunicorn.conf.py``'s ``on_exit`` hook removes whatever is left (:func:`remove`).

A name anyone can predict in a shared temp directory is one another user
could make first: a directory that is not ours, not a directory, or open to
others is refused, never used or chmod-ed. Only the standard library here:
gunicorn's master imports this module through its configuration file.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from pathlib import Path


class UnsafeRunDirectory(RuntimeError):
    """The run directory's name is taken by something workers must not trust."""


def socket_name(index: int, pid: int) -> str:
    """The file name of worker ``index``'s stats socket; whoever reaps it removes it."""
    return f"w{index}-{pid}.sock"


def for_gunicorn_master(master_pid: int) -> Path:
    """Where the workers of the gunicorn master ``master_pid`` put their stats sockets."""
    return Path(tempfile.gettempdir()) / f"comet-gunicorn-{master_pid}"


def make_private(path: Path) -> Path:
    """The directory ``path``, made mode 0700 if missing; refused unless it is ours alone.

    Several workers start at once: whichever makes it, the others find it
    made, and every one checks what it found (never following a symbolic link).
    """
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    why = _not_ours_alone(path)
    if why:
        raise UnsafeRunDirectory(f"{path} {why}: refusing it as the run directory")
    return path


def forget_worker(path: Path, index: int, pid: int) -> None:
    """A dead worker's socket goes (its successor comes under its own pid)."""
    (path / socket_name(index, pid)).unlink(missing_ok=True)


def remove_if_empty(path: Path) -> None:
    """The last worker out takes the directory with it (a sibling still there keeps it).

    What tidies up when no master hook does: gunicorn without
    ``conf/gunicorn.conf.py``, or comet's master killed outright.
    """
    try:
        os.rmdir(path)
    except OSError:
        pass


def remove(path: Path) -> None:
    """The master is stopping: its run directory goes, if it is one workers would have
    used (what :func:`make_private` refuses is left as found, never followed)."""
    if path.exists() and not _not_ours_alone(path):
        shutil.rmtree(path, ignore_errors=True)


def _not_ours_alone(path: Path) -> str | None:
    """Why workers must not trust ``path`` as their run directory, or None."""
    found = os.lstat(path)
    if not stat.S_ISDIR(found.st_mode):
        return "is not a directory"
    if found.st_uid != os.geteuid():
        return f"belongs to uid {found.st_uid}, not to us (uid {os.geteuid()})"
    if found.st_mode & 0o077:
        return f"is open to others (mode {found.st_mode & 0o777:o}, not 700)"
    return None
