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


def fetch_hub_model(model: ModelRef, pipeline: bool = True) -> ModelRef:
    """Download (or find in the cache) a hub model; return it with its commit and snapshot folder.

    The Hub is asked about the repository first (``model_info``: no such repository, no such revision, no
    network show before torch and diffusers are imported); then a pipeline is fetched with diffusers'
    ``DiffusionPipeline.download`` (only the files the pipeline loads), anything else (a VAE, a depth model)
    with ``snapshot_download``. Any failure is a :class:`ModelUnavailable` naming its case (offline and not
    cached, no network, gated, no such repository, ...) and what to do (:mod:`sdbatch.sources.hub_errors`).
    The token comes from ``HF_TOKEN`` or ``hf auth login``, handled by huggingface_hub; it is never logged.
    """
    if model.source != "hub" or model.path:
        return model
    import huggingface_hub

    from .hub_errors import unavailable

    revision = model.revision.removeprefix("unresolved:")
    what = "model" if pipeline else "hub model"
    cache_dir = hub_cache_dir()
    try:
        huggingface_hub.model_info(model.id, revision=revision)
    except huggingface_hub.errors.OfflineModeIsEnabled:
        pass  # offline: the download below looks in the cache alone, and says so
    except Exception as exc:  # noqa: BLE001 - any failure is a case with its hints
        raise unavailable(model.id, revision, exc, cache_dir, what, pipeline) from None
    try:
        if pipeline:
            from diffusers import DiffusionPipeline

            folder = Path(DiffusionPipeline.download(model.id, revision=revision, cache_dir=cache_dir))
        else:
            folder = Path(huggingface_hub.snapshot_download(model.id, revision=revision, cache_dir=cache_dir))
    except Exception as exc:  # noqa: BLE001
        raise unavailable(model.id, revision, exc, cache_dir, what, pipeline) from None
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
        from .hub_errors import unavailable

        raise unavailable(config, "main", exc, hub_cache_dir(), "pipeline_config", True) from None
