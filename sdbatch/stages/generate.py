"""``generate``: txt2img, exactly as plain diffusers with a CPU generator.

The image of a job equals::

    pipe(prompt=job.prompt, negative_prompt=job.negative_prompt or None, num_inference_steps=steps,
         guidance_scale=guidance, width=width, height=height,
         generator=torch.Generator("cpu").manual_seed(job.seed)).images[0]
"""

from __future__ import annotations

from typing import Iterator

from ..plan import Job
from .base import Rendered, StageContext


def negative_prompts(jobs: list[Job]) -> list[str] | None:
    """None when no job has one (diffusers' own default, e.g. SDXL's zeroed negative embedding)."""
    if not any(job.negative_prompt for job in jobs):
        return None
    return [job.negative_prompt for job in jobs]


def render(jobs: list[Job], ctx: StageContext) -> Iterator[Rendered]:
    p = jobs[0].params
    pipe = ctx.models.pipeline(jobs[0], "text2img")
    images = pipe(
        prompt=[job.prompt for job in jobs],
        negative_prompt=negative_prompts(jobs),
        num_inference_steps=p["steps"],
        guidance_scale=p["guidance"],
        width=p["width"],
        height=p["height"],
        generator=[ctx.generator(job.seed) for job in jobs],
    ).images
    for job, image in zip(jobs, images):
        yield Rendered(job, job.output, image)
