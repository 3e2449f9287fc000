"""A recipe's random seeds (``-1``) replaced by the output folder's drawn ones before it is planned.

The planner sees only real seeds: ``build_plan`` calls :func:`apply_random_seeds` first, so job ids, output
names, a video stage's frame seeds and an interpolate path are those of the drawn seeds, and a stage reading a
random-seeded stage inherits its drawn seed as it would an explicit one. What is drawn and stored, and when,
is :mod:`sdbatch.io.seedstore`'s. Never imports torch or diffusers.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from ..io.seedstore import SeedStore
from .job import Job

if TYPE_CHECKING:
    from ..config.recipe import LoadedRecipe


def apply_random_seeds(loaded: LoadedRecipe, store: SeedStore) -> LoadedRecipe:
    """``loaded`` with every stage's ``-1`` seeds replaced by ``store``'s (drawn now when it has none yet)."""
    stages = [stage.with_random_seeds(store.seed) for stage in loaded.recipe.stages]
    if all(new is old for new, old in zip(stages, loaded.recipe.stages)):
        return loaded
    return dataclasses.replace(loaded, recipe=loaded.recipe.model_copy(update={"stages": stages}))


def random_seed_jobs(loaded: LoadedRecipe, jobs: list[Job], store: SeedStore) -> dict[str, str]:
    """job id -> ``"stored"`` or ``"provisional"`` for each job whose seed (or path of seeds, or an upstream
    job's) is a random one: stored in the output folder, or drawn for this plan only. ``loaded`` is the recipe
    as written (with its ``-1``)."""
    values: dict[str, list[tuple[range, str]]] = {}
    for stage in loaded.recipe.stages:
        for key, count in stage.random_seeds():
            kind = "stored" if key in store.stored else "provisional"
            seed = store.seed(key, count)
            values.setdefault(stage.name, []).append((range(seed, seed + count), kind))
    marks: dict[str, str] = {}
    if not values:  # no -1 anywhere: nothing to look at (a 100,000-job plan stays as fast)
        return marks
    for job in jobs:  # in dependency order: an upstream job is marked before its readers
        kinds = {kind for seeds, kind in values.get(job.stage, ())
                 if job.seed in seeds or any(s in seeds for s in getattr(job.params, "seeds", None) or ())}
        kinds.update(marks[ref.job_id] for ref in job.inputs if ref.job_id in marks)
        if kinds:
            marks[job.job_id] = "provisional" if "provisional" in kinds else "stored"
    return marks
