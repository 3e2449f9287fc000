"""What stage modules receive and return."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..core.job import InputRef, Job
from ..io.hashing import sha256_file
from . import frames


@dataclass
class Rendered:
    """One output of a job: an image to save as PNG, or a finished temp file (e.g. an mp4) to move into place."""

    job: Job
    path: str  # relative to the output folder
    image: Any = None
    file: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # extra manifest fields (frame, schedule values, ...)
    input_hashes: list[str] = field(default_factory=list)  # sha256 of job.inputs (then job.mask) as read


@dataclass
class LoadedInput:
    path: str
    sha256: str
    image: Any  # PIL.Image, RGB


FrameProgress = Callable[[Job, int, int], None]  # (job, frames there, frames in all)


class StageContext:
    """What a stage needs from the run: the model bank, and where inputs and outputs live.

    ``force`` (``run --force``): a video job renders every frame again; a frame saved before this run is never
    reused (:meth:`saved_frame` sees only the frames this run wrote, :meth:`wrote`). ``on_frames``, if set by
    the executor, hears how far a video job is (:meth:`frames_progress`); stages never need it to be set."""

    def __init__(self, models: Any, out_dir: Path, base_dir: Path, force: bool = False):
        self.models = models
        self.out_dir = out_dir
        self.base_dir = base_dir
        self.force = force
        self.on_frames: FrameProgress | None = None
        self._written: set[str] = set()  # frames this run wrote (kept only with force)

    def input_path(self, ref: InputRef) -> Path:
        if ref.job_id:
            return self.out_dir / ref.path
        path = Path(ref.path)
        return path if path.is_absolute() else self.base_dir / path

    def checked_input(self, ref: InputRef) -> tuple[Path, str]:
        """An input's path and sha256, checked against the sha256 the plan recorded."""
        path = self.input_path(ref)
        digest = sha256_file(path)
        if ref.sha256 and digest != ref.sha256:
            raise RuntimeError(f"input {ref.path} changed since the plan was made (sha256 differs); re-run")
        return path, digest

    def load_image(self, ref: InputRef, size: tuple[int, int] | None = None, mode: str = "RGB") -> LoadedInput:
        """Read an input image (checked against its planned sha256), converted and resized to ``size``.

        ``mode`` "mask" reads a mask (white = repaint; a non-opaque alpha channel is the mask); 16-bit and
        float images are scaled to 8 bits, never clipped (:func:`sdbatch.config.images.to_mode`)."""
        from ..config.images import pil_image, to_mode

        Image = pil_image()  # noqa: N806 - the module, with sdbatch's pixel limit
        path, digest = self.checked_input(ref)
        with Image.open(path) as im:
            im.load()
            image = to_mode(im, mode)
        if size is not None and image.size != tuple(size):
            image = image.resize(tuple(size), Image.LANCZOS)
        return LoadedInput(ref.path, digest, image)

    # ---- video stages: frames are outputs too, and resume from what was saved (see .frames)
    @staticmethod
    def frame_path(job: Job, index: int) -> str:
        """``<stage>/frames/000042.png`` (relative to the output folder)."""
        return frames.frame_path(job, index)

    def saved_frame(self, job: Job, relpath: str) -> Any:
        """The frame as saved by an earlier (possibly killed) run of this same job, or None; with ``force``,
        only a frame this run wrote."""
        if self.force and relpath not in self._written:
            return None
        return frames.saved_frame(self.out_dir, job, relpath)

    def frame_exists(self, job: Job, relpath: str) -> bool:
        """Cheap: is there a file a resumed job would (nearly always) reuse? With ``force``, one this run wrote."""
        if self.force:
            return relpath in self._written
        return (self.out_dir / relpath).is_file()

    def wrote(self, relpath: str) -> None:
        """The worker saved ``relpath`` (a frame) in this run."""
        if self.force:
            self._written.add(relpath)

    def frames_progress(self, job: Job, done: int, total: int) -> None:
        """``done`` of the ``total`` frames of ``job`` are saved (a progress display's business, if any)."""
        if self.on_frames is not None:
            self.on_frames(job, done, total)

    @staticmethod
    def generator(seed: int) -> Any:
        """The CPU generator every job uses, so pixels match plain diffusers on any device."""
        import torch

        return torch.Generator("cpu").manual_seed(seed)
