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

The package: the registry and the build cache here, the configs in
:mod:`.configs`, the builders in :mod:`.build`. Importing it is cheap: torch /
diffusers / transformers are imported lazily inside the functions.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import tempfile
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .build import _save_pipeline as _save_pipeline  # re-exported: benchmarks build their own folders
from .build import _seeded as _seeded  # re-exported: tests build extra components with the same seeding
from .build import (
    build_tiny_depth,
    build_tiny_sd_components,
    build_tiny_sd_pipeline,
    build_tiny_sdxl_components,
    build_tiny_sdxl_pipeline,
    build_tiny_tokenizer,
    save_tiny_depth,
    save_tiny_sd,
    save_tiny_sdxl,
    write_tiny_tokenizer_files,
)
from .configs import TINY_VAE  # the other configs: sdbatch.sources.tiny.configs
from .control import build_tiny_controlnet, save_tiny_controlnet, save_tiny_controlnet_sdxl
from .ip_adapter import save_tiny_ip_adapter

__all__ = [
    "BUILTIN_MODELS",
    "BUILTIN_PREFIX",
    "TINY_VAE",
    "build_tiny_controlnet",
    "build_tiny_depth",
    "build_tiny_sd_components",
    "build_tiny_sd_pipeline",
    "build_tiny_sdxl_components",
    "build_tiny_sdxl_pipeline",
    "build_tiny_tokenizer",
    "builtin_cache_root",
    "builtin_model_path",
    "is_builtin",
    "save_tiny_controlnet",
    "save_tiny_controlnet_sdxl",
    "save_tiny_depth",
    "save_tiny_sd",
    "save_tiny_sdxl",
    "write_tiny_tokenizer_files",
]

BUILTIN_PREFIX = "sdbatch/"

#: name -> revision.  Bump a revision whenever the build recipe changes: the
#: revision is part of the cache folder name, so old builds are never reused.
BUILTIN_MODELS: dict[str, str] = {
    "sdbatch/tiny-sd": "v1",
    "sdbatch/tiny-sdxl": "v1",
    "sdbatch/tiny-depth": "v1",
    "sdbatch/tiny-controlnet": "v1",  # ControlNets for tiny-sd and tiny-sdxl (sources/tiny/control.py)
    "sdbatch/tiny-controlnet-sdxl": "v1",
    "sdbatch/tiny-ip-adapter": "v1",  # IP-Adapters (and image encoders) for tiny-sd and tiny-sdxl
    "sdbatch/tiny-sd-x4": "v1",  # StableDiffusionUpscalePipeline (sources/tiny/upscale.py)
    "sdbatch/tiny-sdxl-refiner": "v1",  # the SDXL refiner (sources/tiny/refiner.py)
    "sdbatch/tiny-sd3": "v1",  # Stable Diffusion 3 (sources/tiny/flow.py)
    "sdbatch/tiny-flux": "v1",  # Flux.1 (sources/tiny/flow.py)
}

#: Written last into a build folder (before the atomic rename); its presence
#: marks a complete build.
MARKER_FILE = ".sdbatch-builtin.json"


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
    short = name.removeprefix(BUILTIN_PREFIX)
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


def _lazy(module: str, function: str) -> Callable[[Path], Any]:
    """A builder imported from ``sdbatch.sources.tiny.<module>`` only when that model is first built."""

    def build(folder: Path) -> Any:
        return getattr(importlib.import_module(f"{__name__}.{module}"), function)(folder)

    return build


_BUILDERS: dict[str, Callable[[Path], Any]] = {
    "sdbatch/tiny-sd": save_tiny_sd,
    "sdbatch/tiny-sdxl": save_tiny_sdxl,
    "sdbatch/tiny-depth": save_tiny_depth,
    "sdbatch/tiny-controlnet": save_tiny_controlnet,
    "sdbatch/tiny-controlnet-sdxl": save_tiny_controlnet_sdxl,
    "sdbatch/tiny-ip-adapter": save_tiny_ip_adapter,
    "sdbatch/tiny-sd-x4": _lazy("upscale", "save_tiny_sd_x4"),
    "sdbatch/tiny-sdxl-refiner": _lazy("refiner", "save_tiny_sdxl_refiner"),
    "sdbatch/tiny-sd3": _lazy("flow", "save_tiny_sd3"),
    "sdbatch/tiny-flux": _lazy("flow", "save_tiny_flux"),
}
