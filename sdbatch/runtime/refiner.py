"""The SDXL refiner of a refined generate job, loaded once per process beside its base (issue 13).

``StableDiffusionXLImg2ImgPipeline.from_pretrained(refiner, text_encoder_2=base.text_encoder_2, vae=base.vae)``
as diffusers' ensemble-of-experts docs write it, each component shared only when the refiner's own config of it
equals the base's (else the refiner loads its own), in the base's dtype, on its device, with the same GPU options
(:func:`sdbatch.runtime.perf.apply_gpu_options`). The refiner's scheduler is its own default, or the job's
scheduler made ``from_config`` of that default, as the model bank does for the base. The planning side is
:mod:`sdbatch.stages.refiner`.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any, Iterator

from ..core.job import Job
from ..errors import ModelUnavailable, one_line

#: config keys that say where or by which version a config was written, not what the model is
_META_KEYS = ("_name_or_path", "_diffusers_version", "_class_name", "transformers_version", "architectures",
              "torch_dtype", "dtype", "_commit_hash", "_use_default_values")


def _plain(config: Any) -> dict[str, Any]:
    data = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    return json.loads(json.dumps({k: v for k, v in data.items() if k not in _META_KEYS}, default=str))


def same_config(saved: Path, loaded: Any) -> bool:
    """Whether the config file ``saved`` (the refiner's component) describes the loaded component's model."""
    try:
        own = json.loads(saved.read_text())
    except (OSError, ValueError):
        return False
    theirs = _plain(loaded.config)
    return all(theirs.get(k) == v for k, v in _plain(own).items())


def load_refiner(ref: Any, base: Any, job: Job, load_key: Any) -> dict[str, Any]:
    """``{"pipe": refiner, "default": its own scheduler, "schedulers": {}}`` for ``job``'s base pipeline ``base``."""
    import diffusers

    from ..sources.specs import model_folder
    from ..sources.weights import ensure_loadable, safetensors_only
    from .perf import GpuOptions, apply_gpu_options

    allow_pickle = bool(job.options.allow_pickle)
    try:
        folder = model_folder(ref)
        ensure_loadable(folder, allow_pickle, f"refiner {ref.id!r}")
        name = json.loads((folder / "model_index.json").read_text()).get("_class_name")
        if name != "StableDiffusionXLImg2ImgPipeline":
            raise ModelUnavailable(f"refiner {ref.id!r} is not an SDXL refiner (its pipeline is {name})")
        shared = {part: getattr(base, part) for part in ("text_encoder_2", "vae")
                  if getattr(base, part, None) is not None and same_config(folder / part / "config.json",
                                                                          getattr(base, part))}
        pipe = diffusers.StableDiffusionXLImg2ImgPipeline.from_pretrained(
            str(folder), torch_dtype=base.dtype, use_safetensors=safetensors_only(allow_pickle), **shared)
    except ModelUnavailable:
        raise
    except (OSError, ValueError) as exc:  # the whole reason on one line
        raise ModelUnavailable(f"refiner {ref.id!r} could not be loaded: "
                               f"{one_line(str(exc), 400) or type(exc).__name__}") from None
    pipe.set_progress_bar_config(disable=True)
    options = dict(load_key.options)
    apply_gpu_options(pipe, GpuOptions(**{k: v for k, v in options.items() if k in GpuOptions.__dataclass_fields__}),
                      load_key.device)
    return {"pipe": pipe, "default": pipe.scheduler, "schedulers": {}, "shared": sorted(shared)}


def refiner_pipeline(ctx: Any, job: Job, base: Any) -> Any:
    """The job's refiner (loaded once per process and base), its scheduler set to the job's."""
    from .models import SCHEDULERS

    ref = job.aux_models.get("refiner")
    if ref is None:
        raise ModelUnavailable(f"job {job.job_id[:8]} has a refiner but no refiner model in the plan")
    bank = ctx.models
    key = bank.key(job)
    loaded = bank.get_or_load(("refiner", ref.identity(), key), lambda: load_refiner(ref, base, job, key))
    name = job.params.scheduler
    if name == "default":
        scheduler = loaded["default"]
    else:
        if name not in loaded["schedulers"]:
            import diffusers

            cls_name, extra = SCHEDULERS[name]
            loaded["schedulers"][name] = getattr(diffusers, cls_name).from_config(loaded["default"].config, **extra)
        scheduler = loaded["schedulers"][name]
    pipe = loaded["pipe"]
    pipe.scheduler = scheduler
    return pipe


class _RefinerEmbeddings:
    """The model bank's prompt cache, keyed apart for the refiner (its text encoders are not the base's)."""

    def __init__(self, models: Any, identity: str):
        self.models = models
        self.identity = identity

    def cached_embedding(self, job: Job, kind: str, text: str, encode: Any) -> Any:
        return self.models.cached_embedding(job, f"refiner:{self.identity}:{kind}", text, encode)


class RefinerPrompts:
    """What :func:`sdbatch.stages.diffusion.prompt_kwargs` reads of a stage context, for the refiner's prompts."""

    def __init__(self, ctx: Any, job: Job):
        self.models = _RefinerEmbeddings(ctx.models, job.aux_models["refiner"].identity())


@contextlib.contextmanager
def base_adapters_off(base: Any, job: Job) -> Iterator[None]:
    """The base's LoRA adapters disabled for the block (a shared text_encoder_2 carries them), then on again."""
    if not job.params.loras:
        yield
        return
    base.disable_lora()
    try:
        yield
    finally:
        base.enable_lora()
