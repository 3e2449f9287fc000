"""The stage runner shared by every executor.

:class:`JobWorker` follows Ray Data's callable-class pattern: it loads models once (lazily, in its
:class:`~sdbatch.runtime.models.ModelBank`) and renders a batch of jobs per ``__call__``, writing each output file
atomically and returning (or emitting) the manifest records. The driver alone appends to the manifest.
"""

from __future__ import annotations

import errno
import os
import platform
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from ..core.job import Job
from ..core.record import OutputRecord, input_entries, job_fields, stage_fields
from ..io.artifacts import move_into_place, save_png
from ..io.hashing import sha256_file

Emit = Callable[[OutputRecord], None]


@dataclass
class RunInfo:
    """Run-wide facts every record carries; picklable, so Ray workers get a copy."""

    out_dir: str
    base_dir: str
    recipe: dict[str, Any]
    versions: dict[str, str]
    force: bool = False  # run --force: video jobs render their frames again (none saved before is reused)


@dataclass
class JobResult:
    job_id: str
    records: list[OutputRecord] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0
    no_space: bool = False  # the error is a full disk (ENOSPC): the runner stops after a few in a row


def software_versions() -> dict[str, str]:
    """Installed versions, from package metadata (importing torch would slow a run that has nothing to do)."""
    from importlib.metadata import PackageNotFoundError, version

    from .. import __version__

    versions = {"sdbatch": __version__, "python": platform.python_version()}
    for name in ("torch", "diffusers", "transformers"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "unavailable"
    return versions


def is_no_space(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def describe_error(exc: BaseException) -> str:
    """One line for the manifest and the summary."""
    name = type(exc).__name__
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    if "OutOfMemoryError" in name or "out of memory" in first.lower():
        return f"CUDA out of memory: {first[:200]}"
    return f"{name}: {first[:300]}" if first else name


def _free_device_memory() -> None:
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # noqa: BLE001
        pass


def _done_future(value: Any) -> Any:
    from concurrent.futures import Future

    future: Future = Future()
    future.set_result(value)
    return future


class PendingBatch:
    """The outcome of a submitted batch: one future per job (a JobResult), or an error."""

    def __init__(self, batch: list[Job]):
        self.batch = batch
        self.futures: dict[str, Any] = {}
        self.errors: dict[str, str] = {}
        self.records: dict[str, list[OutputRecord]] = {}
        self.stopped: set[str] = set()  # interrupted between frames: neither done nor failed
        self.no_space: set[str] = set()  # failed for a full disk

    def merge(self, other: PendingBatch) -> None:
        self.futures.update(other.futures)
        self.errors.update(other.errors)
        self.stopped.update(other.stopped)
        self.no_space.update(other.no_space)
        for job_id, records in other.records.items():
            self.records.setdefault(job_id, []).extend(records)

    def done(self) -> bool:
        return all(f.done() for f in self.futures.values())

    def results(self) -> list[JobResult]:
        """Wait for the writes; one JobResult per job, in batch order."""
        out = []
        for job in self.batch:
            if job.job_id in self.stopped:
                continue
            if job.job_id in self.errors:
                out.append(JobResult(job.job_id, self.records.get(job.job_id, []), self.errors[job.job_id],
                                     no_space=job.job_id in self.no_space))
                continue
            try:
                result = self.futures[job.job_id].result()
                if job.job_id in self.records and result.records is not self.records[job.job_id]:
                    result = JobResult(job.job_id, self.records[job.job_id] + result.records, None, result.seconds)
                out.append(result)
            except Exception as exc:  # noqa: BLE001 - a failed write fails its job only
                out.append(JobResult(job.job_id, [], describe_error(exc), no_space=is_no_space(exc)))
        return out


class JobWorker:
    """Renders batches of jobs. ``worker(batch, emit)`` returns one :class:`JobResult` per job.

    Example::

        worker = JobWorker(run_info)            # cheap; models load on first use, then stay loaded
        for result in worker([job1, job2], emit=manifest.append):
            print(result.job_id, result.error)
    """

    def __init__(self, run: RunInfo):
        from ..stages.base import StageContext
        from .models import ModelBank
        from .quiet import quiet_libraries

        quiet_libraries()

        self.run = run
        self.models = ModelBank()
        self.ctx = StageContext(self.models, Path(run.out_dir), Path(run.base_dir), force=run.force)
        self._pool = None
        self.stop_requested: Callable[[], bool] = lambda: False  # set by an executor that can be interrupted

    @property
    def on_frames(self) -> Callable[[Job, int, int], None] | None:
        """Told ``(job, frames saved, frames in all)`` as a video job goes (set by an executor that shows
        progress; optional)."""
        return self.ctx.on_frames

    @on_frames.setter
    def on_frames(self, callback: Callable[[Job, int, int], None] | None) -> None:
        self.ctx.on_frames = callback

    def __call__(self, batch: list[Job], emit: Emit | None = None) -> list[JobResult]:
        """Render ``batch`` and return when every output is on disk (what Ray workers use)."""
        return self.submit(batch, emit).results()

    def submit(self, batch: list[Job], emit: Emit | None = None) -> PendingBatch:
        """Render ``batch`` now; image files are encoded, hashed and written by a background writer.

        The returned :class:`PendingBatch` resolves once they are on disk, so the next batch renders
        meanwhile. Video stages write synchronously (each frame is read back as saved).
        """
        pending = PendingBatch(batch)
        try:
            self._render(batch, emit, pending)
        except Exception as exc:  # noqa: BLE001 - a failing job must not stop the batch
            _free_device_memory()
            if _debug():
                traceback.print_exc()
            unfinished = [job for job in batch if job.job_id not in pending.futures]
            if len(batch) > 1:
                # isolate the failure: render the unfinished jobs one at a time
                for job in unfinished:
                    pending.merge(self.submit([job], emit))
            else:
                for job in unfinished:
                    pending.errors[job.job_id] = describe_error(exc)
                    if is_no_space(exc):
                        pending.no_space.add(job.job_id)
        return pending

    def _writer(self) -> Any:
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sdbatch-writer")
        return self._pool

    def _render(self, batch: list[Job], emit: Emit | None, pending: PendingBatch) -> None:
        from ..stages import stage_entry

        render = stage_entry(batch[0].type)
        start = time.perf_counter()
        last = start
        outputs = render(batch, self.ctx)
        for item in outputs:
            now = time.perf_counter()
            seconds = (now - last) if len(batch) == 1 else (now - start) / len(batch)
            last = now
            record = self._record(item, seconds, batch)
            job = item.job
            is_final = item.path == job.output
            if is_final and item.image is not None:
                # a single-image job: hand encoding, hashing, the atomic write and the manifest line to the writer
                pending.futures[job.job_id] = self._writer().submit(self._write, item, record, emit, start)
                continue
            self._write(item, record, emit, start)
            records = pending.records.setdefault(job.job_id, [])
            if emit is None or is_final:  # an emitted frame's record is in the manifest already: don't hold 2,000
                records.append(record)
            if is_final:
                pending.futures[job.job_id] = _done_future(JobResult(job.job_id, pending.records[job.job_id],
                                                                     seconds=time.perf_counter() - start))
            elif self.stop_requested():
                # Ctrl-C during a video job: stop between frames; the saved frames resume next run
                outputs.close()
                pending.stopped.update(j.job_id for j in batch if j.job_id not in pending.futures)
                return
        missing = [job for job in batch if job.job_id not in pending.futures]
        if missing:
            raise RuntimeError(f"stage {missing[0].type!r} produced no final output for {missing[0].output}")

    def _write(self, item: Any, record: OutputRecord, emit: Emit | None, start: float) -> JobResult:
        target = Path(self.run.out_dir) / item.path
        if item.image is not None:
            record.sha256 = save_png(target, item.image, record.to_json())
        else:
            record.sha256 = sha256_file(item.file)
            move_into_place(item.file, target)
        if item.path != item.job.output:
            self.ctx.wrote(item.path)  # a frame: with --force, the only kind a video job may reuse
        st = os.stat(target)
        record.size, record.mtime_ns = st.st_size, st.st_mtime_ns  # so a later change of the file is noticed
        if emit is not None:
            emit(record)
        return JobResult(item.job.job_id, [record], seconds=time.perf_counter() - start)

    def _record(self, item: Any, seconds: float, batch: list[Job] | None = None) -> OutputRecord:
        import torch

        from .models import resolve_device

        job: Job = item.job
        fields = job_fields(job)
        device = resolve_device(job.device)
        dtype = job.dtype
        if dtype == "auto":
            dtype = "float16" if device.startswith(("cuda", "mps")) else "float32"
        if "scheduler" in fields["params"]:
            try:
                fields["sampler"] = self.models.sampler_name(job)
            except Exception:  # noqa: BLE001 - a stage that loaded no pipeline has no sampler
                pass
        if device == "cpu":
            fields["threads"] = torch.get_num_threads()  # CPU float32 pixels depend on it (by a level at most)
        if batch is not None and len(batch) > 1:
            fields["batch"] = [b.job_id for b in batch]  # so does the batch an image was rendered in
        return OutputRecord(
            **fields, path=item.path, inputs=input_entries(job, item.input_hashes), recipe=self.run.recipe,
            versions=self.run.versions, device=device, dtype=dtype, options=job.options_json(),
            seconds=round(seconds, 4), time=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            **stage_fields(item.extra, is_file=item.image is None))


def _debug() -> bool:
    return os.environ.get("SDBATCH_DEBUG") == "1"
