"""What every stage type's config model shares: the common parameters, and the planning hooks' defaults.

A stage type's module (``sdbatch/stages/<type>.py``) subclasses :class:`StageConfig` with its own fields and
hooks; :mod:`sdbatch.config.recipe` assembles the recipe model from the registry in :mod:`sdbatch.stages`.

Which fields are identity and which are runtime options is declared here and in the subclasses, once:
a field annotated with :data:`~sdbatch.config.types.RUNTIME` is a runtime option; the fields in
:attr:`StageConfig.PLANNED` are turned into a job's model, inputs, prompt, seed and size by the planner;
every other field is copied into each job's params, and so into its id.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from pydantic import Field, StrictBool, StrictInt, field_validator, model_validator

from .control import ControlUnit
from .ipadapter import IpAdapter
from .types import (
    NAME_PATTERN,
    RANDOM_SEED,
    RUNTIME,
    ClipSkip,
    DeviceName,
    DtypeName,
    Embedding,
    Guidance,
    LoraItem,
    Prompt,
    PromptSyntax,
    SchedulerName,
    Seed,
    SeedRange,
    Size,
    Steps,
    Strength,
    StrictModel,
    Sweep,
    is_runtime,
    multiple_of_8,
)

if TYPE_CHECKING:
    from ..core.plan import StagePlanner

#: ``--rehearse``: every image at most this many pixels a side, this many steps, video stages this many frames
REHEARSE_MAX_SIDE = 64
REHEARSE_MAX_STEPS = 4
REHEARSE_MAX_FRAMES = 12
#: a job's width/height when neither the stage nor an input gives one
DEFAULT_SIZE = 512

#: sweeps every stage type may name, with their defaults when neither the stage nor ``defaults`` sets them
SWEEP_DEFAULTS: dict[str, list[Any]] = {
    "negative_prompt": [""],
    "steps": [25],
    "guidance": [7.5],
    "scheduler": ["default"],
}


class StageParams(StrictModel):
    """Parameters any stage may take; also the shape of ``defaults`` (all optional there)."""

    model: str | None = None
    device: Annotated[DeviceName | None, RUNTIME] = None
    dtype: DtypeName | None = None
    prompt: Sweep(Prompt) | None = None
    negative_prompt: Sweep(Prompt) | None = None
    steps: Sweep(Steps) | None = None
    guidance: Sweep(Guidance) | None = None
    width: Size | None = None
    height: Size | None = None
    scheduler: Sweep(SchedulerName) | None = None
    seed: Seed | None = None
    seeds: list[Seed] | SeedRange | None = None
    batch_size: Annotated[Literal["auto"] | Annotated[StrictInt, Field(gt=0, le=1024)] | None, RUNTIME] = None
    # GPU options (recorded in the manifest, not part of a job's identity)
    attention: Annotated[Literal["sdpa", "default"] | None, RUNTIME] = None
    channels_last: Annotated[StrictBool | None, RUNTIME] = None
    compile: Annotated[StrictBool | None, RUNTIME] = None
    vae_tiling: Annotated[StrictBool | None, RUNTIME] = None
    offload: Annotated[Literal["none", "model", "sequential"] | None, RUNTIME] = None
    tf32: Annotated[StrictBool | None, RUNTIME] = None
    # model sources (part of a job's identity, by content)
    loras: list[LoraItem] | None = None
    embeddings: list[Embedding] | None = None  # textual inversion (by content, like LoRAs)
    vae: str | None = None  # AutoencoderKL: diffusers folder, hub id, or .safetensors file
    pipeline_config: str | None = None  # configs for a single-file model: folder / hub id / built-in
    # wildcard templates ({a|b}, __name__) in prompts: a prompt drawn per job from its seed, or every expansion
    # swept (the expanded prompt is a job's identity; see sdbatch.config.wildcards)
    wildcards: Literal["random", "combinatorial"] | None = None
    # still-image stages: save the decoded image every N denoising steps under <stage>/previews/
    # (extra files; not part of a job's identity)
    previews: Annotated[Annotated[StrictInt, Field(ge=1, le=10000)] | None, RUNTIME] = None
    # how prompts are read (identity: a job's params carry them only where they change its encoding)
    prompt_syntax: PromptSyntax | None = None  # a1111 (default): A1111's (x:1.2), [x], BREAK; plain: literal
    clip_skip: ClipSkip | None = None  # A1111's Clip skip (1 = none); diffusers' clip_skip is this - 1
    # SD3/SD3.5 and Flux.1 only (sdbatch.config.families; identity, left out of params when unset)
    max_sequence_length: Annotated[StrictInt, Field(ge=1, le=512)] | None = None  # T5 tokens (diffusers' default)
    true_cfg: Annotated[float, Field(ge=1, le=100)] | None = None  # Flux: real CFG with the negative prompt (1 = off)

    @field_validator("width", "height")
    @classmethod
    def _size(cls, value: int | None) -> int | None:
        return None if value is None else multiple_of_8(value)

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, value: Any) -> Any:
        if isinstance(value, list) and not value:
            raise ValueError("must not be empty")
        return value

    @model_validator(mode="after")
    def _one_seed_form(self) -> StageParams:
        if self.seed is not None and self.seeds is not None:
            raise ValueError("give either 'seed' or 'seeds', not both")
        return self


class StageConfig(StageParams):
    """The base of every stage type's config model, with the planner's hooks (defaults for image stages)."""

    name: Annotated[str, Field(pattern=NAME_PATTERN, max_length=64)]
    #: a table of stage parameters (.csv, .jsonl, .yaml beside the recipe): one config per row (see
    #: sdbatch.config.rows); the rows' values are identity, the table's name is not
    rows: Annotated[str, Field(min_length=1)] | None = None

    #: parameters a list sweeps (cartesian product) for this stage type
    SWEEPS: ClassVar[tuple[str, ...]] = ("prompt", "negative_prompt", "steps", "guidance", "scheduler")
    #: True when the stage's output is a video (frames + mp4) rather than one image per job
    VIDEO: ClassVar[bool] = False
    #: what the stage reads from upstream stages or files: "image", "video" or nothing
    READS: ClassVar[str | None] = None
    #: the field naming what it reads
    INPUT_FIELD: ClassVar[str] = "input"
    #: fields the planner turns into a job's stage, model, inputs, prompt, seeds and size (identity too)
    PLANNED: ClassVar[frozenset[str]] = frozenset({
        "name", "type", "model", "dtype", "prompt", "negative_prompt", "seed", "seeds", "input", "mask",
        "width", "height", "loras", "vae", "pipeline_config", "embeddings",
        "wildcards", "rows", "controlnet", "ip_adapter",
    })
    #: the model families (sdbatch.sources.families) the stage renders with; None: every family
    FAMILIES: ClassVar[tuple[str, ...] | None] = None
    #: identity params left out of a job's params (and id) when None, so ids stay those of older versions
    OMIT_IF_NONE: ClassVar[frozenset[str]] = frozenset()

    @property
    def input_names(self) -> list[str]:
        """Stage names or file patterns this stage reads."""
        value = getattr(self, self.INPUT_FIELD, None)
        return [value] if isinstance(value, str) else []

    # ------------------------------------------------------------------------------ planning hooks
    @classmethod
    def runtime_fields(cls) -> list[str]:
        return [name for name, info in cls.model_fields.items() if is_runtime(info)]

    @classmethod
    def identity_fields(cls) -> list[str]:
        """Fields copied as they are into every job's params: all but the planned, swept and runtime ones."""
        return [name for name, info in cls.model_fields.items()
                if name not in cls.PLANNED and name not in cls.SWEEPS and not is_runtime(info)]

    def job_seeds(self) -> Sequence[int] | None:
        """The stage's own seeds (a ``range`` for ``{start, count}``: its length costs nothing), or None to take
        each input's seed (0 without an input)."""
        if self.seed is not None:
            return [self.seed]
        if isinstance(self.seeds, SeedRange):
            return range(self.seeds.start, self.seeds.start + self.seeds.count)
        if self.seeds is not None:
            return list(dict.fromkeys(self.seeds))
        return None

    def random_seeds(self) -> list[tuple[str, int]]:
        """(key, count) of each ``-1`` (a random seed) the stage names, keyed by stage name and place:
        ``<stage>/seed``, ``<stage>/seeds/<i>`` (position ``i`` of a list), ``<stage>/seeds/start`` (a
        ``{start: -1, count: N}`` range: a random start, ``count`` consecutive seeds). The key is what the
        output folder's seed store remembers the drawn seed by (:mod:`sdbatch.io.seedstore`)."""
        if self.seed == RANDOM_SEED:
            return [(f"{self.name}/seed", 1)]
        if isinstance(self.seeds, SeedRange):
            return [(f"{self.name}/seeds/start", self.seeds.count)] if self.seeds.start == RANDOM_SEED else []
        return [(f"{self.name}/seeds/{i}", 1) for i, seed in enumerate(self.seeds or ()) if seed == RANDOM_SEED]

    def with_random_seeds(self, draw: Callable[[str, int], int]) -> StageConfig:
        """The stage with each ``-1`` replaced by ``draw(key, count)`` (see :meth:`random_seeds`); itself when it
        names none. Every hook then sees real seeds: a video stage's frames, an interpolate path, job ids."""
        slots = self.random_seeds()
        if not slots:
            return self
        if self.seed == RANDOM_SEED:
            return self.model_copy(update={"seed": draw(*slots[0])})
        if isinstance(self.seeds, SeedRange):
            return self.model_copy(update={"seeds": self.seeds.model_copy(update={"start": draw(*slots[0])})})
        seeds = list(self.seeds or ())
        for key, count in slots:
            seeds[int(key.rpartition("/")[2])] = draw(key, count)
        return self.model_copy(update={"seeds": seeds})

    def frame_range(self) -> tuple[int, int | None, int]:
        """(start, end, every nth) of the source frames a video-reading stage keeps."""
        return 0, None, 1

    def plan_hook(self, planner: StagePlanner, fixed: dict[str, Any]) -> None:
        """Check the stage and adjust its fixed params before jobs are made (problems go to ``planner``)."""

    def rehearse_params(self, params: dict[str, Any], source_frames: int | None) -> None:
        """Shrink a job's params for ``--rehearse`` (steps and size are capped by the planner): a video stage
        renders at most REHEARSE_MAX_FRAMES frames. ``source_frames``: the frames of the video it reads."""
        if self.VIDEO and "frames" in params:
            params["frames"] = min(params["frames"], REHEARSE_MAX_FRAMES)

    def plan_size(self, planner: StagePlanner, fixed: dict[str, Any], in_size: tuple[int, int] | None
                  ) -> tuple[int, int] | None:
        """A job's width x height for an input of ``in_size`` (None: no input); None after a reported problem.
        The stage's width/height; a missing one follows the input's size (:func:`job_size`)."""
        return job_size(self, in_size)

    @classmethod
    def output_size(cls, params: Any) -> tuple[int, int]:
        """The size of a job's images (what a stage reading them gets): its params' width x height."""
        return params.width, params.height

    def output_frames(self, params: dict[str, Any], source_frames: int | None) -> int | None:
        """The frames of a video stage's job (what a stage reading its video gets), None if unknown."""
        return params.get("frames") if self.VIDEO else None

    def seed_span(self, params: dict[str, Any], frames: int | None) -> int:
        """How far past its seed a job's frames draw seeds (``seed + span`` must be a seed too)."""
        return 0


def job_size(stage: StageConfig, in_size: tuple[int, int] | None) -> tuple[int, int]:
    """The stage's width/height; a missing one follows the input's size (multiples of 8, aspect kept)."""
    width, height = stage.width, stage.height
    if width is None or height is None:
        base_w, base_h = in_size or (DEFAULT_SIZE, DEFAULT_SIZE)
        if width is None and height is None:
            width, height = base_w // 8 * 8, base_h // 8 * 8
        elif width is None:
            width = max(8, int(base_w * height / base_h) // 8 * 8)
        else:
            height = max(8, int(base_h * width / base_w) // 8 * 8)
    return width, height


class ImageToImageConfig(StageConfig):
    """img2img-like stages: an image input and a swept ``strength``."""

    SWEEPS = StageConfig.SWEEPS + ("strength",)
    READS = "image"
    input: str
    prompt: Sweep(Prompt) = [""]


class Defaults(StageParams):
    """``defaults:``: any stage parameter; a stage's own value wins."""

    strength: Sweep(Strength) | None = None
    controlnet: list[ControlUnit] | None = None  # generate / img2img / inpaint (sdbatch.stages.control)
    ip_adapter: list[IpAdapter] | None = None  # generate / img2img / inpaint (sdbatch.stages.ipadapter_config)


