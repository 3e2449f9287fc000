"""The output folder of a run: checked before anything is planned, created, and held by one run at a time.

``run`` takes :class:`RunLock` (a ``filelock`` lock on ``<out>/.sdbatch.lock``; who holds it is written beside
it, in ``.sdbatch.lock.json``) for the whole run; a second ``run`` on the same folder is refused at once (exit
2). ``plan``, ``inspect``, ``verify`` and the gallery only read, without it. Every problem is a one-line
:class:`~sdbatch.errors.UsageError`.

Example::

    check_out_dir(out)            # before planning: nothing is created for an invalid recipe
    with RunLock(out):            # creates the folder, or says who is using it
        ...
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..errors import UsageError
from .artifacts import atomic_write_bytes

LOCK_NAME = ".sdbatch.lock"
HOLDER_NAME = ".sdbatch.lock.json"


def check_out_dir(out: Path) -> None:
    """A UsageError unless ``out`` is a writable folder, or can be created as one."""
    if out.exists() or out.is_symlink():
        if not out.is_dir():
            raise UsageError(f"error: output folder {out} is not a folder")
        if not os.access(out, os.W_OK | os.X_OK):
            raise UsageError(f"error: output folder {out} is not writable")
        return
    parent = out.parent
    while not (parent.exists() or parent.is_symlink()) and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise UsageError(f"error: cannot create output folder {out}: {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"error: cannot create output folder {out}: {parent} is not writable")


def make_out_dir(out: Path) -> None:
    check_out_dir(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"error: cannot create output folder {out}: {exc.strerror or exc}") from None


class RunLock:
    """The one-run-per-folder lock (a context manager); creates the folder first."""

    def __init__(self, out: Path):
        self.out = Path(out)
        self._lock: Any = None

    def __enter__(self) -> RunLock:
        from filelock import FileLock, Timeout

        make_out_dir(self.out)
        lock = FileLock(str(self.out / LOCK_NAME))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            raise UsageError(f"error: another sdbatch run ({holder(self.out)}) is using {self.out}") from None
        except OSError as exc:
            raise UsageError(f"error: cannot lock output folder {self.out}: {exc.strerror or exc}") from None
        self._lock = lock
        since = datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")
        try:
            atomic_write_bytes(self.out / HOLDER_NAME, json.dumps({"pid": os.getpid(), "since": since}).encode())
        except OSError:
            pass  # who holds it is a courtesy; the lock itself is what counts
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._lock is None:
            return
        try:
            (self.out / HOLDER_NAME).unlink()
        except OSError:
            pass
        self._lock.release()
        self._lock = None


def holder(out: Path) -> str:
    """``pid N, since T`` of the run holding ``out``'s lock, as it wrote them."""
    try:
        data = json.loads((out / HOLDER_NAME).read_text())
        return f"pid {int(data['pid'])}, since {str(data['since'])[:40]}"
    except (OSError, ValueError, KeyError, TypeError):
        return "pid unknown, since unknown"


def project_root(recipe_file: str | Path) -> Path:
    """The recipe's project root: the nearest folder above the recipe file holding ``.git`` (a folder, or a
    file as in a git worktree), else the recipe's own folder. Absolute; never the current directory."""
    folder = Path(recipe_file).absolute().parent
    for candidate in (folder, *folder.parents):
        if (candidate / ".git").exists():
            return candidate
    return folder


def default_out_dir(recipe_file: str | Path, name: str, rehearse: bool = False) -> Path:
    """``outputs/<name>`` (``outputs/<name>-rehearsal`` for ``--rehearse``) at the recipe's project root."""
    return project_root(recipe_file) / "outputs" / (f"{name}-rehearsal" if rehearse else name)
