"""The core promise end to end: a chained recipe renders the same pixels as plain diffusers, every output is
recorded truthfully, re-runs render only what changed, and a killed run resumes to the same images."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import manifest_records, output_pngs, png_pixels, run_cli
from PIL import Image, ImageDraw

from sdbatch.io.hashing import sha256_file

CHAIN = """\
name: chain
model: {model}
defaults:
  steps: 3
  guidance: 7.0
  width: 64
  height: 64
  negative_prompt: blurry
stages:
  - name: sketch
    type: generate
    prompt: ["{prompt_a}", "a fox in the snow"]
    seeds: [1000, 1001]
  - name: painted
    type: img2img
    input: sketch
    prompt: oil painting by Van Gogh
    strength: 0.8
  - name: moon
    type: inpaint
    input: painted
    mask: masks/moon.png
    prompt: a full moon
    strength: 1.0
"""


def write_chain(folder: Path, model: Path, prompt_a: str = "a wolf howling at the moon") -> Path:
    (folder / "masks").mkdir(parents=True, exist_ok=True)
    mask = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(mask).ellipse((16, 8, 48, 40), fill=255)
    mask.save(folder / "masks" / "moon.png")
    recipe = folder / "chain.yaml"
    recipe.write_text(CHAIN.format(model=model, prompt_a=prompt_a))
    return recipe


@pytest.fixture(scope="module")
def chain_run(tmp_path_factory: pytest.TempPathFactory, tiny_sd_folder: Path) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("chain")
    recipe = write_chain(folder, tiny_sd_folder)
    out = folder / "out"
    result = run_cli("run", recipe, "--out", out)
    assert result.returncode == 0, result.stderr
    return recipe, out


def test_generate_equals_plain_diffusers(chain_run, tiny_sd_folder):
    import torch
    from diffusers import StableDiffusionPipeline

    _recipe, out = chain_run
    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd_folder)
    pipe.set_progress_bar_config(disable=True)
    sketches = [r for r in manifest_records(out, "output") if r["stage"] == "sketch"]
    assert len(sketches) == 4
    for record in sketches:
        expected = pipe(prompt=record["prompt"], negative_prompt="blurry", num_inference_steps=3, guidance_scale=7.0,
                        width=64, height=64, generator=torch.Generator("cpu").manual_seed(record["seed"])).images[0]
        diff = np.abs(png_pixels(out / record["path"]) - np.asarray(expected, dtype=np.int16)).max()
        assert diff <= 1, f"{record['path']} differs from plain diffusers by {diff}"


def test_img2img_equals_plain_diffusers(chain_run, tiny_sd_folder):
    import torch
    from diffusers import StableDiffusionImg2ImgPipeline

    _recipe, out = chain_run
    pipe = StableDiffusionImg2ImgPipeline.from_pretrained(tiny_sd_folder)
    pipe.set_progress_bar_config(disable=True)
    record = next(r for r in manifest_records(out, "output") if r["stage"] == "painted")
    init = Image.open(out / record["inputs"][0]["path"]).convert("RGB")
    expected = pipe(prompt="oil painting by Van Gogh", negative_prompt="blurry", image=init, strength=0.8,
                    num_inference_steps=3, guidance_scale=7.0,
                    generator=torch.Generator("cpu").manual_seed(record["seed"])).images[0]
    assert np.abs(png_pixels(out / record["path"]) - np.asarray(expected, dtype=np.int16)).max() <= 1


def test_inpaint_keeps_pixels_outside_mask(chain_run):
    recipe, out = chain_run
    mask = np.asarray(Image.open(recipe.parent / "masks" / "moon.png").convert("L")) >= 128
    moons = [r for r in manifest_records(out, "output") if r["stage"] == "moon"]
    assert len(moons) == 4
    for record in moons:
        before = png_pixels(out / record["inputs"][0]["path"])
        after = png_pixels(out / record["path"])
        assert np.array_equal(before[~mask], after[~mask]), "pixels outside the mask changed"
        assert np.abs(before[mask] - after[mask]).mean() > 1, "the masked area did not change"
        assert record["inputs"][1] == {"path": "masks/moon.png", "sha256": sha256_file(recipe.parent / "masks/moon.png"),
                                       "role": "mask"}


def test_chain_lineage_seeds_and_names(chain_run):
    _recipe, out = chain_run
    outputs = manifest_records(out, "output")
    assert sorted(r["stage"] for r in outputs) == ["moon"] * 4 + ["painted"] * 4 + ["sketch"] * 4
    by_path = {r["path"]: r for r in outputs}
    for record in outputs:
        assert record["path"] == f"{record['stage']}/{Path(record['path']).name}"
        assert Path(record["path"]).stem.endswith(f"-{record['seed']}-{record['job_id'][:8]}")
        for entry in record["inputs"]:
            if entry.get("role") != "mask":
                parent = by_path[entry["path"]]
                assert parent["seed"] == record["seed"], "a stage without seeds keeps its input's seed"
                assert entry["sha256"] == parent["sha256"]


def test_manifest_lines_are_complete_and_true(chain_run):
    _recipe, out = chain_run
    outputs = manifest_records(out, "output")
    required = {"kind", "job_id", "stage", "type", "path", "sha256", "prompt", "negative_prompt", "seed", "params",
                "model", "inputs", "recipe", "versions", "device", "dtype", "seconds", "time"}
    for record in outputs:
        assert required <= set(record), required - set(record)
        assert sha256_file(out / record["path"]) == record["sha256"]
        assert set(record["model"]) >= {"id", "revision"} and len(record["model"]["revision"]) == 64
        assert set(record["recipe"]) >= {"path", "sha256", "git_commit", "git_dirty"}
        assert set(record["versions"]) >= {"sdbatch", "torch", "diffusers", "transformers", "python"}
        assert {"steps", "guidance", "scheduler", "width", "height"} <= set(record["params"])
        assert record["device"] == "cpu" and record["dtype"] == "float32"
    runs = manifest_records(out, "run")
    assert [r["event"] for r in runs] == ["start", "end"]
    assert runs[1]["exit_code"] == 0 and runs[1]["rendered"] == 12


def test_png_carries_a1111_parameters_and_record(chain_run):
    _recipe, out = chain_run
    record = next(r for r in manifest_records(out, "output") if r["stage"] == "painted")
    with Image.open(out / record["path"]) as im:
        text = dict(im.text)
    lines = text["parameters"].splitlines()
    assert lines[0] == "oil painting by Van Gogh"
    assert lines[1] == "Negative prompt: blurry"
    assert lines[2].startswith(f"Steps: 3, Sampler: PLMS, CFG scale: 7, Seed: {record['seed']}, Size: 64x64, "
                               f"Model hash: {record['model']['revision'][:10]}, Model: ")
    assert lines[2].endswith("Denoising strength: 0.8")
    embedded = json.loads(text["sdbatch"])
    assert embedded == {k: v for k, v in record.items() if k not in ("sha256", "size", "mtime_ns")}  # the file's own


def test_rerun_renders_nothing_and_other_folder_gives_same_pixels(chain_run, tmp_path):
    recipe, out = chain_run
    before = {p: (f.stat().st_mtime_ns, sha256_file(f)) for p, f in output_pngs(out).items()}
    lines = len(manifest_records(out, "output"))
    result = run_cli("run", recipe, "--out", out)
    assert result.returncode == 0, result.stderr
    assert len(manifest_records(out, "output")) == lines
    assert manifest_records(out, "run")[-1]["rendered"] == 0
    after = {p: (f.stat().st_mtime_ns, sha256_file(f)) for p, f in output_pngs(out).items()}
    assert after == before, "a finished re-run must rewrite nothing"

    other = tmp_path / "other"
    result = run_cli("run", recipe, "--out", other)
    assert result.returncode == 0, result.stderr
    assert set(output_pngs(other)) == set(output_pngs(out))
    for rel, path in output_pngs(out).items():
        assert np.array_equal(png_pixels(path), png_pixels(other / rel)), rel


def test_editing_one_prompt_rerenders_only_its_jobs(tmp_path, tiny_sd_folder):
    recipe = write_chain(tmp_path, tiny_sd_folder)
    out = tmp_path / "out"
    assert run_cli("run", recipe, "--out", out).returncode == 0
    first = {r["path"] for r in manifest_records(out, "output")}
    write_chain(tmp_path, tiny_sd_folder, prompt_a="a wolf under the stars")
    result = run_cli("run", recipe, "--out", out)
    assert result.returncode == 0, result.stderr
    new = [r for r in manifest_records(out, "output") if r["path"] not in first]
    # the edited prompt x 2 seeds, and the img2img and inpaint jobs that descend from them
    assert sorted(r["stage"] for r in new) == ["moon", "moon", "painted", "painted", "sketch", "sketch"]
    assert all(r["prompt"] == "a wolf under the stars" for r in new if r["stage"] == "sketch")
    assert manifest_records(out, "run")[-1]["rendered"] == 6

    # reordering lists changes nothing
    text = recipe.read_text().replace('["a wolf under the stars", "a fox in the snow"]',
                                      '["a fox in the snow", "a wolf under the stars"]')
    recipe.write_text(text.replace("[1000, 1001]", "[1001, 1000]"))
    result = run_cli("run", recipe, "--out", out)
    assert result.returncode == 0 and manifest_records(out, "run")[-1]["rendered"] == 0


def test_plan_json_reports_done_and_pending(chain_run, tmp_path):
    recipe, out = chain_run
    result = run_cli("plan", recipe, "--out", out, "--json")
    assert result.returncode == 0, result.stderr
    jobs = json.loads(result.stdout)["jobs"]
    assert len(jobs) == 12 and {j["status"] for j in jobs} == {"done"}
    assert {"job_id", "stage", "type", "prompt", "seed", "params", "inputs", "status"} <= set(jobs[0])
    fresh = json.loads(run_cli("plan", recipe, "--out", tmp_path / "none", "--json").stdout)["jobs"]
    assert {j["status"] for j in fresh} == {"pending"}
    assert [j["job_id"] for j in fresh] == [j["job_id"] for j in jobs]


def _run_and_kill(recipe: Path, out: Path, after_outputs: int) -> None:
    _run_and_kill_with(recipe, out, after_outputs, [])


def _run_and_kill_with(recipe: Path, out: Path, after_outputs: int, extra: list[str]) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "sdbatch", "run", str(recipe), "--out", str(out), *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if len(manifest_records(out, "output")) >= after_outputs:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


@pytest.mark.parametrize("kill_points", [(1, 5), (3, 9)])
def test_killed_runs_resume_to_the_same_images(chain_run, tmp_path, kill_points):
    recipe, reference = chain_run
    out = tmp_path / "killed"
    for point in kill_points:
        _run_and_kill(recipe, out, point)
    result = run_cli("run", recipe, "--out", out)
    assert result.returncode == 0, result.stderr
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name], "temp files left behind"
    ref = output_pngs(reference)
    got = output_pngs(out)
    assert set(got) == set(ref)
    for rel, path in ref.items():
        assert np.array_equal(png_pixels(path), png_pixels(got[rel])), rel
    outputs = manifest_records(out, "output")
    assert sorted(r["path"] for r in outputs) == sorted(ref), "each output recorded exactly once"
    for record in outputs:
        assert sha256_file(out / record["path"]) == record["sha256"]


def test_batched_runs_agree_with_unbatched_and_resume_within_one_level(chain_run, tmp_path):
    recipe, reference = chain_run  # rendered one image at a time (auto on a CPU)
    batched = tmp_path / "batched"
    _run_and_kill_with(recipe, batched, 3, ["--set", "defaults.batch_size=4"])
    result = run_cli("run", recipe, "--out", batched, "--set", "defaults.batch_size=4")
    assert result.returncode == 0, result.stderr
    ref = output_pngs(reference)
    got = output_pngs(batched)
    assert set(got) == set(ref), "batching must not change names (ids)"
    worst = max(int(np.abs(png_pixels(path) - png_pixels(got[rel])).max()) for rel, path in ref.items())
    assert worst <= 1, f"batched/resumed images differ from unbatched ones by {worst} levels"
    assert any(len(r.get("batch", [])) > 1 for r in manifest_records(batched, "output"))
    assert sorted(r["path"] for r in manifest_records(batched, "output")) == sorted(ref)


def png_with_corrupt_pixels(width: int, height: int) -> bytes:
    """A PNG with valid chunk structure and CRCs whose IDAT is not zlib data (PIL's verify() accepts it)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"not zlib data " * 8) + chunk(b"IEND", b"")


def test_failing_job_does_not_stop_the_batch(tmp_path, tiny_sd_folder):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for i in range(3):
        Image.new("RGB", (64, 64), (40 * i, 90, 160)).save(inputs / f"img{i}.png")
    (inputs / "img1.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"""\
model: {tiny_sd_folder}
defaults: {{steps: 2, width: 64, height: 64}}
stages:
  - {{name: paint, type: img2img, input: inputs, prompt: watercolor, strength: 0.6}}
  - {{name: again, type: img2img, input: paint, prompt: ink, strength: 0.6}}
""")
    out = tmp_path / "out"
    # a plainly broken file is refused at validate, not at 3 a.m.
    result = run_cli("validate", recipe)
    assert result.returncode == 2 and "img1.png" in result.stderr
    # a file that breaks only at render time: a PNG whose chunks (and checksums) are whole but whose pixel
    # data does not inflate; recorded as failed, the rest goes on
    (inputs / "img1.png").write_bytes(png_with_corrupt_pixels(64, 64))
    result = run_cli("run", recipe, "--out", out)
    assert result.returncode == 1, result.stderr
    failed = manifest_records(out, "failed")
    skipped = manifest_records(out, "skipped")
    assert len(failed) == 1 and failed[0]["stage"] == "paint" and failed[0]["error"]
    assert len(skipped) == 1 and skipped[0]["stage"] == "again"
    assert len([r for r in manifest_records(out, "output")]) == 4
    assert "failed" in result.stderr


def test_first_ctrl_c_finishes_the_current_job_and_exits_130(tmp_path, tiny_sd_folder):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"""\
model: {tiny_sd_folder}
defaults: {{steps: 2, width: 32, height: 32}}
stages:
  - {{name: many, type: generate, prompt: a cat, seeds: {{start: 0, count: 12}}}}
""")
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "sdbatch", "run", str(recipe), "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and len(manifest_records(out, "output")) < 2:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    done = manifest_records(out, "output")
    assert 2 <= len(done) < 12
    assert manifest_records(out, "run")[-1]["interrupted"] is True
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]
    for record in done:
        assert sha256_file(out / record["path"]) == record["sha256"]
    result = run_cli("run", recipe, "--out", out)
    assert result.returncode == 0
    assert len(manifest_records(out, "output")) == 12


def test_only_renders_a_stage_and_the_inputs_it_lacks(tmp_path, tiny_sd_folder):
    recipe = write_chain(tmp_path, tiny_sd_folder)
    out = tmp_path / "out"
    result = run_cli("run", recipe, "--out", out, "--only", "painted", "--set", "stages.sketch.seeds=[5]")
    assert result.returncode == 0, result.stderr
    stages = sorted(r["stage"] for r in manifest_records(out, "output"))
    assert stages == ["painted", "painted", "sketch", "sketch"]
    assert {r["seed"] for r in manifest_records(out, "output")} == {5}
    bad = run_cli("run", recipe, "--out", out, "--only", "nope")
    assert bad.returncode == 2 and "--only nope" in bad.stderr
