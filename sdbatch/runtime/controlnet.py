"""ControlNet at render time: loading, control images (resize + preprocess), the pipeline and its arguments.

The planning side (units, identity, checks) is :mod:`sdbatch.stages.control`. A stage renders a batch with::

    control = prepare_control(jobs, ctx, (width, height), inits)   # None when the jobs list no ControlNet
    pipe = control.pipeline(ctx, "img2img") if control else ctx.models.pipeline(jobs[0], "img2img")
    images = run_pipeline(pipe, jobs, ctx, previews, image=..., **(control.kwargs() if control else {}))
    Rendered(job, job.output, image, extra=control.extra(i) if control else {})

* **Models** load once per process (the model bank's ``get_or_load``): a diffusers ControlNetModel folder or hub
  snapshot (``use_safetensors`` under the pickle policy of :mod:`sdbatch.sources.weights`), a single weights file
  (diffusers' own layout: its config is the base UNet's, ``ControlNetModel.from_unet``; the original layout:
  ``from_single_file``), or a built-in. Several units are a ``MultiControlNetModel``.
* **Pipeline**: diffusers' ControlNet pipeline of the base's family and the task (SD: StableDiffusionControlNet-,
  ...Img2Img-, ...InpaintPipeline; SDXL: the StableDiffusionXL ones), made with ``from_pipe(base,
  controlnet=...)`` from the task pipeline the bank hands out, so the UNet, text encoders, LoRAs and
  embeddings are the shared ones and the scheduler is the job's.
* **Control images**: a unit's image (the job's input, the file matched by stem, ...) is resized (Lanczos) to the
  job's size, then preprocessed: ``none`` as is, ``canny`` OpenCV's Canny(low, high) as 3 channels, ``depth`` the
  depth model of :mod:`sdbatch.runtime.depth` as grey (near = white), others with ``controlnet_aux``. What the
  pipeline gets is exactly the image saved as ``<stage>/control/<output stem>-<unit>.png`` (atomically); its
  path and sha256 go to the output's manifest record (``controlnet: [{unit, path, sha256, source}]``).
* **Arguments**: ``image`` (text2img) or ``control_image``, ``controlnet_conditioning_scale``,
  ``control_guidance_start`` / ``_end`` (one value for one unit, a list for several), as a plain diffusers call.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any

import numpy as np

from ..core.job import InputRef, Job, ModelRef
from ..errors import ModelUnavailable, one_line

#: (family, task) -> diffusers pipeline class
CONTROL_PIPELINES = {
    ("sd", "text2img"): "StableDiffusionControlNetPipeline",
    ("sd", "img2img"): "StableDiffusionControlNetImg2ImgPipeline",
    ("sd", "inpaint"): "StableDiffusionControlNetInpaintPipeline",
    ("xl", "text2img"): "StableDiffusionXLControlNetPipeline",
    ("xl", "img2img"): "StableDiffusionXLControlNetImg2ImgPipeline",
    ("xl", "inpaint"): "StableDiffusionXLControlNetInpaintPipeline",
}
#: diffusers' text2img SD pipeline reads nested control images as [job][unit]; the others as [unit][job]
PER_JOB_LAYOUT = {"StableDiffusionControlNetPipeline"}


def control_path(job: Job, unit: int) -> str:
    """``<stage>/control/<output stem>-<unit>.png`` (relative to the output folder)."""
    out = PurePath(job.output)
    return (out.parent / "control" / f"{out.stem}-{unit}.png").as_posix()


# ------------------------------------------------------------------------------------------ models
def load_controlnet(ref: ModelRef, base: Any, dtype: Any, device: str, allow_pickle: bool) -> Any:
    """A ControlNetModel from a folder / hub snapshot / built-in / weights file (see the module's docstring)."""
    from diffusers import ControlNetModel

    from ..sources.specs import model_folder
    from ..sources.weights import ensure_loadable, safetensors_only

    try:
        path = model_folder(ref, pipeline=False)
        ensure_loadable(path, allow_pickle, f"ControlNet {ref.id!r}")
        if path.is_file():
            model = _from_file(ControlNetModel, path, base, dtype)
        else:
            model = ControlNetModel.from_pretrained(str(path), torch_dtype=dtype,
                                                    use_safetensors=safetensors_only(allow_pickle))
    except ModelUnavailable:
        raise
    except (OSError, ValueError, RuntimeError) as exc:
        raise ModelUnavailable(f"ControlNet {ref.id!r} could not be loaded: "
                               f"{one_line(str(exc), 400) or type(exc).__name__}") from None
    return model.to(device)


def _from_file(cls: Any, path: Path, base: Any, dtype: Any) -> Any:
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
        if "controlnet_cond_embedding.conv_in.weight" in state:  # diffusers' layout: the base UNet's config
            model = cls.from_unet(base.unet, load_weights_from_unet=False)
            model.load_state_dict(state, strict=True)
            return model.to(dtype=dtype)
    return cls.from_single_file(str(path), torch_dtype=dtype)


def controlnets(ctx: Any, job: Job) -> list[Any]:
    """The job's ControlNetModels, each loaded once per process."""
    from .models import resolve_device, resolve_dtype

    bank = ctx.models
    device = resolve_device(job.device)
    dtype = resolve_dtype(job.dtype, device)
    allow_pickle = bool(job.options.allow_pickle)
    out = []
    for i, _ in enumerate(job.params.controlnet):
        ref = job.aux_models.get(f"controlnet:{i}")
        if ref is None:
            raise ModelUnavailable(f"ControlNet {i} of job {job.job_id[:8]} has no model in the plan")
        out.append(bank.get_or_load(("controlnet", ref.identity(), device, str(dtype)),
                                    lambda ref=ref: load_controlnet(ref, bank.base(job), dtype, device, allow_pickle)))
    return out


def family(pipe: Any) -> str:
    return "xl" if "XL" in type(pipe).__name__ else "sd"


def control_pipeline(ctx: Any, job: Job, task: str) -> Any:
    """The ControlNet pipeline for ``task`` sharing the bank's components (``from_pipe``), scheduler set."""
    import diffusers

    bank = ctx.models
    task_pipe = bank.pipeline(job, task)  # scheduler, LoRAs and embeddings applied to the shared components
    models = controlnets(ctx, job)
    identities = tuple(ref.identity for ref in job.params.controlnet)

    def build() -> Any:
        cls = getattr(diffusers, CONTROL_PIPELINES[(family(task_pipe), task)])
        net = models[0] if len(models) == 1 else diffusers.MultiControlNetModel(models)
        pipe = cls.from_pipe(bank.base(job), controlnet=net)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    pipe = bank.get_or_load(("controlnet-pipeline", bank.key(job), task, identities), build)
    pipe.scheduler = task_pipe.scheduler
    return pipe


# ---------------------------------------------------------------------------------- control images
def canny(image: Any, low: int, high: int) -> Any:
    """OpenCV's Canny edges of an RGB image, as a 3-channel image (diffusers' own example)."""
    import cv2
    from PIL import Image

    edges = cv2.Canny(np.asarray(image.convert("RGB")), low, high)
    return Image.fromarray(np.repeat(edges[:, :, None], 3, axis=2))


def depth_image(ctx: Any, job: Job, unit: int, image: Any) -> Any:
    """The depth model's map of ``image`` as grey, near = white (what depth ControlNets take)."""
    from PIL import Image

    from .depth import estimate_depth, load_depth_model
    from .models import resolve_device

    ref = job.aux_models.get(f"controlnet-depth:{unit}")
    if ref is None:
        raise ModelUnavailable(f"ControlNet {unit} of job {job.job_id[:8]} has no depth model in the plan")
    device = resolve_device(job.device)
    model, processor = ctx.models.get_or_load(("depth", ref.identity(), device), lambda: load_depth_model(
        ref, device, allow_pickle=bool(job.options.allow_pickle)))
    depth = estimate_depth(model, processor, image)  # Deforum units: larger = farther
    low, high = float(depth.min()), float(depth.max())
    near = (high - depth) / (high - low) if high > low else np.zeros_like(depth)
    grey = np.clip(np.rint(near * 255), 0, 255).astype(np.uint8)
    return Image.fromarray(np.repeat(grey[:, :, None], 3, axis=2))


def aux_image(ctx: Any, job: Job, unit: int, ref: Any, image: Any) -> Any:
    """A controlnet_aux preprocessor's image (the optional extra; validate refuses it when not installed), made at
    :func:`~sdbatch.config.control.aux_resolution` of the image's shorter side and resized to the image's size."""
    from ..config.control import aux_resolution

    detector = aux_detector(ctx, job, unit, ref)
    kwargs = {"scribble": True} if ref.preprocess == "scribble" else {}
    res = aux_resolution(min(image.size))
    out = detector(image, detect_resolution=res, image_resolution=res, **kwargs)
    return out.convert("RGB").resize(image.size)


def aux_detector(ctx: Any, job: Job, unit: int, ref: Any) -> Any:
    """The unit's controlnet_aux detector, loaded once per process with its own ``from_pretrained`` from a folder:
    the ``annotators`` folder (aux model ``controlnet-aux:<unit>``), or the hub commit's snapshot folder (only the
    files it loads are fetched); random weights of the same architecture for ``--rehearse``'s stand-in."""
    from ..config.control import AUX_PREPROCESSORS, AUX_WEIGHTS
    from ..stages.control import REHEARSAL_ANNOTATORS

    name, identity = ref.preprocess, ref.annotators or ""

    def load() -> Any:
        import controlnet_aux

        cls = getattr(controlnet_aux, AUX_PREPROCESSORS[name])
        if not AUX_WEIGHTS[name]:
            return cls()
        if identity == REHEARSAL_ANNOTATORS:
            return random_detector(name)
        folder = annotators_folder(job, unit, identity, AUX_WEIGHTS[name])
        try:
            return cls.from_pretrained(str(folder))
        except (OSError, ValueError, RuntimeError, KeyError) as exc:
            raise ModelUnavailable(f"controlnet_aux's {name} weights in {folder} could not be loaded: "
                                   f"{one_line(str(exc), 400) or type(exc).__name__}") from None

    return ctx.models.get_or_load(("annotator", name, identity, str(job.aux_models.get(f"controlnet-aux:{unit}"))),
                                  load)


def annotators_folder(job: Job, unit: int, identity: str, names: tuple[str, ...]) -> Path:
    """The folder holding ``names`` (checked under the pickle policy): local, or a hub snapshot fetched file by
    file (``hf_hub_download`` at the recorded commit, into sdbatch's hub cache)."""
    from ..sources.specs import parse_identity
    from ..sources.weights import ensure_loadable

    local = job.aux_models.get(f"controlnet-aux:{unit}")
    allow_pickle = bool(job.options.allow_pickle)
    if local is not None and local.path:
        folder = Path(local.path)
    else:
        repo, revision, source = parse_identity(identity)
        if source != "hub":
            raise ModelUnavailable(f"ControlNet {unit} of job {job.job_id[:8]} has no annotators folder in the plan")
        for name in names:  # before any download
            ensure_loadable(Path(name), allow_pickle, f"{repo}'s {name}")
        folder = _hub_files(repo, revision.removeprefix("unresolved:"), names)
    for name in names:
        ensure_loadable(folder / name, allow_pickle, f"annotators {folder}")
    return folder


def _hub_files(repo: str, revision: str, names: tuple[str, ...]) -> Path:
    import huggingface_hub

    from ..sources.hub import hub_cache_dir
    from ..sources.hub_errors import classify

    why = {"offline": "offline and not in the hub cache", "network": "no network", "gated": "a gated repository",
           "not_found": "no such repository", "revision": "no such revision", "not_pipeline": "no such file"}
    paths = []
    for name in names:
        try:
            paths.append(Path(huggingface_hub.hf_hub_download(repo, name, revision=revision,
                                                              cache_dir=hub_cache_dir())))
        except Exception as exc:  # noqa: BLE001 - offline, no such file, gated: one line naming the file
            case, shown = classify(exc)
            raise ModelUnavailable(f"controlnet_aux weights {repo}/{name} (revision {revision[:12]}): "
                                   f"{why.get(case) or one_line(str(shown), 200) or type(shown).__name__}; give "
                                   "'annotators:' a local folder holding them") from None
    return paths[0].parent


def random_detector(name: str) -> Any:
    """--rehearse's stand-in: the detector with random weights of its real architecture (seeded: the same every
    time), so a recipe naming controlnet_aux's weights rehearses offline."""
    import torch
    from controlnet_aux import HEDdetector, LineartDetector, PidiNetDetector
    from controlnet_aux.hed import ControlNetHED_Apache2
    from controlnet_aux.lineart import Generator
    from controlnet_aux.pidi.model import pidinet

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        if name == "lineart":
            return LineartDetector(Generator(3, 1, 3).eval(), Generator(3, 1, 3).eval())
        if name == "pidi":
            net = pidinet().eval()
            with torch.no_grad():  # its default init maps every image to flat grey: twice the weights show edges
                for weight in (p for p in net.parameters() if p.dim() > 1):
                    weight.mul_(2.0)
            return PidiNetDetector(net)
        return HEDdetector(ControlNetHED_Apache2().float().eval())


def preprocess(ctx: Any, job: Job, unit: int, ref: Any, image: Any) -> Any:
    if ref.preprocess == "canny":
        return canny(image, ref.low, ref.high)
    if ref.preprocess == "depth":
        return depth_image(ctx, job, unit, image)
    if ref.preprocess != "none":
        return aux_image(ctx, job, unit, ref, image)
    return image.convert("RGB")


def source_ref(job: Job, ref: Any) -> InputRef:
    """What a unit reads for ``job``: its input, or the pattern's file matched by stem (see stages.control)."""
    from ..stages.control import control_file

    if ref.source == "input":
        return job.inputs[0]
    if ref.source != "files":
        raise RuntimeError(f"a {ref.source} control is for video stages, not {job.type}")
    path = control_file(ref, job.inputs[0].path if job.inputs else None)
    return InputRef(path, ref.files[path])


@dataclass
class Control:
    """The control images of a batch (``images[unit][job]``) and where they were saved."""

    jobs: list[Job]
    images: list[list[Any]]
    saved: list[list[dict[str, Any]]] = field(default_factory=list)  # per job: one entry per unit
    inputs: list[str | None] = field(default_factory=list)  # per job: its input's sha256 as read, if a unit read it

    def input_hash(self, index: int) -> str | None:
        return self.inputs[index]

    def pipeline(self, ctx: Any, task: str) -> Any:
        return control_pipeline(ctx, self.jobs[0], task)

    def kwargs(self, pipe: Any) -> dict[str, Any]:
        """The ControlNet arguments of ``pipe(...)`` for the batch, as a plain diffusers call takes them."""
        units = self.jobs[0].params.controlnet
        name = type(pipe).__name__
        if len(units) == 1:
            images: Any = self.images[0]
            scale, start, end = units[0].scale, units[0].start, units[0].end
        else:
            if name in PER_JOB_LAYOUT:
                images = [list(t) for t in zip(*self.images)]
            elif len(self.jobs) == 1:
                images = [unit[0] for unit in self.images]
            else:  # these pipelines take no nested lists: each unit's batch as one tensor, the values PIL gives
                images = [_batch_tensor(unit) for unit in self.images]
            scale, start, end = ([getattr(u, k) for u in units] for k in ("scale", "start", "end"))
        key = "image" if name in ("StableDiffusionControlNetPipeline", "StableDiffusionXLControlNetPipeline") \
            else "control_image"
        return {key: images, "controlnet_conditioning_scale": scale, "control_guidance_start": start,
                "control_guidance_end": end}

    def extra(self, index: int) -> dict[str, Any]:
        """The manifest's ``controlnet`` entries of the batch's ``index``-th job."""
        return {"controlnet": self.saved[index]}


def _batch_tensor(images: list[Any]) -> Any:
    """``(N, 3, H, W)`` float32 in [0, 1]: exactly what diffusers' control image processor makes of PIL images."""
    import torch

    return torch.from_numpy(np.stack([np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0 for im in images])
                            ).permute(0, 3, 1, 2).contiguous()


def prepare_control(jobs: list[Job], ctx: Any, size: tuple[int, int], inits: list[Any] | None = None) -> Control | None:
    """Each unit's control image for each job (resized, preprocessed, saved); None without ControlNet.

    ``inits``: the jobs' input images as the stage loaded them (at ``size``), reused for ``source: input``."""
    from ..io.artifacts import atomic_write_bytes
    from ..io.hashing import sha256_bytes

    units = getattr(jobs[0].params, "controlnet", None)
    if not units:
        return None
    images: list[list[Any]] = [[] for _ in units]
    saved: list[list[dict[str, Any]]] = []
    read: list[str | None] = []
    for j, job in enumerate(jobs):
        entries = []
        read.append(None)
        for u, ref in enumerate(units):
            source = source_ref(job, ref)
            loaded = inits[j] if inits is not None and ref.source == "input" else ctx.load_image(source, size)
            image = preprocess(ctx, job, u, ref, loaded.image)
            data = io.BytesIO()
            image.save(data, format="PNG")
            path = control_path(job, u)
            atomic_write_bytes(ctx.out_dir / path, data.getvalue())
            images[u].append(image)
            if ref.source == "input":
                read[j] = loaded.sha256
            entries.append({"unit": u, "path": path, "sha256": sha256_bytes(data.getvalue()),
                            "source": source.path, "source_sha256": loaded.sha256})
        saved.append(entries)
    return Control(jobs, images, saved, read)
