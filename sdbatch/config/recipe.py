"""The recipe: Pydantic models (the single source of truth for configuration) and loading.

A recipe is a YAML file::

    name: wolves
    model: stabilityai/sd-turbo
    defaults: {steps: 25, guidance: 7.0}
    stages:
      - {name: sketch, type: generate, prompt: [a wolf, a fox], seeds: [1, 2]}
      - {name: painted, type: img2img, input: sketch, prompt: oil painting, strength: 0.8}

``load_recipe(path)`` returns a validated :class:`Recipe` or raises :class:`RecipeError` carrying every
problem as ``file:line: field.path: message``. This module never imports torch or diffusers.
"""

from __future__ import annotations

import glob as globlib
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    TypeAdapter,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from ..errors import Problem, RecipeError
from ..sources.specs import check_model_spec, check_pipeline_config, check_vae_spec, check_weights_file
from .errors import pydantic_problems
from .yamlio import YamlError, format_path, load_yaml

NAME_PATTERN = r"^[A-Za-z0-9_-]+$"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}
VIDEO_SUFFIXES = {".mp4", ".mov", ".webm", ".gif", ".mkv", ".avi", ".m4v"}

SchedulerName = Literal[
    "default", "ddim", "euler", "euler-a", "dpmpp-2m", "dpmpp-2m-karras", "dpmpp-sde-karras",
    "unipc", "lms", "pndm", "heun", "lcm",
]
DeviceName = Annotated[str, Field(pattern=r"^(auto|cpu|cuda|cuda:\d+|mps)$")]
DtypeName = Literal["auto", "float16", "bfloat16", "float32"]


# --------------------------------------------------------------------------------------------- types
def _as_list(value: Any) -> Any:
    return value if isinstance(value, list) else [value]


@lru_cache(maxsize=None)
def _item_schema(item: Any) -> dict:
    return TypeAdapter(item).json_schema()


def Sweep(item: Any) -> Any:  # noqa: N802 - reads like a type
    """A parameter that may be one value or a list of values to sweep (cartesian product).

    Validated as a non-empty list; the JSON schema accepts either form.
    """
    schema = _item_schema(item)
    return Annotated[
        list[item],
        BeforeValidator(_as_list),
        Field(min_length=1),
        WithJsonSchema({"anyOf": [schema, {"type": "array", "items": schema, "minItems": 1}]}),
    ]


def _multiple_of_8(value: int) -> int:
    if value % 8:
        raise ValueError(f"must be a multiple of 8 (got {value})")
    return value


Size = Annotated[StrictInt, Field(gt=0, le=16384)]
Strength = Annotated[float, Field(ge=0.0, le=1.0)]
Steps = Annotated[StrictInt, Field(gt=0, le=10000)]
Guidance = Annotated[float, Field(ge=0.0, le=100.0)]
Prompt = str


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class SeedRange(_Model):
    """``seeds: {start: 0, count: 100}`` is seeds 0..99."""

    start: StrictInt = 0
    count: Annotated[StrictInt, Field(gt=0, le=10_000_000)]


def _lora_shorthand(value: Any) -> Any:
    return {"path": value} if isinstance(value, str) else value


class Lora(_Model):
    """``loras: [{path: style.safetensors, weight: 0.8}]`` (or just ``[style.safetensors]``).

    ``path`` is a LoRA weights file relative to the recipe file (.safetensors; pickle formats need
    ``allow_pickle: true``). Its sha256 and ``weight`` are part of a job's identity.
    """

    path: Annotated[str, Field(min_length=1)]
    weight: Annotated[float, Field(ge=-20.0, le=20.0)] = 1.0


LoraItem = Annotated[
    Lora,
    BeforeValidator(_lora_shorthand),
    WithJsonSchema({"anyOf": [{"type": "string", "description": "a LoRA file (weight 1.0)"}, _item_schema(Lora)]}),
]


# ------------------------------------------------------------------------------- stage parameters
class StageParams(_Model):
    """Parameters any stage may take; also the shape of ``defaults`` (all optional there)."""

    model: str | None = None
    device: DeviceName | None = None
    dtype: DtypeName | None = None
    prompt: Sweep(Prompt) | None = None
    negative_prompt: Sweep(Prompt) | None = None
    steps: Sweep(Steps) | None = None
    guidance: Sweep(Guidance) | None = None
    width: Size | None = None
    height: Size | None = None
    scheduler: Sweep(SchedulerName) | None = None
    seed: StrictInt | None = None
    seeds: list[StrictInt] | SeedRange | None = None
    batch_size: Literal["auto"] | Annotated[StrictInt, Field(gt=0, le=1024)] | None = None
    # GPU options (recorded in the manifest, not part of a job's identity)
    attention: Literal["sdpa", "default"] | None = None
    channels_last: StrictBool | None = None
    compile: StrictBool | None = None
    vae_tiling: StrictBool | None = None
    offload: Literal["none", "model", "sequential"] | None = None
    tf32: StrictBool | None = None
    # model sources (part of a job's identity)
    loras: list[LoraItem] | None = None
    vae: str | None = None  # AutoencoderKL: diffusers folder, hub id, or .safetensors file
    pipeline_config: str | None = None  # configs for a single-file model: folder / hub id / built-in
    # still-image stages: save the decoded image every N denoising steps under <stage>/previews/
    # (extra files; not part of a job's identity)
    previews: Annotated[StrictInt, Field(ge=1, le=10000)] | None = None

    @field_validator("width", "height")
    @classmethod
    def _size(cls, value: int | None) -> int | None:
        return None if value is None else _multiple_of_8(value)

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, value: Any) -> Any:
        if isinstance(value, list) and not value:
            raise ValueError("must not be empty")
        return value

    @model_validator(mode="after")
    def _one_seed_form(self) -> "StageParams":
        if self.seed is not None and self.seeds is not None:
            raise ValueError("give either 'seed' or 'seeds', not both")
        return self


class Defaults(StageParams):
    """``defaults:``: any stage parameter; a stage's own value wins."""

    strength: Sweep(Strength) | None = None


class StageBase(StageParams):
    name: Annotated[str, Field(pattern=NAME_PATTERN, max_length=64)]

    #: parameters a list sweeps (cartesian product) for this stage type
    SWEEPS: ClassVar[tuple[str, ...]] = ("prompt", "negative_prompt", "steps", "guidance", "scheduler")
    #: True when the stage's output is a video (frames + mp4) rather than one image per job
    VIDEO: ClassVar[bool] = False
    #: what the stage reads from upstream stages: "image", "video" or nothing
    READS: ClassVar[str | None] = None

    @property
    def input_names(self) -> list[str]:
        """Stage names or file patterns this stage reads."""
        value = getattr(self, "input", None)
        return [value] if isinstance(value, str) else []

    def extra_params(self) -> dict[str, Any]:
        """Type-specific parameters that belong to every job's identity."""
        return {}


class GenerateStage(StageBase):
    """txt2img."""

    type: Literal["generate"]
    prompt: Sweep(Prompt)


class Img2ImgStage(StageBase):
    """img2img: ``input`` is a stage name, or a file / folder / glob relative to the recipe file."""

    SWEEPS = StageBase.SWEEPS + ("strength",)
    READS = "image"
    type: Literal["img2img"]
    input: str
    prompt: Sweep(Prompt) = [""]
    strength: Sweep(Strength) = [0.8]


class InpaintStage(StageBase):
    """inpaint: ``mask`` is one file, or a folder/glob matched to inputs by file stem (white = repaint)."""

    SWEEPS = StageBase.SWEEPS + ("strength",)
    READS = "image"
    type: Literal["inpaint"]
    input: str
    mask: str
    prompt: Sweep(Prompt) = [""]
    strength: Sweep(Strength) = [1.0]


ColorMode = Literal["none", "lab", "hsv", "rgb"]
NonNegInt = Annotated[StrictInt, Field(ge=0)]
PosInt = Annotated[StrictInt, Field(gt=0)]
Fps = Annotated[float, Field(gt=0, le=240)]


def _check_schedule(value: Any) -> str:
    from ..animation.schedule import ScheduleError, as_schedule_text, validate_schedule

    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError("must be a schedule like \"0:(1.0), 30:(1.05)\" or a number")
    try:
        validate_schedule(value)
        return as_schedule_text(value)
    except ScheduleError as exc:
        raise ValueError(str(exc)) from None


Schedule = Annotated[
    str,
    BeforeValidator(_check_schedule),
    WithJsonSchema({"anyOf": [{"type": "string"}, {"type": "number"}],
                    "description": "Deforum schedule: \"0:(1.0), 30:(1.05)\"; a value may be an expression in t"}),
]


class Coherence(_Model):
    """Restyle coherence: blend the previous restyled frame (flow-warped) and match colours."""

    flow: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0
    color: ColorMode = "none"


class RestyleStage(StageBase):
    """A video in, a restyled video out: per-frame img2img with coherence and the source's sound."""

    SWEEPS = StageBase.SWEEPS + ("strength",)
    VIDEO = True
    READS = "video"
    type: Literal["restyle"]
    input: str
    prompt: Sweep(Prompt) = [""]
    strength: Sweep(Strength) = [0.5]
    seed_behavior: Literal["fixed", "iter"] = "fixed"
    every_nth_frame: PosInt = 1
    start_frame: NonNegInt = 0
    end_frame: NonNegInt | None = None
    coherence: Coherence = Coherence()
    audio: Literal["keep", "drop"] = "keep"

    @model_validator(mode="after")
    def _range(self) -> "RestyleStage":
        if self.end_frame is not None and self.end_frame <= self.start_frame:
            raise ValueError(f"end_frame ({self.end_frame}) must be after start_frame ({self.start_frame})")
        return self

    def extra_params(self) -> dict[str, Any]:
        return {"every_nth_frame": self.every_nth_frame, "start_frame": self.start_frame,
                "end_frame": self.end_frame, "coherence": self.coherence.model_dump(), "audio": self.audio,
                "seed_behavior": self.seed_behavior}


class Motion(_Model):
    """Camera motion; every value is a schedule (per frame)."""

    angle: Schedule = "0:(0)"
    zoom: Schedule = "0:(1.0)"
    translation_x: Schedule = "0:(0)"
    translation_y: Schedule = "0:(0)"
    translation_z: Schedule = "0:(0)"
    rotation_3d_x: Schedule = "0:(0)"
    rotation_3d_y: Schedule = "0:(0)"
    rotation_3d_z: Schedule = "0:(0)"
    fov: Schedule = "0:(40)"


class AnimateStage(StageBase):
    """2D/3D camera-motion animation with Deforum schedules (strength in diffusers' sense)."""

    SWEEPS = ("prompt", "negative_prompt", "steps", "scheduler")
    VIDEO = True
    READS = "image"
    type: Literal["animate"]
    mode: Literal["2d", "3d"] = "2d"
    frames: Annotated[StrictInt, Field(gt=0, le=100_000)]
    fps: Fps = 15.0
    prompt: Sweep(Prompt) | None = None
    prompts: dict[NonNegInt, str] | None = None
    init: str | None = None
    seed_behavior: Literal["iter", "fixed", "random", "ladder", "alternate"] = "iter"
    strength: Schedule = "0:(0.35)"
    noise: Schedule = "0:(0.02)"
    contrast: Schedule = "0:(1.0)"
    guidance: Schedule = "0:(7.5)"  # type: ignore[assignment]
    color_coherence: ColorMode = "lab"
    cadence: Annotated[StrictInt, Field(gt=0, le=1000)] = 1
    border: Literal["replicate", "wrap"] = "replicate"
    depth_model: str = "depth-anything/Depth-Anything-V2-Small-hf"
    motion: Motion = Motion()

    @model_validator(mode="after")
    def _prompt_or_prompts(self) -> "AnimateStage":
        if (self.prompt is None) == (self.prompts is None):
            raise ValueError("give either 'prompt' or 'prompts' ({frame: prompt, ...})")
        if self.prompts is not None and not self.prompts:
            raise ValueError("'prompts' must not be empty")
        return self

    @property
    def input_names(self) -> list[str]:
        return [self.init] if self.init else []

    @field_validator("seed")
    @classmethod
    def _seed_not_negative(cls, value: int | None) -> int | None:
        if value is not None and value < 0:
            raise ValueError("must be >= 0 for an animation (seed behaviours step from it)")
        return value

    def extra_params(self) -> dict[str, Any]:
        return {"mode": self.mode, "frames": self.frames, "fps": self.fps,
                "prompts": {str(k): v for k, v in sorted((self.prompts or {}).items())} or None,
                "seed_behavior": self.seed_behavior, "strength": self.strength, "noise": self.noise,
                "contrast": self.contrast, "guidance": self.guidance, "color_coherence": self.color_coherence,
                "cadence": self.cadence, "border": self.border, "motion": self.motion.model_dump()}


class InterpolateStage(StageBase):
    """A "dream" video: frames walk the slerp path between seeds' initial noises (and prompts' embeddings)."""

    SWEEPS = ("prompt", "negative_prompt", "steps", "guidance", "scheduler")
    VIDEO = True
    type: Literal["interpolate"]
    prompt: Sweep(Prompt) | None = None
    prompts: list[str] | None = None
    seeds: Annotated[list[StrictInt], Field(min_length=2)]  # type: ignore[assignment]
    frames: Annotated[StrictInt, Field(ge=2, le=100_000)]
    fps: Fps = 12.0

    @model_validator(mode="after")
    def _prompts_match_seeds(self) -> "InterpolateStage":
        if (self.prompt is None) == (self.prompts is None):
            raise ValueError("give either 'prompt' or 'prompts' (one per seed)")
        if self.prompts is not None and len(self.prompts) != len(self.seeds):
            raise ValueError(f"'prompts' has {len(self.prompts)} entries but 'seeds' has {len(self.seeds)}")
        return self

    def extra_params(self) -> dict[str, Any]:
        return {"seeds": list(self.seeds), "prompts": self.prompts, "frames": self.frames, "fps": self.fps}


Stage = Annotated[
    Union[GenerateStage, Img2ImgStage, InpaintStage, RestyleStage, AnimateStage, InterpolateStage],
    Field(discriminator="type"),
]
STAGE_MODELS: dict[str, type[StageBase]] = {
    "generate": GenerateStage,
    "img2img": Img2ImgStage,
    "inpaint": InpaintStage,
    "restyle": RestyleStage,
    "animate": AnimateStage,
    "interpolate": InterpolateStage,
}
SWEEP_KEYS = ("prompt", "negative_prompt", "steps", "guidance", "strength", "scheduler")


class Recipe(_Model):
    """A whole recipe. ``stages`` have had ``defaults`` merged into them (a stage's own value wins)."""

    name: Annotated[str, Field(pattern=NAME_PATTERN, max_length=100)]
    model: str | None = None
    device: DeviceName = "auto"
    dtype: DtypeName = "auto"
    executor: Literal["local", "ray"] = "local"
    pipeline_config: str | None = None  # for a single-file top-level model (a stage's own value wins)
    allow_pickle: StrictBool = False  # load pickle checkpoints (.ckpt/.pt/.bin): they can run code
    defaults: Defaults = Defaults()
    stages: Annotated[list[Stage], Field(min_length=1)]

    def stage(self, name: str) -> StageBase:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise KeyError(name)


# ------------------------------------------------------------------------------------------ loading
@dataclass
class LoadedRecipe:
    """A validated recipe with where it came from."""

    recipe: Recipe
    path: Path
    text: str
    lines: dict[tuple, int]

    @property
    def base_dir(self) -> Path:
        return self.path.parent


def _merge_defaults(raw: dict) -> dict[tuple, tuple]:
    """Merge ``defaults`` into each stage dict in place; return {stage path: defaults path} of merged keys."""
    origins: dict[tuple, tuple] = {}
    defaults = raw.get("defaults")
    stages = raw.get("stages")
    if not isinstance(defaults, dict) or not isinstance(stages, list):
        return origins
    for i, stage in enumerate(stages):
        if not isinstance(stage, dict):
            continue
        model = STAGE_MODELS.get(stage.get("type"))  # type: ignore[arg-type]
        if model is None:
            continue
        for key, value in defaults.items():
            if key in model.model_fields and key not in stage and key not in ("name", "type"):
                stage[key] = value
                origins[("stages", i, key)] = ("defaults", key)
    return origins


def apply_overrides(raw: Any, overrides: list[str]) -> list[Problem]:
    """Apply ``--set KEY=VALUE`` overrides (``defaults.steps=10``, ``stages.sketch.prompt=...``).

    ``stages.<name>`` addresses a stage by name. VALUE is parsed as a YAML value.
    """
    problems = []
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            problems.append(Problem(0, "--set", f"expected KEY=VALUE, got {item!r}"))
            continue
        try:
            value, _ = load_yaml(text) if text.strip() else ("", {})
        except YamlError as exc:
            problems.append(Problem(0, f"--set {key}", exc.message))
            continue
        parts = key.split(".")
        target = raw
        for depth, part in enumerate(parts[:-1]):
            if isinstance(target, list):  # stages.<name>
                match = [s for s in target if isinstance(s, dict) and s.get("name") == part]
                if not match:
                    problems.append(Problem(0, f"--set {key}", f"no stage named {part!r}"))
                    target = None
                    break
                target = match[0]
            elif isinstance(target, dict):
                target = target.setdefault(part, {} if parts[depth + 1] != "stages" else [])
            else:
                target = None
                break
        if isinstance(target, dict):
            target[parts[-1]] = value
        elif target is not None:
            problems.append(Problem(0, f"--set {key}", "cannot set this key"))
    return problems


def parse_recipe(text: str, path: Path, overrides: list[str] | None = None) -> LoadedRecipe:
    """Parse and validate recipe text (no file-system checks). Raises :class:`RecipeError`."""
    file = str(path)
    try:
        raw, lines = load_yaml(text)
    except YamlError as exc:
        raise RecipeError(file, [Problem(exc.line, "", exc.message)]) from None
    if not isinstance(raw, dict):
        raise RecipeError(file, [Problem(1, "", "the top level must be a mapping of recipe keys (name, model, stages, ...)")])
    problems = apply_overrides(raw, overrides or [])
    if problems:
        raise RecipeError(file, problems)
    raw.setdefault("name", path.stem)
    origins = _merge_defaults(raw)
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as exc:
        raise RecipeError(file, pydantic_problems(exc, lines, origins, tuple(STAGE_MODELS))) from None
    loaded = LoadedRecipe(recipe, path, text, lines)
    problems = _check_graph(loaded)
    if problems:
        raise RecipeError(file, problems)
    return loaded


def load_recipe(path: str | os.PathLike, overrides: list[str] | None = None, check_files: bool = True) -> LoadedRecipe:
    """Load, validate and (by default) check that referenced files exist."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise RecipeError(str(path), [Problem(0, "", f"cannot read recipe: {exc.strerror or exc}")]) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise RecipeError(str(path), [Problem(0, "", "the file is not UTF-8 text")]) from None
    loaded = parse_recipe(text, path, overrides)
    if check_files:
        problems = _check_files(loaded)
        if problems:
            raise RecipeError(str(path), problems)
    return loaded


# ------------------------------------------------------------------------------- semantic checks
def _line(loaded: LoadedRecipe, *path: Any) -> int:
    for n in range(len(path), -1, -1):
        if path[:n] in loaded.lines:
            return loaded.lines[path[:n]]
    return 0


def _check_graph(loaded: LoadedRecipe) -> list[Problem]:
    recipe = loaded.recipe
    problems: list[Problem] = []
    names: dict[str, int] = {}
    for i, stage in enumerate(recipe.stages):
        if stage.name in names:
            problems.append(Problem(_line(loaded, "stages", i, "name"), f"stages[{i}].name",
                                    f"duplicate stage name {stage.name!r} (also stages[{names[stage.name]}])"))
        else:
            names[stage.name] = i
        if (stage.model or recipe.model) is None:
            problems.append(Problem(_line(loaded, "stages", i), f"stages[{i}].model",
                                    "no model: set 'model' at the top level or on the stage"))
    # cycles among stage inputs
    graph = {s.name: [n for n in s.input_names if n in names] for s in recipe.stages}
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in graph.get(node, []):
            if state.get(nxt) == 1:
                cycle = trail[trail.index(nxt):] + [nxt] if nxt in trail else [node, nxt]
                i = names[node]
                problems.append(Problem(_line(loaded, "stages", i, "input"), f"stages[{i}].input",
                                        "input cycle: " + " -> ".join(cycle)))
            elif state.get(nxt) is None:
                visit(nxt, trail + [nxt])
        state[node] = 2

    for name in graph:
        if name not in state:
            visit(name, [name])
    return problems


def resolve_input_files(pattern: str, base_dir: Path, suffixes: set[str]) -> list[Path]:
    """Files named by a file, folder or glob relative to ``base_dir``, sorted by name."""
    target = Path(pattern).expanduser()
    if not target.is_absolute():
        target = base_dir / target
    if target.is_dir():
        return sorted(p for p in target.iterdir() if p.is_file() and p.suffix.lower() in suffixes)
    if target.is_file():
        return [target]
    if globlib.has_magic(pattern):
        return sorted(Path(p) for p in globlib.glob(str(target), recursive=True)
                      if Path(p).is_file() and Path(p).suffix.lower() in suffixes)
    return []


def looks_like_path(text: str) -> bool:
    return "/" in text or "\\" in text or globlib.has_magic(text) or Path(text).suffix != ""


def _check_files(loaded: LoadedRecipe) -> list[Problem]:
    recipe, base = loaded.recipe, loaded.base_dir
    problems: list[Problem] = []
    stage_names = {s.name for s in recipe.stages}
    for i, stage in enumerate(recipe.stages):
        field_name = "init" if stage.type == "animate" else "input"
        value = getattr(stage, field_name, None)
        inputs: list[Path] = []
        if isinstance(value, str) and value not in stage_names and stage.READS != "video":
            inputs = resolve_input_files(value, base, IMAGE_SUFFIXES)
            if not inputs:
                if looks_like_path(value):
                    what = "matches no image file" if globlib.has_magic(value) else "no such image file or folder"
                    problems.append(Problem(_line(loaded, "stages", i, field_name), f"stages[{i}].{field_name}",
                                            f"{value!r}: {what} (relative to {base})"))
                else:
                    problems.append(Problem(_line(loaded, "stages", i, field_name), f"stages[{i}].{field_name}",
                                            f"{value!r} names no stage (stages: {', '.join(sorted(stage_names))})"
                                            " and no file"))
        mask = getattr(stage, "mask", None)
        if isinstance(mask, str):
            masks = resolve_input_files(mask, base, IMAGE_SUFFIXES)
            line = _line(loaded, "stages", i, "mask")
            if not masks:
                problems.append(Problem(line, f"stages[{i}].mask", f"{mask!r}: no such mask file, folder or glob match"))
            elif len(masks) > 1 or Path(base / mask).is_dir():
                if value in stage_names:
                    problems.append(Problem(line, f"stages[{i}].mask",
                                            "several masks can only be matched to file inputs (by file stem); "
                                            "use one mask file for a stage input"))
                else:
                    stems = {m.stem for m in masks}
                    missing = [p.name for p in inputs if p.stem not in stems]
                    if missing:
                        problems.append(Problem(line, f"stages[{i}].mask",
                                                f"no mask with the stem of input {missing[0]!r}"
                                                + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")))
        model = stage.model or recipe.model
        if model:
            problem = check_model_spec(model, base, allow_pickle=recipe.allow_pickle)
            if problem:
                where = ("stages", i, "model") if stage.model and ("stages", i, "model") in loaded.lines else ("model",)
                problems.append(Problem(_line(loaded, *where), format_path(where), problem))
        problems.extend(_check_sources(loaded, i, stage))
    return problems


def _where(loaded: LoadedRecipe, i: int, *path: Any) -> tuple[int, str]:
    """(line, shown path) of a stage value that may have come from ``defaults``."""
    own = ("stages", i) + path
    if own[:3] in loaded.lines:
        return _line(loaded, *own), format_path(own)
    if ("defaults",) + path[:1] in loaded.lines:
        return _line(loaded, "defaults", *path), f"{format_path(own)} (from {format_path(('defaults',) + path)})"
    return _line(loaded, "stages", i), format_path(own)


def _check_sources(loaded: LoadedRecipe, i: int, stage: StageBase) -> list[Problem]:
    """LoRA files, VAE and pipeline config of stage ``i``."""
    recipe, base = loaded.recipe, loaded.base_dir
    problems = []
    for j, lora in enumerate(stage.loras or []):
        problem = check_weights_file(lora.path, base, recipe.allow_pickle, "LoRA")
        if problem:
            line, shown = _where(loaded, i, "loras", j, "path")
            problems.append(Problem(line, shown, problem))
    if stage.vae:
        problem = check_vae_spec(stage.vae, base, recipe.allow_pickle)
        if problem:
            line, shown = _where(loaded, i, "vae")
            problems.append(Problem(line, shown, problem))
    if stage.pipeline_config:
        problem = check_pipeline_config(stage.pipeline_config, base)
        if problem:
            line, shown = _where(loaded, i, "pipeline_config")
            problems.append(Problem(line, shown, problem))
    if recipe.pipeline_config and i == 0:  # the top-level value, checked once
        problem = check_pipeline_config(recipe.pipeline_config, base)
        if problem:
            problems.append(Problem(_line(loaded, "pipeline_config"), "pipeline_config", problem))
    return problems


def recipe_json_schema() -> dict[str, Any]:
    """The recipe's JSON Schema (draft 2020-12), generated from the models above."""
    schema = Recipe.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "sdbatch recipe"
    # `name` defaults to the file's stem
    schema["required"] = [key for key in schema.get("required", []) if key != "name"]
    return schema
