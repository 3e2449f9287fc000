"""``interpolate``: a "dream" video along the slerp path between seeds' initial noises.

Each seed's initial noise is made exactly as a ``generate`` job makes it: diffusers' ``prepare_latents``
draws ``randn_tensor((1, C, H/8, W/8), generator=torch.Generator("cpu").manual_seed(seed))`` in the
pipeline's dtype, and that tensor is passed as ``latents=`` (the pipeline then scales it by the
scheduler's ``init_noise_sigma`` exactly as it would). The ``frames`` frames (both ends included) are spread
evenly over the whole path: frame ``k`` sits at ``u = k (n - 1) / (frames - 1)`` seeds along it, in the
segment ``[seeds[s], seeds[s+1]]`` with ``s = floor(u)`` at local ``t = u - s``, where the noise is
``slerp(t, noise_a, noise_b)`` (a plain lerp when the two are nearly parallel). A frame that lands on a seed
uses that seed's noise itself, so the first frame is bit for bit the ``generate`` image of the first seed,
the last that of the last seed (same prompt and parameters, on CPU).

With ``prompts`` (one per seed) the text embeddings of ``pipe.encode_prompt`` are interpolated linearly
along the same path (exactly a prompt's own embedding on its seed). The pipeline also gets the generator of
the nearer seed, advanced past the initial-noise draw as in ``generate``, so stochastic schedulers
(``euler-a``) match ``generate`` at the seeds too.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Iterator, Literal

from pydantic import Field, StrictInt, model_validator

from ..config.stage import StageConfig
from ..config.types import Fps, Prompt, Seed, Sweep
from ..core.job import Job
from .base import Rendered, StageContext
from .diffusion import prompt_kwargs, run_pipeline
from .frames import FrameCounter, encode_frames


class InterpolateStage(StageConfig):
    """A "dream" video: frames walk the slerp path between seeds' initial noises (and prompts' embeddings)."""

    VIDEO = True
    FAMILIES = ("sd", "sdxl")  # SD3/Flux refused at validate (sdbatch.config.families)
    PLANNED = StageConfig.PLANNED - {"seeds"}  # the seeds are the path: identity params, not a sweep
    type: Literal["interpolate"]
    prompt: Sweep(Prompt) | None = None
    prompts: list[Prompt] | None = None
    seeds: Annotated[list[Seed], Field(min_length=2)]  # type: ignore[assignment]
    frames: Annotated[StrictInt, Field(ge=2, le=100_000)]
    fps: Fps = 12.0

    @model_validator(mode="after")
    def _prompts_match_seeds(self) -> InterpolateStage:
        if (self.prompt is None) == (self.prompts is None):
            raise ValueError("give either 'prompt' or 'prompts' (one per seed)")
        if self.prompts is not None and len(self.prompts) != len(self.seeds):
            raise ValueError(f"'prompts' has {len(self.prompts)} entries but 'seeds' has {len(self.seeds)}")
        return self

    def job_seeds(self) -> list[int]:
        return [self.seeds[0]]  # one job walks every seed; it is named after the first

DOT_THRESHOLD = 0.9995


def render(jobs: list[Job], ctx: StageContext) -> Iterator[Rendered]:
    for job in jobs:
        yield from render_job(job, ctx)


def path_point(k: int, frames: int, seeds: int) -> tuple[int, float]:
    """(segment index, local t in [0, 1]) of frame ``k`` of ``frames`` on a path through ``seeds`` seeds.

    >>> [path_point(k, 5, 3) for k in range(5)]
    [(0, 0.0), (0, 0.5), (1, 0.0), (1, 0.5), (1, 1.0)]
    """
    segment, rest = divmod(k * (seeds - 1), frames - 1)
    if segment >= seeds - 1:
        return seeds - 2, 1.0
    return segment, rest / (frames - 1)


def slerp(t: float, a: Any, b: Any, dot_threshold: float = DOT_THRESHOLD) -> Any:
    """Spherical interpolation of two tensors (computed in float64, returned in ``a``'s dtype).

    Falls back to linear interpolation when the tensors are nearly parallel (``|cos| > dot_threshold``).
    """
    a64, b64 = a.double(), b.double()
    norms = a64.norm() * b64.norm()
    dot = float((a64 * b64).sum() / norms) if float(norms) > 0 else 1.0
    if abs(dot) > dot_threshold:
        out = (1.0 - t) * a64 + t * b64
    else:
        theta = math.acos(max(-1.0, min(1.0, dot)))
        sin_theta = math.sin(theta)
        out = (math.sin((1.0 - t) * theta) / sin_theta) * a64 + (math.sin(t * theta) / sin_theta) * b64
    return out.to(a.dtype)


def lerp(t: float, a: Any, b: Any) -> Any:
    if t == 0.0:
        return a
    if t == 1.0:
        return b
    return ((1.0 - t) * a.double() + t * b.double()).to(a.dtype)


def latent_dtype(pipe: Any) -> Any:
    """The dtype ``prepare_latents`` draws in: that of the prompt embeddings (the text encoder's)."""
    for name in ("text_encoder_2", "text_encoder"):
        module = getattr(pipe, name, None)
        if module is not None:
            return module.dtype
    return pipe.unet.dtype


def latent_shape(pipe: Any, width: int, height: int) -> tuple[int, int, int, int]:
    return (1, pipe.unet.config.in_channels, int(height) // pipe.vae_scale_factor,
            int(width) // pipe.vae_scale_factor)


def initial_noise(pipe: Any, ctx: StageContext, seed: int, width: int, height: int) -> tuple[Any, Any]:
    """(noise, generator advanced past it): what ``generate`` draws for ``seed``."""
    from diffusers.utils.torch_utils import randn_tensor

    generator = ctx.generator(seed)
    noise = randn_tensor(latent_shape(pipe, width, height), generator=generator, device=pipe._execution_device,
                         dtype=latent_dtype(pipe))
    return noise, generator


def render_job(job: Job, ctx: StageContext) -> Iterator[Rendered]:
    p = job.params
    seeds = list(p.seeds)
    prompts = p.prompts
    frames = p.frames
    width, height = p.width, p.height
    pipe = None
    noises: list[Any] = []
    embeddings: list[dict[str, Any]] = []
    progress = FrameCounter(ctx, job, frames)
    for k in range(frames):
        relpath = ctx.frame_path(job, k)
        if ctx.saved_frame(job, relpath) is not None:
            progress.finished(k)
            continue  # frames are independent: a saved one is done
        progress.rendering(k)
        if pipe is None:
            pipe = ctx.models.pipeline(job, "text2img")
            noises = [initial_noise(pipe, ctx, seed, width, height)[0] for seed in seeds]
            if prompts:  # encoded together, so a prompt over 75 tokens and its partners share one length
                distinct = list(dict.fromkeys(prompts))
                together = prompt_kwargs(pipe, [job] * len(distinct), ctx, p.guidance, distinct)
                cache = {text: {name: None if value is None else value[i:i + 1] for name, value in together.items()}
                         for i, text in enumerate(distinct)}
                embeddings.extend(cache[text] for text in prompts)
        segment, t = path_point(k, frames, len(seeds))
        if t == 0.0:
            latents = noises[segment].clone()
        elif t == 1.0:
            latents = noises[segment + 1].clone()
        else:
            latents = slerp(t, noises[segment], noises[segment + 1])
        near = segment if t < 0.5 else segment + 1
        _, generator = initial_noise(pipe, ctx, seeds[near], width, height)
        embeds = None
        if prompts:
            a, b = embeddings[segment], embeddings[segment + 1]
            embeds = {name: lerp(t, a[name], b[name]) for name in a}
        image = run_pipeline(pipe, [job], ctx, embeds=embeds, width=width, height=height, latents=latents,
                             generator=generator)[0]
        extra: dict[str, Any] = {"frame": k, "path_position": k / (frames - 1),
                                 "segment": [seeds[segment], seeds[segment + 1]], "t": t}
        if t in (0.0, 1.0):
            extra["seed"] = seeds[near]
        else:  # A1111's noise slerp: Seed, Variation seed, Variation seed strength
            extra.update(seed=seeds[segment], variation_seed=seeds[segment + 1], variation_strength=round(t, 4))
        if prompts:
            extra["prompt"] = prompts[near]
            extra["prompts"] = [prompts[segment], prompts[segment + 1]]
        yield Rendered(job, relpath, image, extra=extra)
        progress.finished(k)
    video = encode_frames(ctx.out_dir, job, frames, float(p.fps))
    yield Rendered(job, job.output, file=video, extra={"frames": frames, "fps": float(p.fps)})


CONFIG = InterpolateStage
