"""``refiner:`` on ``generate``: the SDXL refiner as diffusers' ensemble of expert denoisers (issue 13).

A recipe's key (:class:`sdbatch.config.refiner.Refiner`)::

    - name: xl
      type: generate
      model: stabilityai/stable-diffusion-xl-base-1.0
      refiner:
        model: stabilityai/stable-diffusion-xl-refiner-1.0   # hub id, local diffusers folder, or a built-in
        switch_at: 0.8     # denoising_end of the base = denoising_start of the refiner, in (0, 1)

A refined job's image equals plain diffusers' two-pipeline ensemble with a fresh CPU generator per call::

    latents = base(prompt, num_inference_steps=n, guidance_scale=g, width=w, height=h, denoising_end=switch_at,
                   output_type="latent", generator=torch.Generator("cpu").manual_seed(seed)).images
    image = refiner(prompt, num_inference_steps=n, guidance_scale=g, denoising_start=switch_at, image=latents,
                    generator=torch.Generator("cpu").manual_seed(seed)).images[0]

where ``refiner = StableDiffusionXLImg2ImgPipeline.from_pretrained(refiner_model, text_encoder_2=base.text_encoder_2,
vae=base.vae)`` (each shared only when its config equals the base's; :mod:`sdbatch.runtime.refiner`). What a job
keeps (:class:`~sdbatch.config.refiner.RefinerRef`, in ``job.params.refiner``, so in its id and the manifest):
the model as written, its identity (hub commit / folder sha256 / built-in version) and ``switch_at``; a generate
without ``refiner`` keeps its old id. The refiner model is ``job.aux_models["refiner"]`` (``--rehearse``:
``sdbatch/tiny-sdxl-refiner``).

Checked at validate, each at its field: ``switch_at`` outside (0, 1) (the model's own bounds), a base model of
another family than SDXL, a refiner model that is missing or not an SDXL refiner (a folder or cached snapshot
whose ``model_index.json`` is not ``StableDiffusionXLImg2ImgPipeline``; a single ``.safetensors`` file is not
supported), a ``switch_at`` that leaves the base or the refiner no denoising step for the job's steps (counted
on each model's scheduler timesteps as diffusers cuts them), and ``refiner`` beside ``controlnet``,
``ip_adapter`` or ``hires`` (not supported: refused). LoRAs and embeddings apply to the base pass only.
``previews`` cover both passes (numbered 1..steps across them). Never imports torch.
"""

from __future__ import annotations

import json
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any, Iterator

from ..config.refiner import RefinerRef

if TYPE_CHECKING:
    from ..core.job import Job, ModelRef
    from ..core.plan import StagePlanner
    from .base import Rendered, StageContext

TINY_REFINER = "sdbatch/tiny-sdxl-refiner"
REFINER_CLASS = "StableDiffusionXLImg2ImgPipeline"
#: keys of a stage that a refined generate does not support (refused at validate)
NOT_WITH_REFINER = ("controlnet", "ip_adapter", "hires")


# ------------------------------------------------------------------------------------------ planning
def check_refiner_spec(spec: str, base_dir: Path, allow_pickle: bool) -> str | None:
    """A problem with ``refiner.model`` (built-in, local diffusers folder, hub id), or None."""
    from ..sources.specs import HUB_ID, local_model_path
    from ..sources.tiny import BUILTIN_PREFIX
    from ..sources.weights import WEIGHT_SUFFIXES, folder_problem

    if spec.startswith(BUILTIN_PREFIX):
        return None if spec == TINY_REFINER else \
            f"{spec!r} is not an SDXL refiner (the built-in refiner is {TINY_REFINER!r})"
    path = local_model_path(spec, base_dir)
    if path is None:
        if PurePath(spec).suffix.lower() in WEIGHT_SUFFIXES or spec.startswith((".", "/", "~")):
            return f"{spec!r}: no such refiner folder (relative to {base_dir})"
        if not HUB_ID.match(spec):
            return f"{spec!r}: no such refiner folder (relative to {base_dir}), nor a hub id (org/name)"
        from ..sources.hub import cached_hub_snapshot

        cached = cached_hub_snapshot(spec.partition("@")[0], spec.partition("@")[2] or "main")
        return _class_problem(spec, cached[1]) if cached else None  # not cached: found at run (one-line error)
    if path.is_file():
        return (f"{spec!r}: a single-file refiner is not supported; give its diffusers folder (with "
                f"model_index.json) or hub id")
    problem = _class_problem(spec, path)
    if problem:
        return problem
    problem = folder_problem(path, allow_pickle)
    return f"{spec!r}: {problem}" if problem else None


def _class_problem(spec: str, folder: Path) -> str | None:
    try:
        name = json.loads((folder / "model_index.json").read_text()).get("_class_name")
    except (OSError, ValueError, AttributeError):
        return f"{spec!r}: folder is not a diffusers pipeline (no readable model_index.json)"
    if name != REFINER_CLASS:
        return f"{spec!r} is not an SDXL refiner: its model_index.json names {name}, not {REFINER_CLASS}"
    return None


def scheduler_config(ref: ModelRef) -> dict[str, Any]:
    """A model's ``scheduler/scheduler_config.json`` as far as it is on disk (a built-in's, a folder's, a cached
    snapshot's); SDXL's own (leading spacing, steps_offset 1) when it is not."""
    from ..sources.tiny.configs import SDXL_SCHEDULER

    if ref.source != "builtin" and ref.path and Path(ref.path).is_dir():
        try:
            return json.loads((Path(ref.path) / "scheduler" / "scheduler_config.json").read_text())
        except (OSError, ValueError):
            pass
    return dict(SDXL_SCHEDULER)


def timesteps(config: dict[str, Any], steps: int) -> list[float]:
    """The scheduler's timesteps for ``steps`` (diffusers' ``set_timesteps`` spacings), without torch."""
    total = int(config.get("num_train_timesteps") or 1000)
    spacing = config.get("timestep_spacing") or "leading"
    if spacing == "linspace":
        return [(total - 1) * i / max(steps - 1, 1) for i in reversed(range(steps))]
    if spacing == "trailing":
        ratio = total / steps
        return [float(round(total - i * ratio) - 1) for i in range(steps)]
    ratio = total // steps
    return [float(i * ratio + int(config.get("steps_offset") or 0)) for i in reversed(range(steps))]


def split_steps(base: dict[str, Any], refiner: dict[str, Any], steps: int, switch_at: float) -> tuple[int, int, int]:
    """(base steps, refiner steps, cutoff timestep) as diffusers cuts the schedules at ``switch_at``: the base
    runs the timesteps at or above the cutoff, the refiner those below it (each on its own scheduler)."""
    total = int(base.get("num_train_timesteps") or 1000)
    cutoff = int(round(total - switch_at * total))
    ran = sum(t >= cutoff for t in timesteps(base, steps))
    rest = sum(t < cutoff for t in timesteps(refiner, steps))
    return ran, rest, cutoff


def plan_refiner(stage: Any, planner: StagePlanner, fixed: dict[str, Any]) -> None:
    """Check ``stage.refiner`` and put its :class:`RefinerRef` in ``fixed['refiner']`` (None without one); the
    model goes to ``planner.aux['refiner']`` (see the module's docstring)."""
    from ..config.stage import REHEARSE_MAX_STEPS
    from ..core.jobcount import stage_sweeps
    from ..sources.families import FAMILY_NAMES, family_of

    refiner = getattr(stage, "refiner", None)
    fixed["refiner"] = None
    if refiner is None:
        return
    plan = planner.plan
    inputs, recipe = plan.inputs, plan.recipe
    base_spec = stage.model or recipe.model
    family = family_of(base_spec, inputs.base)
    if family not in (None, "sdxl"):
        planner.problem(("refiner",), f"the SDXL refiner needs an SDXL base model, but the stage's model "
                                      f"{base_spec!r} is {FAMILY_NAMES.get(family, family)}")
    for key in NOT_WITH_REFINER:
        if getattr(stage, key, None):
            planner.problem(("refiner",), f"refiner with {key} is not supported in one generate stage; drop one "
                                          f"of them (a refined image can go through img2img in a later stage)")
    problem = check_refiner_spec(refiner.model, inputs.base, bool(recipe.allow_pickle))
    if problem:
        planner.problem(("refiner", "model"), problem)
        return
    ref = planner.aux_model("refiner", refiner.model, TINY_REFINER)
    base_config, refiner_config = scheduler_config(inputs.model(base_spec)), scheduler_config(ref)
    for steps in stage_sweeps(stage)["steps"]:
        steps = min(steps, REHEARSE_MAX_STEPS) if planner.rehearse else steps
        ran, rest, cutoff = split_steps(base_config, refiner_config, steps, refiner.switch_at)
        if not ran or not rest:
            who, fix = ("the base", "raise switch_at") if not ran else ("the refiner", "lower switch_at")
            planner.problem_once(f"refiner-steps-{steps}", ("refiner", "switch_at"),
                                 f"switch_at {refiner.switch_at} with steps {steps} leaves {who} no denoising "
                                 f"step (the base runs the timesteps >= {cutoff}, the refiner those below); "
                                 f"{fix} or raise steps")
    fixed["refiner"] = RefinerRef(model=refiner.model, identity=ref.identity(), switch_at=float(refiner.switch_at))


# -------------------------------------------------------------------------------------------- render
def render_refined(jobs: list[Job], ctx: StageContext) -> Iterator[Rendered]:
    """A batch of refined generate jobs: the base to ``switch_at`` (latents), then the refiner from there."""
    from ..runtime.refiner import RefinerPrompts, base_adapters_off, refiner_pipeline
    from .base import Rendered
    from .diffusion import previews_for, prompt_kwargs, run_pipeline

    p = jobs[0].params
    switch_at = float(p.refiner.switch_at)
    base = ctx.models.pipeline(jobs[0], "text2img")
    if type(base).__name__ != "StableDiffusionXLPipeline":  # a base whose family validate could not tell
        raise RuntimeError(f"the SDXL refiner needs an SDXL base model, but {jobs[0].model.id!r} loads as "
                           f"{type(base).__name__}")
    previews = previews_for(jobs)  # one callback over both passes: steps 1..n
    latents = run_pipeline(base, jobs, ctx, previews, width=p.width, height=p.height, denoising_end=switch_at,
                           output_type="latent")
    refiner = refiner_pipeline(ctx, jobs[0], base)
    with base_adapters_off(base, jobs[0]):  # LoRAs are the base's: not in a shared text_encoder_2's embeddings
        embeds = prompt_kwargs(refiner, jobs, RefinerPrompts(ctx, jobs[0]), p.guidance)
    images = run_pipeline(refiner, jobs, ctx, previews, embeds=embeds, image=latents, denoising_start=switch_at)
    if previews is not None:
        yield from previews.rendered()
    for job, image in zip(jobs, images):
        yield Rendered(job, job.output, image)
