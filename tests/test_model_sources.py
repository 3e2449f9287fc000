"""Model sources on tiny built-ins, offline: LoRAs, single-file checkpoints, VAE override, SDXL stages, batching.

One recipe renders everything through the CLI in a subprocess (``sdbatch run``); the tests then compare its
PNGs and manifest lines. Also: ``.ckpt`` refused without ``allow_pickle`` (validate and load), missing files
named at validate, prompt embeddings equal to prompt strings, batch_size 3 vs 1 within one level.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
from conftest import png_pixels as pixels
from conftest import run_cli
from helpers import THREADS, diffusers_image, tiny_sd_pipe


def generate_params(**values):
    """Typed params of a generate job (as the planner makes them)."""
    from sdbatch.core.params import make_params
    from sdbatch.stages.generate import GenerateStage

    base = {"steps": 2, "scheduler": "default", "width": 32, "height": 32, "guidance": 7.0}
    return make_params(GenerateStage, {**base, **values})

SIZE = 64
STEPS = 4


# ------------------------------------------------------------------------------------------ helpers
def builtin(name: str) -> Path:
    from sdbatch.sources.tiny import builtin_model_path

    return builtin_model_path(name)  # in the session cache (conftest's SDBATCH_CACHE)


def cli(*args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    return run_cli(*args, cwd=cwd, timeout=timeout, env=THREADS)


def outputs(out: Path) -> dict[str, list[dict]]:
    """stage -> its final output records (previews excluded)."""
    by_stage: dict[str, list[dict]] = {}
    for line in (out / "manifest.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record.get("kind") == "output" and "preview" not in record:
            by_stage.setdefault(record["stage"], []).append(record)
    return by_stage


def only_image(out: Path, records: dict, stage: str) -> np.ndarray:
    assert len(records[stage]) == 1, records.get(stage)
    return pixels(out / records[stage][0]["path"])


def make_lora(model_folder: Path, target: Path, xl: bool = False, seed: int = 0) -> Path:
    """A tiny LoRA: PEFT adapters on the UNet's attention projections with random non-zero B weights."""
    import torch
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(model_folder, subfolder="unet"))
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in unet.named_parameters():
            if "lora_A" in name or "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.5)
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    cls = StableDiffusionXLPipeline if xl else StableDiffusionPipeline
    target.parent.mkdir(parents=True, exist_ok=True)
    cls.save_lora_weights(str(target.parent), unet_lora_layers=layers, weight_name=target.name,
                          safe_serialization=True)
    return target


# ---- a diffusers folder -> one checkpoint in the original (LDM) key layout, as A1111 / civitai files are
_RESNET = [("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"),
           ("conv2", "out_layers.3"), ("time_emb_proj", "emb_layers.1"), ("conv_shortcut", "skip_connection")]


def _ldm_resnet(rest: str) -> str:
    for new, old in _RESNET:
        if rest.startswith(new + "."):
            return old + rest[len(new):]
    return rest


def unet_to_ldm(state: dict, config: dict) -> dict:
    """The inverse of diffusers' ``convert_ldm_unet_checkpoint`` for any number of blocks."""
    from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING

    top = DIFFUSERS_TO_LDM_MAPPING["unet"]["layers"]
    n = config["layers_per_block"] + 1
    up_attn = ["CrossAttn" in kind for kind in config["up_block_types"]]
    out = {}
    for key, value in state.items():
        if key in top:
            ldm = top[key]
        elif m := re.match(r"down_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", key):
            ldm = f"input_blocks.{int(m[1]) * n + int(m[2]) + 1}.0.{_ldm_resnet(m[3])}"
        elif m := re.match(r"down_blocks\.(\d+)\.attentions\.(\d+)\.(.*)", key):
            ldm = f"input_blocks.{int(m[1]) * n + int(m[2]) + 1}.1.{m[3]}"
        elif m := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", key):
            ldm = f"input_blocks.{(int(m[1]) + 1) * n}.0.op.{m[2]}"
        elif m := re.match(r"mid_block\.resnets\.(\d+)\.(.*)", key):
            ldm = f"middle_block.{2 * int(m[1])}.{_ldm_resnet(m[2])}"
        elif m := re.match(r"mid_block\.attentions\.0\.(.*)", key):
            ldm = f"middle_block.1.{m[1]}"
        elif m := re.match(r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", key):
            ldm = f"output_blocks.{int(m[1]) * n + int(m[2])}.0.{_ldm_resnet(m[3])}"
        elif m := re.match(r"up_blocks\.(\d+)\.attentions\.(\d+)\.(.*)", key):
            ldm = f"output_blocks.{int(m[1]) * n + int(m[2])}.1.{m[3]}"
        elif m := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", key):
            block = int(m[1])
            ldm = f"output_blocks.{block * n + n - 1}.{2 if up_attn[block] else 1}.conv.{m[2]}"
        else:
            raise KeyError(key)
        out["model.diffusion_model." + ldm] = value
    return out


def vae_to_ldm(state: dict, config: dict) -> dict:
    """The inverse of diffusers' ``convert_ldm_vae_checkpoint``."""
    from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING

    top = DIFFUSERS_TO_LDM_MAPPING["vae"]
    blocks = len(config["up_block_types"])
    attn = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
    out = {}
    for key, value in state.items():
        shortcut = key.replace("conv_shortcut", "nin_shortcut")
        if key in top:
            ldm = top[key]
        elif m := re.match(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", shortcut):
            ldm = f"encoder.down.{m[1]}.block.{m[2]}.{m[3]}"
        elif m := re.match(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", key):
            ldm = f"encoder.down.{m[1]}.downsample.conv.{m[2]}"
        elif m := re.match(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", shortcut):
            ldm = f"decoder.up.{blocks - 1 - int(m[1])}.block.{m[2]}.{m[3]}"
        elif m := re.match(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", key):
            ldm = f"decoder.up.{blocks - 1 - int(m[1])}.upsample.conv.{m[2]}"
        elif m := re.match(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.*)", shortcut):
            ldm = f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3]}"
        elif m := re.match(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.*)\.(weight|bias)", key):
            ldm = f"{m[1]}.mid.attn_1.{attn[m[2]]}.{m[3]}"
        else:
            raise KeyError(key)
        out["first_stage_model." + ldm] = value
    return out


def save_sd_single_file(folder: Path, target: Path) -> Path:
    """The tiny SD pipeline folder as one original-layout .safetensors checkpoint."""
    from safetensors.torch import load_file, save_file

    unet = load_file(folder / "unet" / "diffusion_pytorch_model.safetensors")
    vae = load_file(folder / "vae" / "diffusion_pytorch_model.safetensors")
    text = load_file(folder / "text_encoder" / "model.safetensors")
    checkpoint = unet_to_ldm(unet, json.loads((folder / "unet" / "config.json").read_text()))
    checkpoint.update(vae_to_ldm(vae, json.loads((folder / "vae" / "config.json").read_text())))
    for key, value in text.items():
        key = key if key.startswith("text_model.") else "text_model." + key
        checkpoint["cond_stage_model.transformer." + key] = value
    save_file({k: v.contiguous() for k, v in checkpoint.items()}, str(target))
    return target


# -------------------------------------------------------------------------------- the rendered recipe
RECIPE = """
name: sources
model: sdbatch/tiny-sd
allow_pickle: true  # for the .ckpt stage
defaults: {{steps: {steps}, guidance: 7.0, width: {size}, height: {size}, seed: 1}}
stages:
  - {{name: lora_a, type: generate, prompt: a cat, loras: [{{path: loras/sd-lora.safetensors, weight: 0.8}}]}}
  - {{name: plain, type: generate, prompt: a cat}}
  - {{name: lora_b, type: generate, prompt: a cat, loras: [{{path: loras/sd-lora.safetensors, weight: 0.4}}]}}
  - {{name: single, type: generate, prompt: a cat, model: tiny-sd.safetensors, pipeline_config: sdbatch/tiny-sd}}
  - {{name: single_ckpt, type: generate, prompt: a cat, model: tiny-sd.ckpt, pipeline_config: sdbatch/tiny-sd}}
  - {{name: vae_same, type: generate, prompt: a cat, vae: {same_vae}}}
  - {{name: vae_other, type: generate, prompt: a cat, vae: other-vae}}
  - {{name: vae_file, type: generate, prompt: a cat, vae: other-vae/diffusion_pytorch_model.safetensors}}
  - {{name: xl_gen, type: generate, model: sdbatch/tiny-sdxl, prompt: a cat}}
  - {{name: xl_lora, type: generate, model: sdbatch/tiny-sdxl, prompt: a cat, loras: [loras/xl-lora.safetensors]}}
  - {{name: xl_img2img, type: img2img, model: sdbatch/tiny-sdxl, input: xl_gen, prompt: a dog, strength: 0.5}}
  - {{name: xl_inpaint, type: inpaint, model: sdbatch/tiny-sdxl, input: xl_gen, mask: mask.png, prompt: a dog}}
  - {{name: b1, type: generate, prompt: [a cat, the dog], negative_prompt: ["", ugly], batch_size: 1}}
  - {{name: b3, type: generate, prompt: [a cat, the dog], negative_prompt: ["", ugly], batch_size: 3}}
  - {{name: xb1, type: generate, model: sdbatch/tiny-sdxl, prompt: [a cat, the dog], negative_prompt: ["", ugly],
      batch_size: 1}}
  - {{name: xb3, type: generate, model: sdbatch/tiny-sdxl, prompt: [a cat, the dog], negative_prompt: ["", ugly],
      batch_size: 3}}
"""


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A recipe folder with a tiny LoRA (SD and SDXL), a single-file checkpoint, a second VAE and a mask."""
    from PIL import Image

    from sdbatch.sources.tiny import TINY_VAE, _seeded

    root = tmp_path_factory.mktemp("sources")
    sd, xl = builtin("sdbatch/tiny-sd"), builtin("sdbatch/tiny-sdxl")
    make_lora(sd, root / "loras" / "sd-lora.safetensors")
    make_lora(xl, root / "loras" / "xl-lora.safetensors", xl=True, seed=1)
    save_sd_single_file(sd, root / "tiny-sd.safetensors")
    import torch
    from safetensors.torch import load_file

    torch.save({"state_dict": load_file(root / "tiny-sd.safetensors")}, root / "tiny-sd.ckpt")
    from diffusers import AutoencoderKL

    with _seeded(7):
        AutoencoderKL(**TINY_VAE, scaling_factor=0.18215).save_pretrained(root / "other-vae")
    mask = np.zeros((SIZE, SIZE), dtype=np.uint8)
    mask[16:48, 16:48] = 255
    Image.fromarray(mask).save(root / "mask.png")
    (root / "recipe.yaml").write_text(RECIPE.format(steps=STEPS, size=SIZE, same_vae=sd / "vae"))
    return root


@pytest.fixture(scope="module")
def rendered(project) -> tuple[Path, dict]:
    out = project / "out"
    result = cli("run", "recipe.yaml", "--out", "out", cwd=project)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out, outputs(out)


def test_lora_changes_output_and_is_recorded(rendered, project):
    from sdbatch.io.hashing import sha256_file

    out, records = rendered
    plain, a, b = (only_image(out, records, s) for s in ("plain", "lora_a", "lora_b"))
    assert np.abs(a - plain).max() > 0, "the LoRA changed nothing"
    assert np.abs(b - plain).max() > 0 and np.abs(a - b).max() > 0, "the LoRA weight changed nothing"
    sha = sha256_file(project / "loras" / "sd-lora.safetensors")
    assert records["lora_a"][0]["params"]["loras"] == [
        {"path": "loras/sd-lora.safetensors", "sha256": sha, "weight": 0.8}]
    assert records["lora_b"][0]["params"]["loras"][0]["weight"] == 0.4
    assert "loras" not in records["plain"][0]["params"]
    assert np.abs(only_image(out, records, "xl_lora") - only_image(out, records, "xl_gen")).max() > 0


def test_no_lora_job_matches_plain_diffusers(rendered, one_thread):
    """``plain`` renders after ``lora_a`` loaded its adapter on the same UNet: nothing leaks into it."""
    out, records = rendered
    image = diffusers_image(tiny_sd_pipe(), seed=1, steps=STEPS, size=SIZE, prompt="a cat", negative_prompt=None)
    assert np.array_equal(image, only_image(out, records, "plain"))


def test_single_file_checkpoint_loads_offline(rendered, project):
    out, records = rendered
    assert np.array_equal(only_image(out, records, "single"), only_image(out, records, "plain"))
    # a pickle checkpoint loads when the recipe says allow_pickle: true (diffusers unpickles weights only)
    assert np.array_equal(only_image(out, records, "single_ckpt"), only_image(out, records, "plain"))
    record = records["single"][0]
    assert record["model"]["source"] == "file" and record["params"]["pipeline_config"] == "sdbatch/tiny-sd"


def test_vae_override(rendered):
    out, records = rendered
    plain = only_image(out, records, "plain")
    assert np.array_equal(only_image(out, records, "vae_same"), plain)  # the model's own VAE, loaded separately
    assert np.abs(only_image(out, records, "vae_other") - plain).max() > 0
    assert records["vae_other"][0]["params"]["vae"].startswith("folder:other-vae@")
    # a bare weights file: its config comes from the model's own vae/ folder
    assert np.array_equal(only_image(out, records, "vae_file"), only_image(out, records, "vae_other"))
    assert records["vae_file"][0]["params"]["vae"].startswith("file:other-vae/diffusion_pytorch_model.safetensors@")


def test_sdxl_still_image_stages(rendered):
    out, records = rendered
    for stage in ("xl_gen", "xl_img2img", "xl_inpaint"):
        image = only_image(out, records, stage)
        assert image.shape == (SIZE, SIZE, 3), stage
    assert np.abs(only_image(out, records, "xl_img2img") - only_image(out, records, "xl_gen")).max() > 0


@pytest.mark.parametrize("one, three", [("b1", "b3"), ("xb1", "xb3")])
def test_batched_equals_unbatched(rendered, one, three):
    out, records = rendered
    def key(r: dict) -> tuple:
        return r["prompt"], r["negative_prompt"], r["seed"]

    singles = {key(r): pixels(out / r["path"]) for r in records[one]}
    batched = {key(r): pixels(out / r["path"]) for r in records[three]}
    assert len(singles) == len(batched) == 4 and singles.keys() == batched.keys()
    diff = max(int(np.abs(singles[k] - batched[k]).max()) for k in singles)
    print(f"{three} vs {one}: max pixel difference {diff}")
    assert diff <= 1


def test_lora_file_is_in_job_identity(project, tmp_path):
    import shutil

    from sdbatch.config.recipe import load_recipe
    from sdbatch.core.plan import build_plan
    from sdbatch.io.hashing import HashCache

    copy = tmp_path / "p"
    shutil.copytree(project, copy, ignore=shutil.ignore_patterns("out"))
    before = {j.stage: j.job_id for j in build_plan(load_recipe(copy / "recipe.yaml"), copy / "out",
                                                     hashes=HashCache(None, {})).jobs}
    lora = copy / "loras" / "sd-lora.safetensors"
    lora.write_bytes(lora.read_bytes() + b" ")
    after = {j.stage: j.job_id for j in build_plan(load_recipe(copy / "recipe.yaml"), copy / "out",
                                                    hashes=HashCache(None, {})).jobs}
    assert before["lora_a"] != after["lora_a"] and before["lora_b"] != after["lora_b"]
    assert before["plain"] == after["plain"] and before["single"] == after["single"]


# ---------------------------------------------------------------------------------- prompt encoding
def test_prompt_embeddings_equal_strings_and_encode_once(tmp_path, one_thread):
    """A batch with repeated prompts: each distinct text is encoded once; pixels equal the string call."""
    import torch

    from sdbatch.core.job import Job, ModelRef
    from sdbatch.core.params import RunOptions
    from sdbatch.runtime.models import ModelBank
    from sdbatch.stages.base import StageContext
    from sdbatch.stages.diffusion import prompt_kwargs

    bank = ModelBank()
    ctx = StageContext(bank, tmp_path, tmp_path)

    def job(prompt: str, negative: str, seed: int) -> Job:
        return Job(f"{seed:064d}", "s", "generate", prompt, negative, seed, generate_params(),
                   ModelRef("sdbatch/tiny-sd", "v1", "builtin"), "cpu", "float32", "s/x.png", options=RunOptions())

    jobs = [job("a cat", "", 1), job("a cat", "ugly", 2), job("the dog", "", 3)]
    pipe = bank.pipeline(jobs[0], "text2img")
    calls: list[str] = []
    original = pipe.encode_prompt

    def counting(prompt, *args, **kwargs):
        calls.append(prompt)
        return original(prompt, *args, **kwargs)

    pipe.encode_prompt = counting
    try:
        common = {"num_inference_steps": 2, "guidance_scale": 7.0, "width": SIZE, "height": SIZE, "output_type": "np"}
        embedded = pipe(**prompt_kwargs(pipe, jobs, ctx, 7.0), **common,
                        generator=[torch.Generator("cpu").manual_seed(j.seed) for j in jobs]).images
        calls = [c for c in calls if c is not None]  # the pipeline calls it once more, with the embeddings
        assert sorted(calls) == sorted(["a cat", "the dog", "", "ugly"])  # each distinct text once
        calls.clear()
        prompt_kwargs(pipe, jobs, ctx, 7.0)
        assert calls == []  # cached for the next batch
    finally:
        del pipe.encode_prompt
    strings = pipe(prompt=[j.prompt for j in jobs], negative_prompt=[j.negative_prompt for j in jobs], **common,
                   generator=[torch.Generator("cpu").manual_seed(j.seed) for j in jobs]).images
    assert np.array_equal(embedded, strings)


# ------------------------------------------------------------------------------------- validation
def _validate(tmp_path: Path, text: str) -> subprocess.CompletedProcess:
    (tmp_path / "r.yaml").write_text(text)
    return cli("validate", "r.yaml", cwd=tmp_path, timeout=120)


def test_ckpt_refused_without_allow_pickle(tmp_path):
    (tmp_path / "old.ckpt").write_bytes(b"not really a pickle")
    stage = "stages: [{name: a, type: generate, prompt: x}]\n"
    result = _validate(tmp_path, "model: old.ckpt\n" + stage)
    assert result.returncode == 2
    assert re.search(r"r\.yaml:1: model: .*allow_pickle", result.stderr), result.stderr
    result = _validate(tmp_path, "model: old.ckpt\nallow_pickle: true\n" + stage)
    assert result.returncode == 0, result.stderr


def test_ckpt_refused_at_load_time(tmp_path):
    import torch

    from sdbatch.core.job import Job, ModelRef
    from sdbatch.core.params import RunOptions
    from sdbatch.errors import ModelUnavailable
    from sdbatch.runtime.models import ModelBank

    ckpt = tmp_path / "old.ckpt"
    ckpt.write_bytes(b"never unpickled")
    job = Job("0" * 64, "s", "generate", "x", "", 0, generate_params(),
              ModelRef("old.ckpt", "abc", "file", str(ckpt)), "cpu", "float32", "s/x.png", options=RunOptions())
    with pytest.raises(ModelUnavailable, match="allow_pickle"):
        ModelBank().base(job)
    with pytest.raises(ModelUnavailable, match="allow_pickle"):
        ModelBank._load_single_file(ckpt, torch.float32)


def test_missing_lora_and_vae_named_at_validate(tmp_path):
    result = _validate(tmp_path, "model: sdbatch/tiny-sd\nstages:\n"
                       "  - {name: a, type: generate, prompt: x, loras: [{path: nope.safetensors}], vae: novae/}\n")
    assert result.returncode == 2
    assert "stages[0].loras[0].path: 'nope.safetensors': no such LoRA file" in result.stderr, result.stderr
    assert "stages[0].vae: 'novae/'" in result.stderr
    result = _validate(tmp_path, "model: sdbatch/tiny-sd\ndefaults: {loras: [gone.safetensors]}\n"
                       "stages: [{name: a, type: generate, prompt: x}]\n")
    assert result.returncode == 2
    assert "stages[0].loras[0].path (from defaults.loras[0].path)" in result.stderr, result.stderr
    (tmp_path / "l.bin").write_bytes(b"x")
    result = _validate(tmp_path, "model: sdbatch/tiny-sd\n"
                       "stages: [{name: a, type: generate, prompt: x, loras: [l.bin]}]\n")
    assert result.returncode == 2 and "allow_pickle" in result.stderr
