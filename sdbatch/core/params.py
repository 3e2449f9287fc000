"""Typed per-job values: :class:`JobParams` (identity: hashed into the job id) and :class:`RunOptions`
(runtime: recorded, never hashed).

A stage type's params model is derived from its config model (:func:`params_model`), so the config is the
one declaration: a swept field becomes its scalar item, every identity field keeps its type, and a runtime
option can never reach the id. Stage code reads ``job.params.steps``, ``job.params.coherence.flow``,
``job.options.previews``.
"""

from __future__ import annotations

import json
from functools import cache
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, PrivateAttr, create_model

from ..config.control import ControlRef
from ..config.ipadapter import IpAdapterRef
from ..config.refiner import RefinerRef
from ..config.stage import StageConfig, StageParams


class LoraRef(BaseModel):
    """A LoRA as a job uses it: the file as written, its content hash, its weight."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    path: str
    sha256: str
    weight: float


class EmbeddingRef(BaseModel):
    """A textual-inversion embedding as a job uses it: the file as written, the token prompts use, its hash."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    path: str
    token: str
    sha256: str


class JobParams(BaseModel):
    """A job's identity parameters. ``to_json()`` is what the manifest records as ``params`` and the id hashes."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    steps: int
    scheduler: str
    width: int
    height: int
    # model sources, by content (absent from older ids when unused)
    loras: list[LoraRef] | None = None
    vae: str | None = None
    pipeline_config: str | None = None
    embeddings: list[EmbeddingRef] | None = None
    controlnet: list[ControlRef] | None = None  # ControlNets and their control images (sdbatch.stages.control)
    ip_adapter: list[IpAdapterRef] | None = None  # image prompts (sdbatch.stages.ipadapter_config)
    refiner: RefinerRef | None = None  # generate's SDXL refiner (sdbatch.stages.refiner)

    OMIT_IF_NONE: ClassVar[frozenset[str]] = frozenset({"loras", "vae", "pipeline_config", "embeddings", "controlnet",
                                                        "ip_adapter", "prompt_syntax", "clip_skip",
                                                        "max_sequence_length", "true_cfg", "refiner"})

    _json: dict[str, Any] | None = PrivateAttr(default=None)
    _key: str | None = PrivateAttr(default=None)

    def to_json(self) -> dict[str, Any]:
        if self._json is None:
            data = self.model_dump(mode="json")
            self._json = {k: v for k, v in data.items() if v is not None or k not in self.OMIT_IF_NONE}
        return dict(self._json)

    def key(self) -> str:
        """The params as one canonical string (equal for equal params): batching groups by it."""
        if self._key is None:
            self._key = json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"))
        return self._key

    @property
    def denoising_steps(self) -> int:
        """The denoising steps diffusers runs: ``int(steps * strength)`` for img2img-like params, else steps."""
        strength = getattr(self, "strength", None)
        if isinstance(strength, float):
            return min(int(self.steps * strength), self.steps)
        return self.steps


@cache
def params_model(config: type[StageConfig]) -> type[JobParams]:
    """The params model of a stage type: sweeps as scalars, identity fields with their config types."""
    fields: dict[str, Any] = {}
    for key in config.SWEEPS:
        if key in ("prompt", "negative_prompt") or key in JobParams.model_fields:
            continue
        fields[key] = (float, ...)  # guidance, strength
    for name in config.identity_fields():
        fields[name] = (config.model_fields[name].annotation, None)
    model = create_model(f"{config.__name__}Params", __base__=JobParams, **fields)
    model.OMIT_IF_NONE = JobParams.OMIT_IF_NONE | config.OMIT_IF_NONE
    return model


def make_params(config: type[StageConfig], values: dict[str, Any], texts: dict[str, Any] | None = None) -> JobParams:
    """Params from already validated values (no validation: the config model did it).

    ``texts``: the job's ``prompt`` and ``negative_prompt`` (a sweep point). How prompts are read is identity only
    where it matters, so ids stay those of older versions otherwise: ``prompt_syntax`` is kept only when one of the
    job's texts (with ``prompts``, an animation's) reads differently in A1111's syntax (``a1111`` when unset),
    ``clip_skip: 1`` (no skip) is left out like an unset one.
    """
    model = params_model(config)
    if values.get("loras"):
        values = dict(values, loras=[v if isinstance(v, LoraRef) else LoraRef(**v) for v in values["loras"]])
    if values.get("embeddings"):
        values = dict(values, embeddings=[v if isinstance(v, EmbeddingRef) else EmbeddingRef(**v)
                                          for v in values["embeddings"]])
    if values.get("controlnet"):
        values = dict(values, controlnet=[v if isinstance(v, ControlRef) else ControlRef(**v)
                                          for v in values["controlnet"]])
    if values.get("ip_adapter"):
        values = dict(values, ip_adapter=[v if isinstance(v, IpAdapterRef) else IpAdapterRef(**v)
                                          for v in values["ip_adapter"]])
    if values.get("clip_skip") == 1:
        values = dict(values, clip_skip=None)
    if "prompt_syntax" in model.model_fields:
        values = dict(values, prompt_syntax=prompt_syntax(values, texts))
    return model.model_construct(**values)


def prompt_syntax(values: dict[str, Any], texts: dict[str, Any] | None) -> str | None:
    """A job's ``prompt_syntax`` param: None where no text of it has A1111 syntax (both readings are equal)."""
    from ..stages.prompts import has_syntax

    found = [(texts or {}).get("prompt"), (texts or {}).get("negative_prompt")]
    prompts = values.get("prompts")
    found += list(prompts.values() if isinstance(prompts, dict) else prompts or ())
    if not any(isinstance(text, str) and has_syntax(text) for text in found):
        return None
    return values.get("prompt_syntax") or "a1111"


def params_from_json(config: type[StageConfig], data: dict[str, Any]) -> JobParams:
    """Params rebuilt (and validated) from a manifest record's ``params``."""
    return params_model(config).model_validate(data)


def _run_options_model() -> type[BaseModel]:
    fields: dict[str, Any] = {name: (StageParams.model_fields[name].annotation, None)
                              for name in StageConfig.runtime_fields() if name != "device"}
    fields["allow_pickle"] = (Literal[True] | None, None)
    return create_model("RunOptions", __base__=_OptionsBase, **fields)


class _OptionsBase(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


RunOptions = _run_options_model()
RunOptions.__doc__ = """A job's runtime options (GPU options, batch size, previews, allow_pickle): recorded, not hashed."""
