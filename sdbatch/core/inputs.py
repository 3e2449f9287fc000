"""What a stage's jobs read and load, resolved for the planner: input images or videos, masks, model sources.

Every file is identified by content (sha256, through the hash cache); an upstream stage's output by the id of
the job that makes it. Never imports torch or diffusers (video probing runs ffmpeg, cached by content).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from ..config.checks import resolve_input_files
from ..config.images import check_image
from ..config.types import IMAGE_SUFFIXES, VIDEO_SUFFIXES
from ..io.hashing import HashCache
from ..sources.specs import pipeline_config_ref, resolve_model
from .job import InputRef, ModelRef

if TYPE_CHECKING:
    from ..config.stage import StageConfig

class Source(NamedTuple):
    """One input of a stage's jobs; ``Source()`` for a stage without one."""

    ref: InputRef | None = None
    seed: int | None = None  # the seed it inherits (an upstream job's)
    size: tuple[int, int] | None = None  # width, height
    frames: int | None = None  # a video's frames


class Inputs:
    """Resolves inputs and model specs relative to the recipe's folder; one instance per plan (caches models).

    ``exclude``: folders a glob's matches never come from (the recipe's outputs), see ``resolve_input_files``.
    """

    def __init__(self, base: Path, hashes: HashCache, rehearse: bool, exclude: Sequence[Path] = ()):
        self.base = base
        self.hashes = hashes
        self.rehearse = rehearse
        self.exclude = tuple(exclude)
        self.models: dict[str, ModelRef] = {}

    def display_path(self, path: Path) -> str:
        try:
            return os.path.relpath(path, self.base)
        except ValueError:
            return str(path)

    def absolute(self, value: str) -> Path:
        path = Path(value).expanduser()
        return path if path.is_absolute() else self.base / path

    # ------------------------------------------------------------------------------------------- files
    def files(self, pattern: str) -> list[Path]:
        """The image files a file / folder / glob names (never from the recipe's output folders)."""
        return resolve_input_files(pattern, self.base, IMAGE_SUFFIXES, self.exclude)

    def image_files(self, pattern: str) -> tuple[list[Source], list[str]]:
        """(a source per readable image, a problem per other file)."""
        sources, problems = [], []
        for path in self.files(pattern):
            size, problem = check_image(path)
            if problem:
                problems.append(f"{self.display_path(path)}: {problem}")
            else:
                sources.append(Source(InputRef(self.display_path(path), self.hashes.file(path)), None, size))
        return sources, problems

    def video_file(self, stage: StageConfig, value: str) -> tuple[Source | None, str | None]:
        """(the video source, None) or (None, the problem)."""
        from ..io.video import VideoError, probe_video_cached, select_frames

        path = self.absolute(value)
        if path.suffix.lower() not in VIDEO_SUFFIXES:
            return None, f"{value}: not a video file (expected {', '.join(sorted(VIDEO_SUFFIXES))})"
        try:
            digest = self.hashes.file(path)
            info = probe_video_cached(path, digest)  # a long video is decoded once, not at every plan
            select_frames(info, *stage.frame_range())
        except VideoError as exc:
            return None, str(exc).replace(str(path), value)
        except OSError as exc:
            return None, f"{value}: cannot read ({exc.strerror or exc})"
        return Source(InputRef(self.display_path(path), digest), None, (info.width, info.height), info.frames), None

    def mask_for(self, stage: StageConfig, source: InputRef | None) -> InputRef | None:
        mask = getattr(stage, "mask", None)
        if mask is None:
            return None
        masks = self.files(mask)
        chosen = masks[0]
        if len(masks) > 1 and source is not None:
            stem = Path(source.path).stem
            chosen = next((m for m in masks if m.stem == stem), masks[0])
        return InputRef(self.display_path(chosen), self.hashes.file(chosen))

    # ------------------------------------------------------------------------------------------ models
    def model(self, spec: str, *, key: str = "", rehearse: bool | None = None) -> ModelRef:
        rehearse = self.rehearse if rehearse is None else rehearse
        key = f"{key}:{spec}:{rehearse}"
        if key not in self.models:
            self.models[key] = resolve_model(spec, self.base, self.hashes, rehearse=rehearse)
        return self.models[key]

    def weights_file(self, spec: str) -> ModelRef:
        key = "file:" + spec
        if key not in self.models:
            path = self.absolute(spec)
            self.models[key] = ModelRef(spec, self.hashes.file(path), "file", str(path))
        return self.models[key]

    def config_ref(self, spec: str) -> ModelRef:
        """Where a single-file model's pipeline configs come from (a hub id is fetched by diffusers: configs only)."""
        return pipeline_config_ref(spec, [self.base])

    def model_sources(self, stage: StageConfig, model: ModelRef, pipeline_config: str | None,
                      fixed: dict[str, Any]) -> dict[str, ModelRef]:
        """LoRAs, embeddings, VAE override and single-file pipeline config: into ``fixed`` (identity) and aux models."""
        aux: dict[str, ModelRef] = {}
        if stage.loras:
            fixed["loras"] = []
            for lora in stage.loras:
                ref = self.weights_file(lora.path)
                aux[f"lora:{ref.revision}"] = ref
                fixed["loras"].append({"path": lora.path, "sha256": ref.revision, "weight": float(lora.weight)})
        if stage.embeddings:  # textual inversion: like LoRAs, by content
            fixed["embeddings"] = []
            for embedding in stage.embeddings:
                ref = self.weights_file(embedding.path)
                aux[f"embedding:{ref.revision}"] = ref
                fixed["embeddings"].append({"path": embedding.path, "token": embedding.name, "sha256": ref.revision})
        if stage.vae:
            aux["vae"] = self.model(stage.vae, key="vae", rehearse=False)
            fixed["vae"] = aux["vae"].identity()
        config = stage.pipeline_config or pipeline_config
        if config and model.source == "file":
            aux["pipeline_config"] = self.config_ref(config)
            fixed["pipeline_config"] = config
        return aux
