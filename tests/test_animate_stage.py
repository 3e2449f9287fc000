"""The animate stage end to end, through the CLI as a user runs it: Deforum's 2D warp of the saved previous
frame, a 3D recipe rehearsed offline with a transformers depth model, a killed run that resumes to the same
frames (cadence 1, and Deforum's turbo cadence in 2D and 3D), and bad recipes refused with the field named.

To stay fast on 2 cores, one recipe holds every animation the resume test needs; the uninterrupted
("reference") run of it is shared by the tests of this module.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import REPO, manifest_records, output_pngs, png_pixels, run_cli

from sdbatch.animation import evaluate_schedule
from sdbatch.io.hashing import sha256_file

W, H = 64, 48  # not square: catches a swapped (W // 2, H // 2) centre

RECIPE = f"""\
name: anim
model: sdbatch/tiny-sd
defaults: {{width: {W}, height: {H}, seed: 7}}
stages:
  # strength 0: frame 0 is the init image, every later frame the warped previous frame: no diffusion at all
  - name: still
    type: animate
    init: start.png
    frames: 5
    fps: 10
    steps: 2
    prompts: {{0: a forest, 3: a castle}}
    strength: "0:(0)"
    noise: "0:(0)"
    contrast: "0:(1)"
    guidance: "0:(7), 4:(5)"
    color_coherence: none
    motion: {{angle: "0:(0), 4:(8)", zoom: "0:(1.04)", translation_x: "0:(2.5)", translation_y: "0:(-1.5)"}}
  # every frame diffused (4 steps x 0.5), with noise, contrast and colour coherence: the run that is killed
  - name: fly
    type: animate
    frames: 8
    fps: 10
    steps: 4
    prompt: a forest
    strength: "0:(0.5)"
    noise: "0:(0.04)"
    contrast: "0:(1.02)"
    color_coherence: lab
    motion: {{angle: "0:(1.5)", zoom: "0:(1.03)", translation_x: "0:(1)"}}
  # Deforum's turbo: diffuse frames 0, 3, 6; blend in between
  - name: flat
    type: animate
    frames: 7
    fps: 10
    steps: 2
    prompt: a castle
    seed_behavior: ladder
    strength: "0:(0.5)"
    noise: "0:(0.03)"
    color_coherence: rgb
    cadence: 3
    border: wrap
    motion: {{zoom: "0:(1.05)", translation_y: "0:(2)"}}
  - name: deep
    type: animate
    mode: 3d
    frames: 7
    fps: 10
    steps: 2
    prompt: a canyon
    strength: "0:(0.5)"
    noise: "0:(0.03)"
    color_coherence: hsv
    cadence: 3
    depth_model: sdbatch/tiny-depth
    motion: {{translation_x: "0:(3)", translation_z: "0:(8)", rotation_3d_y: "0:(1.5)", fov: "0:(50)"}}
"""
FRAMES = {"still": 5, "fly": 8, "flat": 7, "deep": 7}


def frame_records(out: Path, stage: str) -> list[dict]:
    records = [r for r in manifest_records(out, "output") if r["stage"] == stage and r["role"] == "frame"]
    return sorted(records, key=lambda r: r["frame"]["index"])


def visible_pngs(folder: Path) -> list[Path]:
    return [p for p in folder.glob("*.png") if not p.name.startswith(".")] if folder.is_dir() else []


def start_image():
    """A structured picture (gradients, shapes, text) at another size than the animation's."""
    from PIL import Image, ImageDraw

    y, x = np.mgrid[0:75, 0:100]
    pixels = np.stack([x * 2.5, y * 3.3, (x + y) * 1.4], axis=-1).clip(0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    draw.ellipse((20, 10, 55, 45), fill=(250, 240, 40))
    draw.rectangle((60, 40, 90, 70), fill=(30, 40, 200))
    draw.text((8, 55), "sdbatch", fill=(255, 255, 255))
    return image


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("anim")
    recipe = folder / "anim.yaml"
    recipe.write_text(RECIPE)
    start_image().save(folder / "start.png")
    out = folder / "reference"
    result = run_cli("run", recipe, "--out", out)
    assert result.returncode == 0, result.stderr
    return recipe, out


# ------------------------------------------------------------------------------------------------- 2D
def deforum_matrix(angle: float, zoom: float, tx: float, ty: float) -> np.ndarray:
    """Deforum's anim_frame_warp_2d matrix, built here independently of sdbatch."""
    rot = np.vstack([cv2.getRotationMatrix2D((W // 2, H // 2), angle, zoom), [0, 0, 1]])
    trans = np.array([[1, 0, tx], [0, 1, ty], [0, 0, 1]], dtype=np.float64)
    return rot @ trans


def test_2d_frames_are_deforum_warps_of_the_saved_previous_frame(reference):
    from PIL import Image

    from sdbatch.animation import matrix_2d, warp_2d

    _recipe, out = reference
    frames = frame_records(out, "still")
    assert [r["path"] for r in frames] == [f"still/frames/{i:06d}.png" for i in range(5)]
    assert [r["frame"]["seed"] for r in frames] == [7, 8, 9, 10, 11]  # seed_behavior iter
    assert [r["frame"]["prompt"] for r in frames] == ["a forest"] * 3 + ["a castle"] * 2
    assert not any(r["frame"]["diffused"] for r in frames)
    init = np.asarray(start_image().resize((W, H), Image.LANCZOS), dtype=np.int16)
    assert np.array_equal(png_pixels(out / frames[0]["path"]), init), "strength 0: frame 0 is the init image"
    assert frames[0]["inputs"] == [{"path": "start.png", "sha256": sha256_file(_recipe.parent / "start.png")}]
    angles = evaluate_schedule("0:(0), 4:(8)", 5)
    guidance = evaluate_schedule("0:(7), 4:(5)", 5)
    margin = 8
    for prev, record in zip(frames, frames[1:]):
        i, s = record["frame"]["index"], record["frame"]["schedule"]
        assert s["angle"] == pytest.approx(angles[i]) and s["zoom"] == pytest.approx(1.04)
        assert (s["translation_x"], s["translation_y"]) == (2.5, -1.5)
        assert s["guidance"] == pytest.approx(guidance[i]) and s["strength"] == 0 and s["noise"] == 0
        matrix = deforum_matrix(s["angle"], s["zoom"], s["translation_x"], s["translation_y"])
        assert np.allclose(matrix_2d(W, H, s["angle"], s["zoom"], s["translation_x"], s["translation_y"]), matrix,
                           rtol=0, atol=1e-12)
        before = png_pixels(out / prev["path"]).astype(np.uint8)
        expected = cv2.warpPerspective(before, matrix, (W, H), borderMode=cv2.BORDER_REPLICATE)
        assert np.array_equal(warp_2d(before, s["angle"], s["zoom"], s["translation_x"], s["translation_y"]), expected)
        got = png_pixels(out / record["path"])
        diff = np.abs(got - expected.astype(np.int16))[margin:-margin, margin:-margin]
        assert diff.mean() < 3, f"frame {i} is not Deforum's warp of frame {i - 1} (mean diff {diff.mean():.2f})"
        assert np.abs(got - before.astype(np.int16)).mean() > 1, f"frame {i} did not move"


def test_every_animation_has_its_frames_and_an_mp4(reference):
    from sdbatch.io.video import probe_video

    _recipe, out = reference
    for stage, count in FRAMES.items():
        assert [r["frame"]["index"] for r in frame_records(out, stage)] == list(range(count))
        video = [r for r in manifest_records(out, "output") if r["path"] == f"{stage}/{stage}.mp4"]
        assert len(video) == 1 and video[0]["sha256"] == sha256_file(out / video[0]["path"])
        info = probe_video(out / video[0]["path"])
        assert (info.frames, info.width, info.height) == (count, W, H) and info.fps == pytest.approx(10)
    fly = frame_records(out, "fly")
    assert all(r["frame"]["diffused"] for r in fly) and [r["frame"]["seed"] for r in fly] == list(range(7, 15))
    assert {"strength", "noise", "contrast", "guidance", "angle", "zoom"} <= set(fly[3]["frame"]["schedule"])
    for stage in ("flat", "deep"):  # cadence 3: diffusion slots 0, 3, 6, each with the slot's seed
        records = frame_records(out, stage)
        assert [r["frame"]["keyframe"] for r in records] == [0, 0, 0, 3, 3, 3, 6]
        assert [r["frame"]["diffused"] for r in records] == [True, False, False, True, False, False, True]
        assert [r["frame"]["tween"] for r in records] == pytest.approx([1 / 3, 2 / 3, 1, 1 / 3, 2 / 3, 1, 1 / 3])
    assert [r["frame"]["seed"] for r in frame_records(out, "flat")] == [7, 7, 7, 9, 9, 9, 8]  # ladder
    assert frame_records(out, "deep")[0]["params"]["depth_model"].startswith("builtin:sdbatch/tiny-depth@")
    assert "fov" in frame_records(out, "deep")[1]["frame"]["schedule"]
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]


# ------------------------------------------------------------------------------------------------- 3D
def test_3d_recipe_rehearses_offline_with_a_transformers_depth_model(tmp_path):
    from sdbatch.io.video import probe_video

    recipe = REPO / "recipes" / "animate-3d.yaml"
    text = recipe.read_text()
    assert text.startswith("# yaml-language-server: $schema=../docs/recipe.schema.json")
    assert "depth_model: depth-anything/Depth-Anything-V2-Small-hf" in text and "mode: 3d" in text
    assert "model: stabilityai/sd-turbo" in text
    out = tmp_path / "out"
    result = run_cli("run", recipe, "--rehearse", "--out", out, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    frames = frame_records(out, "drift")
    assert [r["frame"]["index"] for r in frames] == list(range(12))  # --rehearse caps frames
    assert frames[0]["params"]["depth_model"].startswith("builtin:sdbatch/tiny-depth@")
    assert frames[0]["model"]["id"] == "sdbatch/tiny-sd"
    schedule = frames[1]["frame"]["schedule"]
    assert {"translation_z", "rotation_3d_x", "rotation_3d_y", "rotation_3d_z", "fov"} <= set(schedule)
    assert all(r["params"]["width"] <= 64 and r["params"]["height"] <= 64 for r in frames)
    pixels = [png_pixels(out / r["path"]) for r in frames]
    assert all(np.abs(a - b).mean() > 0.5 for a, b in zip(pixels, pixels[1:])), "the camera did not move"
    assert probe_video(out / "drift/drift.mp4").frames == 12


def test_depth_loading_and_estimation_on_tiny_models(tmp_path):
    from sdbatch.animation import warp_3d
    from sdbatch.core.job import ModelRef
    from sdbatch.runtime.depth import depth_kind, estimate_depth, load_depth_model, to_deforum_depth
    from sdbatch.sources.tiny import BUILTIN_MODELS, save_tiny_depth

    folder = save_tiny_depth(tmp_path / "my-depth", seed=3)  # a user's local transformers folder
    rgb = np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)
    builtin = ModelRef("sdbatch/tiny-depth", BUILTIN_MODELS["sdbatch/tiny-depth"], "builtin")
    for source in (builtin, str(folder)):
        model, processor = load_depth_model(source)
        assert depth_kind(model) == "relative"
        depth = estimate_depth(model, processor, rgb)
        assert depth.shape == (H, W) and depth.dtype == np.float64
        assert np.isfinite(depth).all() and depth.min() >= 10 / 19 - 1e-9 and depth.max() <= 50 / 19 + 1e-9
        assert np.array_equal(depth, estimate_depth(model, processor, rgb)), "depth must be deterministic"
        assert warp_3d(rgb, depth, translation=(3, 0, 5), rotation_deg=(0, 1, 0)).shape == rgb.shape
    # units: relative disparity -> Deforum's (50 - d) / 19 with d normalised to [0, 40]; metric metres as is
    assert np.allclose(to_deforum_depth(np.array([[1.0, 3.0]])), [[50 / 19, 10 / 19]])
    assert np.allclose(to_deforum_depth(np.zeros((2, 2))), 30 / 19)
    assert to_deforum_depth(np.array([[0.0, 7.5]]), "metric").tolist() == [[0.05, 7.5]]


# --------------------------------------------------------------------------------------------- resume
def copy_partial(reference: Path, out: Path, stage: str, count: int) -> None:
    """What a run killed just after saving frame ``count - 1`` of ``stage`` leaves: those frames, recorded."""
    keep = {f"{stage}/frames/{i:06d}.png" for i in range(count)}
    (out / stage / "frames").mkdir(parents=True, exist_ok=True)
    for rel in keep:
        (out / rel).write_bytes((reference / rel).read_bytes())
    lines = [line for line in (reference / "manifest.jsonl").read_text().splitlines()
             if json.loads(line).get("path") in keep and json.loads(line).get("kind") == "output"]
    with open(out / "manifest.jsonl", "a") as fh:
        fh.write("\n".join(lines) + "\n")


def test_killed_animation_resumes_to_identical_frames(reference, tmp_path):
    recipe, ref = reference
    out = tmp_path / "killed"
    out.mkdir()
    # the turbo animations resume inside a segment (D[3] is diffused again from the saved frame 2)
    copy_partial(ref, out, "flat", 5)
    copy_partial(ref, out, "deep", 4)
    proc = subprocess.Popen([sys.executable, "-m", "sdbatch", "run", str(recipe), "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and len(visible_pngs(out / "fly/frames")) < 3:
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 3 <= len(visible_pngs(out / "fly/frames")) < FRAMES["fly"] and not (out / "fly/fly.mp4").exists()

    result = run_cli("run", recipe, "--out", out)
    assert result.returncode == 0, result.stderr
    expected, got = output_pngs(ref), output_pngs(out)
    assert set(got) == set(expected) and len(expected) == sum(FRAMES.values())
    for rel, path in expected.items():
        assert np.array_equal(png_pixels(path), png_pixels(got[rel])), f"{rel} differs after resuming"
    outputs = manifest_records(out, "output")
    videos = [f"{stage}/{stage}.mp4" for stage in FRAMES]
    assert sorted(r["path"] for r in outputs) == sorted(list(expected) + videos), "one manifest line per output"
    for record in outputs:
        assert sha256_file(out / record["path"]) == record["sha256"]
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name], "temp files left behind"


# ----------------------------------------------------------------------------------------- validation
BAD_VALUES = [  # (stage lines, the field the error must name)
    ("frames: 0", "frames"),
    ("frames: many", "frames"),
    ("fps: 0", "fps"),
    ("fps: 1000", "fps"),
    ("mode: 4d", "mode"),
    ("cadence: 0", "cadence"),
    ("seed_behavior: sometimes", "seed_behavior"),
    ("color_coherence: sepia", "color_coherence"),
    ("border: mirror", "border"),
    ("strength: \"0:(1\"", "strength"),
    ("noise: \"0:(0.1), 10:(os.system('x'))\"", "noise"),
    ("guidance: \"0:(7) 5:(3)\"", "guidance"),
    ("contrast: \"0:(1/0)\"", "contrast"),
    ("motion: {zoom: \"0:(__import__('os'))\"}", "motion.zoom"),
    ("motion: {angle: \"0:(t\"}", "motion.angle"),
    ("motion: {translation_x: \"0:(lambda: 1)\"}", "motion.translation_x"),
    ("motion: {rotation_3d_x: \"0:(1), x:(2)\"}", "motion.rotation_3d_x"),
    ("motion: {tilt: \"0:(1)\"}", "motion.tilt"),
]


def test_bad_values_are_refused_with_the_field_named(tmp_path):
    stages = []
    for i, (line, _field) in enumerate(BAD_VALUES):
        stage = [f"  - name: s{i}", "    type: animate", "    prompt: a forest", f"    {line}"]
        if not line.startswith("frames:"):
            stage.append("    frames: 10")
        stages.extend(stage)
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("model: sdbatch/tiny-sd\nstages:\n" + "\n".join(stages) + "\n")
    result = run_cli("validate", recipe)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    for i, (_line, field) in enumerate(BAD_VALUES):
        assert f"stages[{i}].{field}:" in result.stderr, f"stages[{i}].{field} not named:\n{result.stderr}"


def test_the_example_recipes_validate():
    for name in ("animate-2d.yaml", "animate-3d.yaml"):
        path = REPO / "recipes" / name
        assert path.read_text().startswith("# yaml-language-server: $schema=../docs/recipe.schema.json")
        result = run_cli("validate", path)
        assert result.returncode == 0, result.stderr
