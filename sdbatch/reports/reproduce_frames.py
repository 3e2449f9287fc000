"""``sdbatch reproduce`` of a video frame (animate, restyle, interpolate): frame N re-rendered from its record
and the saved frames before it, by the stage's own render code.

A video stage renders its frames in order and resumes from the frames an earlier run saved (see
:mod:`sdbatch.stages.frames`); a resumed job renders exactly what an uninterrupted one does. Reproducing
frame N is that resume with frame N left out: the stage runs in a :class:`FrameContext` whose saved frames are
the original folder's frames before N (read as saved, each checked to carry the job's id), and the first
output it yields for frame N is the re-rendered frame. Nothing else is rendered: the stage stops there.

What frame N is made from, per stage:

- ``animate``: the saved frame before it (warped by the motion at N, then noise, contrast, img2img), or with
  ``cadence`` > 1 the frame before its key frame; frame 0 as saved is the colour-coherence reference. Frame 0
  itself is txt2img (or img2img of the ``init`` image, located and checked like any input). 3d: the recorded
  depth model (``params.depth_model``).
- ``restyle``: the source video's frame (``frame.source_frame``), blended with the flow-warped previous
  output frame as saved (``coherence.flow``), colour-matched to frame 0 as saved (``coherence.color``).
- ``interpolate``: no other frame: the slerp of the initial noises of its segment's seeds at its ``t``.

A frame the stage reads that is missing, or is not a frame of this job, stops reproduction (exit 2, naming
it), as does a ControlNet's control video or image whose sha256 is no longer the recorded one; a frame it is
rendered from whose file differs from its manifest line is noted when the pixels differ.
"""

from __future__ import annotations

import time
from pathlib import Path, PurePosixPath
from typing import Any

from ..core.record import OutputRecord
from ..io.artifacts import read_png_record, save_png
from ..io.manifest import MANIFEST_NAME, read_outputs
from ..stages.base import StageContext
from ..stages.frames import frame_path
from .locate import recorded_model
from .provenance import Found, ProvenanceError, short

VIDEO_TYPES = ("restyle", "animate", "interpolate")
INDEPENDENT_FRAMES = ("interpolate", "upscale")  # each frame is made from no other (upscale: from its source frame)
_DONE = object()  # interpolate: an earlier frame is "saved" (frames are independent; nothing is read)


def check_frame_record(found: Found) -> None:
    """A video frame's record names a frame of its job: ``.../frames/<index:06d>.png``, as a PNG."""
    r, name = found.record, found.file.name
    if r.type not in VIDEO_TYPES + INDEPENDENT_FRAMES:
        raise ProvenanceError(f"{name}: a frame of an unknown video stage type {r.type!r}")
    if r.frame is None:
        raise ProvenanceError(f"{name}: the record lacks 'frame'")
    path = PurePosixPath(r.path)
    if found.file.suffix.lower() != ".png" or path.parent.name != "frames" or r.frame.index < 0 or \
            path.name != f"{r.frame.index:06d}.png":
        raise ProvenanceError(f"{name}: the record's path {r.path!r} is not frame {r.frame.index} of a video job "
                              "(<stage>/frames/<index>.png)")


def job_output(record: OutputRecord) -> str:
    """The video a frame belongs to (``<stage>/<stage>.mp4`` or ``<stage>/<slug>/<stage>.mp4``): its frames are in
    ``frames/`` beside it."""
    return str(PurePosixPath(record.path).parent.parent / f"{record.stage}.mp4")


def frame_aux(record: OutputRecord, bases: list[Path]) -> dict[str, Any]:
    """Models a frame's job loads beside its diffusion model: the depth model of a 3d animation."""
    from ..sources.specs import parse_identity

    identity = record.params.get("depth_model") if record.type == "animate" else None
    if not isinstance(identity, str):
        return {}
    return {"depth": recorded_model(*parse_identity(identity), bases, what="depth model")}


def needed_frames(job: Any, index: int) -> set[int]:
    """The frames before ``index`` that its pixels are computed from (the rest are only read)."""
    p = job.params
    if index == 0 or job.type in INDEPENDENT_FRAMES:
        return set()
    if job.type == "animate":
        key = index // p.cadence * p.cadence
        return {key - 1 if key > 0 else 0} | ({0} if p.color_coherence != "none" else set())
    return ({index - 1} if p.coherence.flow > 0 else set()) | ({0} if p.coherence.color != "none" else set())


class FrameContext(StageContext):
    """A stage's context for re-rendering one frame: inputs where reproduce located them, and the frames before
    it as saved in the original frame's folder (never the re-render folder)."""

    def __init__(self, models: Any, out_dir: Path, base_dir: Path, located: dict[str, Path], found: Found, job: Any):
        super().__init__(models, out_dir, base_dir)
        self.located = located
        self.found = found
        self.job = job
        self.index = found.record.frame.index  # type: ignore[union-attr]
        self.target = found.record.path
        self.frames_dir = PurePosixPath(frame_path(job, 0)).parent
        self.needed = needed_frames(job, self.index)
        self.rendered: dict[str, Any] = {}  # an earlier frame the stage rendered anyway (read back by restyle)
        self._hashes: dict[str, str | None] | None = None

    def input_path(self, ref: Any) -> Path:
        """A located input, else a file the stage reads by its recorded sha256 (a control video or image of a
        ControlNet unit, in its params): one that changed since the frame was made stops reproduction."""
        from ..io.hashing import sha256_file

        located = self.located.get(ref.path)
        if located is not None:
            return located
        path = super().input_path(ref)
        if ref.sha256 and not ref.job_id and path.is_file() and sha256_file(path) != ref.sha256:
            raise ProvenanceError(f"{ref.path} has changed since this output was made (sha256 differs from "
                                  f"{short(ref.sha256)}): {path}")
        return path

    def saved_frame(self, job: Any, relpath: str) -> Any:
        if relpath in self.rendered:
            return self.rendered[relpath]
        index = self._before(relpath)
        if job.job_id != self.job.job_id or index is None:
            return None  # frame N itself (to render), or one after it (never reached)
        if job.type in INDEPENDENT_FRAMES:
            return _DONE
        return self._original(relpath, index)

    def frame_exists(self, job: Any, relpath: str) -> bool:
        """The frames before N are reused (read as saved); N itself is rendered."""
        return job.job_id == self.job.job_id and (self._before(relpath) is not None or relpath in self.rendered)

    def _before(self, relpath: str) -> int | None:
        """The index of ``relpath`` when it is a frame of this job before N, else None."""
        path = PurePosixPath(relpath)
        index = int(path.stem) if path.suffix == ".png" and path.stem.isdigit() else None
        if path.parent != self.frames_dir or index is None or index >= self.index or relpath != frame_path(self.job, index):
            return None
        return index

    def _original(self, relpath: str, index: int) -> Any:
        from ..config.images import pil_image
        from ..io.hashing import sha256_file

        path = self.found.file.parent / PurePosixPath(relpath).name
        why = f"frame {self.index} is re-rendered from the saved frames before it"
        if not path.is_file():
            raise ProvenanceError(f"{relpath} not found beside {self.found.file.name} ({why})")
        record = read_png_record(path)
        if not record or record.get("job_id") != self.job.job_id:
            raise ProvenanceError(f"{relpath} is not a frame of this job (its embedded record names another job or "
                                  f"none; {why})")
        recorded = self._manifest_hashes().get(relpath)
        if index in self.needed and recorded and sha256_file(path) != recorded:
            self.found.notes.append(f"{relpath}, which this frame is rendered from, differs from its record in "
                                    f"{MANIFEST_NAME}: it was modified after rendering")
        try:
            with pil_image().open(path) as im:
                im.load()
                return im.convert("RGB")
        except (OSError, ValueError) as exc:
            raise ProvenanceError(f"{relpath}: cannot read it as an image ({exc})") from None

    def _manifest_hashes(self) -> dict[str, str | None]:
        if self._hashes is None:
            out_dir = self.found.out_dir
            records = read_outputs(out_dir / MANIFEST_NAME) if out_dir is not None else []
            self._hashes = {r.path: r.sha256 for r in records if r.job_id == self.job.job_id}
        return self._hashes


def render_frame(worker: Any, found: Found, job: Any) -> Any:
    """Render ``found``'s frame with ``worker`` (its ``ctx`` a :class:`FrameContext`), save it under the context's
    output folder at the record's path, and return the :class:`~sdbatch.runtime.worker.JobResult`. Raises
    :class:`ProvenanceError` for a frame before it that cannot be used."""
    from ..runtime.worker import JobResult, describe_error
    from ..stages import stage_entry

    ctx: FrameContext = worker.ctx
    start = time.perf_counter()
    outputs = stage_entry(job.type)([job], ctx)
    try:
        for item in outputs:
            if item.image is None:
                break  # the job's video: frame N never came
            if item.path == ctx.target:
                record = worker._record(item, time.perf_counter() - start)
                record.sha256 = save_png(ctx.out_dir / item.path, item.image, record.to_json())
                return JobResult(job.job_id, [record], seconds=time.perf_counter() - start)
            ctx.rendered = {item.path: item.image.convert("RGB")}  # a stage that did not skip an earlier frame
    except ProvenanceError:
        raise
    except Exception as exc:  # noqa: BLE001 - reported as a render error (exit 2)
        return JobResult(job.job_id, error=describe_error(exc))
    finally:
        outputs.close()
    return JobResult(job.job_id, error=f"{job.type} job has no frame {ctx.index}")
