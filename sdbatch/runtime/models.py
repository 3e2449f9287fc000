"""Pipelines, loaded once per process and shared.

A :class:`ModelBank` loads each base model once (hub id, local diffusers folder, single ``.safetensors``
file, or a built-in tiny model), derives the img2img and inpaint pipelines from it with ``from_pipe``
(no second copy of the weights), and swaps schedulers with ``from_config``. SD and SDXL families work
for every still-image stage (AutoPipeline picks the class).

Model sources from the recipe:

* ``vae:`` replaces the model's VAE at load time (a diffusers AutoencoderKL folder, a pipeline folder with
  ``vae/``, a hub id, or a weights file whose config comes from the model's ``vae/``); the VAE is part of
  the load key, so a model with and without an override are two loaded pipelines.
* a single checkpoint file (original LDM/SGM layout) loads with ``<Pipeline>.from_single_file``; diffusers
  needs the pipeline's configs and tokenizers, taken from ``pipeline_config:`` (a folder with
  model_index.json, a hub id - configs only - or a built-in) when given, else from diffusers' default repo
  for the inferred model type (hub or its cache). Pickle files (.ckpt/.pt/.bin) need ``allow_pickle``.
* ``loras:`` are PEFT adapters loaded once per base model (``load_lora_weights``) and activated per job
  with ``set_adapters`` at the job's weights; jobs without LoRAs run with adapters disabled (exactly the
  base model), so LoRA sets never leak from one job into another.

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

from ..core.job import Job, ModelRef
from ..errors import ModelUnavailable

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
        self._prompts: dict[tuple, Any] = {}  # (key, lora set, kind, text) -> embeddings

    def get_or_load(self, key: Any, load: Any) -> Any:
        """Any other model (a depth estimator, ...) loaded once per process under ``key``."""
        if key not in self._others:
            self._others[key] = load()
        return self._others[key]

    def key(self, job: Job) -> LoadKey:
        device = resolve_device(job.device)
        options = tuple(sorted((k, v) for k, v in job.options.items() if k not in NOT_LOAD_OPTIONS))
        return LoadKey(job.model.identity(), device, job.dtype, options, job.params.get("vae"),
                       job.params.get("pipeline_config"))

    def base(self, job: Job) -> Any:
        key = self.key(job)
        if key not in self._bases:
            self._bases[key] = self._load(job, key)
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
        self._apply_loras(job, key, pipe)
        return pipe

    # ------------------------------------------------------------------------------------------ LoRAs
    def lora_set(self, job: Job) -> tuple:
        """The job's LoRAs as ((sha256, weight), ...): the adapters active while it renders."""
        return tuple((entry["sha256"], float(entry["weight"])) for entry in job.params.get("loras") or ())

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
                state_dict = self._read_lora(Path(ref.path), sha, bool(job.options.get("allow_pickle")))
                try:
                    pipe.load_lora_weights(state_dict, adapter_name=name)
                except Exception as exc:  # noqa: BLE001 - e.g. a LoRA made for another model family
                    state["active"] = None  # unknown now: set the adapters again for the next job
                    try:
                        pipe.delete_adapters(name)
                    except Exception:  # noqa: BLE001
                        pass
                    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                    raise ModelUnavailable(f"LoRA {ref.id!r} could not be loaded into {job.model.id!r}: "
                                           f"{first[:200]}") from None
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
        from ..io.hashing import sha256_file

        if sha256_file(path) != sha256:
            raise RuntimeError(f"LoRA {path} changed since the plan was made (sha256 differs); re-run")
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        if not allow_pickle:
            raise ModelUnavailable(f"{path.name}: pickle files are refused; set allow_pickle: true in the recipe "
                                   "if you trust it")
        import torch

        data = torch.load(str(path), map_location="cpu", weights_only=True)
        return data.get("state_dict", data) if isinstance(data, dict) else data

    # -------------------------------------------------------------------------------- prompt encoding
    def cached_embedding(self, job: Job, kind: str, text: str, encode: Any) -> Any:
        """``encode()``'s result for ``text``, computed once per (model, LoRA set, kind, text)."""
        cache_key = (self.key(job), self.lora_set(job), kind, text)
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
        from ..io.artifacts import SAMPLER_BY_CLASS, SAMPLER_NAMES

        name = job.params.get("scheduler", "default")
        if name != "default" or self.key(job) not in self._bases:
            return SAMPLER_NAMES.get(name, name)
        cls = type(self.scheduler(job, "default")).__name__
        return SAMPLER_BY_CLASS.get(cls, cls)

    def _load(self, job: Job, key: LoadKey) -> Any:
        import torch
        from diffusers import AutoPipelineForText2Image

        from .perf import GpuOptions, apply_gpu_options

        model = job.model
        dtype = resolve_dtype(key.dtype, key.device)
        source = self._local_source(model)
        allow_pickle = bool(job.options.get("allow_pickle"))
        config = self._config_source(job.aux_models.get("pipeline_config"))
        try:
            components: dict[str, Any] = {}
            if job.aux_models.get("vae") is not None:
                components["vae"] = self._load_vae(job.aux_models["vae"], dtype, config or source, allow_pickle)
            if source.is_file():
                pipe = self._load_single_file(source, dtype, config=config, allow_pickle=allow_pickle, **components)
            else:
                pipe = AutoPipelineForText2Image.from_pretrained(str(source), torch_dtype=dtype, **components)
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
            from ..sources.tiny import builtin_model_path

            return Path(builtin_model_path(model.id))
        if model.path:
            return Path(model.path)
        return Path(fetch_hub_model(model).path or "")

    @staticmethod
    def _config_source(ref: ModelRef | None) -> str | None:
        """diffusers' ``config=`` for a single-file model: a local folder, or a hub id (configs only)."""
        if ref is None:
            return None
        if ref.source == "builtin":
            from ..sources.tiny import builtin_model_path

            return str(builtin_model_path(ref.id))
        return ref.path or ref.id

    @classmethod
    def _load_vae(cls, ref: ModelRef, dtype: Any, configs: str | Path | None, allow_pickle: bool) -> Any:
        """An AutoencoderKL from a diffusers folder (or a pipeline folder's ``vae/``), hub id or weights file.

        A weights file has no config: it is taken from ``configs``' ``vae/`` (the pipeline_config, else the
        model's own folder), else diffusers infers one (which needs the hub or its cache).
        """
        from diffusers import AutoencoderKL

        path = cls._local_source(ref)
        if path.is_file():
            check_pickle(path, allow_pickle)
            kwargs: dict[str, Any] = {}
            if isinstance(configs, str) or (isinstance(configs, Path) and (configs / "vae" / "config.json").is_file()):
                kwargs = {"config": str(configs), "subfolder": "vae"}
            return AutoencoderKL.from_single_file(str(path), torch_dtype=dtype, **kwargs)
        if not (path / "config.json").is_file() and (path / "vae" / "config.json").is_file():
            return AutoencoderKL.from_pretrained(str(path), subfolder="vae", torch_dtype=dtype)
        return AutoencoderKL.from_pretrained(str(path), torch_dtype=dtype)

    @staticmethod
    def _load_single_file(path: Path, dtype: Any, config: str | None = None, allow_pickle: bool = False,
                          **components: Any) -> Any:
        """A pipeline from one checkpoint file in the original (LDM / SGM) layout.

        ``config`` (``pipeline_config:`` in the recipe) is diffusers' ``config=``: a folder with model_index.json
        and component configs (and tokenizers), or a hub id whose configs diffusers fetches (configs only).
        Without it, diffusers picks a default repo for the inferred model type, which needs the hub or its cache.
        The pipeline class comes from the config's model_index.json, else SDXL for SGM keys, else SD.
        """
        check_pickle(path, allow_pickle)
        cls = single_file_pipeline_class(path, config)
        kwargs: dict[str, Any] = {"torch_dtype": dtype, **components}
        if config:
            kwargs["config"] = config
        return cls.from_single_file(str(path), **kwargs)


def check_pickle(path: Path, allow_pickle: bool) -> None:
    """Refuse a pickle weights file (.ckpt, .pt, .bin: loading one can run code) unless allowed."""
    if path.suffix.lower() != ".safetensors" and not allow_pickle and os.environ.get("SDBATCH_ALLOW_PICKLE") != "1":
        raise ModelUnavailable(f"{path.name}: pickle checkpoints ({path.suffix}) are refused; convert it to "
                               ".safetensors, or set allow_pickle: true in the recipe if you trust the file")


def single_file_pipeline_class(path: Path, config: str | None) -> Any:
    """The diffusers pipeline class for a single-file checkpoint."""
    import json

    import diffusers

    if config:
        index = Path(config) / "model_index.json"
        if not index.is_file():
            try:
                from huggingface_hub import hf_hub_download

                index = Path(hf_hub_download(config, "model_index.json"))
            except Exception as exc:  # noqa: BLE001
                raise ModelUnavailable(f"pipeline_config {config!r}: no model_index.json ({exc})"[:300]) from None
        name = json.loads(index.read_text()).get("_class_name", "")
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
    return diffusers.StableDiffusionPipeline
