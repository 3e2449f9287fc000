"""IP-Adapter on a shared pipeline: exactly a job's adapters are in the UNet while it renders.

A model's task pipelines share one UNet (``from_pipe``), and ``load_ip_adapter`` replaces its cross-attention
processors and adds an image projection, so an adapter loaded for one stage would change every other stage's
images (or break them: a UNet with an image projection wants image embeddings). The bank keeps, per loaded
model, the adapter set now in the UNet; a job wanting another set first has it unloaded (``unload_ip_adapter``,
the UNet's own processors back), then its own loaded through diffusers' ``load_ip_adapter(folder,
subfolder=..., weight_name=...)`` (the image encoder from ``<subfolder>/image_encoder``, as diffusers finds it);
a job without adapters runs on the plain UNet. The image encoder a load registers on one task pipeline is
registered on the others too (and removed with the adapters), so each task pipeline sees the same encoder.
Scales are set per job (``set_ip_adapter_scale``); :func:`ip_adapter_kwargs` gives the call its
``ip_adapter_image``. Pickle adapters load only with ``allow_pickle`` (:mod:`sdbatch.sources.weights`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..core.job import Job
from ..errors import ModelUnavailable, one_line
from ..sources.specs import model_folder
from ..sources.weights import ensure_loadable


def ip_adapter_set(job: Job) -> tuple:
    """The job's adapters as ((sha256, subfolder, weight_name), ...): what must be in the UNet while it renders."""
    return tuple((a.sha256, a.subfolder, a.weight_name) for a in getattr(job.params, "ip_adapter", None) or ())


def _files(job: Job) -> list[tuple[Path, str, str]]:
    """(folder, subfolder, weight_name) of each adapter, checked against the plan (pickle policy, sha256)."""
    from ..io.hashing import sha256_file

    out = []
    for j, ref in enumerate(job.params.ip_adapter or ()):
        aux = job.aux_models.get(f"ip_adapter:{j}")
        if aux is None:
            raise ModelUnavailable(f"IP-Adapter {ref.model!r} has no files in the plan")
        folder = model_folder(aux, pipeline=False)
        inner = Path(ref.subfolder) / ref.weight_name if ref.subfolder else Path(ref.weight_name)
        file = folder / inner
        allow_pickle = bool(job.options.allow_pickle)
        ensure_loadable(file, allow_pickle, f"IP-Adapter {ref.model!r}")
        ensure_loadable(file.parent / "image_encoder", allow_pickle, f"IP-Adapter {ref.model!r} image encoder")
        if not ref.sha256.startswith("builtin:") and sha256_file(file) != ref.sha256:
            raise RuntimeError(f"IP-Adapter {file} changed since the plan was made (sha256 differs); re-run")
        out.append((folder, ref.subfolder, ref.weight_name))
    return out


def _set_encoder(pipe: Any, encoder: Any, extractor: Any) -> None:
    if hasattr(pipe, "image_encoder") and pipe.image_encoder is not encoder:
        pipe.register_modules(image_encoder=encoder)
    if extractor is not None and hasattr(pipe, "feature_extractor") and pipe.feature_extractor is None:
        pipe.register_modules(feature_extractor=extractor)


def _unload(state: dict[str, Any]) -> None:
    loader = state.get("pipe")
    if loader is not None:
        loader.unload_ip_adapter()
        loader.unet._sdbatch_ip_encoder = None
    for pipe in state.get("pipes", ()):
        if getattr(pipe, "image_encoder", None) is state.get("encoder"):
            pipe.register_modules(image_encoder=None)
        if state.get("extractor") is not None and getattr(pipe, "feature_extractor", None) is state["extractor"]:
            pipe.register_modules(feature_extractor=None)
    state.clear()


def apply_ip_adapter(state: dict[str, Any], job: Job, pipe: Any) -> None:
    """Make the shared UNet hold exactly ``job``'s IP-Adapters (at its scales); ``state`` is the bank's record
    for the job's model."""
    wanted = ip_adapter_set(job)
    if state.get("active", ()) != wanted:
        if state.get("active"):
            _unload(state)
        if wanted:
            files = _files(job)
            if getattr(pipe, "image_encoder", None) is not None:
                pipe.register_modules(image_encoder=None)  # another adapter's encoder: load this one's
            had_extractor = getattr(pipe, "feature_extractor", None) is not None
            try:
                pipe.load_ip_adapter([str(f[0]) for f in files], subfolder=[f[1] for f in files],
                                     weight_name=[f[2] for f in files], local_files_only=True)
            except (OSError, ValueError, KeyError, RuntimeError) as exc:
                state.clear()
                state["pipe"] = pipe
                _unload(state)
                raise ModelUnavailable(f"IP-Adapter {job.params.ip_adapter[0].model!r} could not be loaded into "
                                       f"{job.model.id!r}: {one_line(str(exc), 300) or type(exc).__name__}") from None
            state.update(active=wanted, pipe=pipe, pipes=[pipe], encoder=getattr(pipe, "image_encoder", None),
                         extractor=None if had_extractor else getattr(pipe, "feature_extractor", None))
            pipe.unet._sdbatch_ip_encoder = (state["encoder"], state["extractor"])  # any pipe sharing the UNet
    if not wanted:
        return
    if pipe not in state["pipes"]:
        _set_encoder(pipe, state["encoder"], state["extractor"])
        state["pipes"].append(pipe)
    pipe.set_ip_adapter_scale([float(a.scale) for a in job.params.ip_adapter])


def ip_adapter_kwargs(pipe: Any, jobs: list[Job], ctx: Any) -> dict[str, Any]:
    """``ip_adapter_image`` for a batch's call (its jobs share params, so adapters and images): one reference
    image per adapter, read as RGB and checked against its planned sha256; {} without adapters. ``pipe`` (e.g.
    a ControlNet pipeline made from the task pipeline) gets the image encoder of the adapters in its UNet."""
    from ..core.job import InputRef

    refs = getattr(jobs[0].params, "ip_adapter", None)
    if not refs:
        return {}
    encoder = getattr(getattr(pipe, "unet", None), "_sdbatch_ip_encoder", None)
    if encoder:
        _set_encoder(pipe, *encoder)
    images = [ctx.load_image(InputRef(ref.image, ref.image_sha256)).image for ref in refs]
    return {"ip_adapter_image": images}
