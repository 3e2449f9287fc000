"""The Ray executor: a pool of :class:`JobWorker` actors renders batches on a Ray cluster.

``sdbatch run recipe.yaml --executor ray`` joins the cluster at ``$RAY_ADDRESS`` (token authentication as Ray
reads it from the environment), else starts a local Ray (shut down at the end). Each worker asks its node for
``num_gpus`` (default 1 on a cluster with GPUs, else 0) and ``num_cpus`` (default 1): recipe ``ray: {num_gpus,
num_cpus}``, or ``--num-gpus`` / ``--num-cpus``. Workers are placed node by node, as many as each node holds, up
to ``--workers`` (default: no limit with GPUs, else :data:`~.ray_cluster.MAX_CPU_WORKERS`); each loads its
models once. Before a node gets work, a task there writes a probe file into the output folder, which the
driver reads back and removes: a node that does not share the folder is refused (at the start: exit 2).
Every :data:`NODE_POLL_SECONDS` the driver asks which nodes are alive: one that joins gets workers; the
batches in flight on one that leaves are retried elsewhere.

A batch goes to an idle, started actor once every job it reads has finished; dependents of failed jobs are
skipped. Actors write the files atomically and return the records; only the driver appends to the manifest,
de-duplicated by (job, path), stamping each output with the ``node`` that rendered it. A batch is lost when
its actor or node dies, or after no progress for :data:`STALL_FACTOR` times its stage's seconds so far (at
least :data:`STALL_FLOOR` s, plus the worker timeout while the actor loads its models); it is retried up to
:data:`MAX_ATTEMPTS` times, rewriting the same files, recording nothing twice. With no live worker for
``--worker-timeout`` seconds the run stops (exit 1), saying which node was lost and how to resume. Every
actor uses the driver's torch thread count: a CPU run gives ``--executor local``'s pixels.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import replace
from typing import Any

from ...core.job import Job
from ..worker import JobResult, JobWorker, RunInfo
from .local import make_batches
from .ray_cluster import (
    MAX_CPU_WORKERS,
    PROBE_SECONDS,
    Node,
    Probe,
    RayOptions,
    alive_nodes,
    capacity,
    cluster_record,
    connect,
    finish_probe,
    init_failed,
    is_lost,
    on_node,
    own_gpu,
    ray_error,
    start_probe,
    torch_threads,
    usage,
    worker_env,
)
from .ray_schedule import Batch, Schedule, Slot

MAX_ATTEMPTS = 3  # dispatches of one batch before its jobs are recorded as failed (the workers kept dying)
POLL_SECONDS = 1.0  # how often the driver looks at the stop flag while batches are in flight
NODE_POLL_SECONDS = 2.0  # how often it asks the cluster which nodes are alive
STALL_FACTOR = 10.0  # a batch taking this many times its stage's seconds per job so far is lost ...
STALL_FLOOR = 60.0  # ... but never before this many seconds
STARTUP_SECONDS = 120.0  # a worker still starting (importing, placed) counts as live this long at least


class RayExecutor:
    """Renders batches on a pool of Ray actors; see the module docstring."""

    def __init__(self, run: RunInfo, workers: int | None = None, num_gpus: float | None = None,
                 num_cpus: float | None = None, worker_timeout: float | None = None):
        # workers may run in another directory: give them absolute paths (records hold relative ones)
        self.run = replace(run, out_dir=os.path.abspath(run.out_dir), base_dir=os.path.abspath(run.base_dir))
        self.options = RayOptions.parse(workers, num_gpus, num_cpus, worker_timeout)
        self.workers = self.options.workers
        self.connected = False
        self.joined = False
        self.slots: list[Slot] = []
        self.nodes: dict[str, Node] = {}  # live nodes that passed the probe
        self.probes: dict[str, Probe] = {}  # node id -> its probe in flight
        self.excluded: dict[str, str] = {}  # node id -> why it gets no work
        self.start_failures: dict[str, int] = {}  # node id -> actors that died while starting there
        self.lost: list[Node] = []
        self.timings: dict[str, float] = {}  # stage -> the longest seconds per job a warm worker took
        self.init_error: str | None = None
        self.no_worker_since: float | None = None
        self.stopping = False

    # ------------------------------------------------------------------------------------ set-up
    def execute(self, jobs: list[Job], sink: Any) -> None:
        """Render ``jobs`` (dependency order) on the cluster. ``sink`` receives results and skips."""
        import ray

        self._sink = sink
        if not ray.is_initialized():  # a caller (a notebook, a test) already connected: use it, leave it be
            # --workers beyond the CPU count: give a local Ray that many CPU slots, or the extra actors never start
            self.joined = connect(max(os.cpu_count() or 1, self.options.workers or 0))
            self.connected = True
        try:
            jobs = self._setup(jobs)
            batches = make_batches(jobs)
            self._start()
            self._record_cluster(sink)
            self._loop(Schedule(batches), sink)
        finally:
            for slot in self.slots:
                with contextlib.suppress(Exception):  # already dead
                    ray.kill(slot.actor)
            if self.connected:
                ray.shutdown()

    def _setup(self, jobs: list[Job]) -> list[Job]:
        import ray

        nodes = alive_nodes()
        gpus = any(node.resources.get("GPU", 0) > 0 for node in nodes.values())
        o = self.options
        self.num_gpus = o.num_gpus if o.num_gpus is not None else (1.0 if gpus else 0.0)
        self.num_cpus = o.num_cpus if o.num_cpus is not None else 1.0
        self.cap = o.workers or (None if self.num_gpus else MAX_CPU_WORKERS)
        room = sum(capacity(node, self.num_gpus, self.num_cpus) for node in nodes.values())
        if o.workers and o.workers > room:
            self._say(f"Ray: {o.workers} workers asked for, but the cluster has room for {room} now; "
                      "more start as nodes join")
        self.env = worker_env(self.joined, torch_threads())
        self.actor_options: dict[str, Any] = {"num_cpus": self.num_cpus, "runtime_env": {"env_vars": self.env},
                                              "max_restarts": 0}  # the driver replaces dead actors itself
        if self.num_gpus:
            self.actor_options["num_gpus"] = self.num_gpus
            jobs = own_gpu(jobs, self._say)
        self.remote_worker = ray.remote(JobWorker)
        return jobs

    def _start(self) -> None:
        """Probe the nodes there are now: one that does not see the output folder is a usage error (exit 2)."""
        import ray

        for node in alive_nodes().values():
            self._maybe_probe(node, time.monotonic())
        deadline = time.monotonic() + PROBE_SECONDS
        refused: list[tuple[Node, str]] = []
        while self.probes and time.monotonic() < deadline and not self._sink.stop_requested():
            ready, _ = ray.wait([p.ref for p in self.probes.values()], num_returns=1, timeout=POLL_SECONDS)
            for ref in ready:  # every probe is collected (and its file removed), even after a refusal
                probe = next(p for p in self.probes.values() if p.ref == ref)
                why = self._finish_probe(probe)
                if why is not None:
                    refused.append((probe.node, why))
        if refused:
            node, why = refused[0]
            raise usage(f"error: the Ray node {node.label} does not see the output folder: {why}. Every node "
                        "must share it at the same path (e.g. NFS), or run with --executor local")

    def _record_cluster(self, sink: Any) -> None:
        """The run's ``{"kind": "run", "event": "cluster", "ray": {...}}`` line: what each worker asked for."""
        record = cluster_record(joined=self.joined, num_gpus=self.num_gpus, num_cpus=self.num_cpus,
                                workers=self.cap, worker_timeout=self.options.worker_timeout,
                                nodes=list(self.nodes.values()))
        with sink.lock:
            sink.manifest.append(record)

    # ------------------------------------------------------------------------------------ nodes and workers
    def _maybe_probe(self, node: Node, now: float) -> None:
        if (node.id in self.nodes or node.id in self.probes or node.id in self.excluded
                or not capacity(node, self.num_gpus, self.num_cpus)):
            return
        self.probes[node.id] = start_probe(node, self.run.out_dir, self.env, now)

    def _finish_probe(self, probe: Probe) -> str | None:
        import ray

        del self.probes[probe.node.id]
        try:
            error = ray.get(probe.ref)
        except Exception as exc:  # noqa: BLE001 - the node died meanwhile, or could not run the task
            self.excluded[probe.node.id] = f"its probe failed: {ray_error(exc)}"
            return None if is_lost(exc) else self.excluded[probe.node.id]
        why = finish_probe(probe, self.run.out_dir, error)
        if why is None:
            self.nodes[probe.node.id] = probe.node
        else:
            self.excluded[probe.node.id] = why
        return why

    def _refresh(self, schedule: Schedule, now: float) -> None:
        """Ask which nodes are alive: drop the lost ones' workers (their batches are retried), probe new ones,
        start workers where there is room."""
        alive = alive_nodes()
        for node_id in [n for n in self.nodes if n not in alive]:
            node = self.nodes.pop(node_id)
            self.lost.append(node)
            self._say(f"Ray node {node.label} lost")
            for slot in [s for s in self.slots if s.node.id == node_id]:
                self._drop(slot, schedule, f"node {node.label} lost")
        for node_id, probe in list(self.probes.items()):
            if node_id not in alive or now - probe.started > PROBE_SECONDS:
                del self.probes[node_id]
                self.excluded[node_id] = "its probe did not come back"
        if self.stopping:
            return
        for node in alive.values():
            self._maybe_probe(node, now)
        self._grow(schedule)

    def _grow(self, schedule: Schedule) -> None:
        busy = sum(slot.batch is not None for slot in self.slots)
        target = busy + len(schedule)  # never more workers than batches left
        if self.cap is not None:
            target = min(target, self.cap)
        for node in self.nodes.values():
            room = capacity(node, self.num_gpus, self.num_cpus) - sum(s.node.id == node.id for s in self.slots)
            while room > 0 and len(self.slots) < target:
                actor = self.remote_worker.options(**self.actor_options, scheduling_strategy=on_node(node.id)) \
                    .remote(self.run)
                self.slots.append(Slot(actor, node, ping=actor.__ray_ready__.remote(), created=time.monotonic()))
                room -= 1

    def _drop(self, slot: Slot, schedule: Schedule, why: str) -> None:
        """Remove a lost worker from the pool; its batch is retried (or, after MAX_ATTEMPTS, failed)."""
        import ray

        self.slots.remove(slot)
        with contextlib.suppress(Exception):  # already gone
            ray.kill(slot.actor)
        batch, slot.batch, slot.ref = slot.batch, None, None
        if batch is None or self.stopping:
            return  # stopping: neither retried nor failed; the next run renders these jobs
        if batch.attempts < MAX_ATTEMPTS:
            self._say(f"Ray worker lost ({why}); retrying {len(batch.jobs)} job(s) of stage {batch.jobs[0].stage} "
                      "on another worker")
            schedule.retry(batch)
            return
        error = f"Ray worker died {batch.attempts} times rendering this batch: {why}"
        self._resolve(batch, [JobResult(job.job_id, error=error) for job in batch.jobs], schedule, None)

    def _started(self, slot: Slot, schedule: Schedule) -> None:
        import ray

        try:
            ray.get(slot.ping)
        except Exception as exc:  # noqa: BLE001 - its constructor failed, or it died while starting
            node = slot.node
            if init_failed(exc):
                self.init_error = ray_error(exc)
                self.excluded[node.id] = self.init_error
                self.nodes.pop(node.id, None)
            else:
                self.start_failures[node.id] = self.start_failures.get(node.id, 0) + 1
                if self.start_failures[node.id] >= MAX_ATTEMPTS:
                    self.excluded[node.id] = f"workers died while starting there: {ray_error(exc)}"
                    self.nodes.pop(node.id, None)
            self._drop(slot, schedule, ray_error(exc))
            return
        slot.ping = None

    def _stalled(self, schedule: Schedule, now: float) -> None:
        for slot in [s for s in self.slots if s.batch is not None]:
            per_job = self.timings.get(slot.batch.jobs[0].stage)
            if per_job is None:
                continue  # nothing to judge by yet: node and worker deaths still count
            expected = per_job * len(slot.batch.jobs)
            bound = max(STALL_FLOOR, STALL_FACTOR * expected) + (0 if slot.warm else self.options.worker_timeout)
            if now - slot.since > bound:
                self._drop(slot, schedule, f"no progress on node {slot.node.label} for {now - slot.since:.0f} s, "
                                           f"about {expected:.0f} s expected")

    def _no_workers(self, schedule: Schedule, now: float) -> bool:
        """True when the run must stop: work is left and no worker has been live for ``--worker-timeout``."""
        grace = max(STARTUP_SECONDS, self.options.worker_timeout)  # a worker still starting counts, for a while
        if any(slot.ready or now - slot.created < grace for slot in self.slots) or not len(schedule):
            self.no_worker_since = None
            return False
        if self.init_error and not self.probes and not self.slots and not self.nodes:
            while (batch := self._take(schedule)) is not None:  # no node can start a worker: fail what is left
                self._resolve(batch, [JobResult(job.job_id, error=self.init_error) for job in batch.jobs],
                              schedule, None)
            return False
        timeout = self.options.worker_timeout
        lost = f"Ray node {self.lost[-1].label} was lost and no" if self.lost else "no"
        if self.no_worker_since is None:
            self.no_worker_since = now
            self._say(f"Ray: {lost} worker is live; waiting up to {timeout:g} s for one (--worker-timeout)")
            return False
        if now - self.no_worker_since < timeout:
            return False
        self._sink.halt = (f"error: {lost} Ray worker was live for {timeout:g} s "
                           f"(--worker-timeout): stopped with {schedule.jobs_left()} job(s) not rendered; finished "
                           "outputs are kept: run the same command again to resume once the cluster has workers")
        return True

    # ------------------------------------------------------------------------------------ running
    def _loop(self, schedule: Schedule, sink: Any) -> None:
        import ray

        next_poll = 0.0
        while True:
            now = time.monotonic()
            if not self.stopping and sink.stop_requested():
                self.stopping = True  # dispatch nothing more; the batches in flight finish and are recorded
            if now >= next_poll:
                self._refresh(schedule, now)
                next_poll = now + NODE_POLL_SECONDS
            self._stalled(schedule, now)
            if not self.stopping:
                self._dispatch(schedule, sink)
            busy = {slot.ref: slot for slot in self.slots if slot.batch is not None}
            if not busy:
                if self.stopping or not len(schedule):
                    return
                if not schedule.has_ready():
                    for job in schedule.stranded():  # cannot happen: every input is a job of this run, or done
                        sink.skipped(job, "its input jobs never finished")
                    return
            if not self.stopping and self._no_workers(schedule, now):
                return
            pings = {slot.ping: slot for slot in self.slots if slot.ping is not None}
            probes = {probe.ref: probe for probe in self.probes.values()}
            waiting = [*busy, *pings, *probes]
            if not waiting:
                time.sleep(POLL_SECONDS)
                continue
            ready, _ = ray.wait(waiting, num_returns=1, timeout=POLL_SECONDS, fetch_local=False)
            for ref in ready:
                if ref in busy:
                    self._collect(busy[ref], schedule, sink)
                elif ref in pings:
                    self._started(pings[ref], schedule)
                elif ref in probes and probes[ref].node.id in self.probes:
                    why = self._finish_probe(probes[ref])
                    if why is not None:
                        self._say(f"Warning: Ray node {probes[ref].node.label} does not see the output folder "
                                  f"({why}); it gets no work")
                    self._grow(schedule)

    def _collect(self, slot: Slot, schedule: Schedule, sink: Any) -> None:
        import ray

        batch, ref = slot.batch, slot.ref
        assert batch is not None
        try:
            results: list[JobResult] = ray.get(ref)
        except Exception as exc:  # noqa: BLE001 - sorted below: a lost worker or a failing batch
            if is_lost(exc) and not init_failed(exc):
                self._drop(slot, schedule, type(exc).__name__)
                return
            slot.batch, slot.ref = None, None
            results = [JobResult(job.job_id, error=ray_error(exc)) for job in batch.jobs]
        else:
            slot.batch, slot.ref = None, None
            if slot.warm:  # a cold worker's first batch also loaded its models
                per_job = (time.monotonic() - slot.since) / max(1, len(batch.jobs))
                stage = batch.jobs[0].stage
                self.timings[stage] = max(self.timings.get(stage, 0.0), per_job)
            slot.warm = True
        self._resolve(batch, results, schedule, slot.node)

    def _resolve(self, batch: Batch, results: list[JobResult], schedule: Schedule, node: Node | None) -> None:
        by_id = {result.job_id: result for result in results}
        for job in batch.jobs:
            result = by_id.get(job.job_id) or JobResult(job.job_id, error="the Ray worker returned no result")
            if node is not None:
                for record in result.records:
                    record.node = node.id  # which node rendered it (the manifest's line; not in the PNG)
            schedule.resolve(job.job_id, failed=bool(result.error))
            self._sink.finished(result)

    def _dispatch(self, schedule: Schedule, sink: Any) -> None:
        """Send ready batches to idle started actors (warm ones first), in plan order; skip jobs whose inputs
        failed."""
        idle = sorted((slot for slot in self.slots if slot.ready and slot.batch is None), key=lambda s: not s.warm)
        while idle:
            batch = self._take(schedule)
            if batch is None:
                return
            batch.attempts += 1
            slot = idle.pop(0)
            slot.batch, slot.since = batch, time.monotonic()
            slot.ref = slot.actor.__call__.remote(batch.jobs, None)
            sink.started(batch.jobs)

    def _take(self, schedule: Schedule) -> Batch | None:
        """The next ready batch, less its jobs whose inputs failed (skipped here); None when none is ready."""
        while (batch := schedule.next_ready()) is not None:
            ready = []
            for job in batch.jobs:
                bad = [dep for dep in job.deps if dep in schedule.failed]
                if bad:
                    schedule.resolve(job.job_id, failed=True)
                    self._sink.skipped(job, f"input job {bad[0][:8]} failed or was skipped")
                else:
                    ready.append(job)
            if ready:
                batch.jobs = ready
                return batch
        return None

    def _say(self, message: str) -> None:
        say = getattr(getattr(self, "_sink", None), "progress", None)
        say = getattr(say, "say", None)
        if callable(say):
            say(message)
