"""The ``animate`` stage's config: its fields, Deforum schedules checked over every frame at plan time, 3d's
depth model, and ControlNet units (a control video steers frame ``i`` by its frame ``i``; a still, every
frame: :mod:`sdbatch.stages.video_control`). The render is :mod:`sdbatch.stages.animate`."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import Field, StrictInt, model_validator

from ..config.control import ControlUnit
from ..config.limits import MAX_SCHEDULE_WORK, schedule_work
from ..config.stage import StageConfig
from ..config.types import ColorMode, Fps, NonNegInt, Prompt, Schedule, StrictModel, Sweep

MOTION_2D = ("angle", "zoom", "translation_x", "translation_y")
MOTION_3D = ("translation_x", "translation_y", "translation_z", "rotation_3d_x", "rotation_3d_y", "rotation_3d_z",
             "fov")
RENDER_SCHEDULES = ("strength", "noise", "contrast", "guidance")


class Motion(StrictModel):
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


class AnimateStage(StageConfig):
    """2D/3D camera-motion animation with Deforum schedules (strength in diffusers' sense)."""

    SWEEPS = ("prompt", "negative_prompt", "steps", "scheduler")
    VIDEO = True
    FAMILIES = ("sd", "sdxl")  # SD3/Flux refused at validate (sdbatch.config.families)
    READS = "image"
    INPUT_FIELD = "init"
    PLANNED = StageConfig.PLANNED | {"init"}
    OMIT_IF_NONE = frozenset({"depth_model"})  # identity of the resolved depth model, 3d only
    type: Literal["animate"]
    mode: Literal["2d", "3d"] = "2d"
    frames: Annotated[StrictInt, Field(gt=0, le=100_000)]
    fps: Fps = 15.0
    prompt: Sweep(Prompt) | None = None
    prompts: dict[NonNegInt, Prompt] | None = None
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
    controlnet: list[ControlUnit] | None = None  # a control video (frame i steers frame i) or a still

    @model_validator(mode="after")
    def _prompt_or_prompts(self) -> AnimateStage:
        if (self.prompt is None) == (self.prompts is None):
            raise ValueError("give either 'prompt' or 'prompts' ({frame: prompt, ...})")
        if self.prompts is not None and not self.prompts:
            raise ValueError("'prompts' must not be empty")
        return self

    def plan_hook(self, planner: Any, fixed: dict[str, Any]) -> None:
        """Evaluate every schedule over the animation's frames now, not at frame 3 at 3 a.m. (within a budget
        for the whole recipe, so that validate stays fast); 3d: the depth model."""
        from ..animation.schedule import ScheduleError, evaluate_schedule

        named = [((key,), getattr(self, key)) for key in RENDER_SCHEDULES]
        named += [(("motion", key), text) for key, text in self.motion.model_dump().items()]
        for path, text in named:
            work = schedule_work(text, self.frames)
            if not planner.spend("schedules", work, MAX_SCHEDULE_WORK):
                planner.problem_once("schedules", path, f"evaluating this schedule over {self.frames:,} frames "
                                     f"is too much work ({work:,} units; all schedules of a recipe may take "
                                     f"{MAX_SCHEDULE_WORK:,}): use fewer frames, keyframes or shorter expressions")
                continue
            try:
                values = evaluate_schedule(text, self.frames)
            except ScheduleError as exc:
                planner.problem(path, str(exc))
                continue
            if path == ("strength",) and any(not 0 <= v <= 1 for v in values):
                bad = next(i for i, v in enumerate(values) if not 0 <= v <= 1)
                planner.problem(path, f"the schedule gives {values[bad]:g} at frame {bad}; strength must be "
                                      "within [0, 1]")
        if self.mode == "3d":
            fixed["depth_model"] = planner.aux_model("depth", self.depth_model, rehearsal="sdbatch/tiny-depth").identity()
        else:
            fixed["depth_model"] = None
        if self.controlnet:
            from .control import plan_control
            from .video_control import check_video_controls

            plan_control(self, planner, fixed, reads_input=False, video_ok=True)
            check_video_controls(self, planner, fixed, self.frames)

    def seed_span(self, params: dict[str, Any], frames: int | None) -> int:
        slots = math.ceil(params["frames"] / params["cadence"])  # seeds step once per diffusion
        return {"iter": slots - 1, "ladder": slots // 2 + 1, "alternate": 1}.get(params["seed_behavior"], 0)
