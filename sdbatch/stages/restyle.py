"""``restyle``: a video in, a restyled video out (per-frame img2img with temporal coherence).

For each kept source frame (output index ``i``, source index ``j``), streamed:

1. resume: a frame this job already saved (``<stage>/frames/<i>.png`` carrying this job's id) is
   reused as is, neither re-rendered nor re-yielded;
2. init = the source frame resized to the job's width x height; with ``coherence.flow > 0`` the
   previous restyled frame *as saved* (the PNG, read back) is warped onto this frame by optical flow
   (OpenCV DIS, forward-backward consistency check) and blended in with weight ``flow``; occluded /
   inconsistent pixels keep the source frame (:mod:`sdbatch.animation.flow`);
3. img2img exactly as the ``img2img`` stage (CPU generator; seed = ``job.seed`` for
   ``seed_behavior: fixed``, ``job.seed + i`` for ``iter``); strength 0 runs no diffusion (the init
   is the frame). With ``controlnet:`` units it is diffusers' ControlNet img2img pipeline, each frame's control
   image made from its own source frame (``image`` omitted), an aligned control video's frame ``j``, or a still
   (:mod:`sdbatch.stages.video_control`; saved as ``<stage>/control/<i>.png``);
4. ``coherence.cross_frame: true``: the UNet's self-attention also attends to frame 0's keys/values, recorded
   while frame 0 renders (recorded again from its source frame after a resume, so frames stay identical;
   :mod:`sdbatch.runtime.cross_frame`);
5. ``coherence.color`` (lab | hsv | rgb) matches the frame's histogram to the first restyled frame as
   saved (scikit-image ``match_histograms``, :func:`sdbatch.animation.color.match_colors`).

With ``coherence.flow`` 0 frames do not depend on each other, and are diffused ``batch_size`` at a time
(:func:`frame_batch`) in fixed groups (``0..N-1, N..2N-1, ...``; under cross-frame attention frame 0 alone, then
``1..N, ...``): a resumed run renders a partly saved group whole again, so each frame comes from the same batch
as in an uninterrupted run. A batched frame equals the unbatched one within one level (CPU float32).

Frames are decoded as a stream (ffmpeg); when diffusion runs on a GPU, decoding and the source frames'
optical flow run one or two frames ahead in a thread, overlapping it. Memory stays constant whatever
the clip's length. Because coherence only ever reads frames back from their PNGs, a run killed and resumed
gives the same frames as an uninterrupted one. When every frame exists the frames are encoded (streaming) into
``job.output`` (H.264 yuv420p, source fps / every_nth_frame) with the source's sound trimmed to the
kept range (unless ``audio: drop``); the mp4's manifest line carries ``frames``, ``fps`` and a
``timing`` breakdown (diffusion vs decode / flow / colour / encode, ``frame_batch``) read by
``benchmarks/restyle_flicker.py``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, StrictBool, model_serializer, model_validator

from ..config.control import ControlUnit
from ..config.stage import REHEARSE_MAX_FRAMES, ImageToImageConfig
from ..config.types import ColorMode, NonNegInt, PosInt, Strength, StrictModel, Sweep
from ..core.job import Job
from .base import Rendered, StageContext
from .diffusion import prompt_kwargs, run_pipeline
from .frames import FrameCounter, encode_frames
from .restyle_source import _Clock, _SourceFrames

__all__ = ["CONFIG", "Coherence", "RestyleStage", "_Clock", "_SourceFrames", "flicker", "frame_seed", "render"]


class Coherence(StrictModel):
    """Restyle coherence: blend the previous restyled frame (flow-warped), match colours, attend to frame 0."""

    flow: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0
    color: ColorMode = "none"
    # self-attention also attends to frame 0's keys/values (sdbatch.runtime.cross_frame); identity only when on
    cross_frame: StrictBool = False

    @model_serializer(mode="wrap")
    def _omit_off(self, handler: Any) -> Any:
        data = handler(self)
        if isinstance(data, dict) and not self.cross_frame:
            data.pop("cross_frame", None)  # job ids stay those of versions without it
        return data


class RestyleStage(ImageToImageConfig):
    """A video in, a restyled video out: per-frame img2img with coherence and the source's sound."""

    VIDEO = True
    FAMILIES = ("sd", "sdxl")  # SD3/Flux refused at validate (sdbatch.config.families)
    READS = "video"
    type: Literal["restyle"]
    strength: Sweep(Strength) = [0.5]
    seed_behavior: Literal["fixed", "iter"] = "fixed"
    every_nth_frame: PosInt = 1
    start_frame: NonNegInt = 0
    end_frame: NonNegInt | None = None
    coherence: Coherence = Coherence()
    audio: Literal["keep", "drop"] = "keep"
    controlnet: list[ControlUnit] | None = None  # per-frame control (sdbatch.stages.video_control)

    @model_validator(mode="after")
    def _range(self) -> RestyleStage:
        if self.end_frame is not None and self.end_frame <= self.start_frame:
            raise ValueError(f"end_frame ({self.end_frame}) must be after start_frame ({self.start_frame})")
        return self

    def frame_range(self) -> tuple[int, int | None, int]:
        return self.start_frame, self.end_frame, self.every_nth_frame

    def plan_hook(self, planner: Any, fixed: dict[str, Any]) -> None:
        from .control import plan_control
        from .video_control import check_video_controls, restyle_frames_needed

        super().plan_hook(planner, fixed)
        plan_control(self, planner, fixed, reads_input=True, video_ok=True)  # image omitted: each source frame
        if self.controlnet:
            check_video_controls(self, planner, fixed, restyle_frames_needed(self, planner))

    def rehearse_params(self, params: dict[str, Any], source_frames: int | None) -> None:
        """The first REHEARSE_MAX_FRAMES kept frames of the selected range (within the source's frames)."""
        start, end, nth = params["start_frame"], params["end_frame"], params["every_nth_frame"]
        stop = start + (REHEARSE_MAX_FRAMES - 1) * nth + 1
        if source_frames is not None:  # an upstream video is rehearsed too: shorter than the real one
            start = min(start, source_frames - 1)
            stop = min(stop, source_frames, end if end is not None else source_frames)
        params.update(start_frame=start, end_frame=min(stop, end) if end is not None else stop)

    def output_frames(self, params: dict[str, Any], source_frames: int | None) -> int | None:
        end = params["end_frame"] if params["end_frame"] is not None else source_frames
        return None if end is None else len(range(params["start_frame"], end, params["every_nth_frame"]))

    def seed_span(self, params: dict[str, Any], frames: int | None) -> int:
        return max(0, (frames or 1) - 1) if params["seed_behavior"] == "iter" else 0


def frame_seed(job: Job, index: int) -> int:
    """The seed of output frame ``index``: fixed, or ``seed + index`` for ``seed_behavior: iter``."""
    return job.seed + index if job.params.seed_behavior == "iter" else job.seed


def flicker(outputs: Iterable[Any], sources: Iterable[Any]) -> float:
    """Temporal flicker of a restyled clip: the mean absolute difference (0..255) between each output frame
    and the previous output frame warped onto it, over the pixels whose motion is reliable.

    The warp is the optical flow between the *source* frames (forward-backward checked, as the stage
    uses it), so clips restyled from one source are measured with the same motion. ``outputs`` and
    ``sources`` are equally long iterables of ``HxWx3`` uint8 RGB frames (streamed: two in memory).
    """
    import numpy as np

    from ..animation.flow import warp_previous

    total, pairs = 0.0, 0
    prev_out = prev_src = None
    for out, src in zip(outputs, sources, strict=True):
        out, src = np.asarray(out), np.asarray(src)
        if prev_out is not None:
            warped, valid = warp_previous(prev_out, prev_src, src)
            if valid.any():
                diff = np.abs(out.astype(np.float32) - warped.astype(np.float32)).mean(axis=-1)
                total += float(diff[valid].mean())
                pairs += 1
        prev_out, prev_src = out, src
    return total / pairs if pairs else 0.0


def render(jobs: list[Job], ctx: StageContext) -> Iterator[Rendered]:
    for job in jobs:
        yield from _render_job(job, ctx)


def frame_batch(job: Job) -> int:
    """Frames per diffusion call: ``batch_size`` (``auto``: by free GPU memory, up to 8; one on a CPU, where
    every frame is then exactly an unbatched render's) when frames do not depend on each other
    (``coherence.flow`` 0), else one."""
    p = job.params
    if p.coherence.flow > 0 or p.strength <= 0:
        return 1
    value = job.options.batch_size
    if isinstance(value, int):
        return value
    from ..runtime.models import resolve_device

    if not resolve_device(job.device).startswith("cuda"):
        return 1
    import torch

    free, _total = torch.cuda.mem_get_info()
    per_frame = 1.5 * (1 << 30) * p.width * p.height / (512 * 512)  # float16 activations with CFG
    return max(1, min(8, int((free - 4 * (1 << 30)) // per_frame)))


class _Restyle:
    """One restyle job's state while its frames stream through, in aligned groups of :func:`frame_batch`."""

    def __init__(self, job: Job, ctx: StageContext, clock: _Clock, digest: str, kept: list[int]):
        from ..runtime.cross_frame import AnchorAttention
        from .video_control import FrameControl

        p = job.params
        self.job, self.ctx, self.clock, self.digest = job, ctx, clock, digest
        self.strength, self.flow, self.color = p.strength, p.coherence.flow, p.coherence.color
        self.batch = frame_batch(job)
        self.anchor = AnchorAttention() if p.coherence.cross_frame and p.strength > 0 else None
        self.anchor_init: Any = None  # frame 0's init (its source frame): rebuilds the anchor on resume
        self.pipe: Any = None
        self.embeds: dict[int, dict[str, Any]] = {}  # prompt arguments per batch length
        self.first: Any = None  # frame 0 as saved (colour reference)
        self.prev_out: Any = None  # previous restyled frame as saved
        self.prev_src: Any = None  # previous source frame, resized
        self.frame_files: list[Path] = []
        self.rendered = self.reused = 0
        self.progress = FrameCounter(ctx, job, len(kept))
        self.control = FrameControl(job, ctx, (p.width, p.height), kept, digest)
        self.anchor_control: Any = None  # frame 0's decoded control frames (rebuilding the anchor)

    def group(self, i: int) -> int:
        """Frames are rendered in fixed groups (frame 0 alone under cross-frame attention, as the anchor), so
        a resumed run renders each frame in the same batch as an uninterrupted one."""
        if self.anchor is not None:
            return -1 if i == 0 else (i - 1) // self.batch
        return i // self.batch

    # ---------------------------------------------------------------------------------------- diffusion
    def diffuse(self, inits: list[Any], seeds: list[int], controls: list[list[Any]], capture: bool = False
                ) -> list[Any]:
        import numpy as np
        from PIL import Image

        t = time.perf_counter()
        job, ctx = self.job, self.ctx
        if self.pipe is None:  # loaded (and the prompt encoded) once, only if a frame needs it
            self.pipe = self.control.pipeline("img2img") if self.control else ctx.models.pipeline(job, "img2img")
            t = self.clock.add("model_load", t)
        jobs = [job] * len(inits)
        if len(inits) not in self.embeds:
            self.embeds[len(inits)] = prompt_kwargs(self.pipe, jobs, ctx, job.params.guidance)

        extra = self.control.kwargs(self.pipe, controls) if self.control else {}

        def call() -> list[Any]:
            return run_pipeline(self.pipe, jobs, ctx, embeds=self.embeds[len(inits)],
                                image=[Image.fromarray(x) for x in inits], strength=self.strength,
                                generator=[ctx.generator(seed) for seed in seeds], **extra)

        if self.anchor is None:
            images = call()
        elif capture:
            with self.anchor.capture(self.pipe.unet):
                images = call()
        else:
            if not self.anchor.ready:  # resumed after frame 0: record its keys/values again (same pixels)
                self.clock.add("diffusion", t)
                control, _ = self.control.images(0, self.anchor_init, self.anchor_control, save=False)
                self.diffuse([self.anchor_init], [frame_seed(job, 0)], [control], capture=True)
                t = time.perf_counter()
            with self.anchor.attend(self.pipe.unet):
                images = call()
        self.clock.add("diffusion", t)
        return [np.asarray(image.convert("RGB")) for image in images]

    def init(self, src: Any, motion: Any) -> Any:
        """The frame's init: the source frame, with the flow-warped previous output blended in."""
        from ..animation.flow import blend_coherent, warp_by_flow, warp_previous

        if self.flow <= 0 or self.prev_out is None:
            return src
        t = time.perf_counter()
        if motion is None:  # computed here (CPU diffusion, or another job's file was in the way)
            warped, valid = warp_previous(self.prev_out, self.prev_src, src)
        else:
            warped, valid = warp_by_flow(self.prev_out, motion[0]), motion[1]
        init = blend_coherent(src, warped, valid, self.flow)
        self.clock.add("flow", t)
        return init

    # -------------------------------------------------------------------------------------------- frames
    def flush(self, items: list[tuple[int, int, Any, Any]], decoded: list[dict[int, Any]]) -> Iterator[Rendered]:
        """Render (or reuse) one group of frames, in order; a group with any frame missing is rendered whole."""
        import numpy as np
        from PIL import Image

        from ..animation.color import match_colors

        job, ctx = self.job, self.ctx
        if items[0][0] == 0:
            self.anchor_init = items[0][2]  # frame 0's init is its source frame (no previous frame)
            self.anchor_control = decoded[0]
        t = time.perf_counter()
        rels = [ctx.frame_path(job, i) for i, *_ in items]
        saved = [ctx.saved_frame(job, rel) for rel in rels]
        self.clock.add("read_back", t)
        results: list[Any] = []
        controls: list[tuple[list[Any], list]] = [([], [])] * len(items)
        if any(s is None for s in saved):
            self.progress.rendering(next(i for (i, *_), s in zip(items, saved) if s is None))
            if self.control and self.strength > 0:
                controls = [self.control.images(i, src, d) for (i, _j, src, _m), d in zip(items, decoded)]
            inits = [self.init(src, motion) for _i, _j, src, motion in items]
            seeds = [frame_seed(job, i) for i, *_ in items]
            results = self.diffuse(inits, seeds, [c[0] for c in controls], capture=items[0][0] == 0) \
                if self.strength > 0 else inits
        for k, (i, j, src, _motion) in enumerate(items):
            t = time.perf_counter()
            if saved[k] is not None:
                out = np.asarray(saved[k])
                self.reused += 1
                self.clock.add("read_back", t)
            else:
                result = results[k]
                if self.color != "none" and self.first is not None:
                    result = match_colors(result, self.first, self.color)
                    self.clock.add("color", t)
                extra: dict[str, Any] = {"frame": i, "source_frame": j, "seed": frame_seed(job, i)}
                if controls[k][1]:
                    extra["controlnet"] = controls[k][1]
                yield Rendered(job, rels[k], Image.fromarray(result), extra=extra, input_hashes=[self.digest])
                t = time.perf_counter()  # the worker has saved the PNG meanwhile ("other" time)
                # continue from the frame as saved, exactly what a resumed run would read
                again = ctx.saved_frame(job, rels[k])
                if again is None:
                    raise RuntimeError(f"frame {rels[k]} was not saved")
                out = np.asarray(again)
                self.rendered += 1
                self.clock.add("read_back", t)
            if self.first is None:
                self.first = out
            self.prev_out, self.prev_src = out, src
            self.frame_files.append(ctx.out_dir / rels[k])
            self.progress.finished(i)


def _render_job(job: Job, ctx: StageContext) -> Iterator[Rendered]:
    from ..io.video import probe_video_cached, select_frames
    from ..runtime.models import resolve_device

    clock = _Clock()
    p = job.params
    source, digest = ctx.checked_input(job.inputs[0])

    t = time.perf_counter()
    info = probe_video_cached(source, digest)
    start, end_frame, nth = p.start_frame, p.end_frame, p.every_nth_frame
    kept = select_frames(info, start, end_frame, nth)
    clock.add("decode", t)
    state = _Restyle(job, ctx, clock, digest, kept)

    def needs_motion(i: int) -> bool:  # cheap: a frame already on disk is (nearly always) reused
        return not ctx.frame_exists(job, ctx.frame_path(job, i))

    ahead = p.coherence.flow > 0 and p.strength > 0 and resolve_device(job.device) != "cpu"
    frames = _SourceFrames(source, kept, (p.width, p.height), ahead, needs_motion)
    pending: list[tuple[int, int, Any, Any]] = []
    decoded: list[dict[int, Any]] = []  # the control videos' frames of the pending ones
    try:
        t = time.perf_counter()
        for item in frames:
            clock.add("decode", t)  # decoding, or waiting for the decoding thread
            if pending and state.group(item[0]) != state.group(pending[0][0]):
                yield from state.flush(pending, decoded)
                pending, decoded = [], []
            pending.append(item)
            decoded.append(state.control.advance())
            t = time.perf_counter()
        if pending:
            yield from state.flush(pending, decoded)
    finally:
        frames.close()  # stops the thread and ffmpeg if we stop early
        state.control.close()
    if len(state.frame_files) != len(kept):
        raise RuntimeError(f"{job.inputs[0].path}: decoded {len(state.frame_files)} of {len(kept)} frames")

    # ---- all frames exist: the mp4
    t = time.perf_counter()
    fps = info.fps / nth
    audio: dict[str, Any] = {}
    if p.audio == "keep" and info.has_audio:
        end = info.frames if end_frame is None else end_frame
        audio = {"audio_from": source, "audio_start": start / info.fps,
                 "audio_duration": (end - start) / info.fps}
    tmp = encode_frames(ctx.out_dir, job, len(state.frame_files), fps, **audio)
    clock.add("encode", t)
    timing = clock.summary(state.rendered, state.reused, frames.busy)
    timing["frame_batch"] = state.batch
    yield Rendered(job, job.output, file=tmp, input_hashes=[digest],
                   extra={"frames": len(state.frame_files), "fps": fps, "audio": bool(audio), "timing": timing})


CONFIG = RestyleStage
