"""Which model family a model spec names, found without torch: ``sd``, ``sdxl``, ``sd3``, ``flux`` or None.

Read from, in order: a built-in's name; a local diffusers folder's ``model_index.json`` class; a cached hub
snapshot's ``model_index.json`` (when the caller passes the cache lookup); else the spec's own words (``xl``,
``sd3``/``stable-diffusion-3``, ``flux``).
Used at validate (a refiner on a non-SDXL model, a scheduler that does not apply, a video stage's supported
families) and by ``--rehearse`` to pick the family's tiny built-in (:func:`sdbatch.sources.specs.rehearsal_model`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .paths import local_model_path

FAMILIES = ("sd", "sdxl", "sd3", "flux")
#: what a user calls each family in messages
FAMILY_NAMES = {"sd": "SD 1.x/2.x", "sdxl": "SDXL", "sd3": "SD3/SD3.5", "flux": "Flux.1"}

BUILTIN_FAMILIES = {
    "sdbatch/tiny-sd": "sd",
    "sdbatch/tiny-sdxl": "sdxl",
    "sdbatch/tiny-sdxl-refiner": "sdxl",
    "sdbatch/tiny-sd3": "sd3",
    "sdbatch/tiny-flux": "flux",
}

#: the built-in standing in for each family under ``--rehearse``
REHEARSAL_MODELS = {"sd": "sdbatch/tiny-sd", "sdxl": "sdbatch/tiny-sdxl", "sd3": "sdbatch/tiny-sd3",
                    "flux": "sdbatch/tiny-flux"}


def family_of_class(class_name: str) -> str | None:
    """The family of a diffusers pipeline class name (``FluxImg2ImgPipeline`` -> ``flux``), or None."""
    name = class_name.lower()
    if name.startswith("flux"):
        return "flux"
    if name.startswith("stablediffusion3"):
        return "sd3"
    if name.startswith("stablediffusionxl"):
        return "sdxl"
    if name.startswith("stablediffusion"):
        return "sd"
    return None


def family_of_words(spec: str) -> str | None:
    """A guess from the spec's own words (a hub id or file name), or None."""
    text = spec.lower()
    if "flux" in text:
        return "flux"
    if "sd3" in text or "stable-diffusion-3" in text or "sd3.5" in text:
        return "sd3"
    if "xl" in text:
        return "sdxl"
    return None


def family_of_folder(folder: Path) -> str | None:
    """The family a diffusers folder's ``model_index.json`` names, or None."""
    try:
        name = json.loads((folder / "model_index.json").read_text()).get("_class_name", "")
    except (OSError, ValueError, AttributeError):
        return None
    return family_of_class(name) if isinstance(name, str) else None


def family_of(spec: str, base_dir: Path, snapshot: Callable[[str, str], Any] | None = None) -> str | None:
    """The family ``spec`` (a recipe's ``model:``) names, or None when it cannot be told without loading it.

    ``snapshot``: :func:`sdbatch.sources.hub.cached_hub_snapshot`, to read a cached hub model's model_index.json
    (passed in, so this module imports nothing that imports the job model)."""
    if spec in BUILTIN_FAMILIES:
        return BUILTIN_FAMILIES[spec]
    local = local_model_path(spec, base_dir)
    if local is not None and local.is_dir():
        return family_of_folder(local) or family_of_words(spec)
    if snapshot is not None and local is None and "/" in spec and not spec.startswith((".", "/", "~")):
        cached = snapshot(spec.partition("@")[0], spec.partition("@")[2] or "main")
        if cached:
            found = family_of_folder(cached[1])
            if found:
                return found
    return family_of_words(spec)
