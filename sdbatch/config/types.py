"""Field types shared by the recipe models: sweeps, sizes, schedules, seeds, LoRAs, and the runtime marker.

A field annotated with :data:`RUNTIME` is a runtime option (batch size, compile, attention, ...): recorded in
the manifest, never part of a job's id. Every other field of a stage's config is identity (see
:mod:`sdbatch.core.plan`), so a new field changes job ids unless it is declared a runtime option.
"""

from __future__ import annotations

from functools import cache
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictInt,
    TypeAdapter,
    WithJsonSchema,
    model_validator,
)

from . import limits


class RuntimeOption:
    """Metadata marking a field as a runtime option (not part of a job's identity)."""

    def __repr__(self) -> str:
        return "RUNTIME"


RUNTIME = RuntimeOption()


def is_runtime(field_info: Any) -> bool:
    return any(isinstance(m, RuntimeOption) for m in field_info.metadata)


NAME_PATTERN = r"^[A-Za-z0-9_-]+$"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}
VIDEO_SUFFIXES = {".mp4", ".mov", ".webm", ".gif", ".mkv", ".avi", ".m4v"}

SCHEDULER_NAMES = (
    "default", "ddim", "euler", "euler-a", "dpmpp-2m", "dpmpp-2m-karras", "dpmpp-sde-karras",
    "unipc", "lms", "pndm", "heun", "lcm",
)
#: AUTOMATIC1111's sampler display names accepted as aliases of ours (the inverse of
#: :data:`sdbatch.io.artifacts.SAMPLER_NAMES`); normalised to our name at validation, so a job's id is the same
SCHEDULER_ALIASES = {
    "DDIM": "ddim",
    "Euler": "euler",
    "Euler a": "euler-a",
    "DPM++ 2M": "dpmpp-2m",
    "DPM++ 2M Karras": "dpmpp-2m-karras",
    "DPM++ SDE Karras": "dpmpp-sde-karras",
    "UniPC": "unipc",
    "LMS": "lms",
    "PLMS": "pndm",
    "Heun": "heun",
    "LCM": "lcm",
}


def _scheduler_name(value: Any) -> Any:
    return SCHEDULER_ALIASES.get(value, value) if isinstance(value, str) else value


#: a scheduler: one of ours, or an A1111 sampler name (validated as ours; the schema's enum lists both)
SchedulerName = Annotated[
    Literal[
        "default", "ddim", "euler", "euler-a", "dpmpp-2m", "dpmpp-2m-karras", "dpmpp-sde-karras",
        "unipc", "lms", "pndm", "heun", "lcm",
    ],
    BeforeValidator(_scheduler_name),
    WithJsonSchema({"enum": [*SCHEDULER_NAMES, *SCHEDULER_ALIASES], "type": "string",
                    "description": "ours, or AUTOMATIC1111's sampler name (\"Euler a\", \"DPM++ 2M Karras\", ...)"}),
]
DeviceName = Annotated[str, Field(pattern=r"^(auto|cpu|cuda|cuda:\d+|mps)$")]
DtypeName = Literal["auto", "float16", "bfloat16", "float32"]


# --------------------------------------------------------------------------------------------- types
def _as_list(value: Any) -> Any:
    return value if isinstance(value, list) else [value]


def _item_schema(item: Any) -> dict:
    try:
        return _cached_item_schema(item)
    except TypeError:  # unhashable metadata (WithJsonSchema holds a dict)
        return TypeAdapter(item).json_schema()


@cache
def _cached_item_schema(item: Any) -> dict:
    return TypeAdapter(item).json_schema()


def Sweep(item: Any) -> Any:  # noqa: N802 - reads like a type
    """A parameter that may be one value or a list of values to sweep (cartesian product).

    Validated as a non-empty list; the JSON schema accepts either form.
    """
    schema = _item_schema(item)
    forms = [schema, {"type": "array", "items": schema, "minItems": 1}]
    if item is Prompt:  # prompts may also come from a file, read before validation (sdbatch.config.promptfile)
        forms.append(PROMPT_FILE_SCHEMA)
    return Annotated[
        list[item],
        BeforeValidator(_as_list),
        Field(min_length=1),
        WithJsonSchema({"anyOf": forms}),
    ]


#: ``prompt: {file: prompts.txt}``: one prompt a line ('#' comments, blank lines skipped), a sweep
PROMPT_FILE_SCHEMA = {"type": "object", "properties": {"file": {"type": "string", "minLength": 1}},
                      "required": ["file"], "additionalProperties": False,
                      "description": "a file of prompts beside the recipe, one a line ('#' comments): a sweep"}


def multiple_of_8(value: int) -> int:
    if value % 8:
        raise ValueError(f"must be a multiple of 8 (got {value})")
    return value


#: an image side: validated as the JSON schema says (``multipleOf: 8``), with our own message
Size = Annotated[
    StrictInt,
    Field(gt=0, le=limits.MAX_SIDE),
    AfterValidator(multiple_of_8),
    WithJsonSchema({"type": "integer", "exclusiveMinimum": 0, "maximum": limits.MAX_SIDE, "multipleOf": 8}),
]
Strength = Annotated[float, Field(ge=0.0, le=1.0)]
Steps = Annotated[StrictInt, Field(gt=0, le=10000)]
Guidance = Annotated[float, Field(ge=0.0, le=100.0)]
#: a prompt or negative prompt: at most MAX_PROMPT_CHARS characters (lone surrogates are refused for every
#: string of a recipe, see :func:`sdbatch.config.checks.check_text`)
Prompt = Annotated[str, Field(max_length=limits.MAX_PROMPT_CHARS)]
#: ``-1`` as a recipe's seed: a random seed, as in AUTOMATIC1111 (drawn once per output folder and stored
#: there, see :mod:`sdbatch.io.seedstore`)
RANDOM_SEED = -1
#: random seeds are drawn in AUTOMATIC1111's range, 0..2**32-1 (a ``{start: -1, count: N}`` range ends there too)
RANDOM_SEED_MAX = 2**32 - 1


def recipe_seed(value: int) -> int:
    """A recipe's seed: one ``torch.Generator.manual_seed`` takes (0..2**64-1), or ``-1`` for a random one."""
    if value == RANDOM_SEED:
        return value
    try:
        return limits.check_seed(value)
    except ValueError as exc:
        raise ValueError(f"{exc}; -1 draws a random seed") from None


#: a seed: what ``torch.Generator.manual_seed`` takes, 0..2**64-1, or ``-1``: a random seed
Seed = Annotated[
    StrictInt,
    AfterValidator(recipe_seed),
    WithJsonSchema({"type": "integer", "minimum": RANDOM_SEED, "maximum": limits.MAX_SEED,
                    "description": "0..2^64-1, or -1: a random seed (AUTOMATIC1111's), drawn on the first run "
                                   "and kept in the output folder's random-seeds.json"}),
]


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class SeedRange(StrictModel):
    """``seeds: {start: 0, count: 100}`` is seeds 0..99; ``{start: -1, count: 4}`` four consecutive seeds from a
    random start (AUTOMATIC1111's batch), all within 0..2**32-1."""

    start: Seed = 0
    count: Annotated[StrictInt, Field(gt=0, le=10_000_000)]

    @model_validator(mode="after")
    def _last_seed(self) -> SeedRange:
        if self.start != RANDOM_SEED:
            limits.check_seed(self.start + self.count - 1, what="the range's last seed")
        return self


def _lora_shorthand(value: Any) -> Any:
    return {"path": value} if isinstance(value, str) else value


class Lora(StrictModel):
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


class Embedding(StrictModel):
    """``embeddings: [{path: embeddings/easynegative.safetensors, token: easynegative}]``: textual inversion.

    ``path`` is the embedding file relative to the recipe file (.safetensors; .pt/.bin need ``allow_pickle:
    true``); ``token`` the word a prompt uses for it (default: the file's stem, as A1111 names embeddings).
    Its sha256 and token are part of a job's identity.
    """

    path: Annotated[str, Field(min_length=1)]
    token: Annotated[str, Field(pattern=r"^[^\s()\[\]\\:,]+$", max_length=100)] | None = None

    @property
    def name(self) -> str:
        from pathlib import PurePath

        return self.token or PurePath(self.path).stem


#: A1111's "Clip skip": 1 uses the text encoder's last layer (no skip), 2 the one before it, ...
ClipSkip = Annotated[StrictInt, Field(ge=1, le=12)]
PromptSyntax = Literal["a1111", "plain"]


# ------------------------------------------------------------------------------- stage parameters
ColorMode = Literal["none", "lab", "hsv", "rgb"]
NonNegInt = Annotated[StrictInt, Field(ge=0)]
PosInt = Annotated[StrictInt, Field(gt=0)]
Fps = Annotated[float, Field(gt=0, le=240)]


def _check_schedule(value: Any) -> str:
    from ..animation.schedule import ScheduleError, as_schedule_text

    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError("must be a schedule like \"0:(1.0), 30:(1.05)\" or a number")
    if isinstance(value, str):
        limits.check_schedule_size(value)  # before compiling it: bounded work whatever its length
    try:
        return as_schedule_text(value)  # validates (compiles every keyframe, evaluates it at its key)
    except ScheduleError as exc:
        raise ValueError(str(exc)) from None


Schedule = Annotated[
    str,
    BeforeValidator(_check_schedule),
    WithJsonSchema({"anyOf": [{"type": "string"}, {"type": "number"}],
                    "description": "Deforum schedule: \"0:(1.0), 30:(1.05)\"; a value may be an expression in t"}),
]


