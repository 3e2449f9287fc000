"""The run manifest: ``<out>/manifest.jsonl``, append-only, one JSON object a line, fsynced.

The one writer (:meth:`Manifest.append`) and the one reader (:func:`read_records`) of the typed records of
:mod:`sdbatch.core.record`. A torn last line (a crash mid-append) is ignored on read and cut off before the
next append, however long it is, so the file always parses. A malformed line (not JSON, or not the shape of
a record) is skipped with one warning line on stderr per manifest, naming it; it never stops a run.

Example::

    manifest = Manifest(out_dir / "manifest.jsonl")
    manifest.append(FailedRecord(job_id="...", stage="sketch", path="sketch/a-1-0123abcd.png", error="..."))
    done = manifest.outputs_by_job()
"""

from __future__ import annotations

import gc
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..core.record import OutputRecord, describe_invalid, parse_line, parse_record

MANIFEST_NAME = "manifest.jsonl"
TAIL_CHUNK = 1 << 16  # how far back each step of the torn-tail search reads
_WARNED: set[tuple[str, int, int]] = set()  # manifests (path, size, mtime) already warned about


def read_records(path: Path, kind: str | None = None) -> list[Any]:
    """Every whole, well-formed record of a manifest (of ``kind`` if given), in order (missing file: none)."""
    try:
        fh = open(path, "rb")
    except FileNotFoundError:
        return []
    records: list[Any] = []
    bad: list[tuple[int, str]] = []
    with fh, collection_paused():
        for number, raw in enumerate(fh, 1):
            if not raw.endswith(b"\n"):
                break  # the torn tail of a crashed append
            if not raw.strip():
                continue
            try:
                record = parse_line(raw)
            except ValueError as exc:  # invalid JSON, or a ValidationError (wrong shape)
                bad.append((number, describe_invalid(exc)))
                continue
            if kind is None or record.kind == kind:
                records.append(record)
    if bad:
        _warn(path, bad)
    return records


def read_outputs(path: Path) -> list[OutputRecord]:
    """The output records of a manifest, in order."""
    return read_records(path, "output")


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


def _warn(path: Path, bad: list[tuple[int, str]]) -> None:
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


def read_png_output(path: Path) -> OutputRecord | None:
    """The output record a PNG embeds (its ``sdbatch`` chunk), or None (no chunk, or not a record)."""
    from .artifacts import read_png_record

    data = read_png_record(path)
    if not isinstance(data, dict):
        return None
    try:
        record = parse_record(data)
    except ValueError:
        return None
    return record if isinstance(record, OutputRecord) else None


def complete_length(fh: Any, size: int) -> int:
    """The length of the file's whole lines: up to and including its last newline (0 when there is none)."""
    end = size
    while end > 0:
        start = max(0, end - TAIL_CHUNK)
        fh.seek(start)
        cut = fh.read(end - start).rfind(b"\n")
        if cut >= 0:
            return start + cut + 1
        end = start
    return 0


class Manifest:
    def __init__(self, path: Path):
        self.path = Path(path)
        self._fh = None

    def records(self) -> list[Any]:
        return read_records(self.path)

    def outputs_by_job(self) -> dict[str, list[OutputRecord]]:
        """job_id -> its output records, in order."""
        out: dict[str, list[OutputRecord]] = {}
        with collection_paused():
            for record in read_outputs(self.path):
                out.setdefault(record.job_id, []).append(record)
        return out

    def _open(self) -> Any:
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fh = open(self.path, "ab+")
            size = fh.seek(0, os.SEEK_END)
            if size:
                whole = complete_length(fh, size)
                if whole != size:  # a torn last line: cut it off, so the next record starts a line
                    fh.truncate(whole)
                fh.seek(0, os.SEEK_END)
            self._fh = fh
        return self._fh

    def append(self, record: Any) -> None:
        """Append one record (a model of :mod:`sdbatch.core.record`) as a line, and fsync."""
        fh = self._open()
        line = json.dumps(record.to_json(), ensure_ascii=False, separators=(", ", ": "))
        fh.write(line.encode() + b"\n")
        fh.flush()
        os.fsync(fh.fileno())

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
