"""Tiny ControlNets (``sdbatch/tiny-controlnet``, ``sdbatch/tiny-controlnet-sdxl``) for ``--rehearse`` and tests.

Each is ``ControlNetModel.from_unet`` of the tiny SD / SDXL UNet config (seeded random weights, the same
config the tiny base models use, so its family matches theirs), with its zero-initialised output convolutions
(``controlnet_down_blocks``, ``controlnet_mid_block``) and conditioning embedding's last layer set to seeded
small random weights, so a control image really changes the image. torch and diffusers are imported lazily.
"""

from __future__ import annotations

import os
from pathlib import Path

from .build import _seeded
from .configs import TINY_SD_UNET, TINY_SDXL_UNET


def build_tiny_controlnet(seed: int = 0, xl: bool = False, std: float = 0.05):
    """A ``ControlNetModel`` fitting the tiny SD (or, with ``xl``, SDXL) UNet; deterministic for a seed."""
    import torch
    from diffusers import ControlNetModel, UNet2DConditionModel

    with _seeded(seed):
        unet = UNet2DConditionModel(**(TINY_SDXL_UNET if xl else TINY_SD_UNET))
        model = ControlNetModel.from_unet(unet)
        zeroed = [*model.controlnet_down_blocks, model.controlnet_mid_block, model.controlnet_cond_embedding.conv_out]
        with torch.no_grad():
            for layer in zeroed:
                torch.nn.init.normal_(layer.weight, std=std)
                torch.nn.init.normal_(layer.bias, std=std)
    model.eval()
    return model


def save_tiny_controlnet(folder: str | os.PathLike[str], seed: int = 0) -> Path:
    build_tiny_controlnet(seed).save_pretrained(folder, safe_serialization=True)
    return Path(folder)


def save_tiny_controlnet_sdxl(folder: str | os.PathLike[str], seed: int = 0) -> Path:
    build_tiny_controlnet(seed, xl=True).save_pretrained(folder, safe_serialization=True)
    return Path(folder)
