"""Hugging Face Hub models: the local cache (huggingface_hub's cache API) and fetching.

huggingface_hub is imported only here and only where a hub id is looked up (``try_to_load_from_cache`` pulls in
its HTTP client, ~90 ms), so validating a recipe without hub ids never pays for it; torch and diffusers are
imported only to fetch a pipeline (diffusers chooses which of a repo's files a pipeline needs).

The cache folder is read when a lookup happens, not when huggingface_hub was imported: ``HF_HUB_CACHE``, else
``HF_HOME``/hub, else huggingface_hub's default; fetches write to the same folder.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..core.job import ModelRef
from ..errors import ModelUnavailable

#: a cached snapshot counts when it holds one of these (a pipeline's index, a single model's config)
SNAPSHOT_MARKERS = ("model_index.json", "config.json")


def hub_cache_dir() -> str:
    """The hub cache folder, honouring ``HF_HUB_CACHE`` / ``HF_HOME`` as they are now."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.path.expanduser(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return os.path.join(os.path.expanduser(os.environ["HF_HOME"]), "hub")
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def cached_hub_snapshot(repo_id: str, revision: str = "main") -> tuple[str, Path] | None:
    """The (commit, snapshot folder) of a hub model already in the local cache, or None."""
    from huggingface_hub import try_to_load_from_cache

    cache_dir = hub_cache_dir()
    for marker in SNAPSHOT_MARKERS:
        try:
            found = try_to_load_from_cache(repo_id, marker, cache_dir=cache_dir, revision=revision)
        except ValueError:  # not a valid repo id or revision for the hub
            return None
        if isinstance(found, str):
            snapshot = Path(found).parent
            return snapshot.name, snapshot
    return None


def hub_ref(spec: str) -> ModelRef:
    """``org/name[@revision]`` as a ModelRef: its commit and snapshot when cached, else unresolved."""
    repo_id, _, revision = spec.partition("@")
    cached = cached_hub_snapshot(repo_id, revision or "main")
    if cached:
        return ModelRef(repo_id, cached[0], "hub", str(cached[1]))
    return ModelRef(repo_id, f"unresolved:{revision or 'main'}", "hub", None)


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def fetch_hub_model(model: ModelRef, pipeline: bool = True) -> ModelRef:
    """Download (or find in the cache) a hub model; return it with its commit and snapshot folder.

    A pipeline is fetched with diffusers' ``DiffusionPipeline.download`` (only the files the pipeline loads),
    anything else (a VAE, a depth model) with ``snapshot_download``. The token comes from ``HF_TOKEN`` or
    ``hf auth login``, handled by huggingface_hub; it is never logged.
    """
    if model.source != "hub" or model.path:
        return model
    revision = model.revision.removeprefix("unresolved:")
    try:
        if pipeline:
            from diffusers import DiffusionPipeline

            folder = Path(DiffusionPipeline.download(model.id, revision=revision, cache_dir=hub_cache_dir()))
        else:
            from huggingface_hub import snapshot_download

            folder = Path(snapshot_download(model.id, revision=revision, cache_dir=hub_cache_dir()))
    except Exception as exc:  # noqa: BLE001 - any fetch failure becomes one line
        raise ModelUnavailable(
            f"model {model.id!r} could not be fetched ({_first_line(exc)[:160]}); check the name and your network "
            f"or HF_TOKEN, or try the recipe offline with --rehearse") from None
    return ModelRef(model.id, folder.name, "hub", str(folder))


def pipeline_index(config: str) -> Path:
    """The ``model_index.json`` of a ``pipeline_config`` folder or hub id (a hub id's is fetched alone)."""
    index = Path(config) / "model_index.json"
    if index.is_file():
        return index
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(config, "model_index.json", cache_dir=hub_cache_dir()))
    except Exception as exc:  # noqa: BLE001
        raise ModelUnavailable(f"pipeline_config {config!r}: no model_index.json ({_first_line(exc)})"[:300]) from None
