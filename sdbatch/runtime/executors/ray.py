"""The Ray executor: a pool of :class:`JobWorker` actors renders batches on a Ray cluster.

``sdbatch run recipe.yaml --executor ray [--workers N]`` joins the cluster at ``$RAY_ADDRESS`` when set, else
starts a local Ray (shut down again at the end; a joined cluster is only disconnected from). One actor per
GPU (``num_gpus=1``); on a cluster without GPUs, ``--workers`` / ``$SDBATCH_RAY_WORKERS`` CPU actors (default:
one per CPU, at most :data:`MAX_CPU_WORKERS`). Each actor loads its models once and keeps them.

The driver dispatches a batch (from :func:`~sdbatch.runtime.executors.local.make_batches`) to an idle actor as soon
as every job it reads has finished, so an img2img job can start while its stage's siblings are still being
generated elsewhere; dependents of failed jobs are skipped, as locally. Actors write each output file
atomically themselves (the output folder must be on a filesystem every node shares) and return the manifest
records; only the driver appends to the manifest, de-duplicated by (job, path).

A batch whose actor dies (killed, OOM, node lost) is retried on another or a replacement actor, up to
:data:`MAX_ATTEMPTS` times; files it had already written are simply rewritten under the same names, and
nothing reaches the manifest twice. Torch's CPU results depend on its thread count, so every actor uses the
driver's thread count: a CPU run gives the same pixels as ``--executor local`` on the driver's machine.
"""

from __future__ import annotations

import contextlib
import heapq
import logging
import os
from dataclasses import dataclass, replace
from typing import Any

from ...core.job import Job
from ..worker import JobResult, JobWorker, RunInfo, describe_error
from .local import make_batches

MAX_ATTEMPTS = 3  # dispatches of one batch before its jobs are recorded as failed (the workers kept dying)
MAX_CPU_WORKERS = 4  # default number of CPU workers, when neither --workers nor $SDBATCH_RAY_WORKERS is given
WORKERS_ENV = "SDBATCH_RAY_WORKERS"
POLL_SECONDS = 1.0  # how often the driver looks at the stop flag while batches are in flight

# passed to every worker; the path-valued ones only on a local cluster (same machine, same paths)
ENV_ALWAYS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_ENDPOINT", "SDBATCH_DEBUG")
ENV_LOCAL = ("SDBATCH_CACHE", "HF_HOME", "HF_HUB_CACHE")


@dataclass
class _Slot:
    """One actor of the pool and the batch it is rendering (None: idle)."""

    actor: Any
    batch: _Batch | None = None
    ref: Any = None
    warm: bool = False  # has rendered a batch: models loaded (a replacement actor is still starting)


@dataclass
class _Batch:
    index: int  # position in plan order
    jobs: list[Job]
    attempts: int = 0
    waiting_for: int = 0  # inputs (jobs of this run) not yet finished


class _Schedule:
    """Which batches may run: a batch is ready once every job it reads has finished (or failed)."""

    def __init__(self, batches: list[list[Job]]):
        ours = {job.job_id for batch in batches for job in batch}
        self.failed: set[str] = set()
        self._readers: dict[str, list[_Batch]] = {}  # job id -> batches waiting for it
        self._ready: list[tuple[int, _Batch]] = []  # heap, plan order
        self._held: dict[int, _Batch] = {}
        for index, jobs in enumerate(batches):
            batch = _Batch(index, jobs)
            deps = {dep for job in jobs for dep in job.deps if dep in ours}  # others were done before this run
            batch.waiting_for = len(deps)
            for dep in deps:
                self._readers.setdefault(dep, []).append(batch)
            if deps:
                self._held[index] = batch
            else:
                self._ready.append((index, batch))
        heapq.heapify(self._ready)

    def next_ready(self) -> _Batch | None:
        return heapq.heappop(self._ready)[1] if self._ready else None

    def retry(self, batch: _Batch) -> None:
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


def _usage(message: str) -> Exception:
    from ...errors import UsageError  # printed as one line, exit code 2

    return UsageError(message)


def _worker_count(option: int | None) -> int | None:
    if option is not None:
        if option < 1:
            raise _usage(f"--workers must be at least 1 (got {option})")
        return option
    value = os.environ.get(WORKERS_ENV, "").strip()
    if not value:
        return None
    try:
        count = int(value)
    except ValueError:
        count = 0
    if count < 1:
        raise _usage(f"${WORKERS_ENV} must be a positive integer (got {value!r})")
    return count


def _torch_threads() -> int:
    """The intra-op thread count ``--executor local`` would use here (the workers copy it: same pixels)."""
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    if value.isdigit() and int(value) > 0:
        return int(value)
    import torch

    return torch.get_num_threads()


def _lost(exc: BaseException) -> bool:
    """True when ``exc`` means the worker (process, node, object) was lost, not that the job failed."""
    import ray.exceptions as rex

    lost = [rex.RayActorError, rex.WorkerCrashedError, rex.ObjectLostError, rex.OwnerDiedError]
    for name in ("NodeDiedError", "LocalRayletDiedError"):
        if hasattr(rex, name):
            lost.append(getattr(rex, name))
    return isinstance(exc, tuple(lost))


def _check_reachable(address: str, timeout: float = 10.0) -> None:
    """Fail fast (a usage error) when ``host:port`` of a Ray address does not accept connections."""
    import socket

    if address == "auto":
        return
    target = address.split("://", 1)[-1].rstrip("/")
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        return  # a form Ray understands and we do not: let ray.init judge it
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise _usage(f"cannot reach the Ray cluster at RAY_ADDRESS={address}: {exc}") from None


def _ray_error(exc: BaseException) -> str:
    """One line for a batch the worker could not run: the user's exception, not Ray's wrapper."""
    import ray.exceptions as rex

    if isinstance(exc, rex.RayTaskError):
        cause = getattr(exc, "cause", None)
        if isinstance(cause, BaseException):
            return describe_error(cause)
    if isinstance(exc, rex.RayActorError) and getattr(exc, "actor_init_failed", False):
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        return f"Ray worker failed to start: {lines[-1][:300] if lines else type(exc).__name__}"
    return describe_error(exc)


class RayExecutor:
    """Renders batches on a pool of Ray actors; see the module docstring."""

    def __init__(self, run: RunInfo, workers: int | None = None):
        # workers may run in another directory: give them absolute paths (records hold relative ones)
        self.run = replace(run, out_dir=os.path.abspath(run.out_dir), base_dir=os.path.abspath(run.base_dir))
        self.workers = _worker_count(workers)
        self.connected = False
        self.joined = False

    # ------------------------------------------------------------------------------------ cluster
    def _connect(self) -> None:
        import ray

        if ray.is_initialized():  # a caller (a notebook, a test) already connected: use it, leave it be
            return
        address = os.environ.get("RAY_ADDRESS", "").strip()
        quiet = {"log_to_driver": False, "logging_level": logging.ERROR}
        if address and address != "local":
            _check_reachable(address)  # ray.init waits for an unreachable cluster for many minutes
            try:
                ray.init(address=address, **quiet)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                hint = "" if os.environ.get("RAY_AUTH_MODE") else (
                    " (a cluster with token authentication also needs RAY_AUTH_MODE=token and its token)")
                raise _usage(f"cannot join the Ray cluster at RAY_ADDRESS={address}: {describe_error(exc)}{hint}") \
                    from None
            self.joined = True
        else:
            cpus = os.cpu_count() or 1
            # --workers beyond the CPU count: give Ray that many CPU slots, or the extra actors never start
            ray.init(address="local", num_cpus=max(cpus, self.workers or 0), include_dashboard=False, **quiet)
        self.connected = True

    def _actor_options(self) -> tuple[dict[str, Any], int]:
        """(options for each actor, number of actors) for this cluster."""
        import ray

        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        cpus = max(1, int(resources.get("CPU", 1)))
        if gpus:
            count = self.workers or gpus
            if count > gpus:
                self._say(f"Ray: {count} workers asked for, but the cluster has {gpus} GPU(s); using {gpus}")
                count = gpus
            options: dict[str, Any] = {"num_gpus": 1, "num_cpus": 1}
        else:
            count = self.workers or min(cpus, MAX_CPU_WORKERS)
            if count > cpus and self.joined:
                self._say(f"Ray: {count} workers asked for, but the cluster has {cpus} CPU(s); using {cpus}")
                count = cpus
            options = {"num_cpus": 1}
        threads = str(_torch_threads())
        names = ENV_ALWAYS + (() if self.joined else ENV_LOCAL)
        env = {name: os.environ[name] for name in names if os.environ.get(name)}
        env.update({"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads})
        # several workers' thread teams may share the cores: sleep, rather than spin, while waiting (same results)
        env.setdefault("OMP_WAIT_POLICY", os.environ.get("OMP_WAIT_POLICY") or "PASSIVE")
        options["runtime_env"] = {"env_vars": env}
        options["max_restarts"] = 0  # the driver replaces dead actors itself and re-dispatches their batch
        return options, count

    # ------------------------------------------------------------------------------------ running
    def execute(self, jobs: list[Job], sink: Any) -> None:
        """Render ``jobs`` (dependency order) on the cluster. ``sink`` receives results and skips."""
        import ray

        self._sink = sink
        self._connect()
        actors: list[_Slot] = []
        try:
            options, count = self._actor_options()
            if options.get("num_gpus"):
                jobs = self._own_gpu(jobs)
            remote_worker = ray.remote(JobWorker).options(**options)
            batches = make_batches(jobs)
            count = max(1, min(count, len(batches)))
            actors = [_Slot(remote_worker.remote(self.run)) for _ in range(count)]
            self._loop(_Schedule(batches), actors, remote_worker, sink)
        finally:
            for slot in actors:
                with contextlib.suppress(Exception):  # already dead
                    ray.kill(slot.actor)
            if self.connected:
                ray.shutdown()

    def _loop(self, schedule: _Schedule, actors: list[_Slot], remote_worker: Any, sink: Any) -> None:
        import ray

        stopping = False
        while True:
            if not stopping and sink.stop_requested():
                stopping = True  # dispatch nothing more; the batches in flight finish and are recorded
            if not stopping:
                self._dispatch(schedule, actors, sink)
            busy = {slot.ref: slot for slot in actors if slot.batch is not None}
            if not busy:
                if not stopping:
                    for job in schedule.stranded():  # cannot happen: every input is a job of this run, or done
                        sink.skipped(job, "its input jobs never finished")
                return
            ready, _ = ray.wait(list(busy), num_returns=1, timeout=POLL_SECONDS)
            for ref in ready:
                slot = busy[ref]
                batch = slot.batch
                assert batch is not None
                slot.batch, slot.ref = None, None
                try:
                    results: list[JobResult] = ray.get(ref)
                except Exception as exc:  # noqa: BLE001 - sorted below: a lost worker or a failing batch
                    if _lost(exc) and not getattr(exc, "actor_init_failed", False):
                        self._replace(slot, remote_worker)
                        if stopping:
                            continue  # neither retried nor failed: the next run renders these jobs
                        if batch.attempts < MAX_ATTEMPTS:
                            self._say(f"Ray worker lost ({type(exc).__name__}); retrying {len(batch.jobs)} job(s) "
                                      f"of stage {batch.jobs[0].stage} on another worker")
                            schedule.retry(batch)
                            continue
                        error = f"Ray worker died {batch.attempts} times rendering this batch: {_ray_error(exc)}"
                    else:
                        if _lost(exc):  # its constructor failed: no retry (it would fail alike); keep the pool full
                            self._replace(slot, remote_worker)
                        error = _ray_error(exc)
                    results = [JobResult(job.job_id, error=error) for job in batch.jobs]
                else:
                    slot.warm = True
                by_id = {result.job_id: result for result in results}
                for job in batch.jobs:
                    result = by_id.get(job.job_id) or JobResult(job.job_id, error="the Ray worker returned no result")
                    schedule.resolve(job.job_id, failed=bool(result.error))
                    sink.finished(result)

    def _dispatch(self, schedule: _Schedule, actors: list[_Slot], sink: Any) -> None:
        """Send ready batches to idle actors (warm ones first), in plan order; skip jobs whose inputs failed."""
        idle = sorted((slot for slot in actors if slot.batch is None), key=lambda slot: not slot.warm)
        while idle:
            batch = schedule.next_ready()
            if batch is None:
                return
            ready = []
            for job in batch.jobs:
                bad = [dep for dep in job.deps if dep in schedule.failed]
                if bad:
                    schedule.resolve(job.job_id, failed=True)
                    sink.skipped(job, f"input job {bad[0][:8]} failed or was skipped")
                else:
                    ready.append(job)
            if not ready:
                continue
            batch.jobs = ready
            batch.attempts += 1
            slot = idle.pop(0)
            slot.batch = batch
            slot.ref = slot.actor.__call__.remote(ready, None)
            sink.started(ready)

    def _own_gpu(self, jobs: list[Job]) -> list[Job]:
        """A GPU worker sees only the GPU Ray gave it (as cuda:0): ``device: cuda:N`` means that one there."""
        pinned = sorted({job.device for job in jobs if job.device.startswith("cuda:")})
        if not pinned:
            return jobs
        self._say(f"Ray: device {', '.join(pinned)} runs on each worker's own GPU")
        return [replace(job, device="cuda") if job.device.startswith("cuda:") else job for job in jobs]

    def _replace(self, slot: _Slot, remote_worker: Any) -> None:
        import ray

        with contextlib.suppress(Exception):  # already gone
            ray.kill(slot.actor)
        slot.actor = remote_worker.remote(self.run)
        slot.warm = False

    def _say(self, message: str) -> None:
        say = getattr(getattr(self, "_sink", None), "progress", None)
        say = getattr(say, "say", None)
        if callable(say):
            say(message)
