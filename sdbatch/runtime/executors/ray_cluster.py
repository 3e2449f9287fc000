"""Cluster plumbing of the Ray executor: its options, joining a cluster (token authentication), the live nodes
and how many workers each holds, the shared-folder probe, and which Ray errors mean a lost worker.

Nothing here imports Ray at module level: ``validate`` and ``plan`` never load it.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import secrets
import socket
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ..worker import describe_error

MAX_CPU_WORKERS = 4  # default number of CPU workers, when neither --workers nor $SDBATCH_RAY_WORKERS is given
WORKERS_ENV = "SDBATCH_RAY_WORKERS"
DEFAULT_WORKER_TIMEOUT = 300.0  # --worker-timeout: seconds without any live worker before the run stops
PROBE_PREFIX = ".sdbatch-probe-"  # the probe file a worker writes into the output folder (removed after)
PROBE_SECONDS = 120.0  # a node whose probe has not come back by then is not used

# passed to every worker; the path-valued ones only on a local cluster (same machine, same paths)
ENV_ALWAYS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_ENDPOINT", "SDBATCH_DEBUG")
ENV_LOCAL = ("SDBATCH_CACHE", "HF_HOME", "HF_HUB_CACHE")

AUTH_HINT = ("a cluster with token authentication needs RAY_AUTH_MODE=token and its token in RAY_AUTH_TOKEN "
             "(or in a file named by RAY_AUTH_TOKEN_PATH, default ~/.ray/auth_token; `ray get-auth-token` on the "
             "head node prints it)")


def usage(message: str) -> Exception:
    from ...errors import UsageError  # printed as one line, exit code 2

    return UsageError(message)


@dataclass(frozen=True)
class RayOptions:
    """What a worker asks of its node (None: the default, decided on the cluster) and how long to wait."""

    workers: int | None = None  # at most this many workers (default: one per GPU, else CPUs up to 4)
    num_gpus: float | None = None  # per worker (default: 1 on a cluster with GPUs, else 0)
    num_cpus: float | None = None  # per worker (default 1)
    worker_timeout: float = DEFAULT_WORKER_TIMEOUT

    @classmethod
    def parse(cls, workers: int | None = None, num_gpus: float | None = None, num_cpus: float | None = None,
              worker_timeout: float | None = None) -> RayOptions:
        if workers is not None and workers < 1:
            raise usage(f"error: --workers must be at least 1 (got {workers})")
        if workers is None:
            workers = _workers_from_env()
        for flag, value in (("--num-gpus", num_gpus), ("--num-cpus", num_cpus)):
            if value is not None and not (value >= 0 and math.isfinite(value)):
                raise usage(f"error: {flag} must be a number of at least 0 (got {value})")
        if worker_timeout is None:
            worker_timeout = DEFAULT_WORKER_TIMEOUT
        if not (worker_timeout > 0 and math.isfinite(worker_timeout)):
            raise usage(f"error: --worker-timeout must be a positive number of seconds (got {worker_timeout})")
        return cls(workers, num_gpus, num_cpus, float(worker_timeout))


def _workers_from_env() -> int | None:
    value = os.environ.get(WORKERS_ENV, "").strip()
    if not value:
        return None
    try:
        count = int(value)
    except ValueError:
        count = 0
    if count < 1:
        raise usage(f"error: ${WORKERS_ENV} must be a positive integer (got {value!r})")
    return count


# ------------------------------------------------------------------------------------------- joining
@contextlib.contextmanager
def captured_stderr() -> Iterator[list[str]]:
    """Collect what is written to file descriptor 2 meanwhile (Ray's C++ client logs its retries there)."""
    out: list[str] = []
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        saved = os.dup(2)
        try:
            os.dup2(tmp.fileno(), 2)
            yield out
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            out.append(tmp.read().decode("utf-8", "replace"))


def _check_reachable(address: str, timeout: float = 10.0) -> None:
    """Fail fast (a usage error) when ``host:port`` of a Ray address does not accept connections."""
    if address == "auto":
        return
    target = address.split("://", 1)[-1].rstrip("/")
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        return  # a form Ray understands and we do not: let ray.init judge it
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise usage(f"error: cannot reach the Ray cluster at RAY_ADDRESS={address}: {exc}") from None


def connect(local_cpus: int) -> bool:
    """Join the cluster at ``$RAY_ADDRESS`` (True), else start a local Ray with ``local_cpus`` CPU slots (False).

    Token authentication is Ray's own: ``RAY_AUTH_MODE=token`` and ``RAY_AUTH_TOKEN`` / ``RAY_AUTH_TOKEN_PATH``
    (default ``~/.ray/auth_token``) in the environment. A refused connection is one line saying how to pass it."""
    import ray

    address = os.environ.get("RAY_ADDRESS", "").strip()
    quiet = {"log_to_driver": False, "logging_level": logging.ERROR}
    if not address or address == "local":
        ray.init(address="local", num_cpus=local_cpus, include_dashboard=False, **quiet)
        return False
    _check_reachable(address)  # ray.init waits for an unreachable cluster for many minutes
    try:
        with captured_stderr() as logged:
            ray.init(address=address, **quiet)
    except Exception as exc:  # noqa: BLE001 - ConnectionError, AuthenticationError, RuntimeError, ...
        text = "".join(logged)
        refused = type(exc).__name__ == "AuthenticationError" or any(
            key in text or key in str(exc) for key in ("Unauthenticated", "InvalidAuthToken", "no token"))
        if refused:
            raise usage(f"error: the Ray cluster at RAY_ADDRESS={address} refused the connection (token "
                        f"authentication): {AUTH_HINT}") from None
        raise usage(f"error: cannot join the Ray cluster at RAY_ADDRESS={address}: {describe_error(exc)} "
                    f"({AUTH_HINT})") from None
    return True


# ------------------------------------------------------------------------------------------- nodes
@dataclass(frozen=True)
class Node:
    id: str
    ip: str
    resources: dict[str, float]

    @property
    def label(self) -> str:
        return f"{self.ip} ({self.id[:8]})"


def alive_nodes() -> dict[str, Node]:
    """The cluster's live nodes by id, with their total resources (the GCS's view, asked afresh)."""
    import ray

    return {n["NodeID"]: Node(n["NodeID"], str(n.get("NodeManagerAddress") or "?"), dict(n.get("Resources") or {}))
            for n in ray.nodes() if n.get("Alive")}


def capacity(node: Node, num_gpus: float, num_cpus: float) -> int:
    """How many workers asking ``num_gpus`` / ``num_cpus`` each fit on ``node``."""
    fits = []
    for name, need in (("GPU", num_gpus), ("CPU", num_cpus)):
        if need > 0:
            fits.append(int(node.resources.get(name, 0.0) / need + 1e-9))
    return min(fits) if fits else 1


def worker_env(joined: bool, threads: int) -> dict[str, str]:
    """The environment every worker gets: offline flags, the driver's thread count (same CPU pixels)."""
    names = ENV_ALWAYS + (() if joined else ENV_LOCAL)
    env = {name: os.environ[name] for name in names if os.environ.get(name)}
    env.update({"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)})
    # several workers' thread teams may share the cores: sleep, rather than spin, while waiting (same results)
    env.setdefault("OMP_WAIT_POLICY", os.environ.get("OMP_WAIT_POLICY") or "PASSIVE")
    return env


def on_node(node_id: str) -> Any:
    """A scheduling strategy that places an actor or task on that node only (it dies with the node)."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return NodeAffinitySchedulingStrategy(node_id, soft=False)


def torch_threads() -> int:
    """The intra-op thread count ``--executor local`` would use here (the workers copy it: same pixels)."""
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    if value.isdigit() and int(value) > 0:
        return int(value)
    import torch

    return torch.get_num_threads()


def own_gpu(jobs: list[Any], say: Any) -> list[Any]:
    """A GPU worker sees only the GPU Ray gave it (as cuda:0): ``device: cuda:N`` means that one there."""
    from dataclasses import replace

    pinned = sorted({job.device for job in jobs if job.device.startswith("cuda:")})
    if not pinned:
        return jobs
    say(f"Ray: device {', '.join(pinned)} runs on each worker's own GPU")
    return [replace(job, device="cuda") if job.device.startswith("cuda:") else job for job in jobs]


def cluster_record(**info: Any) -> Any:
    """The run's ``{"kind": "run", "event": "cluster", "ray": {...}}`` manifest line: how the workers were asked
    for (``num_gpus``, ``num_cpus``, ``workers``, ``worker_timeout``) and the nodes that passed the probe."""
    from datetime import datetime, timezone

    from ...core.record import RunRecord

    nodes = info.pop("nodes")
    info = {"address": os.environ.get("RAY_ADDRESS") or "local", **info,
            "auth_mode": os.environ.get("RAY_AUTH_MODE"), "nodes": [{"id": n.id, "ip": n.ip} for n in nodes]}
    return RunRecord(event="cluster", time=datetime.now(timezone.utc).isoformat(timespec="seconds"), ray=info)


# ------------------------------------------------------------------------------------------- the probe
def write_probe(out_dir: str, name: str, token: str) -> str | None:
    """Runs on a node: write the probe file into the output folder as that node sees it. None, or why not."""
    if not os.path.isdir(out_dir):
        return f"{out_dir} does not exist there"
    try:
        with open(os.path.join(out_dir, name), "x", encoding="utf-8") as fh:
            fh.write(token)
    except OSError as exc:
        return f"cannot write into {out_dir} there: {exc.strerror or exc}"
    return None


def remove_probe(out_dir: str, name: str) -> None:
    """Runs on a node: remove its probe file (where the driver could not see it to remove it itself)."""
    with contextlib.suppress(OSError):
        os.unlink(os.path.join(out_dir, name))


@dataclass
class Probe:
    """A probe in flight on one node."""

    node: Node
    ref: Any
    name: str
    token: str
    started: float


def start_probe(node: Node, out_dir: str, env: dict[str, str], now: float) -> Probe:
    import ray

    name = f"{PROBE_PREFIX}{secrets.token_hex(8)}"
    token = secrets.token_hex(16)
    task = ray.remote(write_probe).options(num_cpus=0, scheduling_strategy=on_node(node.id), max_retries=0,
                                           runtime_env={"env_vars": env})
    return Probe(node, task.remote(out_dir, name, token), name, token, now)


def finish_probe(probe: Probe, out_dir: str, error: str | None) -> str | None:
    """The driver's half: read the probe file back and remove it. None when the node sees the driver's folder,
    else why it does not (its own copy is removed there, best effort)."""
    import ray

    path = os.path.join(out_dir, probe.name)
    seen = None
    with contextlib.suppress(OSError, UnicodeDecodeError):
        with open(path, encoding="utf-8") as fh:
            seen = fh.read()
    with contextlib.suppress(OSError):
        os.unlink(path)
    if error is None and seen == probe.token:
        return None
    if error is None:
        error = f"a file it wrote into {out_dir} is not in the driver's {out_dir}"
        with contextlib.suppress(Exception):  # the node's own copy, on its own disk
            task = ray.remote(remove_probe).options(num_cpus=0, scheduling_strategy=on_node(probe.node.id),
                                                    max_retries=0)
            ray.get(task.remote(out_dir, probe.name), timeout=30)
    return error


# ------------------------------------------------------------------------------------------- errors
def is_lost(exc: BaseException) -> bool:
    """True when ``exc`` means the worker (process, node, object) was lost, not that the job failed."""
    import ray.exceptions as rex

    lost = [rex.RayActorError, rex.WorkerCrashedError, rex.ObjectLostError, rex.OwnerDiedError]
    for name in ("NodeDiedError", "LocalRayletDiedError", "ActorUnschedulableError", "TaskUnschedulableError"):
        if hasattr(rex, name):
            lost.append(getattr(rex, name))
    return isinstance(exc, tuple(lost))


def init_failed(exc: BaseException) -> bool:
    """The worker's constructor raised (it would on any node alike): not a lost worker."""
    return bool(getattr(exc, "actor_init_failed", False))


def ray_error(exc: BaseException) -> str:
    """One line for a batch the worker could not run: the user's exception, not Ray's wrapper."""
    import ray.exceptions as rex

    if isinstance(exc, rex.RayTaskError):
        cause = getattr(exc, "cause", None)
        if isinstance(cause, BaseException):
            return describe_error(cause)
    if isinstance(exc, rex.RayActorError) and init_failed(exc):
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        return f"Ray worker failed to start: {lines[-1][:300] if lines else type(exc).__name__}"
    return describe_error(exc)
