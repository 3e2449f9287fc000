"""The IP-Adapters a recorded output used, found again for ``sdbatch reproduce`` (``job.aux_models["ip_adapter:<j>"]``).

Each adapter file is found by content: the built-in at the recorded revision, a local folder (a path relative
to one of the search folders, never leading out of it: the metadata is untrusted) whose
``<subfolder>/<weight_name>`` has the recorded sha256, or a hub repository's cached file with that sha256. The
reference image is read by the stage as any input, relative to the recipe's folder and checked against its
recorded sha256.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config.ipadapter import TINY_IP_ADAPTER
from ..core.job import ModelRef
from .provenance import ProvenanceError, short
from .untrusted import inside, relpath_problem


def recorded_ip_adapters(params: dict[str, Any], bases: list[Path]) -> dict[str, ModelRef]:
    units = params.get("ip_adapter") or []
    if not isinstance(units, list) or not all(isinstance(u, dict) for u in units):
        raise ProvenanceError("the record's ip_adapter is not a list of adapters")
    return {f"ip_adapter:{j}": _recorded(unit, bases) for j, unit in enumerate(units)}


def _recorded(unit: dict[str, Any], bases: list[Path]) -> ModelRef:
    from ..io.hashing import sha256_file
    from ..sources.specs import HUB_ID
    from ..sources.tiny import BUILTIN_MODELS

    model, sha, sub, weight = (unit.get(k) for k in ("model", "sha256", "subfolder", "weight_name"))
    if not all(isinstance(v, str) for v in (model, sha, sub, weight)):
        raise ProvenanceError("the record's IP-Adapter lacks model, sha256, subfolder or weight_name")
    inner = f"{sub}/{weight}" if sub else weight
    problem = relpath_problem(inner)
    if problem:
        raise ProvenanceError(f"IP-Adapter path {problem}: not followed")
    if model == TINY_IP_ADAPTER:
        revision = BUILTIN_MODELS[TINY_IP_ADAPTER]
        if sha != f"builtin:{revision}":
            raise ProvenanceError(f"built-in {TINY_IP_ADAPTER} is now {revision}, the output was made with "
                                  f"{sha.removeprefix('builtin:')}: it cannot be reproduced with this sdbatch")
        return ModelRef(TINY_IP_ADAPTER, revision, "builtin")
    if relpath_problem(model) is None:
        for base in bases:
            folder = inside(base, model)
            file = inside(folder, inner) if folder is not None and folder.is_dir() else None
            if file is not None and file.is_file() and sha256_file(file) == sha:
                return ModelRef(model, sha, "folder", str(folder))
    if HUB_ID.match(model):
        from ..stages.ipadapter_config import hub_file

        cached = hub_file(model, inner)
        if cached is not None and sha256_file(cached[2]) == sha:
            return ModelRef(model.partition("@")[0], cached[0], "hub", str(cached[1]))
    raise ProvenanceError(f"IP-Adapter {model} ({inner} with sha256 {short(sha)}) not found (a folder relative to "
                          "the recipe: run reproduce next to it; a hub file: in the hub cache)")
