"""The local executor: one process, one :class:`JobWorker`, jobs in dependency order, in batches."""

from __future__ import annotations

from collections import deque
from typing import Any

from ...core.job import Job
from ..worker import JobWorker, RunInfo

MAX_IN_FLIGHT = 2


def batch_limit(job: Job) -> int:
    """How many jobs like ``job`` go in one batch (``batch_size: auto | N``, default auto)."""
    value = job.options.batch_size or "auto"
    if isinstance(value, int):
        return value
    return auto_batch_size(job)


def auto_batch_size(job: Job) -> int:
    """Pick a batch by free device memory and image size, up to 8.

    On a GPU: what fits in free memory. On a CPU: one image at a time, so every image is exactly what an
    unbatched (or resumed, or reproduced) render gives; set ``batch_size: N`` to batch small images on a CPU,
    which is faster and may move a few pixels by one level.
    """
    if job.type not in ("generate", "img2img", "inpaint"):
        return 1
    width, height = _largest_size(job)
    pixels = width * height
    cuda = False
    if str(job.device).startswith(("cuda", "auto")):
        try:
            import torch

            cuda = torch.cuda.is_available()
            if cuda:
                free, _total = torch.cuda.mem_get_info()
        except Exception:  # noqa: BLE001
            cuda = False
    if not cuda:
        return 1
    # roughly 1.5 GiB of activations per 512x512 image in float16 with CFG, leaving 4 GiB for weights
    per_image = 1.5 * (1 << 30) * pixels / (512 * 512)
    return max(1, min(8, int((free - 4 * (1 << 30)) // per_image)))


def _largest_size(job: Job) -> tuple[int, int]:
    """The largest image a job renders: a hires job's second pass is its output size, not the first pass."""
    from ...stages import stage_config

    return max((job.params.width, job.params.height),
               tuple(stage_config(job.type).output_size(job.params)), key=lambda size: size[0] * size[1])


def make_batches(jobs: list[Job]) -> list[list[Job]]:
    """Group jobs of one stage that share a batch key, keeping stage order and first-seen order."""
    batches: list[list[Job]] = []
    open_batches: dict[tuple, list[Job]] = {}
    current_stage = None
    for job in jobs:
        if job.stage != current_stage:
            open_batches = {}
            current_stage = job.stage
        key = job.batch_key
        batch = open_batches.get(key)
        if batch is None or len(batch) >= batch_limit(job):
            batch = []
            open_batches[key] = batch
            batches.append(batch)
        batch.append(job)
    return batches


class LocalExecutor:
    """Runs batches in this process; stops between batches when asked."""

    def __init__(self, run: RunInfo):
        self.run = run
        self.worker: JobWorker | None = None

    def execute(self, jobs: list[Job], sink: Any) -> None:
        """Render ``jobs`` (dependency order). ``sink`` receives outputs, results and skips.

        While the writer saves one batch's images, the next batch renders; a batch waits only for the
        writes of batches whose outputs it reads. At most ``MAX_IN_FLIGHT`` batches await their writes.
        """
        failed: set[str] = set()
        in_flight: deque[Any] = deque()
        unfinished: set[str] = set()

        def settle(pending: Any) -> None:
            for result in pending.results():
                unfinished.discard(result.job_id)
                if result.error:
                    failed.add(result.job_id)
                sink.finished(result)

        try:
            for batch in make_batches(jobs):
                if sink.stop_requested():
                    return
                while in_flight and (in_flight[0].done() or len(in_flight) >= MAX_IN_FLIGHT
                                     or any(dep in unfinished for job in batch for dep in job.deps)):
                    settle(in_flight.popleft())
                if sink.stop_requested():  # a result just settled may have stopped the run (a full disk)
                    return
                ready = []
                for job in batch:
                    bad = [dep for dep in job.deps if dep in failed]
                    if bad:
                        failed.add(job.job_id)
                        sink.skipped(job, f"input job {bad[0][:8]} failed or was skipped")
                    else:
                        ready.append(job)
                if not ready:
                    continue
                if self.worker is None:
                    self.worker = JobWorker(self.run)
                    self.worker.stop_requested = sink.stop_requested
                    self.worker.on_frames = getattr(sink, "frames", None)  # a video job's frames, as they go
                sink.started(ready)
                unfinished.update(job.job_id for job in ready)
                in_flight.append(self.worker.submit(ready, emit=sink.output))
        finally:
            while in_flight:
                settle(in_flight.popleft())
