"""Pipelines, loaded once per process and shared.

A :class:`ModelBank` loads each base model once (hub id, local diffusers folder, single ``.safetensors``
file, or a built-in tiny model), derives the img2img and inpaint pipelines from it with ``from_pipe``
(no second copy of the weights), and swaps schedulers with ``from_config``. SD 1.x/2.x, SDXL, SD3/SD3.5 and
Flux.1 work for generate, img2img and inpaint (:data:`TASK_CLASSES`; other classes through AutoPipeline).

Model sources from the recipe:

* ``vae:`` replaces the model's VAE at load time (a diffusers AutoencoderKL folder, a pipeline folder with
  ``vae/``, a hub id, or a weights file whose config comes from the model's ``vae/``); the VAE is part of
  the load key, so a model with and without an override are two loaded pipelines.
* a single checkpoint file (original LDM/SGM layout) loads with ``<Pipeline>.from_single_file``; diffusers
  needs the pipeline's configs and tokenizers, taken from ``pipeline_config:`` (a folder with
  model_index.json, a hub id - configs only - or a built-in) when given, else from diffusers' default repo
  for the inferred model type (hub or its cache).
* which weights may be loaded is :mod:`sdbatch.sources.weights`' pickle policy, the same one the recipe
  checks apply: pickle files (.ckpt/.pt/.pth/.bin) need ``allow_pickle``, and diffusers folders load with
  ``use_safetensors=True`` unless it is set.
* ``embeddings:`` (textual inversion) hold exactly the job's set in the shared tokenizer / text encoder
  (:mod:`sdbatch.runtime.embeddings`: another set is unloaded first), so no token leaks between stages.
* ``loras:`` are PEFT adapters loaded once per base model (``load_lora_weights``) and activated per job
  with ``set_adapters`` at the job's weights; jobs without LoRAs run with adapters disabled (exactly the
  base model), so LoRA sets never leak from one job into another.

Example::

    bank = ModelBank()
    pipe = bank.pipeline(job, "img2img")          # loads job.model once, shares its components
    pipe.scheduler = bank.scheduler(job, "dpmpp-2m-karras")
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.job import Job, ModelRef
from ..errors import ModelUnavailable, one_line
from ..sources.hub import pipeline_index
from ..sources.specs import config_source, model_folder
from ..sources.weights import ensure_loadable, load_weights, safetensors_only
from .embeddings import apply_embeddings, embedding_set
from .ip_adapter import apply_ip_adapter

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


@dataclass(frozen=True)
class LoadKey:
    model: str
    device: str
    dtype: str
    options: tuple
    vae: str | None = None  # identity of a VAE override
    config: str | None = None  # pipeline config of a single-file model


#: job options that do not change how a pipeline is loaded
NOT_LOAD_OPTIONS = ("batch_size", "previews", "allow_pickle")
#: prompt embeddings kept per process (each distinct prompt is encoded once)
PROMPT_CACHE_SIZE = 64


class ModelBank:
    """Loads each model once and hands out task pipelines that share its components."""

    def __init__(self) -> None:
        self._bases: dict[LoadKey, Any] = {}
        self._tasks: dict[tuple[LoadKey, str], Any] = {}
        self._schedulers: dict[tuple[LoadKey, str], Any] = {}
        self._default_schedulers: dict[LoadKey, Any] = {}
        self._others: dict[Any, Any] = {}
        self._loras: dict[LoadKey, dict[str, Any]] = {}  # per base: loaded adapters and the active set
        self._embeddings: dict[LoadKey, dict[str, Any]] = {}  # per base: textual inversion loaded now
        self._prompts: dict[tuple, Any] = {}  # (key, lora set, embeddings, reading, kind, text) -> embeddings

    def get_or_load(self, key: Any, load: Any) -> Any:
        """Any other model (a depth estimator, ...) loaded once per process under ``key``."""
        if key not in self._others:
            self._others[key] = load()
        return self._others[key]

    def key(self, job: Job) -> LoadKey:
        device = resolve_device(job.device)
        options = tuple(sorted((k, v) for k, v in job.options_json().items() if k not in NOT_LOAD_OPTIONS))
        return LoadKey(job.model.identity(), device, job.dtype, options, job.params.vae, job.params.pipeline_config)

    def base(self, job: Job) -> Any:
        key = self.key(job)
        if key not in self._bases:
            self._bases[key] = self._load(job, key)
            self._default_schedulers[key] = self._bases[key].scheduler
        return self._bases[key]

    def pipeline(self, job: Job, task: str) -> Any:
        """The ``task`` pipeline (text2img | img2img | inpaint) for ``job``'s model, scheduler set."""
        key = self.key(job)
        base = self.base(job)
        if (key, task) not in self._tasks:
            if task not in ("text2img", "img2img", "inpaint"):
                raise ValueError(f"unknown task {task!r}")
            pipe = base if task == "text2img" else task_pipeline_class(base, task).from_pipe(base)
            if hasattr(pipe, "set_progress_bar_config"):
                pipe.set_progress_bar_config(disable=True)
            self._tasks[(key, task)] = pipe
        pipe = self._tasks[(key, task)]
        pipe.scheduler = self.scheduler(job, job.params.scheduler)
        self._apply_loras(job, key, pipe)
        apply_embeddings(self._embeddings.setdefault(key, {}), job, pipe)
        apply_ip_adapter(self._others.setdefault(("ip_adapter", key), {}), job, pipe)  # exactly the job's
        return pipe

    # ------------------------------------------------------------------------------------------ LoRAs
    def lora_set(self, job: Job) -> tuple:
        """The job's LoRAs as ((sha256, weight), ...): the adapters active while it renders."""
        return tuple((lora.sha256, float(lora.weight)) for lora in job.params.loras or ())

    def _apply_loras(self, job: Job, key: LoadKey, pipe: Any) -> None:
        """Activate exactly the job's LoRAs (at its weights) on the shared UNet / text encoders.

        Each LoRA file is loaded once per base model as a PEFT adapter named after its sha256; a job
        without LoRAs runs with adapters disabled, which computes exactly the base layers.
        """
        wanted = self.lora_set(job)
        state = self._loras.setdefault(key, {"loaded": {}, "active": ()})
        if wanted == state["active"]:
            return
        weights: dict[str, float] = {}
        for sha, weight in wanted:
            if sha not in state["loaded"]:
                ref = job.aux_models.get(f"lora:{sha}")
                if ref is None or not ref.path:
                    raise ModelUnavailable(f"LoRA {sha[:12]} has no file in the plan")
                name = f"lora_{sha[:16]}"
                state_dict = self._read_lora(Path(ref.path), sha, bool(job.options.allow_pickle))
                try:
                    pipe.load_lora_weights(state_dict, adapter_name=name)
                except Exception as exc:  # noqa: BLE001 - e.g. a LoRA made for another model family
                    state["active"] = None  # unknown now: set the adapters again for the next job
                    with contextlib.suppress(Exception):
                        pipe.delete_adapters(name)
                    reason = one_line(str(exc), 400) or type(exc).__name__
                    raise ModelUnavailable(f"LoRA {ref.id!r} could not be loaded into {job.model.id!r}: "
                                           f"{reason}") from None
                state["loaded"][sha] = name
            name = state["loaded"][sha]
            weights[name] = weights.get(name, 0.0) + weight  # the same file twice: weights add up
        if weights:
            pipe.enable_lora()
            pipe.set_adapters(list(weights), adapter_weights=list(weights.values()))
        elif state["loaded"]:
            pipe.disable_lora()
        state["active"] = wanted

    @staticmethod
    def _read_lora(path: Path, sha256: str, allow_pickle: bool) -> dict[str, Any]:
        """A LoRA file's state dict (safetensors; pickle formats only with ``allow_pickle``), checked against
        the sha256 the plan recorded."""
        data = load_weights(path, sha256, allow_pickle, "LoRA")
        return data.get("state_dict", data) if isinstance(data, dict) else data

    # -------------------------------------------------------------------------------- prompt encoding
    def cached_embedding(self, job: Job, kind: str, text: str, encode: Any) -> Any:
        """``encode()``'s result for ``text``, computed once per (model, LoRA set, embeddings, prompt syntax,
        clip skip, kind, text)."""
        reading = (getattr(job.params, "prompt_syntax", None), getattr(job.params, "clip_skip", None))
        cache_key = (self.key(job), self.lora_set(job), embedding_set(job), reading, kind, text)
        if cache_key in self._prompts:
            value = self._prompts.pop(cache_key)  # most recently used goes last
        else:
            value = encode()
            while len(self._prompts) >= PROMPT_CACHE_SIZE:
                self._prompts.pop(next(iter(self._prompts)))
        self._prompts[cache_key] = value
        return value

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
        from ..io.artifacts import SAMPLER_NAMES, default_sampler_name

        name = job.params.scheduler
        if name != "default" or self.key(job) not in self._bases:
            return SAMPLER_NAMES.get(name, name)
        scheduler = self.scheduler(job, "default")
        return default_sampler_name(type(scheduler).__name__, getattr(scheduler, "config", {}))

    def _load(self, job: Job, key: LoadKey) -> Any:
        import torch

        from .perf import GpuOptions, apply_gpu_options

        model = job.model
        dtype = resolve_dtype(key.dtype, key.device)
        allow_pickle = bool(job.options.allow_pickle)
        config = config_source(job.aux_models.get("pipeline_config"))
        try:
            source = model_folder(model)
            ensure_loadable(source, allow_pickle, f"model {model.id!r}")
            components: dict[str, Any] = {}
            if job.aux_models.get("vae") is not None:
                components["vae"] = self._load_vae(job.aux_models["vae"], dtype, config or source, allow_pickle)
            if source.is_file():
                pipe = self._load_single_file(source, dtype, config=config, allow_pickle=allow_pickle, **components)
            else:
                pipe = folder_pipeline_class(source).from_pretrained(
                    str(source), torch_dtype=dtype, use_safetensors=safetensors_only(allow_pickle), **components)
        except ModelUnavailable:
            raise
        except (OSError, ValueError) as exc:  # the whole reason on one line, never cut mid-word
            reason = one_line(str(exc), 400) or type(exc).__name__
            raise ModelUnavailable(f"model {model.id!r} could not be loaded: {reason}") from None
        if hasattr(pipe, "set_progress_bar_config"):
            pipe.set_progress_bar_config(disable=True)
        options = dict(key.options)
        gpu = GpuOptions(**{k: v for k, v in options.items() if k in GpuOptions.__dataclass_fields__})
        apply_gpu_options(pipe, gpu, key.device)
        del torch
        return pipe

    @staticmethod
    def _load_vae(ref: ModelRef, dtype: Any, configs: str | Path | None, allow_pickle: bool) -> Any:
        """An AutoencoderKL from a diffusers folder (or a pipeline folder's ``vae/``), hub id or weights file.

        A weights file has no config: it is taken from ``configs``' ``vae/`` (the pipeline_config, else the
        model's own folder), else diffusers infers one (which needs the hub or its cache).
        """
        from diffusers import AutoencoderKL

        path = model_folder(ref, pipeline=False)
        if path.is_dir() and not (path / "config.json").is_file() and (path / "vae" / "config.json").is_file():
            path = path / "vae"  # a pipeline folder: its VAE
        ensure_loadable(path, allow_pickle, f"VAE {ref.id!r}")
        if path.is_file():
            kwargs: dict[str, Any] = {}
            if isinstance(configs, str) or (isinstance(configs, Path) and (configs / "vae" / "config.json").is_file()):
                kwargs = {"config": str(configs), "subfolder": "vae"}
            return AutoencoderKL.from_single_file(str(path), torch_dtype=dtype, **kwargs)
        return AutoencoderKL.from_pretrained(str(path), torch_dtype=dtype,
                                             use_safetensors=safetensors_only(allow_pickle))

    @staticmethod
    def _load_single_file(path: Path, dtype: Any, config: str | None = None, allow_pickle: bool = False,
                          **components: Any) -> Any:
        """A pipeline from one checkpoint file in the original (LDM / SGM) layout.

        ``config`` (``pipeline_config:`` in the recipe) is diffusers' ``config=``: a folder with model_index.json
        and component configs (and tokenizers), or a hub id whose configs diffusers fetches (configs only).
        Without it, diffusers picks a default repo for the inferred model type, which needs the hub or its cache.
        The pipeline class comes from the config's model_index.json, else SDXL for SGM keys, else SD.
        """
        ensure_loadable(path, allow_pickle)
        cls = single_file_pipeline_class(path, config)
        kwargs: dict[str, Any] = {"torch_dtype": dtype, **components}
        if config:
            kwargs["config"] = config
        return cls.from_single_file(str(path), **kwargs)


def single_file_pipeline_class(path: Path, config: str | None) -> Any:
    """The diffusers pipeline class for a single-file checkpoint."""
    import json

    import diffusers

    if config:
        name = json.loads(pipeline_index(config).read_text()).get("_class_name", "")
        cls = getattr(diffusers, name, None)
        if cls is None or not hasattr(cls, "from_single_file"):
            raise ModelUnavailable(f"pipeline_config {config!r}: {name or 'its pipeline'} cannot load single files")
        return cls
    if path.suffix.lower() == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            keys = list(fh.keys())
    else:
        from diffusers.loaders.single_file_utils import load_single_file_checkpoint

        keys = list(load_single_file_checkpoint(str(path)).keys())
    if any(k.startswith("conditioner.embedders.") for k in keys):
        return diffusers.StableDiffusionXLPipeline
    if any(".double_blocks." in f".{k}" for k in keys):  # Flux.1 (BFL layout); SD3's MMDiT has joint_blocks
        return diffusers.FluxPipeline
    if any(".joint_blocks." in f".{k}" for k in keys):
        return diffusers.StableDiffusion3Pipeline
    return diffusers.StableDiffusionPipeline


#: text2img pipeline class -> its img2img and inpaint classes, for the families every stage supports. Importing
#: these names directly is about a second faster than diffusers' AutoPipeline (which imports every pipeline
#: family, ControlNet's included); other families fall back to AutoPipeline.
TASK_CLASSES = {
    "StableDiffusionPipeline": {"img2img": "StableDiffusionImg2ImgPipeline", "inpaint": "StableDiffusionInpaintPipeline"},
    "StableDiffusionXLPipeline": {"img2img": "StableDiffusionXLImg2ImgPipeline",
                                  "inpaint": "StableDiffusionXLInpaintPipeline"},
    "StableDiffusion3Pipeline": {"img2img": "StableDiffusion3Img2ImgPipeline",
                                 "inpaint": "StableDiffusion3InpaintPipeline"},
    "FluxPipeline": {"img2img": "FluxImg2ImgPipeline", "inpaint": "FluxInpaintPipeline"},
}


def folder_pipeline_class(folder: Path) -> Any:
    """The text2img pipeline class for a diffusers folder: its model_index.json's class when known, else AutoPipeline."""
    import json

    import diffusers

    try:
        name = json.loads((Path(folder) / "model_index.json").read_text()).get("_class_name")
    except (OSError, ValueError, AttributeError):
        name = None
    if name in TASK_CLASSES:
        return getattr(diffusers, name)
    return diffusers.AutoPipelineForText2Image


def task_pipeline_class(base: Any, task: str) -> Any:
    """The ``task`` (img2img | inpaint) pipeline class sharing ``base``'s components (``from_pipe``)."""
    import diffusers

    name = TASK_CLASSES.get(type(base).__name__, {}).get(task)
    if name:
        return getattr(diffusers, name)
    return diffusers.AutoPipelineForImage2Image if task == "img2img" else diffusers.AutoPipelineForInpainting
