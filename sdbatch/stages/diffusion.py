"""The one diffusers call every stage makes (:func:`run_pipeline`), prompt encoding and ``previews``.

Prompt encoding follows the pipeline's own rules exactly (:func:`uses_cfg` is its
``do_classifier_free_guidance``), so a batch of one equals a plain ``pipe(prompt=...)`` call with a CPU
generator; each distinct prompt text is encoded once per model and reused across jobs and batches.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator

from ..core.job import Job
from .base import Rendered, StageContext

SD_PIPELINES = {"StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline", "StableDiffusionInpaintPipeline"}
SDXL_PIPELINES = {"StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline", "StableDiffusionXLInpaintPipeline"}
# ControlNet's pipelines (sdbatch.runtime.controlnet) encode prompts as their base pipelines do
SD_PIPELINES |= {"StableDiffusionControlNetPipeline", "StableDiffusionControlNetImg2ImgPipeline",
                 "StableDiffusionControlNetInpaintPipeline"}
SDXL_PIPELINES |= {"StableDiffusionXLControlNetPipeline", "StableDiffusionXLControlNetImg2ImgPipeline",
                   "StableDiffusionXLControlNetInpaintPipeline"}


def negative_prompts(negatives: list[str]) -> list[str] | None:
    """None when no job has one (diffusers' own default, e.g. SDXL's zeroed negative embedding)."""
    return list(negatives) if any(negatives) else None


def family_kwargs(params: Any) -> dict[str, Any]:
    """SD3 / Flux.1 arguments a job sets: ``max_sequence_length`` (T5 tokens), Flux.1's ``true_cfg_scale``."""
    found = {"max_sequence_length": getattr(params, "max_sequence_length", None),
             "true_cfg_scale": getattr(params, "true_cfg", None)}
    return {k: v for k, v in found.items() if v is not None}


# ------------------------------------------------------------------------------------ prompt encoding
def uses_cfg(pipe: Any, guidance: float) -> bool:
    """Whether the pipeline will run classifier-free guidance (its own ``do_classifier_free_guidance`` rule)."""
    unet = getattr(pipe, "unet", None)
    return guidance > 1 and getattr(getattr(unet, "config", None), "time_cond_proj_dim", None) is None


def prompt_kwargs(pipe: Any, jobs: list[Job], ctx: StageContext, guidance: float,
                  prompts: list[str] | None = None) -> dict[str, Any]:
    """The prompt arguments for ``pipe(...)``: embeddings, each distinct text encoded once.

    Each text is encoded alone (a batch of one), as an unbatched job's pipeline call would encode it, and
    kept in the model bank's cache, so a prompt shared by many jobs or batches is encoded once. For a batch
    of one the result is exactly what the pipeline computes from the strings (SD and SDXL, incl. pooled
    embeddings and SDXL's zeroed empty negative); in a larger batch each job still gets its own unbatched
    embeddings (so an SDXL job without a negative prompt keeps the zeroed one even beside jobs that have one).
    Pipelines of other families get the strings. ``prompts`` replaces the jobs' own prompt texts (an
    animation frame's prompt).

    Texts are read as the jobs' ``prompt_syntax`` and ``clip_skip`` say (:mod:`sdbatch.stages.encoding`): a plain
    prompt of at most 75 tokens takes the pipeline's own ``encode_prompt``; weighted, ``BREAK`` and longer ones
    are compel's chunks, and every embedding of the call is padded with the empty prompt's chunks to the
    longest (positive and negative alike, as A1111 pads them).
    """
    texts = list(prompts) if prompts is not None else [job.prompt for job in jobs]
    negatives = [job.negative_prompt for job in jobs]
    name = type(pipe).__name__
    if name not in SD_PIPELINES and name not in SDXL_PIPELINES:  # SD3, Flux.1 (their T5 knobs when set)
        return {"prompt": texts, "negative_prompt": negative_prompts(negatives), **family_kwargs(jobs[0].params)}
    import torch

    from .encoding import encode_text, max_clip_skip, pad_to

    xl = name in SDXL_PIPELINES
    cache = getattr(ctx.models, "cached_embedding", None)
    params = jobs[0].params
    syntax, clip_skip = getattr(params, "prompt_syntax", None), getattr(params, "clip_skip", None)
    if clip_skip and jobs[0].model.source == "builtin":  # --rehearse: the tiny text encoders have 3 layers
        clip_skip = min(clip_skip, max_clip_skip(pipe, xl))

    def embed(text: str) -> tuple:
        def encode() -> tuple:  # only on a cache miss: even finding the execution device walks every module
            return encode_text(pipe, text, xl=xl, syntax=syntax, clip_skip=clip_skip)

        return cache(jobs[0], "xl" if xl else "sd", text, encode) if cache else encode()

    positive = [embed(text) for text in texts]
    negative: list[tuple | None] = []
    if uses_cfg(pipe, guidance):
        # per job, as its own call with negative_prompt=job.negative_prompt or None would do it: an empty
        # negative is SDXL's zeroed embedding (force_zeros_for_empty_prompt) whatever else is in the batch
        zeros = xl and bool(pipe.config.force_zeros_for_empty_prompt)
        negative = [None if zeros and not text else embed(text) for text in negatives]
    longest = max(e[0].shape[1] for e in positive + [n for n in negative if n is not None])
    if any(e[0].shape[1] != longest for e in positive + [n for n in negative if n is not None]):
        empty = embed("")[0]  # a long prompt's partner gets the empty prompt's chunks
        positive = [(pad_to(e, longest, empty), p) for e, p in positive]
        negative = [None if n is None else (pad_to(n[0], longest, empty), n[1]) for n in negative]
    kwargs: dict[str, Any] = {"prompt_embeds": torch.cat([p[0] for p in positive])}
    if xl:
        kwargs["pooled_prompt_embeds"] = torch.cat([p[1] for p in positive])
    if not negative:
        return kwargs
    negative = [(torch.zeros_like(pos[0]), torch.zeros_like(pos[1])) if n is None else n
                for n, pos in zip(negative, positive)]
    kwargs["negative_prompt_embeds"] = torch.cat([n[0] for n in negative])
    if xl:
        kwargs["negative_pooled_prompt_embeds"] = torch.cat([n[1] for n in negative])
    return kwargs


# ------------------------------------------------------------------------------------------- previews
def preview_path(job: Job, step: int) -> str:
    """``<stage>/previews/<output stem>-step0003.png`` (relative to the output folder)."""
    out = Path(job.output)
    return (out.parent / "previews" / f"{out.stem}-step{step:04d}.png").as_posix()


def decode_latents(pipe: Any, latents: Any, size: tuple[int, int] | None = None) -> list[Any]:
    """PIL images of ``latents``, decoded as the pipeline decodes its final latents (Flux.1's packed latents
    unpacked to ``size``, SD3 / Flux.1's VAE shift added back)."""
    import torch

    if latents.ndim == 3 and size and hasattr(pipe, "_unpack_latents"):  # Flux.1: (batch, 2x2 patches, channels)
        latents = pipe._unpack_latents(latents, size[1], size[0], pipe.vae_scale_factor)
    vae = pipe.vae
    upcast = vae.dtype == torch.float16 and bool(getattr(vae.config, "force_upcast", False)) \
        and type(pipe).__name__ in SDXL_PIPELINES
    if upcast:
        vae.to(dtype=torch.float32)
    try:
        config = vae.config
        mean, std = getattr(config, "latents_mean", None), getattr(config, "latents_std", None)
        latents = latents.to(device=latents.device, dtype=vae.dtype)
        if mean is not None and std is not None:
            channels = len(mean)
            mean = torch.tensor(mean).view(1, channels, 1, 1).to(latents.device, latents.dtype)
            std = torch.tensor(std).view(1, channels, 1, 1).to(latents.device, latents.dtype)
            latents = latents * std / config.scaling_factor + mean
        else:
            latents = latents / config.scaling_factor
            if getattr(config, "shift_factor", None) is not None:  # SD3, Flux.1
                latents = latents + config.shift_factor
        with torch.no_grad():
            image = vae.decode(latents, return_dict=False)[0]
    finally:
        if upcast:
            vae.to(dtype=torch.float16)
    return pipe.image_processor.postprocess(image, output_type="pil")


class Previews:
    """A ``callback_on_step_end`` that decodes the latents every ``every`` denoising steps.

    Steps are counted as the pipeline's progress bar counts them (``steps`` = the denoising steps that run),
    so a scheduler's warm-up iteration (PNDM) or second-order sub-steps (Heun) are not steps of their own,
    and the last step's preview is the final image. Only reads the latents (returns them untouched), so the
    final image is the same with or without previews.
    """

    def __init__(self, jobs: list[Job], every: int, steps: int):
        self.jobs = jobs
        self.every = every
        self.steps = steps
        self.done = 0
        self.images: list[tuple[int, list[Any]]] = []  # (step, one image per job)

    def __call__(self, pipe: Any, i: int, timestep: Any, callback_kwargs: dict[str, Any]) -> dict[str, Any]:
        total = getattr(pipe, "_num_timesteps", None) or self.steps
        order = getattr(pipe.scheduler, "order", 1)
        warmup = total - self.steps * order
        if i == total - 1 or ((i + 1) > warmup and (i + 1) % order == 0):  # diffusers' progress-bar rule
            self.done += 1
            if self.done % self.every == 0:
                size = (self.jobs[0].params.width, self.jobs[0].params.height)
                self.images.append((self.done, decode_latents(pipe, callback_kwargs["latents"], size)))
        return callback_kwargs

    def rendered(self, finish: Callable[[int, Any], Any] | None = None) -> Iterator[Rendered]:
        """One :class:`Rendered` per job and preview step; ``finish(job index, image)`` post-processes."""
        for step, images in self.images:
            for i, (job, image) in enumerate(zip(self.jobs, images)):
                image = finish(i, image) if finish else image
                yield Rendered(job, preview_path(job, step), image,
                               extra={"preview": {"step": step, "steps": self.steps}})


def previews_for(jobs: list[Job]) -> Previews | None:
    """The previews callback for a batch (``previews: N``), or None. Img2img-like stages run
    ``min(int(steps * strength), steps)`` denoising steps, as diffusers does."""
    every = jobs[0].options.previews
    if not every:
        return None
    return Previews(jobs, int(every), jobs[0].params.denoising_steps)


def callback_kwargs(previews: Previews | None) -> dict[str, Any]:
    return {"callback_on_step_end": previews} if previews is not None else {}


def run_pipeline(pipe: Any, jobs: list[Job], ctx: StageContext, previews: Previews | None = None, *,
                 guidance: float | None = None, prompts: list[str] | None = None, embeds: dict[str, Any] | None = None,
                 generator: Any = None, **task_kwargs: Any) -> list[Any]:
    """The one diffusers call of every stage, for a batch of jobs sharing a batch key.

    Prompts are encoded once each (:func:`prompt_kwargs`) unless ``embeds`` gives the prompt arguments (an
    interpolation's blended embeddings); steps and guidance are the jobs' own unless ``guidance`` is given
    (an animation frame's schedule value); each job gets a CPU generator seeded with its seed unless
    ``generator`` is given (a frame's own seed). ``task_kwargs`` are the task's own arguments (image,
    mask_image, strength, width, height, latents).

    The call runs under ``torch.inference_mode()`` (diffusers' own ``no_grad`` plus no autograd bookkeeping at
    all): the same pixels, measurably less overhead per call for small images.
    """
    import torch

    from ..runtime.ip_adapter import ip_adapter_kwargs

    params = jobs[0].params
    guidance = params.guidance if guidance is None else guidance
    prompt_args = embeds if embeds is not None else prompt_kwargs(pipe, jobs, ctx, guidance, prompts)
    with torch.inference_mode():
        return pipe(
            **prompt_args,
            num_inference_steps=params.steps,
            guidance_scale=guidance,
            generator=generator if generator is not None else [ctx.generator(job.seed) for job in jobs],
            **callback_kwargs(previews),
            **ip_adapter_kwargs(pipe, jobs, ctx),  # ip_adapter_image: one reference image per IP-Adapter
            **task_kwargs,
        ).images
