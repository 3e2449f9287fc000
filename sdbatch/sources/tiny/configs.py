"""The tiny built-ins' configs, as plain dicts (easy to inspect and report).

Changing any value changes a build: bump the model's revision in :data:`sdbatch.sources.tiny.BUILTIN_MODELS`.
"""

from __future__ import annotations

from typing import Any

#: Latent resolution used as UNet ``sample_size``: default pipeline size is
#: sample_size * vae_scale_factor = 8 * 8 = 64 px.
_SAMPLE_SIZE = 8

#: What the SD and SDXL UNets share: two blocks, the second with cross-attention.
_TINY_UNET: dict[str, Any] = {
    "sample_size": _SAMPLE_SIZE,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": (32, 64),
    "layers_per_block": 2,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
    "norm_num_groups": 32,
}

TINY_SD_UNET: dict[str, Any] = dict(
    _TINY_UNET,
    cross_attention_dim=32,
    attention_head_dim=8,  # diffusers naming quirk: = number of heads (SD1.5 uses 8)
)

TINY_SDXL_UNET: dict[str, Any] = dict(
    _TINY_UNET,
    attention_head_dim=(2, 4),
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=8,
    transformer_layers_per_block=(1, 2),
    # 6 micro-conditioning ids * addition_time_embed_dim + pooled text_encoder_2 dim
    projection_class_embeddings_input_dim=6 * 8 + 32,
    cross_attention_dim=64,  # concat of both text encoders' hidden states (32 + 32)
)

#: 4 blocks -> 3 downsamples -> vae_scale_factor 8, like the real SD VAE.
TINY_VAE: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (8, 16, 32, 32),
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 8,
    "sample_size": 64,
}

TINY_CLIP_TEXT: dict[str, Any] = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "max_position_embeddings": 77,
    "projection_dim": 32,
    "layer_norm_eps": 1e-5,
}

#: The noise schedule SD 1.5 and SDXL base 1.0 ship with.
_SD_BETAS: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "trained_betas": None,
    "prediction_type": "epsilon",
    "timestep_spacing": "leading",
    "steps_offset": 1,
}

SD15_SCHEDULER: dict[str, Any] = dict(_SD_BETAS, skip_prk_steps=True, set_alpha_to_one=False)  # PNDM, SD 1.5

SDXL_SCHEDULER: dict[str, Any] = dict(  # EulerDiscrete config shipped with SDXL base 1.0
    _SD_BETAS, interpolation_type="linear", use_karras_sigmas=False)

TINY_DINOV2: dict[str, Any] = {
    "hidden_size": 32,
    "num_hidden_layers": 4,
    "num_attention_heads": 2,
    "mlp_ratio": 2,
    "patch_size": 14,
    "image_size": 56,
    "out_indices": [1, 2, 3, 4],
    "reshape_hidden_states": False,
    "apply_layernorm": True,
}

TINY_DEPTH_ANYTHING: dict[str, Any] = {
    "patch_size": 14,
    "reassemble_hidden_size": 32,  # must equal the backbone hidden_size
    "reassemble_factors": [4, 2, 1, 0.5],
    "neck_hidden_sizes": [8, 16, 32, 32],
    "fusion_hidden_size": 16,
    "head_hidden_size": 8,
    "depth_estimation_type": "relative",
}

#: Depth processor: resize to 56 px (multiple of the 14 px patch) keeping aspect.
TINY_DEPTH_PROCESSOR: dict[str, Any] = {
    "do_resize": True,
    "size": {"height": 56, "width": 56},
    "keep_aspect_ratio": True,
    "ensure_multiple_of": 14,
    "resample": 3,  # bicubic
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_normalize": True,
    "image_mean": [0.485, 0.456, 0.406],
    "image_std": [0.229, 0.224, 0.225],
    "do_pad": False,
}
