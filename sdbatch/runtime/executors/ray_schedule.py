"""Which batches of a Ray run may start: a batch is ready once every job of this run it reads has finished."""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Any

from ...core.job import Job
from .ray_cluster import Node


@dataclass
class Batch:
    index: int  # position in plan order
    jobs: list[Job]
    attempts: int = 0
    waiting_for: int = 0  # inputs (jobs of this run) not yet finished


class Schedule:
    """Batches by readiness: ready ones come out in plan order; a batch is ready once every job it reads has
    finished (or failed)."""

    def __init__(self, batches: list[list[Job]]):
        ours = {job.job_id for batch in batches for job in batch}
        self.failed: set[str] = set()
        self._readers: dict[str, list[Batch]] = {}  # job id -> batches waiting for it
        self._ready: list[tuple[int, Batch]] = []  # heap, plan order
        self._held: dict[int, Batch] = {}
        for index, jobs in enumerate(batches):
            batch = Batch(index, jobs)
            deps = {dep for job in jobs for dep in job.deps if dep in ours}  # others were done before this run
            batch.waiting_for = len(deps)
            for dep in deps:
                self._readers.setdefault(dep, []).append(batch)
            if deps:
                self._held[index] = batch
            else:
                self._ready.append((index, batch))
        heapq.heapify(self._ready)

    def __len__(self) -> int:
        """Batches not yet handed out (ready or waiting for their inputs)."""
        return len(self._ready) + len(self._held)

    def jobs_left(self) -> int:
        return sum(len(batch.jobs) for _, batch in self._ready) + sum(len(b.jobs) for b in self._held.values())

    def has_ready(self) -> bool:
        return bool(self._ready)

    def next_ready(self) -> Batch | None:
        return heapq.heappop(self._ready)[1] if self._ready else None

    def retry(self, batch: Batch) -> None:
        heapq.heappush(self._ready, (batch.index, batch))

    def resolve(self, job_id: str, failed: bool) -> None:
        if failed:
            self.failed.add(job_id)
        for batch in self._readers.pop(job_id, []):
            batch.waiting_for -= 1
            if batch.waiting_for == 0:
                del self._held[batch.index]
                heapq.heappush(self._ready, (batch.index, batch))

    def stranded(self) -> list[Job]:
        """Jobs of batches still waiting (none, unless an input job never resolved)."""
        jobs = [job for _, batch in sorted(self._held.items()) for job in batch.jobs]
        jobs += [job for _, batch in sorted(self._ready, key=lambda item: item[0]) for job in batch.jobs]
        self._held.clear()
        self._ready.clear()
        return jobs


@dataclass
class Slot:
    """One actor of the pool, its node, and the batch it is rendering (None: idle)."""

    actor: Any
    node: Node
    ping: Any = None  # while the actor starts: the ref of its readiness call
    batch: Batch | None = None
    ref: Any = None
    since: float = 0.0  # when its batch was sent
    warm: bool = False  # has rendered a batch: models loaded
    created: float = 0.0  # when the actor was asked for (time.monotonic())

    @property
    def ready(self) -> bool:
        return self.ping is None
