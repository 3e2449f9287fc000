"""The tiny IP-Adapter built-in (``sdbatch/tiny-ip-adapter``): random, seed-fixed weights in h94/IP-Adapter's
layout, so ``load_ip_adapter`` reads it as it reads the real repository::

    models/ip-adapter_sd15.safetensors        # for sdbatch/tiny-sd (cross-attention width 32)
    models/image_encoder/                     # CLIPVisionModelWithProjection, projection_dim 32
    sdxl_models/ip-adapter_sdxl.safetensors   # for sdbatch/tiny-sdxl (width 64)
    sdxl_models/image_encoder/                # projection_dim 64

The adapter's tensors are made as diffusers' own tests make them (``create_ip_adapter_state_dict``: one
``to_k_ip`` / ``to_v_ip`` pair per cross-attention processor of the UNet, numbered 1, 3, 5, ..., and an
``ImageProjection`` of 4 tokens). torch, diffusers and transformers are imported inside the functions.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .build import _seeded
from .configs import TINY_SD_UNET, TINY_SDXL_UNET

#: (subfolder, weight name, UNet config) per base family of the tiny models
TINY_IP_ADAPTER_FILES = {
    "sd": ("models", "ip-adapter_sd15.safetensors", TINY_SD_UNET),
    "sdxl": ("sdxl_models", "ip-adapter_sdxl.safetensors", TINY_SDXL_UNET),
}


def ip_adapter_state_dict(unet: Any, seed: int = 0) -> dict[str, Any]:
    """A random IP-Adapter state dict for ``unet`` ({"image_proj": ..., "ip_adapter": ...}), as diffusers'
    tests build it."""
    from diffusers.models.attention_processor import IPAdapterAttnProcessor
    from diffusers.models.embeddings import ImageProjection

    config = unet.config
    blocks = list(config.block_out_channels)
    cross: dict[str, Any] = {}
    key_id = 1
    with _seeded(seed):
        for name in unet.attn_processors:
            if name.endswith("attn1.processor"):
                continue
            if name.startswith("mid_block"):
                hidden = blocks[-1]
            elif name.startswith("up_blocks"):
                hidden = list(reversed(blocks))[int(name[len("up_blocks.")])]
            else:
                hidden = blocks[int(name[len("down_blocks.")])]
            sd = IPAdapterAttnProcessor(hidden_size=hidden, cross_attention_dim=config.cross_attention_dim,
                                        scale=1.0).state_dict()
            cross[f"{key_id}.to_k_ip.weight"] = sd["to_k_ip.0.weight"]
            cross[f"{key_id}.to_v_ip.weight"] = sd["to_v_ip.0.weight"]
            key_id += 2
        proj = ImageProjection(cross_attention_dim=config.cross_attention_dim,
                               image_embed_dim=config.cross_attention_dim, num_image_text_embeds=4).state_dict()
    image_proj = {"proj.weight": proj["image_embeds.weight"], "proj.bias": proj["image_embeds.bias"],
                  "norm.weight": proj["norm.weight"], "norm.bias": proj["norm.bias"]}
    return {"image_proj": image_proj, "ip_adapter": cross}


def build_tiny_image_encoder(projection_dim: int, seed: int = 0) -> Any:
    """A tiny ``CLIPVisionModelWithProjection`` (32 px images, 4x4 patches) projecting to ``projection_dim``."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    config = CLIPVisionConfig(hidden_size=32, projection_dim=projection_dim, num_hidden_layers=2,
                              num_attention_heads=4, image_size=32, intermediate_size=37, patch_size=4)
    with _seeded(seed):
        return CLIPVisionModelWithProjection(config).eval()


def save_ip_adapter(folder: str | os.PathLike[str], unet: Any, subfolder: str, weight_name: str,
                    seed: int = 0) -> Path:
    """Write an IP-Adapter for ``unet`` at ``folder/subfolder/weight_name`` and its image encoder at
    ``folder/subfolder/image_encoder`` (safetensors): the layout ``load_ip_adapter`` reads."""
    from safetensors.torch import save_file

    target = Path(folder) / subfolder
    target.mkdir(parents=True, exist_ok=True)
    state = ip_adapter_state_dict(unet, seed)
    flat = {f"{part}.{k}": v.contiguous() for part, tensors in state.items() for k, v in tensors.items()}
    save_file(flat, str(target / weight_name))
    build_tiny_image_encoder(unet.config.cross_attention_dim, seed + 1).save_pretrained(
        str(target / "image_encoder"), safe_serialization=True)
    return target / weight_name


def save_tiny_ip_adapter(folder: str | os.PathLike[str], seed: int = 0) -> Path:
    """The built-in: an adapter (and image encoder) for each tiny base model (see the module's layout)."""
    from diffusers import UNet2DConditionModel

    for sub, weight, unet_config in TINY_IP_ADAPTER_FILES.values():
        with _seeded(seed):
            unet = UNet2DConditionModel(**unet_config)
        save_ip_adapter(folder, unet, sub, weight, seed)
    return Path(folder)
