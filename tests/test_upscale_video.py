"""The ``upscale`` stage on videos: a restyle's mp4 and a video file, frame by frame, re-encoded with the sound;
resume from the saved frames; reproduce a frame."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import manifest_records, run_cli
from PIL import Image

pytest.importorskip("spandrel")

FRAMES, FPS, W, H = 6, 12, 32, 24

RECIPE = """\
name: clip
model: sdbatch/tiny-sd
stages:
  - {name: anime, type: restyle, input: clips/walk.mp4, prompt: anime, strength: 0.5, steps: 2, guidance: 0.0}
  - {name: big, type: upscale, input: anime, upscaler: models/tiny-4x.safetensors}
  - {name: first, type: upscale, input: clips/walk.mp4, scale: 2, frames: 3, audio: drop}
"""


@pytest.fixture(scope="module")
def video_run(tmp_path_factory) -> Path:
    from sdbatch.io.video import make_test_clip
    from sdbatch.sources.tiny.upscale import save_tiny_compact

    root = tmp_path_factory.mktemp("upscale-video")
    make_test_clip(root / "clips" / "walk.mp4", frames=FRAMES, fps=FPS, size=(W, H), audio=True)
    save_tiny_compact(root / "models" / "tiny-4x.safetensors")
    (root / "r.yaml").write_text(RECIPE)
    proc = run_cli("run", "r.yaml", cwd=root)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return root


def _frames(path: Path) -> list[np.ndarray]:
    from sdbatch.io.video import iter_frames

    return [frame for _, frame in iter_frames(path)]


def test_a_restyle_video_is_upscaled_frame_by_frame_with_its_sound(video_run):
    import torch
    from spandrel import ModelLoader

    from sdbatch.io.video import probe_video

    out = video_run / "outputs" / "clip"
    info = probe_video(out / "big" / "big.mp4")
    assert (info.width, info.height, info.frames, info.fps, info.has_audio) == (W * 4, H * 4, FRAMES, FPS, True)
    model = ModelLoader().load_from_file(str(video_run / "models" / "tiny-4x.safetensors")).eval()
    for i, frame in enumerate(_frames(out / "anime" / "anime.mp4")):  # what the stage reads: the restyle's mp4
        x = torch.from_numpy(frame.astype(np.float32) / 255).permute(2, 0, 1)[None]
        expected = (model(x)[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        with Image.open(out / "big" / "frames" / f"{i:06d}.png") as im:
            assert (np.asarray(im.convert("RGB")) == expected).all(), i
    records = [r for r in manifest_records(out, "output") if r["stage"] == "big"]
    (video,) = [r for r in records if r["path"] == "big/big.mp4"]
    assert video["video"] == {"frames": FRAMES, "fps": FPS, "audio": True}
    assert sorted(r["frame"]["index"] for r in records if r.get("role") == "frame") == list(range(FRAMES))


def test_a_video_file_first_frames_at_2x_without_sound(video_run):
    from sdbatch.io.video import probe_video

    out = video_run / "outputs" / "clip"
    info = probe_video(out / "first" / "first.mp4")
    assert (info.width, info.height, info.frames, info.has_audio) == (W * 2, H * 2, 3, False)
    source = _frames(video_run / "clips" / "walk.mp4")
    with Image.open(out / "first" / "frames" / "000002.png") as im:
        expected = Image.fromarray(source[2]).resize((W * 2, H * 2), Image.LANCZOS)
        assert (np.asarray(im.convert("RGB")) == np.asarray(expected)).all()


def test_a_killed_upscale_resumes_from_its_saved_frames(video_run, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(video_run, root)
    out = root / "outputs" / "clip"
    frames = out / "big" / "frames"
    kept = {i: (frames / f"{i:06d}.png").stat().st_mtime_ns for i in range(4)}
    for i in (4, 5):
        (frames / f"{i:06d}.png").unlink()
    (out / "big" / "big.mp4").unlink()  # killed before the mp4 was made
    before = len(manifest_records(out, "output"))
    proc = run_cli("run", "r.yaml", cwd=root)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert {i: (frames / f"{i:06d}.png").stat().st_mtime_ns for i in range(4)} == kept  # reused, not rewritten
    new = manifest_records(out, "output")[before:]
    assert sorted(r["path"] for r in new) == ["big/big.mp4", "big/frames/000004.png", "big/frames/000005.png"]
    original = video_run / "outputs" / "clip" / "big" / "frames"
    for i in (4, 5):
        with Image.open(frames / f"{i:06d}.png") as a, Image.open(original / f"{i:06d}.png") as b:
            assert (np.asarray(a) == np.asarray(b)).all()


def test_reproduce_and_verify_upscaled_frames(video_run):
    out = video_run / "outputs" / "clip"
    for frame in (out / "big" / "frames" / "000003.png", out / "first" / "frames" / "000001.png"):
        proc = run_cli("reproduce", frame, cwd=video_run)
        assert proc.returncode == 0 and proc.stdout.startswith("match"), proc.stdout + proc.stderr
    proc = run_cli("verify", "r.yaml", cwd=video_run)
    assert proc.returncode == 0 and "all match" in proc.stdout, proc.stdout + proc.stderr
