"""ControlNet on the image stages (issue 12): planning of ``controlnet:`` units. Never imports torch.

The unit model is :class:`sdbatch.config.control.ControlUnit` (``model, image, preprocess, low, high, scale,
start, end, depth_model``); a job keeps one :class:`~sdbatch.config.control.ControlRef` per unit in
``job.params.controlnet`` (identity: omitted when the stage lists none, so older ids stay). The render side is
:mod:`sdbatch.runtime.controlnet`. The API other stages call::

    # in a stage config's plan_hook (after the stage's own checks):
    plan_control(self, planner, fixed, reads_input=True)   # checks every unit, resolves models and images:
        # fixed["controlnet"] = [ControlRef as dict, ...] or None; job.aux_models["controlnet:<i>"] (the
        # ControlNet) and ["controlnet-depth:<i>"] (preprocess: depth); problems as stages[n].controlnet[i].<field>
    driving_image(stage)   # generate only: the unit image (a stage, folder or glob) whose images make its jobs

A unit's ``image`` is, per job: omitted -> the stage's own input (``source: input``); a file, or a folder/glob
matched to the job's input by stem (else its first file) -> ``source: files`` (each file's sha256 is identity);
a video -> ``source: video`` (frame by frame: the video stages' business; an image stage refuses it); a stage
name -> that stage's outputs: the stage's own input (img2img/inpaint reading that stage), or, for generate,
one job per upstream output (see :func:`driving_image`: the stage then reads it as its input).
Checks at validate, each at its field: model spec (hub id, folder with config.json, .safetensors under the pickle
policy, built-in), a ControlNet made for another base family (``cross_attention_dim`` / ``addition_embed_type``
read from the configs or a safetensors header, without loading anything), a missing or unreadable image,
start >= end, a preprocessor whose package is not installed, its weights (``annotators``: a folder without the files
controlnet_aux loads, pickles without ``allow_pickle``). ``--rehearse`` swaps the ControlNet for
``sdbatch/tiny-controlnet`` (``-sdxl`` on an SDXL base), a depth model for ``sdbatch/tiny-depth`` and a hub id of
controlnet_aux weights for random ones (lineart, softedge/hed/scribble, pidi; other preprocessors need a folder).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any

from ..config.control import AUX_WEIGHTS
from ..config.images import check_image
from ..config.types import IMAGE_SUFFIXES, VIDEO_SUFFIXES
from ..core.job import ModelRef
from ..sources.specs import HUB_ID, PICKLE_ADVICE, check_depth_spec, local_model_path, rehearsal_model
from ..sources.tiny import BUILTIN_MODELS, BUILTIN_PREFIX
from ..sources.weights import WEIGHT_SUFFIXES, folder_problem, weights_problem

if TYPE_CHECKING:
    from ..config.stage import StageConfig
    from ..core.plan import StagePlanner

TINY_CONTROLNET = "sdbatch/tiny-controlnet"
TINY_CONTROLNET_SDXL = "sdbatch/tiny-controlnet-sdxl"
GLOB_CHARS = "*?["
#: a controlnet_aux preprocessor's weights under --rehearse: random, of the real architecture, made in-process
REHEARSAL_ANNOTATORS = "rehearsal:random-annotators@1"
REHEARSAL_AUX = ("lineart", "softedge", "hed", "scribble", "pidi")


def _is_pattern(image: str) -> bool:
    """A folder, glob or stage name (several images), not one file."""
    return any(c in image for c in GLOB_CHARS) or PurePath(image).suffix.lower() not in IMAGE_SUFFIXES | VIDEO_SUFFIXES


def driving_image(stage: Any) -> str | None:
    """For a stage without an input (generate): the first unit image naming a stage, a folder or a glob; its
    images are the stage's input (one job each, named after them, inheriting an upstream stage's seed)."""
    for unit in getattr(stage, "controlnet", None) or ():
        if unit.image and _is_pattern(unit.image):
            return unit.image
    return None


def check_control_spec(spec: str, base_dir: Path, allow_pickle: bool) -> str | None:
    """A problem with a ControlNet's ``model:`` (hub id, diffusers folder, weights file, built-in), or None."""
    if spec.startswith(BUILTIN_PREFIX):
        return None if spec in BUILTIN_MODELS else \
            f"unknown built-in model {spec!r} (built-ins: {', '.join(BUILTIN_MODELS)})"
    path = local_model_path(spec, base_dir)
    if path is None:
        if PurePath(spec).suffix.lower() in WEIGHT_SUFFIXES or spec.startswith((".", "/", "~")):
            return f"{spec!r}: no such ControlNet file or folder (relative to {base_dir})"
        return None if HUB_ID.match(spec) else f"{spec!r} is neither a local ControlNet file/folder nor a hub id"
    if path.is_file():
        return weights_problem(path, allow_pickle, repr(spec))
    if not (path / "config.json").is_file():
        return f"{spec!r}: folder is not a diffusers ControlNetModel (no config.json)"
    problem = folder_problem(path, allow_pickle)
    return f"{spec!r}: {problem}" if problem else None


# ----------------------------------------------------------------------------------------- families
def _safetensors_keys(path: Path) -> dict[str, Any]:
    """A .safetensors file's header (key -> dtype/shape), read without torch; {} if unreadable."""
    try:
        with open(path, "rb") as fh:
            (size,) = struct.unpack("<Q", fh.read(8))
            if size > 100_000_000:
                return {}
            return json.loads(fh.read(size))
    except (OSError, ValueError, struct.error):
        return {}


def _family_of_weights(path: Path) -> tuple[int | None, str | None] | None:
    header = _safetensors_keys(path) if path.suffix.lower() == ".safetensors" else {}
    dim = next((v["shape"][1] for k, v in header.items() if k.endswith("attn2.to_k.weight")
                and isinstance(v, dict) and len(v.get("shape", ())) == 2), None)
    if dim is None:
        return None
    xl = any("add_embedding" in k or "label_emb" in k for k in header)
    return dim, "text_time" if xl else None


def _family_of_config(path: Path) -> tuple[int | None, str | None] | None:
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    dim = config.get("cross_attention_dim")
    return (dim[0] if isinstance(dim, list) and dim else dim), config.get("addition_embed_type")


def model_family(ref: ModelRef, controlnet: bool) -> tuple[int | None, str | None] | None:
    """(cross_attention_dim, addition_embed_type) of a base model's UNet or of a ControlNet, from what is on
    disk (config.json, a safetensors header, a built-in's config); None when not known without downloading."""
    if ref.source == "builtin":
        from ..sources.tiny.configs import TINY_SD_UNET, TINY_SDXL_UNET

        config = TINY_SDXL_UNET if "sdxl" in ref.id else TINY_SD_UNET if "-sd" in ref.id or "controlnet" in ref.id \
            else None
        return None if config is None else (config["cross_attention_dim"], config.get("addition_embed_type"))
    if not ref.path:
        return None
    path = Path(ref.path)
    if path.is_file():
        return _family_of_weights(path)
    return _family_of_config(path / "config.json" if controlnet else path / "unet" / "config.json")


def family_name(family: tuple[int | None, str | None]) -> str:
    dim, added = family
    if added == "text_time" or dim == 2048:
        return f"SDXL (cross_attention_dim {dim})"
    return {768: "SD 1.x (cross_attention_dim 768)", 1024: "SD 2.x (cross_attention_dim 1024)"}.get(
        dim, f"cross_attention_dim {dim}")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------ planning
def _problem(planner: StagePlanner, path: tuple, message: str) -> None:
    """A problem at ``stages[n].controlnet[i].<field>`` (the way pydantic's own problems name list items)."""
    from ..config.yamlio import format_path
    from ..errors import Problem

    full = ("stages", planner.index) + tuple(path)
    planner.plan.problems.append(Problem(planner.plan.line(*full), format_path(full), message))


def plan_control(stage: StageConfig, planner: StagePlanner, fixed: dict[str, Any], *, reads_input: bool,
                 video_ok: bool = False) -> None:
    """Check ``stage.controlnet`` and put each unit's :class:`ControlRef` (as a dict) in ``fixed['controlnet']``
    (None without units); models go to ``planner.aux`` (see the module's docstring)."""
    units = list(getattr(stage, "controlnet", None) or ())
    fixed["controlnet"] = None
    if not units:
        return
    plan = planner.plan
    inputs, recipe = plan.inputs, plan.recipe
    allow_pickle = bool(recipe.allow_pickle)
    base_spec = stage.model or recipe.model
    xl = rehearsal_model(base_spec, inputs.base) == "sdbatch/tiny-sdxl"
    base_family = None if planner.rehearse else model_family(inputs.model(base_spec), controlnet=False)
    driving = None if reads_input else driving_image(stage)
    stage_names = {s.name for s in recipe.stages}
    refs: list[dict[str, Any]] = []
    for i, unit in enumerate(units):
        where = ("controlnet", i)
        own = unit.problems()
        for name, message in own:
            _problem(planner, where + (name,), message)
        problem = check_control_spec(unit.model, inputs.base, allow_pickle)
        if problem:
            _problem(planner, where + ("model",), problem)
            continue
        model = planner.aux_model(f"controlnet:{i}", unit.model, TINY_CONTROLNET_SDXL if xl else TINY_CONTROLNET)
        family = None if planner.rehearse else model_family(model, controlnet=True)
        if family and base_family and family != base_family:
            _problem(planner, where + ("model",), f"{unit.model!r} is a ControlNet for {family_name(family)}, but the "
                                               f"stage's model {base_spec!r} is {family_name(base_family)}")
        ref: dict[str, Any] = {"model": unit.model, "identity": model.identity(), "image": unit.image,
                               "preprocess": unit.preprocess, "scale": float(unit.scale), "start": float(unit.start),
                               "end": float(unit.end)}
        if unit.preprocess == "canny":
            ref.update(low=unit.low, high=unit.high)
        if unit.preprocess == "depth":
            problem = None if planner.rehearse else check_depth_spec(unit.depth_model, inputs.base, allow_pickle)
            if problem:
                _problem(planner, where + ("depth_model",), problem)
            else:
                ref["depth_model"] = planner.aux_model(f"controlnet-depth:{i}", unit.depth_model,
                                                       "sdbatch/tiny-depth").identity()
        if AUX_WEIGHTS.get(unit.preprocess) and not any(name == "preprocess" for name, _ in own):  # installed
            problem = _plan_annotators(planner, i, unit, ref, allow_pickle)
            if problem:
                _problem(planner, where + ("annotators",), problem)
        if not _plan_image(stage, planner, unit.image, ref, where, reads_input, video_ok, driving, stage_names):
            continue
        refs.append(ref)
    fixed["controlnet"] = refs if len(refs) == len(units) else None


def _plan_annotators(planner: StagePlanner, i: int, unit: Any, ref: dict[str, Any], allow_pickle: bool) -> str | None:
    """A controlnet_aux preprocessor's weights (``annotators``: a folder holding the files it loads, or a hub id) as
    ``ref["annotators"]`` (identity: the folder's sha256; a hub id's revision as written, ``main`` unless
    ``org/name@<commit>`` pins one); a problem, or None.

    A folder is a job's aux model ``controlnet-aux:<i>``; a hub repository is not (its files are fetched one by one
    at render time, never the whole repository, so a plan cannot know its commit beforehand). Under ``--rehearse``
    a hub id stands for random weights of the same architecture (:data:`REHEARSAL_ANNOTATORS`: no download); a
    folder is used as is."""
    names = AUX_WEIGHTS[unit.preprocess]
    spec, base = unit.annotators, planner.plan.inputs.base
    path = local_model_path(spec, base)
    if path is None:
        if spec.startswith((".", "/", "~")) or not HUB_ID.match(spec):
            return f"{spec!r}: no such folder (relative to {base}) and not a hub id like 'org/name'"
        if planner.rehearse:
            if unit.preprocess not in REHEARSAL_AUX:
                return (f"--rehearse has no stand-in for {unit.preprocess!r}'s weights ({', '.join(names)}): give a "
                        "local folder holding them")
            ref["annotators"] = REHEARSAL_ANNOTATORS
            return None
        if not allow_pickle:
            return f"{spec}'s {unit.preprocess} weights ({', '.join(names)}) are pickle files: {PICKLE_ADVICE}"
        repo, _, revision = spec.partition("@")  # the revision as written: ids stay put when the files arrive
        ref["annotators"] = ModelRef(repo, revision or "main", "hub").identity()
        return None
    if not path.is_dir():
        return f"{spec!r}: not a folder (it holds controlnet_aux's weights files: {', '.join(names)})"
    missing = [name for name in names if not (path / name).is_file()]
    if missing:
        return f"{spec!r}: no {', '.join(missing)} in it (controlnet_aux's {unit.preprocess} loads {', '.join(names)})"
    problem = next((p for p in (weights_problem(path / name, allow_pickle) for name in names) if p), None)
    if problem:
        return f"{spec!r}: {problem}"
    ref["annotators"] = planner.aux_model(f"controlnet-aux:{i}", spec).identity()
    return None


def _plan_image(stage: Any, planner: StagePlanner, image: str | None, ref: dict[str, Any], where: tuple,
                reads_input: bool, video_ok: bool, driving: str | None, stage_names: set[str]) -> bool:
    """Where a unit's control image comes from, into ``ref`` (source, files); False after a problem."""
    inputs = planner.plan.inputs
    field = where + ("image",)
    if image is None or image == driving or (reads_input and image == getattr(stage, stage.INPUT_FIELD, None)):
        if image is None and not reads_input:
            _problem(planner, field, f"a {stage.type} stage has no input image to control with: give a control image "
                                   "(a file, a folder/glob or a stage name)")
            return False
        ref["source"] = "input"
        return True
    if image in stage_names:
        _problem(planner, field, f"stage {image!r} is not this stage's input: a {stage.type} stage's ControlNet reads "
                               "its own input (omit image), a file, a folder/glob, or a video")
        return False
    if PurePath(image).suffix.lower() in VIDEO_SUFFIXES:
        source, problem = inputs.video_file(stage, image)
        if problem or source is None:
            _problem(planner, field, problem or f"{image}: cannot read")
            return False
        if not video_ok:
            _problem(planner, field, f"{image}: a video control steers a video stage (restyle, animate) frame by frame; "
                                   f"a {stage.type} stage takes an image, a folder/glob or a stage name")
            return False
        ref.update(source="video", files={source.ref.path: source.ref.sha256})  # type: ignore[union-attr]
        return True
    files = inputs.files(image)
    if not files:
        _problem(planner, field, f"{image}: no such image file, or no image matches (relative to {inputs.base})")
        return False
    found: dict[str, str] = {}
    for path in files:
        size, problem = check_image(path)
        if problem:
            _problem(planner, field, f"{inputs.display_path(path)}: {problem}")
            return False
        found[inputs.display_path(path)] = inputs.hashes.file(path)
    ref.update(source="files", files=found)
    return True


def control_file(ref: Any, input_path: str | None) -> str:
    """The file of a ``source: files`` unit a job reads: the one whose stem is its input's, else the first."""
    files = list(ref.files or {})
    if input_path is not None and len(files) > 1:
        stem = PurePath(input_path).stem
        return next((f for f in files if PurePath(f).stem == stem), files[0])
    return files[0]
