"""ControlNet on generate / img2img / inpaint (issue 12): the same pixels as plain diffusers' ControlNet pipelines.

One recipe renders every case through ``sdbatch run`` (in-process); each image is compared with the diffusers
pipeline called directly (``from_pretrained(base, controlnet=...)``, the same control image, scale,
guidance start/end and a CPU generator). The tiny ControlNets are ``ControlNetModel.from_unet`` of the tiny
UNets with random output convolutions, saved with ``save_pretrained`` (and one as a single .safetensors file)
and loaded through sdbatch's own loading code. Also: control artifacts and manifest fields, the infotext, a
scale sweep and its contact sheet label, job identity, generate over a folder of control images, and every
refusal at validate.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
from conftest import image_records
from conftest import png_pixels as pixels

from sdbatch.cli import main

SIZE = 32
STEPS = 2
SEED = 3


def builtin(name: str) -> Path:
    from sdbatch.sources.tiny import builtin_model_path

    return builtin_model_path(name)


def save_controlnet(folder: Path, seed: int, xl: bool = False, single_file: Path | None = None) -> None:
    from sdbatch.sources.tiny import build_tiny_controlnet

    model = build_tiny_controlnet(seed=seed, xl=xl, std=0.1)
    model.save_pretrained(folder, safe_serialization=True)
    if single_file is not None:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(single_file))


RECIPE = f"""
name: cn
model: sdbatch/tiny-sd
defaults: {{steps: {STEPS}, guidance: 7.0, width: {SIZE}, height: {SIZE}, seed: {SEED}}}
stages:
  - {{name: plain, type: generate, prompt: a cat}}
  - name: gen
    type: generate
    prompt: a cat
    controlnet: [{{model: cn-a, image: edge.png, preprocess: canny, low: 50, high: 150, scale: 0.8, start: 0.1, end: 0.9}}]
  - name: gen_multi
    type: generate
    prompt: a cat
    controlnet:
      - {{model: cn-a, image: edge.png, scale: 0.5}}
      - {{model: cn-b.safetensors, image: edge.png, preprocess: canny, scale: 1.2, end: 0.5}}
  - name: i2i
    type: img2img
    input: input.png
    prompt: a dog
    strength: 0.6
    controlnet: [{{model: cn-a, preprocess: canny}}]
  - name: i2i_multi
    type: img2img
    input: input.png
    prompt: a dog
    strength: 0.6
    controlnet: [{{model: cn-a, preprocess: canny}}, {{model: cn-b, image: controls, scale: 0.6}}]
  - {{name: inp, type: inpaint, input: input.png, mask: mask.png, prompt: a dog,
      controlnet: [{{model: cn-a, image: edge.png, preprocess: canny}}]}}
  - {{name: inp_multi, type: inpaint, input: input.png, mask: mask.png, prompt: a dog,
      controlnet: [{{model: cn-a, image: edge.png}}, {{model: cn-b, image: edge.png, start: 0.5}}]}}
  - {{name: xl_gen, type: generate, model: sdbatch/tiny-sdxl, prompt: a cat,
      controlnet: [{{model: cn-xl, image: edge.png, preprocess: canny, scale: 0.9}}]}}
  - {{name: xl_multi, type: generate, model: sdbatch/tiny-sdxl, prompt: a cat,
      controlnet: [{{model: cn-xl, image: edge.png}}, {{model: cn-xl2, image: edge.png, preprocess: canny}}]}}
  - {{name: xl_i2i, type: img2img, model: sdbatch/tiny-sdxl, input: input.png, prompt: a dog, strength: 0.6,
      controlnet: [{{model: cn-xl, preprocess: canny}}]}}
  - {{name: xl_inp, type: inpaint, model: sdbatch/tiny-sdxl, input: input.png, mask: mask.png, prompt: a dog,
      controlnet: [{{model: cn-xl, image: edge.png}}]}}
  - {{name: sweep, type: generate, prompt: a cat, controlnet: [{{model: cn-a, image: edge.png, scale: [0.4, 1.6]}}]}}
  - {{name: per_image, type: generate, prompt: a cat, controlnet: [{{model: cn-a, image: controls}}]}}
  - {{name: i2i_b1, type: img2img, input: controls, prompt: a dog, strength: 0.6, batch_size: 1,
      controlnet: [{{model: cn-a, preprocess: canny}}, {{model: cn-b, image: edge.png, scale: 0.7}}]}}
  - {{name: i2i_b2, type: img2img, input: controls, prompt: a dog, strength: 0.6, batch_size: 2,
      controlnet: [{{model: cn-a, preprocess: canny}}, {{model: cn-b, image: edge.png, scale: 0.7}}]}}
"""


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    from PIL import Image

    root = tmp_path_factory.mktemp("controlnet")
    rng = np.random.default_rng(0)
    edge = np.zeros((SIZE, SIZE, 3), np.uint8)
    edge[8:24, 8:24] = 255
    edge[12:20, 4:28, 1] = 90
    Image.fromarray(edge).save(root / "edge.png")
    Image.fromarray(rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)).save(root / "input.png")
    (root / "controls").mkdir()
    Image.fromarray(255 - edge).save(root / "controls" / "input.png")  # matched to input.png by stem
    Image.fromarray(edge[::-1].copy()).save(root / "controls" / "other.png")
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[4:28, 4:28] = 255
    Image.fromarray(mask).save(root / "mask.png")
    save_controlnet(root / "cn-a", 11)
    save_controlnet(root / "cn-b", 12, single_file=root / "cn-b.safetensors")
    save_controlnet(root / "cn-xl", 13, xl=True)
    save_controlnet(root / "cn-xl2", 14, xl=True)
    (root / "recipe.yaml").write_text(RECIPE)
    return root


@pytest.fixture(scope="module")
def rendered(project) -> tuple[Path, dict]:
    out = project / "out"
    assert main(["run", str(project / "recipe.yaml"), "--out", str(out)]) == 0
    return out, image_records(out)


def only(records: dict, stage: str) -> dict:
    assert len(records[stage]) == 1, records.get(stage)
    return records[stage][0]


def image(path: Path):
    from PIL import Image

    with Image.open(path) as im:
        return im.convert("RGB")


def canny(im, low=100, high=200):
    import cv2
    from PIL import Image

    edges = cv2.Canny(np.asarray(im), low, high)
    return Image.fromarray(np.stack([edges] * 3, axis=2))


def reference(cls_name: str, base: str, nets: list[Path], **kwargs):
    """The plain diffusers call: the ControlNet pipeline loaded from the base folder, CPU generator."""
    import diffusers
    import torch

    models = [diffusers.ControlNetModel.from_pretrained(n) for n in nets]
    pipe = getattr(diffusers, cls_name).from_pretrained(builtin(base), controlnet=models[0] if len(models) == 1
                                                        else diffusers.MultiControlNetModel(models))
    pipe.set_progress_bar_config(disable=True)
    return pipe(num_inference_steps=STEPS, guidance_scale=7.0, generator=torch.Generator("cpu").manual_seed(SEED),
                **kwargs).images[0]


def same(a, b) -> None:
    a, b = np.asarray(a, dtype=np.int16), np.asarray(b, dtype=np.int16)
    assert a.shape == b.shape and np.array_equal(a, b), f"max diff {np.abs(a - b).max()}"


def test_generate_equals_diffusers(rendered, project):
    out, records = rendered
    control = canny(image(project / "edge.png"), 50, 150)
    ref = reference("StableDiffusionControlNetPipeline", "sdbatch/tiny-sd", [project / "cn-a"], prompt="a cat",
                    image=control, width=SIZE, height=SIZE, controlnet_conditioning_scale=0.8,
                    control_guidance_start=0.1, control_guidance_end=0.9)
    same(pixels(out / only(records, "gen")["path"]), ref)
    assert np.abs(pixels(out / only(records, "gen")["path"]) - pixels(out / only(records, "plain")["path"])).max() > 0


def test_multi_controlnet_generate_from_folder_and_single_file(rendered, project):
    out, records = rendered
    edge = image(project / "edge.png")
    ref = reference("StableDiffusionControlNetPipeline", "sdbatch/tiny-sd", [project / "cn-a", project / "cn-b"],
                    prompt="a cat", image=[edge, canny(edge)], width=SIZE, height=SIZE,
                    controlnet_conditioning_scale=[0.5, 1.2], control_guidance_start=[0.0, 0.0],
                    control_guidance_end=[1.0, 0.5])
    same(pixels(out / only(records, "gen_multi")["path"]), ref)


def test_img2img_equals_diffusers(rendered, project):
    out, records = rendered
    init = image(project / "input.png")
    ref = reference("StableDiffusionControlNetImg2ImgPipeline", "sdbatch/tiny-sd", [project / "cn-a"],
                    prompt="a dog", image=init, control_image=canny(init), strength=0.6,
                    controlnet_conditioning_scale=1.0)  # (these pipelines' own default is 0.8)
    same(pixels(out / only(records, "i2i")["path"]), ref)
    # two ControlNets; the second's folder is matched to the input by stem (controls/input.png)
    ref = reference("StableDiffusionControlNetImg2ImgPipeline", "sdbatch/tiny-sd", [project / "cn-a", project / "cn-b"],
                    prompt="a dog", image=init, control_image=[canny(init), image(project / "controls" / "input.png")],
                    strength=0.6, controlnet_conditioning_scale=[1.0, 0.6])
    record = only(records, "i2i_multi")
    same(pixels(out / record["path"]), ref)
    assert [c["source"] for c in record["controlnet"]] == ["input.png", "controls/input.png"]


def test_inpaint_equals_diffusers(rendered, project):
    from sdbatch.stages.inpaint import paste_outside_mask

    out, records = rendered
    init, mask, edge = image(project / "input.png"), image(project / "mask.png").convert("L"), image(project / "edge.png")
    ref = reference("StableDiffusionControlNetInpaintPipeline", "sdbatch/tiny-sd", [project / "cn-a"],
                    prompt="a dog", image=init, mask_image=mask, control_image=canny(edge), strength=1.0,
                    width=SIZE, height=SIZE, controlnet_conditioning_scale=1.0)
    same(pixels(out / only(records, "inp")["path"]), paste_outside_mask(init, ref, mask))
    ref = reference("StableDiffusionControlNetInpaintPipeline", "sdbatch/tiny-sd", [project / "cn-a", project / "cn-b"],
                    prompt="a dog", image=init, mask_image=mask, control_image=[edge, edge], strength=1.0,
                    width=SIZE, height=SIZE, control_guidance_start=[0.0, 0.5], control_guidance_end=[1.0, 1.0],
                    controlnet_conditioning_scale=[1.0, 1.0])
    same(pixels(out / only(records, "inp_multi")["path"]), paste_outside_mask(init, ref, mask))


def test_sdxl_stages_equal_diffusers(rendered, project):
    from sdbatch.stages.inpaint import paste_outside_mask

    out, records = rendered
    init, mask, edge = image(project / "input.png"), image(project / "mask.png").convert("L"), image(project / "edge.png")
    xl = [project / "cn-xl"]
    ref = reference("StableDiffusionXLControlNetPipeline", "sdbatch/tiny-sdxl", xl, prompt="a cat",
                    image=canny(edge), width=SIZE, height=SIZE, controlnet_conditioning_scale=0.9)
    same(pixels(out / only(records, "xl_gen")["path"]), ref)
    ref = reference("StableDiffusionXLControlNetPipeline", "sdbatch/tiny-sdxl", xl + [project / "cn-xl2"],
                    prompt="a cat", image=[edge, canny(edge)], width=SIZE, height=SIZE,
                    controlnet_conditioning_scale=[1.0, 1.0])
    same(pixels(out / only(records, "xl_multi")["path"]), ref)
    ref = reference("StableDiffusionXLControlNetImg2ImgPipeline", "sdbatch/tiny-sdxl", xl, prompt="a dog",
                    image=init, control_image=canny(init), strength=0.6, controlnet_conditioning_scale=1.0)
    same(pixels(out / only(records, "xl_i2i")["path"]), ref)
    ref = reference("StableDiffusionXLControlNetInpaintPipeline", "sdbatch/tiny-sdxl", xl, prompt="a dog",
                    image=init, mask_image=mask, control_image=edge, strength=1.0, width=SIZE, height=SIZE,
                    controlnet_conditioning_scale=1.0)
    same(pixels(out / only(records, "xl_inp")["path"]), paste_outside_mask(init, ref, mask))


def test_control_images_saved_recorded_and_in_the_infotext(rendered, project):
    from test_infotext import parse_generation_parameters

    from sdbatch.io.hashing import sha256_file

    out, records = rendered
    record = only(records, "gen")
    [entry] = record["controlnet"]
    saved = out / entry["path"]
    assert entry["path"].startswith("gen/control/") and entry["sha256"] == sha256_file(saved)
    same(image(saved), canny(image(project / "edge.png"), 50, 150))  # what the pipeline got
    unit = record["params"]["controlnet"][0]
    assert unit["files"] == {"edge.png": sha256_file(project / "edge.png")} and unit["scale"] == 0.8
    with __import__("PIL.Image").Image.open(out / record["path"]) as im:
        fields = parse_generation_parameters(im.text["parameters"])
    assert fields["ControlNet 0"] == ("Module: canny, Model: cn-a, Weight: 0.8, Resize Mode: Just Resize, "
                                      "Low Vram: False, Processor Res: 32, Threshold A: 50, Threshold B: 150, "
                                      "Guidance Start: 0.1, Guidance End: 0.9, Pixel Perfect: False, "
                                      "Control Mode: Balanced")
    assert fields["Seed"] == str(SEED)
    assert len(only(records, "i2i_multi")["controlnet"]) == 2


def test_scale_sweep_and_contact_sheet_label(rendered):
    from sdbatch.core.record import OutputRecord
    from sdbatch.reports.grid import grid_axes

    out, records = rendered
    sweep = records["sweep"]
    assert sorted(r["params"]["controlnet"][0]["scale"] for r in sweep) == [0.4, 1.6]
    a, b = (pixels(out / r["path"]) for r in sweep)
    assert np.abs(a - b).max() > 0
    x, _, _ = grid_axes([OutputRecord.model_validate(r) for r in sweep])
    assert x == "ControlNet 0"


def test_generate_over_a_folder_of_control_images(rendered):
    out, records = rendered
    jobs = records["per_image"]
    assert sorted(r["inputs"][0]["path"] for r in jobs) == ["controls/input.png", "controls/other.png"]
    assert all(Path(r["path"]).name.startswith(("input-", "other-")) for r in jobs)
    a, b = (pixels(out / r["path"]) for r in jobs)
    assert np.abs(a - b).max() > 0


def test_rerun_renders_nothing_and_ids_follow_the_control_image(rendered, project, capsys):
    from sdbatch.config.recipe import load_recipe
    from sdbatch.core.plan import build_plan

    out, records = rendered
    capsys.readouterr()
    assert main(["run", str(project / "recipe.yaml"), "--out", str(out)]) == 0
    assert "nothing to do: 19 job(s) already done, 0 rendered" in capsys.readouterr().out
    plan = build_plan(load_recipe(project / "recipe.yaml"), out)
    ids = {j.stage: j.job_id for j in plan.jobs}
    assert ids["gen"] == only(records, "gen")["job_id"]
    assert ids["plain"] == only(records, "plain")["job_id"]
    (project / "edge.png").write_bytes((project / "edge.png").read_bytes() + b"\0")  # same pixels, new content
    try:
        again = {j.stage: j.job_id for j in build_plan(load_recipe(project / "recipe.yaml"), out).jobs}
    finally:
        (project / "edge.png").write_bytes((project / "edge.png").read_bytes()[:-1])
    assert again["gen"] != ids["gen"] and again["plain"] == ids["plain"] and again["i2i"] == ids["i2i"]


# ----------------------------------------------------------------------------------- refused at validate
@pytest.mark.parametrize("unit,field,words", [
    ("{model: cn-xl, image: edge.png}", "controlnet[0].model", "SDXL"),
    ("{model: cn-a, image: nope.png}", "controlnet[0].image", "no such image"),
    ("{model: cn-a, image: edge.png, scale: 2.5}", "controlnet[0].scale", "less than or equal to 2"),
    ("{model: cn-a, image: edge.png, start: 0.6, end: 0.4}", "controlnet[0].start", "below end"),
    ("{model: cn-a, image: edge.png, preprocess: lineart}", "controlnet[0].preprocess",
     'pip install -e ".[controlnet-aux]"'),
    ("{model: cn-a}", "controlnet[0].image", "no input image"),
    ("{model: missing-folder/}", "controlnet[0].model", "ControlNet file/folder"),
    ("{model: sdbatch/tiny-controlnet, image: clip.mp4}", "controlnet[0].image", "video"),
])
def test_bad_units_refused_at_validate(project, tmp_path, capsys, monkeypatch, unit, field, words):
    import shutil

    import sdbatch.config.control as control

    monkeypatch.setattr(control, "aux_installed", lambda: False)  # as on a machine without the extra

    (tmp_path / "clip.mp4").write_bytes(b"not a video")
    for name in ("edge.png",):
        shutil.copy(project / name, tmp_path / name)
    shutil.copytree(project / "cn-a", tmp_path / "cn-a")
    shutil.copytree(project / "cn-xl", tmp_path / "cn-xl")
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(f"model: sdbatch/tiny-sd\nstages:\n  - name: s\n    type: generate\n    prompt: x\n"
                      f"    controlnet: [{unit}]\n")
    assert main(["validate", str(recipe)]) == 2
    err = capsys.readouterr().err
    line = next((ln for ln in err.splitlines() if f"stages[0].{field}:" in ln), None)
    assert line is not None and words in line, err
    assert line.startswith(f"{recipe}:6: "), err  # file:line: field: message
    assert "Traceback" not in err


def test_no_controlnet_keeps_ids_and_params(project):
    from sdbatch.config.recipe import load_recipe
    from sdbatch.core.plan import build_plan

    plan = build_plan(load_recipe(project / "recipe.yaml"), project / "out")
    plain = next(j for j in plan.jobs if j.stage == "plain")
    assert "controlnet" not in plain.params_json()


def test_reproduce_and_inspect(rendered, tmp_path, capsys):
    """reproduce finds the recorded ControlNets (a folder, a single file) and control images by content and
    re-renders the same pixels; inspect shows the units and the saved control images."""
    out, records = rendered
    target = out / only(records, "gen_multi")["path"]
    capsys.readouterr()
    assert main(["reproduce", str(target), "--out", str(tmp_path / "again")]) == 0
    assert "match" in capsys.readouterr().out
    assert main(["inspect", str(target)]) == 0
    shown = capsys.readouterr().out
    assert "cn-b.safetensors" in shown and "gen_multi/control/" in shown


def test_rehearse_swaps_real_controlnets_and_defaults_apply(tmp_path):
    """A recipe naming hub ControlNets plans offline under --rehearse with the tiny built-ins of its family;
    ``controlnet:`` in defaults reaches every image stage; the example recipe rehearses them too."""
    from sdbatch.config.recipe import load_recipe
    from sdbatch.core.plan import build_plan

    (tmp_path / "edge.png").write_bytes((Path(__file__).parents[1] / "recipes/control/castle.png").read_bytes())
    recipe = tmp_path / "r.yaml"
    recipe.write_text("""
model: stable-diffusion-v1-5/stable-diffusion-v1-5
defaults:
  controlnet: [{model: lllyasviel/control_v11p_sd15_canny, image: edge.png, preprocess: canny}]
stages:
  - {name: a, type: generate, prompt: x}
  - {name: b, type: generate, prompt: x, model: stabilityai/stable-diffusion-xl-base-1.0,
     controlnet: [{model: diffusers/controlnet-canny-sdxl-1.0, image: edge.png, preprocess: depth}]}
""")
    plan = build_plan(load_recipe(recipe), tmp_path / "out", rehearse=True)
    jobs = {j.stage: j for j in plan.jobs}
    assert jobs["a"].aux_models["controlnet:0"].id == "sdbatch/tiny-controlnet"
    assert jobs["a"].params.controlnet[0].model == "lllyasviel/control_v11p_sd15_canny"
    assert jobs["b"].aux_models["controlnet:0"].id == "sdbatch/tiny-controlnet-sdxl"
    assert jobs["b"].aux_models["controlnet-depth:0"].id == "sdbatch/tiny-depth"
    real = {j.stage: j for j in build_plan(load_recipe(recipe), tmp_path / "out").jobs}
    assert real["a"].aux_models["controlnet:0"].id == "lllyasviel/control_v11p_sd15_canny"
    example = build_plan(load_recipe(Path(__file__).parents[1] / "recipes/controlnet.yaml"), tmp_path / "x",
                         rehearse=True)
    assert {ref.id for j in example.jobs for k, ref in j.aux_models.items() if k.startswith("controlnet:")} == {
        "sdbatch/tiny-controlnet"}


def test_batched_equals_unbatched(rendered):
    """Two jobs with their own control images in one call (several ControlNets: each unit's batch as a tensor)
    match the one-by-one images within one level."""
    out, records = rendered
    one = {Path(r["inputs"][0]["path"]).name: pixels(out / r["path"]) for r in records["i2i_b1"]}
    two = {Path(r["inputs"][0]["path"]).name: pixels(out / r["path"]) for r in records["i2i_b2"]}
    assert sorted(one) == sorted(two) == ["input.png", "other.png"]
    assert all(len(r.get("batch") or ()) == 2 for r in records["i2i_b2"])
    for name in one:
        assert np.abs(one[name] - two[name]).max() <= 1
    assert np.abs(one["input.png"] - one["other.png"]).max() > 0
