"""``hires:`` on generate (A1111's hires fix): the same pixels as plain diffusers and as the chain written by hand,
A1111's infotext read back by A1111's own parser, the final size downstream and under --rehearse, identity, bad
input refused at validate, and inspect / reproduce / verify on a hires output. One CLI run renders everything."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import manifest_records, png_pixels, run_cli
from PIL import Image
from test_infotext import parse_generation_parameters

REPO = Path(__file__).resolve().parents[1]
THREADS = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
SEED, PROMPT, NEGATIVE = 5, "a harbour at night", "blurry"

RECIPE = """\
name: hires
model: {sd}
defaults: {{steps: 3, guidance: 7.0, negative_prompt: {negative}, seed: {seed}}}
stages:
  - name: latent
    type: generate
    prompt: {prompt}
    width: 32
    height: 32
    hires: {{scale: 2, upscaler: latent, strength: 0.5, steps: 4}}
  - name: lanczos
    type: generate
    prompt: {prompt}
    width: 32
    height: 32
    hires: {{width: 64, upscaler: lanczos, strength: 0.5, steps: 4}}
  - name: xl
    type: generate
    model: {sdxl}
    prompt: {prompt}
    width: 32
    height: 32
    hires: {{upscaler: latent, strength: 0.5, steps: 4}}
  - name: keep
    type: generate
    prompt: {prompt}
    width: 32
    height: 32
    hires: {{upscaler: lanczos, strength: 0}}
  # the lanczos chain by hand: img2img resizes its input to its size with LANCZOS
  - name: first
    type: generate
    prompt: {prompt}
    width: 32
    height: 32
  - name: second
    type: img2img
    input: first
    prompt: {prompt}
    width: 64
    height: 64
    steps: 4
    strength: 0.5
  - name: after
    type: img2img
    input: latent
    prompt: {prompt}
    strength: 0.5
"""


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("hires")


@pytest.fixture(scope="module")
def models(project) -> tuple[Path, Path]:
    """Tiny SD and SDXL folders inside the project (reproduce follows a model path only within it)."""
    from sdbatch.sources.tiny import save_tiny_sd, save_tiny_sdxl

    return save_tiny_sd(project / "models" / "sd", seed=7), save_tiny_sdxl(project / "models" / "sdxl", seed=7)


@pytest.fixture(scope="module")
def rendered(project, models) -> tuple[Path, dict[str, dict]]:
    (project / "r.yaml").write_text(RECIPE.format(sd="models/sd", sdxl="models/sdxl", seed=SEED, prompt=PROMPT,
                                                  negative=NEGATIVE))
    result = run_cli("run", "r.yaml", "--out", "out", cwd=project, env=THREADS)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    records = {r["stage"]: r for r in manifest_records(project / "out", "output")}
    return project, records


def _one_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    return before


def _plain(folder: Path, xl: bool, upscale: str, strength: float = 0.5, final: tuple[int, int] = (64, 64)):
    """The hires chain in plain diffusers: pipe -> upscale -> Img2Img.from_pipe(pipe), a fresh CPU generator each."""
    import diffusers
    import torch

    pipe = getattr(diffusers, f"StableDiffusion{'XL' if xl else ''}Pipeline").from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    common = {"prompt": PROMPT, "negative_prompt": NEGATIVE, "guidance_scale": 7.0}
    before = _one_thread()
    try:
        first = pipe(**common, num_inference_steps=3, width=32, height=32, generator=torch.Generator("cpu").manual_seed(SEED),
                     output_type="latent" if upscale == "latent" else "pil").images
        if upscale == "latent":
            big = torch.nn.functional.interpolate(first, size=(final[1] // 8, final[0] // 8), mode="bilinear",
                                                  antialias=False)
        else:
            big = first[0].resize(final, Image.LANCZOS)
        if strength == 0:
            return np.asarray(big, dtype=np.int16)
        img2img = getattr(diffusers, f"StableDiffusion{'XL' if xl else ''}Img2ImgPipeline").from_pipe(pipe)
        image = img2img(**common, image=big, strength=strength, num_inference_steps=4,
                        generator=torch.Generator("cpu").manual_seed(SEED)).images[0]
    finally:
        torch.set_num_threads(before)
    return np.asarray(image, dtype=np.int16)


def _pixels(rendered, stage: str):
    project, records = rendered
    return png_pixels(project / "out" / records[stage]["path"])


# ------------------------------------------------------------------------------------------ pixels
@pytest.mark.parametrize("stage, xl, upscale", [("latent", False, "latent"), ("xl", True, "latent"),
                                                ("lanczos", False, "lanczos")])
def test_hires_equals_plain_diffusers(rendered, models, stage, xl, upscale):
    expected = _plain(models[1] if xl else models[0], xl, upscale)
    got = _pixels(rendered, stage)
    assert got.shape == (64, 64, 3)
    assert np.array_equal(got, expected), f"{stage}: differs from plain diffusers by {np.abs(got - expected).max()}"


def test_strength_zero_is_the_upscaled_first_pass(rendered, models):
    assert np.array_equal(_pixels(rendered, "keep"), _plain(models[0], False, "lanczos", strength=0))


def test_hires_equals_the_chain_written_by_hand(rendered):
    assert np.array_equal(_pixels(rendered, "lanczos"), _pixels(rendered, "second"))
    assert not np.array_equal(_pixels(rendered, "latent"), _pixels(rendered, "lanczos"))  # latent is its own thing


def test_hires_equals_an_upscale_stage_chain(tmp_path, models):
    """generate + ``upscale`` + img2img by hand gives the pixels of hires, with lanczos and with a model file (a
    tiny Real-ESRGAN Compact, 2x); reproduce re-renders the model-file output (the file found by content)."""
    from sdbatch.sources.tiny.upscale import save_tiny_compact
    from sdbatch.stages import STAGE_MODULES

    if "upscale" not in STAGE_MODULES:
        pytest.skip("the upscale stage is not registered")
    shutil.copytree(models[0], tmp_path / "sd")
    save_tiny_compact(tmp_path / "up" / "2x-tiny.safetensors", scale=2)
    chain = """\
  - {{name: hires-{n}, type: generate, width: 32, height: 32, hires: {{upscaler: {u}, strength: 0.5, steps: 4}}}}
  - {{name: big-{n}, type: upscale, input: first, upscaler: {u}}}
  - {{name: second-{n}, type: img2img, input: big-{n}, steps: 4, strength: 0.5}}
"""
    (tmp_path / "r.yaml").write_text(f"""\
model: sd
defaults: {{steps: 3, guidance: 7.0, negative_prompt: {NEGATIVE}, seed: {SEED}, prompt: {PROMPT}}}
stages:
  - {{name: first, type: generate, width: 32, height: 32}}
""" + chain.format(n="lanczos", u="lanczos") + chain.format(n="model", u="up/2x-tiny.safetensors"))
    result = run_cli("run", "r.yaml", "--out", "out", cwd=tmp_path, env=THREADS)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    records = {r["stage"]: r for r in manifest_records(tmp_path / "out", "output")}
    for n in ("lanczos", "model"):
        assert np.array_equal(png_pixels(tmp_path / "out" / records[f"hires-{n}"]["path"]),
                              png_pixels(tmp_path / "out" / records[f"second-{n}"]["path"])), n
    up = records["hires-model"]["params"]["hires"]["upscaler"]
    assert up["name"] == "model" and up["file"] == "2x-tiny.safetensors" and len(up["sha256"]) == 64
    with Image.open(tmp_path / "out" / records["hires-model"]["path"]) as im:
        assert parse_generation_parameters(im.text["parameters"])["Hires upscaler"] == "2x-tiny"
    again = run_cli("reproduce", tmp_path / "out" / records["hires-model"]["path"], "--out", tmp_path / "again",
                    cwd=tmp_path, env=THREADS)
    assert again.returncode == 0 and "match" in again.stdout, again.stdout + again.stderr


def test_upscaler_file_is_identity_by_content(tmp_path):
    from sdbatch.sources.tiny.upscale import save_tiny_compact

    save_tiny_compact(tmp_path / "a" / "up.safetensors", scale=2, seed=0)
    save_tiny_compact(tmp_path / "b" / "up.safetensors", scale=2, seed=0)
    save_tiny_compact(tmp_path / "c" / "up.safetensors", scale=2, seed=1)
    text = "model: sdbatch/tiny-sd\nstages:\n  - {name: a, type: generate, prompt: x, hires: {upscaler: %s/up.safetensors}}\n"
    ids = [_plan(tmp_path, text % folder)[0]["job_id"] for folder in "abc"]
    assert ids[0] == ids[1] != ids[2]  # moved: the same job; other weights: another job


# ------------------------------------------------------------------------------------- what is recorded
def test_infotext_reads_back_with_a1111s_parser(rendered):
    project, records = rendered
    with Image.open(project / "out" / records["latent"]["path"]) as im:
        res = parse_generation_parameters(im.text["parameters"])
    assert (res["Size-1"], res["Size-2"]) == ("32", "32")  # the first pass, as A1111 writes it
    assert (res["Hires upscale"], res["Hires upscaler"], res["Hires steps"]) == ("2", "Latent", "4")
    assert res["Denoising strength"] == "0.5" and res["Steps"] == "3" and "Hires resize-1" not in res
    with Image.open(project / "out" / records["lanczos"]["path"]) as im:
        res = parse_generation_parameters(im.text["parameters"])
    assert (res["Hires resize-1"], res["Hires resize-2"], res["Hires upscaler"]) == ("64", "0", "Lanczos")
    assert "Hires upscale" not in res
    with Image.open(project / "out" / records["xl"]["path"]) as im:  # scale 2 unless given
        res = parse_generation_parameters(im.text["parameters"])
    assert res["Hires upscale"] == "2" and "Hires steps" in res


def test_manifest_params_and_downstream_size(rendered):
    _project, records = rendered
    hires = records["latent"]["params"]["hires"]
    assert hires == {"scale": 2.0, "width": None, "height": None, "upscaler": {"name": "latent", "scale": 2},
                     "strength": 0.5, "steps": 4}
    assert "hires" not in records["first"]["params"]  # a generate without hires keeps its old params (and id)
    after = records["after"]
    assert (after["params"]["width"], after["params"]["height"]) == (64, 64)  # the final size, not the first pass's
    assert after["inputs"][0]["path"] == records["latent"]["path"]


def _plan(tmp_path: Path, text: str, *args: str) -> list[dict]:
    (tmp_path / "p.yaml").write_text(text)
    result = run_cli("plan", "p.yaml", "--json", *args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    return data["jobs"]


def test_rehearse_caps_the_final_size_and_ids_follow_hires(tmp_path):
    base = ("model: sdbatch/tiny-sd\nstages:\n  - {name: a, type: generate, prompt: x, width: 512, height: 768, "
            "steps: 30, hires: {scale: 2, upscaler: latent, strength: 0.2, steps: 30}}\n"
            "  - {name: b, type: img2img, input: a, strength: 0.5}\n")
    jobs = _plan(tmp_path, base, "--rehearse")
    a, b = jobs
    hires = a["params"]["hires"]
    assert (hires["width"], hires["height"], hires["scale"]) == (40, 64, None)  # 1024x1536 capped at 64 px
    assert (a["params"]["width"], a["params"]["height"]) == (16, 32)  # the first pass smaller (40 x 512 / 1024, to 8 px)
    assert a["params"]["steps"] == 4 and hires["steps"] == 5  # one second-pass step at least (int(5 x 0.2))
    assert (b["params"]["width"], b["params"]["height"]) == (40, 64)
    full = _plan(tmp_path, base)
    assert (full[1]["params"]["width"], full[1]["params"]["height"]) == (1024, 1536)
    other = _plan(tmp_path, base.replace("strength: 0.2", "strength: 0.3"))
    assert other[0]["job_id"] != full[0]["job_id"] and other[1]["job_id"] != full[1]["job_id"]
    plain = _plan(tmp_path, base.replace(", hires: {scale: 2, upscaler: latent, strength: 0.2, steps: 30}", ""))
    assert "hires" not in plain[0]["params"]


# ------------------------------------------------------------------------------------------ bad input
STAGE = "model: sdbatch/tiny-sd\nstages:\n  - name: a\n    type: generate\n    prompt: x\n    width: 504\n"
BAD = [
    ("hires:\n      width: 100\n", "stages[0].hires.width: must be a multiple of 8"),
    ("hires:\n      scale: 1.5\n", "stages[0].hires.scale: scale 1.5 of 504x504 gives 756x756"),
    ("hires:\n      scale: 2\n      width: 1024\n", "stages[0].hires: give either 'scale' or 'width'/'height'"),
    ("hires:\n      strength: 1.5\n", "stages[0].hires.strength:"),
    ("hires:\n      strength: 0.2\n      steps: 4\n", "stages[0].hires.steps: strength 0.2 x steps 4 leaves no"),
    ("hires:\n      upscaler: bicubic\n", "stages[0].hires.upscaler:"),
    ("hires:\n      upscaler: {name: latent}\n", "stages[0].hires.upscaler: must be an upscaler name"),
    ("hires:\n      upscaler: models/missing.safetensors\n", "stages[0].hires.upscaler: 'models/missing.safetensors'"),
    ("previews: 1\n    hires: {}\n", "stages[0].previews: previews of a hires job are not supported"),
    ("hires: {}\n    controlnet: [{model: sdbatch/tiny-controlnet, image: c.png}]\n",
     "stages[0].controlnet: controlnet with hires is not supported"),
]


@pytest.mark.parametrize("extra, message", BAD, ids=[m.split(":")[0] + str(i) for i, (_, m) in enumerate(BAD)])
def test_bad_hires_is_refused_at_validate(tmp_path, extra, message):
    Image.new("RGB", (64, 64)).save(tmp_path / "c.png")
    (tmp_path / "r.yaml").write_text(STAGE + "    " + extra)
    result = run_cli("validate", "r.yaml", cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert any(line.startswith("r.yaml:") and message in line for line in lines), result.stderr


# ------------------------------------------------------------------------------ inspect / reproduce / verify
def test_inspect_reproduce_verify_a_hires_output(rendered, tmp_path):
    project, records = rendered
    path = project / "out" / records["latent"]["path"]
    shown = run_cli("inspect", path, cwd=project)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert 'hires: {"height": null, "scale": 2.0, "steps": 4, "strength": 0.5, "upscaler": {"name": "latent"' in shown.stdout
    for stage in ("latent", "lanczos"):  # both passes rendered again, pixels exact
        again = run_cli("reproduce", project / "out" / records[stage]["path"], "--out", tmp_path / stage, cwd=project,
                        env=THREADS)
        assert again.returncode == 0 and "match" in again.stdout, again.stdout + again.stderr
    verified = run_cli("verify", "r.yaml", "--out", "out", cwd=project)
    assert verified.returncode == 0 and "all match" in verified.stdout, verified.stdout + verified.stderr
    from PIL.PngImagePlugin import PngInfo

    with Image.open(path) as im:  # one pixel one level off, the metadata kept: reproduce tells
        pixels, info = np.asarray(im.convert("RGB")).copy(), PngInfo()
        for key, value in im.text.items():
            info.add_text(key, value)
    pixels[0, 0] ^= 1
    edited = project / "out" / "latent" / "edited.png"
    Image.fromarray(pixels).save(edited, pnginfo=info)
    differs = run_cli("reproduce", edited, "--out", tmp_path / "edited", cwd=project, env=THREADS)
    edited.unlink()
    assert differs.returncode == 1, differs.stdout + differs.stderr
