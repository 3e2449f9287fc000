"""``generate``: txt2img, exactly as plain diffusers with a CPU generator.

The image of a job equals::

    pipe(prompt=job.prompt, negative_prompt=job.negative_prompt or None, num_inference_steps=steps,
         guidance_scale=guidance, width=width, height=height,
         generator=torch.Generator("cpu").manual_seed(job.seed)).images[0]

A batch shares stage, model, size, steps, scheduler, guidance (and LoRAs / VAE); each image has its own CPU
generator, so its pixels do not depend on what else is in the batch (on CPU they match the unbatched image
within one level, usually exactly). Each distinct prompt text is encoded once (:func:`prompt_kwargs`),
exactly as the pipeline would encode it, and passed as ``prompt_embeds``.
"""

from __future__ import annotations

from typing import Any, Iterator, Literal

from ..config.refiner import Refiner
from ..config.types import Prompt, Sweep
from ..core.job import Job
from .base import Rendered, StageContext
from .conditioning import ImageConditioning
from .control import driving_image
from .diffusion import previews_for, run_pipeline
from .hires import Hires, HiresConfig, render_hires
from .refiner import plan_refiner, render_refined


class GenerateStage(ImageConditioning, HiresConfig):
    """txt2img."""

    OMIT_IF_NONE = frozenset({"hires"})  # ids of stages without hires stay as they were
    PLANNED = HiresConfig.PLANNED | {"refiner"}  # job.params.refiner: a RefinerRef (sdbatch.stages.refiner)
    type: Literal["generate"]
    prompt: Sweep(Prompt)
    hires: Hires | None = None  # A1111's hires fix: upscale + img2img second pass (sdbatch.stages.hires)
    refiner: Refiner | None = None  # the SDXL refiner, diffusers' ensemble of experts (sdbatch.stages.refiner)

    @property
    def input_names(self) -> list[str]:
        """A ControlNet image naming a stage, folder or glob is the stage's input: one job per image."""
        image = driving_image(self)
        return [image] if image else []

    def plan_hook(self, planner: Any, fixed: dict[str, Any]) -> None:
        super().plan_hook(planner, fixed)  # hires, then image prompts and ControlNets (ImageConditioning)
        plan_refiner(self, planner, fixed)  # fixed["refiner"], aux model "refiner" (sdbatch.stages.refiner)


def render(jobs: list[Job], ctx: StageContext) -> Iterator[Rendered]:
    from ..runtime.controlnet import prepare_control

    p = jobs[0].params
    if getattr(p, "refiner", None):  # base to switch_at, then the refiner
        yield from render_refined(jobs, ctx)
        return
    control = prepare_control(jobs, ctx, (p.width, p.height))
    pipe = control.pipeline(ctx, "text2img") if control else ctx.models.pipeline(jobs[0], "text2img")
    previews = previews_for(jobs)
    images = render_hires(pipe, jobs, ctx) if getattr(p, "hires", None) else \
        run_pipeline(pipe, jobs, ctx, previews, width=p.width, height=p.height, **(control.kwargs(pipe) if control else {}))
    if previews is not None:
        yield from previews.rendered()
    for i, (job, image) in enumerate(zip(jobs, images)):
        hashes = [control.input_hash(i)] if control and job.inputs else []  # a ControlNet image as the input
        yield Rendered(job, job.output, image, extra=control.extra(i) if control else {}, input_hashes=hashes)


CONFIG = GenerateStage
