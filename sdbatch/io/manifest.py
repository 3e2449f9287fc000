"""The run manifest: ``<out>/manifest.jsonl``, append-only, one JSON object a line, fsynced.

The one writer (:meth:`Manifest.append`) and the one reader (:func:`read_records`) of the typed records of
:mod:`sdbatch.core.record`. A torn last line (a crash mid-append) is ignored on read and cut off before the
next append, however long it is, so the file always parses (only a tail that starts like a record is cut; any
other unterminated last line is ended with a newline instead, and then skipped as malformed). A malformed line
(not JSON, or not the shape of a record) is skipped with one warning line on stderr per manifest, naming it; it
never stops a run.

The manifest is only ever a regular file: a symlink, a folder, a FIFO or a device under its name is refused
(:class:`~sdbatch.errors.UsageError`, exit 2) for reading and writing, and so is a hard-linked one for writing.
A write that fails (a full disk) is undone (the partial line cut off) and raised as :class:`ManifestWriteError`;
so is an append after the output folder or the manifest was deleted or replaced.

Example::

    manifest = Manifest(out_dir / "manifest.jsonl")
    manifest.append(FailedRecord(job_id="...", stage="sketch", path="sketch/a-1-0123abcd.png", error="..."))
    done = manifest.outputs_by_job()     # from the index beside it (see sdbatch.io.index)
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Any

from ..core.record import OutputRecord, describe_invalid, parse_line, parse_record
from .regular import _WARNED, collection_paused, open_regular  # noqa: F401 - re-exported
from .regular import warn_malformed as _warn

MANIFEST_NAME = "manifest.jsonl"
TAIL_CHUNK = 1 << 16  # how far back each step of the torn-tail search reads
RECORD_START = b"{"  # every line the writer appends starts so: a torn tail that does not is not ours to cut
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


class OutputsByJob(dict):
    """job_id -> output lines (:meth:`Manifest.outputs_by_job`); ``states`` remembers what the done-check found
    on disk for each path, so one read of the manifest stats each file once."""

    def __init__(self) -> None:
        super().__init__()
        self.states: dict[str, str] = {}


class ManifestWriteError(Exception):
    """A record could not be appended (nothing of it is left in the file); ``str()`` is one line for the user."""


def read_records(path: Path, kind: str | None = None) -> list[Any]:
    """Every whole, well-formed record of a manifest (of ``kind`` if given), in order (missing file: none)."""
    fd = open_regular(Path(path), os.O_RDONLY)
    if fd is None:
        return []
    fh = os.fdopen(fd, "rb")
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
    """The output records of a manifest, in order, less those a later ``pruned`` line of their path retired
    (``sdbatch prune`` deleted the file: it is not expected to exist)."""
    records = [r for r in read_records(path) if r.kind in ("output", "pruned")]
    pruned = {r.path: i for i, r in enumerate(records) if r.kind == "pruned"}
    return [r for i, r in enumerate(records) if r.kind == "output" and pruned.get(r.path, -1) < i]


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


def describe_write_error(exc: OSError, path: Path) -> str:
    if exc.errno in NO_SPACE:
        return f"error: no space left writing {path}"
    return f"error: could not write {path}: {exc.strerror or exc}"


def _line(record: Any) -> bytes:
    return json.dumps(record.to_json(), ensure_ascii=False, separators=(", ", ": ")).encode() + b"\n"


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class Manifest:
    """The append side of a manifest (reading: :meth:`records`, :meth:`outputs_by_job`).

    The output folder's and the file's identity are taken when the file is first opened; every append checks
    them, so a run whose folder was deleted or replaced stops instead of recording into a file nobody sees."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._fd: int | None = None
        self._identity: tuple[tuple[int, int], tuple[int, int]] | None = None

    def records(self) -> list[Any]:
        return read_records(self.path)

    def outputs_by_job(self) -> OutputsByJob:
        """job_id -> its output lines, in order, as the done-check needs them (:class:`~.index.IndexEntry`:
        job id, stage, path, role, sha256, size, mtime; outputs retired by ``prune`` left out), from the
        manifest's index (:mod:`.index`; brought up to date, and saved when this manifest is open for writing)."""
        from .index import load_index

        out = OutputsByJob()
        with collection_paused():
            for entry in load_index(self.path, save=self._fd is not None).live_outputs():
                out.setdefault(entry.job_id, []).append(entry)
        return out

    def open(self) -> None:
        """Open for appending (creating it), cutting off a torn last line; a refused file is a UsageError."""
        if self._fd is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = open_regular(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND)
        assert fd is not None
        try:
            size = os.fstat(fd).st_size
            if size:
                with os.fdopen(os.dup(fd), "rb") as fh:
                    whole = complete_length(fh, size)
                if whole != size:
                    if os.pread(fd, len(RECORD_START), whole) == RECORD_START:
                        os.ftruncate(fd, whole)  # a torn last line: cut it off, so the next record starts a line
                    else:
                        _write_all(fd, b"\n")  # not a record of ours: keep it, end its line
            folder, own = os.stat(self.path.parent), os.fstat(fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self._identity = ((folder.st_dev, folder.st_ino), (own.st_dev, own.st_ino))

    def _check_identity(self) -> None:
        assert self._identity is not None
        folder_id, file_id = self._identity
        try:
            folder = os.stat(self.path.parent)
            same_folder = (folder.st_dev, folder.st_ino) == folder_id
        except OSError:
            same_folder = False
        if not same_folder:
            raise ManifestWriteError(f"error: the output folder {self.path.parent} was deleted or replaced during "
                                     "the run: stopped")
        try:
            own = os.stat(self.path)
            same_file = (own.st_dev, own.st_ino) == file_id
        except OSError:
            same_file = False
        if not same_file:
            raise ManifestWriteError(f"error: {self.path} was deleted or replaced during the run: stopped")

    def append(self, record: Any) -> None:
        """Append one record (a model of :mod:`sdbatch.core.record`) as a line, and fsync. On any failure
        nothing of the line stays in the file and ManifestWriteError says why."""
        self._write(_line(record))

    def _write(self, data: bytes) -> None:
        self.open()
        self._check_identity()
        fd = self._fd
        assert fd is not None
        start = os.lseek(fd, 0, os.SEEK_END)
        try:
            _write_all(fd, data)
            os.fsync(fd)
        except BaseException as exc:  # a full disk, or a second Ctrl-C between two writes of a long line
            try:
                os.ftruncate(fd, start)  # nothing half-recorded
            except OSError:
                pass  # then it is a torn tail, cut before the next append
            if isinstance(exc, OSError):
                raise ManifestWriteError(describe_write_error(exc, self.path)) from exc
            raise

    def append_many(self, records: list[Any]) -> None:
        """Append several records in one write and one fsync (all of them, or on failure none)."""
        if not records:
            return
        data = b"".join(_line(record) for record in records)
        self._write(data)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
