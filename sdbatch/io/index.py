"""A compact index of the manifest: ``<out>/.manifest-index.json``, beside ``manifest.jsonl``, never instead of it.

Reading 100,000 full records (prompt, params, inputs, versions, ...) costs seconds; what the done-check and the
gallery's "has anything changed" need is a few fields of each output line (job id, stage, path, role, sha256,
size, mtime) and where the line is, so its full record can be read when it is needed. The index holds exactly
that, and the sha256 and length of the manifest prefix it was built from. It is trusted only when the manifest
still starts with those very bytes (hashed again on every load: the JSONL is the truth): then only the lines
appended since are parsed; otherwise (missing, unreadable, another version, the manifest edited or truncated)
it is rebuilt from the whole JSONL. Lines are parsed by the one reader (:func:`~sdbatch.core.record.parse_line`),
so a malformed line is skipped here exactly as :func:`~sdbatch.io.manifest.read_records` skips it, with the
same one warning.

Only the manifest's writer (a ``run`` or ``prune`` holding the folder's lock) saves the index (atomically);
``plan``, ``verify`` and the gallery use it when it is valid and never write it. ``prune`` and ``verify``
read the JSONL itself.

Example::

    index = load_index(out / "manifest.jsonl")
    for entry in index.latest_outputs():      # IndexEntry: job_id, stage, path, role, sha256, size, mtime_ns
        ...
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

INDEX_NAME = ".manifest-index.json"
INDEX_VERSION = 1
CHUNK = 1 << 20
_MEMO: dict[tuple[str, int, int], ManifestIndex] = {}  # the last index loaded in this process (one manifest)


class IndexEntry:
    """An output line of the manifest, as the index keeps it; quacks like an OutputRecord for the done-check
    (``job_id``, ``path``, ``role``, ``is_part``, ``sha256``, ``size``, ``mtime_ns``); ``offset`` is where the
    line starts, for :func:`read_record_at`."""

    __slots__ = ("job_id", "stage", "path", "role", "sha256", "size", "mtime_ns", "offset")

    def __init__(self, job_id: str, stage: str, path: str, role: str, sha256: str | None, size: int | None,
                 mtime_ns: int | None, offset: int):
        self.job_id, self.stage, self.path, self.role = job_id, stage, path, role
        self.sha256, self.size, self.mtime_ns, self.offset = sha256, size, mtime_ns, offset

    @property
    def is_part(self) -> bool:
        return self.role in ("frame", "preview")

    def row(self) -> list[Any]:
        return [self.job_id, self.stage, self.path, self.role, self.sha256, self.size, self.mtime_ns, self.offset]


@dataclass
class ManifestIndex:
    outputs: list[IndexEntry] = field(default_factory=list)  # every output line, in order
    pruned: dict[str, int] = field(default_factory=dict)  # path -> offset of its newest ``pruned`` line
    last_start: int | None = None  # offset of the newest run-start line
    bad: list[tuple[int, str]] = field(default_factory=list)  # malformed lines: (line number, why)
    lines: int = 0  # lines covered
    covered: int = 0  # bytes covered (whole lines)
    digest: str = hashlib.sha256().hexdigest()  # sha256 of those bytes

    def live_outputs(self) -> list[IndexEntry]:
        """Output lines not superseded by a later ``pruned`` line of their path, in order."""
        pruned = self.pruned
        if not pruned:
            return list(self.outputs)
        return [e for e in self.outputs if pruned.get(e.path, -1) < e.offset]

    def latest_outputs(self) -> list[IndexEntry]:
        """The newest live line of each path, in order of each path's first line."""
        latest: dict[str, IndexEntry] = {}
        for entry in self.live_outputs():
            latest[entry.path] = entry  # a later line wins; the path keeps its first place
        return list(latest.values())

    def to_json(self) -> dict[str, Any]:
        return {"version": INDEX_VERSION, "covered": self.covered, "sha256": self.digest, "lines": self.lines,
                "last_start": self.last_start, "bad": [list(b) for b in self.bad],
                "pruned": [[path, offset] for path, offset in self.pruned.items()],
                "outputs": [e.row() for e in self.outputs]}


def _from_json(data: Any) -> ManifestIndex | None:
    """The index a saved file holds, or None when it is not one of this version (never an exception)."""
    try:
        if not isinstance(data, dict) or data.get("version") != INDEX_VERSION:
            return None
        index = ManifestIndex(lines=int(data["lines"]), covered=int(data["covered"]), digest=str(data["sha256"]),
                              last_start=None if data["last_start"] is None else int(data["last_start"]))
        index.bad = [(int(n), str(why)) for n, why in data["bad"]]
        index.pruned = {str(path): int(offset) for path, offset in data["pruned"]}
        for row in data["outputs"]:
            job_id, stage, path, role, sha256, size, mtime_ns, offset = row
            if not all(isinstance(v, str) for v in (job_id, stage, path, role)) or not isinstance(offset, int):
                return None
            index.outputs.append(IndexEntry(job_id, stage, path, role, sha256 if isinstance(sha256, str) else None,
                                            size if isinstance(size, int) else None,
                                            mtime_ns if isinstance(mtime_ns, int) else None, offset))
        return index
    except (KeyError, TypeError, ValueError):
        return None


def index_path(manifest: Path) -> Path:
    return Path(manifest).with_name(INDEX_NAME)


def _saved(manifest: Path) -> ManifestIndex | None:
    try:
        raw = index_path(manifest).read_bytes()
    except OSError:
        return None
    try:
        return _from_json(json.loads(raw))
    except ValueError:
        return None


def _prefix_hash(fh: Any, covered: int, size: int) -> Any:
    """The sha256 (a running hash object) of the manifest's first ``covered`` bytes, or None past its end."""
    if covered > size:
        return None
    digest = hashlib.sha256()
    left = covered
    fh.seek(0)
    while left:
        chunk = fh.read(min(CHUNK, left))
        if not chunk:
            return None
        digest.update(chunk)
        left -= len(chunk)
    return digest


def _extend(fh: Any, index: ManifestIndex, digest: Any) -> bool:
    """Parse the whole lines after ``index.covered`` into it (``digest``: the running hash of what it
    covers); True when any was read."""
    from ..core.record import OutputRecord, PrunedRecord, RunRecord, describe_invalid, parse_line
    from .regular import collection_paused

    fh.seek(index.covered)
    offset, grew = index.covered, False
    with collection_paused():
        for raw in fh:
            if not raw.endswith(b"\n"):
                break  # a torn tail: not covered, read again next time
            start, offset = offset, offset + len(raw)
            digest.update(raw)
            index.lines += 1
            grew = True
            if not raw.strip():
                continue
            try:
                record = parse_line(raw)
            except ValueError as exc:
                index.bad.append((index.lines, describe_invalid(exc)))
                continue
            if isinstance(record, OutputRecord):
                index.outputs.append(IndexEntry(record.job_id, record.stage, record.path, record.role,
                                                record.sha256, record.size, record.mtime_ns, start))
            elif isinstance(record, PrunedRecord):
                index.pruned[record.path] = start
            elif isinstance(record, RunRecord) and record.event == "start":
                index.last_start = start
    index.covered = offset
    index.digest = digest.hexdigest()
    return grew


def load_index(manifest: Path, *, save: bool = False) -> ManifestIndex:
    """The index of ``manifest`` (empty when there is none): the saved one brought up to date when the manifest
    still starts with what it covered, else rebuilt from the JSONL. ``save``: write it back (the manifest's
    writer only; a write that fails is ignored: the index is a cache)."""
    from .regular import open_regular, warn_malformed

    fd = open_regular(Path(manifest), os.O_RDONLY)
    if fd is None:
        return ManifestIndex()
    with os.fdopen(fd, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        st = os.fstat(fh.fileno())
        memo_key = (str(Path(manifest).absolute()), st.st_dev, st.st_ino)
        index = _MEMO.get(memo_key) or _saved(manifest)  # this process read it already: no JSON to parse again
        digest = _prefix_hash(fh, index.covered, size) if index is not None else None
        changed = False
        if index is None or digest is None or digest.hexdigest() != index.digest:
            index, digest, changed = ManifestIndex(), hashlib.sha256(), True
        if index.covered < size:
            changed = _extend(fh, index, digest) or changed
    _MEMO.clear()
    _MEMO[memo_key] = index  # checked against the bytes again on every load, as a saved one is
    if index.bad:
        warn_malformed(manifest, index.bad)
    if save and changed:
        from .artifacts import atomic_write_bytes

        try:
            atomic_write_bytes(index_path(manifest), json.dumps(index.to_json(), separators=(",", ":")).encode())
        except OSError:
            pass
    return index


def read_record_at(fh: Any, offset: int) -> Any:
    """The record of the manifest line at ``offset`` (``fh``: the manifest opened ``rb``), or None."""
    from ..core.record import parse_line

    fh.seek(offset)
    raw = fh.readline()
    try:
        return parse_line(raw) if raw.endswith(b"\n") else None
    except ValueError:
        return None
