"""``animate``: Deforum-style 2D/3D camera-motion animation, frame by frame, resumable.

Frame 0 is txt2img of the frame-0 prompt (or, with ``init``, img2img of the init image at the frame-0
strength; strength 0 keeps the init image). Each later diffused frame ``i`` follows Deforum's loop
(``render_animation``)::

    prev   = frame i-1 exactly as saved (lossless PNG; read back from disk when resuming)
    warped = warp(prev, motion at i)           # 2d: cv2.getRotationMatrix2D((W//2, H//2), angle, zoom)
                                               #     @ translation, warpPerspective; 3d: depth reprojection
    warped = match_colors(warped, frame 0)     # color_coherence: none | lab | hsv | rgb
    warped = adjust_contrast(warped, contrast[i])
    warped = add_noise(warped, noise[i], seed)  # seeded with the frame's seed
    frame  = img2img(warped, strength[i], guidance[i], prompt[i], seed)   # diffusers' strength

``strength`` is diffusers' (0 keeps the warped frame, 1 ignores it); when ``int(steps * strength) < 1`` no
diffusion runs and the frame is ``warped`` itself. Seeds follow ``seed_behavior`` per diffusion slot (see
:func:`sdbatch.animation.frame_seeds`); 3D depth comes from the transformers depth model of the job's
``aux_models["depth"]`` (:mod:`sdbatch.runtime.depth`), predicted on the frame being warped.

``cadence: N > 1`` is Deforum's "turbo" scheme: a diffusion runs on frames ``0, N, 2N, ...`` only. Frame
``j`` of segment ``k`` (``kN <= j < (k+1)N``) blends the two latest diffused images, each warped frame by
frame with the motion of every frame since it was made (in 3D with the depth of the newer one)::

    frame j = (1 - tween) * warped(D[(k-1)N]) + tween * warped(D[kN]),   tween = (j - kN + 1) / N

(segment 0 shows ``D[0]`` warped alone), and ``D[(k+1)N]`` is diffused from frame ``(k+1)N - 1``, which is
``D[kN]`` warped (tween 1). Deforum stops after the last diffusion and drops the frames after it; here that
last segment is emitted too, so there are always ``frames`` frames.

Resume: the first frame not yet saved (for this job) is where rendering continues. Everything before it is
recomputed only from saved PNGs: with cadence 1 the previous frame; with cadence N the segment's start
(``D[kN]`` is diffused again from saved frame ``kN - 1``, then both images are warped up to the resume point).
Both paths run exactly the computation of an uninterrupted run, so a resumed animation ends identical.

Deliberate differences from Deforum: colour coherence always matches frame 0 as saved (Deforum matches the
warped frame 0 from frame 2 on, and the last frame after a resume); noise is numpy white noise seeded with
the frame seed; ``random`` seeds are drawn from a generator seeded with the base seed (recorded per frame);
3D always uses a replicate border (``border: wrap`` applies to 2D).
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any, Iterator

import numpy as np

from ..core.job import Job
from .animate_config import MOTION_2D, MOTION_3D, RENDER_SCHEDULES, AnimateStage, Motion
from .base import Rendered, StageContext
from .diffusion import run_pipeline
from .frames import FrameCounter, encode_frames

__all__ = ["CONFIG", "MOTION_2D", "MOTION_3D", "RENDER_SCHEDULES", "Animation", "AnimateStage", "Motion", "render"]

def render(jobs: list[Job], ctx: StageContext) -> Iterator[Rendered]:
    for job in jobs:
        yield from Animation(job, ctx).run()


def prompt_series(job: Job, frames: int) -> list[str]:
    """The prompt of every frame: ``job.prompt``, or the ``prompts`` keyframes held until the next key
    (before the first key, the first key's prompt: Deforum's ffill + bfill)."""
    keyed = job.params.prompts
    if not keyed:
        return [job.prompt] * frames
    keys = sorted((int(k), v) for k, v in keyed.items())
    out = []
    index = 0
    for i in range(frames):
        while index + 1 < len(keys) and keys[index + 1][0] <= i:
            index += 1
        out.append(keys[index][1])
    return out


class Animation:
    """One animate job: schedules evaluated, state machine over diffusion slots, resumable."""

    def __init__(self, job: Job, ctx: StageContext):
        from ..animation import evaluate_schedule, frame_seeds

        self.job = job
        self.ctx = ctx
        p = job.params
        self.frames = p.frames
        self.fps = float(p.fps)
        self.cadence = p.cadence
        self.mode = p.mode
        self.border = p.border
        self.color = p.color_coherence
        self.steps = p.steps
        self.size = (p.width, p.height)
        if job.seed < 0:
            raise ValueError(f"animate needs a seed >= 0 (got {job.seed})")
        texts = {name: getattr(p, name) for name in RENDER_SCHEDULES}
        for name in MOTION_3D if self.mode == "3d" else MOTION_2D:
            texts[name] = getattr(p.motion, name)
        self.schedules: dict[str, list[float]] = {}
        for name, text in texts.items():
            try:
                self.schedules[name] = evaluate_schedule(text, self.frames)
            except ValueError as exc:  # e.g. "0:(1/(t-3))" at frame 3: name the schedule
                where = f"motion.{name}" if name not in RENDER_SCHEDULES else name
                raise ValueError(f"{where}: {exc}") from None
        self.prompts = prompt_series(job, self.frames)
        self.slots = math.ceil(self.frames / self.cadence)
        self.seeds = frame_seeds(job.seed, p.seed_behavior, self.slots)
        self.input_hashes: list[str] = []
        self.reference: np.ndarray | None = None  # frame 0 as saved: the colour-coherence target
        self._depth_model: Any = None
        self.control: Any = None  # FrameControl while run() renders (sdbatch.stages.video_control)
        self.control_entries: dict[int, list] = {}  # frame -> its saved control images (manifest)

    # ------------------------------------------------------------------------------------------ values
    def value(self, name: str, i: int) -> float:
        v = self.schedules[name][i]
        if name in ("strength", "noise"):
            return min(1.0, max(0.0, v))
        if name == "contrast":
            return max(0.0, v)
        return v

    def schedule_at(self, i: int) -> dict[str, float]:
        return {name: self.value(name, i) for name in self.schedules}

    def runs_diffusion(self, strength: float) -> bool:
        return int(self.steps * strength) >= 1

    # ---------------------------------------------------------------------------------------- pipelines
    def _to_array(self, image: Any) -> np.ndarray:
        return np.array(image.convert("RGB"), dtype=np.uint8)

    def _diffuse(self, task: str, i: int, seed: int, **task_kwargs: Any) -> np.ndarray:
        if self.control:  # frame i's control images: the control video's frame i, or the still
            pipe = self.control.pipeline(task)
            images, self.control_entries[i] = self.control.images(i, None, self.control.decoded_at(i))
            task_kwargs.update(self.control.kwargs(pipe, [images]))
        else:
            pipe = self.ctx.models.pipeline(self.job, task)
        image = run_pipeline(pipe, [self.job], self.ctx, guidance=self.value("guidance", i), prompts=[self.prompts[i]],
                             generator=[self.ctx.generator(seed)], **task_kwargs)[0]
        return self._to_array(image)

    def txt2img(self, i: int, seed: int) -> np.ndarray:
        return self._diffuse("text2img", i, seed, width=self.size[0], height=self.size[1])

    def img2img(self, image: np.ndarray, i: int, seed: int, strength: float) -> np.ndarray:
        from PIL import Image

        return self._diffuse("img2img", i, seed, image=Image.fromarray(image), strength=strength)

    # -------------------------------------------------------------------------------------------- motion
    def depth(self, image: np.ndarray) -> np.ndarray | None:
        if self.mode != "3d":
            return None
        from ..runtime.depth import estimate_depth

        model, processor = self.depth_model()
        return estimate_depth(model, processor, image)

    def depth_model(self) -> tuple[Any, Any]:
        if self._depth_model is None:
            from ..runtime.depth import load_depth_model
            from ..runtime.models import resolve_device

            ref = self.job.aux_models.get("depth")
            if ref is None:
                raise RuntimeError("a 3d animate job has no depth model (aux_models['depth'])")
            device = resolve_device(self.job.device)
            allow_pickle = bool(self.job.options.allow_pickle)
            self._depth_model = self.ctx.models.get_or_load(
                ("depth", ref.identity(), device), lambda: load_depth_model(ref, device, allow_pickle=allow_pickle))
        return self._depth_model

    def warp(self, image: np.ndarray, i: int, depth: np.ndarray | None) -> np.ndarray:
        from ..animation import warp_2d, warp_3d

        v = self.schedules
        try:
            if self.mode == "3d":
                return warp_3d(image, depth,
                               translation=(v["translation_x"][i], v["translation_y"][i], v["translation_z"][i]),
                               rotation_deg=(v["rotation_3d_x"][i], v["rotation_3d_y"][i], v["rotation_3d_z"][i]),
                               fov_deg=v["fov"][i])
            return warp_2d(image, v["angle"][i], v["zoom"][i], v["translation_x"][i], v["translation_y"][i],
                           border=self.border)
        except ValueError as exc:
            raise ValueError(f"frame {i}: motion: {exc}") from None

    # ----------------------------------------------------------------------------------------- diffusion
    def first_frame(self) -> tuple[np.ndarray, bool]:
        """Frame 0 (= the first diffused image): txt2img, or img2img of the init image."""
        seed = self.seeds[0]
        if not self.job.inputs:
            return self.txt2img(0, seed), True
        init = self.load_init()
        strength = self.value("strength", 0)
        if not self.runs_diffusion(strength):
            return init, False
        return self.img2img(init, 0, seed, strength), True

    def load_init(self) -> np.ndarray:
        loaded = self.ctx.load_image(self.job.inputs[0], self.size)
        self.input_hashes = [loaded.sha256]
        return self._to_array(loaded.image)

    def diffuse(self, source: np.ndarray, i: int, seed: int) -> tuple[np.ndarray, bool]:
        """The diffused image of frame ``i`` from the frame before it (as saved)."""
        from ..animation import add_noise, adjust_contrast, match_colors

        image = self.warp(source, i, self.depth(source))
        if self.color != "none":
            assert self.reference is not None
            image = match_colors(image, self.reference, self.color)
        contrast = self.value("contrast", i)
        if contrast != 1.0:
            image = adjust_contrast(image, contrast)
        noise = self.value("noise", i)
        if noise > 0:
            image = add_noise(image, noise, seed)
        strength = self.value("strength", i)
        if not self.runs_diffusion(strength):
            return image, False
        return self.img2img(image, i, seed, strength), True

    # ------------------------------------------------------------------------------------------- resume
    def saved_frames(self) -> tuple[int, dict[int, np.ndarray]]:
        """(first frame not yet saved for this job, {index: pixels} of the saved frames resuming needs)."""
        recent: deque[tuple[int, np.ndarray]] = deque(maxlen=self.cadence)
        first: np.ndarray | None = None
        index = 0
        while index < self.frames:
            image = self.ctx.saved_frame(self.job, self.ctx.frame_path(self.job, index))
            if image is None:
                break
            pixels = self._to_array(image)
            if index == 0:
                first = pixels
            recent.append((index, pixels))
            index += 1
        kept = dict(recent)
        if first is not None:
            kept[0] = first
        return index, kept

    # -------------------------------------------------------------------------------------------- render
    def record(self, i: int, slot: int, diffused: bool, tween: float | None) -> dict[str, Any]:
        extra: dict[str, Any] = {"frame": i, "seed": self.seeds[slot], "prompt": self.prompts[i],
                                 "schedule": self.schedule_at(i), "diffused": diffused}
        if self.cadence > 1:
            extra["keyframe"] = slot * self.cadence
            extra["tween"] = tween
        if diffused and i in self.control_entries:
            extra["controlnet"] = self.control_entries.pop(i)
        return extra

    def run(self) -> Iterator[Rendered]:
        from .video_control import FrameControl

        self.control = FrameControl(self.job, self.ctx, self.size, list(range(self.frames)))
        try:
            yield from self._run()
        finally:
            self.control.close()

    def _run(self) -> Iterator[Rendered]:
        from PIL import Image

        job, ctx, n = self.job, self.ctx, self.cadence
        if job.inputs:
            self.input_hashes = [ctx.load_image(job.inputs[0], self.size).sha256]
        start, saved = self.saved_frames()
        if start > 0:
            self.reference = saved[0]
        progress = FrameCounter(ctx, job, self.frames)
        if start < self.frames:
            progress.rendering(start)
        last: np.ndarray | None = saved.get(start - 1)  # the frame before the next slot's key
        for slot in range(start // n if start < self.frames else self.slots, self.slots):
            key = slot * n
            seed = self.seeds[slot]
            if key == 0:
                if start > 0:
                    newest, diffused = saved[0], False  # frame 0 is D[0] itself
                else:
                    newest, diffused = self.first_frame()
                    self.reference = newest
                older = None
            else:
                older = last if key - 1 >= start else saved[key - 1]
                assert older is not None
                newest, diffused = self.diffuse(older, key, seed)
            for j in range(key, min(key + n, self.frames)):
                tween = (j - key + 1) / n
                advance_newest = j > key
                advance_older = older is not None and tween < 1.0
                if advance_newest or advance_older:
                    depth = self.depth(newest)
                    if advance_older:
                        older = self.warp(older, j, depth)
                    if advance_newest:
                        newest = self.warp(newest, j, depth)
                if older is not None and tween < 1.0:
                    mixed = older.astype(np.float64) * (1.0 - tween) + newest.astype(np.float64) * tween
                    frame = np.clip(np.rint(mixed), 0, 255).astype(np.uint8)
                else:
                    frame = newest
                if j < start:
                    continue  # replaying a segment up to the resume point
                extra = self.record(j, slot, diffused and j == key, tween)
                yield Rendered(job, ctx.frame_path(job, j), Image.fromarray(frame), extra=extra,
                               input_hashes=list(self.input_hashes))
                progress.finished(j)
                last = frame
        video = encode_frames(ctx.out_dir, job, self.frames, self.fps)
        yield Rendered(job, job.output, file=video, extra={"frames": self.frames, "fps": self.fps},
                       input_hashes=list(self.input_hashes))


CONFIG = AnimateStage
