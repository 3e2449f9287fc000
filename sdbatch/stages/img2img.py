"""``img2img``: diffusers' img2img with ``strength`` (0 keeps the input, 1 ignores it).

The input is resized to the job's width/height first; then the image equals plain diffusers'
``pipe(prompt, negative_prompt, image=init, strength=..., num_inference_steps, guidance_scale,
generator=torch.Generator("cpu").manual_seed(seed))``. At strength 0 no diffusion runs.
"""

from __future__ import annotations

from typing import Iterator

from ..plan import Job
from .base import Rendered, StageContext
from .generate import negative_prompts


def render(jobs: list[Job], ctx: StageContext) -> Iterator[Rendered]:
    p = jobs[0].params
    size = (p["width"], p["height"])
    inits = [ctx.load_image(job.inputs[0], size) for job in jobs]
    if p["strength"] == 0:
        for job, init in zip(jobs, inits):
            yield Rendered(job, job.output, init.image, input_hashes=[init.sha256])
        return
    pipe = ctx.models.pipeline(jobs[0], "img2img")
    images = pipe(
        prompt=[job.prompt for job in jobs],
        negative_prompt=negative_prompts(jobs),
        image=[init.image for init in inits],
        strength=p["strength"],
        num_inference_steps=p["steps"],
        guidance_scale=p["guidance"],
        generator=[ctx.generator(job.seed) for job in jobs],
    ).images
    for job, init, image in zip(jobs, inits, images):
        yield Rendered(job, job.output, image, input_hashes=[init.sha256])
