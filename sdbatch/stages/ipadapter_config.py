"""Planning ``ip_adapter:`` (see :mod:`sdbatch.config.ipadapter`): each adapter's file and reference image found,
checked and identified by content, into a job's params (its id) and aux models (what the worker loads).

A job's ``params.ip_adapter`` is a list of ``{model, subfolder, weight_name, sha256, image, image_sha256,
scale}``: the adapter file's sha256 (a hub file's once it is in the cache; ``unresolved:<revision>`` until
``run`` has fetched it), the reference image's sha256 and the scale. Problems are reported at validate (exit 2,
``file:line: stages[i].ip_adapter[j].<field>: ...``): an image that is missing or unreadable, an adapter file
that is missing, not an IP-Adapter, a pickle without ``allow_pickle``, or made for another base model family
(its cross-attention width, read from the safetensors header, against the model's UNet config). Under
``--rehearse`` every adapter is the built-in ``sdbatch/tiny-ip-adapter`` for the tiny base model. Never
imports torch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..config.images import check_image
from ..config.ipadapter import IP_ADAPTER_STAGES, TINY_IP_ADAPTER, adapter_cross_dim, family, is_ip_adapter_file
from ..config.yamlio import format_path
from ..core.job import ModelRef
from ..errors import Problem
from ..sources.specs import HUB_ID, local_model_path
from ..sources.tiny import BUILTIN_MODELS, BUILTIN_PREFIX
from ..sources.tiny.configs import TINY_SD_UNET, TINY_SDXL_UNET
from ..sources.tiny.ip_adapter import TINY_IP_ADAPTER_FILES
from ..sources.weights import folder_problem, weights_problem

TINY_CROSS_DIMS = {"sdbatch/tiny-sd": TINY_SD_UNET["cross_attention_dim"],
                   "sdbatch/tiny-sdxl": TINY_SDXL_UNET["cross_attention_dim"]}


def base_cross_dim(model: ModelRef) -> int | None:
    """The cross-attention width of a base model's UNet, where its config can be read; None otherwise."""
    if model.source == "builtin":
        return TINY_CROSS_DIMS.get(model.id)
    if not model.path or not Path(model.path).is_dir():
        return None
    try:
        value = json.loads((Path(model.path) / "unet" / "config.json").read_text()).get("cross_attention_dim")
    except (OSError, ValueError, AttributeError):
        return None
    value = value[0] if isinstance(value, list) and value else value
    return value if isinstance(value, int) else None


def _problem(planner: Any, kind: str, path: tuple, message: str) -> None:
    """``planner.problem_once``, with the field shown as the recipe writes it (``stages[0].ip_adapter[1].image``)."""
    if kind in planner.reported:
        return
    planner.reported.add(kind)
    full = ("stages", planner.index) + tuple(path)
    planner.plan.problems.append(Problem(planner.plan.line(*full), format_path(full), message))


def hub_file(repo: str, filename: str) -> tuple[str, Path, Path] | None:
    """(commit, snapshot folder, file) of a hub repository's file in the local cache, or None."""
    from huggingface_hub import try_to_load_from_cache

    from ..sources.hub import hub_cache_dir

    repo_id, _, revision = repo.partition("@")
    try:
        found = try_to_load_from_cache(repo_id, filename, cache_dir=hub_cache_dir(), revision=revision or "main")
    except ValueError:
        return None
    if not isinstance(found, str):
        return None
    file = Path(found)
    snapshot = file.parents[len(Path(filename).parts) - 1]
    return snapshot.name, snapshot, file


def plan_ip_adapter(planner: Any, stage: Any, fixed: dict[str, Any]) -> None:
    """Put the stage's IP-Adapters into ``fixed["ip_adapter"]`` and ``planner.aux`` (``ip_adapter:<j>``)."""
    units = getattr(stage, "ip_adapter", None)
    if not units:
        return
    if stage.type not in IP_ADAPTER_STAGES:
        _problem(planner, "ip_adapter", ("ip_adapter",), f"{stage.type} stages do not take an IP-Adapter "
                                                            f"(only {', '.join(IP_ADAPTER_STAGES)})")
        return
    plan = planner.plan
    inputs, allow_pickle = plan.inputs, bool(plan.recipe.allow_pickle)
    base = inputs.model(stage.model or plan.recipe.model)
    base_dim = base_cross_dim(base)
    refs: list[dict[str, Any]] = []
    for j, unit in enumerate(units):
        where = ("ip_adapter", j)
        image = inputs.absolute(unit.image)
        problem = check_image(image)[1] if image.is_file() else f"no such image file (relative to {inputs.base})"
        if problem:
            _problem(planner, f"ip_adapter:{j}:image", where + ("image",), f"{unit.image!r}: {problem}")
            continue
        ref = {"model": unit.model, "subfolder": unit.subfolder, "weight_name": unit.weight_name}
        if planner.rehearse:
            sub, weight, _ = TINY_IP_ADAPTER_FILES["sdxl" if base.id == "sdbatch/tiny-sdxl" else "sd"]
            ref = {"model": TINY_IP_ADAPTER, "subfolder": sub, "weight_name": weight,
                   "sha256": f"builtin:{BUILTIN_MODELS[TINY_IP_ADAPTER]}"}
            planner.aux[f"ip_adapter:{j}"] = ModelRef(TINY_IP_ADAPTER, BUILTIN_MODELS[TINY_IP_ADAPTER], "builtin")
        else:
            found = _adapter_file(planner, unit, where, allow_pickle, base_dim)
            if found is None:
                continue
            ref["sha256"], planner.aux[f"ip_adapter:{j}"] = found
        ref.update(image=unit.image, image_sha256=inputs.hashes.file(image), scale=float(unit.scale))
        refs.append(ref)
    if len(refs) == len(units):
        fixed["ip_adapter"] = refs


def _adapter_file(planner: Any, unit: Any, where: tuple, allow_pickle: bool, base_dim: int | None
                  ) -> tuple[str, ModelRef] | None:
    """(the adapter file's sha256, its aux model), or None with the problem reported."""
    inputs = planner.plan.inputs
    inner = Path(unit.subfolder) / unit.weight_name if unit.subfolder else Path(unit.weight_name)
    problem = weights_problem(inner, allow_pickle, repr(inner.as_posix()))
    if problem:
        _problem(planner, f"ip_adapter:{where[1]}:weight", where + ("weight_name",), problem)
        return None
    local = local_model_path(unit.model, inputs.base)
    if unit.model.startswith(BUILTIN_PREFIX):  # the tiny built-in, named as it is (what --rehearse uses)
        files = {(sub, weight): TINY_CROSS_DIMS[f"sdbatch/tiny-{kind}"]
                 for kind, (sub, weight, _) in TINY_IP_ADAPTER_FILES.items()}
        if unit.model != TINY_IP_ADAPTER or (unit.subfolder, unit.weight_name) not in files:
            shown = ", ".join(f"{sub}/{weight}" for sub, weight in files)
            _problem(planner, f"ip_adapter:{where[1]}:model", where + ("model",),
                     f"the built-in IP-Adapter is {TINY_IP_ADAPTER!r} with {shown}")
            return None
        revision = BUILTIN_MODELS[TINY_IP_ADAPTER]
        dim = files[(unit.subfolder, unit.weight_name)]
        if base_dim is not None and dim != base_dim:
            _problem(planner, f"ip_adapter:{where[1]}:family", where + ("weight_name",),
                     f"{inner.as_posix()} is an IP-Adapter for {family(dim)}; the stage's model is {family(base_dim)}")
            return None
        return f"builtin:{revision}", ModelRef(TINY_IP_ADAPTER, revision, "builtin")
    if local is not None and local.is_dir():
        file = local / inner
        encoder = file.parent / "image_encoder"
        if not file.is_file():
            problem = f"{unit.model!r} has no {inner.as_posix()}"
        elif not is_ip_adapter_file(file):
            problem = f"{inner.as_posix()} is not an IP-Adapter (no image_proj.* and ip_adapter.* tensors)"
        elif not (encoder / "config.json").is_file():
            problem = f"{unit.model!r} has no image encoder ({(inner.parent / 'image_encoder').as_posix()}/config.json)"
        else:
            problem = folder_problem(encoder, allow_pickle)
        if problem:
            _problem(planner, f"ip_adapter:{where[1]}:model", where + ("model",), problem)
            return None
        digest = inputs.hashes.file(file)
        aux = ModelRef(unit.model, digest, "folder", str(local))
    elif local is None and HUB_ID.match(unit.model):
        cached = hub_file(unit.model, inner.as_posix())
        repo, _, revision = unit.model.partition("@")
        if cached is None:  # `run` fetches the repository, then plans again with the file's sha256
            return f"unresolved:{revision or 'main'}", ModelRef(repo, f"unresolved:{revision or 'main'}", "hub", None)
        commit, snapshot, file = cached
        digest = inputs.hashes.file(file)
        aux = ModelRef(repo, commit, "hub", str(snapshot))
    else:
        what = "a file" if local is not None else "no local folder"
        _problem(planner, f"ip_adapter:{where[1]}:model", where + ("model",),
                             f"{unit.model!r} is {what}: an IP-Adapter model is a folder or hub id holding "
                             "<subfolder>/<weight_name> and <subfolder>/image_encoder/")
        return None
    dim = adapter_cross_dim(file)
    if dim is not None and base_dim is not None and dim != base_dim:
        _problem(planner, f"ip_adapter:{where[1]}:family", where + ("weight_name",),
                             f"{inner.as_posix()} is an IP-Adapter for {family(dim)}; the stage's model is "
                             f"{family(base_dim)}")
        return None
    return digest, aux
