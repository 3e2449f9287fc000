"""Expand a recipe into Jobs: stages x sweeps x seeds x inputs, each with a content-addressed id.

A job's id hashes its model identity (hub commit, file or folder hash), stage, type, dtype, prompt, negative
prompt, every identity parameter (each stage type's config declares which fields are runtime options; all
others are identity) and its inputs' identities (a file's sha256, or the id of the upstream job that makes
it). So re-running a finished recipe finds every job done, editing one prompt changes only the ids of its
jobs and their dependents, and reordering a list changes nothing. The expansion is generic: a stage type
takes part through the hooks of its config model (:class:`~sdbatch.config.stage.StageConfig`). Never imports
torch or diffusers.

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
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any

from ..config.families import family_params
from ..config.limits import MAX_SEED, MAX_SIDE
from ..config.stage import REHEARSE_MAX_SIDE, REHEARSE_MAX_STEPS, StageConfig
from ..errors import Problem, RecipeError
from ..io.hashing import HashCache
from ..io.seedstore import SeedStore
from .inputs import Inputs, Source
from .job import InputRef, Job, ModelRef, canonical_json, slugify
from .jobcount import check_job_count, count_jobs, stage_sweeps  # noqa: F401 - count_jobs: the public name here
from .params import RunOptions, make_params
from .prompts import PromptPicker, stage_configs
from .randomseeds import apply_random_seeds, random_seed_jobs

if TYPE_CHECKING:
    from ..config.recipe import LoadedRecipe

PLAN_VERSION = 1


@dataclass
class Plan:
    jobs: list[Job]
    stage_order: list[str]
    out_dir: Path
    rehearse: bool = False
    seeds: SeedStore | None = None  # the output folder's random seeds (``-1``): stored, or drawn for this plan
    random_seeds: dict[str, str] = field(default_factory=dict)  # job id -> "stored" | "provisional"

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


def rehearse_size(width: int, height: int) -> tuple[int, int]:
    side = max(width, height)
    if side <= REHEARSE_MAX_SIDE:
        return width, height
    scale = REHEARSE_MAX_SIDE / side
    return max(8, int(round(width * scale / 8)) * 8), max(8, int(round(height * scale / 8)) * 8)


class StagePlanner:
    """What a stage's planning hooks see: its place in the recipe, problems, and model resolution."""

    def __init__(self, plan: RecipePlanner, index: int, stage: StageConfig):
        self.plan = plan
        self.index = index
        self.stage = stage
        self.rehearse = plan.rehearse
        self.aux: dict[str, ModelRef] = {}
        self.reported: set[str] = set()

    def problem(self, path: tuple, message: str) -> None:
        """Record a problem with field ``path`` (relative to the stage) and carry on planning."""
        full = ("stages", self.index) + tuple(path)
        self.plan.problems.append(Problem(self.plan.line(*full), f"stages[{self.index}]." + ".".join(map(str, path)),
                                          message))

    def problem_once(self, kind: str, path: tuple, message: str) -> None:
        """:meth:`problem`, only the first time for ``kind`` in this stage (one line, not one per job)."""
        if kind not in self.reported:
            self.reported.add(kind)
            self.problem(path, message)

    def spend(self, budget: str, work: int, limit: int) -> bool:
        """Count ``work`` against a recipe-wide ``limit`` (e.g. schedule evaluation); False (nothing spent)
        when it would go over."""
        spent = self.plan.budgets.get(budget, 0)
        if spent + work > limit:
            return False
        self.plan.budgets[budget] = spent + work
        return True

    def aux_model(self, key: str, spec: str, rehearsal: str | None = None) -> ModelRef:
        """An extra model the stage's jobs load (e.g. depth), by identity; ``rehearsal`` stands in for it."""
        ref = self.plan.inputs.model(rehearsal if self.rehearse and rehearsal else spec, key=key, rehearse=False)
        self.aux[key] = ref
        return ref


class RecipePlanner:
    def __init__(self, loaded: LoadedRecipe, rehearse: bool, hashes: HashCache, out_dir: Path | None = None):
        self.loaded = loaded
        self.recipe = loaded.recipe
        self.rehearse = rehearse
        exclude = list(loaded.output_dirs) + ([out_dir] if out_dir is not None else [])
        self.inputs = Inputs(loaded.base_dir, hashes, rehearse, exclude)
        self.jobs_by_stage: dict[str, list[Job]] = {}
        self.video_frames: dict[str, int | None] = {}  # job id -> frames of the video it makes
        self.problems: list[Problem] = []
        self.budgets: dict[str, int] = {}  # work spent against recipe-wide limits (see StagePlanner.spend)

    def line(self, *path: Any) -> int:
        lines = self.loaded.lines
        for n in range(len(path), -1, -1):
            if path[:n] in lines:
                return lines[path[:n]]
        return 0

    def sources(self, hooks: StagePlanner) -> list[Source]:
        """A :class:`Source` for each input the stage reads; ``[Source()]`` for a stage without one."""
        stage = hooks.stage
        names = stage.input_names
        if not names:
            return [Source()]
        value = names[0]
        if value in self.jobs_by_stage:
            upstream = self.recipe.stage(value)
            wants_video = stage.READS == "video" or (stage.READS == "any" and self.makes_video(upstream))
            if self.makes_video(upstream) != wants_video:
                what = "a video" if wants_video else "images"
                hooks.problem((stage.INPUT_FIELD,), f"stage {value!r} ({upstream.type}) does not produce {what}")
                return []
            return [Source(InputRef(job.output, None, job.job_id), job.seed, upstream.output_size(job.params),
                           self.video_frames.get(job.job_id)) for job in self.jobs_by_stage[value]]
        if stage.READS == "video":
            source, problem = self.inputs.video_file(stage, value)
            if problem:
                hooks.problem((stage.INPUT_FIELD,), problem)
            return [source] if source else []
        sources, problems = self.inputs.image_files(value)
        for problem in problems:
            hooks.problem((stage.INPUT_FIELD,), problem)
        return sources

    def makes_video(self, stage: StageConfig) -> bool:
        """Whether ``stage``'s jobs make videos: its VIDEO; one that READS "any" (images or a video) makes what
        its upstream stage makes."""
        names = stage.input_names
        if stage.READS == "any" and names and names[0] in self.jobs_by_stage:
            return self.makes_video(self.recipe.stage(names[0]))
        return stage.VIDEO

    def expand(self, index: int, stage: StageConfig, pick: PromptPicker | None = None) -> list[Job]:
        recipe, rehearse = self.recipe, self.rehearse
        hooks = StagePlanner(self, index, stage)
        config = type(stage)
        model = self.inputs.model(stage.model or recipe.model)  # type: ignore[arg-type]
        device = "cpu" if rehearse else (stage.device or recipe.device)
        dtype = "float32" if rehearse else (stage.dtype or recipe.dtype)
        sweeps = stage_sweeps(stage)
        keys = list(sweeps)
        own_seeds = stage.job_seeds()
        fixed = {name: getattr(stage, name) for name in config.identity_fields()}
        stage.plan_hook(hooks, fixed)
        family_params(hooks, stage, fixed)  # a model family's own defaults (Flux.1's guidance and true_cfg)
        video = self.makes_video(stage)
        aux = hooks.aux
        if not rehearse:  # LoRAs / VAE for the real model would not fit the tiny stand-in
            aux.update(self.inputs.model_sources(stage, model, recipe.pipeline_config, fixed))
        options = {name: getattr(stage, name) for name in config.runtime_fields() if name != "device"}
        if video:
            options["previews"] = None
        options = RunOptions(**options, allow_pickle=True if recipe.allow_pickle else None)
        bad_combos: set[tuple] = set()
        made: dict[tuple, tuple[Any, dict[str, Any]]] = {}  # params by their values (see below)
        jobs: list[Job] = []
        for item in self.sources(hooks):
            source = item.ref
            size = stage.plan_size(hooks, fixed, item.size)  # upscale: the input's size x scale
            if size is None:  # the stage reported why
                continue
            width, height = size
            if item.size is not None and not check_size(hooks, item, (width, height)):
                continue
            if rehearse:
                width, height = rehearse_size(width, height)
            seeds = own_seeds if own_seeds is not None else [item.seed if item.seed is not None else 0]
            mask = self.inputs.mask_for(stage, source)
            for values in itertools.product(*(sweeps[k] for k in keys)):
                combo = dict(zip(keys, values))
                steps, strength = combo["steps"], combo.get("strength")
                if strength is not None and 0 < strength and int(steps * strength) < 1:
                    if (steps, strength) not in bad_combos:  # once per combination, and carry on: every mistake
                        bad_combos.add((steps, strength))
                        hooks.problem(("strength",), f"strength {strength} x steps {steps} leaves no denoising step "
                                                     "(diffusers runs int(steps x strength)); raise steps or strength")
                    continue
                if rehearse:
                    floor = math.ceil(1 / strength) if strength else 1
                    steps = min(steps, max(REHEARSE_MAX_STEPS, floor))
                values = {k: float(v) if k in ("guidance", "strength") else v for k, v in combo.items()
                          if k not in ("prompt", "negative_prompt")}
                values.update(fixed, steps=steps, width=width, height=height)
                if rehearse:
                    stage.rehearse_params(values, item.frames)
                frames = stage.output_frames(values, item.frames)
                if video and not check_seed_span(hooks, seeds, stage.seed_span(values, frames)):
                    continue
                memo = (tuple(combo.items()), steps, width, height, item.frames if rehearse else None)
                try:  # the same values over many inputs (an img2img of 50,000 images): one params object
                    params, params_json = made[memo]
                except (KeyError, TypeError):  # TypeError: an unhashable value, never memoised
                    params = make_params(config, values, combo)
                    params_json = params.to_json()
                    try:
                        made[memo] = (params, params_json)
                    except TypeError:
                        pass
                prompt = combo.get("prompt") or ""
                shared = {
                    "v": PLAN_VERSION, "stage": stage.name, "type": stage.type, "model": model.identity(),
                    "dtype": dtype, "prompt": prompt, "negative_prompt": combo["negative_prompt"],
                    "params": params_json, "inputs": [source.identity()] if source else [],
                    "mask": mask.identity() if mask else None,
                }
                base = hashlib.sha256(canonical_json(shared).encode())
                for seed in seeds:
                    text, negative, *templates = pick(prompt, shared["negative_prompt"], seed) if pick else \
                        (prompt, shared["negative_prompt"], None, None)  # wildcards: the expanded prompt is identity
                    digest = base.copy() if text == prompt and negative == shared["negative_prompt"] else \
                        hashlib.sha256(canonical_json(dict(shared, prompt=text, negative_prompt=negative)).encode())
                    digest.update(f"\0seed={seed}".encode())
                    jobs.append(Job(digest.hexdigest(), stage.name, stage.type, text, negative, seed,
                                    params, model, device, dtype, "", [source] if source else [], mask, options, aux, *templates))
                    if video:
                        self.video_frames[jobs[-1].job_id] = frames
        name_outputs(stage, jobs, video)
        return jobs


def check_size(hooks: StagePlanner, source: Source, size: tuple[int, int]) -> bool:
    """A size taken from an input obeys the limits of an explicit one."""
    if all(8 <= side <= MAX_SIDE for side in size):
        return True
    name = source.ref.path if source.ref else "the input"
    in_w, in_h = source.size or (0, 0)
    hooks.problem_once("size", (hooks.stage.INPUT_FIELD,),
                       f"{name} is {in_w}x{in_h}: the size taken from it, {size[0]}x{size[1]}, is outside "
                       f"8..{MAX_SIDE} px a side (multiples of 8); set width/height")
    return False


def check_seed_span(hooks: StagePlanner, seeds: Sequence[int], span: int) -> bool:
    """The seeds a job's frames draw (up to its seed + ``span``) are seeds too."""
    top = (seeds[-1] if isinstance(seeds, range) else max(seeds)) if span else 0
    if top + span <= MAX_SEED:
        return True
    hooks.problem_once("seed", ("seeds" if hooks.stage.seeds is not None else "seed",),
                       f"seed {top} + {span} for the frames after the first is past the largest seed 2^64-1")
    return False


INPUT_STEM_LIMIT = 40  # characters of an input file's slugified stem in an output's name


def name_outputs(stage: StageConfig, jobs: list[Job], video: bool | None = None) -> None:
    """``<stage>/<prompt-slug>-<seed>-<id8>.png``; an image stage reading a file (not an upstream stage) keeps
    its name: ``<stage>/<input-stem>-<prompt-slug>-<seed>-<id8>.png`` (the stem slugified as prompts are, at most
    40 characters: ``IMG_0012.png`` -> ``img-0012``; inputs whose stems collide differ by the id8). A video
    stage's ``<stage>/<stage>.mp4`` (a subfolder per job when it has several). Names only: ids never change, and
    jobs with one id (input files with equal content) share one output, named after the first."""
    slugs: dict[str, str] = {}
    named: dict[str, str] = {}
    video = stage.VIDEO if video is None else video
    for job in jobs:
        if job.job_id in named:
            job.output = named[job.job_id]
            continue
        if job.prompt not in slugs:
            prompts = getattr(job.params, "prompts", None) or {}
            first = next(iter(prompts.values() if isinstance(prompts, dict) else prompts), "")
            slugs[job.prompt] = slugify(job.prompt or first or stage.name)
        slug = f"{slugs[job.prompt]}-{job.seed}-{job.job_id[:8]}"
        if not video:
            source = job.inputs[0] if job.inputs else None
            if source is not None and source.job_id is None:  # a file or glob match, not a stage's output
                slug = f"{slugify(PurePath(source.path).stem, INPUT_STEM_LIMIT)}-{slug}"
            job.output = f"{stage.name}/{slug}.png"
        elif len(jobs) == 1:
            job.output = f"{stage.name}/{stage.name}.mp4"
        else:
            job.output = f"{stage.name}/{slug}/{stage.name}.mp4"
        named[job.job_id] = job.output


def build_plan(loaded: LoadedRecipe, out_dir: Path, *, rehearse: bool = False,
               hashes: HashCache | None = None, max_jobs: int | None = None, seeds: SeedStore | None = None) -> Plan:
    """Expand ``loaded`` into jobs in dependency order. Raises RecipeError for plan-time problems, at once (no
    job built) for a recipe over ``max_jobs`` jobs (default: the recipe's ``max_jobs``, 100,000). Random seeds
    (-1): ``seeds``, default ``out_dir``'s (read only; :mod:`sdbatch.io.seedstore`)."""
    hashes = hashes or HashCache.open()
    seeds = seeds if seeds is not None else SeedStore.read(out_dir)
    written, loaded = loaded, apply_random_seeds(loaded, seeds)
    planner = RecipePlanner(loaded, rehearse, hashes, out_dir)
    order = stage_order(loaded)
    configs = stage_configs(loaded, seeds)  # each stage's rows / scalar sweep points, prompts from templates
    too_many = check_job_count(planner, order, max_jobs or loaded.max_jobs, configs)
    if too_many:
        raise RecipeError(str(loaded.path), [too_many])
    index = {stage.name: i for i, stage in enumerate(loaded.recipe.stages)}
    jobs: list[Job] = []
    for name in order:
        made = [job for config, pick in configs[name] for job in planner.expand(index[name], config, pick)]
        stage_jobs = list({job.job_id: job for job in made}.values()) if len(configs[name]) > 1 else made
        planner.jobs_by_stage[name] = stage_jobs
        jobs.extend(stage_jobs)
    hashes.save()
    if planner.problems:
        raise RecipeError(str(loaded.path), planner.problems)
    return Plan(jobs, order, out_dir, rehearse, seeds, random_seed_jobs(written, jobs, seeds))
