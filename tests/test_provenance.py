"""``sdbatch inspect`` and ``sdbatch reproduce`` end to end: an output tells how it was made, an untouched
output re-renders to the same pixels from anywhere, and an altered one is never called a match."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import manifest_records, run_cli
from PIL import Image, ImageDraw
from PIL.PngImagePlugin import PngInfo

from sdbatch import cli

PROMPT = 'a lighthouse on a cliff, <b>storm</b> & "spray"'
SWEEP_PROMPT = "a red kite over the dunes"
SIZE = 64
#: one recipe for the provenance and gallery tests (rendered once per session: see rendered_project)
RECIPE = f"""\
name: e2e
model: sdbatch/tiny-sd
defaults:
  steps: 2
  width: {SIZE}
  height: {SIZE}
  negative_prompt: blurry
stages:
  - name: sketch
    type: generate
    prompt: '{PROMPT}'
    seed: 11
  - name: paint
    type: img2img
    input: sketch
    prompt: oil painting
    strength: 0.5
  - name: moon
    type: inpaint
    input: paint
    mask: masks/moon.png
    prompt: a full moon
  - name: sweep
    type: generate
    prompt: {SWEEP_PROMPT}
    guidance: [5.0, 9.0]
    seeds: [1, 2, 3]
    batch_size: 3
"""
_RENDERED: dict[str, Path] = {}


def rendered_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The recipe's folder, rendered once per session with relative paths, as a user would from inside it:
    ``sdbatch run recipe.yaml --out out``. Outputs must not be modified (copy the folder to tamper)."""
    if "project" not in _RENDERED:
        folder = tmp_path_factory.mktemp("e2e") / "project"
        (folder / "masks").mkdir(parents=True)
        mask = Image.new("L", (SIZE, SIZE), 0)
        ImageDraw.Draw(mask).ellipse((16, 8, 48, 40), fill=255)
        mask.save(folder / "masks" / "moon.png")
        (folder / "recipe.yaml").write_text(RECIPE)
        result = run_cli("run", "recipe.yaml", "--out", "out", cwd=folder)
        assert result.returncode == 0, result.stdout + result.stderr
        _RENDERED["project"] = folder
    return _RENDERED["project"]


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return rendered_project(tmp_path_factory)


def output(folder: Path, stage: str) -> Path:
    record = next(r for r in manifest_records(folder / "out", "output") if r["stage"] == stage)
    return folder / "out" / record["path"]


def copy_project(project: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(project, target)
    return target


def resave(path: Path, pixels: np.ndarray, text: dict[str, str]) -> None:
    info = PngInfo()
    for key, value in text.items():
        info.add_text(key, value)
    Image.fromarray(pixels.astype(np.uint8)).save(path, pnginfo=info)


def png_text(path: Path) -> dict[str, str]:
    with Image.open(path) as im:
        im.load()
        return dict(im.text)


# ------------------------------------------------------------------------------------------ inspect
def test_inspect_shows_prompt_seed_and_the_rest(project, tmp_path):
    moon = output(project, "moon")
    result = run_cli("inspect", moon, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert "prompt:" in text and "a full moon" in text
    lines = {line.split(":", 1)[0].strip(): line.split(":", 1)[1].strip() for line in text.splitlines()
             if ":" in line and not line.startswith(" ")}
    assert lines["seed"] == "11"  # inherited through the chain
    assert lines["negative prompt"] == "blurry"
    assert lines["model"] == "sdbatch/tiny-sd @ v1 (builtin)"
    assert lines["device"].startswith("cpu float32")
    assert "steps 2" in lines["parameters"] and "strength 1" in lines["parameters"]
    assert "masks/moon.png [mask]" in text and "paint/" in text
    assert "recipe.yaml" in lines["recipe"]
    assert "torch" in lines["versions"] and "diffusers" in lines["versions"]

    sketch = output(project, "sketch")
    result = run_cli("inspect", sketch, "--json")
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    manifest = next(r for r in manifest_records(project / "out", "output") if r["stage"] == "sketch")
    # the file's own sha256, size and mtime are the manifest's, not in the record the file embeds
    assert record == {k: v for k, v in manifest.items() if k not in ("sha256", "size", "mtime_ns")}
    assert record["prompt"] == PROMPT and record["seed"] == 11


def test_inspect_falls_back_to_the_manifest(project, tmp_path, capsys):
    folder = copy_project(project, tmp_path)
    sketch = output(folder, "sketch")
    with Image.open(sketch) as im:
        pixels = np.asarray(im.convert("RGB"))
    resave(sketch, pixels, {})  # metadata stripped (e.g. by an image editor), pixels kept
    assert cli.main(["inspect", str(sketch)]) == 0
    shown = capsys.readouterr().out
    assert PROMPT in shown and "manifest.jsonl" in shown
    assert "sha256 differs" in shown  # the file is not the one the manifest recorded

    # an mp4 is looked up the same way (here a stand-in file with a record of its own)
    video = folder / "out" / "anim" / "anim.mp4"
    video.parent.mkdir()
    video.write_bytes(b"not really a video")
    record = {"kind": "output", "job_id": "f" * 64, "stage": "anim", "type": "animate", "path": "anim/anim.mp4",
              "prompt": "a drifting nebula", "negative_prompt": "", "seed": 3, "params": {"frames": 12, "fps": 8},
              "model": {"id": "sdbatch/tiny-sd", "revision": "v1", "source": "builtin"}, "inputs": []}
    with open(folder / "out" / "manifest.jsonl", "a") as fh:
        fh.write(json.dumps(record) + "\n")
    assert cli.main(["inspect", str(video)]) == 0
    shown = capsys.readouterr().out
    assert "a drifting nebula" in shown and "frames: 12" in shown
    assert cli.main(["reproduce", str(video)]) == 2
    assert "not supported yet" in capsys.readouterr().err


def test_inspect_without_metadata_exits_2_with_one_line(tmp_path, capsys):
    assert cli.main(["inspect", str(tmp_path / "missing.png")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such file" in err
    plain = tmp_path / "plain.png"
    Image.new("RGB", (8, 8)).save(plain)
    assert cli.main(["inspect", str(plain)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no sdbatch metadata" in err
    assert cli.main(["reproduce", str(plain)]) == 2


# ---------------------------------------------------------------------------------------- reproduce
def test_reproduce_matches_an_untouched_output_from_another_folder(project, tmp_path):
    moon = output(project, "moon")  # an inpaint: reads a stage output and a recipe-relative mask
    before = moon.read_bytes()
    result = run_cli("reproduce", moon, "--out", "again", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[0].startswith("match")
    again = tmp_path / "again" / moon.relative_to(project / "out")
    assert again.is_file()
    assert moon.read_bytes() == before, "reproduce must not touch the original"


def test_reproduce_calls_out_an_altered_pixel(project, tmp_path):
    folder = copy_project(project, tmp_path)
    sketch = output(folder, "sketch")
    text = png_text(sketch)
    with Image.open(sketch) as im:
        pixels = np.asarray(im.convert("RGB"), dtype=np.int16).copy()
    pixels[5, 7, 1] += 1 if pixels[5, 7, 1] < 255 else -1  # one level, in one channel of one pixel
    resave(sketch, pixels, text)
    assert png_text(sketch) == text, "the metadata is kept"
    result = run_cli("reproduce", sketch, cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "max pixel difference: 1" in result.stdout
    assert f"1 of {SIZE * SIZE} pixels differ" in result.stdout
    assert "match" not in result.stdout.splitlines()[0]


def test_reproduce_refuses_missing_or_changed_inputs(project, tmp_path, capsys):
    folder = copy_project(project, tmp_path)
    moon = output(folder, "moon")
    mask = folder / "masks" / "moon.png"
    Image.new("L", (64, 64), 255).save(mask)
    assert cli.main(["reproduce", str(moon)]) == 2
    err = capsys.readouterr().err
    assert "mask masks/moon.png has changed" in err and err.count("\n") == 1

    shutil.copy(project / "masks" / "moon.png", mask)
    upstream = next(r for r in manifest_records(folder / "out", "output") if r["stage"] == "paint")["path"]
    (folder / "out" / upstream).unlink()
    assert cli.main(["reproduce", str(moon)]) == 2
    err = capsys.readouterr().err
    assert f"input {upstream} not found" in err and err.count("\n") == 1


def test_reproduce_renders_a_batched_output_with_its_batch(project, capsys):
    """A batched image may differ from a lone render by a level: the record names its batch (job ids, in
    order), and reproduce renders the same batch to match exactly."""
    record = [r for r in manifest_records(project / "out", "output") if r["stage"] == "sweep"][-1]
    assert len(record["batch"]) > 1 and record["job_id"] in record["batch"]
    assert cli.main(["reproduce", str(project / "out" / record["path"])]) == 0
    assert capsys.readouterr().out.startswith("match")
