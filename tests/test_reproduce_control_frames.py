"""``sdbatch reproduce`` of a ControlNet-steered restyle frame (issue 12), end to end as a user runs it.

A restyle with per-frame canny control (each source frame's edges, flow blending the previous output in) and
one steered by an aligned control video are run (``python -m sdbatch run``, offline, the built-in tiny model and
``sdbatch/tiny-controlnet``); ``reproduce <frame png>`` re-renders a frame in the middle of each clip from its
record alone and says ``match``. Then the control video is replaced by another clip: reproduce refuses, naming
the control video and that its sha256 is not the recorded one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sdbatch.io.testclips import make_test_clip

FRAMES, FPS, SIDE = 6, 12, 32
FRAME = 3  # a frame with frames before it: flow reads frame 2 as saved

RECIPE = """\
name: steer
model: sdbatch/tiny-sd
defaults: {steps: 2, guidance: 0.0, strength: 0.5, seed: 5}
stages:
  - name: edges
    type: restyle
    input: clips/walk.mp4
    prompt: ink drawing
    coherence: {flow: 0.3}
    controlnet:
      - {model: sdbatch/tiny-controlnet, preprocess: canny, low: 50, high: 150}
  - name: guided
    type: restyle
    input: clips/walk.mp4
    prompt: ink drawing
    coherence: {flow: 0.3}
    controlnet:
      - {model: sdbatch/tiny-controlnet, image: clips/control.mp4, preprocess: canny, low: 50, high: 150,
         scale: 0.8}
"""


def _sdbatch(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sdbatch", *map(str, args)], capture_output=True, text=True,
                          timeout=600, env=dict(os.environ, HF_HUB_OFFLINE="1"))


def _frames(out: Path, stage: str) -> list[dict]:
    records = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines() if line.strip()]
    return sorted((r for r in records if r.get("kind") == "output" and r.get("stage") == stage
                   and r.get("role") == "frame"), key=lambda r: r["frame"]["index"])


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("reproduce-control")
    make_test_clip(root / "clips" / "walk.mp4", frames=FRAMES, fps=FPS, size=(SIDE, SIDE), audio=False)
    make_test_clip(root / "clips" / "control.mp4", frames=FRAMES, fps=FPS, size=(48, 48), audio=False)
    (root / "steer.yaml").write_text(RECIPE)
    res = _sdbatch("run", root / "steer.yaml", "--out", root / "out")
    assert res.returncode == 0, res.stderr[-3000:]
    return root


@pytest.mark.parametrize("stage,source", [("edges", "clips/walk.mp4"), ("guided", "clips/control.mp4")])
def test_reproduce_of_a_controlled_restyle_frame_matches(run, tmp_path, stage, source):
    frames = _frames(run / "out", stage)
    assert len(frames) == FRAMES
    record = frames[FRAME]
    (entry,) = record["controlnet"]  # the frame's control image, saved, from the source frame / control video
    assert entry["path"] == f"{stage}/control/{FRAME:06d}.png" and (run / "out" / entry["path"]).is_file()
    assert entry["source"] == source
    res = _sdbatch("reproduce", run / "out" / record["path"], "--out", tmp_path / "again")
    assert res.returncode == 0, res.stdout + res.stderr[-3000:]
    assert res.stdout.strip().splitlines()[-1].startswith("match"), res.stdout
    assert (tmp_path / "again" / record["path"]).is_file()


def test_reproduce_names_a_changed_control_video(run, tmp_path):
    record = _frames(run / "out", "guided")[FRAME]
    video = run / "clips" / "control.mp4"
    kept = video.read_bytes()
    try:
        make_test_clip(video, frames=FRAMES, fps=FPS, size=(40, 40), audio=False)  # another clip, same name
        res = _sdbatch("reproduce", run / "out" / record["path"], "--out", tmp_path / "again")
    finally:
        video.write_bytes(kept)
    assert res.returncode == 2, res.stdout + res.stderr
    text = res.stdout + res.stderr
    record_sha = record["params"]["controlnet"][0]["files"]["clips/control.mp4"]
    assert f"clips/control.mp4 has changed since this output was made (sha256 differs from {record_sha[:12]})" \
        in text, text
    assert "Traceback" not in text and "RuntimeError" not in text and "re-run" not in text
    assert not (tmp_path / "again" / record["path"]).exists()
