"""sdbatch.stages.frames: what the video stages share (frame files, resuming from them, encoding them)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from sdbatch.io.artifacts import TEMP_MARK, move_into_place, save_png
from sdbatch.io.video import VideoError, probe_video
from sdbatch.stages import frames


@dataclass
class _Job:  # what frames.py reads of a Job
    job_id: str
    output: str

    @property
    def frames_dir(self) -> str:
        return str(Path(self.output).parent / "frames")


def _save_frames(out: Path, job: _Job, count: int, size=(32, 24)) -> None:
    from PIL import Image

    for i in range(count):
        pixels = np.full((size[1], size[0], 3), 20 * i, np.uint8)
        save_png(out / frames.frame_path(job, i), Image.fromarray(pixels), {"job_id": job.job_id, "frame": i})


def test_frame_path_and_saved_frame(tmp_path):
    job = _Job("a" * 64, "dream/dream.mp4")
    assert frames.frame_path(job, 42) == "dream/frames/000042.png"
    _save_frames(tmp_path, job, 2)
    image = frames.saved_frame(tmp_path, job, frames.frame_path(job, 1))
    assert image.mode == "RGB" and np.asarray(image)[0, 0, 0] == 20
    assert frames.saved_frame(tmp_path, job, frames.frame_path(job, 2)) is None  # not saved yet
    other = _Job("b" * 64, job.output)
    assert frames.saved_frame(tmp_path, other, frames.frame_path(other, 1)) is None  # another job's file


def test_encode_frames_is_renamed_once_by_the_worker(tmp_path, monkeypatch):
    job = _Job("c" * 64, "walk/walk.mp4")
    _save_frames(tmp_path, job, 5)
    renames: list[tuple[str, str]] = []
    real_replace = os.replace

    def counting(src, dst):
        renames.append((os.fspath(src), os.fspath(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", counting)
    monkeypatch.setattr(os, "rename", counting)
    tmp = frames.encode_frames(tmp_path, job, 5, 12.0)
    assert renames == []  # written straight into the temp file
    assert tmp.parent == tmp_path / "walk" and tmp.name.startswith(".walk.mp4") and TEMP_MARK in tmp.name
    assert sorted(p.name for p in tmp.parent.iterdir()) == sorted(["frames", tmp.name])
    final = tmp_path / job.output
    move_into_place(tmp, final)  # what the worker does with Rendered.file
    assert renames == [(str(tmp), str(final))]
    info = probe_video(final)
    assert (info.frames, info.width, info.height, info.fps, info.has_audio) == (5, 32, 24, 12.0, False)


def test_encode_frames_error_leaves_no_temp_file(tmp_path):
    job = _Job("d" * 64, "walk/walk.mp4")
    _save_frames(tmp_path, job, 3)
    with pytest.raises(VideoError, match="000003.png: cannot read frame image"):
        frames.encode_frames(tmp_path, job, 4, 12.0)  # frame 3 is missing
    assert sorted(p.name for p in (tmp_path / "walk").iterdir()) == ["frames"]
