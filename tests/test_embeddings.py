"""Textual inversion (``embeddings:``) on the tiny built-ins: it changes the image as diffusers'
``load_textual_inversion`` does, never leaks into another stage sharing the pipeline, is named in the infotext
(``TI hashes``) and the job id by content, and pickle files are refused at validate."""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
from conftest import png_pixels as pixels
from conftest import run_cli
from helpers import THREADS, diffusers_image, render_by_stage, tiny_sd_pipe
from helpers import stage_image as image

SIZE = 32
STEPS = 2

RECIPE = """
name: ti
model: sdbatch/tiny-sd
defaults: {{steps: {steps}, guidance: 7.0, width: {size}, height: {size}, seed: 5}}
stages:
  - {{name: before, type: generate, prompt: a photo of zzwolf}}
  - {{name: with_ti, type: generate, prompt: a photo of zzwolf,
      embeddings: [{{path: emb/wolf.safetensors, token: zzwolf}}]}}
  - {{name: other_ti, type: generate, prompt: a photo of zzwolf,
      embeddings: [{{path: emb/other.safetensors, token: zzwolf}}]}}
  - {{name: after, type: generate, prompt: a photo of zzwolf}}
  - {{name: weighted_ti, type: generate, prompt: "a photo of (zzwolf:1.3)",
      embeddings: [{{path: emb/wolf.safetensors, token: zzwolf}}]}}
  - {{name: negative_ti, type: generate, prompt: a cat, negative_prompt: zzbad, embeddings: [{{path: emb/zzbad.safetensors}}]}}
  - {{name: xl_before, type: generate, model: sdbatch/tiny-sdxl, prompt: a photo of zzwolf}}
  - {{name: xl_ti, type: generate, model: sdbatch/tiny-sdxl, prompt: a photo of zzwolf,
      embeddings: [{{path: emb/xl.safetensors, token: zzwolf}}]}}
"""


def vectors(seed: int, rows: int, width: int = 32):
    import torch

    return torch.randn(rows, width, generator=torch.Generator().manual_seed(seed)) * 0.5


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("ti")
    (root / "emb").mkdir()
    save_file({"emb_params": vectors(1, 2)}, root / "emb" / "wolf.safetensors")  # A1111's layout, 2 vectors
    save_file({"zzwolf": vectors(2, 1)}, root / "emb" / "other.safetensors")  # diffusers' layout
    save_file({"emb_params": vectors(3, 1)}, root / "emb" / "zzbad.safetensors")
    save_file({"clip_l": vectors(4, 1), "clip_g": vectors(5, 1)}, root / "emb" / "xl.safetensors")  # SDXL's
    (root / "recipe.yaml").write_text(RECIPE.format(steps=STEPS, size=SIZE))
    return root


@pytest.fixture(scope="module")
def rendered(project) -> tuple[Path, dict[str, dict]]:
    return render_by_stage(project)


def reference(with_embedding: bool) -> np.ndarray:
    """Plain diffusers (on one thread: the ``one_thread`` fixture): the tiny model, optionally with the wolf
    embedding loaded by diffusers itself."""
    pipe = tiny_sd_pipe()
    if with_embedding:
        pipe.load_textual_inversion(vectors(1, 2), token="zzwolf")
    return diffusers_image(pipe, seed=5, steps=STEPS, size=SIZE, prompt="a photo of zzwolf")


def test_embedding_changes_the_image_as_diffusers_loads_it(rendered, one_thread):
    assert np.abs(image(rendered, "with_ti") - image(rendered, "before")).max() > 0, "the embedding changed nothing"
    assert np.abs(image(rendered, "other_ti") - image(rendered, "with_ti")).max() > 0
    assert np.array_equal(image(rendered, "with_ti"), reference(True))
    assert np.abs(image(rendered, "weighted_ti") - image(rendered, "with_ti")).max() > 0  # compel, 2 vectors
    assert np.abs(image(rendered, "xl_ti") - image(rendered, "xl_before")).max() > 0


def test_embedding_does_not_leak_into_other_stages(rendered, one_thread):
    """``after`` renders once ``with_ti`` and ``other_ti`` put their token into the shared tokenizer."""
    assert np.array_equal(image(rendered, "after"), image(rendered, "before"))
    assert np.array_equal(image(rendered, "before"), reference(False))


def test_embedding_is_recorded_and_named_in_the_infotext(rendered, project):
    from PIL import Image

    from sdbatch.io.hashing import sha256_file

    out, records = rendered
    sha = sha256_file(project / "emb" / "wolf.safetensors")
    assert records["with_ti"]["params"]["embeddings"] == [{"path": "emb/wolf.safetensors", "token": "zzwolf",
                                                           "sha256": sha}]
    assert "embeddings" not in records["before"]["params"]
    with Image.open(out / records["with_ti"]["path"]) as im:
        assert f'TI hashes: "zzwolf: {sha[:12]}"' in im.text["parameters"]
    bad = sha256_file(project / "emb" / "zzbad.safetensors")
    assert records["negative_ti"]["params"]["embeddings"][0]["token"] == "zzbad"  # the file's stem
    with Image.open(out / records["negative_ti"]["path"]) as im:  # named in the negative prompt
        assert f'TI hashes: "zzbad: {bad[:12]}"' in im.text["parameters"]
    with Image.open(out / records["before"]["path"]) as im:
        assert "TI hashes" not in im.text["parameters"]


def test_embedding_file_is_in_the_job_id(project, tmp_path):
    import shutil

    from sdbatch.config.recipe import load_recipe
    from sdbatch.core.plan import build_plan
    from sdbatch.io.hashing import HashCache

    def ids(root: Path) -> dict[str, str]:
        plan = build_plan(load_recipe(root / "recipe.yaml"), root / "o", hashes=HashCache(None, {}))
        return {job.stage: job.job_id for job in plan.jobs}

    copy = tmp_path / "copy"
    shutil.copytree(project / "emb", copy / "emb")
    shutil.copy(project / "recipe.yaml", copy / "recipe.yaml")
    before = ids(copy)
    (copy / "emb" / "wolf.safetensors").write_bytes((copy / "emb" / "other.safetensors").read_bytes())
    after = ids(copy)
    assert before["with_ti"] != after["with_ti"] and before["weighted_ti"] != after["weighted_ti"]
    assert before["before"] == after["before"] and before["other_ti"] == after["other_ti"]


def test_pickle_and_missing_embeddings_are_refused_at_validate(tmp_path):
    import torch

    torch.save({"string_to_param": {"*": vectors(1, 1)}, "name": "old"}, tmp_path / "old.pt")
    text = ("model: sdbatch/tiny-sd\ndefaults:\n  embeddings: [{path: old.pt, token: old}]\nstages:\n"
            "  - {name: a, type: generate, prompt: old}\n"
            "  - {name: b, type: generate, prompt: x, embeddings: [{path: gone.safetensors, token: gone}]}\n")
    (tmp_path / "r.yaml").write_text(text)
    result = run_cli("validate", tmp_path / "r.yaml")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert any(line.startswith(f"{tmp_path / 'r.yaml'}:3: stages[0].embeddings[0].path (from defaults.embeddings")
               and "pickle file (.pt)" in line for line in lines), lines
    assert any(line.startswith(f"{tmp_path / 'r.yaml'}:6: stages[1].embeddings[0].path")
               and "no such embedding file" in line for line in lines), lines
    (tmp_path / "r.yaml").write_text("allow_pickle: true\n" + text.replace(
        ", embeddings: [{path: gone.safetensors, token: gone}]", ""))
    assert run_cli("validate", tmp_path / "r.yaml").returncode == 0


def test_pickle_embedding_loads_with_allow_pickle(tmp_path, one_thread):
    """A1111's .pt layout, read with torch.load(weights_only=True) once the recipe allows pickles."""
    import torch

    torch.save({"string_to_param": {"*": vectors(1, 2)}, "name": "zzwolf"}, tmp_path / "wolf.pt")
    (tmp_path / "r.yaml").write_text(
        f"model: sdbatch/tiny-sd\nallow_pickle: true\ndefaults: {{steps: {STEPS}, guidance: 7.0, width: {SIZE}, "
        f"height: {SIZE}, seed: 5}}\nstages:\n  - {{name: a, type: generate, prompt: a photo of zzwolf, "
        "embeddings: [{path: wolf.pt, token: zzwolf}]}\n")
    result = run_cli("run", "r.yaml", "--out", "out", cwd=tmp_path, env=THREADS)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    record = [json.loads(line) for line in (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()
              if '"kind": "output"' in line][0]
    assert np.array_equal(pixels(tmp_path / "out" / record["path"]), reference(True))


def test_reproduce_finds_the_embedding_by_content(rendered, project):
    """``reproduce`` of a job with an embedding locates the file from the record (path + sha256) and matches."""
    out, records = rendered
    result = run_cli("reproduce", out / records["with_ti"]["path"], "--out", project / "repro", cwd=project,
                     env=THREADS)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "match" in result.stdout
