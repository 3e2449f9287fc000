"""The tiny flow-matching built-ins: ``sdbatch/tiny-sd3`` (Stable Diffusion 3) and ``sdbatch/tiny-flux`` (Flux.1).

Shaped as diffusers' own fast tests build them (``tests/pipelines/stable_diffusion_3`` and ``tests/pipelines/flux``
``get_dummy_components``), with two differences so they load fully offline and look like the real repos: the
VAE has 16 latent channels and downsamples 8x, and the T5 tokenizer is built in-process (a ``tokenizers``
Unigram model wrapped in ``T5TokenizerFast``: no sentencepiece, no hub), saved as ``tokenizer.json``. The CLIP
tokenizers are the other built-ins' (:func:`.build.build_tiny_tokenizer`). Every component is constructed right
after ``torch.manual_seed(seed + k)`` (:func:`.build._seeded`), so two builds write bit-identical files.

tiny-flux is a Flux.1 *dev*-shaped transformer (``guidance_embeds=True``: diffusers' ``guidance_scale`` is the
distilled guidance), so recipes' ``guidance`` changes its pixels as it does the real dev model's.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .build import _seeded, _text_config, build_tiny_tokenizer, write_tiny_tokenizer_files
from .configs import TINY_VAE

#: words the tiny T5 tokenizer knows whole (anything else falls back to letters, then ``<unk>``)
_T5_WORDS = ("a", "an", "the", "of", "and", "in", "at", "on", "with", "cat", "dog", "harbour", "night", "photo",
             "red", "blue", "city", "lighthouse", "portrait", "landscape", "painting", "sky", "sea")

TINY_T5: dict[str, Any] = {
    "d_model": 32,
    "d_ff": 37,
    "d_kv": 8,
    "num_layers": 2,
    "num_heads": 4,
    "relative_attention_num_buckets": 8,
    "dropout_rate": 0.0,
    "feed_forward_proj": "gated-gelu",
    "is_encoder_decoder": False,
    "use_cache": False,
}


def build_tiny_t5_tokenizer():
    """A ``T5TokenizerFast`` (Unigram: ``<pad>`` 0, ``</s>`` 1, ``<unk>`` 2, letters, digits, a few words)."""
    from transformers import T5TokenizerFast

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -4.0)]
    vocab += [(c, -3.0) for c in "abcdefghijklmnopqrstuvwxyz0123456789.,:;!?()'-"]
    vocab += [("\u2581" + c, -2.5) for c in "abcdefghijklmnopqrstuvwxyz"]
    vocab += [("\u2581" + w, -1.0) for w in _T5_WORDS if len(w) > 1]
    return T5TokenizerFast(vocab=vocab, extra_ids=0, model_max_length=512)


def _t5(seed: int, tokenizer) -> Any:
    from transformers import T5Config, T5EncoderModel

    config = T5Config(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                      eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.pad_token_id, **TINY_T5)
    with _seeded(seed):
        return T5EncoderModel(config)


def _vae(seed: int, scaling_factor: float, shift_factor: float) -> Any:
    from diffusers import AutoencoderKL

    config = dict(TINY_VAE, latent_channels=16)
    with _seeded(seed):
        return AutoencoderKL(**config, scaling_factor=scaling_factor, shift_factor=shift_factor,
                             use_quant_conv=False, use_post_quant_conv=False)


def build_tiny_sd3_components(seed: int = 0) -> dict:
    """Components for ``StableDiffusion3Pipeline(**components)``: SD3Transformer2DModel (patch 2, 16 channels),
    two CLIP text encoders with projection (pooled 32 + 32 = 64), T5, the VAE, FlowMatchEulerDiscreteScheduler
    with SD3's shift 3.0."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
    from transformers import CLIPTextModelWithProjection

    with _seeded(seed):
        transformer = SD3Transformer2DModel(
            sample_size=8, patch_size=2, in_channels=16, out_channels=16, num_layers=1, attention_head_dim=8,
            num_attention_heads=4, caption_projection_dim=32, joint_attention_dim=32, pooled_projection_dim=64)
    tokenizer, tokenizer_2, tokenizer_3 = build_tiny_tokenizer(), build_tiny_tokenizer(), build_tiny_t5_tokenizer()
    with _seeded(seed + 2):
        text_encoder = CLIPTextModelWithProjection(_text_config(tokenizer, hidden_act="gelu"))
    with _seeded(seed + 3):
        text_encoder_2 = CLIPTextModelWithProjection(_text_config(tokenizer_2, hidden_act="gelu"))
    return {
        "transformer": transformer,
        "vae": _vae(seed + 1, 1.5305, 0.0609),
        "text_encoder": text_encoder,
        "text_encoder_2": text_encoder_2,
        "text_encoder_3": _t5(seed + 4, tokenizer_3),
        "tokenizer": tokenizer,
        "tokenizer_2": tokenizer_2,
        "tokenizer_3": tokenizer_3,
        "scheduler": FlowMatchEulerDiscreteScheduler(shift=3.0),
        "image_encoder": None,
        "feature_extractor": None,
    }


def build_tiny_flux_components(seed: int = 0) -> dict:
    """Components for ``FluxPipeline(**components)``: FluxTransformer2DModel (64 = 16 x 2 x 2 packed channels,
    distilled guidance embedding), CLIP (pooled 32), T5, the VAE, FlowMatchEulerDiscreteScheduler with Flux.1's
    dynamic shifting."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import CLIPTextModel

    with _seeded(seed):
        transformer = FluxTransformer2DModel(
            patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=16,
            num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=True,
            axes_dims_rope=(4, 4, 8))
    tokenizer, tokenizer_2 = build_tiny_tokenizer(), build_tiny_t5_tokenizer()
    with _seeded(seed + 2):
        text_encoder = CLIPTextModel(_text_config(tokenizer, hidden_act="quick_gelu"))
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
        max_image_seq_len=4096)
    return {
        "transformer": transformer,
        "vae": _vae(seed + 1, 0.3611, 0.1159),
        "text_encoder": text_encoder,
        "text_encoder_2": _t5(seed + 4, tokenizer_2),
        "tokenizer": tokenizer,
        "tokenizer_2": tokenizer_2,
        "scheduler": scheduler,
        "image_encoder": None,
        "feature_extractor": None,
    }


def build_tiny_sd3_pipeline(seed: int = 0):
    """A ``StableDiffusion3Pipeline`` built from :func:`build_tiny_sd3_components`."""
    from diffusers import StableDiffusion3Pipeline

    pipe = StableDiffusion3Pipeline(**build_tiny_sd3_components(seed))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_tiny_flux_pipeline(seed: int = 0):
    """A ``FluxPipeline`` built from :func:`build_tiny_flux_components`."""
    from diffusers import FluxPipeline

    pipe = FluxPipeline(**build_tiny_flux_components(seed))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _save(pipe: Any, folder: str | os.PathLike[str], clip_tokenizers: tuple[str, ...]) -> Path:
    """``save_pretrained`` (safetensors), plus the classic CLIP tokenizer files real repos ship."""
    folder = Path(folder)
    pipe.save_pretrained(folder, safe_serialization=True)
    for sub in clip_tokenizers:
        write_tiny_tokenizer_files(folder / sub)
    return folder


def save_tiny_sd3(folder: str | os.PathLike[str], seed: int = 0) -> Path:
    """Build the tiny SD3 pipeline and save it to ``folder``."""
    return _save(build_tiny_sd3_pipeline(seed), folder, ("tokenizer", "tokenizer_2"))


def save_tiny_flux(folder: str | os.PathLike[str], seed: int = 0) -> Path:
    """Build the tiny Flux.1 pipeline and save it to ``folder``."""
    return _save(build_tiny_flux_pipeline(seed), folder, ("tokenizer",))
