"""Upscaling pixels: Lanczos, spandrel super-resolution model files (tiled, blended) and diffusers' sd-x4.

:func:`upscale_images` is what the ``upscale`` stage and ``hires`` call, with the identity dict that
:func:`sdbatch.config.upscaler.plan_upscaler` put into the job's params::

    images = upscale_images(ctx, job, [image], (256, 256), upscaler=job.params.upscaler, tile=512)

* ``lanczos``: exactly ``image.resize(size, Image.LANCZOS)``.
* a model file (``{"name": "model", "sha256": ...}``): the spandrel model (``job.aux_models["upscaler"]``, loaded
  once per process through ``ctx.models.get_or_load``) runs on tiles of ``tile`` x ``tile`` input pixels that
  overlap by ``tile_overlap(tile)``; the tiles are blended with weights that are 0 within a quarter of the overlap
  of a tile's inner edges and ramp up to 1 over the next quarter, so there are no seams, and a model whose
  receptive field reaches at most ``overlap / 4`` pixels gives the untiled result (to float rounding). The
  result is resized to exactly ``size`` with Lanczos when the model's factor does not land on it.
* ``sd-x4``: diffusers' ``StableDiffusionUpscalePipeline`` (``job.aux_models["upscaler"]``) with the job's prompt,
  negative prompt, steps, guidance and a CPU generator seeded with ``job.seed`` (one per image, and per tile
  when tiled), so an untiled upscale equals ``pipe(prompt=..., image=..., generator=torch.Generator("cpu")
  .manual_seed(seed))``; then resized to ``size`` if needed.
* ``latent`` upscales latents, not pixels: hires does it itself (a ValueError here).

Model files load under the pickle policy (:mod:`sdbatch.sources.weights`): ``.safetensors`` with safetensors,
``.pth``/``.pt`` (only with ``allow_pickle``) with ``torch.load(weights_only=True)`` - never spandrel's own
pickle or TorchScript loader. ``python -m sdbatch.runtime.upscalers identify <path> [--allow-pickle]`` prints
what spandrel makes of a file as one JSON line (``{"architecture": "ESRGAN", "scale": 4, ...}`` or
``{"error": "..."}``): what ``validate`` runs in a child process (:func:`sdbatch.config.upscaler.identify_file`).
Torch, spandrel and diffusers are imported inside the functions only.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from ..core.job import Job
from ..errors import ModelUnavailable, one_line

if TYPE_CHECKING:
    from ..stages.base import StageContext

#: input pixels neighbouring tiles share (at most half a tile)
TILE_OVERLAP = 32
#: the sd-x4 pipeline's default noise_level (diffusers')
SD_X4_NOISE_LEVEL = 20


def tile_overlap(tile: int) -> int:
    return min(TILE_OVERLAP, tile // 2)


# ------------------------------------------------------------------------------------------- model files
def read_state_dict(path: Path, allow_pickle: bool) -> dict[str, Any]:
    """The state dict of an upscaler file under the pickle policy (safetensors, or weights-only torch.load)."""
    from ..sources.weights import ensure_loadable

    ensure_loadable(path, allow_pickle, "upscaler")
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    import torch

    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a whole pickled model, TorchScript, garbage
        if isinstance(exc, __import__("pickle").UnpicklingError):
            why = "it holds objects other than tensors (a whole pickled model?), which are never unpickled"
        else:
            why = f"{type(exc).__name__}: {one_line(str(exc), 200)}"
        raise ValueError(f"cannot be read as weights by torch.load(weights_only=True): {why}") from None
    if not isinstance(data, dict):
        raise ValueError(f"holds a {type(data).__name__}, not a state dict")
    return data


def load_descriptor(path: Path, allow_pickle: bool) -> Any:
    """spandrel's ImageModelDescriptor for the file (on the CPU, eval mode); ValueError when spandrel does not
    know it or it is not a 3-channel image-to-image model."""
    from spandrel import ImageModelDescriptor, ModelLoader, UnsupportedModelError, canonicalize_state_dict

    state = canonicalize_state_dict(read_state_dict(path, allow_pickle))
    try:
        descriptor = ModelLoader("cpu").load_from_state_dict(state)
    except UnsupportedModelError:
        raise ValueError("spandrel does not recognise the model's architecture (not a super-resolution model "
                         "file it knows)") from None
    except Exception as exc:  # noqa: BLE001 - a known architecture with a broken state dict
        raise ValueError(f"spandrel could not load it ({type(exc).__name__}: {str(exc)[:200]})") from None
    if not isinstance(descriptor, ImageModelDescriptor):
        raise ValueError(f"is a {descriptor.purpose} model ({descriptor.architecture.name}), not an upscaler")
    if descriptor.input_channels != 3 or descriptor.output_channels != 3:
        raise ValueError(f"takes {descriptor.input_channels} and gives {descriptor.output_channels} channels; an "
                         "upscaler here works on RGB (3 and 3)")
    return descriptor.eval()


def identify(path: Path, allow_pickle: bool) -> dict[str, Any]:
    """What spandrel makes of the file: architecture id and name, native scale, purpose, tiling, size needs."""
    descriptor = load_descriptor(path, allow_pickle)
    req = descriptor.size_requirements
    return {"architecture": descriptor.architecture.id, "name": descriptor.architecture.name,
            "scale": int(descriptor.scale), "purpose": descriptor.purpose, "tiling": descriptor.tiling.name.lower(),
            "size_requirements": {"minimum": req.minimum, "multiple_of": req.multiple_of, "square": req.square},
            "supports_half": bool(descriptor.supports_half), "tags": list(descriptor.tags)}


def _model_file(ctx: StageContext, job: Job, upscaler: dict[str, Any]) -> tuple[Any, Any, Any]:
    """(descriptor, device, dtype) of the job's upscaler file, loaded once per process."""
    import torch

    from ..io.hashing import sha256_file
    from .models import resolve_device, resolve_dtype

    ref = job.aux_models.get("upscaler")
    if ref is None or not ref.path:
        raise ModelUnavailable(f"upscaler {upscaler.get('file')!r} has no file in the plan")
    device = resolve_device(job.device)
    dtype = resolve_dtype(job.dtype, device)

    def load() -> tuple[Any, Any]:
        path = Path(ref.path)
        if sha256_file(path) != upscaler.get("sha256"):
            raise RuntimeError(f"upscaler {ref.id} changed since the plan was made (sha256 differs); re-run")
        try:
            descriptor = load_descriptor(path, bool(job.options.allow_pickle))
        except ValueError as exc:
            raise ModelUnavailable(f"upscaler {ref.id!r}: {exc}") from None
        use = dtype
        if (use == torch.float16 and not descriptor.supports_half) or \
                (use == torch.bfloat16 and not descriptor.supports_bfloat16):
            use = torch.float32
        return descriptor.to(device).to(use), use

    descriptor, use = ctx.models.get_or_load(("upscaler", upscaler.get("sha256"), device, str(dtype)), load)
    return descriptor, device, use


# ------------------------------------------------------------------------------------------------ tiling
def _starts(length: int, tile: int, overlap: int) -> list[int]:
    """Tile starts along one axis: tiles of ``tile`` (the last one shorter) covering ``length``, neighbours sharing
    ``overlap``."""
    if length <= tile:
        return [0]
    return list(range(0, length - overlap, tile - overlap))


def _axis_weights(length: int, starts: list[int], tile: int, scale: int, overlap: int) -> list[Any]:
    """Per tile (output pixels): 0 within ``overlap / 4`` input px of an inner edge, ramping to 1 over the next
    ``overlap / 4``; image borders are no edges."""
    import torch

    margin, feather = overlap * scale / 4, max(overlap * scale / 4, 1.0)
    out = []
    for start in starts:
        size = min(tile, length - start) * scale
        x = torch.arange(size, dtype=torch.float32) + 0.5
        distance = torch.full((size,), float("inf"), dtype=torch.float32)
        if start > 0:
            distance = torch.minimum(distance, x)
        if start + tile < length:
            distance = torch.minimum(distance, size - x)
        out.append(((distance - margin) / feather).clamp(0, 1))
    return out


def tiled(fn: Callable[[Any], Any], x: Any, scale: int, tile: int) -> Any:
    """``fn`` (a (1, C, h, w) tensor -> (1, C, h*scale, w*scale)) applied to ``x`` in blended tiles of ``tile``
    input pixels (the whole image at once when ``tile`` is 0 or the image fits)."""
    import torch

    _, channels, height, width = x.shape
    if tile <= 0 or (height <= tile and width <= tile):
        return fn(x)
    overlap = tile_overlap(tile)
    ys, xs = _starts(height, tile, overlap), _starts(width, tile, overlap)
    wy, wx = _axis_weights(height, ys, tile, scale, overlap), _axis_weights(width, xs, tile, scale, overlap)
    total = torch.zeros((1, channels, height * scale, width * scale), dtype=torch.float32)
    weight = torch.zeros((1, 1, height * scale, width * scale), dtype=torch.float32)
    for y, row in zip(ys, wy):
        for x0, col in zip(xs, wx):
            part = fn(x[:, :, y:y + tile, x0:x0 + tile]).to(device="cpu", dtype=torch.float32)
            w = (row[:, None] * col[None, :])[None, None]
            oy, ox = y * scale, x0 * scale
            total[:, :, oy:oy + part.shape[2], ox:ox + part.shape[3]] += part * w
            weight[:, :, oy:oy + part.shape[2], ox:ox + part.shape[3]] += w
    return total / weight


def to_tensor(image: Any) -> Any:
    """A PIL RGB image as a (1, 3, H, W) float32 tensor in [0, 1]."""
    import numpy as np
    import torch

    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1)[None].contiguous()


def to_image(tensor: Any) -> Any:
    """A (1, 3, H, W) tensor in [0, 1] as a PIL image, rounded as diffusers rounds (``(x * 255).round()``)."""
    from PIL import Image

    array = tensor[0].detach().to("cpu").float().clamp(0, 1).permute(1, 2, 0).numpy()
    return Image.fromarray((array * 255).round().astype("uint8"))


# ------------------------------------------------------------------------------------------------ sd-x4
def _sd_x4(ctx: StageContext, job: Job) -> Any:
    """The job's StableDiffusionUpscalePipeline, loaded once per process."""
    from ..sources.specs import model_folder
    from ..sources.weights import ensure_loadable, safetensors_only
    from .models import resolve_device, resolve_dtype

    ref = job.aux_models.get("upscaler")
    if ref is None:
        raise ModelUnavailable("the sd-x4 upscaler has no model in the plan")
    device = resolve_device(job.device)
    dtype = resolve_dtype(job.dtype, device)
    allow_pickle = bool(job.options.allow_pickle)

    def load() -> Any:
        from diffusers import StableDiffusionUpscalePipeline

        folder = model_folder(ref)
        ensure_loadable(folder, allow_pickle, f"upscaler {ref.id!r}")
        pipe = StableDiffusionUpscalePipeline.from_pretrained(str(folder), torch_dtype=dtype,
                                                              use_safetensors=safetensors_only(allow_pickle))
        pipe.set_progress_bar_config(disable=True)
        return pipe.to(device)

    return ctx.models.get_or_load(("sd-x4", ref.identity(), device, str(dtype)), load)


def _sd_x4_images(ctx: StageContext, job: Job, images: list[Any], prompts: list[str], tile: int) -> list[Any]:
    import torch

    pipe = _sd_x4(ctx, job)
    p = job.params
    noise_level = getattr(p, "noise_level", None)
    kwargs = {"num_inference_steps": p.steps, "guidance_scale": p.guidance,
              "noise_level": SD_X4_NOISE_LEVEL if noise_level is None else noise_level,
              "negative_prompt": job.negative_prompt or None}
    out = []
    for image, prompt in zip(images, prompts):
        if tile <= 0 or (image.width <= tile and image.height <= tile):
            with torch.inference_mode():
                out.append(pipe(prompt=prompt, image=image, generator=ctx.generator(job.seed), **kwargs).images[0])
            continue

        def run(part: Any, prompt: str = prompt) -> Any:
            with torch.inference_mode():
                return pipe(prompt=prompt, image=to_image(part), generator=ctx.generator(job.seed), output_type="pt",
                            **kwargs).images[:1]

        out.append(to_image(tiled(run, to_tensor(image), 4, tile)))
    return out


# ----------------------------------------------------------------------------------------------- the API
def upscale_images(ctx: StageContext, job: Job, images: list[Any], size: tuple[int, int], *,
                   upscaler: dict[str, Any], tile: int = 512, prompts: list[str] | None = None) -> list[Any]:
    """``images`` (PIL) upscaled to exactly ``size`` (width, height) with ``upscaler`` (the identity dict in the
    job's params); ``tile``: input pixels a side per tile, 0 = the whole image at once; ``prompts``: sd-x4's
    prompt per image (default: the job's prompt). See the module docstring."""
    from PIL import Image

    size = (int(size[0]), int(size[1]))
    name = upscaler.get("name")
    if name == "lanczos":
        return [image.resize(size, Image.LANCZOS) for image in images]
    if name == "model":
        import torch

        descriptor, device, dtype = _model_file(ctx, job, upscaler)

        def run(part: Any) -> Any:
            with torch.inference_mode():
                return descriptor(part.to(device=device, dtype=dtype))

        out = [to_image(tiled(run, to_tensor(image), int(descriptor.scale), tile)) for image in images]
    elif name == "sd-x4":
        texts = list(prompts) if prompts is not None else [job.prompt] * len(images)
        out = _sd_x4_images(ctx, job, [image.convert("RGB") for image in images], texts, tile)
    elif name == "latent":
        raise ValueError("the latent upscaler works on latents: hires upscales them itself")
    else:
        raise ValueError(f"unknown upscaler {upscaler!r}")
    return [image if image.size == size else image.resize(size, Image.LANCZOS) for image in out]


# ------------------------------------------------------------------------------------------ the child process
def main(argv: list[str]) -> int:
    """``identify <path> [--allow-pickle]``: one JSON line on stdout (the answer, or ``{"error": ...}``)."""
    if len(argv) < 2 or argv[0] != "identify":
        print("usage: python -m sdbatch.runtime.upscalers identify <path> [--allow-pickle]", file=sys.stderr)
        return 2
    path, allow_pickle = Path(argv[1]), "--allow-pickle" in argv[2:]
    try:
        answer = identify(path, allow_pickle)
    except ModelUnavailable as exc:
        answer = {"error": str(exc).removeprefix("upscaler: ")}
    except (OSError, ValueError) as exc:
        answer = {"error": str(exc)}
    except Exception as exc:  # noqa: BLE001 - whatever a broken file makes a reader raise: one line, no traceback
        answer = {"error": f"cannot be read ({type(exc).__name__}: {str(exc)[:200]})"}
    print(json.dumps(answer, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
