"""``ip_adapter:`` (an image prompt, diffusers' ``load_ip_adapter``) on the image stages: its config model, what can
be read of an adapter file without torch, and its AUTOMATIC1111 infotext units.

::

    ip_adapter:
      - model: h94/IP-Adapter          # hub id or local folder (the adapter repository's layout)
        subfolder: models              # the folder in it holding weight_name and image_encoder/
        weight_name: ip-adapter_sd15.safetensors
        image: style/ref.png           # the reference image, relative to the recipe file
        scale: 0.6                     # set_ip_adapter_scale; a list sweeps

The adapter file's sha256, the reference image's sha256 and the scale are part of a job's identity (planned by
:mod:`sdbatch.stages.ipadapter_config`, loaded by :mod:`sdbatch.runtime.ip_adapter`). Never imports torch.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from .types import StrictModel

#: the stage types that take ``ip_adapter:``
IP_ADAPTER_STAGES = ("generate", "img2img", "inpaint")
#: the built-in tiny IP-Adapter that stands in for any under ``--rehearse``
TINY_IP_ADAPTER = "sdbatch/tiny-ip-adapter"
#: cross-attention width -> the base model family it belongs to
FAMILIES = {768: "SD 1.x", 1024: "SD 2.x", 2048: "SDXL", 32: "sdbatch/tiny-sd", 64: "sdbatch/tiny-sdxl"}


class IpAdapter(StrictModel):
    """One IP-Adapter: ``model`` (hub id or folder), ``subfolder`` and ``weight_name`` as diffusers'
    ``load_ip_adapter`` takes them, the reference ``image`` and its ``scale`` (0..2)."""

    model: Annotated[str, Field(min_length=1)]
    subfolder: str = "models"
    weight_name: Annotated[str, Field(min_length=1)] = "ip-adapter_sd15.safetensors"
    image: Annotated[str, Field(min_length=1)]
    scale: Annotated[float, Field(ge=0.0, le=2.0)] = 1.0


def safetensors_shapes(path: Path) -> dict[str, list[int]]:
    """Tensor name -> shape of a ``.safetensors`` file, read from its JSON header alone (no torch)."""
    with open(path, "rb") as fh:
        size = struct.unpack("<Q", fh.read(8))[0]
        if size > 100_000_000:
            raise ValueError("not a safetensors file (header too large)")
        header = json.loads(fh.read(size))
    return {k: list(v.get("shape", ())) for k, v in header.items() if isinstance(v, dict)}


def adapter_cross_dim(path: Path) -> int | None:
    """The cross-attention width an IP-Adapter file was made for (its first ``to_k_ip``), None if unknown."""
    if path.suffix.lower() != ".safetensors":
        return None
    try:
        shapes = safetensors_shapes(path)
    except (OSError, ValueError, struct.error):
        return None
    keys = sorted((k for k in shapes if k.startswith("ip_adapter.") and k.endswith("to_k_ip.weight")),
                  key=lambda k: int(k.split(".")[1]) if k.split(".")[1].isdigit() else 0)
    shape = shapes[keys[0]] if keys else []
    return int(shape[1]) if len(shape) == 2 else None


def is_ip_adapter_file(path: Path) -> bool:
    """A ``.safetensors`` file holding ``image_proj.*`` and ``ip_adapter.*`` tensors (other formats: unknown, True)."""
    if path.suffix.lower() != ".safetensors":
        return True
    try:
        keys = safetensors_shapes(path)
    except (OSError, ValueError, struct.error):
        return False
    return any(k.startswith("image_proj.") for k in keys) and any(k.startswith("ip_adapter.") for k in keys)


def family(cross_dim: int) -> str:
    """``SDXL (cross-attention width 2048)``."""
    name = FAMILIES.get(cross_dim)
    return f"{name} (cross-attention width {cross_dim})" if name else f"cross-attention width {cross_dim}"


# ------------------------------------------------------------------------------------------- infotext
def _module(weight_name: str) -> str:
    """sd-webui-controlnet's preprocessor name for an IP-Adapter file."""
    name = weight_name.lower()
    if "sdxl" in name and "vit-h" in name:
        return "ip-adapter_clip_sdxl_plus_vith"
    return "ip-adapter_clip_sdxl" if "sdxl" in name else "ip-adapter_clip_sd15"


def ip_adapter_units(params: dict[str, Any], first: int) -> list[tuple[str, str]]:
    """A1111's infotext fields for a job's IP-Adapters, as sd-webui-controlnet writes an IP-Adapter unit:
    ``ControlNet <n>: "Module: ip-adapter_clip_sd15, Model: ip-adapter_sd15 [0123abcd], Weight: 0.6, Guidance
    Start: 0.0, Guidance End: 1.0"``, numbered from ``first`` (after the job's ControlNet units)."""
    units = []
    for n, unit in enumerate(u for u in params.get("ip_adapter") or () if isinstance(u, dict)):
        weight = str(unit.get("weight_name") or "")
        digest = str(unit.get("sha256") or "")
        model = Path(weight).stem + (f" [{digest[:8]}]" if digest and ":" not in digest else "")
        scale = unit.get("scale")
        shown = f"{float(scale):g}" if isinstance(scale, (int, float)) else "1"
        value = (f"Module: {_module(weight)}, Model: {model}, Weight: {shown}, Guidance Start: 0.0, "
                 "Guidance End: 1.0")
        units.append((f"ControlNet {first + n}", value))
    return units


class IpAdapterRef(BaseModel):
    """An IP-Adapter as a job uses it (its params, so its id): the adapter as written and its file's sha256, the
    reference image and its sha256, the scale."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    model: str
    subfolder: str
    weight_name: str
    sha256: str
    image: str
    image_sha256: str
    scale: float
