"""``upscale``: images (or a video's frames) in, bigger images (or the video re-encoded with its sound) out.

::

    - name: big
      type: upscale
      input: sketch                 # a stage (images, or a video stage's mp4), image files / a glob, or a video file
      scale: 4                      # or width/height (a missing side keeps the aspect); default: the upscaler's
                                    # own factor (a model file's, 2 for lanczos, 4 for sd-x4)
      upscaler: models/4x-UltraSharp.safetensors   # lanczos (default) | sd-x4 | a model file (spandrel)
      tile: 512                     # input pixels a side per tile (blended; 0 = the whole image at once)
      prompt: a harbour at night    # sd-x4 only (with negative_prompt, steps, guidance, noise_level)

Each job upscales one input image to ``round(width * scale) x round(height * scale)`` of the image as read (or
to width/height) with :func:`sdbatch.runtime.upscalers.upscale_images`. A job reading a video (a restyle /
animate / interpolate stage, or a video file) upscales every frame (``frames: N``: the first N), saved as
``<stage>/frames/000042.png`` like the video stages' frames (a resumed job keeps the frames it saved), then
encodes them at the source's fps with the source's sound (``audio: drop`` leaves it out).

The job's params hold the upscaler's identity (:func:`sdbatch.config.upscaler.plan_upscaler`: a model file by its
sha256, sd-x4 by its model's revision), the effective scale and tile. The PNG keeps the input's own A1111
``parameters`` text and adds A1111's extras chunk ``postprocessing`` (``Postprocess upscale by: 4, Postprocess
upscaler: 4x-UltraSharp``); an input without one gets the upscale's own text with those fields
(:func:`sdbatch.io.artifacts.postprocess_fields`).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import PurePath
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field, StrictInt, field_validator, model_validator

from ..config.limits import MAX_SIDE
from ..config.stage import REHEARSE_MAX_FRAMES, StageConfig
from ..config.types import VIDEO_SUFFIXES, PosInt, Prompt, Sweep
from ..config.upscaler import NAMED_SCALES, UpscalerParam, plan_upscaler
from ..core.job import Job
from .base import Rendered, StageContext

if TYPE_CHECKING:
    from ..core.plan import StagePlanner

MIN_TILE = 16


class UpscaleStage(StageConfig):
    """Images or a video's frames in, bigger ones out: Lanczos, sd-x4 or a spandrel model file, tiled."""

    type: Literal["upscale"]
    input: str
    prompt: Sweep(Prompt) | None = None  # sd-x4 only
    upscaler: UpscalerParam = "lanczos"
    scale: Annotated[float, Field(gt=0, le=16)] | None = None
    tile: Annotated[StrictInt, Field(ge=0, le=MAX_SIDE)] = 512
    noise_level: Annotated[StrictInt, Field(ge=0, le=350)] | None = None  # sd-x4 only (diffusers' default 20)
    frames: PosInt | None = None  # a video input: only its first N frames
    audio: Literal["keep", "drop"] | None = None  # a video input: its sound in the upscaled mp4 (default keep)

    OMIT_IF_NONE = frozenset({"noise_level", "frames", "audio"})

    @field_validator("tile")
    @classmethod
    def _tile(cls, value: int) -> int:
        if 0 < value < MIN_TILE:
            raise ValueError(f"a tile is at least {MIN_TILE} px (or 0: the whole image at once)")
        return value

    @model_validator(mode="after")
    def _one_size(self) -> UpscaleStage:
        if self.scale is not None and (self.width is not None or self.height is not None):
            raise ValueError("give either 'scale' or 'width'/'height' (the output size), not both")
        return self

    # what it reads decides what it makes: images, or (a video file / a video stage's mp4) a video
    @property
    def _video_file(self) -> bool:
        return PurePath(self.input).suffix.lower() in VIDEO_SUFFIXES

    @property
    def VIDEO(self) -> bool:  # type: ignore[override]  # noqa: N802 - the planner's name
        """A video file input makes a video; a stage input makes what the stage makes (the planner decides)."""
        return self._video_file

    @property
    def READS(self) -> str:  # type: ignore[override]  # noqa: N802
        return "video" if self._video_file else "any"

    # ------------------------------------------------------------------------------------- planning
    def plan_hook(self, planner: StagePlanner, fixed: dict[str, Any]) -> None:
        upscaler = plan_upscaler(planner, self.upscaler, ("upscaler",), allow_latent=False)
        fixed["upscaler"] = upscaler  # plan_size reads its native factor
        if upscaler is not None and self.width is None and self.height is None:
            fixed["scale"] = float(self.scale if self.scale is not None else upscaler["scale"])
        name = upscaler.get("name") if upscaler else None
        if name not in (None, "sd-x4"):
            if self.noise_level is not None:
                planner.problem(("noise_level",), f"noise_level is sd-x4's; the {name} upscaler has none")
        if not planner.plan.makes_video(self):
            for key in ("frames", "audio"):
                if getattr(self, key) is not None:
                    planner.problem((key,), f"{key} is for a video input; this stage reads images")

    def plan_size(self, planner: StagePlanner, fixed: dict[str, Any], in_size: tuple[int, int] | None
                  ) -> tuple[int, int] | None:
        """The output size of a job reading an image (or video) of ``in_size``; None after a problem."""
        upscaler = fixed.get("upscaler")
        if upscaler is None:
            return None
        if self.width is not None or self.height is not None or in_size is None:
            return super().plan_size(planner, fixed, in_size)
        scale = self.scale if self.scale is not None else upscaler.get("scale", NAMED_SCALES["lanczos"])
        size = (max(1, round(in_size[0] * scale)), max(1, round(in_size[1] * scale)))
        if max(size) > MAX_SIDE:
            planner.problem_once("upscale-size", ("scale",) if self.scale is not None else ("upscaler",),
                                 f"an input of {in_size[0]}x{in_size[1]} x {scale:g} is {size[0]}x{size[1]}, over "
                                 f"{MAX_SIDE} px a side: use a smaller scale or set width/height")
            return None
        return size

    def rehearse_params(self, params: dict[str, Any], source_frames: int | None) -> None:
        if source_frames is not None:  # a video: its first REHEARSE_MAX_FRAMES frames
            params["frames"] = min(params.get("frames") or source_frames, source_frames, REHEARSE_MAX_FRAMES)

    def output_frames(self, params: dict[str, Any], source_frames: int | None) -> int | None:
        if source_frames is None:
            return None
        return min(params.get("frames") or source_frames, source_frames)


# -------------------------------------------------------------------------------------------- render
def render(jobs: list[Job], ctx: StageContext) -> Iterator[Rendered]:
    for job in jobs:
        if PurePath(job.output).suffix.lower() in VIDEO_SUFFIXES:
            yield from _render_video(job, ctx)
        else:
            yield _render_image(job, ctx)


def _upscale(ctx: StageContext, job: Job, image: Any) -> Any:
    from ..runtime.upscalers import upscale_images

    p = job.params
    return upscale_images(ctx, job, [image], (p.width, p.height), upscaler=p.upscaler, tile=p.tile,
                          prompts=[job.prompt])[0]


def _render_image(job: Job, ctx: StageContext) -> Rendered:
    from PIL import Image

    loaded = ctx.load_image(job.inputs[0])
    image = _upscale(ctx, job, loaded.image)
    try:  # the input's own A1111 text stays the output's (as A1111's extras keep it)
        with Image.open(ctx.input_path(job.inputs[0])) as im:
            text = im.info.get("parameters")
    except OSError:
        text = None
    if isinstance(text, str) and text:
        image.info["parameters"] = text
    return Rendered(job, job.output, image, input_hashes=[loaded.sha256])


def _render_video(job: Job, ctx: StageContext) -> Iterator[Rendered]:
    from PIL import Image

    from ..io.video import iter_frames, probe_video_cached
    from .frames import FrameCounter, encode_frames

    p = job.params
    source, digest = ctx.checked_input(job.inputs[0])
    info = probe_video_cached(source, digest)
    count = min(p.frames or info.frames, info.frames)
    progress = FrameCounter(ctx, job, count)
    todo = []
    for i in range(count):
        if ctx.saved_frame(job, ctx.frame_path(job, i)) is None:
            todo.append(i)
        else:
            progress.finished(i)
    if todo:
        frames = iter_frames(source, todo)
        try:
            for i, frame in frames:
                progress.rendering(i)
                image = _upscale(ctx, job, Image.fromarray(frame))
                yield Rendered(job, ctx.frame_path(job, i), image, extra={"frame": i, "source_frame": i},
                               input_hashes=[digest])
                progress.finished(i)
        finally:
            frames.close()
    audio: dict[str, Any] = {}
    if p.audio != "drop" and info.has_audio:
        audio = {"audio_from": source, "audio_start": 0.0, "audio_duration": count / info.fps}
    tmp = encode_frames(ctx.out_dir, job, count, info.fps, **audio)
    yield Rendered(job, job.output, file=tmp, input_hashes=[digest],
                   extra={"frames": count, "fps": info.fps, "audio": bool(audio)})


CONFIG = UpscaleStage
