"""SD3 and Flux.1 (issue 13) on the tiny built-ins, offline: generate, img2img and inpaint equal plain diffusers'
pipelines with a CPU generator seeded with the job's seed; Flux.1's distilled guidance, true_cfg and
max_sequence_length; a Flux LoRA through ``loras:`` equals load_lora_weights + set_adapters; previews; the
Forge-style infotext; inspect / reproduce / verify on a Flux output; ``--rehearse`` picks the family's tiny
model; and every recipe value the families cannot take is refused at validate (exit 2, one line).

One recipe renders everything through the CLI (``sdbatch run`` in a subprocess); the tests compare its PNGs.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
from conftest import png_pixels as pixels
from conftest import run_cli

SIZE = 64
THREADS = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
REPO = Path(__file__).resolve().parents[1]

RECIPE = f"""
name: flow
model: sdbatch/tiny-flux
defaults:
  width: {SIZE}
  height: {SIZE}
stages:
  - name: flux
    type: generate
    prompt: a red cat at night
    steps: 3
    seed: 5
  - name: flux_i2i
    type: img2img
    input: flux
    prompt: a blue dog
    strength: 0.75
    steps: 4
  - name: flux_inp
    type: inpaint
    input: flux
    mask: mask.png
    prompt: a lighthouse
    steps: 4
  - name: flux_cfg
    type: generate
    prompt: a harbour at night
    negative_prompt: a red sky
    guidance: 2.0
    true_cfg: 4.0
    max_sequence_length: 32
    steps: 2
    seed: 6
  - name: flux_lora
    type: generate
    prompt: a red cat at night
    loras:
      - path: lora.safetensors
        weight: 0.5
    steps: 3
    seed: 5
  - name: flux_prev
    type: generate
    prompt: a portrait
    previews: 1
    steps: 2
    seed: 7
  - name: sd3_prev
    type: generate
    model: sdbatch/tiny-sd3
    prompt: a portrait
    previews: 1
    steps: 2
    seed: 7
  - name: sd3
    type: generate
    model: sdbatch/tiny-sd3
    prompt: a red cat at night
    negative_prompt: a blue sky
    guidance: 5.0
    steps: 3
    seed: 5
  - name: sd3_i2i
    type: img2img
    model: sdbatch/tiny-sd3
    input: sd3
    prompt: a dog
    strength: 0.5
    steps: 4
  - name: sd3_inp
    type: inpaint
    model: sdbatch/tiny-sd3
    input: sd3
    mask: mask.png
    prompt: a lighthouse
    max_sequence_length: 16
    steps: 4
"""


def builtin(name: str) -> Path:
    from sdbatch.sources.tiny import builtin_model_path

    return builtin_model_path(name)


def make_flux_lora(target: Path, seed: int = 0) -> Path:
    """A tiny diffusers-format Flux LoRA (keys ``transformer.*``): PEFT adapters on the attention projections
    with random non-zero weights."""
    import torch
    from diffusers import FluxPipeline, FluxTransformer2DModel
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    folder = builtin("sdbatch/tiny-flux")
    transformer = FluxTransformer2DModel.from_config(FluxTransformer2DModel.load_config(folder, subfolder="transformer"))
    transformer.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in transformer.named_parameters():
            if "lora_A" in name or "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.5)
    FluxPipeline.save_lora_weights(str(target.parent), transformer_lora_layers=get_peft_model_state_dict(transformer),
                                   weight_name=target.name, safe_serialization=True)
    return target


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    from PIL import Image

    folder = tmp_path_factory.mktemp("flow")
    mask = Image.new("L", (SIZE, SIZE), 0)
    mask.paste(255, (16, 16, 48, 48))
    mask.save(folder / "mask.png")
    make_flux_lora(folder / "lora.safetensors")
    (folder / "flow.yaml").write_text(RECIPE)
    result = run_cli("run", "flow.yaml", "--out", "out", cwd=folder, env=THREADS, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return folder


def records(out: Path) -> dict[str, list[dict]]:
    found: dict[str, list[dict]] = {}
    for line in (out / "manifest.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record.get("kind") == "output":
            found.setdefault(record["stage"], []).append(record)
    return found


def final(project: Path, stage: str) -> tuple[dict, Path]:
    [record] = [r for r in records(project / "out")[stage] if "preview" not in r]
    return record, project / "out" / record["path"]


def gen(seed: int):
    import torch

    return torch.Generator("cpu").manual_seed(seed)


def plain(cls_name: str, builtin_name: str):
    import diffusers

    pipe = getattr(diffusers, cls_name).from_pretrained(builtin(builtin_name))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def png(path: Path):
    from PIL import Image

    with Image.open(path) as im:
        return im.convert("RGB")


def as_array(image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


# ------------------------------------------------------------------------------ equal to plain diffusers
def test_flux_generate_equals_plain_diffusers(project, one_thread):
    record, path = final(project, "flux")
    assert record["model"]["id"] == "sdbatch/tiny-flux"
    assert record["params"]["guidance"] == 3.5, "Flux.1's default guidance is diffusers' 3.5, not 7.5"
    assert record["params"]["true_cfg"] == 1.0
    assert "max_sequence_length" not in record["params"]
    expected = plain("FluxPipeline", "sdbatch/tiny-flux")(
        "a red cat at night", num_inference_steps=3, guidance_scale=3.5, width=SIZE, height=SIZE,
        generator=gen(5)).images[0]
    assert np.array_equal(pixels(path), as_array(expected))


def test_flux_img2img_and_inpaint_equal_plain_diffusers(project, one_thread):
    from sdbatch.stages.inpaint import paste_outside_mask

    _, source = final(project, "flux")
    _, i2i = final(project, "flux_i2i")
    expected = plain("FluxImg2ImgPipeline", "sdbatch/tiny-flux")(
        "a blue dog", image=png(source), strength=0.75, num_inference_steps=4, guidance_scale=3.5,
        generator=gen(5)).images[0]
    assert np.array_equal(pixels(i2i), as_array(expected))
    _, inp = final(project, "flux_inp")
    mask = png(project / "mask.png").convert("L")
    rendered = plain("FluxInpaintPipeline", "sdbatch/tiny-flux")(
        "a lighthouse", image=png(source), mask_image=mask, strength=1.0, num_inference_steps=4,
        guidance_scale=3.5, width=SIZE, height=SIZE, generator=gen(5)).images[0]
    assert np.array_equal(pixels(inp), as_array(paste_outside_mask(png(source), rendered, mask)))
    outside = np.asarray(mask) < 128
    assert np.array_equal(pixels(inp)[outside], pixels(source)[outside])


def test_flux_true_cfg_and_max_sequence_length_equal_plain_diffusers(project, one_thread):
    record, path = final(project, "flux_cfg")
    assert record["params"]["true_cfg"] == 4.0 and record["params"]["max_sequence_length"] == 32
    pipe = plain("FluxPipeline", "sdbatch/tiny-flux")
    kwargs = dict(num_inference_steps=2, guidance_scale=2.0, width=SIZE, height=SIZE)
    expected = pipe("a harbour at night", negative_prompt="a red sky", true_cfg_scale=4.0, max_sequence_length=32,
                    generator=gen(6), **kwargs).images[0]
    assert np.array_equal(pixels(path), as_array(expected))
    without = pipe("a harbour at night", max_sequence_length=32, generator=gen(6), **kwargs).images[0]
    assert not np.array_equal(pixels(path), as_array(without)), "true_cfg with the negative prompt changes pixels"


def test_sd3_generate_img2img_inpaint_equal_plain_diffusers(project, one_thread):
    from sdbatch.stages.inpaint import paste_outside_mask

    record, source = final(project, "sd3")
    assert record["params"]["guidance"] == 5.0 and "true_cfg" not in record["params"]
    expected = plain("StableDiffusion3Pipeline", "sdbatch/tiny-sd3")(
        "a red cat at night", negative_prompt="a blue sky", guidance_scale=5.0, num_inference_steps=3, width=SIZE,
        height=SIZE, generator=gen(5)).images[0]
    assert np.array_equal(pixels(source), as_array(expected))
    _, i2i = final(project, "sd3_i2i")
    expected = plain("StableDiffusion3Img2ImgPipeline", "sdbatch/tiny-sd3")(
        "a dog", image=png(source), strength=0.5, num_inference_steps=4, guidance_scale=7.5,
        generator=gen(5)).images[0]
    assert np.array_equal(pixels(i2i), as_array(expected))
    record, inp = final(project, "sd3_inp")
    assert record["params"]["max_sequence_length"] == 16
    mask = png(project / "mask.png").convert("L")
    rendered = plain("StableDiffusion3InpaintPipeline", "sdbatch/tiny-sd3")(
        "a lighthouse", image=png(source), mask_image=mask, strength=1.0, num_inference_steps=4, guidance_scale=7.5,
        width=SIZE, height=SIZE, max_sequence_length=16, generator=gen(5)).images[0]
    assert np.array_equal(pixels(inp), as_array(paste_outside_mask(png(source), rendered, mask)))


def test_flux_lora_changes_pixels_and_equals_plain_diffusers(project, one_thread):
    record, path = final(project, "flux_lora")
    assert record["params"]["loras"][0]["weight"] == 0.5
    _, base = final(project, "flux")
    assert not np.array_equal(pixels(path), pixels(base)), "the LoRA must change the image"
    pipe = plain("FluxPipeline", "sdbatch/tiny-flux")
    pipe.load_lora_weights(str(project / "lora.safetensors"), adapter_name="x")
    kwargs = dict(num_inference_steps=3, guidance_scale=3.5, width=SIZE, height=SIZE)
    pipe.set_adapters(["x"], adapter_weights=[0.5])
    assert np.array_equal(pixels(path), as_array(pipe("a red cat at night", generator=gen(5), **kwargs).images[0]))
    pipe.set_adapters(["x"], adapter_weights=[1.0])
    full = pipe("a red cat at night", generator=gen(5), **kwargs).images[0]
    assert not np.array_equal(pixels(path), as_array(full)), "the LoRA's weight is applied, not 1"


@pytest.mark.parametrize("stage", ["flux_prev", "sd3_prev"])
def test_previews_end_at_the_final_image(project, stage):
    previews = sorted((r["preview"]["step"], r["path"]) for r in records(project / "out")[stage] if "preview" in r)
    assert [step for step, _ in previews] == [1, 2]
    _, path = final(project, stage)
    assert np.array_equal(pixels(project / "out" / previews[-1][1]), pixels(path))
    assert not np.array_equal(pixels(project / "out" / previews[0][1]), pixels(path))


# ----------------------------------------------------------------------- infotext, inspect, reproduce
def test_infotext_writes_forge_fields_for_flux_and_cfg_for_sd3(project):
    from PIL import Image

    with Image.open(final(project, "flux")[1]) as im:
        flux = im.text["parameters"].splitlines()[-1]
    assert "Sampler: Euler, Schedule type: Simple, CFG scale: 1, Distilled CFG Scale: 3.5, Seed: 5" in flux
    with Image.open(final(project, "flux_cfg")[1]) as im:
        assert "CFG scale: 4, Distilled CFG Scale: 2, Seed: 6" in im.text["parameters"]
    with Image.open(final(project, "sd3")[1]) as im:
        sd3 = im.text["parameters"]
    assert "Sampler: Euler, Schedule type: Simple, CFG scale: 5, Seed: 5" in sd3 and "Distilled" not in sd3


def test_inspect_reproduce_verify_a_flux_output(project, tmp_path):
    _, path = final(project, "flux_cfg")
    shown = run_cli("inspect", path, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "sdbatch/tiny-flux" in shown.stdout and "true_cfg" in shown.stdout
    again = run_cli("reproduce", path, "--out", "again", cwd=tmp_path, env=THREADS)
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.splitlines()[0].startswith("match")
    checked = run_cli("verify", "--out", project / "out", cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr


# ------------------------------------------------------------------------------------------ rehearse
def test_rehearse_picks_the_family_tiny_model(tmp_path):
    from sdbatch.sources.specs import rehearsal_model

    folder = tmp_path / "my-model"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    sd3 = tmp_path / "other"
    sd3.mkdir()
    (sd3 / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusion3Pipeline"}))
    cases = {"black-forest-labs/FLUX.1-schnell": "sdbatch/tiny-flux", "black-forest-labs/FLUX.1-dev": "sdbatch/tiny-flux",
             "stabilityai/stable-diffusion-3.5-medium": "sdbatch/tiny-sd3", "models/sd3.5_large.safetensors":
             "sdbatch/tiny-sd3", "stabilityai/stable-diffusion-xl-base-1.0": "sdbatch/tiny-sdxl",
             "stabilityai/sd-turbo": "sdbatch/tiny-sd", "my-model": "sdbatch/tiny-flux", "other": "sdbatch/tiny-sd3"}
    assert {spec: rehearsal_model(spec, tmp_path) for spec in cases} == cases


@pytest.mark.parametrize("recipe", ["flux.yaml", "sd3.yaml"])
def test_example_recipe_rehearses_offline(recipe, tmp_path):
    result = run_cli("run", REPO / "recipes" / recipe, "--rehearse", "--out", tmp_path / "out", cwd=tmp_path,
                     env=THREADS, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    found = records(tmp_path / "out")
    family = "sdbatch/tiny-flux" if recipe == "flux.yaml" else "sdbatch/tiny-sd3"
    assert {r["model"]["id"] for rs in found.values() for r in rs} == {family}
    assert sum(len(rs) for rs in found.values()) == 4


# ------------------------------------------------------------------------------------ refused at validate
BASE = "model: {model}\nstages:\n  - name: a\n    type: generate\n    prompt: {prompt}\n"
REFUSED = [
    ("black-forest-labs/FLUX.1-schnell", "a cat", "    scheduler: ddim\n", "stages[0].scheduler",
     "'ddim' is a scheduler for SD 1.x/2.x and SDXL UNets; 'black-forest-labs/FLUX.1-schnell' is Flux.1, which "
     "samples with its own flow-matching FlowMatchEulerDiscreteScheduler (A1111: Euler, Simple): use scheduler: "
     "default (or leave it out)"),
    ("stabilityai/stable-diffusion-3.5-medium", "a cat", "    scheduler: DPM++ 2M Karras\n", "stages[0].scheduler",
     "'dpmpp-2m-karras' is a scheduler for SD 1.x/2.x and SDXL UNets"),
    ("sdbatch/tiny-flux", "a (cat:1.2)", "", "stages[0].prompt",
     "A1111 weighting / BREAK syntax ((x:1.2), [x], BREAK) cannot be read for Flux.1 ('sdbatch/tiny-flux': compel "
     "has no T5 support); set prompt_syntax: plain to pass the text to the model as it is"),
    ("sdbatch/tiny-sd3", "a cat BREAK a dog", "", "stages[0].prompt", "cannot be read for SD3/SD3.5"),
    ("sdbatch/tiny-sd3", "a cat", "    clip_skip: 2\n", "stages[0].clip_skip", "clip_skip is for SD 1.x/2.x and SDXL"),
    ("sdbatch/tiny-flux", "a cat", "    negative_prompt: blurry\n", "stages[0].negative_prompt",
     "Flux.1 ignores a negative prompt unless true_cfg > 1 (real CFG, two transformer passes a step); set true_cfg "
     "(e.g. 4) or remove negative_prompt"),
    ("sdbatch/tiny-sd", "a cat", "    true_cfg: 3\n", "stages[0].true_cfg",
     "true_cfg applies to Flux.1 models; 'sdbatch/tiny-sd' is SD 1.x/2.x: use guidance"),
    ("sdbatch/tiny-sd3", "a cat", "    true_cfg: 3\n", "stages[0].true_cfg", "true_cfg applies to Flux.1 models"),
    ("stabilityai/stable-diffusion-xl-base-1.0", "a cat", "    max_sequence_length: 128\n",
     "stages[0].max_sequence_length", "max_sequence_length (T5 prompt tokens) applies to SD3/SD3.5 and Flux.1 "
     "models; 'stabilityai/stable-diffusion-xl-base-1.0' is SDXL: remove it"),
    ("sdbatch/tiny-flux", "a cat", "    max_sequence_length: 513\n", "stages[0].max_sequence_length",
     "less than or equal to 512"),
    ("sdbatch/tiny-flux", "a cat", "    hires:\n      scale: 2\n", "stages[0].hires.upscaler",
     "latent upscales SD 1.x/2.x and SDXL latents; for Flux.1 ('sdbatch/tiny-flux') use upscaler: lanczos, sd-x4 or a "
     "model file"),
    ("sdbatch/tiny-sd3", "a cat", "    controlnet:\n      - model: sdbatch/tiny-controlnet\n        image: c.png\n",
     "stages[0].controlnet", "ControlNet is not supported on SD3/SD3.5 models ('sdbatch/tiny-sd3'); remove "
     "controlnet or use an SD 1.x/2.x or SDXL model"),
    ("sdbatch/tiny-flux", "a cat", "    ip_adapter:\n      - model: sdbatch/tiny-ip-adapter\n        image: c.png\n",
     "stages[0].ip_adapter", "IP-Adapter is not supported on Flux.1 models"),
    ("sdbatch/tiny-flux", "a cat", "    embeddings:\n      - path: e.safetensors\n        token: tok\n",
     "stages[0].embeddings", "textual-inversion embeddings (CLIP tokens of SD 1.x/2.x and SDXL) is not supported on "
     "Flux.1 models"),
]


@pytest.mark.parametrize("model,prompt,extra,field,message", REFUSED, ids=[r[3] + ":" + r[0] for r in REFUSED])
def test_refused_at_validate(tmp_path, model, prompt, extra, field, message):
    from PIL import Image

    (tmp_path / "e.safetensors").write_bytes(b"")
    Image.new("RGB", (16, 16)).save(tmp_path / "c.png")
    (tmp_path / "r.yaml").write_text(BASE.format(model=model, prompt=json.dumps(prompt)) + extra)
    result = run_cli("validate", "r.yaml", cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    line = next((ln for ln in result.stderr.splitlines() if f": {field}: " in ln), None)
    assert line is not None, result.stderr
    assert line.startswith("r.yaml:") and message in line, line


VIDEO_STAGES = {
    "interpolate": "    prompts: [a cat, a dog]\n    seeds: [1, 2]\n    frames: 4\n",
    "animate": "    prompt: a cat\n    frames: 4\n",
    "restyle": "    input: walk.mp4\n    prompt: a cat\n",
}


@pytest.mark.parametrize("stage_type", list(VIDEO_STAGES))
@pytest.mark.parametrize("model,family", [("black-forest-labs/FLUX.1-schnell", "Flux.1"),
                                          ("stabilityai/stable-diffusion-3.5-medium", "SD3/SD3.5")])
def test_video_stages_name_the_families_they_support(tmp_path, stage_type, model, family):
    import shutil

    shutil.copy(Path(__file__).resolve().parents[1] / "recipes" / "clips" / "walk.mp4", tmp_path / "walk.mp4")
    (tmp_path / "r.yaml").write_text(f"model: {model}\nstages:\n  - name: v\n    type: {stage_type}\n"
                                     + VIDEO_STAGES[stage_type])
    result = run_cli("validate", "r.yaml", cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    # line 1: where the model was written (the recipe's own `model:`)
    assert f"r.yaml:1: stages[0].model: {stage_type} supports SD 1.x/2.x and SDXL; '{model}' is {family}" \
        in result.stderr, result.stderr


def test_plain_syntax_and_true_cfg_with_negative_are_accepted(tmp_path):
    (tmp_path / "r.yaml").write_text(BASE.format(model="sdbatch/tiny-flux", prompt='"a (cat:1.2)"')
                                     + "    prompt_syntax: plain\n    negative_prompt: dog\n    true_cfg: 3\n")
    result = run_cli("validate", "r.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stderr


def test_sd_jobs_carry_no_family_keys():
    from sdbatch.config.recipe import parse_recipe
    from sdbatch.core.plan import build_plan
    from sdbatch.io.hashing import HashCache

    loaded = parse_recipe(BASE.format(model="sdbatch/tiny-sd", prompt="a cat"), Path("r.yaml"))
    [job] = build_plan(loaded, Path("out"), hashes=HashCache(None, {})).jobs
    assert job.params_json() == {"steps": 25, "scheduler": "default", "width": 512, "height": 512, "guidance": 7.5}


# ------------------------------------------------------------------------------------------ built-ins
def test_builtins_are_deterministic_and_need_no_sentencepiece(tmp_path):
    import hashlib

    from sdbatch.sources.tiny.flow import save_tiny_flux

    def digests(folder: Path) -> dict[str, str]:
        return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".sdbatch-builtin.json"}

    save_tiny_flux(tmp_path / "a")
    assert digests(tmp_path / "a") == digests(builtin("sdbatch/tiny-flux"))
    for name, t5 in (("sdbatch/tiny-flux", "tokenizer_2"), ("sdbatch/tiny-sd3", "tokenizer_3")):
        folder = builtin(name)
        assert (folder / t5 / "tokenizer.json").is_file() and not list((folder / t5).glob("*.model"))
        size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
        assert size < 8_000_000, (name, size)
    code = "import sys; sys.modules['sentencepiece'] = None; from transformers import AutoTokenizer; " \
           f"t = AutoTokenizer.from_pretrained({str(builtin('sdbatch/tiny-sd3') / 'tokenizer_3')!r}); " \
           "print(t('a cat').input_ids)"
    done = subprocess.run([os.sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip().startswith("["), done.stderr


def test_single_file_class_from_keys(tmp_path):
    import torch
    from safetensors.torch import save_file

    from sdbatch.runtime.models import single_file_pipeline_class

    for key, name in (("model.diffusion_model.double_blocks.0.img_attn.qkv.weight", "FluxPipeline"),
                      ("model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight", "StableDiffusion3Pipeline"),
                      ("model.diffusion_model.input_blocks.0.0.weight", "StableDiffusionPipeline")):
        path = tmp_path / f"{name}.safetensors"
        save_file({key: torch.zeros(1)}, str(path))
        assert single_file_pipeline_class(path, None).__name__ == name
    config = builtin("sdbatch/tiny-flux")
    assert single_file_pipeline_class(tmp_path / "FluxPipeline.safetensors", str(config)).__name__ == "FluxPipeline"
