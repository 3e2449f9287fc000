"""Reading regular files safely, and once: the helpers the manifest and its index share (no import of either).

:func:`open_regular` opens only a regular file (never through a symlink, never blocking on a FIFO);
:func:`collection_paused` keeps the garbage collector out of a long read; :func:`warn_malformed` says once
per manifest (path, size, mtime) which lines were skipped.
"""

from __future__ import annotations

import gc
import os
import stat
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import UsageError

_WARNED: set[tuple[str, int, int]] = set()  # manifests (path, size, mtime) already warned about


def _kind_of(mode: int) -> str:
    for test, name in ((stat.S_ISLNK, "a symlink"), (stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device")):
        if test(mode):
            return name
    return "not a regular file"


def open_regular(path: Path, flags: int) -> int | None:
    """A descriptor of the regular file ``path`` (never through a symlink, never blocking on a FIFO); None when
    it does not exist and ``flags`` do not create it. Anything else under that name is a UsageError."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0), 0o644)
    except (FileNotFoundError, NotADirectoryError):  # not there (or a file where its folder should be)
        if flags & os.O_CREAT:
            raise
        return None
    except OSError as exc:
        try:
            mode = os.lstat(path).st_mode
        except OSError:
            raise exc from None
        if stat.S_ISREG(mode):
            raise
        raise UsageError(f"error: {path} is {_kind_of(mode)}, not a regular file: refusing to use it") from None
    st = os.fstat(fd)
    problem = None
    if not stat.S_ISREG(st.st_mode):
        problem = f"is {_kind_of(st.st_mode)}, not a regular file: refusing to use it"
    elif flags & (os.O_WRONLY | os.O_RDWR) and st.st_nlink > 1:
        problem = f"has {st.st_nlink} hard links: refusing to write to it (copy it to break the link)"
    if problem:
        os.close(fd)
        raise UsageError(f"error: {path} {problem}")
    return fd


@contextmanager
def collection_paused() -> Iterator[None]:
    """No cyclic garbage collection inside: reading makes no cycles, and collections every 700 new objects
    (a record is several) would traverse the records read so far again and again, doubling a read's time."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if collecting:
            gc.enable()


def warn_malformed(path: Path, bad: list[tuple[int, str]]) -> None:
    try:
        stat = os.stat(path)
        key = (str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)
    except OSError:
        key = (str(path), -1, -1)
    if key in _WARNED:
        return  # this manifest, unchanged, was read before: one warning is enough
    _WARNED.add(key)
    shown = ", ".join(f"line {number} ({why})" for number, why in bad[:3])
    more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
    what = "a malformed line" if len(bad) == 1 else f"{len(bad)} malformed lines"
    print(f"warning: {path}: skipped {what}: {shown}{more}", file=sys.stderr)
