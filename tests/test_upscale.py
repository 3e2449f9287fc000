"""The ``upscale`` stage and the upscaler machinery (issue 13): Lanczos, spandrel model files (tiled, blended),
diffusers' sd-x4; validation, identity, infotext, inspect / reproduce / verify. Video frames: test_upscale_video.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import manifest_records, run_cli
from PIL import Image

pytest.importorskip("spandrel")


# ------------------------------------------------------------------------------------------------ helpers
@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    """Tiny spandrel model files: a 4x Compact whose receptive field (4 px) fits the tiles' margin, a deep 4x
    Compact that reaches further (14 px), and a 2x ESRGAN (RRDBNet)."""
    from sdbatch.sources.tiny.upscale import save_tiny_compact, save_tiny_esrgan

    folder = tmp_path_factory.mktemp("upscalers")
    save_tiny_compact(folder / "tiny-4x.safetensors")
    save_tiny_compact(folder / "deep-4x.safetensors", num_conv=12, residual=0.5, seed=3)
    save_tiny_esrgan(folder / "esrgan-2x.safetensors", scale=2)
    return folder


def _gradient(width: int, height: int) -> Image.Image:
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([20 + x * 200 / width, 20 + y * 200 / height, 60 + (x + y) * 80 / (width + height)], -1)
    return Image.fromarray(rgb.round().astype("uint8"))


def _job(tmp_path: Path, stage: str, top: str = "", image_size: tuple[int, int] = (32, 24)):
    """The first upscale job of a one-stage recipe reading ``in.png`` (a gradient), and a StageContext for it."""
    from sdbatch.config.recipe import load_recipe
    from sdbatch.core.plan import build_plan
    from sdbatch.runtime.models import ModelBank
    from sdbatch.stages.base import StageContext

    _gradient(*image_size).save(tmp_path / "in.png")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"name: t\nmodel: sdbatch/tiny-sd\n{top}stages:\n  - name: big\n    type: upscale\n"
                      f"    input: in.png\n{stage}")
    plan = build_plan(load_recipe(recipe), tmp_path / "out")
    return plan.jobs[0], StageContext(ModelBank(), tmp_path / "out", tmp_path)


def _upscale(ctx, job, image, size, tile):
    from sdbatch.runtime.upscalers import upscale_images

    return np.asarray(upscale_images(ctx, job, [image], size, upscaler=job.params.upscaler, tile=tile)[0], np.int16)


def _spandrel_reference(path: Path, image: Image.Image) -> np.ndarray:
    """Plain spandrel: its own loader, the whole image, rounded as diffusers rounds."""
    import torch
    from spandrel import ModelLoader

    model = ModelLoader().load_from_file(str(path)).eval()
    x = torch.from_numpy(np.asarray(image, np.float32) / 255).permute(2, 0, 1)[None]
    out = model(x)[0].permute(1, 2, 0).numpy()
    return (out * 255).round().astype(np.int16)


# ---------------------------------------------------------------------------------------------- pixels
def test_lanczos_is_exactly_pil_lanczos(tmp_path):
    job, ctx = _job(tmp_path, "    upscaler: lanczos\n    scale: 2.5\n")
    image = _gradient(32, 24)
    assert (job.params.width, job.params.height) == (80, 60) and job.params.scale == 2.5
    assert (_upscale(ctx, job, image, (80, 60), 512) == np.asarray(image.resize((80, 60), Image.LANCZOS))).all()


def test_model_file_untiled_equals_plain_spandrel_and_lands_on_the_size(tmp_path, models):
    job, ctx = _job(tmp_path, f"    upscaler: {models / 'esrgan-2x.safetensors'}\n")
    image = _gradient(32, 24)
    assert job.params.upscaler["architecture"] == "ESRGAN" and job.params.upscaler["scale"] == 2
    assert (job.params.width, job.params.height) == (64, 48)  # scale defaults to the model's own factor
    reference = _spandrel_reference(models / "esrgan-2x.safetensors", image)
    assert (_upscale(ctx, job, image, (64, 48), 0) == reference).all()
    # a size the factor does not land on: the model's output, then Lanczos to exactly that size
    expected = Image.fromarray(reference.astype("uint8")).resize((50, 40), Image.LANCZOS)
    assert (_upscale(ctx, job, image, (50, 40), 0) == np.asarray(expected)).all()


def test_tiled_equals_untiled_when_the_receptive_field_fits_the_overlap(tmp_path, models):
    job, ctx = _job(tmp_path, f"    upscaler: {models / 'tiny-4x.safetensors'}\n    tile: 32\n", image_size=(72, 56))
    image = _gradient(72, 56)
    whole = _upscale(ctx, job, image, (288, 224), 0)
    tiled = _upscale(ctx, job, image, (288, 224), 32)  # 3 x 3 tiles of 32 px sharing 16
    assert (whole == _spandrel_reference(models / "tiny-4x.safetensors", image)).all()
    assert np.abs(tiled - whole).max() <= 1


def _naive_tiles(path: Path, image: Image.Image, tile: int) -> np.ndarray:
    """Tiles upscaled alone and butted together (no overlap, no blending): what shows seams."""
    import torch
    from spandrel import ModelLoader

    model = ModelLoader().load_from_file(str(path)).eval()
    x = torch.from_numpy(np.asarray(image, np.float32) / 255).permute(2, 0, 1)[None]
    out = torch.zeros(1, 3, x.shape[2] * 4, x.shape[3] * 4)
    for y0 in range(0, x.shape[2], tile):
        for x0 in range(0, x.shape[3], tile):
            out[..., y0 * 4:(y0 + tile) * 4, x0 * 4:(x0 + tile) * 4] = model(x[..., y0:y0 + tile, x0:x0 + tile])
    return (out[0].permute(1, 2, 0).numpy() * 255).round().astype(np.int16)


def test_tiled_gradient_has_no_step_at_tile_borders(tmp_path, models):
    """A model that sees 14 px around each pixel (more than the blend's margin) on a smooth gradient: the blended
    tiles follow the untiled image across every tile border, where butted tiles jump."""
    path = models / "deep-4x.safetensors"
    job, ctx = _job(tmp_path, f"    upscaler: {path}\n    tile: 32\n", image_size=(64, 64))
    image = _gradient(64, 64)
    whole = _upscale(ctx, job, image, (256, 256), 0)
    tiled = _upscale(ctx, job, image, (256, 256), 32)
    naive = _naive_tiles(path, image, 32)
    border = slice(120, 136)  # output columns/rows around the input's x = 32 (a border of the butted tiles)
    assert np.abs(naive - whole)[:, border].max() >= 4, "the check must be able to see a seam"
    assert np.abs(tiled - whole).max() <= 2
    for axis in (0, 1):  # the step across each border: the untiled image's own, within a level
        steps = np.abs(np.diff(tiled.astype(float).mean(axis=(1 - axis, 2)) if axis == 0 else
                               tiled.astype(float).mean(axis=(0, 2))))
        own = np.abs(np.diff(whole.astype(float).mean(axis=(1 - axis, 2)) if axis == 0 else
                             whole.astype(float).mean(axis=(0, 2))))
        assert np.abs(steps - own).max() <= 0.5


def test_pth_with_allow_pickle_loads_weights_only_and_matches_safetensors(tmp_path, models):
    import torch
    from safetensors.torch import load_file

    torch.save(load_file(str(models / "tiny-4x.safetensors")), tmp_path / "tiny-4x.pth")
    job, ctx = _job(tmp_path, f"    upscaler: {tmp_path / 'tiny-4x.pth'}\n", top="allow_pickle: true\n")
    image = _gradient(32, 24)
    reference = _spandrel_reference(models / "tiny-4x.safetensors", image)
    assert (_upscale(ctx, job, image, (128, 96), 0) == reference).all()


def test_sd_x4_equals_plain_diffusers(tmp_path):
    import torch
    from diffusers import StableDiffusionUpscalePipeline

    from sdbatch.sources.tiny import builtin_model_path

    job, ctx = _job(tmp_path, "    upscaler: sd-x4\n    prompt: a harbour at night\n    negative_prompt: blurry\n"
                              "    steps: 2\n    guidance: 6.0\n    seed: 7\n    tile: 0\n", image_size=(16, 16))
    job.aux_models["upscaler"] = job.aux_models["upscaler"].__class__("sdbatch/tiny-sd-x4", "v1", "builtin")
    image = _gradient(16, 16)
    pipe = StableDiffusionUpscalePipeline.from_pretrained(str(builtin_model_path("sdbatch/tiny-sd-x4")))
    pipe.set_progress_bar_config(disable=True)
    plain = pipe(prompt="a harbour at night", negative_prompt="blurry", image=image, num_inference_steps=2,
                 guidance_scale=6.0, generator=torch.Generator("cpu").manual_seed(7)).images[0]
    from sdbatch.runtime.upscalers import upscale_images

    ours = upscale_images(ctx, job, [image], (64, 64), upscaler=job.params.upscaler, tile=0, prompts=[job.prompt])[0]
    assert (np.asarray(ours) == np.asarray(plain)).all()
    # tiled (3 tiles of 16 px sharing 8), then Lanczos to a size 4x does not land on
    wide = upscale_images(ctx, job, [_gradient(32, 16)], (120, 60), upscaler=job.params.upscaler, tile=16)[0]
    assert wide.size == (120, 60) and np.asarray(wide).std() > 0


# ----------------------------------------------------------------------------------- validation, identity
BAD = {
    "missing": ("upscaler: models/none.safetensors", "stages[1].upscaler", "no such upscaler model file"),
    "unknown": ("upscaler: models/unknown.safetensors", "stages[1].upscaler", "spandrel does not recognise"),
    "garbage": ("upscaler: models/garbage.safetensors", "stages[1].upscaler", "cannot be read"),
    "pickle": ("upscaler: models/tiny-4x.pth", "stages[1].upscaler", "is a pickle file (.pth)"),
    "latent": ("upscaler: latent", "stages[1].upscaler", "hires upscaler only"),
    "zero": ("scale: 0", "stages[1].scale", "greater than 0"),
    "huge": ("scale: 16", "stages[1].scale", "is 32768x16384, over 16384 px a side"),
    "tile": ("tile: 8", "stages[1].tile", "a tile is at least 16 px"),
}


@pytest.fixture(scope="module")
def bad_project(tmp_path_factory, models) -> Path:
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    root = tmp_path_factory.mktemp("bad")
    (root / "models").mkdir()
    shutil.copy(models / "tiny-4x.safetensors", root / "models")
    save_file({"foo.weight": torch.zeros(3)}, str(root / "models" / "unknown.safetensors"))
    (root / "models" / "garbage.safetensors").write_bytes(b"not a safetensors file")
    torch.save(load_file(str(models / "tiny-4x.safetensors")), root / "models" / "tiny-4x.pth")
    return root


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_upscale_input_is_one_line_at_validate(bad_project, case):
    line, field, message = BAD[case]
    recipe = bad_project / f"{case}.yaml"
    recipe.write_text("model: sdbatch/tiny-sd\nstages:\n  - {name: sketch, type: generate, prompt: x, width: 2048, "
                      f"height: 1024}}\n  - name: big\n    type: upscale\n    input: sketch\n    {line}\n")
    proc = run_cli("validate", recipe, cwd=bad_project)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{recipe}:7: {field}: ") and message in lines[0], lines
    assert "Traceback" not in proc.stderr


def test_identify_runs_in_a_child_once_then_comes_from_the_cache(tmp_path, models, monkeypatch):
    from sdbatch.config import upscaler as config

    monkeypatch.setenv("SDBATCH_CACHE", str(tmp_path / "cache"))
    path = models / "esrgan-2x.safetensors"
    info, error = config.identify_file(path, "f" * 64, allow_pickle=False)
    assert error is None and info["architecture"] == "ESRGAN" and info["scale"] == 2

    def no_child(*args, **kwargs):
        raise AssertionError("identified again")

    monkeypatch.setattr(config.subprocess, "run", no_child)
    assert config.identify_file(path, "f" * 64, allow_pickle=False) == (info, None)
    cached = json.loads((tmp_path / "cache" / "upscalers.json").read_text())
    assert [key.split(":")[0] for key in cached] == ["f" * 64]


def test_validate_and_plan_never_import_torch_with_a_model_file(tmp_path, models):
    recipe = tmp_path / "r.yaml"
    _gradient(32, 24).save(tmp_path / "in.png")
    recipe.write_text(f"model: sdbatch/tiny-sd\nstages:\n  - name: big\n    type: upscale\n    input: in.png\n"
                      f"    upscaler: {models / 'tiny-4x.safetensors'}\n")
    probe = ("import runpy, sys; sys.argv = ['sdbatch'] + sys.argv[1:]\n"
             "try:\n    runpy.run_module('sdbatch', run_name='__main__')\n"
             "except SystemExit as e:\n    code = e.code\n"
             "print('HEAVY', [m for m in ('torch', 'diffusers', 'spandrel') if m in sys.modules])\nsys.exit(code)")
    for args in (["validate", str(recipe)], ["plan", str(recipe), "--json"]):
        proc = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip().splitlines()[-1] == "HEAVY []", args


def _plan_ids(root: Path, upscaler: str) -> list[str]:
    recipe = root / "r.yaml"
    recipe.write_text(f"model: sdbatch/tiny-sd\nstages:\n  - {{name: big, type: upscale, input: in.png, "
                      f"upscaler: {upscaler}}}\n")
    proc = run_cli("plan", recipe, "--json", cwd=root)
    assert proc.returncode == 0, proc.stderr
    return [job["job_id"] for job in json.loads(proc.stdout)["jobs"]]


def test_job_id_follows_the_model_files_content_not_its_folder(tmp_path, models):
    import shutil

    from sdbatch.sources.tiny.upscale import save_tiny_compact

    _gradient(32, 24).save(tmp_path / "in.png")
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        shutil.copy(models / "tiny-4x.safetensors", tmp_path / folder / "x4.safetensors")
    first = _plan_ids(tmp_path, "a/x4.safetensors")
    assert _plan_ids(tmp_path, "b/x4.safetensors") == first  # moved: the same job
    save_tiny_compact(tmp_path / "b" / "x4.safetensors", seed=1)  # other weights, same path
    assert _plan_ids(tmp_path, "b/x4.safetensors") != first
    assert _plan_ids(tmp_path, "lanczos") != first


# ------------------------------------------------------------------------------------- the CLI end to end
@pytest.fixture(scope="module")
def image_run(tmp_path_factory) -> Path:
    """generate (32 px, 2 seeds) -> upscale with the 4x model file (tiled); a plain photo -> lanczos x 2."""
    from sdbatch.sources.tiny.upscale import save_tiny_compact

    root = tmp_path_factory.mktemp("upscale-run")
    save_tiny_compact(root / "models" / "tiny-4x.safetensors", seed=5)  # weights of its own: no copy elsewhere
    _gradient(40, 24).save(root / "photo.png")
    (root / "r.yaml").write_text(
        "name: up\nmodel: sdbatch/tiny-sd\nstages:\n"
        "  - {name: sketch, type: generate, prompt: a harbour at night, width: 32, height: 32, steps: 2, "
        "seeds: [1, 2]}\n"
        "  - {name: big, type: upscale, input: sketch, upscaler: models/tiny-4x.safetensors, tile: 16}\n"
        "  - {name: photo, type: upscale, input: photo.png, upscaler: lanczos}\n")
    proc = run_cli("run", "r.yaml", cwd=root)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return root


def test_run_writes_upscaled_pngs_with_a1111_extras_fields(image_run):
    out = image_run / "outputs" / "up"
    records = {r["path"]: r for r in manifest_records(out, "output")}
    big = sorted(p for p in records if p.startswith("big/"))
    assert len(big) == 2
    record = records[big[0]]
    assert record["params"]["upscaler"] == {"name": "model", "file": "tiny-4x.safetensors", "architecture": "Compact",
                                            "scale": 4, "sha256": record["params"]["upscaler"]["sha256"]}
    assert record["params"]["scale"] == 4 and (record["params"]["width"], record["params"]["height"]) == (128, 128)
    sketch = next(r for r in records.values() if r["stage"] == "sketch" and r["seed"] == record["seed"])
    with Image.open(out / big[0]) as im, Image.open(out / sketch["path"]) as source:
        assert im.size == (128, 128)
        assert im.info["parameters"] == source.info["parameters"]  # the input's own text, as A1111's extras keep it
        assert im.info["postprocessing"] == "Postprocess upscale by: 4, Postprocess upscaler: tiny-4x"
    (photo,) = [r for r in records.values() if r["stage"] == "photo"]
    with Image.open(out / photo["path"]) as im, Image.open(image_run / "photo.png") as source:
        assert im.size == (80, 48)
        assert (np.asarray(im) == np.asarray(source.convert("RGB").resize((80, 48), Image.LANCZOS))).all()
        assert "Postprocess upscale by: 2, Postprocess upscaler: Lanczos" in im.info["parameters"]


def test_inspect_reproduce_and_verify_an_upscale(image_run):
    out = image_run / "outputs" / "up"
    path = next((out / "big").glob("*.png"))
    proc = run_cli("inspect", path, cwd=image_run)
    assert proc.returncode == 0 and "(upscale)" in proc.stdout and "tiny-4x.safetensors" in proc.stdout
    proc = run_cli("reproduce", path, cwd=image_run)
    assert proc.returncode == 0 and proc.stdout.startswith("match"), proc.stdout + proc.stderr
    proc = run_cli("verify", "r.yaml", cwd=image_run)
    assert proc.returncode == 0 and "all match" in proc.stdout, proc.stdout + proc.stderr
    again = run_cli("run", "r.yaml", cwd=image_run)  # everything done: nothing renders
    assert again.returncode == 0 and "5 job(s) already done, 0 rendered" in again.stdout, again.stdout


def test_reproduce_finds_a_changed_upscaler_file(image_run):
    from sdbatch.sources.tiny.upscale import save_tiny_compact

    out = image_run / "outputs" / "up"
    path = next((out / "big").glob("*.png"))
    model = image_run / "models" / "tiny-4x.safetensors"
    keep = model.read_bytes()
    try:
        save_tiny_compact(model, seed=9)
        proc = run_cli("reproduce", path, cwd=image_run)
        assert proc.returncode == 2 and "upscaler" in proc.stderr and "changed" in proc.stderr, proc.stderr
    finally:
        model.write_bytes(keep)


def test_tiny_upscalers_build_deterministically_and_spandrel_identifies_them(tmp_path):
    from sdbatch.runtime.upscalers import identify
    from sdbatch.sources.tiny.upscale import save_tiny_compact, save_tiny_esrgan, save_tiny_sd_x4

    for save, arch in ((save_tiny_compact, "Compact"), (save_tiny_esrgan, "ESRGAN")):
        a, b = save(tmp_path / f"a-{arch}.safetensors", scale=2), save(tmp_path / f"b-{arch}.safetensors", scale=2)
        assert a.read_bytes() == b.read_bytes()
        assert identify(a, allow_pickle=False)["architecture"] == arch and identify(a, False)["scale"] == 2
    save_tiny_sd_x4(tmp_path / "x4a")
    save_tiny_sd_x4(tmp_path / "x4b")
    files = sorted(p.relative_to(tmp_path / "x4a") for p in (tmp_path / "x4a").rglob("*") if p.is_file())
    assert any(p.suffix == ".safetensors" for p in files)
    assert all((tmp_path / "x4a" / p).read_bytes() == (tmp_path / "x4b" / p).read_bytes() for p in files)


def test_every_upscale_key_is_identity(tmp_path, models):
    """Each key the upscale stage adds changes the job id (and a runtime option does not)."""
    from sdbatch.config.recipe import load_recipe
    from sdbatch.core.plan import build_plan
    from sdbatch.io.hashing import HashCache
    from sdbatch.io.video import make_test_clip

    _gradient(32, 24).save(tmp_path / "in.png")
    make_test_clip(tmp_path / "walk.mp4", frames=4, fps=12, size=(32, 24), audio=True)

    def ids(**keys) -> list[str]:
        stage = {"name": "big", "type": "upscale", "input": "in.png", **keys}
        (tmp_path / "r.yaml").write_text(json.dumps({"model": "sdbatch/tiny-sd", "stages": [stage]}))
        plan = build_plan(load_recipe(tmp_path / "r.yaml"), tmp_path / "out", hashes=HashCache(None, {}))
        return [job.job_id for job in plan.jobs]

    model = str(models / "tiny-4x.safetensors")
    base = ids(upscaler=model)
    for change in ({"upscaler": "lanczos"}, {"upscaler": str(models / "deep-4x.safetensors")}, {"scale": 2},
                   {"width": 64}, {"tile": 64}, {"tile": 0}):
        assert ids(**{"upscaler": model, **change}) != base, change
    assert ids(upscaler=model, batch_size=4) == base  # a runtime option
    x4 = ids(upscaler="sd-x4")
    assert ids(upscaler="sd-x4", noise_level=50) != x4 and ids(upscaler="sd-x4", prompt="a cat") != x4
    video = ids(input="walk.mp4")
    assert ids(input="walk.mp4", frames=2) != video and ids(input="walk.mp4", audio="drop") != video
