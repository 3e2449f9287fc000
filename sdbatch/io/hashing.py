"""Content hashes of files and folders, remembered by (size, mtime, ctime, inode) so big weights are read once.

A file rewritten in place with its size and mtime restored still has a new ctime (no user call sets it), and
one replaced by a rename has a new inode: either makes it hashed again.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from .artifacts import atomic_write_bytes

CHUNK = 1 << 20


def cache_dir() -> Path:
    """sdbatch's cache folder: ``$SDBATCH_CACHE`` or ``~/.cache/sdbatch``."""
    return Path(os.environ.get("SDBATCH_CACHE") or Path.home() / ".cache" / "sdbatch")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _key(st: os.stat_result) -> list[int]:
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


class HashCache:
    """sha256 of files keyed by real path, size, mtime, ctime and inode; persisted as JSON in the cache folder.

    An entry is ``[size, mtime_ns, sha256, ctime_ns, inode]`` (the digest stays third, where readers find it).

    Example::

        cache = HashCache.open()
        digest = cache.file("weights.safetensors")   # read once, then remembered
        cache.save()
    """

    def __init__(self, path: Path | None, entries: dict[str, list]):
        self.path = path
        self.entries = entries
        self.dirty = False

    @classmethod
    def open(cls, path: Path | None = None) -> HashCache:
        path = path or cache_dir() / "hashes.json"
        try:
            entries = json.loads(path.read_text())
            if not isinstance(entries, dict):
                entries = {}
        except (OSError, ValueError):
            entries = {}
        return cls(path, entries)

    def file(self, path: str | os.PathLike) -> str:
        real = os.path.realpath(path)
        st = os.stat(real)
        key = _key(st)
        hit = self.entries.get(real)
        if isinstance(hit, list) and len(hit) >= 5 and [*hit[:2], *hit[3:5]] == key:
            return hit[2]
        digest = sha256_file(real)
        if _key(os.stat(real)) != key:
            return digest  # changed while it was read: not remembered
        self.entries[real] = [*key[:2], digest, *key[2:]]
        self.dirty = True
        return digest

    def folder(self, path: str | os.PathLike) -> str:
        """A hash of every file's relative path and content (hidden files and folders skipped)."""
        root = Path(path)
        digest = hashlib.sha256()
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                if name.startswith("."):
                    continue
                full = Path(dirpath) / name
                rel = full.relative_to(root).as_posix()
                digest.update(f"{rel}\0{self.file(full)}\n".encode())
        return digest.hexdigest()

    def save(self) -> None:
        if not self.dirty or self.path is None:
            return
        try:
            atomic_write_bytes(self.path, json.dumps(self.entries).encode())
            self.dirty = False
        except OSError:
            pass  # a cache is an optimisation: never fail a run for it
