"""Pipelines, loaded once per process and shared.

A :class:`ModelBank` loads each base model once (hub id, local diffusers folder, single ``.safetensors``
file, or a built-in tiny model), derives the img2img and inpaint pipelines from it with ``from_pipe``
(no second copy of the weights), and swaps schedulers with ``from_config``.

Example::

    bank = ModelBank()
    pipe = bank.pipeline(job, "img2img")          # loads job.model once, shares its components
    pipe.scheduler = bank.scheduler(job, "dpmpp-2m-karras")
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .plan import Job, ModelRef

TASKS = ("text2img", "img2img", "inpaint")

# recipe scheduler name -> (diffusers class, extra config)
SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "ddim": ("DDIMScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler-a": ("EulerAncestralDiscreteScheduler", {}),
    "dpmpp-2m": ("DPMSolverMultistepScheduler", {}),
    "dpmpp-2m-karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    "dpmpp-sde-karras": ("DPMSolverSDEScheduler", {"use_karras_sigmas": True}),
    "unipc": ("UniPCMultistepScheduler", {}),
    "lms": ("LMSDiscreteScheduler", {}),
    "pndm": ("PNDMScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "lcm": ("LCMScheduler", {}),
}


class ModelUnavailable(RuntimeError):
    """A model that cannot be fetched or loaded; the message is one line for the user."""


def resolve_device(device: str) -> str:
    import torch

    if device != "auto":
        return device
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def resolve_dtype(dtype: str, device: str) -> Any:
    import torch

    if dtype == "auto":
        return torch.float16 if device.startswith(("cuda", "mps")) else torch.float32
    return getattr(torch, dtype)


def fetch_hub_model(model: ModelRef, pipeline: bool = True) -> ModelRef:
    """Download (or find in the cache) a hub model; return it with its commit and snapshot folder.

    The token comes from ``HF_TOKEN`` or ``hf auth login``, handled by huggingface_hub; it is never logged.
    """
    if model.source != "hub" or model.path:
        return model
    revision = model.revision.removeprefix("unresolved:")
    try:
        if pipeline:
            from diffusers import DiffusionPipeline

            folder = Path(DiffusionPipeline.download(model.id, revision=revision))
        else:
            from huggingface_hub import snapshot_download

            folder = Path(snapshot_download(model.id, revision=revision))
    except Exception as exc:  # noqa: BLE001 - any fetch failure becomes one line
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelUnavailable(
            f"model {model.id!r} could not be fetched ({reason[:160]}); check the name and your network "
            f"or HF_TOKEN, or try the recipe offline with --rehearse") from None
    return ModelRef(model.id, folder.name, "hub", str(folder))


@dataclass(frozen=True)
class LoadKey:
    model: str
    device: str
    dtype: str
    options: tuple


class ModelBank:
    """Loads each model once and hands out task pipelines that share its components."""

    def __init__(self) -> None:
        self._bases: dict[LoadKey, Any] = {}
        self._tasks: dict[tuple[LoadKey, str], Any] = {}
        self._schedulers: dict[tuple[LoadKey, str], Any] = {}
        self._default_schedulers: dict[LoadKey, Any] = {}
        self._others: dict[Any, Any] = {}

    def get_or_load(self, key: Any, load: Any) -> Any:
        """Any other model (a depth estimator, ...) loaded once per process under ``key``."""
        if key not in self._others:
            self._others[key] = load()
        return self._others[key]

    def key(self, job: Job) -> LoadKey:
        device = resolve_device(job.device)
        options = tuple(sorted((k, v) for k, v in job.options.items() if k != "batch_size"))
        return LoadKey(job.model.identity(), device, job.dtype, options)

    def base(self, job: Job) -> Any:
        key = self.key(job)
        if key not in self._bases:
            self._bases[key] = self._load(job.model, key)
            self._default_schedulers[key] = self._bases[key].scheduler
        return self._bases[key]

    def pipeline(self, job: Job, task: str) -> Any:
        """The ``task`` pipeline (text2img | img2img | inpaint) for ``job``'s model, scheduler set."""
        from diffusers import AutoPipelineForImage2Image, AutoPipelineForInpainting

        key = self.key(job)
        base = self.base(job)
        if (key, task) not in self._tasks:
            if task == "text2img":
                pipe = base
            elif task == "img2img":
                pipe = AutoPipelineForImage2Image.from_pipe(base)
            elif task == "inpaint":
                pipe = AutoPipelineForInpainting.from_pipe(base)
            else:
                raise ValueError(f"unknown task {task!r}")
            if hasattr(pipe, "set_progress_bar_config"):
                pipe.set_progress_bar_config(disable=True)
            self._tasks[(key, task)] = pipe
        pipe = self._tasks[(key, task)]
        pipe.scheduler = self.scheduler(job, job.params.get("scheduler", "default"))
        return pipe

    def scheduler(self, job: Job, name: str) -> Any:
        key = self.key(job)
        self.base(job)
        default = self._default_schedulers[key]
        if name == "default":
            return default
        if (key, name) not in self._schedulers:
            import diffusers

            cls_name, extra = SCHEDULERS[name]
            self._schedulers[(key, name)] = getattr(diffusers, cls_name).from_config(default.config, **extra)
        return self._schedulers[(key, name)]

    def sampler_name(self, job: Job) -> str:
        """A1111's name of the sampler a job used (the model's own scheduler for ``default``)."""
        from .artifacts import SAMPLER_BY_CLASS, SAMPLER_NAMES

        name = job.params.get("scheduler", "default")
        if name != "default" or self.key(job) not in self._bases:
            return SAMPLER_NAMES.get(name, name)
        cls = type(self.scheduler(job, "default")).__name__
        return SAMPLER_BY_CLASS.get(cls, cls)

    def _load(self, model: ModelRef, key: LoadKey) -> Any:
        import torch
        from diffusers import AutoPipelineForText2Image

        from .perf import GpuOptions, apply_gpu_options

        dtype = resolve_dtype(key.dtype, key.device)
        source = self._local_source(model)
        try:
            if source.is_file():
                pipe = self._load_single_file(source, dtype)
            else:
                pipe = AutoPipelineForText2Image.from_pretrained(str(source), torch_dtype=dtype)
        except ModelUnavailable:
            raise
        except (OSError, ValueError, EnvironmentError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelUnavailable(f"model {model.id!r} could not be loaded: {first[:200]}") from None
        if hasattr(pipe, "set_progress_bar_config"):
            pipe.set_progress_bar_config(disable=True)
        options = dict(key.options)
        apply_gpu_options(pipe, GpuOptions(**{k: v for k, v in options.items() if k in GpuOptions.__dataclass_fields__}),
                          key.device)
        del torch
        return pipe

    @staticmethod
    def _local_source(model: ModelRef) -> Path:
        if model.source == "builtin":
            from .tiny import builtin_model_path

            return Path(builtin_model_path(model.id))
        if model.path:
            return Path(model.path)
        return Path(fetch_hub_model(model).path or "")

    @staticmethod
    def _load_single_file(path: Path, dtype: Any) -> Any:
        import diffusers

        if path.suffix.lower() != ".safetensors" and os.environ.get("SDBATCH_ALLOW_PICKLE") != "1":
            raise ModelUnavailable(f"{path.name}: pickle checkpoints (.ckpt) are refused; set allow_pickle: true "
                                   "in the recipe if you trust the file")
        from diffusers.loaders.single_file_utils import infer_diffusers_model_type, load_single_file_checkpoint

        checkpoint = load_single_file_checkpoint(str(path))
        kind = infer_diffusers_model_type(checkpoint)
        cls = diffusers.StableDiffusionXLPipeline if kind.startswith("xl") else diffusers.StableDiffusionPipeline
        return cls.from_single_file(str(path), torch_dtype=dtype)
