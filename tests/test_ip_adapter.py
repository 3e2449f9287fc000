"""IP-Adapter (``ip_adapter:``) on generate, img2img and inpaint: the same pixels as plain diffusers after
``load_ip_adapter`` + ``set_ip_adapter_scale``, no leak into stages without it, the adapter file's and the
reference image's sha256 in the job id and the manifest, A1111's ``ControlNet N`` infotext unit, a labelled
scale sweep, refusals at validate, and ``--rehearse`` of a recipe naming h94/IP-Adapter offline.

The adapters are built as diffusers' own tests build them (``create_ip_adapter_state_dict``: random
``to_k_ip``/``to_v_ip`` per cross-attention processor and an ``ImageProjection``) with a tiny
CLIPVisionModelWithProjection, saved as safetensors in h94/IP-Adapter's layout and loaded through the real code
path (a local folder given as ``model:``)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
from conftest import REPO, run_cli
from conftest import png_pixels as pixels

SIZE = 32
THREADS = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
SD = "{model: ipa, subfolder: models, weight_name: ip-adapter_sd15.safetensors, image: ref.png, scale: %s}"
XL = "{model: ipa, subfolder: sdxl_models, weight_name: ip-adapter_sdxl.safetensors, image: ref.png, scale: 0.6}"

RECIPE = f"""
name: ipa
model: sdbatch/tiny-sd
defaults: {{steps: 2, guidance: 7.0, width: {SIZE}, height: {SIZE}, seed: 5}}
stages:
  - {{name: plain, type: generate, prompt: a cat}}
  - {{name: ipa, type: generate, prompt: a cat, ip_adapter: [{SD % 0.6}]}}
  - {{name: sweep, type: generate, prompt: a cat, ip_adapter: [{SD % "[0.3, 1.5]"}]}}
  - {{name: i2i, type: img2img, input: plain, prompt: a cat, strength: 0.5, steps: 4, ip_adapter: [{SD % 0.6}]}}
  - {{name: inp, type: inpaint, input: plain, mask: mask.png, prompt: a cat, ip_adapter: [{SD % 0.6}]}}
  - {{name: inp_plain, type: inpaint, input: plain, mask: mask.png, prompt: a cat}}
  - {{name: after, type: generate, prompt: a cat}}
  - {{name: xl, type: generate, model: sdbatch/tiny-sdxl, prompt: a cat, ip_adapter: [{XL}]}}
"""


def write_reference(path: Path, seed: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(path)


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    from diffusers import UNet2DConditionModel
    from PIL import Image

    from sdbatch.sources.tiny import _seeded
    from sdbatch.sources.tiny.configs import TINY_SD_UNET, TINY_SDXL_UNET
    from sdbatch.sources.tiny.ip_adapter import save_ip_adapter

    root = tmp_path_factory.mktemp("ipa")
    with _seeded(0):
        save_ip_adapter(root / "ipa", UNet2DConditionModel(**TINY_SD_UNET), "models", "ip-adapter_sd15.safetensors", 3)
        save_ip_adapter(root / "ipa", UNet2DConditionModel(**TINY_SDXL_UNET), "sdxl_models",
                        "ip-adapter_sdxl.safetensors", 4)
    write_reference(root / "ref.png", 0)
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[8:24, 8:24] = 255
    Image.fromarray(mask).save(root / "mask.png")
    (root / "recipe.yaml").write_text(RECIPE)
    return root


@pytest.fixture(scope="module")
def rendered(project) -> tuple[Path, dict[tuple, dict]]:
    result = run_cli("run", "recipe.yaml", "--out", "out", cwd=project, env=THREADS)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    records = [json.loads(line) for line in (project / "out" / "manifest.jsonl").read_text().splitlines()]
    by_key = {}
    for r in records:
        if r.get("kind") == "output":
            scale = (r["params"].get("ip_adapter") or [{}])[0].get("scale")
            by_key[(r["stage"], scale)] = r
    return project / "out", by_key


def image(rendered, stage: str, scale: float | None = None) -> np.ndarray:
    out, records = rendered
    return pixels(out / records[(stage, scale)]["path"])


def diffusers_images(project: Path, plain_output: Path) -> dict[str, np.ndarray]:
    """Plain diffusers: the tiny models, the adapters loaded by ``load_ip_adapter`` from the same folder."""
    import torch
    from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionPipeline, StableDiffusionXLPipeline
    from PIL import Image

    from sdbatch.sources.tiny import builtin_model_path

    ref = Image.open(project / "ref.png").convert("RGB")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    out = {}
    try:
        pipe = StableDiffusionPipeline.from_pretrained(builtin_model_path("sdbatch/tiny-sd"))
        pipe.set_progress_bar_config(disable=True)

        def call(p, **kw):
            kw.setdefault("num_inference_steps", 2)
            return np.asarray(p(prompt="a cat", guidance_scale=7.0, generator=torch.Generator("cpu").manual_seed(5),
                                **kw).images[0], dtype=np.int16)

        out["plain"] = call(pipe, width=SIZE, height=SIZE)
        pipe.load_ip_adapter(str(project / "ipa"), subfolder="models", weight_name="ip-adapter_sd15.safetensors")
        for scale in (0.6, 0.3, 1.5):
            pipe.set_ip_adapter_scale(scale)
            out[f"ipa {scale}"] = call(pipe, width=SIZE, height=SIZE, ip_adapter_image=ref)
        pipe.set_ip_adapter_scale(0.6)
        i2i = StableDiffusionImg2ImgPipeline.from_pipe(pipe)
        init = Image.open(plain_output).convert("RGB")
        out["i2i"] = call(i2i, image=init, strength=0.5, num_inference_steps=4, ip_adapter_image=ref)
        xl = StableDiffusionXLPipeline.from_pretrained(builtin_model_path("sdbatch/tiny-sdxl"))
        xl.set_progress_bar_config(disable=True)
        xl.load_ip_adapter(str(project / "ipa"), subfolder="sdxl_models", weight_name="ip-adapter_sdxl.safetensors")
        xl.set_ip_adapter_scale(0.6)
        out["xl"] = call(xl, width=SIZE, height=SIZE, ip_adapter_image=ref)
    finally:
        torch.set_num_threads(before)
    return out


def test_same_pixels_as_plain_diffusers_with_load_ip_adapter(rendered, project):
    out, records = rendered
    ref = diffusers_images(project, out / records[("plain", None)]["path"])
    assert np.abs(ref["ipa 0.6"] - ref["plain"]).max() > 0, "the adapter changed nothing"
    assert np.array_equal(image(rendered, "ipa", 0.6), ref["ipa 0.6"])
    assert np.array_equal(image(rendered, "sweep", 0.3), ref["ipa 0.3"])
    assert np.array_equal(image(rendered, "sweep", 1.5), ref["ipa 1.5"])
    assert np.array_equal(image(rendered, "i2i", 0.6), ref["i2i"])
    assert np.array_equal(image(rendered, "xl", 0.6), ref["xl"])
    # inpaint: the adapter changes the repainted area, the pixels outside the mask stay the input's
    inp, inp_plain, plain = image(rendered, "inp", 0.6), image(rendered, "inp_plain"), image(rendered, "plain")
    assert np.abs(inp - inp_plain).max() > 0
    outside = np.ones((SIZE, SIZE), bool)
    outside[8:24, 8:24] = False
    assert np.array_equal(inp[outside], plain[outside])
    # no leak: a stage after the adapters' stages renders as the plain model does
    assert np.array_equal(image(rendered, "plain"), ref["plain"])
    assert np.array_equal(image(rendered, "after"), ref["plain"])


def test_adapter_and_reference_image_are_recorded_and_in_the_infotext(rendered, project):
    from PIL import Image

    from sdbatch.io.hashing import sha256_file

    out, records = rendered
    adapter = sha256_file(project / "ipa" / "models" / "ip-adapter_sd15.safetensors")
    assert records[("ipa", 0.6)]["params"]["ip_adapter"] == [{
        "model": "ipa", "subfolder": "models", "weight_name": "ip-adapter_sd15.safetensors", "sha256": adapter,
        "image": "ref.png", "image_sha256": sha256_file(project / "ref.png"), "scale": 0.6}]
    assert "ip_adapter" not in records[("plain", None)]["params"]
    with Image.open(out / records[("ipa", 0.6)]["path"]) as im:
        assert (f'ControlNet 0: "Module: ip-adapter_clip_sd15, Model: ip-adapter_sd15 [{adapter[:8]}], Weight: 0.6, '
                'Guidance Start: 0.0, Guidance End: 1.0"') in im.text["parameters"]
    with Image.open(out / records[("xl", 0.6)]["path"]) as im:
        assert "Module: ip-adapter_clip_sdxl, Model: ip-adapter_sdxl" in im.text["parameters"]
    with Image.open(out / records[("plain", None)]["path"]) as im:
        assert "ControlNet" not in im.text["parameters"]


def test_scale_sweep_gets_a_labelled_contact_sheet(rendered):
    from sdbatch.io.manifest import read_outputs
    from sdbatch.reports.grid import grid_axes

    out, _ = rendered
    sweep = [r for r in read_outputs(out / "manifest.jsonl") if r.stage == "sweep"]
    assert len(sweep) == 2
    assert grid_axes(sweep)[0] == "IP-Adapter ip-adapter_sd15"
    assert (out / "sweep" / "grid.png").is_file()


def test_reference_image_and_adapter_file_are_in_the_job_id(project, tmp_path):
    from sdbatch.config.recipe import load_recipe
    from sdbatch.core.plan import build_plan
    from sdbatch.io.hashing import HashCache

    def ids(root: Path) -> dict[str, str]:
        plan = build_plan(load_recipe(root / "recipe.yaml"), root / "o", hashes=HashCache(None, {}))
        return {job.stage + str(job.params.ip_adapter[0].scale if job.params.ip_adapter else ""): job.job_id
                for job in plan.jobs}

    copy = tmp_path / "copy"
    shutil.copytree(project, copy, ignore=shutil.ignore_patterns("out"))
    base = ids(copy)
    write_reference(copy / "ref.png", 1)  # another reference image
    changed = ids(copy)
    assert changed["ipa0.6"] != base["ipa0.6"] and changed["i2i0.6"] != base["i2i0.6"]
    assert changed["plain"] == base["plain"] and changed["inp_plain"] == base["inp_plain"]
    weights = copy / "ipa" / "models" / "ip-adapter_sd15.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")  # another adapter file (same header)
    assert ids(copy)["ipa0.6"] != changed["ipa0.6"]


BAD = """
name: bad
model: sdbatch/tiny-sd
stages:
  - name: missing
    type: generate
    prompt: x
    ip_adapter: [{model: ipa, subfolder: models, weight_name: ip-adapter_sd15.safetensors, image: nope.png}]
  - name: pickled
    type: generate
    prompt: x
    ip_adapter: [{model: ipa, subfolder: models, weight_name: ip-adapter_sd15.bin, image: ref.png}]
  - name: family
    type: generate
    prompt: x
    ip_adapter: [{model: ipa, subfolder: sdxl_models, weight_name: ip-adapter_sdxl.safetensors, image: ref.png}]
"""


def test_bad_input_is_refused_at_validate(project, tmp_path):
    root = tmp_path / "bad"
    root.mkdir()
    shutil.copytree(project / "ipa", root / "ipa")
    shutil.copy(project / "ref.png", root / "ref.png")
    (root / "ipa" / "models" / "ip-adapter_sd15.bin").write_bytes(b"not loaded")
    (root / "recipe.yaml").write_text(BAD)
    result = run_cli("validate", "recipe.yaml", cwd=root)
    assert result.returncode == 2, result.stdout + result.stderr
    err = result.stderr
    assert "Traceback" not in err
    assert "recipe.yaml:8: stages[0].ip_adapter[0].image: 'nope.png': no such image file" in err
    assert "recipe.yaml:12: stages[1].ip_adapter[0].weight_name: 'models/ip-adapter_sd15.bin' is a pickle file" in err
    assert ("recipe.yaml:16: stages[2].ip_adapter[0].weight_name: sdxl_models/ip-adapter_sdxl.safetensors is an "
            "IP-Adapter for sdbatch/tiny-sdxl (cross-attention width 64); the stage's model is sdbatch/tiny-sd "
            "(cross-attention width 32)") in err
    (root / "recipe.yaml").write_text(BAD.replace("image: nope.png}", "image: ref.png, scale: 2.5}"))
    result = run_cli("validate", "recipe.yaml", cwd=root)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "recipe.yaml:8: stages[0].ip_adapter[0].scale: Input should be less than or equal to 2" in result.stderr
    fixed = "allow_pickle: true\n" + BAD.split("  - name: family")[0].replace("nope.png", "ref.png")
    (root / "recipe.yaml").write_text(fixed.replace("scale: 2.5", "scale: 2"))
    result = run_cli("validate", "recipe.yaml", cwd=root)
    assert result.returncode == 0, result.stderr


def test_rehearse_of_a_recipe_naming_h94_ip_adapter_runs_offline(tmp_path):
    recipe = REPO / "recipes" / "ip-adapter.yaml"
    result = run_cli("run", str(recipe), "--rehearse", "--out", tmp_path / "out", env=THREADS)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()]
    units = [u for r in records if r.get("kind") == "output" for u in r["params"].get("ip_adapter") or ()]
    assert units and {u["model"] for u in units} == {"sdbatch/tiny-ip-adapter"}
    assert "h94/IP-Adapter" in recipe.read_text()


def test_with_a_controlnet_equals_the_diffusers_controlnet_pipeline_with_ip_adapter(project, tmp_path):
    """ControlNet and IP-Adapter together: diffusers' ControlNet pipeline after ``load_ip_adapter``; the
    IP-Adapter's infotext unit comes after the ControlNet's."""
    import torch
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline, StableDiffusionPipeline
    from PIL import Image

    from sdbatch.sources.tiny import builtin_model_path

    root = tmp_path / "both"
    shutil.copytree(project, root, ignore=shutil.ignore_patterns("out"))
    (root / "recipe.yaml").write_text(f"""
name: both
model: sdbatch/tiny-sd
defaults: {{steps: 2, guidance: 7.0, width: {SIZE}, height: {SIZE}, seed: 5}}
stages:
  - {{name: both, type: generate, prompt: a cat, controlnet: [{{model: sdbatch/tiny-controlnet, image: mask.png}}],
      ip_adapter: [{SD % 0.6}]}}
""")
    result = run_cli("run", "recipe.yaml", "--out", "out", cwd=root, env=THREADS)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (record,) = [r for r in map(json.loads, (root / "out" / "manifest.jsonl").read_text().splitlines())
                 if r.get("kind") == "output"]
    base = StableDiffusionPipeline.from_pretrained(builtin_model_path("sdbatch/tiny-sd"))
    controlnet = ControlNetModel.from_pretrained(builtin_model_path("sdbatch/tiny-controlnet"))
    pipe = StableDiffusionControlNetPipeline.from_pipe(base, controlnet=controlnet)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_ip_adapter(str(root / "ipa"), subfolder="models", weight_name="ip-adapter_sd15.safetensors")
    pipe.set_ip_adapter_scale(0.6)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        expected = pipe(prompt="a cat", image=Image.open(root / "mask.png").convert("RGB"), num_inference_steps=2,
                        guidance_scale=7.0, width=SIZE, height=SIZE, generator=torch.Generator("cpu").manual_seed(5),
                        ip_adapter_image=Image.open(root / "ref.png").convert("RGB")).images[0]
    finally:
        torch.set_num_threads(before)
    assert np.array_equal(pixels(root / "out" / record["path"]), np.asarray(expected, dtype=np.int16))
    with Image.open(root / "out" / record["path"]) as im:
        text = im.text["parameters"]
    assert 'ControlNet 0: "Module: none, Model: tiny-controlnet' in text
    assert 'ControlNet 1: "Module: ip-adapter_clip_sd15, Model: ip-adapter_sd15' in text


def test_reproduce_finds_the_adapter_by_content(rendered, project, tmp_path):
    out, records = rendered
    result = run_cli("reproduce", out / records[("ipa", 0.6)]["path"], cwd=project, env=THREADS)
    assert result.returncode == 0 and "match" in result.stdout, result.stdout + result.stderr
    copy = tmp_path / "copy"
    shutil.copytree(project, copy)
    weights = copy / "ipa" / "models" / "ip-adapter_sd15.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")  # not the adapter the output was made with
    result = run_cli("reproduce", copy / "out" / records[("ipa", 0.6)]["path"], cwd=copy)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "IP-Adapter ipa (models/ip-adapter_sd15.safetensors with sha256" in result.stderr
    assert "Traceback" not in result.stderr
