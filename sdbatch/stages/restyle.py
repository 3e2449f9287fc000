"""``restyle``: a video in, a restyled video out (per-frame img2img with temporal coherence).

For each kept source frame (output index ``i``, source index ``j``), streamed one at a time:

1. resume: a frame this job already saved (``<stage>/frames/<i>.png`` carrying this job's id) is
   reused as is, neither re-rendered nor re-yielded;
2. init = the source frame resized to the job's width x height; with ``coherence.flow > 0`` the
   previous restyled frame *as saved* (the PNG, read back) is warped onto this frame by optical flow
   (OpenCV DIS, forward-backward consistency check) and blended in with weight ``flow``; occluded /
   inconsistent pixels keep the source frame (:mod:`sdbatch.animation.flow`);
3. img2img exactly as the ``img2img`` stage (CPU generator; seed = ``job.seed`` for
   ``seed_behavior: fixed``, ``job.seed + i`` for ``iter``); strength 0 runs no diffusion (the init
   is the frame);
4. ``coherence.color`` (lab | hsv | rgb) matches the frame's histogram to the first restyled frame as
   saved (scikit-image ``match_histograms``, :func:`sdbatch.animation.color.match_colors`).

Frames are decoded as a stream (ffmpeg); when diffusion runs on a GPU, decoding and the source frames'
optical flow run one or two frames ahead in a thread, overlapping it. Memory stays constant whatever
the clip's length. Because coherence only
ever reads frames back from their PNGs, a run killed and resumed gives the
same frames as an uninterrupted one. When every frame exists the frames are encoded (streaming) into
``job.output`` (H.264 yuv420p, source fps / every_nth_frame) with the source's sound trimmed to the
kept range (unless ``audio: drop``); the mp4's manifest line carries ``frames``, ``fps`` and a
``timing`` breakdown (diffusion vs decode / flow / colour / encode) read by
``benchmarks/restyle_flicker.py``.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from ..config.stage import REHEARSE_MAX_FRAMES, ImageToImageConfig
from ..config.types import ColorMode, NonNegInt, PosInt, Strength, StrictModel, Sweep
from ..core.job import Job
from ..io.hashing import sha256_file
from .base import Rendered, StageContext
from .diffusion import prompt_kwargs, run_pipeline
from .frames import FrameCounter, encode_frames


class Coherence(StrictModel):
    """Restyle coherence: blend the previous restyled frame (flow-warped) and match colours."""

    flow: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0
    color: ColorMode = "none"


class RestyleStage(ImageToImageConfig):
    """A video in, a restyled video out: per-frame img2img with coherence and the source's sound."""

    VIDEO = True
    READS = "video"
    type: Literal["restyle"]
    strength: Sweep(Strength) = [0.5]
    seed_behavior: Literal["fixed", "iter"] = "fixed"
    every_nth_frame: PosInt = 1
    start_frame: NonNegInt = 0
    end_frame: NonNegInt | None = None
    coherence: Coherence = Coherence()
    audio: Literal["keep", "drop"] = "keep"

    @model_validator(mode="after")
    def _range(self) -> RestyleStage:
        if self.end_frame is not None and self.end_frame <= self.start_frame:
            raise ValueError(f"end_frame ({self.end_frame}) must be after start_frame ({self.start_frame})")
        return self

    def frame_range(self) -> tuple[int, int | None, int]:
        return self.start_frame, self.end_frame, self.every_nth_frame

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


class _Clock:
    """Seconds spent per named phase."""

    PHASES = ("model_load", "decode", "flow", "diffusion", "color", "read_back", "encode")

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.spent = {name: 0.0 for name in self.PHASES}

    def add(self, name: str, since: float) -> float:
        now = time.perf_counter()
        self.spent[name] += now - since
        return now

    def summary(self, rendered: int, reused: int, background: dict[str, float]) -> dict[str, Any]:
        """Seconds per phase on the stage's thread; ``other_s`` is the rest: time the stage was suspended
        while the worker saved PNGs and wrote the manifest, plus hashing the input. Shares leave out the
        one-off model load. ``background`` is the decoding thread's busy time (decode, flow), which
        overlaps the phases; ``decode_s`` / ``flow_s`` are what the stage waited for / the warp + blend."""
        total = time.perf_counter() - self.start
        spent = self.spent
        out: dict[str, Any] = {f"{name}_s": round(sec, 4) for name, sec in spent.items()}
        out["other_s"] = round(max(0.0, total - sum(spent.values())), 4)
        out["total_s"] = round(total, 4)
        work = total - spent["model_load"]
        own = sum(spent[k] for k in ("decode", "flow", "color", "read_back", "encode"))
        # the stage's own work outside diffusion (decode, flow, colour, read-back, encode)
        out["overhead_share"] = round(own / work, 4) if work > 0 else 0.0
        # everything but diffusion, incl. the worker's PNG writing
        out["non_diffusion_share"] = round((work - spent["diffusion"]) / work, 4) if work > 0 else 0.0
        out.update({f"background_{name}_s": round(sec, 4) for name, sec in background.items()})
        out["frames_rendered"] = rendered
        out["frames_reused"] = reused
        return out


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


_END = object()


class _SourceFrames:
    """The kept source frames, each with its motion from the previous source frame.

    With ``ahead`` (diffusion on a GPU) a thread decodes one or two frames ahead and computes the optical
    flow (both directions) and the forward-backward consistency mask, which depend on the source frames
    only, while the main thread waits on diffusion: only warping the previous *output* and the blend
    remain on the critical path. ``needs_motion(i)`` says whether frame ``i`` will be rendered (frames a
    killed run already saved need none). A queue of ``depth`` frames keeps memory constant. Without
    ``ahead`` (diffusion on the CPU, which needs every core: OpenCV's and torch's thread pools competing
    for them slowed diffusion down many times over) frames are decoded in line and ``motion`` is None.
    Iterating yields ``(i, j, frame, motion)`` with ``motion = (flow, valid) | None``.
    """

    def __init__(self, source: Path, kept: list[int], size: tuple[int, int], ahead: bool,
                 needs_motion: Any, depth: int = 2):
        from ..io.video import iter_frames

        self._frames = iter_frames(source, kept, size=size)  # validates now
        self._needs_motion = needs_motion
        self._ahead = ahead
        self.busy = {"decode": 0.0, "flow": 0.0}  # the thread's time, off the critical path
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = None
        if ahead:
            self._thread = threading.Thread(target=self._run, name="sdbatch-restyle-frames", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        from ..animation.flow import consistency_mask, optical_flow

        prev = None
        try:
            t = time.perf_counter()
            for i, (j, src) in enumerate(self._frames):
                now = time.perf_counter()
                self.busy["decode"] += now - t
                motion = None
                if prev is not None and self._needs_motion(i):
                    # exactly what warp_previous(prev_out, prev, src) computes, less the warp itself
                    cur_to_prev = optical_flow(src, prev)
                    motion = (cur_to_prev, consistency_mask(cur_to_prev, optical_flow(prev, src)))
                    self.busy["flow"] += time.perf_counter() - now
                if not self._put((i, j, src, motion)):
                    return
                prev = src
                t = time.perf_counter()
            self._put(_END)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the consumer
            self._put(exc)
        finally:
            self._frames.close()  # stops ffmpeg

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Iterator[tuple[int, int, Any, Any]]:
        if not self._ahead:
            for i, (j, src) in enumerate(self._frames):
                yield i, j, src, None
            return
        while True:
            item = self._queue.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
        else:
            self._frames.close()


def render(jobs: list[Job], ctx: StageContext) -> Iterator[Rendered]:
    for job in jobs:
        yield from _render_job(job, ctx)


def _render_job(job: Job, ctx: StageContext) -> Iterator[Rendered]:
    import numpy as np
    from PIL import Image

    from ..animation.color import match_colors
    from ..animation.flow import blend_coherent, warp_by_flow, warp_previous
    from ..io.video import probe_video_cached, select_frames

    clock = _Clock()
    p = job.params
    size = (p.width, p.height)
    strength = p.strength
    flow_weight = p.coherence.flow
    color_mode = p.coherence.color
    ref = job.inputs[0]
    source = ctx.input_path(ref)
    digest = sha256_file(source)
    if ref.sha256 and digest != ref.sha256:
        raise RuntimeError(f"input {ref.path} changed since the plan was made (sha256 differs); re-run")

    t = time.perf_counter()
    info = probe_video_cached(source, digest)
    start, end_frame, nth = p.start_frame, p.end_frame, p.every_nth_frame
    kept = select_frames(info, start, end_frame, nth)
    t = clock.add("decode", t)

    pipe = None
    prompts: dict[str, Any] = {}
    first: np.ndarray | None = None  # frame 0 as saved (colour reference)
    prev_out: np.ndarray | None = None  # previous restyled frame as saved
    prev_src: np.ndarray | None = None  # previous source frame, resized
    frame_files: list[Path] = []
    rendered = reused = 0

    def needs_motion(i: int) -> bool:  # cheap: a frame already on disk is (nearly always) reused
        return not ctx.frame_exists(job, ctx.frame_path(job, i))

    from ..runtime.models import resolve_device

    ahead = flow_weight > 0 and strength > 0 and resolve_device(job.device) != "cpu"
    frames = _SourceFrames(source, kept, size, ahead, needs_motion)
    progress = FrameCounter(ctx, job, len(kept))
    try:
        t = time.perf_counter()
        for i, j, src, motion in frames:
            t = clock.add("decode", t)  # decoding, or waiting for the decoding thread
            rel = ctx.frame_path(job, i)
            saved = ctx.saved_frame(job, rel)
            if saved is not None:
                out = np.asarray(saved)
                reused += 1
                t = clock.add("read_back", t)
            else:
                progress.rendering(i)
                init = src
                if flow_weight > 0 and prev_out is not None:
                    if motion is None:  # computed here (CPU diffusion, or another job's file was in the way)
                        warped, valid = warp_previous(prev_out, prev_src, src)
                    else:
                        warped, valid = warp_by_flow(prev_out, motion[0]), motion[1]
                    init = blend_coherent(src, warped, valid, flow_weight)
                    t = clock.add("flow", t)
                seed = frame_seed(job, i)
                if strength > 0:
                    if pipe is None:  # loaded (and the prompt encoded) once, only if a frame needs it
                        pipe = ctx.models.pipeline(job, "img2img")
                        prompts = prompt_kwargs(pipe, [job], ctx, p.guidance)
                        t = clock.add("model_load", t)
                    image = run_pipeline(pipe, [job], ctx, embeds=prompts, image=[Image.fromarray(init)],
                                         strength=strength, generator=[ctx.generator(seed)])[0]
                    result = np.asarray(image.convert("RGB"))
                    t = clock.add("diffusion", t)
                else:
                    result = init
                if color_mode != "none" and first is not None:
                    result = match_colors(result, first, color_mode)
                    t = clock.add("color", t)
                yield Rendered(job, rel, Image.fromarray(result),
                               extra={"frame": i, "source_frame": j, "seed": seed},
                               input_hashes=[digest])
                t = time.perf_counter()  # the worker has saved the PNG meanwhile ("other" time)
                # continue from the frame as saved, exactly what a resumed run would read
                saved = ctx.saved_frame(job, rel)
                if saved is None:
                    raise RuntimeError(f"frame {rel} was not saved")
                out = np.asarray(saved)
                rendered += 1
                t = clock.add("read_back", t)
            if first is None:
                first = out
            prev_out, prev_src = out, src
            frame_files.append(ctx.out_dir / rel)
            progress.finished(i)
            t = time.perf_counter()
    finally:
        frames.close()  # stops the thread and ffmpeg if we stop early
    if len(frame_files) != len(kept):
        raise RuntimeError(f"{ref.path}: decoded {len(frame_files)} of {len(kept)} frames")

    # ---- all frames exist: the mp4
    t = time.perf_counter()
    fps = info.fps / nth
    audio: dict[str, Any] = {}
    if p.audio == "keep" and info.has_audio:
        end = info.frames if end_frame is None else end_frame
        audio = {"audio_from": source, "audio_start": start / info.fps,
                 "audio_duration": (end - start) / info.fps}
    tmp = encode_frames(ctx.out_dir, job, len(frame_files), fps, **audio)
    clock.add("encode", t)
    yield Rendered(job, job.output, file=tmp, input_hashes=[digest],
                   extra={"frames": len(frame_files), "fps": fps, "audio": bool(audio),
                          "timing": clock.summary(rendered, reused, frames.busy)})


CONFIG = RestyleStage
