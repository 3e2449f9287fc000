"""``previews: N``: the decoded image every N denoising steps, under ``<stage>/previews/``, offline on tiny models."""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
from conftest import manifest_records, png_pixels, run_cli

THREADS = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # see test_model_sources.py
W, H = 64, 48

RECIPE = f"""
name: previews
model: sdbatch/tiny-sd
defaults: {{steps: 4, guidance: 7.0, width: {W}, height: {H}, previews: 2}}
stages:
  - {{name: gen, type: generate, prompt: a cat, seeds: [1, 2], batch_size: 2}}
  - {{name: i2i, type: img2img, input: gen, prompt: a dog, strength: 0.5}}
  - {{name: inp, type: inpaint, input: gen, mask: mask.png, prompt: a dog}}
  - {{name: xl, type: generate, model: sdbatch/tiny-sdxl, prompt: a cat, seed: 3}}
  - {{name: nop, type: generate, prompt: a cat, seeds: [1, 2], batch_size: 2, previews: null}}
"""


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> tuple[Path, Path, list[dict]]:
    from PIL import Image

    root = tmp_path_factory.mktemp("previews")
    (root / "recipe.yaml").write_text(RECIPE)
    mask = np.zeros((H, W), dtype=np.uint8)
    mask[8:40, 16:48] = 255
    Image.fromarray(mask).save(root / "mask.png")
    result = run_cli("run", "recipe.yaml", "--out", "out", cwd=root, env=THREADS)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return root, root / "out", manifest_records(root / "out", "output")


def finals(records: list[dict], stage: str) -> list[dict]:
    return [r for r in records if r["stage"] == stage and r["role"] != "preview"]


def previews_of(out: Path, record: dict) -> dict[int, Path]:
    stem = Path(record["path"]).stem
    found = sorted((out / record["stage"] / "previews").glob(f"{stem}-step*.png"))
    return {int(p.stem.rsplit("-step", 1)[1]): p for p in found}


def test_previews_every_n_steps_of_the_output_size(rendered):
    _, out, records = rendered
    expected = {"gen": [2, 4], "i2i": [2], "inp": [2, 4], "xl": [2, 4]}  # i2i: int(4 x 0.5) = 2 steps run
    for stage, steps in expected.items():
        jobs = finals(records, stage)
        assert len(jobs) == (1 if stage == "xl" else 2)
        for record in jobs:
            files = previews_of(out, record)
            assert sorted(files) == steps, (stage, files)
            for path in files.values():
                assert png_pixels(path).shape == (H, W, 3)
            assert files[steps[-1]].name == f"{Path(record['path']).stem}-step{steps[-1]:04d}.png"


def test_last_preview_is_the_final_image(rendered):
    """The preview decode is the pipeline's own decode: at the last step it gives the final pixels."""
    _, out, records = rendered
    for stage in ("gen", "inp", "xl"):
        for record in finals(records, stage):
            files = previews_of(out, record)
            final = png_pixels(out / record["path"])
            assert np.array_equal(png_pixels(files[4]), final), stage
            assert np.abs(png_pixels(files[2]) - final).max() > 0, stage


def test_inpaint_previews_keep_pixels_outside_the_mask(rendered):
    root, out, records = rendered
    outside = png_pixels(root / "mask.png")[..., 0] < 128
    for record in finals(records, "inp"):
        init = png_pixels(out / record["inputs"][0]["path"])  # the upstream gen output
        for path in previews_of(out, record).values():
            assert np.array_equal(png_pixels(path)[outside], init[outside])


def test_previews_are_recorded_but_do_not_change_done_or_identity(rendered):
    from sdbatch.config.recipe import load_recipe
    from sdbatch.core.plan import build_plan

    root, out, records = rendered
    previews = [r for r in records if r["role"] == "preview"]
    assert len(previews) == 2 * 2 + 2 * 1 + 2 * 2 + 2
    record = next(r for r in previews if r["stage"] == "gen" and r["preview"]["step"] == 2)
    assert record["preview"] == {"step": 2, "steps": 4} and record["options"]["previews"] == 2
    assert record["path"].startswith("gen/previews/") and record["sha256"]
    # previews are not part of a job's identity: the same ids without them
    with_previews = [j.job_id for j in build_plan(load_recipe(root / "recipe.yaml"), out).jobs]
    without = [j.job_id for j in build_plan(load_recipe(root / "recipe.yaml", ["defaults.previews=null"]), out).jobs]
    assert with_previews == without
    # a job is done when its final output is recorded (preview lines do not count): all done
    result = run_cli("plan", "recipe.yaml", "--out", "out", "--json", cwd=root)
    assert result.returncode == 0, result.stderr[-2000:]
    assert {job["status"] for job in json.loads(result.stdout)["jobs"]} == {"done"}


def test_previews_do_not_change_the_image(rendered):
    """The callback only reads the latents: ``gen`` equals ``nop``, the same jobs without previews."""
    _, out, records = rendered
    assert not (out / "nop" / "previews").exists()
    with_previews = {r["seed"]: png_pixels(out / r["path"]) for r in finals(records, "gen")}
    without = {r["seed"]: png_pixels(out / r["path"]) for r in finals(records, "nop")}
    assert with_previews.keys() == without.keys() == {1, 2}
    for seed in with_previews:
        assert np.array_equal(with_previews[seed], without[seed])
