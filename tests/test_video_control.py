"""ControlNet on the video stages (issue 12): restyle with per-frame control (each source frame's canny edges, or
an aligned control video), animate steered by a control video or a still, the control frames saved as artifacts
(``<stage>/control/000042.png``), a killed restyle with cross-frame attention resumed to identical frames, and
a control video shorter than the clip refused at validate.

Every run is ``python -m sdbatch run`` in a fresh process, offline, with the built-in tiny model and the built-in
tiny ControlNet (``sdbatch/tiny-controlnet``, random weights).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import png_pixels, run_cli
from helpers import frame_files, frame_records, kill_run_when, pngs, run_ok

from sdbatch.io.testclips import make_test_clip
from sdbatch.io.video import iter_frames, probe_video

FRAMES, FPS, SIDE = 24, 12, 32

RESTYLE = """\
name: walk
model: sdbatch/tiny-sd
stages:
  - name: anime
    type: restyle
    input: clips/walk.mp4
    prompt: anime style
    strength: 0.5
    steps: 2
    guidance: 0.0
    seed: 5
    seed_behavior: iter
    coherence: {flow: 0.3, cross_frame: true}
    controlnet:
      - {model: sdbatch/tiny-controlnet, preprocess: canny, low: 50, high: 150}
"""

OTHERS = """\
name: others
model: sdbatch/tiny-sd
defaults: {steps: 2, guidance: 0.0, width: 32, height: 32}
stages:
  - name: steered
    type: animate
    prompt: a castle
    frames: 4
    strength: "0:(0.5)"
    controlnet:
      - {model: sdbatch/tiny-controlnet, image: clips/edges.mp4, preprocess: canny, low: 50, high: 150}
  - name: still
    type: animate
    prompt: a castle
    frames: 3
    strength: "0:(0.5)"
    controlnet:
      - {model: sdbatch/tiny-controlnet, image: still.png}
  - name: aligned
    type: restyle
    input: clips/walk.mp4
    start_frame: 20
    strength: 0.5
    controlnet:
      - {model: sdbatch/tiny-controlnet, image: clips/edges.mp4}
"""


def _pixels(path: Path) -> np.ndarray:
    return png_pixels(path, "uint8")


def _frame_records(out: Path, stage: str) -> list[dict]:
    return sorted(frame_records(out, stage), key=lambda r: r["frame"]["index"])


def _canny(frame: np.ndarray) -> np.ndarray:
    from PIL import Image

    from sdbatch.runtime.controlnet import canny

    return np.asarray(canny(Image.fromarray(frame), 50, 150))


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    from PIL import Image

    root = tmp_path_factory.mktemp("video-control")
    make_test_clip(root / "clips" / "walk.mp4", frames=FRAMES, fps=FPS, size=(SIDE, SIDE), audio=True)
    make_test_clip(root / "clips" / "edges.mp4", frames=FRAMES, fps=FPS, size=(48, 48), audio=False)
    make_test_clip(root / "clips" / "short.mp4", frames=6, fps=FPS, size=(SIDE, SIDE), audio=False)
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(root / "still.png")
    (root / "walk.yaml").write_text(RESTYLE)
    (root / "others.yaml").write_text(OTHERS)
    return root


@pytest.fixture(scope="module")
def full_run(project) -> Path:
    out = project / "out-full"
    run_ok(project / "walk.yaml", out)
    return out


def test_restyle_with_per_frame_canny_and_cross_frame(project, full_run):
    mp4 = full_run / "anime" / "anime.mp4"
    info = probe_video(mp4)
    assert (info.frames, info.fps, info.width, info.height, info.has_audio) == (FRAMES, FPS, SIDE, SIDE, True)
    sources = [f for _, f in iter_frames(project / "clips" / "walk.mp4", size=(SIDE, SIDE))]
    controls = pngs(full_run / "anime" / "control")
    assert [p.name for p in controls] == [f"{i:06d}.png" for i in range(FRAMES)]
    for i, path in enumerate(controls):  # each frame's control image: its own source frame's edges
        assert np.array_equal(_pixels(path), _canny(sources[i])), path.name
    records = _frame_records(full_run, "anime")
    assert len(records) == FRAMES
    import hashlib

    for r in records:
        (entry,) = r["controlnet"]
        assert entry["path"] == f"anime/control/{r['frame']['index']:06d}.png" and entry["unit"] == 0
        assert entry["sha256"] == hashlib.sha256((full_run / entry["path"]).read_bytes()).hexdigest()
        assert r["params"]["coherence"]["cross_frame"] is True


def test_killed_controlled_cross_frame_restyle_resumes_to_identical_frames(project, full_run):
    out = project / "out-killed"
    kill_run_when(project / "walk.yaml", out, lambda: len(frame_files(out, "anime")) >= 3, timeout=600)
    done = len(frame_files(out, "anime"))
    assert 3 <= done < FRAMES, done
    assert not (out / "anime" / "anime.mp4").exists()
    run_ok(project / "walk.yaml", out)
    mine, theirs = frame_files(out, "anime"), frame_files(full_run, "anime")
    assert [p.name for p in mine] == [p.name for p in theirs]
    for a, b in zip(mine, theirs):
        assert np.array_equal(_pixels(a), _pixels(b)), a.name
    assert [p.name for p in pngs(out / "anime" / "control")] == [f"{i:06d}.png" for i in range(FRAMES)]
    assert probe_video(out / "anime" / "anime.mp4").frames == FRAMES
    assert probe_video(out / "anime" / "anime.mp4").has_audio


def test_animate_steered_by_a_control_video_or_a_still_and_an_aligned_restyle(project):
    from PIL import Image

    out = project / "out-others"
    run_ok(project / "others.yaml", out)
    edges = [f for _, f in iter_frames(project / "clips" / "edges.mp4", size=(SIDE, SIDE))]

    # animate: frame i is steered by the control video's frame i
    assert probe_video(out / "steered" / "steered.mp4").frames == 4
    controls = pngs(out / "steered" / "control")
    assert [p.name for p in controls] == [f"{i:06d}.png" for i in range(4)]
    for i, path in enumerate(controls):
        assert np.array_equal(_pixels(path), _canny(edges[i])), path.name
    assert all(r["controlnet"][0]["source"] == "clips/edges.mp4" for r in _frame_records(out, "steered"))

    # animate with a still: every frame uses it (resized to the job's size)
    with Image.open(project / "still.png") as im:
        still = np.asarray(im.convert("RGB").resize((SIDE, SIDE), Image.LANCZOS))
    controls = pngs(out / "still" / "control")
    assert len(controls) == 3 and all(np.array_equal(_pixels(p), still) for p in controls)

    # restyle with a control video: source frame j is steered by its frame j (start_frame 20 -> frames 20..23)
    records = _frame_records(out, "aligned")
    assert [r["frame"]["source_frame"] for r in records] == [20, 21, 22, 23]
    for r in records:
        control = _pixels(out / r["controlnet"][0]["path"])
        assert np.array_equal(control, edges[r["frame"]["source_frame"]]), r["path"]


@pytest.mark.parametrize("stage", [
    "{name: r, type: restyle, input: clips/walk.mp4, controlnet: [{model: sdbatch/tiny-controlnet, "
    "image: clips/short.mp4}]}",
    "{name: a, type: animate, prompt: x, frames: 8, controlnet: [{model: sdbatch/tiny-controlnet, "
    "image: clips/short.mp4}]}",
])
def test_a_control_video_shorter_than_the_clip_is_refused_at_validate(project, stage):
    recipe = project / "short.yaml"
    recipe.write_text(f"name: short\nmodel: sdbatch/tiny-sd\nstages:\n  - {stage}\n")
    res = run_cli("validate", recipe, timeout=120)
    assert res.returncode == 2, res.stdout + res.stderr
    (line,) = res.stderr.strip().splitlines()
    assert line.startswith(f"{recipe}:4: ") or line.startswith("short.yaml:4: "), line
    assert ": stages[0].controlnet.0.image: clips/short.mp4 has 6 frames, fewer than " in line, line
    assert "Traceback" not in res.stderr


def test_example_recipe_rehearses_and_a_batched_frame_reproduces(tmp_path):
    """recipes/restyle-control.yaml (per-frame canny, cross-frame attention, frames diffused 4 at a time)
    rehearses offline, and ``reproduce`` of a frame inside a batch re-renders its whole group: ``match``."""
    repo = Path(__file__).resolve().parents[1]
    out = tmp_path / "out"
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    run = subprocess.run([sys.executable, "-m", "sdbatch", "run", str(repo / "recipes" / "restyle-control.yaml"),
                          "--rehearse", "--out", str(out)], capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    records = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    frames = sorted((r for r in records if r.get("role") == "frame"), key=lambda r: r["frame"]["index"])
    assert frames and all(r["options"]["batch_size"] == 4 for r in frames)
    assert (out / "ink" / "control" / "000005.png").is_file()
    again = subprocess.run([sys.executable, "-m", "sdbatch", "reproduce", str(out / frames[5]["path"]), "--out",
                            str(tmp_path / "again")], capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr[-3000:]
    assert again.stdout.strip().splitlines()[-1].startswith("match"), again.stdout
