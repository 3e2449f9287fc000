"""Issue 10, item 12: ``run --force`` renders the frames of video stages (animate, interpolate, restyle) again,
never reusing a frame saved before; the forced run records each frame once, and the video is encoded from
the new frames."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import manifest_records, png_pixels, run_cli
from helpers import frame_files, video_project
from PIL import Image

from sdbatch.io.artifacts import png_bytes, read_png_record
from sdbatch.io.video import iter_frames

RECIPE = """\
name: clips
model: sdbatch/tiny-sd
defaults: {steps: 2, width: 32, height: 32}
stages:
  - {name: anim, type: animate, prompt: a lighthouse, frames: 3, strength: "0:(0.5)", seed: 4}
  - {name: dream, type: interpolate, prompt: a castle, seeds: [1, 2], frames: 3}
  - {name: re, type: restyle, input: clips/walk.mp4, prompt: ink, strength: 0.5, coherence: {flow: 0.5}}
"""
STAGES = {"anim": 3, "dream": 3, "re": 3}


def this_run(out: Path) -> list[dict]:
    """The manifest's output lines written by the latest run."""
    records = manifest_records(out)
    start = max(i for i, r in enumerate(records) if r.get("kind") == "run" and r["event"] == "start")
    return [r for r in records[start:] if r.get("kind") == "output"]


def paint_over(path: Path) -> np.ndarray:
    """Invert a saved frame's pixels but keep its embedded record: exactly what a resumed job would reuse."""
    record = read_png_record(path)
    assert record is not None
    painted = 255 - png_pixels(path).astype(np.uint8)
    path.write_bytes(png_bytes(Image.fromarray(painted), record))
    return painted


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return video_project(tmp_path_factory.mktemp("force"), RECIPE)


def test_force_renders_every_video_frame_again_and_records_each_once(project):
    out = project / "out"
    first = run_cli("run", project / "clips.yaml", "--out", out)
    assert first.returncode == 0, first.stdout + first.stderr
    original = {stage: [png_pixels(p) for p in frame_files(out, stage)] for stage in STAGES}
    assert {stage: len(frames) for stage, frames in original.items()} == STAGES
    before = {p: p.stat().st_mtime_ns for stage in STAGES for p in frame_files(out, stage)}
    painted = {stage: paint_over(frame_files(out, stage)[1]) for stage in STAGES}

    forced = run_cli("run", project / "clips.yaml", "--out", out, "--force")
    assert forced.returncode == 0, forced.stdout + forced.stderr
    for stage, count in STAGES.items():
        files = frame_files(out, stage)
        assert len(files) == count
        for path, pixels in zip(files, original[stage], strict=True):
            assert path.stat().st_mtime_ns != before[path], f"{path} was not written again"
            assert np.array_equal(png_pixels(path), pixels), f"{path}: not the frame the stage renders"
        # the video is made of the new frames: its frame 1 is the real one, not the painted-over file
        mp4 = next(r["path"] for r in this_run(out) if r["stage"] == stage and r["role"] == "video")
        decoded = [np.asarray(f, dtype=np.int16) for _j, f in iter_frames(out / mp4, [1])][0]
        real = np.abs(decoded - original[stage][1]).mean()
        fake = np.abs(decoded - painted[stage].astype(np.int16)).mean()
        assert real < fake, (stage, real, fake)

    records = this_run(out)
    for stage, count in STAGES.items():
        frames = [r["path"] for r in records if r["stage"] == stage and r["role"] == "frame"]
        assert sorted(frames) == [f"{stage}/frames/{i:06d}.png" for i in range(count)], frames  # each once
        assert len([r for r in records if r["stage"] == stage and r["role"] == "video"]) == 1
    assert "9 frames rendered (3 videos)" in forced.stdout, forced.stdout

    again = run_cli("run", project / "clips.yaml", "--out", out)  # everything is done and recorded as written
    assert again.returncode == 0, again.stderr
    assert "nothing to do: 3 job(s) already done" in again.stdout, again.stdout
