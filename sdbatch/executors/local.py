"""The local executor: one process, one :class:`JobWorker`, jobs in dependency order, in batches."""

from __future__ import annotations

from typing import Any

from ..plan import Job
from .worker import JobWorker, RunInfo

def batch_limit(job: Job) -> int:
    """How many jobs like ``job`` go in one batch (``batch_size: auto | N``, default auto)."""
    value = job.options.get("batch_size", "auto")
    if isinstance(value, int):
        return value
    return auto_batch_size(job)


def auto_batch_size(job: Job) -> int:
    """Pick a batch by free device memory and image size: 1 on CPU/MPS, up to 8 on a large GPU."""
    if not str(job.device).startswith(("cuda", "auto")):
        return 1
    try:
        import torch

        if not torch.cuda.is_available():
            return 1
        free, _total = torch.cuda.mem_get_info()
    except Exception:  # noqa: BLE001
        return 1
    pixels = job.params.get("width", 512) * job.params.get("height", 512)
    # roughly 1.5 GiB of activations per 512x512 image in float16 with CFG, leaving 4 GiB for weights
    per_image = 1.5 * (1 << 30) * pixels / (512 * 512)
    return max(1, min(8, int((free - 4 * (1 << 30)) // per_image)))


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
        """Render ``jobs`` (dependency order). ``sink`` receives outputs, results and skips."""
        failed: set[str] = set()
        for batch in make_batches(jobs):
            if sink.stop_requested():
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
            sink.started(ready)
            for result in self.worker(ready, emit=sink.output):
                if result.error:
                    failed.add(result.job_id)
                sink.finished(result)
