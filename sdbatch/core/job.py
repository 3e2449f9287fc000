"""A job: one output (an image, or a video with its frames) to render, with a content-addressed id.

Everything here is plain data (no torch, no pydantic validation on the hot path): the planner makes jobs,
executors ship them (pickled, for Ray), stages read them and the manifest records them.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class ModelRef:
    """A model's identity. ``revision`` is a hub commit, a file/folder sha256 or a built-in's version."""

    id: str
    revision: str
    source: str  # hub | folder | file | builtin
    path: str | None = None  # where to load it from, when known locally

    def identity(self) -> str:
        return f"{self.source}:{self.id}@{self.revision}"


@dataclass
class InputRef:
    """An input image: a file (``sha256`` known) or another job's output (``job_id`` set)."""

    path: str  # recipe-relative/absolute file path, or output-folder-relative path of a stage output
    sha256: str | None = None
    job_id: str | None = None

    def identity(self) -> str:
        return f"job:{self.job_id}" if self.job_id else f"file:{self.sha256}"


@dataclass
class Job:
    job_id: str
    stage: str
    type: str
    prompt: str
    negative_prompt: str
    seed: int
    params: Any  # the stage type's JobParams (sdbatch.core.params)
    model: ModelRef
    device: str
    dtype: str
    output: str  # path relative to the output folder
    inputs: list[InputRef] = field(default_factory=list)
    mask: InputRef | None = None
    options: Any = None  # RunOptions (sdbatch.core.params): runtime options, not part of the id
    aux_models: dict[str, ModelRef] = field(default_factory=dict)  # e.g. {"depth": ...} (in params by identity)
    prompt_template: str | None = None  # the wildcard template the prompt was expanded from (not identity)
    negative_prompt_template: str | None = None

    @property
    def deps(self) -> list[str]:
        return [ref.job_id for ref in self.inputs if ref.job_id]

    @property
    def frames_dir(self) -> str:
        """Where a video job's frames go (relative to the output folder): beside its mp4, in ``frames/``."""
        return str(Path(self.output).parent / "frames")

    @property
    def batch_key(self) -> tuple:
        """Jobs with equal keys may be rendered in one batch: same stage, model, device, dtype and params
        (everything but prompt, negative prompt, seed and inputs)."""
        return (self.stage, self.model.identity(), self.device, self.dtype, self.params.key())

    def params_json(self) -> dict[str, Any]:
        """The identity parameters as JSON (the manifest's ``params``; hashed into the job id)."""
        return self.params.to_json()

    def options_json(self) -> dict[str, Any]:
        """The runtime options that were set (the manifest's ``options``; never part of the id)."""
        return self.options.model_dump(exclude_none=True)

    def to_json(self, status: str | None = None) -> dict[str, Any]:
        """The job as ``sdbatch plan --json`` lists it (see :func:`sdbatch.core.record.plan_entry`)."""
        from .record import plan_entry

        return plan_entry(self, status)


def slugify(text: str, limit: int = 40) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug[:limit].rstrip("-") or "image"


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def options_from_json(data: dict[str, Any]) -> Any:
    """A job's runtime options rebuilt from a manifest record's ``options`` (the inverse of ``Job.options_json``)."""
    from .params import RunOptions

    return RunOptions.model_validate(data)
