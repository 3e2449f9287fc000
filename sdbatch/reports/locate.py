"""What ``sdbatch reproduce`` needs besides the record: the recipe's folder, the inputs, the models.

Inputs are stage outputs (relative to the output folder) or files relative to the recipe's folder; each is
checked against its recorded sha256, and a changed one is never swapped for a copy found elsewhere. Every
path comes from untrusted metadata (:mod:`.untrusted`): it is looked up only as a relative path that
resolves inside the folder it is joined to; the recorded ``recipe.dir`` is never followed.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

from .provenance import Found, ProvenanceError, abs_path, short
from .untrusted import inside, relpath_problem


def recipe_dirs(found: Found) -> list[Path]:
    """Folders the recipe may live in, best first: those holding a file with the recorded recipe's sha256,
    then those holding a file of that name. A relative recipe path was relative to where ``sdbatch run``
    started: tried against the output folder, the file's folder, their parents and this working directory.
    The recorded ``dir`` (an absolute path from metadata) is not followed, nor is a recipe path that is not
    relative (its file name is looked up instead)."""
    from ..io.hashing import sha256_file

    recipe = found.record.recipe
    rp = recipe.path
    if not isinstance(rp, str) or not rp:
        return []
    name = PurePosixPath(rp).name
    rels = [r for r in dict.fromkeys((name, rp)) if relpath_problem(r) is None]
    # a project moved or copied with its outputs finds its own files first, then where the run started
    roots: list[Path] = []
    for anchor in (found.out_dir, found.file.parent):
        if anchor is not None:
            roots += [anchor, *anchor.parents]
    candidates = [inside(root, rel) for rel in rels for root in (*roots, Path.cwd())]
    exact, named = [], []
    for candidate in dict.fromkeys(abs_path(c) for c in candidates if c is not None):
        if candidate.is_file():
            try:
                same = sha256_file(candidate) == recipe.sha256
            except OSError:
                same = False
            (exact if same else named).append(candidate.parent)
    return list(dict.fromkeys(exact + named))


def search_bases(found: Found, dirs: list[Path]) -> list[Path]:
    bases = list(dirs) + [Path.cwd()]
    if found.out_dir is not None:
        bases += [found.out_dir.parent, *found.out_dir.parent.parents]
    return list(dict.fromkeys(abs_path(b) for b in bases))


def _hash_cache_lookup(digest: str, rel: str) -> Path | None:
    """A file this machine hashed before (planning hashes every input) with ``digest``, ending in ``rel``."""
    from ..io.hashing import HashCache

    tail = PurePosixPath(rel).parts
    for real, entry in HashCache.open().entries.items():
        if isinstance(entry, list) and len(entry) >= 3 and entry[2] == digest:
            path = Path(real)
            if tuple(path.parts[-len(tail):]) == tail and path.is_file():
                return path
    return None


def locate_input(rel: Any, digest: str | None, what: str, found: Found, stage_outputs: set[str],
                 bases: list[Path]) -> Path:
    """The file of a recorded input (``what``: "input", "mask", "LoRA") at ``rel`` with sha256 ``digest``."""
    from ..io.hashing import sha256_file

    problem = relpath_problem(rel)
    if problem:
        raise ProvenanceError(f"{what} path {problem}: not followed")
    if rel in stage_outputs and found.out_dir is not None:
        folders = [found.out_dir]  # an upstream stage's output
    else:
        folders = ([found.out_dir] if found.out_dir is not None and not stage_outputs else []) + bases
    joined = [(folder, inside(folder, rel)) for folder in folders]
    candidates = [path for _folder, path in joined if path is not None]
    escapes = [folder for folder, path in joined if path is None and (folder / rel).exists()]
    changed = []
    for candidate in dict.fromkeys(candidates):
        if candidate.is_file():
            # the nearest file at the recorded path decides: a changed input is never swapped for a copy elsewhere
            if not digest or sha256_file(candidate) == digest:
                return candidate
            changed.append(candidate)
            break
    if digest and not changed and not escapes and rel not in stage_outputs:
        cached = _hash_cache_lookup(digest, rel)  # e.g. a recipe run from a folder we cannot guess
        if cached is not None and sha256_file(cached) == digest:
            return cached
    if changed:
        raise ProvenanceError(f"{what} {rel} has changed since this output was made (sha256 differs from "
                              f"{short(digest)}): {changed[0]}")
    if escapes:
        raise ProvenanceError(f"{what} {rel} leads out of {escapes[0]} through a symlink: not followed")
    looked = ", ".join(str(c.parent) for c in list(dict.fromkeys(candidates))[:4])
    hint = "" if rel in stage_outputs else " (a recipe-relative path: run reproduce next to the recipe)"
    raise ProvenanceError(f"{what} {rel} not found (looked in {looked}){hint}")


def recorded_model(model_id: Any, revision: Any, source: Any, bases: list[Path], what: str = "model") -> Any:
    from ..errors import ModelUnavailable
    from ..sources.specs import locate_recorded_model

    if source in ("file", "folder"):  # a local path from metadata: relative, and never out of its base
        problem = relpath_problem(model_id)
        if problem:
            raise ProvenanceError(f"{what} path {problem}: not followed")
        bases = [base for base in bases if inside(base, model_id) is not None]
    try:
        return locate_recorded_model(model_id, revision, source, bases, what)
    except ModelUnavailable as exc:
        raise ProvenanceError(str(exc)) from None


def aux_models(params: dict[str, Any], found: Found, bases: list[Path]) -> dict[str, Any]:
    """The job's extra model sources recorded in its params: LoRA and embedding files, a VAE override, a pipeline
    config."""
    from ..core.job import ModelRef
    from ..sources.specs import local_model_path, parse_identity

    aux: dict[str, Any] = {}
    for lora in params.get("loras") or []:
        path = locate_input(lora.get("path"), lora.get("sha256"), "LoRA", found, set(), bases)
        aux[f"lora:{lora['sha256']}"] = ModelRef(lora["path"], lora["sha256"], "file", str(path))
    for embedding in params.get("embeddings") or []:  # textual inversion files, found by content like LoRAs
        path = locate_input(embedding.get("path"), embedding.get("sha256"), "embedding", found, set(), bases)
        aux[f"embedding:{embedding['sha256']}"] = ModelRef(embedding["path"], embedding["sha256"], "file", str(path))
    if params.get("ip_adapter"):  # IP-Adapter files, found by content (sdbatch.reports.ipadapter_locate)
        from .ipadapter_locate import recorded_ip_adapters

        aux.update(recorded_ip_adapters(params, bases))
    if params.get("controlnet"):  # ControlNets and depth models by identity (sdbatch.reports.control_locate)
        from .control_locate import recorded_controlnets

        aux.update(recorded_controlnets(params, bases, recorded_model))
    if isinstance(params.get("refiner"), dict):  # generate's SDXL refiner, by identity (sdbatch.stages.refiner)
        aux["refiner"] = recorded_model(*parse_identity(str(params["refiner"].get("identity", ""))), bases,
                                        what="refiner")
    hires = params.get("hires") if isinstance(params.get("hires"), dict) else {}
    up = params.get("upscaler") if isinstance(params.get("upscaler"), dict) else hires.get("upscaler")
    if isinstance(up, dict) and up.get("name") == "model":  # an upscaler file by content (sdbatch.config.upscaler)
        aux["upscaler"] = ModelRef(str(up["file"]), str(up["sha256"]), "file", str(_upscaler_file(up, found, bases)))
    elif isinstance(up, dict) and up.get("name") == "sd-x4":
        aux["upscaler"] = recorded_model(*parse_identity(str(up.get("model", ""))), bases, what="upscaler")
    if isinstance(params.get("vae"), str):
        aux["vae"] = recorded_model(*parse_identity(params["vae"]), bases, what="VAE")
    config = params.get("pipeline_config")
    if isinstance(config, str):
        if config.startswith("sdbatch/"):
            from ..sources.tiny import BUILTIN_MODELS

            aux["pipeline_config"] = ModelRef(config, BUILTIN_MODELS.get(config, "?"), "builtin")
        elif problem := relpath_problem(config):
            raise ProvenanceError(f"pipeline_config {problem}: not followed")
        else:
            inner = [b for b in bases if inside(b, config) is not None]
            local = next((p for p in (local_model_path(config, b) for b in inner) if p is not None), None)
            aux["pipeline_config"] = ModelRef(config, "local", "folder", str(local)) if local is not None \
                else ModelRef(config, "configs", "hub-config", None)
    return aux


def _upscaler_file(up: dict[str, Any], found: Found, bases: list[Path]) -> Path:
    """An upscaler file the params name by file name and sha256: beside the recipe, else in a folder up to two
    levels below it (``models/4x.safetensors``), else where this machine hashed it."""
    from ..io.hashing import sha256_file

    name, digest = up.get("file"), up.get("sha256")
    try:
        return locate_input(name, digest, "upscaler", found, set(), bases)
    except ProvenanceError:
        if not isinstance(name, str) or "/" in name or "\\" in name or relpath_problem(name):
            raise
        near = [p for base in bases[:2] for pattern in (f"*/{name}", f"*/*/{name}") for p in sorted(base.glob(pattern))]
        for path in near:
            if path.is_file() and sha256_file(path) == digest:
                return path
        if near:
            raise ProvenanceError(f"upscaler {name} has changed since this output was made (sha256 differs from "
                                  f"{short(digest)}): {near[0]}") from None
        raise
