"""Tiny upscalers with random, seed-fixed weights: the built-in ``sdbatch/tiny-sd-x4`` and spandrel model files.

* :func:`save_tiny_sd_x4` writes a diffusers ``StableDiffusionUpscalePipeline`` folder shaped like
  stabilityai/stable-diffusion-x4-upscaler (UNet on 4 latent + 3 image channels with a noise-level class
  embedding, a 4x VAE, DDPM low-res scheduler, v-prediction DDIM scheduler, max_noise_level 350), as diffusers'
  own tests build one - a few MB. ``--rehearse`` uses it for ``upscaler: sd-x4``.
* :func:`save_tiny_compact` / :func:`save_tiny_esrgan` write a Real-ESRGAN Compact (SRVGGNetCompact) or an ESRGAN
  (RRDBNet) ``.safetensors`` in the original key layout, which spandrel identifies as it identifies the real
  files (``body.N.*``; ``model.N.*``)::

      python -m sdbatch.sources.tiny.upscale models/tiny-4x.safetensors              # Compact, 4x (~20 KB)
      python -m sdbatch.sources.tiny.upscale models/tiny-esrgan.safetensors --esrgan --scale 2

torch, diffusers and spandrel are imported inside the functions.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .build import _save_pipeline, _seeded, _text_config, build_tiny_tokenizer

#: the UNet of the tiny x4 upscaler (diffusers' test shapes, smaller)
TINY_SD_X4_UNET = {
    "sample_size": 32,
    "in_channels": 7,  # 4 latent + 3 low-res image channels
    "out_channels": 4,
    "block_out_channels": (32, 64),
    "layers_per_block": 1,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
    "cross_attention_dim": 32,
    "attention_head_dim": 8,
    "use_linear_projection": True,
    "num_class_embeds": 1000,  # the noise level's embedding
    "norm_num_groups": 32,
}
#: three blocks: a 4x VAE (the pipeline's output is 4x its latents, which are the low-res image's size)
TINY_SD_X4_VAE = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 3,
    "up_block_types": ("UpDecoderBlock2D",) * 3,
    "block_out_channels": (8, 16, 16),
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 8,
    "scaling_factor": 0.08333,
}


def build_tiny_sd_x4_pipeline(seed: int = 0):
    """The tiny StableDiffusionUpscalePipeline (each component right after ``torch.manual_seed(seed + k)``)."""
    from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, StableDiffusionUpscalePipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    with _seeded(seed):
        unet = UNet2DConditionModel(**TINY_SD_X4_UNET)
    with _seeded(seed + 1):
        vae = AutoencoderKL(**TINY_SD_X4_VAE)
    tokenizer = build_tiny_tokenizer()
    with _seeded(seed + 2):
        text_encoder = CLIPTextModel(_text_config(tokenizer, hidden_act="gelu"))
    low_res = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.0001, beta_end=0.02)
    scheduler = DDIMScheduler(prediction_type="v_prediction", beta_schedule="scaled_linear", beta_start=0.0001,
                              beta_end=0.02, clip_sample=False, set_alpha_to_one=False)
    return StableDiffusionUpscalePipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                          low_res_scheduler=low_res, scheduler=scheduler, max_noise_level=350)


def save_tiny_sd_x4(folder: str | os.PathLike[str], seed: int = 0) -> Path:
    """Build the tiny x4 upscaler pipeline and ``save_pretrained`` it (safetensors) to ``folder``."""
    return _save_pipeline(build_tiny_sd_x4_pipeline(seed), folder)


# ------------------------------------------------------------------------------------- spandrel files
def _save_state(model, path: Path) -> Path:
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def save_tiny_compact(path: str | os.PathLike[str], scale: int = 4, num_feat: int = 8, num_conv: int = 2,
                      seed: int = 0, residual: float = 0.1) -> Path:
    """A Real-ESRGAN Compact (SRVGGNetCompact) file: ``num_conv + 2`` 3x3 convolutions, so a receptive field of
    ``num_conv + 2`` pixels around each input pixel. Its output is the nearest-upsampled input plus the random
    residual (convolution weights scaled by ``residual``), so images stay images."""
    import torch
    from spandrel.architectures.Compact import Compact

    with _seeded(seed):
        model = Compact(num_in_ch=3, num_out_ch=3, num_feat=num_feat, num_conv=num_conv, upscale=scale)
        with torch.no_grad():  # a small residual: the upscale looks like its input
            for name, param in model.named_parameters():
                if name.endswith("weight") and param.dim() == 4:
                    param.mul_(residual)
    return _save_state(model, Path(path))


def save_tiny_esrgan(path: str | os.PathLike[str], scale: int = 4, num_filters: int = 8, num_blocks: int = 1,
                     seed: int = 0) -> Path:
    """An ESRGAN (RRDBNet, old-arch ``model.N`` keys) file with ``num_blocks`` RRDB blocks (~1 MB at the defaults)."""
    from spandrel.architectures.ESRGAN import ESRGAN

    with _seeded(seed):
        model = ESRGAN(in_nc=3, out_nc=3, num_filters=num_filters, num_blocks=num_blocks, scale=scale)
    return _save_state(model, Path(path))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sdbatch.sources.tiny.upscale",
                                     description="write a tiny random spandrel-loadable upscaler .safetensors")
    parser.add_argument("path", type=Path)
    parser.add_argument("--scale", type=int, default=4, choices=(1, 2, 4, 8))
    parser.add_argument("--esrgan", action="store_true", help="an ESRGAN (RRDBNet) instead of a Real-ESRGAN Compact")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    save = save_tiny_esrgan if args.esrgan else save_tiny_compact
    print(save(args.path, scale=args.scale, seed=args.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
