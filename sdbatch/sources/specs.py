"""Model specs -> :class:`~sdbatch.core.job.ModelRef`: hub ids, local folders, single files, built-ins.

The one place that knows what a model spec in a recipe (``model``, ``vae``, ``loras``, ``pipeline_config``,
``depth_model``) or in a manifest record names: the recipe checks (``check_*``: a message or None, which the
config layer reports as ``file:line: field: message``), planning (:func:`resolve_model`,
:func:`pipeline_config_ref`), loading (:func:`model_folder`, :func:`config_source`) and provenance
(:func:`locate_recorded_model`). Which weights may be loaded is :mod:`.weights`' pickle policy; the hub cache
and fetching are :mod:`.hub`. Never imports torch or diffusers (a hub fetch aside).
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..core.job import ModelRef
from ..errors import ModelUnavailable
from ..io.hashing import HashCache
from .families import REHEARSAL_MODELS, family_of
from .hub import cached_hub_snapshot, fetch_hub_model, hub_ref
from .paths import local_model_path
from .tiny import BUILTIN_MODELS, BUILTIN_PREFIX, builtin_model_path
from .weights import PICKLE_ADVICE, PICKLE_SUFFIXES, WEIGHT_SUFFIXES, folder_problem, weights_problem

__all__ = [
    "HUB_ID", "PICKLE_ADVICE", "PICKLE_SUFFIXES", "cached_hub_snapshot", "check_depth_spec", "check_model_spec",
    "check_pipeline_config", "check_vae_spec", "check_weights_file", "config_source", "local_model_path",
    "locate_model", "locate_recorded_model", "model_folder", "parse_identity", "pipeline_config_ref",
    "rehearsal_model", "resolve_model",
]

HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*(@[A-Za-z0-9_./-]+)?$")


# -------------------------------------------------------------------------------- recipe checks
def _builtin_problem(spec: str) -> str | None:
    if spec in BUILTIN_MODELS:
        return None
    return f"unknown built-in model {spec!r} (built-ins: {', '.join(BUILTIN_MODELS)})"


def _not_local_problem(spec: str, base_dir: Path, what: str) -> str | None:
    """A spec that names no local file or folder: a problem unless it is a built-in or a hub id."""
    if spec.startswith(BUILTIN_PREFIX):
        return _builtin_problem(spec)
    if Path(spec).suffix.lower() in WEIGHT_SUFFIXES or spec.startswith((".", "/", "~")):
        return f"{spec!r}: no such {what} file or folder (relative to {base_dir})"
    if not HUB_ID.match(spec):
        return f"{spec!r} is neither a local {what} file/folder nor a hub id like 'org/name'"
    return None


def check_model_spec(spec: str, base_dir: Path, allow_pickle: bool = False) -> str | None:
    """A problem with a ``model:`` spec that can be seen without loading it, or None."""
    path = local_model_path(spec, base_dir)
    if path is None:
        return _not_local_problem(spec, base_dir, "model")
    if path.is_file():
        return weights_problem(path, allow_pickle, repr(spec))
    if not (path / "model_index.json").exists() and not (path / "config.json").exists():
        return f"{spec!r}: folder is not a diffusers model (no model_index.json)"
    problem = folder_problem(path, allow_pickle)
    return f"{spec!r}: {problem}" if problem else None


def check_weights_file(spec: str, base_dir: Path, allow_pickle: bool, what: str) -> str | None:
    """A problem with a local weights file (a LoRA, a VAE file), or None."""
    path = Path(spec).expanduser()
    path = path if path.is_absolute() else base_dir / path
    if not path.is_file():
        return f"{spec!r}: no such {what} file (relative to {base_dir})"
    return weights_problem(path, allow_pickle, repr(spec))


def check_vae_spec(spec: str, base_dir: Path, allow_pickle: bool) -> str | None:
    """A problem with a ``vae:`` value (diffusers folder, hub id or weights file), or None."""
    path = local_model_path(spec, base_dir)
    if path is None:
        return _not_local_problem(spec, base_dir, "VAE")
    if path.is_file():
        return check_weights_file(spec, base_dir, allow_pickle, "VAE")
    for folder in (path, path / "vae"):
        if (folder / "config.json").is_file():
            problem = folder_problem(folder, allow_pickle)
            return f"{spec!r}: {problem}" if problem else None
    return f"{spec!r}: folder is not a diffusers AutoencoderKL (no config.json or vae/config.json)"


def check_depth_spec(spec: str, base_dir: Path, allow_pickle: bool) -> str | None:
    """A problem with a ``depth_model:`` value (transformers folder, hub id or built-in), or None."""
    path = local_model_path(spec, base_dir)
    if path is None:
        return _not_local_problem(spec, base_dir, "depth model")
    if not (path / "config.json").is_file():
        return f"{spec!r}: not a transformers model folder (no config.json)"
    problem = folder_problem(path, allow_pickle)
    return f"{spec!r}: {problem}" if problem else None


def check_pipeline_config(spec: str, base_dir: Path) -> str | None:
    """A problem with a ``pipeline_config:`` value (folder with model_index.json, hub id, built-in), or None."""
    if spec.startswith(BUILTIN_PREFIX):
        return _builtin_problem(spec)
    path = local_model_path(spec, base_dir)
    if path is not None:
        if not (path / "model_index.json").is_file():
            return f"{spec!r}: not a diffusers pipeline folder (no model_index.json)"
        return None
    if spec.startswith((".", "/", "~")) or not HUB_ID.match(spec):
        return f"{spec!r}: no such folder (relative to {base_dir}) and not a hub id like 'org/name'"
    return None


# ---------------------------------------------------------------------------------- planning
def rehearsal_model(spec: str, base_dir: Path) -> str:
    """The built-in tiny model standing in for ``spec`` under --rehearse: its family's
    (:func:`sdbatch.sources.families.family_of`: a folder's model_index.json, a cached hub snapshot's, else the
    spec's words), SD 1.x/2.x's when it cannot be told."""
    if spec.startswith(BUILTIN_PREFIX):
        return spec
    return REHEARSAL_MODELS.get(family_of(spec, base_dir, cached_hub_snapshot) or "sd", "sdbatch/tiny-sd")


def locate_model(spec: str, base_dir: Path) -> ModelRef:
    """What a spec names, found without hashing or loading anything: a built-in, a local file or folder
    (``revision`` left empty), or a hub model (its commit and snapshot when cached, else unresolved)."""
    if spec.startswith(BUILTIN_PREFIX):
        problem = _builtin_problem(spec)
        if problem:
            raise ModelUnavailable(problem)
        return ModelRef(spec, BUILTIN_MODELS[spec], "builtin")
    local = local_model_path(spec, base_dir)
    if local is not None:
        return ModelRef(spec, "", "file" if local.is_file() else "folder", str(local))
    return hub_ref(spec)


def resolve_model(spec: str, base_dir: Path, hashes: HashCache, *, rehearse: bool = False) -> ModelRef:
    """Identify a model without loading it (no torch): local files by content hash, hub models by commit
    (those not yet cached stay unresolved)."""
    ref = locate_model(rehearsal_model(spec, base_dir) if rehearse else spec, base_dir)
    if ref.source == "file":
        return replace(ref, revision=hashes.file(Path(ref.path or "")))
    if ref.source == "folder":
        return replace(ref, revision=hashes.folder(Path(ref.path or "")))
    return ref


def pipeline_config_ref(spec: str, bases: list[Path]) -> ModelRef:
    """Where a single-file model's pipeline configs come from: a built-in, the first of ``bases`` holding the
    folder, else a hub id (diffusers fetches its configs only)."""
    if spec.startswith(BUILTIN_PREFIX):
        return ModelRef(spec, BUILTIN_MODELS.get(spec, "?"), "builtin")
    local = next((p for p in (local_model_path(spec, base) for base in bases) if p is not None), None)
    if local is not None:
        return ModelRef(spec, "local", "folder", str(local))
    return ModelRef(spec, "configs", "hub-config", None)


# ----------------------------------------------------------------------------------- loading
def model_folder(ref: ModelRef, pipeline: bool = True) -> Path:
    """The local file or folder to load ``ref`` from: a built-in's build, a local path, or a hub snapshot
    (fetched when not cached: a pipeline's files only when ``pipeline``, else the whole repository)."""
    if ref.source == "builtin":
        return builtin_model_path(ref.id)
    if ref.path:
        return Path(ref.path)
    if ref.source == "hub":
        return Path(fetch_hub_model(ref, pipeline=pipeline).path or "")
    raise ModelUnavailable(f"model {ref.id!r} has no local files")


def config_source(ref: ModelRef | None) -> str | None:
    """diffusers' ``config=`` for a single-file model: a local folder, or a hub id (configs only)."""
    if ref is None:
        return None
    if ref.source == "builtin":
        return str(builtin_model_path(ref.id))
    return ref.path or ref.id


# -------------------------------------------------------------------------------- provenance
def _recorded_builtin(model_id: str, revision: str, what: str) -> ModelRef:
    if model_id not in BUILTIN_MODELS:
        raise ModelUnavailable(f"built-in {what} {model_id!r} no longer exists")
    if BUILTIN_MODELS[model_id] != revision:
        raise ModelUnavailable(f"built-in {what} {model_id} is now {BUILTIN_MODELS[model_id]}, the output was made "
                               f"with {revision}: it cannot be reproduced with this sdbatch")
    return ModelRef(model_id, revision, "builtin")


def _recorded_local(model_id: str, revision: str, source: str, bases: list[Path], what: str) -> ModelRef:
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


def _recorded_hub(model_id: str, revision: str, what: str) -> ModelRef:
    if revision.startswith("unresolved:"):
        raise ModelUnavailable(f"the record has no commit for hub {what} {model_id}")
    cached = cached_hub_snapshot(model_id, revision)
    if cached:
        return ModelRef(model_id, cached[0], "hub", str(cached[1]))
    try:
        return fetch_hub_model(ModelRef(model_id, revision, "hub", None))
    except ModelUnavailable as exc:
        raise ModelUnavailable(f"{exc.reason} (needed at commit {revision[:12]})", case=exc.case,
                               hints=exc.hints) from None  # the commit on the first line, the hints under it


def locate_recorded_model(model_id: Any, revision: Any, source: Any, bases: list[Path], what: str = "model") -> Any:
    """A ModelRef for a recorded model identity, found locally and checked (or fetched, for a hub commit)."""
    if not isinstance(model_id, str) or not isinstance(revision, str):
        raise ModelUnavailable(f"the record names no {what}")
    if source == "builtin" or (source is None and model_id.startswith(BUILTIN_PREFIX)):
        return _recorded_builtin(model_id, revision, what)
    if source in ("file", "folder"):
        return _recorded_local(model_id, revision, source, bases, what)
    if source in ("hub", None):
        return _recorded_hub(model_id, revision, what)
    raise ModelUnavailable(f"unknown {what} source {source!r}")


def parse_identity(identity: str) -> tuple[str, str, str]:
    """``source:id@revision`` (``ModelRef.identity()``) -> (id, revision, source)."""
    source, _, rest = identity.partition(":")
    model_id, _, revision = rest.rpartition("@")
    return model_id, revision, source
