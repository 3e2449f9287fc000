"""``img2img``: diffusers' img2img with ``strength`` (0 keeps the input, 1 ignores it).

The input is resized to the job's width/height first; then the image equals plain diffusers'
``pipe(prompt, negative_prompt, image=init, strength=..., num_inference_steps, guidance_scale,
generator=torch.Generator("cpu").manual_seed(seed))``. At strength 0 no diffusion runs (and no previews).
``previews: N`` counts the denoising steps that run (``int(steps * strength)``).
"""

from __future__ import annotations

from typing import Iterator, Literal

from ..config.stage import ImageToImageConfig
from ..config.types import Strength, Sweep
from ..core.job import Job
from .base import Rendered, StageContext
from .conditioning import ImageConditioning
from .diffusion import previews_for, run_pipeline


class Img2ImgStage(ImageConditioning, ImageToImageConfig):
    """img2img: ``input`` is a stage name, or a file / folder / glob relative to the recipe file."""

    type: Literal["img2img"]
    strength: Sweep(Strength) = [0.8]


def render(jobs: list[Job], ctx: StageContext) -> Iterator[Rendered]:
    p = jobs[0].params
    size = (p.width, p.height)
    inits = [ctx.load_image(job.inputs[0], size) for job in jobs]
    if p.strength == 0:
        for job, init in zip(jobs, inits):
            yield Rendered(job, job.output, init.image, input_hashes=[init.sha256])
        return
    from ..runtime.controlnet import prepare_control

    control = prepare_control(jobs, ctx, size, inits)
    pipe = control.pipeline(ctx, "img2img") if control else ctx.models.pipeline(jobs[0], "img2img")
    previews = previews_for(jobs)
    images = run_pipeline(pipe, jobs, ctx, previews, image=[init.image for init in inits], strength=p.strength,
                          **(control.kwargs(pipe) if control else {}))
    if previews is not None:
        yield from previews.rendered()
    for i, (job, init, image) in enumerate(zip(jobs, inits, images)):
        yield Rendered(job, job.output, image, input_hashes=[init.sha256], extra=control.extra(i) if control else {})


CONFIG = Img2ImgStage
