"""Executors run a list of jobs through :class:`~sdbatch.runtime.worker.JobWorker`s.

``local`` (default) renders in this process; ``ray`` spreads batches over a Ray cluster. Both call the
same worker, so outputs, names, pixels and manifest lines are the same.
"""

from __future__ import annotations

from typing import Any

from ..worker import RunInfo

EXECUTORS = ("local", "ray")


def make_executor(name: str, run: RunInfo, **options: Any) -> Any:
    if name == "local":
        from .local import LocalExecutor

        return LocalExecutor(run)
    if name == "ray":
        from .ray import RayExecutor

        return RayExecutor(run, **options)
    raise ValueError(f"unknown executor {name!r} (expected one of: {', '.join(EXECUTORS)})")
