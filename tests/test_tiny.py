"""Tests for sdbatch.sources.tiny: offline tiny built-in models."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest

from sdbatch.sources import tiny

SIZE = 64
PIPE_MODELS = ["sdbatch/tiny-sd", "sdbatch/tiny-sdxl"]


def _gen(seed: int = 1):
    import torch

    return torch.Generator("cpu").manual_seed(seed)


def _hash_files(folder: Path, suffix: str = "") -> dict[str, str]:
    return {
        str(f.relative_to(folder)): hashlib.sha256(f.read_bytes()).hexdigest()
        for f in sorted(folder.rglob(f"*{suffix}"))
        if f.is_file()
    }


def _folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """One cache dir with all three builtins, built once for the module."""
    root = tmp_path_factory.mktemp("builtin")
    for name in tiny.BUILTIN_MODELS:
        tiny.builtin_model_path(name, root)
    return root


@pytest.fixture(scope="module")
def t2i_pipes(cache):
    from diffusers import AutoPipelineForText2Image

    pipes = {}
    for name in PIPE_MODELS:
        pipe = AutoPipelineForText2Image.from_pretrained(tiny.builtin_model_path(name, cache))
        pipe.set_progress_bar_config(disable=True)
        pipes[name] = pipe
    return pipes


@pytest.fixture(scope="module")
def init_image():
    from PIL import Image

    rng = np.random.RandomState(0)
    return Image.fromarray(rng.randint(0, 256, (SIZE, SIZE, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def mask_image():
    from PIL import Image

    mask = Image.new("L", (SIZE, SIZE), 0)
    mask.paste(255, (16, 16, 48, 48))
    return mask


# ---------------------------------------------------------------- API / naming


def test_import_is_cheap():
    code = (
        "import sys, sdbatch.sources.tiny; "
        "heavy = [m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


def test_api_names():
    assert tiny.BUILTIN_MODELS == {
        "sdbatch/tiny-sd": "v1",
        "sdbatch/tiny-sdxl": "v1",
        "sdbatch/tiny-depth": "v1",
        "sdbatch/tiny-ip-adapter": "v1",
        "sdbatch/tiny-controlnet": "v1",
        "sdbatch/tiny-controlnet-sdxl": "v1",
        "sdbatch/tiny-sd-x4": "v1",
        "sdbatch/tiny-sdxl-refiner": "v1",
        "sdbatch/tiny-sd3": "v1",
        "sdbatch/tiny-flux": "v1",
    }
    assert all(tiny.is_builtin(n) for n in tiny.BUILTIN_MODELS)
    for other in ("runwayml/stable-diffusion-v1-5", "tiny-sd", "sdbatch/nope", "/tmp/x", ""):
        assert not tiny.is_builtin(other)
    with pytest.raises(KeyError):
        tiny.builtin_model_path("sdbatch/nope")


def test_cache_root_resolution(tmp_path, monkeypatch):
    monkeypatch.delenv("SDBATCH_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert tiny.builtin_cache_root() == tmp_path / "home" / ".cache" / "sdbatch" / "builtin"
    monkeypatch.setenv("SDBATCH_CACHE", str(tmp_path / "env"))
    assert tiny.builtin_cache_root() == tmp_path / "env" / "builtin"
    assert tiny.builtin_cache_root(tmp_path / "explicit") == tmp_path / "explicit"
    # $SDBATCH_CACHE is honoured by builtin_model_path (depth is the cheap one)
    p = tiny.builtin_model_path("sdbatch/tiny-depth")
    assert p == tmp_path / "env" / "builtin" / "tiny-depth-v1"
    assert (p / "model.safetensors").is_file()


# ---------------------------------------------------------------- folders


@pytest.mark.parametrize("name", list(tiny.BUILTIN_MODELS))
def test_folder_layout_and_size(cache, name):
    path = tiny.builtin_model_path(name, cache)
    assert path.is_absolute()
    assert path == cache / f"{name.split('/', 1)[1]}-{tiny.BUILTIN_MODELS[name]}"
    assert json.loads((path / tiny.MARKER_FILE).read_text())["name"] == name
    assert list(path.rglob("*.safetensors")), "weights must be safetensors"
    assert not list(path.rglob("*.bin"))
    size = _folder_bytes(path)
    assert 0 < size < 20 * 1024 * 1024, size
    # no temp / stale folders left behind
    assert sorted(p.name for p in cache.iterdir()) == sorted(
        f"{n.split('/', 1)[1]}-{r}" for n, r in tiny.BUILTIN_MODELS.items()
    )


def test_second_call_reuses_folder(cache, monkeypatch):
    before = {n: tiny.builtin_model_path(n, cache) for n in tiny.BUILTIN_MODELS}
    stats = {n: p.stat().st_ino for n, p in before.items()}

    def boom(folder):  # any rebuild would fail the test
        raise AssertionError("rebuilt")

    monkeypatch.setattr(tiny, "_BUILDERS", {n: boom for n in tiny.BUILTIN_MODELS})
    t0 = time.perf_counter()
    for n in tiny.BUILTIN_MODELS:
        p = tiny.builtin_model_path(n, cache)
        assert p == before[n] and p.stat().st_ino == stats[n]
    assert time.perf_counter() - t0 < 0.5


def test_two_builds_bit_identical(cache, tmp_path):
    for name in tiny.BUILTIN_MODELS:
        a = tiny.builtin_model_path(name, cache)
        b = tiny.builtin_model_path(name, tmp_path)
        assert a != b
        ha, hb = _hash_files(a, ".safetensors"), _hash_files(b, ".safetensors")
        assert ha and ha == hb, name
        # configs / tokenizer files are identical too
        assert _hash_files(a) == _hash_files(b), name


def test_build_does_not_disturb_global_rng():
    import torch

    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    tiny.build_tiny_depth(seed=5)
    assert torch.equal(torch.rand(3), expected)


def test_incomplete_folder_is_never_used(tmp_path):
    final = tmp_path / "tiny-depth-v1"
    final.mkdir()
    (final / "config.json").write_text("{half built")  # no marker
    p = tiny.builtin_model_path("sdbatch/tiny-depth", tmp_path)
    assert p == final
    assert (p / tiny.MARKER_FILE).is_file()
    assert json.loads((p / "config.json").read_text())["model_type"] == "depth_anything"
    assert [x.name for x in tmp_path.iterdir()] == ["tiny-depth-v1"]


def test_failed_build_leaves_nothing(tmp_path, monkeypatch):
    def failing(folder):
        (Path(folder) / "partial.safetensors").write_bytes(b"x")
        raise RuntimeError("disk full")

    monkeypatch.setitem(tiny._BUILDERS, "sdbatch/tiny-depth", failing)
    with pytest.raises(RuntimeError):
        tiny.builtin_model_path("sdbatch/tiny-depth", tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_concurrent_builder_wins_rename(tmp_path, monkeypatch):
    real = tiny._BUILDERS["sdbatch/tiny-depth"]
    final = tmp_path / "tiny-depth-v1"

    def racing(folder):
        # Another process finishes first and renames its complete build into place.
        other = tmp_path / "other-process-build"
        real(other)
        (other / tiny.MARKER_FILE).write_text(
            json.dumps({"name": "sdbatch/tiny-depth", "revision": "v1"})
        )
        (other / "winner").write_text("yes")
        os.rename(other, final)
        real(folder)

    monkeypatch.setitem(tiny._BUILDERS, "sdbatch/tiny-depth", racing)
    p = tiny.builtin_model_path("sdbatch/tiny-depth", tmp_path)
    assert p == final and (p / "winner").read_text() == "yes"
    assert [x.name for x in tmp_path.iterdir()] == ["tiny-depth-v1"]


# ---------------------------------------------------------------- SD / SDXL


def test_tokenizer():
    tok = tiny.build_tiny_tokenizer()
    assert tok.model_max_length == 77
    ids = tok("a photo of the cat", padding="max_length", max_length=77, truncation=True).input_ids
    assert len(ids) == 77
    assert ids[0] == tok.bos_token_id and tok.eos_token_id in ids
    assert tok.convert_ids_to_tokens(tok("the cat").input_ids) == [
        "<|startoftext|>",
        "the</w>",
        "cat</w>",
        "<|endoftext|>",
    ]
    long = tok("x " * 200, truncation=True, max_length=tok.model_max_length).input_ids
    assert len(long) == 77


@pytest.mark.parametrize("name", PIPE_MODELS)
def test_txt2img(t2i_pipes, name):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    pipe = t2i_pipes[name]
    expected_cls = StableDiffusionPipeline if name.endswith("sd") else StableDiffusionXLPipeline
    assert type(pipe) is expected_cls
    assert pipe.vae_scale_factor == 8
    assert pipe.tokenizer.model_max_length == 77
    assert pipe.text_encoder.config.vocab_size >= len(pipe.tokenizer)
    assert pipe.text_encoder.config.max_position_embeddings == 77

    kw = {"prompt": "a photo of a cat", "num_inference_steps": 2, "output_type": "np"}
    a = pipe(**kw, generator=_gen(1)).images
    b = pipe(**kw, generator=_gen(1)).images
    c = pipe(**kw, generator=_gen(2)).images
    assert a.shape == (1, SIZE, SIZE, 3)  # default size = sample_size 8 * 8
    assert np.isfinite(a).all()
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)

    pil = pipe(prompt="x", num_inference_steps=2, height=64, width=96, generator=_gen(1)).images[0]
    assert pil.size == (96, 64)


@pytest.mark.parametrize("name", PIPE_MODELS)
def test_img2img_and_inpaint(t2i_pipes, init_image, mask_image, name):
    from diffusers import AutoPipelineForImage2Image, AutoPipelineForInpainting

    pipe = t2i_pipes[name]
    i2i = AutoPipelineForImage2Image.from_pipe(pipe)
    i2i.set_progress_bar_config(disable=True)
    assert "Img2Img" in type(i2i).__name__
    kw = {"prompt": "a dog", "image": init_image, "strength": 0.75, "num_inference_steps": 4}
    a = i2i(**kw, generator=_gen(1)).images[0]
    b = i2i(**kw, generator=_gen(1)).images[0]
    assert a.size == (SIZE, SIZE)
    assert np.array_equal(np.asarray(a), np.asarray(b))

    inp = AutoPipelineForInpainting.from_pipe(pipe)
    inp.set_progress_bar_config(disable=True)
    assert "Inpaint" in type(inp).__name__
    assert inp.unet.config.in_channels == 4  # legacy 4-channel inpainting
    kw = {"prompt": "a dog", "image": init_image, "mask_image": mask_image, "num_inference_steps": 2}
    a = inp(**kw, generator=_gen(1)).images[0]
    b = inp(**kw, generator=_gen(1)).images[0]
    assert a.size == (SIZE, SIZE)
    assert np.array_equal(np.asarray(a), np.asarray(b))


def test_sd_components_roundtrip_through_local_folder(tmp_path):
    """build_tiny_sd_components -> save_pretrained -> from_pretrained renders the same pixels."""
    from diffusers import StableDiffusionPipeline

    direct = StableDiffusionPipeline(**tiny.build_tiny_sd_components(seed=0))
    direct.set_progress_bar_config(disable=True)
    direct.save_pretrained(tmp_path / "local", safe_serialization=True)
    loaded = StableDiffusionPipeline.from_pretrained(tmp_path / "local")
    loaded.set_progress_bar_config(disable=True)
    kw = {"prompt": "a cat", "num_inference_steps": 2, "output_type": "np"}
    assert np.array_equal(direct(**kw, generator=_gen(1)).images, loaded(**kw, generator=_gen(1)).images)
    # a different seed gives different weights
    other = tiny.build_tiny_sd_components(seed=1)["unet"]
    assert not all(
        (p1 == p2).all() for p1, p2 in zip(direct.unet.parameters(), other.parameters())
    )


def test_sdxl_components():
    from diffusers import StableDiffusionXLPipeline

    comps = tiny.build_tiny_sdxl_components()
    pipe = StableDiffusionXLPipeline(**comps)
    unet = pipe.unet.config
    assert unet.addition_embed_type == "text_time"
    assert unet.cross_attention_dim == (
        pipe.text_encoder.config.hidden_size + pipe.text_encoder_2.config.hidden_size
    )
    assert unet.projection_class_embeddings_input_dim == (
        6 * unet.addition_time_embed_dim + pipe.text_encoder_2.config.projection_dim
    )
    assert pipe.config.force_zeros_for_empty_prompt is True
    assert type(pipe.scheduler).__name__ == "EulerDiscreteScheduler"


# ---------------------------------------------------------------- depth


def test_depth_model(cache, init_image):
    import torch
    from transformers import AutoImageProcessor, AutoModelForDepthEstimation, pipeline

    path = tiny.builtin_model_path("sdbatch/tiny-depth", cache)
    model = AutoModelForDepthEstimation.from_pretrained(path)
    processor = AutoImageProcessor.from_pretrained(path)
    assert model.config.backbone_config.model_type == "dinov2"
    inputs = processor(images=init_image, return_tensors="pt")
    with torch.no_grad():
        depth = model(**inputs).predicted_depth
    assert depth.ndim == 3 and depth.shape[0] == 1 and torch.isfinite(depth).all()

    depth_pipe = pipeline("depth-estimation", model=str(path))
    t0 = time.perf_counter()
    out = depth_pipe(init_image)
    assert time.perf_counter() - t0 < 1.0
    assert out["depth"].size == (SIZE, SIZE)
    assert tuple(out["predicted_depth"].shape[-2:]) == (SIZE, SIZE)
    again = depth_pipe(init_image)
    assert torch.equal(out["predicted_depth"], again["predicted_depth"])
