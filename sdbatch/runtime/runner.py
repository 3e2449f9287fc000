"""Run a plan: skip what is done, render the rest, isolate failures, report progress, stop cleanly.

Resume rules: a job is done when the manifest has its output line and the file exists. A file under its
final name but without a manifest line (killed between the rename and the append) is adopted from the
record embedded in it. Temp files of a killed run are removed first. ``force`` re-renders everything.
First Ctrl-C finishes the current batch and stops (exit 130); a second stops at once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..config.recipe import LoadedRecipe
from ..core.job import Job
from ..core.plan import Plan
from ..core.record import FailedRecord, OutputRecord, RunRecord, SkippedRecord
from ..errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE  # noqa: F401
from ..io.artifacts import clean_temp_files
from ..io.hashing import sha256_bytes, sha256_file
from ..io.manifest import MANIFEST_NAME, Manifest, read_png_output


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


def done_jobs(plan: Plan, by_job: dict[str, list[OutputRecord]]) -> dict[str, OutputRecord]:
    """job_id -> final output record, for jobs whose final output is recorded (``by_job``, from
    :meth:`Manifest.outputs_by_job`) and on disk."""
    done = {}
    for job_id, records in by_job.items():
        job = plan.index.get(job_id)
        if job is None:
            continue
        for record in records:
            if record.path == job.output and (plan.out_dir / job.output).is_file():
                done[job_id] = record
    return done


def recorded_outputs(by_job: dict[str, list[OutputRecord]]) -> set[tuple[str, str]]:
    """(job_id, path) of every recorded output."""
    return {(job_id, r.path) for job_id, records in by_job.items() for r in records}


def adopt_orphans(plan: Plan, manifest: Manifest, done: dict[str, OutputRecord],
                  recorded: set[tuple[str, str]]) -> int:
    """Record outputs (images, video frames) written but not yet recorded when a run was killed.

    ``done`` and ``recorded`` are updated with what is adopted."""
    adopted = 0
    for job in plan.jobs:
        if job.job_id in done:
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
    """The driver's end of an executor: writes the manifest, counts, shows progress, carries the stop flag."""

    manifest: Manifest
    plan: Plan
    progress: Any
    stats: dict[str, StageStats]
    stop_event: threading.Event
    recorded: set[tuple[str, str]] = field(default_factory=set)
    failures: list[tuple[str, str, str]] = field(default_factory=list)
    lock: threading.RLock = field(default_factory=threading.RLock)  # the writer thread emits too

    def stop_requested(self) -> bool:
        return self.stop_event.is_set()

    def started(self, jobs: list[Job]) -> None:
        self.progress.current(jobs[0].stage, len(jobs))

    def output(self, record: OutputRecord) -> None:
        with self.lock:
            key = (record.job_id, record.path)
            if key in self.recorded:
                return  # a retried job (e.g. a lost Ray worker) must not be recorded twice
            self.recorded.add(key)
            self.manifest.append(record)

    def finished(self, result: Any) -> None:
        with self.lock:
            self._finished(result)

    def _finished(self, result: Any) -> None:
        job = self.plan.index[result.job_id]
        if result.error:
            self.stats[job.stage].failed += 1
            self.failures.append((job.stage, job.output, result.error))
            self.manifest.append(FailedRecord(job_id=job.job_id, stage=job.stage, path=job.output,
                                              error=result.error, time=now_iso()))
            self.progress.failed(job, result.error)
        else:
            for record in result.records:  # executors that do not emit as they go
                self.output(record)
            self.stats[job.stage].rendered += 1
            self.progress.done(job, result.seconds)

    def skipped(self, job: Job, reason: str) -> None:
        with self.lock:
            self._skipped(job, reason)

    def _skipped(self, job: Job, reason: str) -> None:
        self.stats[job.stage].skipped += 1
        self.manifest.append(SkippedRecord(job_id=job.job_id, stage=job.stage, path=job.output, reason=reason,
                                           time=now_iso()))
        self.progress.skipped(job, reason)


@dataclass
class RunOutcome:
    exit_code: int
    stats: dict[str, StageStats]
    failures: list[tuple[str, str, str]]
    interrupted: bool = False


class _SigintHandler:
    """First Ctrl-C: finish the current batch, then stop. Second: stop now."""

    def __init__(self, stop: threading.Event, say: Any):
        self.stop = stop
        self.say = say
        self.previous = None

    def __enter__(self) -> _SigintHandler:
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.stop.is_set():
            raise KeyboardInterrupt
        self.stop.set()
        self.say("Interrupted: finishing the current job, then stopping (Ctrl-C again to stop now)")

    def __exit__(self, *exc: Any) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)


def run_plan(loaded: LoadedRecipe, plan: Plan, *, force: bool = False, only: list[str] | None = None,
             executor: str = "local", executor_options: dict[str, Any] | None = None,
             reporter: Any = None) -> RunOutcome:
    """Render every pending job of ``plan`` into ``plan.out_dir``; returns the outcome and exit code."""
    from .executors import make_executor
    from .progress import Reporter
    from .worker import RunInfo, software_versions

    out_dir = plan.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    reporter = reporter or Reporter()
    removed = clean_temp_files(out_dir)
    if removed:
        reporter.say(f"Removed {len(removed)} unfinished temp file(s) from an interrupted run")
    manifest = Manifest(out_dir / MANIFEST_NAME)
    by_job = {} if force else manifest.outputs_by_job()  # the manifest is read once
    found = done_jobs(plan, by_job)
    recorded = recorded_outputs(by_job)
    del by_job
    if not force:
        adopted = adopt_orphans(plan, manifest, found, recorded)
        if adopted:
            reporter.say(f"Recorded {adopted} output(s) written just before an interruption")
    done = set(found)  # the ids: 20,000 records held through a long run would slow every garbage collection
    del found
    only = list(only or [])
    todo = select_jobs(plan, done, only) if not force else \
        [job for job in plan.jobs if not only or job.stage in only]
    stats = {name: StageStats() for name in plan.stage_order}
    for job in plan.jobs:
        stats[job.stage].jobs += 1
        if job.job_id in done:
            stats[job.stage].done_before += 1
    info = RunInfo(str(out_dir), str(loaded.base_dir), recipe_info(loaded), software_versions())
    if info.recipe.get("git_dirty"):
        reporter.say(f"Warning: {loaded.path} has uncommitted changes; commit it so this run can be reproduced "
                     "from git")
    run_id = uuid.uuid4().hex[:12]
    manifest.append(RunRecord(event="start", run_id=run_id, time=now_iso(), recipe=info.recipe,
                              versions=info.versions, jobs=len(plan.jobs), pending=len(todo),
                              rehearse=plan.rehearse, force=force, only=only, executor=executor, pid=os.getpid()))
    stop = threading.Event()
    sink = RunSink(manifest, plan, reporter, stats, stop, recorded)
    interrupted = False
    started = time.time()
    reporter.start(len(todo), sum(s.done_before for s in stats.values()))
    try:
        with _SigintHandler(stop, reporter.say):
            if todo:
                make_executor(executor, info, **(executor_options or {})).execute(todo, sink)
    except KeyboardInterrupt:
        interrupted = True
    except BaseException as exc:
        # the executor itself failed (e.g. an unreachable Ray cluster): close the run in the manifest
        reporter.stop()
        manifest.append(RunRecord(event="end", run_id=run_id, time=now_iso(), seconds=round(time.time() - started, 3),
                                  exit_code=None, error=f"{type(exc).__name__}: {exc}", interrupted=False))
        manifest.close()
        raise
    finally:
        reporter.stop()
    interrupted = interrupted or stop.is_set()
    failed = sum(s.failed + s.skipped for s in stats.values())
    code = EXIT_INTERRUPTED if interrupted else (EXIT_FAILED if failed else EXIT_OK)
    manifest.append(RunRecord(event="end", run_id=run_id, time=now_iso(), seconds=round(time.time() - started, 3),
                              exit_code=code, rendered=sum(s.rendered for s in stats.values()),
                              failed=sum(s.failed for s in stats.values()),
                              skipped=sum(s.skipped for s in stats.values()), interrupted=interrupted))
    manifest.close()
    return RunOutcome(code, stats, sink.failures, interrupted)
