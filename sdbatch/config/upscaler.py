"""Upscalers in a recipe (the ``upscale`` stage's ``upscaler:`` and ``hires.upscaler``): names, checks, identity.

A value is one of::

    lanczos                        # PIL's Lanczos resize (native factor 2: the default scale)
    latent                         # the latents themselves, A1111's "Latent" (hires only; factor 2)
    sd-x4                          # diffusers' StableDiffusionUpscalePipeline (stabilityai/stable-diffusion-x4-upscaler;
                                   # the built-in sdbatch/tiny-sd-x4 under --rehearse; factor 4)
    models/4x-UltraSharp.safetensors   # a super-resolution model file spandrel loads (ESRGAN, Real-ESRGAN
                                   # Compact, SwinIR, ...; .pth/.pt pickles only with allow_pickle)

:func:`plan_upscaler` checks a value for the planner and returns the identity dict a job keeps in its params
(and so in its id), e.g. ``{"name": "lanczos", "scale": 2}``, ``{"name": "sd-x4", "model": "hub:...@<commit>",
"scale": 4}`` or ``{"name": "model", "file": "4x-UltraSharp.safetensors", "sha256": "...", "architecture":
"ESRGAN", "scale": 4}`` (the file by content and name, never by its path); ``scale`` is always the native
factor. :func:`sdbatch.runtime.upscalers.upscale_images` renders with that dict.

A model file is identified without importing torch here: a child process runs ``python -m
sdbatch.runtime.upscalers identify <path>`` (spandrel's detection), and its answer is cached by the file's
sha256 (and spandrel's version) in ``<sdbatch cache>/upscalers.json``, so a second ``validate`` costs nothing.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Annotated, Any, Union

from pydantic import AfterValidator, Field, TypeAdapter, WithJsonSchema

from ..io.artifacts import upscaler_name as display_name  # noqa: F401 - A1111's name of an upscaler: its home

if TYPE_CHECKING:
    from ..core.plan import StagePlanner

#: model-file suffixes an upscaler may have (pickles need allow_pickle)
MODEL_SUFFIXES = (".safetensors", ".pth", ".pt")
#: the named upscalers and their native factors (a model file's comes from the file)
NAMED_SCALES = {"lanczos": 2, "latent": 2, "sd-x4": 4}
SD_X4_MODEL = "stabilityai/stable-diffusion-x4-upscaler"
TINY_SD_X4 = "sdbatch/tiny-sd-x4"
SPANDREL_INSTALL = 'pip install -e ".[upscalers]"'
IDENTIFY_TIMEOUT_S = 300
IDENTIFY_VERSION = 1  # of the answer's shape and wording: part of the cache key

_SUFFIX = "|".join("".join(f"[{c.lower()}{c.upper()}]" for c in s[1:]) for s in MODEL_SUFFIXES)


def _check_name(value: str) -> str:
    if value in NAMED_SCALES or PurePath(value).suffix.lower() in MODEL_SUFFIXES:
        return value
    raise ValueError(f"{value!r}: expected lanczos, sd-x4, latent (hires only) or a model file "
                     f"({', '.join(MODEL_SUFFIXES)})")


#: the recipe type: "lanczos" | "latent" | "sd-x4" | a path ending .safetensors/.pth/.pt (any case); "latent"
#: is refused by the upscale stage (plan_upscaler's allow_latent)
UpscalerName = Annotated[str, Field(min_length=1, max_length=4096,
                                    json_schema_extra={"pattern": rf"^(lanczos|latent|sd-x4|.+\.({_SUFFIX}))$"}),
                         AfterValidator(_check_name)]
#: a config field naming an upscaler: what a recipe writes (UpscalerName), or, in a job's params, the identity dict
#: plan_upscaler put there (a planner refuses a dict written in a recipe: :func:`plan_upscaler` takes a str)
UpscalerParam = Annotated[Union[UpscalerName, dict[str, Any]], WithJsonSchema(TypeAdapter(UpscalerName).json_schema())]


def spandrel_installed() -> bool:
    """Whether the optional ``spandrel`` package can be imported (found without importing it)."""
    return importlib.util.find_spec("spandrel") is not None


def is_model_file(value: str) -> bool:
    return value not in NAMED_SCALES and PurePath(value).suffix.lower() in MODEL_SUFFIXES


# ------------------------------------------------------------------------------ identifying model files
def _cache_file() -> Path:
    from ..io.hashing import cache_dir

    return cache_dir() / "upscalers.json"


def _cache_key(digest: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        spandrel = version("spandrel")
    except PackageNotFoundError:
        spandrel = "?"
    return f"{digest}:spandrel-{spandrel}:v{IDENTIFY_VERSION}"


def _read_cache() -> dict[str, Any]:
    try:
        data = json.loads(_cache_file().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def identify_file(path: Path, digest: str, allow_pickle: bool) -> tuple[dict[str, Any] | None, str | None]:
    """(what spandrel makes of the model file, None) or (None, why not), cached by ``digest``.

    The answer comes from a child process (torch and spandrel never load into the caller); the pickle policy is
    the caller's to apply first, and the child applies it again (``--allow-pickle``)."""
    key = _cache_key(digest)
    hit = _read_cache().get(key)
    if isinstance(hit, dict) and ("error" in hit or "architecture" in hit):
        return (None, hit["error"]) if "error" in hit else (hit, None)
    command = [sys.executable, "-m", "sdbatch.runtime.upscalers", "identify", str(path)]
    if allow_pickle:
        command.append("--allow-pickle")
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=IDENTIFY_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"could not be identified ({type(exc).__name__}: {exc})"
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    try:
        answer = json.loads(lines[-1]) if lines else None
    except ValueError:
        answer = None
    if not isinstance(answer, dict) or not ("error" in answer or "architecture" in answer):
        tail = (done.stderr.strip().splitlines() or ["no answer"])[-1]
        return None, f"could not be identified (the identify process failed: {tail[:300]})"
    from ..io.artifacts import atomic_write_bytes

    cache = _read_cache()
    cache[key] = answer
    try:
        atomic_write_bytes(_cache_file(), (json.dumps(cache, indent=1, sort_keys=True) + "\n").encode())
    except OSError:
        pass  # a read-only cache folder: identified again next time
    return (None, str(answer["error"])) if "error" in answer else (answer, None)


# ------------------------------------------------------------------------------------------- planning
def plan_upscaler(planner: StagePlanner, value: str, where: tuple, *, allow_latent: bool) -> dict[str, Any] | None:
    """Check the upscaler ``value`` (recipe field ``where``, relative to the stage) and return its identity dict
    for the job's params (see the module docstring), its native factor under ``"scale"``; None after a problem
    (reported through ``planner.problem``). Registers the model it needs as ``planner.aux_model("upscaler",
    ...)``: the sd-x4 pipeline (the built-in tiny one under --rehearse) or the model file."""
    if not isinstance(value, str):
        planner.problem(where, "must be an upscaler name (lanczos, sd-x4) or a model file")
        return None
    if value == "latent":
        if not allow_latent:
            planner.problem(where, "'latent' upscales the latents of a diffusion pass: it is a hires upscaler "
                                   "only; an upscale stage takes lanczos, sd-x4 or a model file")
            return None
        return {"name": "latent", "scale": NAMED_SCALES["latent"]}
    if value == "lanczos":
        return {"name": "lanczos", "scale": NAMED_SCALES["lanczos"]}
    if value == "sd-x4":
        ref = planner.aux_model("upscaler", SD_X4_MODEL, rehearsal=TINY_SD_X4)
        return {"name": "sd-x4", "model": ref.identity(), "scale": NAMED_SCALES["sd-x4"]}
    if not is_model_file(value):
        planner.problem(where, f"{value!r}: expected lanczos, sd-x4{', latent' if allow_latent else ''} or a model "
                               f"file ({', '.join(MODEL_SUFFIXES)})")
        return None
    from ..sources.weights import weights_problem

    inputs = planner.plan.inputs
    path = inputs.absolute(value)
    if not path.is_file():
        planner.problem(where, f"{value!r}: no such upscaler model file (relative to {inputs.base})")
        return None
    allow_pickle = bool(planner.plan.recipe.allow_pickle)
    problem = weights_problem(path, allow_pickle, repr(value))
    if problem:
        planner.problem(where, problem)
        return None
    if not spandrel_installed():
        planner.problem(where, f"{value!r}: a model-file upscaler needs spandrel, which is not installed: "
                               f"{SPANDREL_INSTALL}")
        return None
    digest = inputs.hashes.file(path)
    info, error = identify_file(path, digest, allow_pickle)
    if error or info is None:
        planner.problem(where, f"{value!r}: {error}")
        return None
    planner.aux_model("upscaler", value)
    return {"name": "model", "file": path.name, "sha256": digest, "architecture": info["architecture"],
            "scale": int(info["scale"])}
