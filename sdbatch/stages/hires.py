"""``hires:`` on ``generate``: AUTOMATIC1111's hires fix (a first pass, an upscale, an img2img second pass).

A job with ``hires`` renders exactly the chain written by hand, each pass with a CPU generator seeded with the
job's seed and the stage's prompt, negative prompt, guidance and scheduler::

    first = pipe(prompt, ..., width=width, height=height, generator=gen(seed))          # the first pass
    big = upscale(first, final size)     # lanczos: first.resize(size, Image.LANCZOS); sd-x4 / a model file:
                                         # sdbatch.runtime.upscalers.upscale_images (an ``upscale`` stage's pixels)
    image = StableDiffusion(XL)Img2ImgPipeline.from_pipe(pipe)(prompt, ..., image=big, strength=hires.strength,
                                         num_inference_steps=hires.steps or steps, generator=gen(seed))

``latent`` (A1111's "Latent") upscales the latents instead: the first pass runs with ``output_type="latent"``,
``torch.nn.functional.interpolate(latents, size=(H / f, W / f), mode="bilinear", antialias=False)`` (``f``: the
VAE's factor, 8) makes the final size's latents, and img2img takes them as its ``image`` (diffusers treats a
4-channel image as latents, already in the scaled space the first pass returned, SD and SDXL alike). At
``strength: 0`` no second pass runs: the upscaled image (the decoded latents) is the output.

The final size is ``int(width * scale) x int(height * scale)`` (``scale`` 2 unless given) or ``hires.width`` x
``hires.height`` (a missing side keeps the first pass's aspect, a multiple of 8); both must be multiples of 8.
Stages reading this one get the final size (:meth:`HiresConfig.output_size`); ``--rehearse`` caps the final size
at 64 px (the first pass smaller). Previews and ControlNet / IP-Adapter are refused with ``hires`` at validate.
The params keep ``hires`` with its upscaler resolved to :func:`sdbatch.config.upscaler.plan_upscaler`'s identity
dict (a model file by its sha256); a generate without ``hires`` has the ids it always had (OMIT_IF_NONE).
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Annotated, Any, Union

from pydantic import Field, TypeAdapter, WithJsonSchema, model_validator

from ..config.limits import MAX_SIDE
from ..config.stage import REHEARSE_MAX_STEPS, StageConfig
from ..config.types import Size, Steps, Strength, StrictModel
from ..config.upscaler import UpscalerName, plan_upscaler
from ..core.job import Job
from .base import StageContext

if TYPE_CHECKING:
    from ..core.plan import StagePlanner

DEFAULT_SCALE = 2.0  # A1111's "Upscale by"
DEFAULT_STRENGTH = 0.7  # A1111's hires "Denoising strength"

#: a recipe names the upscaler (UpscalerName); a job's params hold plan_upscaler's identity dict in its place
HiresUpscaler = Annotated[Union[UpscalerName, dict[str, Any]],
                          WithJsonSchema(TypeAdapter(UpscalerName).json_schema())]


class Hires(StrictModel):
    """``hires:`` of a generate stage."""

    scale: Annotated[float, Field(gt=0, le=16)] | None = None  # the final size = the first pass's x scale (2)
    width: Size | None = None  # or the final size (a missing side keeps the aspect)
    height: Size | None = None
    upscaler: HiresUpscaler = "latent"  # latent | lanczos | sd-x4 | a model file (spandrel)
    strength: Strength = DEFAULT_STRENGTH  # the second pass's denoising strength
    steps: Steps | None = None  # the second pass's steps (default: the stage's)

    @model_validator(mode="after")
    def _one_size(self) -> Hires:
        if self.scale is not None and (self.width is not None or self.height is not None):
            raise ValueError("give either 'scale' or 'width'/'height' (the final size), not both")
        return self


def final_size(hires: Any, width: int, height: int) -> tuple[int, int]:
    """The final image's size for a first pass of ``width`` x ``height`` (A1111: ``int(width * scale)``)."""
    if hires.width is None and hires.height is None:
        scale = hires.scale or DEFAULT_SCALE
        return int(width * scale), int(height * scale)
    final_w = hires.width or max(8, int(width * hires.height / height) // 8 * 8)
    final_h = hires.height or max(8, int(height * hires.width / width) // 8 * 8)
    return final_w, final_h


class HiresConfig(StageConfig):
    """The hooks of a stage with a ``hires`` field (generate): checks, rehearsal sizes, the size it outputs."""

    def plan_hook(self, planner: StagePlanner, fixed: dict[str, Any]) -> None:
        super().plan_hook(planner, fixed)
        hires = getattr(self, "hires", None)
        if hires is not None:
            fixed["hires"] = plan_hires(self, hires, planner)

    def rehearse_params(self, params: dict[str, Any], source_frames: int | None) -> None:
        super().rehearse_params(params, source_frames)
        if params.get("hires") is not None:
            rehearse_hires(self, params)

    @classmethod
    def output_size(cls, params: Any) -> tuple[int, int]:
        hires = getattr(params, "hires", None)
        if hires is None:
            return super().output_size(params)
        return final_size(hires, params.width, params.height)


def plan_hires(stage: StageConfig, hires: Hires, planner: StagePlanner) -> Hires | None:
    """Check ``hires`` at validate (each problem at its field) and return it as a job's params keep it."""
    from ..config.stage import job_size
    from ..core.jobcount import stage_sweeps

    where = ("hires",)
    if stage.previews:
        planner.problem(("previews",), "previews of a hires job are not supported (the second pass would overwrite "
                                       "the first pass's step files); drop previews or hires")
    for field in ("controlnet", "ip_adapter"):
        if getattr(stage, field, None):
            planner.problem((field,), f"{field} with hires is not supported: write the chain by hand (a generate "
                                      f"with {field}, then an upscale stage, then img2img)")
    upscaler = None
    if not isinstance(hires.upscaler, str):
        planner.problem(where + ("upscaler",), "must be an upscaler name (latent, lanczos, sd-x4) or a model file")
    else:
        upscaler = plan_upscaler(planner, hires.upscaler, where + ("upscaler",), allow_latent=True)
    steps = [hires.steps] if hires.steps is not None else stage_sweeps(stage)["steps"]
    for n in steps:
        if 0 < hires.strength and int(n * hires.strength) < 1:
            planner.problem(where + ("steps",) if hires.steps is not None else where + ("strength",),
                            f"strength {hires.strength:g} x steps {n} leaves no denoising step for the second pass "
                            "(diffusers runs int(steps x strength)); raise hires.steps or hires.strength")
            break
    width, height = job_size(stage, None)
    final = final_size(hires, width, height)
    if hires.width is None and hires.height is None and any(side % 8 for side in final):
        planner.problem(where + ("scale",), f"scale {hires.scale or DEFAULT_SCALE:g} of {width}x{height} gives "
                                            f"{final[0]}x{final[1]}: both sides must be multiples of 8")
    elif any(not 8 <= side <= MAX_SIDE for side in final):
        planner.problem(where, f"the final size {final[0]}x{final[1]} is outside 8..{MAX_SIDE} px a side")
    if upscaler is None:
        return None
    update: dict[str, Any] = {"upscaler": upscaler}
    if hires.scale is None and hires.width is None and hires.height is None:
        update["scale"] = DEFAULT_SCALE  # the params say what was rendered
    return hires.model_copy(update=update)


def rehearse_hires(stage: StageConfig, params: dict[str, Any]) -> None:
    """``--rehearse``: the FINAL size at most 64 px a side, the first pass shrunk by the same ratio; the second
    pass's steps capped as the planner caps steps (enough for one denoising step)."""
    from ..config.stage import job_size
    from ..core.plan import rehearse_size

    hires = params["hires"]
    width, height = job_size(stage, None)  # the first pass as planned without --rehearse
    final = final_size(hires, width, height)
    small = rehearse_size(*final)
    first = tuple(max(8, int(round(s * side / f / 8)) * 8) for s, side, f in zip(small, (width, height), final))
    floor = math.ceil(1 / hires.strength) if hires.strength else 1
    if hires.steps is not None:
        steps = min(hires.steps, max(REHEARSE_MAX_STEPS, floor))
    else:  # the stage's steps, already capped: raised only where they would leave no second-pass step
        steps = max(params["steps"], floor) if int(params["steps"] * hires.strength) < 1 < floor else None
    update: dict[str, Any] = {"steps": steps}
    if small != final:
        params.update(width=first[0], height=first[1])
        update.update(scale=None, width=small[0], height=small[1])
    params["hires"] = hires.model_copy(update=update)


# ------------------------------------------------------------------------------------------- rendering
def render_hires(pipe: Any, jobs: list[Job], ctx: StageContext) -> list[Any]:
    """The final images of a batch of hires jobs (``pipe``: their text2img pipeline), as the module says."""
    import torch

    from .diffusion import decode_latents, run_pipeline

    p = jobs[0].params
    hires = p.hires
    size = final_size(hires, p.width, p.height)
    latent = hires.upscaler.get("name") == "latent"
    first = run_pipeline(pipe, jobs, ctx, width=p.width, height=p.height,
                         **({"output_type": "latent"} if latent else {}))
    if latent:
        factor = pipe.vae_scale_factor
        big: Any = torch.nn.functional.interpolate(first, size=(size[1] // factor, size[0] // factor),
                                                   mode="bilinear", antialias=False)
    else:
        from ..runtime.upscalers import upscale_images

        big = [upscale_images(ctx, job, [image], size, upscaler=hires.upscaler, prompts=[job.prompt])[0]
               for job, image in zip(jobs, first)]
    if hires.strength == 0:  # diffusers would run no step: the upscale is the image
        return decode_latents(pipe, big) if latent else big
    steps = hires.steps or p.steps
    second = [dataclasses.replace(job, params=job.params.model_copy(update={"steps": steps})) for job in jobs]
    img2img = ctx.models.pipeline(jobs[0], "img2img")
    return run_pipeline(img2img, second, ctx, image=big, strength=hires.strength)
