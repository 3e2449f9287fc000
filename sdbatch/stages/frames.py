"""What the video stages (animate, interpolate, restyle) share: their frames, and the video made of them.

Frames are outputs too (``<stage>/frames/000042.png``, one manifest line each), and a job resumes from the
frames an earlier run of it saved. When every frame exists, :func:`encode_frames` encodes them into a temp
file beside the job's output, which the worker moves into place (one rename).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..core.job import Job
from ..io.artifacts import read_png_record, temp_path_for
from ..io.encode import write_video
from ..io.ffmpeg import PathLike


def frame_path(job: Job, index: int) -> str:
    """``<stage>/frames/000042.png`` (relative to the output folder)."""
    return f"{job.frames_dir}/{index:06d}.png"


def saved_frame(out_dir: Path, job: Job, relpath: str) -> Any:
    """The frame (an RGB PIL image) as saved by an earlier (possibly killed) run of this same job, or None.

    Coherent stages continue from the saved PNG, which is what makes a resumed run identical to an
    uninterrupted one.
    """
    from PIL import Image

    path = out_dir / relpath
    if not path.is_file():
        return None
    record = read_png_record(path)
    if not record or record.get("job_id") != job.job_id:
        return None
    with Image.open(path) as im:
        im.load()
        return im.convert("RGB")


class FrameCounter:
    """A video job's progress, told to the run (:meth:`StageContext.frames_progress`): once when the first
    frame this run renders begins (with how many frames come before it), then after each frame. Frames
    reused before that are not told one by one, so an ETA counts only frames that were rendered."""

    def __init__(self, ctx: Any, job: Job, total: int):
        self.ctx, self.job, self.total = ctx, job, total
        self.begun = False

    def rendering(self, index: int) -> None:
        """Frame ``index`` is about to be rendered."""
        if not self.begun:
            self.begun = True
            self.ctx.frames_progress(self.job, index, self.total)

    def finished(self, index: int) -> None:
        """Frame ``index`` is saved (rendered, or reused after the first render)."""
        if self.begun:
            self.ctx.frames_progress(self.job, index + 1, self.total)


def temp_output(out_dir: Path, job: Job) -> Path:
    """A temp file beside the job's final output (``.<name>.tmp-<pid>-<rand>``: the runner's temp-file
    cleanup removes it if the run is killed), renamed into place by the worker."""
    final = out_dir / job.output
    final.parent.mkdir(parents=True, exist_ok=True)
    return temp_path_for(final)


def encode_frames(out_dir: Path, job: Job, count: int, fps: float, audio_from: PathLike | None = None,
                  audio_start: float = 0.0, audio_duration: float | None = None) -> Path:
    """Encode frames ``0 .. count-1`` of ``job`` (H.264, the container by ``job.output``'s suffix, with the
    trimmed sound of ``audio_from`` if given: see :func:`sdbatch.io.encode.write_video`) into a temp file
    for the worker to move into place; on an error no temp file is left."""
    paths = [out_dir / frame_path(job, i) for i in range(count)]
    tmp = temp_output(out_dir, job)
    write_video(paths, tmp, fps, audio_from, audio_start, audio_duration, final=out_dir / job.output)
    return tmp
