"""Run a plan: skip what is done, render the rest, isolate failures, report progress, stop cleanly.

Resume rules: a job is done when the manifest has its output line and the file is there as written (see
:mod:`.outputs`: a missing or changed output is rendered again, a changed one kept aside first). A file under
its final name but without a manifest line (killed between the rename and the append) is adopted from the
record embedded in it. Temp files of a killed run are removed first. ``force`` re-renders everything.
The first Ctrl-C, SIGTERM or SIGHUP finishes the current batch and stops (exit 130, 143, 129; see :mod:`.stop`);
a second stops at once. A manifest write that fails stops the run at once (exit 1), and so do outputs that
keep failing for a full disk.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..config.recipe import LoadedRecipe
from ..core.job import Job
from ..core.plan import Plan
from ..core.record import FailedRecord, OutputRecord, RunRecord, SkippedRecord
from ..errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, UsageError  # noqa: F401
from ..io.artifacts import clean_temp_files
from ..io.hashing import sha256_bytes, sha256_file
from ..io.manifest import MANIFEST_NAME, Manifest, ManifestWriteError, describe_write_error, read_png_output
from .outputs import OutputCheck, check_outputs, done_jobs, keep_edited, recorded_outputs  # noqa: F401
from .stop import StopSignals

NO_SPACE_STREAK = 3  # outputs failing in a row for a full disk stop the run


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def git_info(path: Path) -> tuple[str | None, bool | None]:
    """(commit, dirty) of the git repository holding ``path``; (None, None) outside git."""
    try:
        commit = subprocess.run(["git", "-C", str(path.parent), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=10)
        if commit.returncode:
            return None, None
        status = subprocess.run(["git", "-C", str(path.parent), "status", "--porcelain", "--", path.name],
                                capture_output=True, text=True, timeout=10)
        return commit.stdout.strip(), bool(status.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return None, None


def recipe_info(loaded: LoadedRecipe) -> dict[str, Any]:
    commit, dirty = git_info(loaded.path.resolve())
    return {"path": str(loaded.path), "dir": str(loaded.path.resolve().parent),
            "sha256": sha256_bytes(loaded.text.encode()), "git_commit": commit, "git_dirty": dirty}


def adopt_orphans(plan: Plan, manifest: Manifest, done: dict[str, OutputRecord],
                  recorded: set[tuple[str, str]], skip: Collection[str] = ()) -> int:
    """Record outputs (images, video frames) written but not yet recorded when a run was killed.

    ``done`` and ``recorded`` are updated with what is adopted; jobs in ``skip`` (a recorded output that was
    changed since: the file is the user's now) are left alone."""
    adopted = 0
    for job in plan.jobs:
        if job.job_id in done or job.job_id in skip:
            continue
        candidates = [plan.out_dir / job.output]
        if not job.output.endswith(".png"):
            frames = plan.out_dir / job.frames_dir
            candidates = sorted(frames.glob("*.png")) if frames.is_dir() else []
        for path in candidates:
            rel = path.relative_to(plan.out_dir).as_posix()
            if (job.job_id, rel) in recorded or not path.is_file():
                continue
            record = read_png_output(path)
            if record is None or record.job_id != job.job_id or record.path != rel:
                continue
            record.sha256 = sha256_file(path)
            st = path.stat()
            record.size, record.mtime_ns = st.st_size, st.st_mtime_ns
            manifest.append(record)
            recorded.add((job.job_id, rel))
            adopted += 1
            if rel == job.output:
                done[job.job_id] = record
    return adopted


def select_jobs(plan: Plan, done: Collection[str], only: list[str]) -> list[Job]:
    """Pending jobs to run: all, or those of the ``only`` stages plus the upstream jobs they still lack."""
    by_id = plan.index
    if not only:
        return [job for job in plan.jobs if job.job_id not in done]
    needed: set[str] = set()
    stack = [job.job_id for job in plan.jobs if job.stage in only and job.job_id not in done]
    while stack:
        job_id = stack.pop()
        if job_id in needed:
            continue
        needed.add(job_id)
        stack.extend(dep for dep in by_id[job_id].deps if dep not in done and dep in by_id)
    return [job for job in plan.jobs if job.job_id in needed]


@dataclass
class StageStats:
    jobs: int = 0
    done_before: int = 0
    rendered: int = 0
    failed: int = 0
    skipped: int = 0


@dataclass
class RunSink:
    """The driver's end of an executor: writes the manifest, counts, shows progress, carries the stop flag.

    A manifest write that fails (``fatal``) stops the run at once and nothing more is written; outputs that
    fail for a full disk ``NO_SPACE_STREAK`` times in a row stop it too (``halt``; the manifest still works)."""

    manifest: Manifest
    plan: Plan
    progress: Any
    stats: dict[str, StageStats]
    stop_event: threading.Event
    recorded: set[tuple[str, str]] = field(default_factory=set)
    failures: list[tuple[str, str, str]] = field(default_factory=list)
    lock: threading.RLock = field(default_factory=threading.RLock)  # the writer thread emits too
    fatal: str | None = None
    halt: str | None = None
    no_space_streak: int = 0
    roles: Counter = field(default_factory=Counter)  # outputs recorded by this run: image, frame, video, preview

    def stop_requested(self) -> bool:
        return self.stop_event.is_set() or self.fatal is not None or self.halt is not None

    def started(self, jobs: list[Job]) -> None:
        self.progress.current(jobs[0].stage, len(jobs))

    def frames(self, job: Job, done: int, total: int) -> None:
        """A video job has ``done`` of its ``total`` frames (the worker's ``on_frames``; optional)."""
        with self.lock:
            if self.fatal is None and hasattr(self.progress, "frames"):
                self.progress.frames(job, done, total)

    def _append(self, record: Any) -> bool:
        if self.fatal is not None:
            return False
        try:
            self.manifest.append(record)
            return True
        except ManifestWriteError as exc:
            self.fatal = str(exc)
        except OSError as exc:  # not through Manifest.append's own handling (a replaced writer)
            self.fatal = describe_write_error(exc, self.manifest.path)
        return False

    def output(self, record: OutputRecord) -> None:
        with self.lock:
            key = (record.job_id, record.path)
            if key in self.recorded:
                return  # a retried job (e.g. a lost Ray worker) must not be recorded twice
            if self._append(record):
                self.recorded.add(key)
                self.roles[record.role] += 1

    def finished(self, result: Any) -> None:
        with self.lock:
            if self.fatal is None:
                self._finished(result)

    def _finished(self, result: Any) -> None:
        job = self.plan.index[result.job_id]
        if result.error:
            self.stats[job.stage].failed += 1
            self.failures.append((job.stage, job.output, result.error))
            self._append(FailedRecord(job_id=job.job_id, stage=job.stage, path=job.output,
                                      error=result.error, time=now_iso()))
            self.progress.failed(job, result.error)
            self.no_space_streak = self.no_space_streak + 1 if getattr(result, "no_space", False) else 0
            if self.no_space_streak >= NO_SPACE_STREAK and self.halt is None:
                self.halt = (f"error: no space left writing outputs to {self.plan.out_dir} "
                             f"({self.no_space_streak} in a row failed): stopped")
        else:
            self.no_space_streak = 0
            for record in result.records:  # executors that do not emit as they go
                self.output(record)
            self.stats[job.stage].rendered += 1
            self.progress.done(job, result.seconds)

    def skipped(self, job: Job, reason: str) -> None:
        with self.lock:
            if self.fatal is None:
                self._skipped(job, reason)

    def _skipped(self, job: Job, reason: str) -> None:
        self.stats[job.stage].skipped += 1
        self._append(SkippedRecord(job_id=job.job_id, stage=job.stage, path=job.output, reason=reason,
                                   time=now_iso()))
        self.progress.skipped(job, reason)


@dataclass
class RunOutcome:
    exit_code: int
    stats: dict[str, StageStats]
    failures: list[tuple[str, str, str]]
    interrupted: bool = False
    error: str | None = None  # why the run stopped early (a full disk, a vanished folder): one line
    seconds: float = 0.0  # the run's wall time
    roles: dict[str, int] = field(default_factory=dict)  # outputs rendered by role: image, frame, video
    signal: str | None = None  # what stopped an interrupted run: SIGINT, SIGTERM, SIGHUP


def keep_changed(out_dir: Path, todo: list[Job], check: OutputCheck, reporter: Any) -> None:
    """Before re-rendering them, move the changed outputs of ``todo`` aside and say what is rendered again."""
    kept = []
    for job in todo:
        if job.job_id in check.changed:
            try:
                target = keep_edited(out_dir, job.output)
            except OSError as exc:
                raise UsageError(f"error: cannot keep the changed {out_dir / job.output} aside: {exc}") from None
            if target is not None:
                kept.append(target)
    if kept:
        reporter.say(f"{len(kept)} output(s) changed since they were recorded: kept as {kept[0].name}"
                     f"{' and others' if len(kept) > 1 else ''}; rendering them again")
    missing = sum(job.job_id in check.missing for job in todo)
    if missing:
        reporter.say(f"{missing} recorded output(s) are missing: rendering them again")


def run_plan(loaded: LoadedRecipe, plan: Plan, *, force: bool = False, only: list[str] | None = None,
             executor: str = "local", executor_options: dict[str, Any] | None = None,
             reporter: Any = None) -> RunOutcome:
    """Render every pending job of ``plan`` into ``plan.out_dir``; returns the outcome and exit code.

    The caller holds the folder's :class:`~sdbatch.io.outdir.RunLock`. A manifest that cannot be used is a
    UsageError (exit 2); one that fails mid-run (a full disk) ends the run at once (``error``, exit 1)."""
    from .progress import Reporter

    out_dir = plan.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    reporter = reporter or Reporter()
    manifest = Manifest(out_dir / MANIFEST_NAME)
    try:
        manifest.open()  # refuses what is not a regular file, and cuts a torn tail, before anything else
    except OSError as exc:
        raise UsageError(f"error: cannot write {manifest.path}: {exc.strerror or exc}") from None
    began = time.time()
    try:
        return _run(loaded, plan, manifest, reporter, force, list(only or []), executor, executor_options or {})
    except (ManifestWriteError, OSError) as exc:
        reporter.stop()
        why = str(exc) if isinstance(exc, ManifestWriteError) else \
            describe_write_error(exc, Path(exc.filename) if exc.filename else manifest.path)
        return RunOutcome(EXIT_FAILED, {}, [], error=why, seconds=time.time() - began)
    finally:
        manifest.close()


def _run(loaded: LoadedRecipe, plan: Plan, manifest: Manifest, reporter: Any, force: bool, only: list[str],
         executor: str, executor_options: dict[str, Any]) -> RunOutcome:
    from .executors import make_executor
    from .quiet import quiet_libraries
    from .worker import RunInfo, software_versions

    began = time.time()
    out_dir = plan.out_dir
    removed = clean_temp_files(out_dir)
    if removed:
        reporter.say(f"Removed {len(removed)} unfinished temp file(s) from an interrupted run")
    by_job = manifest.outputs_by_job()  # the manifest is read once
    check = check_outputs(plan, by_job)
    recorded = set() if force else recorded_outputs(by_job, out_dir)
    del by_job
    if not force:
        adopted = adopt_orphans(plan, manifest, check.done, recorded, skip=check.changed)
        if adopted:
            reporter.say(f"Recorded {adopted} output(s) written just before an interruption")
    done = set() if force else set(check.done)  # ids: 20,000 records held through a run would slow every collection
    todo = select_jobs(plan, done, only) if not force else [job for job in plan.jobs if not only or job.stage in only]
    keep_changed(out_dir, todo, check, reporter)
    stats = {name: StageStats() for name in plan.stage_order}
    for job in plan.jobs:
        stats[job.stage].jobs += 1
        if job.job_id in done:
            stats[job.stage].done_before += 1
    del check
    info = RunInfo(str(out_dir), str(loaded.base_dir), recipe_info(loaded), software_versions(), force=force)
    if info.recipe.get("git_dirty"):
        reporter.say(f"Warning: {loaded.path} has uncommitted changes; commit it so this run can be reproduced "
                     "from git")
    run_id = uuid.uuid4().hex[:12]
    manifest.append(RunRecord(event="start", run_id=run_id, time=now_iso(), recipe=info.recipe,
                              versions=info.versions, jobs=len(plan.jobs), pending=len(todo),
                              rehearse=plan.rehearse, force=force, only=only, executor=executor, pid=os.getpid()))
    stop = threading.Event()
    sink = RunSink(manifest, plan, reporter, stats, stop, recorded)
    signals = StopSignals(stop, reporter.say)
    interrupted = False
    started = time.time()
    reporter.start(len(todo), sum(s.done_before for s in stats.values()))
    try:
        with signals:
            if todo:
                quiet_libraries()  # imports diffusers: only when there is something to render
                make_executor(executor, info, **executor_options).execute(todo, sink)
    except KeyboardInterrupt:
        interrupted = True
    except ManifestWriteError:
        raise
    except BaseException as exc:
        # the executor itself failed (e.g. an unreachable Ray cluster): close the run in the manifest
        reporter.stop()
        if sink.fatal is None:
            manifest.append(RunRecord(event="end", run_id=run_id, time=now_iso(),
                                      seconds=round(time.time() - started, 3), exit_code=None,
                                      error=f"{type(exc).__name__}: {exc}", interrupted=False))
        raise
    finally:
        reporter.stop()
    if sink.fatal is not None:
        raise ManifestWriteError(sink.fatal)  # nothing more is written: not even the run's end
    interrupted = interrupted or stop.is_set()
    failed = sum(s.failed + s.skipped for s in stats.values())
    code = signals.exit_code if interrupted else (EXIT_FAILED if failed or sink.halt else EXIT_OK)
    end = RunRecord(event="end", run_id=run_id, time=now_iso(), seconds=round(time.time() - started, 3),
                    exit_code=code, rendered=sum(s.rendered for s in stats.values()),
                    failed=sum(s.failed for s in stats.values()), skipped=sum(s.skipped for s in stats.values()),
                    interrupted=interrupted)
    if signals.received is not None:
        end.signal = signals.received.name
    if sink.halt is not None:
        end.error = sink.halt
    manifest.append(end)
    return RunOutcome(code, stats, sink.failures, interrupted, error=sink.halt, seconds=time.time() - began,
                      roles=dict(sink.roles), signal=end.signal)
