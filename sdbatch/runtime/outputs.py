"""What the manifest says against what is on disk: which jobs are done, and which outputs went missing or changed.

A job is done when the newest record of its output is in the manifest and the file is there as written: the same
size and mtime (records written before sdbatch kept them are trusted by existence). A job whose file is gone is
pending (``missing``); one whose file was changed is pending too (``changed``), and before it is rendered again
the changed file is kept beside it as ``<name>.edited-<UTC time of its mtime>.<ext>`` (never overwritten).
Never imports torch: ``plan`` uses it.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core.record import OutputRecord
from ..io.hashing import sha256_file

if TYPE_CHECKING:
    from ..core.plan import Plan


def output_state(out_dir: Path, record: Any, states: dict[str, str] | None = None) -> str:
    """``ok``, ``missing`` (no regular file there) or ``changed`` (its size differs from the record's, or its
    mtime does and so does its content: a folder copied without keeping times, or a touched file, is not
    re-rendered). ``record``: an OutputRecord or an index entry (path, sha256, size, mtime_ns); ``states``
    remembers the answer by path (one manifest read states each file once)."""
    if states is not None:
        known = states.get(record.path)
        if known is not None:
            return known
    state = _state(os.path.join(out_dir, record.path), record)
    if states is not None:
        states[record.path] = state
    return state


def _state(path: str, record: Any) -> str:
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return "missing"
    if not stat.S_ISREG(st.st_mode):
        return "missing"
    if record.size is not None and st.st_size != record.size:
        return "changed"
    if record.mtime_ns is not None and st.st_mtime_ns != record.mtime_ns:
        try:
            same = bool(record.sha256) and sha256_file(Path(path)) == record.sha256
        except OSError:
            return "missing"
        return "ok" if same else "changed"
    return "ok"


def latest_records(by_job: dict[str, list[OutputRecord]]) -> dict[tuple[str, str], OutputRecord]:
    """(job_id, path) -> the newest record of that output (a re-render supersedes the older lines)."""
    return {(job_id, r.path): r for job_id, records in by_job.items() for r in records}


@dataclass
class OutputCheck:
    done: dict[str, Any] = field(default_factory=dict)  # job_id -> its final output's record (or index entry)
    missing: set[str] = field(default_factory=set)  # job ids whose recorded output is gone
    changed: set[str] = field(default_factory=set)  # job ids whose recorded output was changed since

    def status(self, job_id: str) -> tuple[str, str | None]:
        """(``done`` | ``pending``, why a recorded job is pending: ``missing`` | ``changed`` | None)."""
        if job_id in self.done:
            return "done", None
        return "pending", "missing" if job_id in self.missing else "changed" if job_id in self.changed else None


def check_outputs(plan: Plan, by_job: dict[str, list[Any]]) -> OutputCheck:
    """The state of each planned job's final output (``by_job``: :meth:`Manifest.outputs_by_job`; a record
    a later ``prune`` line retired is not there: its job is pending, not missing)."""
    check = OutputCheck()
    states = getattr(by_job, "states", None)
    index = plan.index
    for job_id, records in by_job.items():
        job = index.get(job_id)
        if job is None:
            continue
        output = job.output
        record = records[-1] if records[-1].path == output else \
            next((r for r in reversed(records) if r.path == output), None)
        if record is None:
            continue
        state = output_state(plan.out_dir, record, states)
        if state == "ok":
            check.done[job_id] = record
        else:
            (check.missing if state == "missing" else check.changed).add(job_id)
    return check


def done_jobs(plan: Plan, by_job: dict[str, list[OutputRecord]]) -> dict[str, OutputRecord]:
    """job_id -> final output record, for jobs whose final output is recorded and on disk as written."""
    return check_outputs(plan, by_job).done


def recorded_outputs(by_job: dict[str, list[OutputRecord]], out_dir: Path | None = None) -> set[tuple[str, str]]:
    """(job_id, path) of every recorded output; with ``out_dir``, of those still on disk as written (an output
    that went missing or changed is rendered again, and that render must be recorded)."""
    latest = latest_records(by_job)
    if out_dir is None:
        return set(latest)
    states = getattr(by_job, "states", None)
    return {key for key, record in latest.items() if output_state(out_dir, record, states) == "ok"}


def edited_name(path: Path) -> Path:
    """``name.edited-20261201T203000.png`` beside ``path`` (its mtime, UTC), one that does not exist yet."""
    stamp = datetime.fromtimestamp(path.stat().st_mtime, timezone.utc).strftime("%Y%m%dT%H%M%S")
    for n in range(1, 1000):
        extra = f"-{n}" if n > 1 else ""
        candidate = path.with_name(f"{path.stem}.edited-{stamp}{extra}{path.suffix}")
        if not (candidate.exists() or candidate.is_symlink()):
            return candidate
    raise FileExistsError(f"too many edited copies of {path}")


def keep_edited(out_dir: Path, rel: str) -> Path | None:
    """Move the changed output ``rel`` aside (never over another file); returns where it went."""
    path = out_dir / rel
    if not path.is_file():
        return None
    target = edited_name(path)
    try:
        os.link(path, target)  # fails rather than overwrite
        os.unlink(path)
    except OSError:
        if target.exists() or target.is_symlink():
            raise
        os.rename(path, target)  # a filesystem without hard links
    return target
