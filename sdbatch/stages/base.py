"""What stage modules receive and return."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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


class StageContext:
    """What a stage needs from the run: the model bank, and where inputs and outputs live."""

    def __init__(self, models: Any, out_dir: Path, base_dir: Path):
        self.models = models
        self.out_dir = out_dir
        self.base_dir = base_dir

    def input_path(self, ref: InputRef) -> Path:
        if ref.job_id:
            return self.out_dir / ref.path
        path = Path(ref.path)
        return path if path.is_absolute() else self.base_dir / path

    def load_image(self, ref: InputRef, size: tuple[int, int] | None = None, mode: str = "RGB") -> LoadedInput:
        """Read an input image (checked against its planned sha256), converted and resized to ``size``.

        ``mode`` "mask" reads a mask (white = repaint; a non-opaque alpha channel is the mask); 16-bit and
        float images are scaled to 8 bits, never clipped (:func:`sdbatch.config.images.to_mode`)."""
        from ..config.images import pil_image, to_mode

        Image = pil_image()  # noqa: N806 - the module, with sdbatch's pixel limit
        path = self.input_path(ref)
        digest = sha256_file(path)
        if ref.sha256 and digest != ref.sha256:
            raise RuntimeError(f"input {ref.path} changed since the plan was made (sha256 differs); re-run")
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
        """The frame as saved by an earlier (possibly killed) run of this same job, or None."""
        return frames.saved_frame(self.out_dir, job, relpath)

    @staticmethod
    def generator(seed: int) -> Any:
        """The CPU generator every job uses, so pixels match plain diffusers on any device."""
        import torch

        return torch.Generator("cpu").manual_seed(seed)
