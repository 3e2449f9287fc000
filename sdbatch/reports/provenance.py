"""Where an output's record is: what ``sdbatch inspect`` (:mod:`.inspect`) and ``sdbatch reproduce``
(:mod:`.reproduce`) start from.

An output's record (its manifest line, an :class:`~sdbatch.core.record.OutputRecord`) comes from the PNG's
``sdbatch`` text chunk or, for an mp4 or a PNG without the chunk, from the ``manifest.jsonl`` of the output
folder the file lives in (the nearest parent folder holding one, matched by the file's path relative to that
folder).

The record of a PNG is untrusted input (:mod:`.untrusted`): an oversized chunk, invalid JSON or a field of
the wrong type is refused (``error: <file>: metadata field '<field>': ...``), and a path that is absolute,
holds ``..`` or leads out of its folder through a symlink is never followed.

Exit codes: ``inspect`` 0, or 2 (missing file, no metadata, unreadable metadata). ``reproduce`` 0 match,
1 pixels differ, 2 cannot reproduce (no metadata, untrusted metadata, unsupported output kind,
missing/changed input or model, render error).

Example::

    $ sdbatch inspect outputs/wolves/sketch/a-wolf-1000-0123abcd.png
    $ sdbatch reproduce outputs/wolves/sketch/a-wolf-1000-0123abcd.png
    match
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from ..core.record import OutputRecord
from ..io.artifacts import PngTextError, read_png_text
from ..io.manifest import MANIFEST_NAME, read_outputs, read_records
from .untrusted import UntrustedMetadata, inside, parse_embedded, path_problems, relpath_problem

EXIT_MATCH, EXIT_DIFFERS, EXIT_CANNOT = 0, 1, 2


class ProvenanceError(Exception):
    """One line for the user; the command exits 2."""


@dataclass
class Found:
    """An output file's record and where it came from."""

    file: Path  # absolute
    record: OutputRecord
    source: str  # "png" | "manifest"
    out_dir: Path | None  # the output folder (holding manifest.jsonl), when known
    manifest_record: OutputRecord | None = None  # the manifest line for this path, when there is one
    notes: list[str] = field(default_factory=list)
    #: (field, why) of the record's paths that are not followed (see :mod:`.untrusted`)
    untrusted: list[tuple[str, str]] = field(default_factory=list)


def abs_path(path: Path) -> Path:
    return Path(os.path.abspath(Path(path).expanduser()))


def short(digest: Any, n: int = 12) -> str:
    return str(digest)[:n] if digest else "-"


def _manifest_dirs(file: Path) -> list[Path]:
    """Parent folders of ``file`` holding a manifest, nearest first."""
    return [folder for folder in file.parents if (folder / MANIFEST_NAME).is_file()]


def latest_output(out_dir: Path, rel: str) -> OutputRecord | None:
    latest = None
    for record in read_outputs(out_dir / MANIFEST_NAME):
        if record.path == rel:
            latest = record
    return latest


def _out_dir_from_record(file: Path, record: OutputRecord) -> Path | None:
    """The folder that ``record.path`` (a safe relative path) is relative to, if ``file`` sits at that path."""
    parts = PurePosixPath(record.path).parts if relpath_problem(record.path) is None else ()
    if parts and len(file.parts) > len(parts) and tuple(file.parts[-len(parts):]) == parts:
        return Path(*file.parts[:-len(parts)])
    return None


def read_embedded(file: Path, shown: Path) -> OutputRecord | None:
    """The record of a PNG's ``sdbatch`` chunk (None: no chunk), read as untrusted input (see :mod:`.untrusted`).
    Raises :class:`ProvenanceError` naming the field."""
    try:
        text = read_png_text(file).get("sdbatch")  # both chunks: an oversized ``parameters`` is refused too
        return parse_embedded(text) if text is not None else None
    except PngTextError as exc:
        if exc.key is None:
            return None  # not a PNG: no embedded record
        raise ProvenanceError(UntrustedMetadata(exc.key, str(exc)).line(shown)) from None
    except UntrustedMetadata as exc:
        raise ProvenanceError(exc.line(shown)) from None
    except OSError as exc:
        raise ProvenanceError(f"{shown}: cannot read: {exc.strerror or exc}") from None


def _has_job(out_dir: Path, job_id: str) -> bool:
    return any(getattr(r, "job_id", None) == job_id for r in read_records(out_dir / MANIFEST_NAME))


def find_record(path: Path) -> Found:
    """The record of an output file. Raises :class:`ProvenanceError` (missing file, no metadata)."""
    file = abs_path(path)
    if not file.exists():
        raise ProvenanceError(f"{path}: no such file")
    if not file.is_file():
        raise ProvenanceError(f"{path}: not a file")
    embedded = read_embedded(file, path) if file.suffix.lower() == ".png" else None
    if embedded is not None:
        untrusted = path_problems(embedded)
        out_dir = _out_dir_from_record(file, embedded)
        if out_dir is not None and inside(out_dir, embedded.path) is None:
            untrusted.append(("path", f"{embedded.path!r} leads out of {out_dir} through a symlink"))
            out_dir = None
        manifest_record = None
        if out_dir is not None and (out_dir / MANIFEST_NAME).is_file():
            manifest_record = latest_output(out_dir, embedded.path)
        elif out_dir is None:  # moved or renamed: an output folder above it that has this job
            out_dir = next((d for d in _manifest_dirs(file) if _has_job(d, embedded.job_id)), None)
        return Found(file, embedded, "png", out_dir, manifest_record, untrusted=untrusted)
    for out_dir in _manifest_dirs(file):
        rel = file.relative_to(out_dir).as_posix()
        record = latest_output(out_dir, rel)
        if record is not None:
            return Found(file, record, "manifest", out_dir, record)
    what = "no 'sdbatch' PNG chunk and " if file.suffix.lower() == ".png" else ""
    raise ProvenanceError(f"{path}: no sdbatch metadata ({what}no {MANIFEST_NAME} record for it in a parent folder)")


def check_manifest_hash(found: Found) -> None:
    """Note when the file is not the one the manifest recorded (a re-saved or edited file)."""
    from ..io.hashing import sha256_file

    recorded = found.manifest_record.sha256 if found.manifest_record is not None else None
    if recorded and sha256_file(found.file) != recorded:
        found.notes.append(f"the file's sha256 differs from the one recorded in {MANIFEST_NAME}: it was "
                           "modified (or re-saved) after rendering")
