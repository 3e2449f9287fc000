"""The SDXL refiner on generate (issue 13): the same pixels as diffusers' documented ensemble of experts.

One recipe renders every case through ``sdbatch run`` (in-process); each image is compared with the two diffusers
pipelines called directly (``base(..., denoising_end=switch_at, output_type="latent")`` then
``refiner(..., denoising_start=switch_at, image=latents)``, a fresh CPU generator per call, the refiner loaded with
``from_pretrained(refiner, text_encoder_2=base.text_encoder_2, vae=base.vae)``). Also: a refiner whose VAE differs
(not shared), the job's scheduler on both passes, previews over both passes, the infotext read back as A1111
reads it, job identity, reproduce / verify / inspect, every refusal at validate, and the example recipe's rehearsal.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
from conftest import manifest_records, png_pixels, run_cli
from test_model_sources import make_lora

from sdbatch.cli import main

SIZE = 32
STEPS = 4
GUIDANCE = 5.0
REPO = Path(__file__).resolve().parents[1]

RECIPE = f"""
name: rf
model: sdbatch/tiny-sdxl
defaults: {{steps: {STEPS}, guidance: {GUIDANCE}, width: {SIZE}, height: {SIZE}, seed: 3}}
stages:
  - {{name: plain, type: generate, prompt: a cat}}
  - name: xl
    type: generate
    prompt: a cat
    seeds: [3, 4]
    refiner: {{model: sdbatch/tiny-sdxl-refiner, switch_at: 0.7}}
  - {{name: neg, type: generate, prompt: a red fox, negative_prompt: blurry, scheduler: euler-a,
      refiner: {{model: sdbatch/tiny-sdxl-refiner, switch_at: 0.5}}}}
  - {{name: own_vae, type: generate, prompt: a cat, refiner: {{model: own-vae-refiner, switch_at: 0.7}}}}
  - {{name: previews, type: generate, prompt: a cat, previews: 2, refiner: {{model: sdbatch/tiny-sdxl-refiner}}}}
  - {{name: batched, type: generate, prompt: a cat, seeds: [3, 4], batch_size: 2,
      refiner: {{model: sdbatch/tiny-sdxl-refiner, switch_at: 0.7}}}}
  - {{name: lora, type: generate, prompt: a cat, seeds: [3, 4], loras: [xl-lora.safetensors],
      refiner: {{model: sdbatch/tiny-sdxl-refiner, switch_at: 0.7}}}}
"""


def builtin(name: str) -> Path:
    from sdbatch.sources.tiny import builtin_model_path

    return builtin_model_path(name)


def save_own_vae_refiner(folder: Path) -> None:
    """The tiny refiner with a VAE of its own (another config and weights): it must not take the base's."""
    from diffusers import AutoencoderKL

    from sdbatch.sources.tiny.build import _save_pipeline, _seeded
    from sdbatch.sources.tiny.configs import TINY_VAE
    from sdbatch.sources.tiny.refiner import build_tiny_sdxl_refiner

    pipe = build_tiny_sdxl_refiner()
    with _seeded(77):
        vae = AutoencoderKL(**TINY_VAE, scaling_factor=0.13025, force_upcast=False)
    pipe.register_modules(vae=vae)
    _save_pipeline(pipe, folder)


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("refiner")
    save_own_vae_refiner(root / "own-vae-refiner")
    make_lora(builtin("sdbatch/tiny-sdxl"), root / "xl-lora.safetensors", xl=True, seed=5)
    (root / "recipe.yaml").write_text(RECIPE)
    return root


@pytest.fixture(scope="module")
def rendered(project) -> tuple[Path, dict[str, list[dict]]]:
    out = project / "out"
    assert main(["run", str(project / "recipe.yaml"), "--out", str(out)]) == 0
    records: dict[str, list[dict]] = {}
    for record in manifest_records(out, "output"):
        if record.get("role") == "image":
            records.setdefault(record["stage"], []).append(record)
    return out, records


def ensemble(prompt: str, seed: int, switch_at: float, refiner_folder: Path, *, negative: str | None = None,
             scheduler: str | None = None, share_vae: bool = True, lora: Path | None = None):
    """diffusers' documented two-pipeline ensemble, written out as its docs write it."""
    import diffusers
    import torch

    base = diffusers.StableDiffusionXLPipeline.from_pretrained(builtin("sdbatch/tiny-sdxl"))
    if lora is not None:
        base.load_lora_weights(str(lora))  # the base's only: the refiner is loaded without it
    shared = {"text_encoder_2": base.text_encoder_2, **({"vae": base.vae} if share_vae else {})}
    refiner = diffusers.StableDiffusionXLImg2ImgPipeline.from_pretrained(refiner_folder, **shared)
    if scheduler:
        base.scheduler = getattr(diffusers, scheduler).from_config(base.scheduler.config)
        refiner.scheduler = getattr(diffusers, scheduler).from_config(refiner.scheduler.config)
    for pipe in (base, refiner):
        pipe.set_progress_bar_config(disable=True)
    latents = base(prompt=prompt, negative_prompt=negative, num_inference_steps=STEPS, guidance_scale=GUIDANCE,
                   width=SIZE, height=SIZE, denoising_end=switch_at, output_type="latent",
                   generator=torch.Generator("cpu").manual_seed(seed)).images
    image = refiner(prompt=prompt, negative_prompt=negative, num_inference_steps=STEPS, guidance_scale=GUIDANCE,
                    denoising_start=switch_at, image=latents, generator=torch.Generator("cpu").manual_seed(seed)).images[0]
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def by_seed(records: list[dict]) -> dict[int, dict]:
    return {r["seed"]: r for r in records}


def test_equals_diffusers_ensemble(rendered):
    """Each seed's image is exactly the ensemble's (shared text_encoder_2 and VAE, a generator per call); the
    refiner changes the image (it is not the base's own render)."""
    out, records = rendered
    tiny = builtin("sdbatch/tiny-sdxl-refiner")
    for seed, record in by_seed(records["xl"]).items():
        assert np.array_equal(png_pixels(out / record["path"]), ensemble("a cat", seed, 0.7, tiny)), seed
    plain = png_pixels(out / records["plain"][0]["path"])
    assert not np.array_equal(plain, png_pixels(out / by_seed(records["xl"])[3]["path"]))


def test_batched_equals_unbatched(rendered):
    """Two jobs in one call of each pass (the base's latents handed over as one batch): each image is its unbatched
    job's, within one level (README: batch_size on a CPU may move a few pixels by one level)."""
    out, records = rendered
    alone, batched = by_seed(records["xl"]), by_seed(records["batched"])
    for seed in (3, 4):
        diff = np.abs(png_pixels(out / batched[seed]["path"]) - png_pixels(out / alone[seed]["path"]))
        assert diff.max() <= 1, (seed, diff.max())


def test_negative_prompt_and_scheduler_on_both_passes(rendered):
    out, records = rendered
    expected = ensemble("a red fox", 3, 0.5, builtin("sdbatch/tiny-sdxl-refiner"), negative="blurry",
                        scheduler="EulerAncestralDiscreteScheduler")
    assert np.array_equal(png_pixels(out / records["neg"][0]["path"]), expected)


def test_lora_applies_to_the_base_pass_of_every_job(rendered, project):
    """A LoRA is the base's (the refiner runs without it), for each job in turn: turning the shared text encoder's
    adapters off for the refiner's prompts and on again does not drop them from the next job's base pass."""
    out, records = rendered
    tiny = builtin("sdbatch/tiny-sdxl-refiner")
    for seed, record in by_seed(records["lora"]).items():
        expected = ensemble("a cat", seed, 0.7, tiny, lora=project / "xl-lora.safetensors")
        assert np.array_equal(png_pixels(out / record["path"]), expected), seed
        assert not np.array_equal(expected, png_pixels(out / by_seed(records["xl"])[seed]["path"]))


def test_refiner_with_its_own_vae_keeps_it(rendered, project):
    """A refiner whose VAE config differs from the base's decodes with its own VAE (diffusers: no vae=base.vae)."""
    out, records = rendered
    got = png_pixels(out / records["own_vae"][0]["path"])
    assert np.array_equal(got, ensemble("a cat", 3, 0.7, project / "own-vae-refiner", share_vae=False))
    assert not np.array_equal(got, ensemble("a cat", 3, 0.7, project / "own-vae-refiner", share_vae=True))


def test_shares_base_components_and_loads_once(project):
    """The built-in refiner takes the base's text_encoder_2 and VAE (configs equal), loaded once per process."""
    from sdbatch.config.recipe import load_recipe
    from sdbatch.core.plan import build_plan
    from sdbatch.runtime.models import ModelBank
    from sdbatch.runtime.refiner import refiner_pipeline
    from sdbatch.stages.base import StageContext

    plan = build_plan(load_recipe(project / "recipe.yaml"), project / "out")
    jobs = {j.stage: j for j in plan.jobs}
    ctx = StageContext(ModelBank(), project / "out", project)
    base = ctx.models.pipeline(jobs["xl"], "text2img")
    refiner = refiner_pipeline(ctx, jobs["xl"], base)
    assert refiner.text_encoder_2 is base.text_encoder_2 and refiner.vae is base.vae
    assert refiner.text_encoder is None and refiner.config.requires_aesthetics_score
    assert refiner_pipeline(ctx, jobs["neg"], base) is refiner  # the same load, another scheduler
    assert type(refiner.scheduler).__name__ == "EulerAncestralDiscreteScheduler"
    own = refiner_pipeline(ctx, jobs["own_vae"], base)
    assert own.vae is not base.vae and own.text_encoder_2 is base.text_encoder_2


def test_previews_cover_both_passes(rendered):
    """previews: 2 of a 4-step refined job: steps 2 (the base's) and 4 (the refiner's last = the final image)."""
    out, records = rendered
    final = records["previews"][0]
    mine = sorted((out / "previews" / "previews").glob(Path(final["path"]).stem + "-step*.png"))
    assert [p.name.rsplit("-", 1)[-1] for p in mine] == ["step0002.png", "step0004.png"]
    assert np.array_equal(png_pixels(mine[-1]), png_pixels(out / final["path"]))


def test_manifest_and_infotext(rendered):
    """The manifest records the refiner's identity and switch_at; PNG Info reads A1111's Refiner fields back."""
    from PIL import Image
    from test_infotext import parse_generation_parameters

    out, records = rendered
    record = by_seed(records["xl"])[3]
    assert record["params"]["refiner"] == {"model": "sdbatch/tiny-sdxl-refiner",
                                           "identity": "builtin:sdbatch/tiny-sdxl-refiner@v1", "switch_at": 0.7}
    assert "refiner" not in records["plain"][0]["params"]
    with Image.open(out / record["path"]) as im:
        fields = parse_generation_parameters(im.text["parameters"])
    assert fields["Refiner"] == "tiny-sdxl-refiner [v1]"
    assert fields["Refiner switch at"] == "0.7"
    assert fields["Steps"] == str(STEPS) and fields["Seed"] == "3"


def test_infotext_of_a_hub_refiner_has_its_short_hash():
    from sdbatch.io.artifacts import a1111_parameters

    text = a1111_parameters({"prompt": "x", "seed": 1, "params": {"steps": 40, "width": 1024, "height": 1024,
                             "refiner": {"model": "stabilityai/stable-diffusion-xl-refiner-1.0@main",
                                         "identity": "hub:stabilityai/stable-diffusion-xl-refiner-1.0@5d4cfe854c9a9a"
                                                     "87939ff3653551c2b3c99a4356", "switch_at": 0.8}}})
    assert "Refiner: stable-diffusion-xl-refiner-1.0 [5d4cfe854c], Refiner switch at: 0.8" in text


def test_job_ids(project, tmp_path):
    """switch_at and the refiner model's identity (a folder by content) are identity; a stage without refiner
    keeps the id it had before refiner existed (its params carry no refiner key)."""
    import shutil

    from sdbatch.config.recipe import load_recipe
    from sdbatch.core.plan import build_plan

    def ids(text: str, folder: Path = project) -> dict[str, str]:
        (folder / "ids.yaml").write_text(text)
        return {j.stage: j.job_id for j in build_plan(load_recipe(folder / "ids.yaml"), folder / "ids-out").jobs}

    head = "model: sdbatch/tiny-sdxl\ndefaults: {steps: 4, seed: 1}\nstages:\n"
    plain = ids(head + "  - {name: a, type: generate, prompt: x}\n")["a"]
    first = ids(head + "  - {name: a, type: generate, prompt: x, refiner: {model: own-vae-refiner}}\n")["a"]
    later = ids(head + "  - {name: a, type: generate, prompt: x, refiner: {model: own-vae-refiner, switch_at: 0.7}}\n")
    assert len({plain, first, later["a"]}) == 3
    (project / "ids.yaml").write_text(head + "  - {name: a, type: generate, prompt: x, refiner: {model: own-vae-refiner, "
                                      "switch_at: [0.7, 0.8]}}\n")  # a list sweeps: the jobs of each value alone
    swept = [j.job_id for j in build_plan(load_recipe(project / "ids.yaml"), project / "ids-out").jobs]
    assert swept == [later["a"], first]
    copy = tmp_path / "own-vae-refiner"
    shutil.copytree(project / "own-vae-refiner", copy)
    same = ids(head + "  - {name: a, type: generate, prompt: x, refiner: {model: own-vae-refiner}}\n", tmp_path)
    assert same["a"] == first  # the same content elsewhere: the same job
    (copy / "unet" / "config.json").write_text((copy / "unet" / "config.json").read_text() + " ")
    changed = ids(head + "  - {name: a, type: generate, prompt: x, refiner: {model: own-vae-refiner}}\n", tmp_path)
    assert changed["a"] != first


def test_reproduce_verify_inspect(rendered, tmp_path):
    """As a user would: reproduce re-renders a refined output to the same pixels (it loads the recorded refiner),
    verify passes, inspect shows the refiner."""
    out, records = rendered
    target = out / by_seed(records["xl"])[4]["path"]
    done = run_cli("reproduce", target, "--out", tmp_path / "again")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "match" in done.stdout
    again = [p for p in (tmp_path / "again").rglob("*.png") if "previews" not in p.parts]
    assert again and np.array_equal(png_pixels(again[0]), png_pixels(target))
    assert run_cli("verify", "--out", out).returncode == 0
    shown = run_cli("inspect", target)
    assert shown.returncode == 0 and "tiny-sdxl-refiner" in shown.stdout


BAD = [
    ("refiner: {model: sdbatch/tiny-sdxl-refiner, switch_at: 1.0}", None, "stages[0].refiner.switch_at",
     "less than 1"),
    ("refiner: {model: sdbatch/tiny-sdxl-refiner, switch_at: 0}", None, "stages[0].refiner.switch_at",
     "greater than 0"),
    ("refiner: {model: sdbatch/tiny-sdxl-refiner}", "sdbatch/tiny-sd", "stages[0].refiner",
     "SDXL base model, but the stage's model 'sdbatch/tiny-sd' is SD 1.x/2.x"),
    ("refiner: {model: sdbatch/tiny-sdxl}", None, "stages[0].refiner.model", "is not an SDXL refiner"),
    ("refiner: {model: base-folder}", None, "stages[0].refiner.model",
     "its model_index.json names StableDiffusionXLPipeline, not StableDiffusionXLImg2ImgPipeline"),
    ("refiner: {model: missing-folder/}", None, "stages[0].refiner.model", "no such refiner folder"),
    ("refiner: {model: weights.safetensors}", None, "stages[0].refiner.model", "single-file refiner"),
    ("refiner: {model: sdbatch/tiny-sdxl-refiner, switch_at: 0.1}", None, "stages[0].refiner.switch_at",
     "switch_at 0.1 with steps 4 leaves the base no denoising step"),
    ("refiner: {model: sdbatch/tiny-sdxl-refiner, switch_at: 0.9995}", None, "stages[0].refiner.switch_at",
     "switch_at 0.9995 with steps 4 leaves the refiner no denoising step"),
    ("{refiner: {model: sdbatch/tiny-sdxl-refiner}, controlnet: [{model: sdbatch/tiny-controlnet-sdxl, image: e.png}]}",
     None, "stages[0].refiner", "refiner with controlnet is not supported"),
]


@pytest.mark.parametrize(("body", "model", "field", "words"), BAD)
def test_refused_at_validate(tmp_path, body, model, field, words):
    """Each mistake: exit 2 at ``sdbatch validate``, one line ``file:line: field: message``, no traceback."""
    from PIL import Image

    Image.new("RGB", (SIZE, SIZE)).save(tmp_path / "e.png")
    (tmp_path / "weights.safetensors").write_bytes(b"\0" * 16)
    (tmp_path / "base-folder").mkdir()
    (tmp_path / "base-folder" / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionXLPipeline"}))
    extra = body if body.startswith("{") else "{" + body + "}"
    stage = "{name: a, type: generate, prompt: x, " + extra[1:]
    (tmp_path / "r.yaml").write_text(f"model: {model or 'sdbatch/tiny-sdxl'}\ndefaults: {{steps: 4}}\nstages:\n"
                                     f"  - {stage}\n")
    done = run_cli("validate", tmp_path / "r.yaml", cwd=tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    lines = [line for line in done.stderr.splitlines() if field in line]
    assert lines and lines[0].startswith(f"{tmp_path / 'r.yaml'}:4: {field}: ") and words in lines[0], done.stderr
    assert "Traceback" not in done.stderr


def test_example_recipe_rehearses(tmp_path):
    """recipes/sdxl-refiner.yaml names the real hub models; --rehearse stands the tiny refiner in for the real one
    and renders every stage offline."""
    done = run_cli("run", REPO / "recipes" / "sdxl-refiner.yaml", "--rehearse", "--out", tmp_path / "out")
    assert done.returncode == 0, done.stdout + done.stderr
    records = [r for r in manifest_records(tmp_path / "out", "output") if r.get("role") == "image"]
    refined = [r for r in records if "refiner" in r["params"]]
    assert len(records) == 6 and len(refined) == 4
    assert {r["params"]["refiner"]["model"] for r in refined} == {"stabilityai/stable-diffusion-xl-refiner-1.0"}
    assert {r["params"]["refiner"]["identity"] for r in refined} == {"builtin:sdbatch/tiny-sdxl-refiner@v1"}


def test_tiny_refiner_shares_tiny_sdxl_weights():
    """The built-in refiner's VAE and text_encoder_2 are tiny-sdxl's, weight for weight (so sharing them is exact)."""
    from safetensors.torch import load_file

    base, refiner = builtin("sdbatch/tiny-sdxl"), builtin("sdbatch/tiny-sdxl-refiner")
    for part in ("vae", "text_encoder_2"):
        [a] = list((base / part).glob("*.safetensors"))
        [b] = list((refiner / part).glob("*.safetensors"))
        left, right = load_file(str(a)), load_file(str(b))
        assert left.keys() == right.keys() and all((left[k] == right[k]).all() for k in left), part
    index = json.loads((refiner / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionXLImg2ImgPipeline" and index["text_encoder"] == [None, None]
