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

from ..config.control import ControlUnit
from ..config.ipadapter import IpAdapter
from ..config.stage import StageConfig
from ..config.types import Prompt, Sweep
from ..core.job import Job
from .base import Rendered, StageContext
from .control import driving_image, plan_control
from .diffusion import previews_for, run_pipeline
from .ipadapter_config import plan_ip_adapter


class GenerateStage(StageConfig):
    """txt2img."""

    type: Literal["generate"]
    prompt: Sweep(Prompt)
    ip_adapter: list[IpAdapter] | None = None  # image prompts (sdbatch.stages.ipadapter_config)
    controlnet: list[ControlUnit] | None = None  # ControlNets (sdbatch.stages.control)

    @property
    def input_names(self) -> list[str]:
        """A ControlNet image naming a stage, folder or glob is the stage's input: one job per image."""
        image = driving_image(self)
        return [image] if image else []

    def plan_hook(self, planner: Any, fixed: dict[str, Any]) -> None:
        super().plan_hook(planner, fixed)
        plan_ip_adapter(planner, self, fixed)  # fixed["ip_adapter"]: the adapters' and images' sha256
        plan_control(self, planner, fixed, reads_input=False)  # fixed["controlnet"] (sdbatch.stages.control)


def render(jobs: list[Job], ctx: StageContext) -> Iterator[Rendered]:
    from ..runtime.controlnet import prepare_control

    p = jobs[0].params
    control = prepare_control(jobs, ctx, (p.width, p.height))
    pipe = control.pipeline(ctx, "text2img") if control else ctx.models.pipeline(jobs[0], "text2img")
    previews = previews_for(jobs)
    images = run_pipeline(pipe, jobs, ctx, previews, width=p.width, height=p.height,
                          **(control.kwargs(pipe) if control else {}))
    if previews is not None:
        yield from previews.rendered()
    for i, (job, image) in enumerate(zip(jobs, images)):
        hashes = [control.input_hash(i)] if control and job.inputs else []  # a ControlNet image as the input
        yield Rendered(job, job.output, image, extra=control.extra(i) if control else {}, input_hashes=hashes)


CONFIG = GenerateStage
