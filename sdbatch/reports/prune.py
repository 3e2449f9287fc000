"""``sdbatch prune RECIPE [--dry-run]``: delete the outputs of jobs the recipe's current plan no longer has.

What it deletes is named by the manifest alone (``manifest.jsonl`` itself, never its index): each path's newest
output record whose job is not in the current plan (earlier versions of the recipe), with a video job's frames
and previews. It never deletes anything outside the output folder: a path that is absolute, holds ``..``, or
whose folder leads out through a symlink is refused, and a symlink is never followed nor deleted; a file that
was changed since it was recorded (size, or mtime and content) is the user's now and is kept. Each deleted file
gets a ``{"kind": "pruned", "job_id", "stage", "path", "sha256", "time"}`` line (one write, fsynced, after the
deletions), so ``verify``, the gallery and the done-check stop expecting it; an old output whose file was
already gone is recorded the same way. Folders left empty by the deletions are removed. It holds the folder's
run lock (:class:`~sdbatch.io.outdir.RunLock`) throughout, so it cannot race a run, and rewrites the gallery.

``--dry-run`` lists what it would delete and changes nothing (it takes no lock). A recipe none of whose jobs has
an output in the folder is refused (the wrong recipe for this folder would otherwise delete everything).

Exit codes: 0 (done, or nothing to prune), 1 (a file could not be deleted: the rest were), 2 (no manifest, a
recipe that does not plan, the folder in use by a run).
"""

from __future__ import annotations

import os
import stat
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..core.record import OutputRecord, PrunedRecord
from ..errors import EXIT_FAILED, EXIT_OK, UsageError
from ..io.manifest import MANIFEST_NAME, Manifest, ManifestWriteError, read_outputs
from ..runtime.outputs import output_state
from .untrusted import relpath_problem


def _candidates(out_dir: Path, current: set[str]) -> tuple[list[OutputRecord], bool]:
    """The newest live record of each path whose job is not current; and whether any current job has one."""
    latest: dict[str, OutputRecord] = {}
    for record in read_outputs(out_dir / MANIFEST_NAME):
        latest[record.path] = record
    has_current = any(r.job_id in current for r in latest.values())
    return [r for r in latest.values() if r.job_id not in current], has_current


def _where(out_dir: Path, base: str, rel: str) -> tuple[str, str]:
    """(``delete`` | ``gone`` | ``outside`` | ``not a file`` | ``changed``, the absolute path) for ``rel``."""
    full = os.path.join(str(out_dir), rel)
    if relpath_problem(rel):
        return "outside", full
    parent = os.path.realpath(os.path.dirname(full))
    if not (parent == base or parent.startswith(base.rstrip(os.sep) + os.sep)):
        return "outside", full
    try:
        st = os.lstat(full)
    except FileNotFoundError:
        return "gone", full
    except OSError:
        return "outside", full
    if not stat.S_ISREG(st.st_mode):
        return "not a file", full  # a symlink, a folder, ...: not what sdbatch wrote
    return "delete", full


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 100_000 else f"{n / 1e3:.1f} kB"


def prune_outputs(plan: Any, out_dir: Path, *, dry_run: bool = False, reporter: Any = print) -> int:
    """Delete (``dry_run``: list) the outputs of jobs not in ``plan``; see the module's docstring."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise UsageError(f"error: {out_dir} is not a folder")
    manifest = out_dir / MANIFEST_NAME
    if not (manifest.exists() or manifest.is_symlink()):
        raise UsageError(f"error: no {MANIFEST_NAME} in {out_dir}: nothing to prune")
    if dry_run:
        return _prune(plan, out_dir, True, reporter)
    from ..io.outdir import RunLock

    with RunLock(out_dir):
        return _prune(plan, out_dir, False, reporter)


def _prune(plan: Any, out_dir: Path, dry_run: bool, say: Any) -> int:
    current = set(plan.index)
    candidates, has_current = _candidates(out_dir, current)
    if not candidates:
        say(f"nothing to prune: every recorded output in {out_dir} belongs to the current plan")
        return EXIT_OK
    if not has_current:
        raise UsageError(f"error: none of the recipe's {len(current)} job(s) has an output in {out_dir}: is it the "
                         "recipe of this folder? Nothing deleted (run it first, then prune)")
    base = os.path.realpath(out_dir)
    pruned, failed, kept, freed, would = [], 0, 0, 0, 0
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    emptied: set[str] = set()
    for record in candidates:
        what, full = _where(out_dir, base, record.path)
        if what == "delete" and output_state(out_dir, record) == "changed":
            what = "changed"
        if what in ("outside", "not a file", "changed"):
            kept += 1
            why = {"outside": "leads out of the output folder", "not a file": "not a regular file",
                   "changed": "changed since it was recorded: yours now"}[what]
            say(f"kept     {record.path} ({why})")
            continue
        if what == "gone":
            say(f"gone     {record.path} (already missing; {'would be ' if dry_run else ''}recorded as pruned)")
        elif dry_run:
            freed += os.lstat(full).st_size
            would += 1
            say(f"would delete {record.path}")
        else:
            try:
                size = os.lstat(full).st_size
                os.unlink(full)
            except OSError as exc:
                failed += 1
                say(f"failed   {record.path}: {exc.strerror or exc}")
                continue
            freed += size
            emptied.add(os.path.dirname(full))
            say(f"deleted  {record.path}")
        pruned.append(PrunedRecord(job_id=record.job_id, stage=record.stage, path=record.path,
                                   sha256=record.sha256, time=now))
    jobs = len({r.job_id for r in pruned})
    if dry_run:
        say(f"would delete {would} file(s) of {jobs} job(s) no longer in the plan ({_size(freed)}); {kept} kept; "
            "nothing changed (--dry-run)")
        return EXIT_OK
    if pruned:
        writer = Manifest(out_dir / MANIFEST_NAME)
        try:
            writer.append_many(pruned)
        except ManifestWriteError as exc:
            say(str(exc))
            return EXIT_FAILED
        finally:
            writer.close()
    _remove_empty(out_dir, emptied)
    say(f"pruned {len(pruned)} output(s) of {jobs} job(s) no longer in the plan ({_size(freed)} freed)"
        + (f"; {kept} kept" if kept else "") + (f"; {failed} could not be deleted" if failed else ""))
    try:
        from .gallery import write_gallery

        write_gallery(out_dir, current=current)
    except Exception as exc:  # noqa: BLE001 - the gallery is a courtesy; the prune is done
        say(f"Warning: could not write {out_dir / 'index.html'}: {exc}")
    return EXIT_FAILED if failed else EXIT_OK


def _remove_empty(out_dir: Path, folders: set[str]) -> None:
    """Remove the folders (and their parents, up to ``out_dir``) that the deletions left empty."""
    top = os.path.realpath(out_dir)
    for folder in sorted(folders, key=len, reverse=True):
        while os.path.realpath(folder) != top and os.path.realpath(folder).startswith(top + os.sep):
            try:
                os.rmdir(folder)  # only an empty folder
            except OSError:
                break
            folder = os.path.dirname(folder)
