"""Expand a recipe into Jobs: stages x sweeps x seeds x inputs, each with a content-addressed id.

A job's id hashes its model identity (hub commit, file or folder hash), stage, type, every resolved
parameter and its inputs' identities (a file's sha256, or the id of the upstream job that makes it).
So re-running a finished recipe finds every job done, editing one prompt changes only the ids of its
jobs and their dependents, and reordering a list changes nothing. Never imports torch or diffusers.

Example::

    loaded = load_recipe("recipe.yaml")
    plan = build_plan(loaded, out_dir=Path("outputs/wolves"))
    for job in plan.jobs:
        print(job.job_id[:8], job.stage, job.output)
"""

from __future__ import annotations

import hashlib
import itertools
import math
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from ..errors import Problem, RecipeError
from ..io.hashing import HashCache
from ..sources.specs import local_model_path, resolve_model
from .job import InputRef, Job, ModelRef, canonical_json, slugify
from ..config.recipe import (
    IMAGE_SUFFIXES,
    VIDEO_SUFFIXES,
    LoadedRecipe,
    SeedRange,
    StageBase,
    resolve_input_files,
)

PLAN_VERSION = 1
DEFAULT_SIZE = 512
DEFAULTS: dict[str, Any] = {
    "negative_prompt": [""],
    "steps": [25],
    "guidance": [7.5],
    "scheduler": ["default"],
}
REHEARSE_MAX_SIDE = 64
REHEARSE_MAX_STEPS = 4
REHEARSE_MAX_FRAMES = 12


@dataclass
class Plan:
    jobs: list[Job]
    stage_order: list[str]
    out_dir: Path
    rehearse: bool = False

    @cached_property
    def index(self) -> dict[str, Job]:
        """job_id -> job."""
        return {job.job_id: job for job in self.jobs}

    def counts(self) -> dict[str, int]:
        counts = {name: 0 for name in self.stage_order}
        for job in self.jobs:
            counts[job.stage] += 1
        return counts


def stage_order(loaded: LoadedRecipe) -> list[str]:
    """Stage names in dependency order (a stage after the stages it reads), else recipe order."""
    stages = {s.name: s for s in loaded.recipe.stages}
    order: list[str] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        if name in seen:
            return
        seen.add(name)
        for dep in stages[name].input_names:
            if dep in stages:
                visit(dep)
        order.append(name)

    for stage in loaded.recipe.stages:
        visit(stage.name)
    return order


def stage_seeds(stage: StageBase) -> list[int] | None:
    if stage.seed is not None:
        return [stage.seed]
    if isinstance(stage.seeds, SeedRange):
        return list(range(stage.seeds.start, stage.seeds.start + stage.seeds.count))
    if stage.seeds is not None:
        return list(dict.fromkeys(stage.seeds))
    return None


def rehearse_size(width: int, height: int) -> tuple[int, int]:
    side = max(width, height)
    if side <= REHEARSE_MAX_SIDE:
        return width, height
    scale = REHEARSE_MAX_SIDE / side
    return max(8, int(round(width * scale / 8)) * 8), max(8, int(round(height * scale / 8)) * 8)


def image_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as im:
        return im.size


class _Planner:
    def __init__(self, loaded: LoadedRecipe, out_dir: Path, rehearse: bool, hashes: HashCache):
        self.loaded = loaded
        self.recipe = loaded.recipe
        self.base = loaded.base_dir
        self.out_dir = out_dir
        self.rehearse = rehearse
        self.hashes = hashes
        self.models: dict[str, ModelRef] = {}
        self.jobs_by_stage: dict[str, list[Job]] = {}
        self.problems: list[Problem] = []

    def model(self, spec: str) -> ModelRef:
        if spec not in self.models:
            self.models[spec] = resolve_model(spec, self.base, self.hashes, rehearse=self.rehearse)
        return self.models[spec]

    def line(self, *path: Any) -> int:
        lines = self.loaded.lines
        for n in range(len(path), -1, -1):
            if path[:n] in lines:
                return lines[path[:n]]
        return 0

    def sources(self, index: int, stage: StageBase) -> list[tuple[InputRef | None, int | None, tuple[int, int] | None]]:
        """(input, inherited seed, input size) for each input the stage reads; [(None, None, None)] for none."""
        names = stage.input_names
        if not names:
            return [(None, None, None)]
        value = names[0]
        field_name = "init" if stage.type == "animate" else "input"
        if value in self.jobs_by_stage:
            upstream = self.recipe.stage(value)
            wants_video = stage.READS == "video"
            if upstream.VIDEO != wants_video:
                what = "a video" if wants_video else "images"
                self.problems.append(Problem(self.line("stages", index, field_name), f"stages[{index}].{field_name}",
                                             f"stage {value!r} ({upstream.type}) does not produce {what}"))
                return []
            return [(InputRef(job.output, None, job.job_id), job.seed, (job.params["width"], job.params["height"]))
                    for job in self.jobs_by_stage[value]]
        if stage.READS == "video":
            return [self.video_source(index, stage, value)]
        out = []
        for path in resolve_input_files(value, self.base, IMAGE_SUFFIXES):
            out.append((InputRef(self.display_path(path), self.hashes.file(path)), None, image_size(path)))
        return out

    def video_source(self, index: int, stage: StageBase, value: str) -> tuple:
        from ..io.video import VideoError, probe_video, select_frames

        path = Path(value).expanduser()
        path = path if path.is_absolute() else self.base / path
        if path.suffix.lower() not in VIDEO_SUFFIXES:
            self.problems.append(Problem(self.line("stages", index, "input"), f"stages[{index}].input",
                                         f"{value}: not a video file (expected {', '.join(sorted(VIDEO_SUFFIXES))})"))
            return (None, None, None)
        try:
            info = probe_video(path)
            select_frames(info, getattr(stage, "start_frame", 0), getattr(stage, "end_frame", None),
                          getattr(stage, "every_nth_frame", 1))
        except VideoError as exc:
            self.problems.append(Problem(self.line("stages", index, "input"), f"stages[{index}].input",
                                         str(exc).replace(str(path), value)))
            return (None, None, None)
        return (InputRef(self.display_path(path), self.hashes.file(path)), None, (info.width, info.height))

    def display_path(self, path: Path) -> str:
        try:
            return os.path.relpath(path, self.base)
        except ValueError:
            return str(path)

    def mask_for(self, stage: StageBase, source: InputRef | None) -> InputRef | None:
        mask = getattr(stage, "mask", None)
        if mask is None:
            return None
        masks = resolve_input_files(mask, self.base, IMAGE_SUFFIXES)
        chosen = masks[0]
        if len(masks) > 1 and source is not None:
            stem = Path(source.path).stem
            chosen = next((m for m in masks if m.stem == stem), masks[0])
        return InputRef(self.display_path(chosen), self.hashes.file(chosen))

    def expand(self, index: int, stage: StageBase) -> list[Job]:
        recipe = self.recipe
        model = self.model(stage.model or recipe.model)  # type: ignore[arg-type]
        device = "cpu" if self.rehearse else (stage.device or recipe.device)
        dtype = "float32" if self.rehearse else (stage.dtype or recipe.dtype)
        sweeps = {key: getattr(stage, key, None) or DEFAULTS.get(key) for key in stage.SWEEPS}
        sweeps = {k: list(dict.fromkeys(v)) for k, v in sweeps.items() if v is not None}
        keys = list(sweeps)
        seed_path = stage.type == "interpolate"  # its seeds are the path, not a sweep
        own_seeds = [stage.seeds[0]] if seed_path else stage_seeds(stage)  # type: ignore[index]
        extra = stage.extra_params()
        if stage.type == "animate":
            self.check_schedules(index, extra)
        aux: dict[str, ModelRef] = {}
        if stage.type == "animate" and stage.mode == "3d":  # type: ignore[attr-defined]
            aux["depth"] = self.depth_model(stage.depth_model)  # type: ignore[attr-defined]
            extra["depth_model"] = aux["depth"].identity()
        if not self.rehearse:  # LoRAs / VAE for the real model would not fit the tiny stand-in
            aux.update(self.model_sources(stage, model, extra))
        options = {k: getattr(stage, k) for k in ("attention", "channels_last", "compile", "vae_tiling", "offload",
                                                 "tf32", "batch_size") if getattr(stage, k) is not None}
        if stage.previews and not stage.VIDEO:
            options["previews"] = stage.previews
        if recipe.allow_pickle:
            options["allow_pickle"] = True
        jobs: list[Job] = []
        for source, inherited_seed, in_size in self.sources(index, stage):
            if stage.READS == "video" and source is None:
                continue  # a problem was recorded
            width, height = stage.width, stage.height
            if width is None or height is None:
                base_w, base_h = in_size or (DEFAULT_SIZE, DEFAULT_SIZE)
                if width is None and height is None:
                    width, height = base_w // 8 * 8, base_h // 8 * 8
                elif width is None:
                    width = max(8, int(base_w * height / base_h) // 8 * 8)
                else:
                    height = max(8, int(base_h * width / base_w) // 8 * 8)
            if self.rehearse:
                width, height = rehearse_size(width, height)
            seeds = own_seeds if own_seeds is not None else [inherited_seed if inherited_seed is not None else 0]
            mask = self.mask_for(stage, source)
            for values in itertools.product(*(sweeps[k] for k in keys)):
                combo = dict(zip(keys, values))
                steps = combo["steps"]
                strength = combo.get("strength")
                if strength is not None and 0 < strength and int(steps * strength) < 1:
                    self.problems.append(Problem(
                        self.line("stages", index, "strength"), f"stages[{index}].strength",
                        f"strength {strength} x steps {steps} leaves no denoising step "
                        f"(diffusers runs int(steps x strength)); raise steps or strength"))
                    return jobs
                if self.rehearse:
                    floor = math.ceil(1 / strength) if strength else 1
                    steps = min(steps, max(REHEARSE_MAX_STEPS, floor))
                params: dict[str, Any] = {"steps": steps, "scheduler": combo["scheduler"], "width": width,
                                          "height": height}
                if "guidance" in combo:
                    params["guidance"] = float(combo["guidance"])
                if strength is not None:
                    params["strength"] = float(strength)
                params.update(extra)
                if self.rehearse and "frames" in params and stage.type == "animate":
                    params["frames"] = min(params["frames"], REHEARSE_MAX_FRAMES)
                prompt = combo.get("prompt") or ""
                shared = {
                    "v": PLAN_VERSION,
                    "stage": stage.name,
                    "type": stage.type,
                    "model": model.identity(),
                    "dtype": dtype,
                    "prompt": prompt,
                    "negative_prompt": combo["negative_prompt"],
                    "params": params,
                    "inputs": [source.identity()] if source else [],
                    "mask": mask.identity() if mask else None,
                }
                base = hashlib.sha256(canonical_json(shared).encode())
                for seed in seeds:
                    digest = base.copy()
                    digest.update(f"\0seed={seed}".encode())
                    jobs.append(Job(digest.hexdigest(), stage.name, stage.type, prompt, combo["negative_prompt"], seed,
                                    dict(params), model, device, dtype, "",
                                    [source] if source else [], mask, options, aux))
        slugs: dict[str, str] = {}
        for job in jobs:
            if job.prompt not in slugs:
                prompts = job.params.get("prompts") or {}
                first = next(iter(prompts.values() if isinstance(prompts, dict) else prompts), "")
                slugs[job.prompt] = slugify(job.prompt or first or stage.name)
            slug = f"{slugs[job.prompt]}-{job.seed}-{job.job_id[:8]}"
            if not stage.VIDEO:
                job.output = f"{stage.name}/{slug}.png"
            elif len(jobs) == 1:
                job.output = f"{stage.name}/{stage.name}.mp4"
            else:
                job.output = f"{stage.name}/{slug}/{stage.name}.mp4"
        return jobs

    def model_sources(self, stage: StageBase, model: ModelRef, extra: dict[str, Any]) -> dict[str, ModelRef]:
        """LoRAs, VAE override and single-file pipeline config: into ``extra`` (identity) and aux models."""
        aux: dict[str, ModelRef] = {}
        if stage.loras:
            extra["loras"] = []
            for lora in stage.loras:
                ref = self.aux_file(lora.path)
                aux[f"lora:{ref.revision}"] = ref
                extra["loras"].append({"path": lora.path, "sha256": ref.revision, "weight": float(lora.weight)})
        if stage.vae:
            key = "vae:" + stage.vae
            if key not in self.models:
                self.models[key] = resolve_model(stage.vae, self.base, self.hashes)
            aux["vae"] = self.models[key]
            extra["vae"] = aux["vae"].identity()
        config = stage.pipeline_config or self.recipe.pipeline_config
        if config and model.source == "file":
            aux["pipeline_config"] = self.config_ref(config)
            extra["pipeline_config"] = config
        return aux

    def aux_file(self, spec: str) -> ModelRef:
        key = "file:" + spec
        if key not in self.models:
            path = Path(spec).expanduser()
            path = path if path.is_absolute() else self.base / path
            self.models[key] = ModelRef(spec, self.hashes.file(path), "file", str(path))
        return self.models[key]

    def config_ref(self, spec: str) -> ModelRef:
        """Where a single-file model's pipeline configs come from (a hub id is fetched by diffusers: configs only)."""
        from ..sources.tiny import BUILTIN_MODELS

        if spec.startswith("sdbatch/"):
            return ModelRef(spec, BUILTIN_MODELS[spec], "builtin")
        local = local_model_path(spec, self.base)
        if local is not None:
            return ModelRef(spec, "local", "folder", str(local))
        return ModelRef(spec, "configs", "hub-config", None)

    def check_schedules(self, index: int, params: dict[str, Any]) -> None:
        """Evaluate every schedule over the animation's frames now, not at frame 3 at 3 a.m."""
        from ..animation.schedule import ScheduleError, evaluate_schedule

        frames = params["frames"]
        named = [((key,), params[key]) for key in ("strength", "noise", "contrast", "guidance")]
        named += [(("motion", key), text) for key, text in params["motion"].items()]
        for path, text in named:
            try:
                values = evaluate_schedule(text, frames)
            except ScheduleError as exc:
                self.problems.append(Problem(self.line("stages", index, *path),
                                             f"stages[{index}]." + ".".join(path), str(exc)))
                continue
            if path == ("strength",) and any(not 0 <= v <= 1 for v in values):
                bad = next(i for i, v in enumerate(values) if not 0 <= v <= 1)
                self.problems.append(Problem(self.line("stages", index, *path), f"stages[{index}].strength",
                                             f"the schedule gives {values[bad]:g} at frame {bad}; strength must be "
                                             "within [0, 1]"))

    def depth_model(self, spec: str) -> ModelRef:
        key = "depth:" + spec
        if key not in self.models:
            self.models[key] = resolve_model("sdbatch/tiny-depth" if self.rehearse else spec, self.base, self.hashes)
        return self.models[key]


def build_plan(loaded: LoadedRecipe, out_dir: Path, *, rehearse: bool = False,
               hashes: HashCache | None = None) -> Plan:
    """Expand ``loaded`` into jobs in dependency order. Raises RecipeError for plan-time problems."""
    hashes = hashes or HashCache.open()
    planner = _Planner(loaded, out_dir, rehearse, hashes)
    order = stage_order(loaded)
    index = {stage.name: i for i, stage in enumerate(loaded.recipe.stages)}
    jobs: list[Job] = []
    for name in order:
        stage = loaded.recipe.stages[index[name]]
        stage_jobs = planner.expand(index[name], stage)
        planner.jobs_by_stage[name] = stage_jobs
        jobs.extend(stage_jobs)
    hashes.save()
    if planner.problems:
        raise RecipeError(str(loaded.path), planner.problems)
    return Plan(jobs, order, out_dir, rehearse)

