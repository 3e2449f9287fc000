"""How many jobs a recipe makes, counted before any job is built (the ``--max-jobs`` limit).

Each stage's count is its seeds x sweeps (x input files, or x the jobs of the stage it reads), summed over the
configs it stands for (rows of a table, combinations of scalar sweeps: :mod:`sdbatch.config.variants`).
An upper bound: a combination that leaves no denoising step is refused later. Never imports torch.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from ..config.stage import SWEEP_DEFAULTS, StageConfig
from ..errors import Problem

if TYPE_CHECKING:
    from .plan import RecipePlanner


def stage_sweeps(stage: StageConfig) -> dict[str, list[Any]]:
    """The stage's swept values (its own, else the defaults), each list without duplicates."""
    sweeps = {key: getattr(stage, key, None) or SWEEP_DEFAULTS.get(key) for key in stage.SWEEPS}
    return {k: list(dict.fromkeys(v)) for k, v in sweeps.items() if v is not None}


def count_jobs(planner: RecipePlanner, order: list[str], configs: dict[str, list[Any]] | None = None
               ) -> dict[str, tuple[int, list[tuple[str, int]]]]:
    """Each stage's job count with its factors (seeds x sweeps x inputs), from the recipe alone: no job is
    built. A stage reading another gets one input per job of it. ``configs``: stage name -> the configs (with
    their prompt pickers) it stands for, default the stage itself."""
    stages = {stage.name: stage for stage in planner.recipe.stages}
    counts: dict[str, tuple[int, list[tuple[str, int]]]] = {}
    for name in order:
        stage = stages[name]
        variants = [c for c, _ in configs[name]] if configs and name in configs else [stage]
        if len(variants) == 1:
            factors = _factors(variants[0])
        else:  # rows, combinations of scalar sweeps: the jobs of each config, summed
            factors = [(f"{len(variants):,} rows/sweep points, seeds x sweeps",
                        sum(math.prod(n for _, n in _factors(c)) for c in variants))]
        source = stage.input_names[0] if stage.input_names else None
        if source in counts:
            factors.append((f"inputs from {source!r}", counts[source][0]))
        elif source is not None and stage.READS != "video":
            factors.append(("input files", len(planner.inputs.files(source))))
        counts[name] = (math.prod(n for _, n in factors), factors)
    return counts


def _factors(stage: StageConfig) -> list[tuple[str, int]]:
    seeds = stage.job_seeds()
    factors = [("seeds", len(seeds) if seeds is not None else 1)]
    return factors + [(key, len(values)) for key, values in stage_sweeps(stage).items()]


def _number(n: int) -> str:
    return f"{n:,}" if n < 10**15 else f"about {float(n):.3g}"


def check_job_count(planner: RecipePlanner, order: list[str], limit: int, configs: dict[str, list[Any]] | None = None
                    ) -> Problem | None:
    """The recipe over ``limit`` jobs, naming the first stage over it alone, else the largest."""
    counts = count_jobs(planner, order, configs)
    total = sum(n for n, _ in counts.values())
    if total <= limit:
        return None
    over = next((name for name in order if counts[name][0] > limit), None)
    name = over or max(order, key=lambda k: counts[k][0])
    n, factors = counts[name]
    shown = " x ".join(f"{label} {_number(count)}" for label, count in factors if count != 1) or "1"
    index = next(i for i, stage in enumerate(planner.recipe.stages) if stage.name == name)
    what = "is" if over else f"make the recipe {_number(total)} jobs,"
    return Problem(planner.line("stages", index), f"stages[{index}]",
                   f"{_number(n)} jobs ({shown}) {what} over the limit of {limit:,}; raise it with --max-jobs")
