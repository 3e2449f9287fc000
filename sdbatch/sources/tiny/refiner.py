"""``sdbatch/tiny-sdxl-refiner``: a tiny SDXL refiner (``StableDiffusionXLImg2ImgPipeline``) for ``--rehearse``.

Shaped as diffusers' own refiner-only test builds one (``test_stable_diffusion_xl_img2img.py``,
``StableDiffusionXLImg2ImgRefinerOnlyPipelineFastTests``): no first text encoder, ``requires_aesthetics_score``
(5 micro-conditioning ids, the aesthetic score among them) and a UNet conditioned on the second text encoder
alone (``cross_attention_dim`` 32). Its VAE, second text encoder and tokenizer are built exactly as
``sdbatch/tiny-sdxl``'s (same configs, same seeds), so a refiner job shares them with the tiny base as diffusers'
ensemble does with the real models (``text_encoder_2=base.text_encoder_2, vae=base.vae``).
"""

from __future__ import annotations

import os
from pathlib import Path

from .build import _save_pipeline, _seeded, _text_config, build_tiny_tokenizer
from .configs import SDXL_SCHEDULER, TINY_SDXL_UNET, TINY_VAE

#: the refiner's UNet: the SDXL one, conditioned on text_encoder_2 only, with the aesthetic score's time id
TINY_SDXL_REFINER_UNET = dict(
    TINY_SDXL_UNET,
    cross_attention_dim=32,  # text_encoder_2's hidden size alone
    projection_class_embeddings_input_dim=5 * 8 + 32,  # 5 time ids (aesthetic score) * 8 + pooled dim
)

#: the UNet's seed; the VAE and text encoder use tiny-sdxl's seeds (+1, +3 of its seed 0)
UNET_SEED = 40


def build_tiny_sdxl_refiner(seed: int = 0):
    """The tiny refiner pipeline (``seed``: tiny-sdxl's seed its shared components are built with)."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLImg2ImgPipeline, UNet2DConditionModel
    from transformers import CLIPTextModelWithProjection

    with _seeded(seed + UNET_SEED):
        unet = UNet2DConditionModel(**TINY_SDXL_REFINER_UNET)
    with _seeded(seed + 1):  # as build._unet_vae_text builds tiny-sdxl's VAE
        vae = AutoencoderKL(**TINY_VAE, scaling_factor=0.13025, force_upcast=True)
    tokenizer_2 = build_tiny_tokenizer()
    with _seeded(seed + 3):  # as build.build_tiny_sdxl_components builds its text_encoder_2
        text_encoder_2 = CLIPTextModelWithProjection(_text_config(tokenizer_2, hidden_act="gelu"))
    pipe = StableDiffusionXLImg2ImgPipeline(
        vae=vae, text_encoder=None, text_encoder_2=text_encoder_2, tokenizer=None, tokenizer_2=tokenizer_2,
        unet=unet, scheduler=EulerDiscreteScheduler(**SDXL_SCHEDULER), requires_aesthetics_score=True,
        force_zeros_for_empty_prompt=False, add_watermarker=False)  # the real refiner's model_index says so
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_tiny_sdxl_refiner(folder: str | os.PathLike[str], seed: int = 0) -> Path:
    """Build the tiny refiner and ``save_pretrained`` it (safetensors) to ``folder``."""
    return _save_pipeline(build_tiny_sdxl_refiner(seed), folder)
