"""ControlNet on the video stages (restyle, animate): planning checks and each frame's control images.

A unit's ``image`` (planned by :func:`sdbatch.stages.control.plan_control`, ``video_ok``) is, frame by frame:

* omitted (restyle): the source frame being restyled (``source: input``), resized to the job's size;
* a video (``source: video``): restyle source frame ``j`` is steered by the control video's frame ``j`` (the
  control video is aligned with the source clip, so ``start_frame`` / ``every_nth_frame`` pick the same
  frames of both); animate frame ``i`` by its frame ``i``. A control video with fewer frames than that is
  refused at validate (:func:`check_video_controls`);
* a still image or a folder/glob (``source: files``, the first file): every frame uses it.

Each frame's control image (after resizing and preprocessing, exactly what the pipeline gets) is saved as
``<stage>/control/000042.png`` (unit 0; unit ``u > 0``: ``000042-u.png``), atomically, and the frame's manifest
line lists it (``controlnet: [{unit, path, sha256, source, source_sha256}]``) as an image's does.
"""

from __future__ import annotations

from pathlib import PurePath
from typing import Any

from ..core.job import InputRef, Job


def check_video_controls(stage: Any, planner: Any, fixed: dict[str, Any], needed: int | None) -> None:
    """Refuse a control video with fewer than ``needed`` frames (at its unit's ``image``)."""
    if not needed:
        return
    for i, ref in enumerate(fixed.get("controlnet") or ()):
        if ref.get("source") != "video":
            continue
        source, problem = planner.plan.inputs.video_file(stage, ref["image"])
        frames = source.frames if source is not None else None
        if problem is None and frames is not None and frames < needed:
            planner.problem(("controlnet", i, "image"), f"{ref['image']} has {frames} frames, fewer than the "
                                                        f"{needed} frames it must steer")


def restyle_frames_needed(stage: Any, planner: Any) -> int | None:
    """The source frames a restyle reads up to (its end): what an aligned control video must cover."""
    value = stage.input
    plan = planner.plan
    if value in plan.jobs_by_stage:
        counts = [plan.video_frames.get(job.job_id) for job in plan.jobs_by_stage[value]]
        total = max((c for c in counts if c is not None), default=None)
    else:
        source, problem = plan.inputs.video_file(stage, value)
        total = source.frames if source is not None and problem is None else None
    if total is None:
        return stage.end_frame
    return min(total, stage.end_frame) if stage.end_frame is not None else total


def control_frame_path(job: Job, index: int, unit: int) -> str:
    """``<stage>/control/000042.png`` (``000042-1.png`` for a second unit), beside the job's ``frames/``."""
    suffix = f"-{unit}" if unit else ""
    return (PurePath(job.output).parent / "control" / f"{index:06d}{suffix}.png").as_posix()


class FrameControl:
    """The control images of one video job, frame by frame (see the module's docstring).

    ``indices``: the control video frames the job's frames read, in order (restyle: the kept source frames;
    animate: ``range(frames)``). :meth:`advance` is called once per frame in order (it decodes the control
    videos' next frames); :meth:`images` preprocesses and saves a frame's control images.
    """

    def __init__(self, job: Job, ctx: Any, size: tuple[int, int], indices: list[int], input_sha256: str | None = None):
        from ..io.hashing import sha256_file
        from ..io.video import iter_frames
        from .control import control_file

        self.job, self.ctx, self.size, self.input_sha256 = job, ctx, size, input_sha256
        self.units = list(job.params.controlnet or ())
        self._stills: dict[int, Any] = {}
        self._videos: dict[int, Any] = {}
        self._digests: dict[int, str] = {}
        self._position, self._last = -1, {}
        for u, ref in enumerate(self.units):
            if ref.source not in ("video", "files"):
                continue
            path = control_file(ref, None)  # a still: the pattern's first file
            sha = ref.files[path]
            if ref.source == "files":
                self._stills[u] = ctx.load_image(InputRef(path, sha), size)
                continue
            file = ctx.input_path(InputRef(path, sha))
            self._digests[u] = sha256_file(file)
            if self._digests[u] != sha:
                raise RuntimeError(f"control video {path} changed since the plan was made (sha256 differs); re-run")
            self._videos[u] = iter_frames(file, indices, size=size)

    def __bool__(self) -> bool:
        return bool(self.units)

    def advance(self) -> dict[int, Any]:
        """The control videos' next frames (unit -> HxWx3 uint8), decoded in step with the job's frames."""
        out = {}
        for u, frames in self._videos.items():
            try:
                out[u] = next(frames)[1]
            except StopIteration:
                raise RuntimeError(f"control video {self.units[u].image} ended before the clip") from None
        return out

    def decoded_at(self, index: int) -> dict[int, Any]:
        """:meth:`advance` up to the job's frame ``index`` (never backwards): that frame's control video frames."""
        if index < self._position:
            raise RuntimeError(f"control frames are read in order (frame {index} after {self._position})")
        while self._position < index:
            self._last = self.advance()
            self._position += 1
        return self._last

    def images(self, index: int, frame: Any, decoded: dict[int, Any], save: bool = True) -> tuple[list[Any], list]:
        """(one control image per unit, the manifest entries) of frame ``index``; ``frame``: the frame itself
        (HxWx3 uint8: restyle's source frame) for units without an image; ``decoded``: :meth:`advance`'s."""
        import io

        from PIL import Image

        from ..io.artifacts import atomic_write_bytes
        from ..io.hashing import sha256_bytes
        from ..runtime.controlnet import preprocess

        images, entries = [], []
        for u, ref in enumerate(self.units):
            if ref.source == "files":
                loaded = self._stills[u]
                raw, source, digest = loaded.image, loaded.path, loaded.sha256
            elif ref.source == "video":
                raw, source, digest = Image.fromarray(decoded[u]), next(iter(ref.files)), self._digests[u]
            else:
                if frame is None:
                    raise RuntimeError(f"ControlNet {u} of a {self.job.type} job has no image to read")
                raw, source, digest = Image.fromarray(frame), self.job.inputs[0].path, self.input_sha256
            image = preprocess(self.ctx, self.job, u, ref, raw)
            images.append(image)
            if not save:
                continue
            data = io.BytesIO()
            image.save(data, format="PNG")
            path = control_frame_path(self.job, index, u)
            atomic_write_bytes(self.ctx.out_dir / path, data.getvalue())
            entry = {"unit": u, "path": path, "sha256": sha256_bytes(data.getvalue()), "source": source}
            if digest:
                entry["source_sha256"] = digest
            entries.append(entry)
        return images, entries

    def kwargs(self, pipe: Any, per_frame: list[list[Any]]) -> dict[str, Any]:
        """The ControlNet arguments of one pipeline call over frames (``per_frame[k][unit]``)."""
        from ..runtime.controlnet import Control

        images = [[frame[u] for frame in per_frame] for u in range(len(self.units))]
        return Control([self.job] * len(per_frame), images).kwargs(pipe)

    def pipeline(self, task: str) -> Any:
        from ..runtime.controlnet import control_pipeline

        return control_pipeline(self.ctx, self.job, task)

    def close(self) -> None:
        for frames in self._videos.values():
            frames.close()
