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

from typing import Iterator, Literal

from ..config.stage import StageConfig
from ..config.types import Prompt, Sweep
from ..core.job import Job
from .base import Rendered, StageContext
from .diffusion import previews_for, run_pipeline


class GenerateStage(StageConfig):
    """txt2img."""

    type: Literal["generate"]
    prompt: Sweep(Prompt)


def render(jobs: list[Job], ctx: StageContext) -> Iterator[Rendered]:
    p = jobs[0].params
    pipe = ctx.models.pipeline(jobs[0], "text2img")
    previews = previews_for(jobs)
    images = run_pipeline(pipe, jobs, ctx, previews, width=p.width, height=p.height)
    if previews is not None:
        yield from previews.rendered()
    for job, image in zip(jobs, images):
        yield Rendered(job, job.output, image)


CONFIG = GenerateStage
