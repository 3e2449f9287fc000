"""Model specs -> :class:`~sdbatch.core.job.ModelRef`: hub ids, local folders, single files, built-ins.

The one place that knows what a model spec in a recipe (``model``, ``vae``, ``loras``, ``pipeline_config``,
``depth_model``) or in a manifest record names, and the one pickle policy: ``.safetensors`` always;
pickle formats (``.ckpt .pt .pth .bin``) only where the recipe says ``allow_pickle: true``. Never imports
torch or diffusers.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from ..core.job import ModelRef
from ..errors import ModelUnavailable
from ..io.hashing import HashCache

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
PICKLE_ADVICE = ("pickle files can run code when loaded; convert it to .safetensors, or set "
                 "'allow_pickle: true' at the top level of the recipe if you trust it")


HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*(@[A-Za-z0-9_./-]+)?$")


def local_model_path(spec: str, base_dir: Path) -> Path | None:
    """The local file or folder a model spec names, or None for a hub id / builtin."""
    if spec.startswith("sdbatch/"):
        return None
    candidate = Path(spec).expanduser()
    if not candidate.is_absolute():
        candidate = base_dir / candidate
    if candidate.exists():
        return candidate
    return None


def check_model_spec(spec: str, base_dir: Path, allow_pickle: bool = False) -> str | None:
    """A problem with a model spec that can be seen without loading it, or None."""
    from .tiny import BUILTIN_MODELS

    if spec.startswith("sdbatch/"):
        return None if spec in BUILTIN_MODELS else f"unknown built-in model {spec!r} (built-ins: {', '.join(BUILTIN_MODELS)})"
    path = local_model_path(spec, base_dir)
    if path is not None:
        if path.is_file() and path.suffix.lower() not in (".safetensors", ".ckpt", ".pt", ".bin"):
            return f"{spec!r}: a model file must be .safetensors (or .ckpt with allow_pickle)"
        if path.is_file() and path.suffix.lower() != ".safetensors" and not allow_pickle:
            return f"{spec!r} is a pickle checkpoint: {PICKLE_ADVICE}"
        if path.is_dir() and not (path / "model_index.json").exists() and not (path / "config.json").exists():
            return f"{spec!r}: folder is not a diffusers model (no model_index.json)"
        return None
    if Path(spec).suffix.lower() in (".safetensors", ".ckpt") or spec.startswith((".", "/", "~")):
        return f"{spec!r}: no such model file or folder (relative to {base_dir})"
    if not HUB_ID.match(spec):
        return f"{spec!r} is neither a local model file/folder nor a hub id like 'org/name'"
    return None


def check_weights_file(spec: str, base_dir: Path, allow_pickle: bool, what: str) -> str | None:
    """A problem with a local weights file (a LoRA), or None."""
    path = Path(spec).expanduser()
    path = path if path.is_absolute() else base_dir / path
    if not path.is_file():
        return f"{spec!r}: no such {what} file (relative to {base_dir})"
    suffix = path.suffix.lower()
    if suffix in PICKLE_SUFFIXES and not allow_pickle:
        return f"{spec!r}: {PICKLE_ADVICE}"
    if suffix != ".safetensors" and suffix not in PICKLE_SUFFIXES:
        return f"{spec!r}: a {what} file must be .safetensors"
    return None


def check_vae_spec(spec: str, base_dir: Path, allow_pickle: bool) -> str | None:
    """A problem with a ``vae:`` value (diffusers folder, hub id or weights file), or None."""
    path = local_model_path(spec, base_dir)
    if path is not None:
        if path.is_file():
            return check_weights_file(spec, base_dir, allow_pickle, "VAE")
        if not (path / "config.json").is_file() and not (path / "vae" / "config.json").is_file():
            return f"{spec!r}: folder is not a diffusers AutoencoderKL (no config.json or vae/config.json)"
        return None
    if spec.startswith("sdbatch/"):
        from .tiny import BUILTIN_MODELS

        return None if spec in BUILTIN_MODELS else f"unknown built-in model {spec!r}"
    if Path(spec).suffix.lower() in (".safetensors",) + PICKLE_SUFFIXES or spec.startswith((".", "/", "~")):
        return f"{spec!r}: no such VAE file or folder (relative to {base_dir})"
    if not HUB_ID.match(spec):
        return f"{spec!r} is neither a local VAE file/folder nor a hub id like 'org/name'"
    return None


def check_pipeline_config(spec: str, base_dir: Path) -> str | None:
    """A problem with a ``pipeline_config:`` value (folder with model_index.json, hub id, built-in), or None."""
    if spec.startswith("sdbatch/"):
        from .tiny import BUILTIN_MODELS

        return None if spec in BUILTIN_MODELS else f"unknown built-in model {spec!r}"
    path = local_model_path(spec, base_dir)
    if path is not None:
        if not (path / "model_index.json").is_file():
            return f"{spec!r}: not a diffusers pipeline folder (no model_index.json)"
        return None
    if spec.startswith((".", "/", "~")) or not HUB_ID.match(spec):
        return f"{spec!r}: no such folder (relative to {base_dir}) and not a hub id like 'org/name'"
    return None


def hf_cache_dir() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface"
    return Path(home) / "hub"


def cached_hub_snapshot(repo_id: str, revision: str = "main") -> tuple[str, Path] | None:
    """The (commit, snapshot folder) of a hub model already in the local cache, or None."""
    folder = hf_cache_dir() / ("models--" + repo_id.replace("/", "--"))
    if re.fullmatch(r"[0-9a-f]{40}", revision):
        commit = revision
    else:
        try:
            commit = (folder / "refs" / revision).read_text().strip()
        except OSError:
            return None
    snapshot = folder / "snapshots" / commit
    return (commit, snapshot) if snapshot.is_dir() else None


def rehearsal_model(spec: str, base_dir: Path) -> str:
    """The built-in tiny model standing in for ``spec`` under --rehearse."""
    if spec.startswith("sdbatch/"):
        return spec
    text = spec.lower()
    local = local_model_path(spec, base_dir)
    if local is not None and local.is_dir() and (local / "model_index.json").exists():
        try:
            text += json.loads((local / "model_index.json").read_text()).get("_class_name", "").lower()
        except (OSError, ValueError):
            pass
    return "sdbatch/tiny-sdxl" if "xl" in text else "sdbatch/tiny-sd"


def resolve_model(spec: str, base_dir: Path, hashes: HashCache, *, rehearse: bool = False) -> ModelRef:
    """Identify a model without loading it (no torch). Hub models not yet cached stay unresolved."""
    from .tiny import BUILTIN_MODELS

    if rehearse:
        spec = rehearsal_model(spec, base_dir)
    if spec.startswith("sdbatch/"):
        return ModelRef(spec, BUILTIN_MODELS[spec], "builtin")
    local = local_model_path(spec, base_dir)
    if local is not None:
        if local.is_file():
            return ModelRef(spec, hashes.file(local), "file", str(local))
        return ModelRef(spec, hashes.folder(local), "folder", str(local))
    repo_id, _, revision = spec.partition("@")
    cached = cached_hub_snapshot(repo_id, revision or "main")
    if cached:
        return ModelRef(repo_id, cached[0], "hub", str(cached[1]))
    return ModelRef(repo_id, f"unresolved:{revision or 'main'}", "hub", None)


def locate_recorded_model(model_id: Any, revision: Any, source: Any, bases: list[Path], what: str = "model") -> Any:
    """A ModelRef for a recorded model identity, found locally and checked (or fetched, for a hub commit)."""
    if not isinstance(model_id, str) or not isinstance(revision, str):
        raise ModelUnavailable(f"the record names no {what}")
    if source == "builtin" or (source is None and model_id.startswith("sdbatch/")):
        from .tiny import BUILTIN_MODELS

        if model_id not in BUILTIN_MODELS:
            raise ModelUnavailable(f"built-in {what} {model_id!r} no longer exists")
        if BUILTIN_MODELS[model_id] != revision:
            raise ModelUnavailable(f"built-in {what} {model_id} is now {BUILTIN_MODELS[model_id]}, the output was made "
                                  f"with {revision}: it cannot be reproduced with this sdbatch")
        return ModelRef(model_id, revision, "builtin")
    if source in ("file", "folder"):
        spec = Path(model_id).expanduser()
        candidates = [spec] if spec.is_absolute() else [base / spec for base in bases]
        hashes = HashCache.open()
        seen_other = None
        try:
            for candidate in dict.fromkeys(candidates):
                if not candidate.exists() or candidate.is_file() != (source == "file"):
                    continue
                digest = hashes.file(candidate) if source == "file" else hashes.folder(candidate)
                if digest == revision:
                    return ModelRef(model_id, revision, source, str(candidate))
                seen_other = seen_other or candidate
        finally:
            hashes.save()
        if seen_other is not None:
            raise ModelUnavailable(f"{what} {model_id} has changed since this output was made (its hash is no longer "
                                  f"{revision[:12]}): {seen_other}")
        raise ModelUnavailable(f"{what} {model_id} not found (a path relative to the recipe's folder: run reproduce "
                              "next to the recipe)")
    if source in ("hub", None):
        if revision.startswith("unresolved:"):
            raise ModelUnavailable(f"the record has no commit for hub {what} {model_id}")
        cached = cached_hub_snapshot(model_id, revision)
        if cached:
            return ModelRef(model_id, cached[0], "hub", str(cached[1]))
        from ..runtime.models import fetch_hub_model  # TODO(sources): move the hub fetch here

        try:
            return fetch_hub_model(ModelRef(model_id, revision, "hub", None))
        except ModelUnavailable as exc:
            raise ModelUnavailable(f"{exc} (needed at commit {revision[:12]})") from None
    raise ModelUnavailable(f"unknown {what} source {source!r}")


def parse_identity(identity: str) -> tuple[str, str, str]:
    """``source:id@revision`` (``ModelRef.identity()``) -> (id, revision, source)."""
    source, _, rest = identity.partition(":")
    model_id, _, revision = rest.rpartition("@")
    return model_id, revision, source
