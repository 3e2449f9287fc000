"""Built-in tiny models with random (seed-fixed) weights.

These let sdbatch and its tests run every stage fully offline: each model is
built in-process from configs alone (no Hub access, no pretrained backbone),
written once to a cache folder with ``save_pretrained`` and from then on loaded
with the *normal* loading code (``from_pretrained`` on a folder), exactly like a
user's local diffusers / transformers folder.

Public API::

    BUILTIN_MODELS            # {"sdbatch/tiny-sd": "v1", ...}  name -> revision
    is_builtin(model)         # True for the names above
    builtin_model_path(name, cache_dir=None) -> Path   # builds on first use

plus ``build_tiny_*`` helpers returning freshly constructed components, so
tests can build a pipeline directly and save it to a temporary folder.

Weights are random, so images are noise-like; only shapes, plumbing and
determinism are meaningful.  Builds are deterministic: ``torch.manual_seed`` is
set before constructing each component (inside ``torch.random.fork_rng`` so the
caller's global RNG is left untouched), hence two builds give bit-identical
weight files.

Importing this module is cheap: torch / diffusers / transformers are imported
lazily inside the functions.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

__all__ = [
    "BUILTIN_MODELS",
    "BUILTIN_PREFIX",
    "is_builtin",
    "builtin_model_path",
    "builtin_cache_root",
    "build_tiny_tokenizer",
    "write_tiny_tokenizer_files",
    "build_tiny_sd_components",
    "build_tiny_sdxl_components",
    "build_tiny_sd_pipeline",
    "build_tiny_sdxl_pipeline",
    "build_tiny_depth",
    "save_tiny_sd",
    "save_tiny_sdxl",
    "save_tiny_depth",
]

BUILTIN_PREFIX = "sdbatch/"

#: name -> revision.  Bump a revision whenever the build recipe changes: the
#: revision is part of the cache folder name, so old builds are never reused.
BUILTIN_MODELS: dict[str, str] = {
    "sdbatch/tiny-sd": "v1",
    "sdbatch/tiny-sdxl": "v1",
    "sdbatch/tiny-depth": "v1",
}

#: Written last into a build folder (before the atomic rename); its presence
#: marks a complete build.
MARKER_FILE = ".sdbatch-builtin.json"

# --------------------------------------------------------------------------
# Tiny configs (kept as module-level dicts so they are easy to inspect/report)
# --------------------------------------------------------------------------

#: Latent resolution used as UNet ``sample_size``: default pipeline size is
#: sample_size * vae_scale_factor = 8 * 8 = 64 px.
_SAMPLE_SIZE = 8

TINY_SD_UNET: dict[str, Any] = dict(
    sample_size=_SAMPLE_SIZE,
    in_channels=4,
    out_channels=4,
    block_out_channels=(32, 64),
    layers_per_block=2,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    cross_attention_dim=32,
    attention_head_dim=8,  # diffusers naming quirk: = number of heads (SD1.5 uses 8)
    norm_num_groups=32,
)

TINY_SDXL_UNET: dict[str, Any] = dict(
    sample_size=_SAMPLE_SIZE,
    in_channels=4,
    out_channels=4,
    block_out_channels=(32, 64),
    layers_per_block=2,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    attention_head_dim=(2, 4),
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=8,
    transformer_layers_per_block=(1, 2),
    # 6 micro-conditioning ids * addition_time_embed_dim + pooled text_encoder_2 dim
    projection_class_embeddings_input_dim=6 * 8 + 32,
    cross_attention_dim=64,  # concat of both text encoders' hidden states (32 + 32)
    norm_num_groups=32,
)

#: 4 blocks -> 3 downsamples -> vae_scale_factor 8, like the real SD VAE.
TINY_VAE: dict[str, Any] = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(8, 16, 32, 32),
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=8,
    sample_size=64,
)

TINY_CLIP_TEXT: dict[str, Any] = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=3,
    num_attention_heads=4,
    max_position_embeddings=77,
    projection_dim=32,
    layer_norm_eps=1e-5,
)

SD15_SCHEDULER: dict[str, Any] = dict(  # PNDM config shipped with SD 1.5
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    trained_betas=None,
    skip_prk_steps=True,
    set_alpha_to_one=False,
    prediction_type="epsilon",
    timestep_spacing="leading",
    steps_offset=1,
)

SDXL_SCHEDULER: dict[str, Any] = dict(  # EulerDiscrete config shipped with SDXL base 1.0
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    trained_betas=None,
    prediction_type="epsilon",
    interpolation_type="linear",
    use_karras_sigmas=False,
    timestep_spacing="leading",
    steps_offset=1,
)

TINY_DINOV2: dict[str, Any] = dict(
    hidden_size=32,
    num_hidden_layers=4,
    num_attention_heads=2,
    mlp_ratio=2,
    patch_size=14,
    image_size=56,
    out_indices=[1, 2, 3, 4],
    reshape_hidden_states=False,
    apply_layernorm=True,
)

TINY_DEPTH_ANYTHING: dict[str, Any] = dict(
    patch_size=14,
    reassemble_hidden_size=32,  # must equal the backbone hidden_size
    reassemble_factors=[4, 2, 1, 0.5],
    neck_hidden_sizes=[8, 16, 32, 32],
    fusion_hidden_size=16,
    head_hidden_size=8,
    depth_estimation_type="relative",
)

#: Depth processor: resize to 56 px (multiple of the 14 px patch) keeping aspect.
TINY_DEPTH_PROCESSOR: dict[str, Any] = dict(
    do_resize=True,
    size={"height": 56, "width": 56},
    keep_aspect_ratio=True,
    ensure_multiple_of=14,
    resample=3,  # bicubic
    do_rescale=True,
    rescale_factor=1 / 255,
    do_normalize=True,
    image_mean=[0.485, 0.456, 0.406],
    image_std=[0.229, 0.224, 0.225],
    do_pad=False,
)


# --------------------------------------------------------------------------
# Name handling / cache location
# --------------------------------------------------------------------------


def is_builtin(model: str) -> bool:
    """True if ``model`` names a built-in tiny model (e.g. ``"sdbatch/tiny-sd"``)."""
    return isinstance(model, str) and model in BUILTIN_MODELS


def builtin_cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Folder holding built-in model builds.

    ``cache_dir`` if given, else ``$SDBATCH_CACHE/builtin``, else
    ``~/.cache/sdbatch/builtin``.
    """
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("SDBATCH_CACHE")
    if env:
        return Path(env).expanduser() / "builtin"
    return Path.home() / ".cache" / "sdbatch" / "builtin"


def _folder_name(name: str) -> str:
    short = name[len(BUILTIN_PREFIX):] if name.startswith(BUILTIN_PREFIX) else name
    return f"{short}-{BUILTIN_MODELS[name]}"


def _is_complete(path: Path, name: str) -> bool:
    marker = path / MARKER_FILE
    try:
        info = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    return info.get("name") == name and info.get("revision") == BUILTIN_MODELS[name]


def builtin_model_path(name: str, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Return the folder of built-in model ``name``, building it on first use.

    The folder is ``<cache root>/<name without 'sdbatch/'>-<revision>`` (see
    :func:`builtin_cache_root`), returned as an absolute path.  It is built in a
    temporary sibling folder which is then atomically renamed into place, so a
    half-built folder is never visible under the final name; if a concurrent
    builder (another process) wins the rename, its identical build is used.
    A folder without the completion marker is never used: it is moved aside
    and rebuilt.
    """
    if not is_builtin(name):
        raise KeyError(f"unknown built-in model {name!r}; known: {sorted(BUILTIN_MODELS)}")
    root = builtin_cache_root(cache_dir).absolute()
    final = root / _folder_name(name)
    if _is_complete(final, name):
        return final

    # One in-process build at a time: builds seed torch's *global* CPU RNG,
    # which threads share, so concurrent in-process builds would not be
    # deterministic.  (Separate processes have separate RNGs.)
    with _BUILD_LOCK:
        if _is_complete(final, name):
            return final
        root.mkdir(parents=True, exist_ok=True)
        if final.exists():
            _move_aside(final, name)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=root))
        try:
            _BUILDERS[name](tmp)
            (tmp / MARKER_FILE).write_text(
                json.dumps({"name": name, "revision": BUILTIN_MODELS[name]}, indent=2) + "\n"
            )
            _make_readable(tmp)
            try:
                os.rename(tmp, final)
            except OSError:
                # Lost the race: final now exists (non-empty).  Use the winner's build.
                if not _is_complete(final, name):
                    raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return final


def _move_aside(final: Path, name: str) -> None:
    """Remove an incomplete/foreign folder sitting at ``final`` (never trusted)."""
    stale = final.with_name(f".{final.name}.stale-{uuid.uuid4().hex[:8]}")
    try:
        os.rename(final, stale)
    except OSError:
        return  # moved/replaced concurrently; the rename below sorts it out
    if _is_complete(stale, name):
        # A concurrent builder completed in between: put it back if still free.
        try:
            os.rename(stale, final)
            return
        except OSError:
            pass
    shutil.rmtree(stale, ignore_errors=True)


def _make_readable(folder: Path) -> None:
    """mkdtemp creates 0700 folders (and some writers 0600 files): open them up
    to the usual 0755/0644 so a shared cache folder is usable by others."""
    os.chmod(folder, 0o755)
    for dirpath, dirnames, filenames in os.walk(folder):
        for d in dirnames:
            os.chmod(os.path.join(dirpath, d), 0o755)
        for f in filenames:
            os.chmod(os.path.join(dirpath, f), 0o644)


_BUILD_LOCK = threading.RLock()


# --------------------------------------------------------------------------
# Builders
# --------------------------------------------------------------------------


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed torch's CPU RNG for the block without disturbing the caller's RNG."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP reversible byte -> printable unicode character table."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


#: A few BPE merges so the tokenizer really exercises merging.
_MERGES = [
    ("t", "h"),
    ("th", "e</w>"),
    ("o", "f</w>"),
    ("a", "n"),
    ("an", "d</w>"),
    ("i", "n"),
    ("in", "g</w>"),
    ("e", "r"),
    ("o", "n</w>"),
    ("c", "a"),
    ("ca", "t</w>"),
]


def _tokenizer_vocab() -> tuple[dict[str, int], list[str]]:
    chars = list(_bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars]
    tokens += ["".join(pair) for pair in _MERGES]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    merges = [" ".join(pair) for pair in _MERGES]
    return vocab, merges


def write_tiny_tokenizer_files(folder: str | os.PathLike[str]) -> Path:
    """Write CLIP-style ``vocab.json`` + ``merges.txt`` (byte-level BPE) to ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = _tokenizer_vocab()
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return folder


def build_tiny_tokenizer(pad_token: str = "<|endoftext|>"):
    """A real ``CLIPTokenizer`` over the generated byte-level BPE vocab/merges.

    ``model_max_length`` is 77 like SD's tokenizer (the pipelines pad/truncate
    to it).  Saved folders also get the ``vocab.json`` / ``merges.txt`` files
    (see :func:`write_tiny_tokenizer_files`) next to ``tokenizer.json``.
    """
    from transformers import CLIPTokenizer

    vocab, merges = _tokenizer_vocab()
    return CLIPTokenizer(
        vocab=vocab,
        merges=[tuple(m.split(" ")) for m in merges],
        model_max_length=77,
        pad_token=pad_token,
    )


def _text_config(tokenizer, **overrides):
    from transformers import CLIPTextConfig

    kwargs = dict(TINY_CLIP_TEXT)
    kwargs.update(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    kwargs.update(overrides)
    return CLIPTextConfig(**kwargs)


def build_tiny_sd_components(seed: int = 0) -> dict:
    """Components for ``StableDiffusionPipeline(**components)`` (SD1.5-shaped, tiny).

    Each component is constructed right after ``torch.manual_seed(seed + k)``.
    """
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel

    with _seeded(seed):
        unet = UNet2DConditionModel(**TINY_SD_UNET)
    with _seeded(seed + 1):
        vae = AutoencoderKL(**TINY_VAE, scaling_factor=0.18215)
    tokenizer = build_tiny_tokenizer()
    with _seeded(seed + 2):
        text_encoder = CLIPTextModel(_text_config(tokenizer, hidden_act="quick_gelu"))
    scheduler = PNDMScheduler(**SD15_SCHEDULER)
    return {
        "unet": unet,
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "scheduler": scheduler,
        "safety_checker": None,
        "feature_extractor": None,
        "image_encoder": None,
        "requires_safety_checker": False,
    }


def build_tiny_sdxl_components(seed: int = 0) -> dict:
    """Components for ``StableDiffusionXLPipeline(**components)`` (tiny).

    Two text encoders (``CLIPTextModel`` + ``CLIPTextModelWithProjection``,
    hidden 32 each -> cross_attention_dim 64), "text_time" additional
    embeddings, EulerDiscrete scheduler with SDXL's config.
    """
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    with _seeded(seed):
        unet = UNet2DConditionModel(**TINY_SDXL_UNET)
    with _seeded(seed + 1):
        vae = AutoencoderKL(**TINY_VAE, scaling_factor=0.13025, force_upcast=True)
    tokenizer = build_tiny_tokenizer()
    tokenizer_2 = build_tiny_tokenizer()
    with _seeded(seed + 2):
        text_encoder = CLIPTextModel(_text_config(tokenizer, hidden_act="quick_gelu"))
    with _seeded(seed + 3):
        text_encoder_2 = CLIPTextModelWithProjection(_text_config(tokenizer_2, hidden_act="gelu"))
    scheduler = EulerDiscreteScheduler(**SDXL_SCHEDULER)
    return {
        "unet": unet,
        "vae": vae,
        "text_encoder": text_encoder,
        "text_encoder_2": text_encoder_2,
        "tokenizer": tokenizer,
        "tokenizer_2": tokenizer_2,
        "scheduler": scheduler,
        "image_encoder": None,
        "feature_extractor": None,
        "force_zeros_for_empty_prompt": True,
        "add_watermarker": False,
    }


def build_tiny_sd_pipeline(seed: int = 0):
    """A ``StableDiffusionPipeline`` built from :func:`build_tiny_sd_components`."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(**build_tiny_sd_components(seed))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_tiny_sdxl_pipeline(seed: int = 0):
    """A ``StableDiffusionXLPipeline`` built from :func:`build_tiny_sdxl_components`."""
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline(**build_tiny_sdxl_components(seed))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_tiny_depth(seed: int = 0):
    """``(DepthAnythingForDepthEstimation, DPT image processor)``, tiny Dinov2 backbone.

    Built from configs alone: the Dinov2 backbone is a transformers model
    created from ``Dinov2Config`` (no timm, no pretrained backbone download).
    """
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config

    try:  # transformers >= 5 without torchvision: the PIL backend, same saved config
        from transformers import DPTImageProcessorPil as _Proc
    except ImportError:  # pragma: no cover - other transformers versions
        from transformers import DPTImageProcessor as _Proc

    config = DepthAnythingConfig(backbone_config=Dinov2Config(**TINY_DINOV2), **TINY_DEPTH_ANYTHING)
    with _seeded(seed):
        model = DepthAnythingForDepthEstimation(config)
    model.eval()
    processor = _Proc(**TINY_DEPTH_PROCESSOR)
    return model, processor


def _save_pipeline(pipe, folder: str | os.PathLike[str]) -> Path:
    folder = Path(folder)
    pipe.save_pretrained(folder, safe_serialization=True)
    # Also ship the classic slow-tokenizer files, as real SD repos do.
    for sub in ("tokenizer", "tokenizer_2"):
        if (folder / sub).is_dir():
            write_tiny_tokenizer_files(folder / sub)
    return folder


def save_tiny_sd(folder: str | os.PathLike[str], seed: int = 0) -> Path:
    """Build the tiny SD pipeline and ``save_pretrained`` it (safetensors) to ``folder``."""
    return _save_pipeline(build_tiny_sd_pipeline(seed), folder)


def save_tiny_sdxl(folder: str | os.PathLike[str], seed: int = 0) -> Path:
    """Build the tiny SDXL pipeline and ``save_pretrained`` it (safetensors) to ``folder``."""
    return _save_pipeline(build_tiny_sdxl_pipeline(seed), folder)


def save_tiny_depth(folder: str | os.PathLike[str], seed: int = 0) -> Path:
    """Build the tiny depth model and save model + image processor config to ``folder``."""
    model, processor = build_tiny_depth(seed)
    model.save_pretrained(folder, safe_serialization=True)
    processor.save_pretrained(folder)
    return Path(folder)


_BUILDERS: dict[str, Callable[[Path], Any]] = {
    "sdbatch/tiny-sd": save_tiny_sd,
    "sdbatch/tiny-sdxl": save_tiny_sdxl,
    "sdbatch/tiny-depth": save_tiny_depth,
}
