"""The configs the planner expands for each stage, and the prompt of each job when prompts are templates.

A stage stands for one config, or several (rows of a table, combinations of scalar sweeps; see
:mod:`sdbatch.config.variants`). A row's ``-1`` seed is drawn for that row (keys ``<stage>/rows/<k>/seed``,
...). A config whose prompts are wildcard templates (:mod:`sdbatch.config.wildcards`) gets a
:class:`PromptPicker`: with ``wildcards: combinatorial`` its prompt list is every expansion (and the picker
only says which template each came from); with ``random`` the picker draws each job's prompt from its seed.
A config without templates is left exactly as it is (no picker): its job ids do not change. Never imports
torch (nor dynamicprompts, unless a prompt is a template).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..config.promptfile import FIELDS
from ..config.wildcards import Wildcards, is_template
from ..io.seedstore import SeedStore

if TYPE_CHECKING:
    from ..config.recipe import LoadedRecipe
    from ..config.stage import StageConfig


class PromptPicker:
    """``(prompt, negative) -> (prompt, negative, prompt template, negative template)`` for a job's seed."""

    def __init__(self, wildcards: Wildcards, mode: str, origins: dict[str, str]):
        self.wildcards = wildcards
        self.random = mode == "random"
        self.origins = origins  # combinatorial: expanded prompt -> its template

    def __call__(self, prompt: str, negative: str, seed: int) -> tuple[str, str, str | None, str | None]:
        (prompt, prompt_template), (negative, negative_template) = self._one(prompt, seed), self._one(negative, seed)
        return prompt, negative, prompt_template, negative_template

    def _one(self, text: str, seed: int) -> tuple[str, str | None]:
        if self.random and is_template(text):
            return self.wildcards.expand_random(text, seed), text
        return text, self.origins.get(text)


def prepare(config: StageConfig, wildcards: Wildcards) -> tuple[StageConfig, PromptPicker | None]:
    """``config`` ready to expand, with its picker (None when none of its prompts is a template)."""
    lists = {key: getattr(config, key, None) for key in FIELDS}
    if not any(isinstance(t, str) and is_template(t) for texts in lists.values() for t in texts or ()):
        return config, None
    mode = getattr(config, "wildcards", None) or "random"
    origins: dict[str, str] = {}
    if mode == "combinatorial":
        update = {}
        for key, texts in lists.items():
            if not texts:
                continue
            expanded: list[str] = []
            for text in texts:
                made = wildcards.expand_all(text) if is_template(text) else [text]
                for prompt in made:
                    if text != prompt:
                        origins.setdefault(prompt, text)
                expanded.extend(made)
            update[key] = list(dict.fromkeys(expanded))
        config = config.model_copy(update=update)
    return config, PromptPicker(wildcards, mode, origins)


def stage_configs(loaded: LoadedRecipe, store: SeedStore) -> dict[str, list[tuple[StageConfig, PromptPicker | None]]]:
    """Stage name -> the configs it stands for, each with its picker (``loaded``'s stages have their random
    seeds already; a row's own ``-1`` is drawn here)."""
    expansions = loaded.expansions
    if expansions is None:
        return {stage.name: [(stage, None)] for stage in loaded.recipe.stages}
    out: dict[str, list[tuple[StageConfig, PromptPicker | None]]] = {}
    for stage in loaded.recipe.stages:
        configs = expansions.configs(stage)
        variants = expansions.stages.get(stage.name)
        if variants is not None and variants.rows is not None:  # configs row by row, each row's sweep points
            per_row = max(1, len(configs) // max(1, len(variants.row_configs)))
            configs = [_row_seeds(config, k // per_row, store) for k, config in enumerate(configs)]
        out[stage.name] = [prepare(config, expansions.wildcards) for config in configs]
    return out


def _row_seeds(config: StageConfig, k: int, store: SeedStore) -> StageConfig:
    prefix = f"{config.name}/"

    def draw(key: str, count: int) -> int:
        return store.seed(f"{prefix}rows/{k}/{key[len(prefix):]}", count)

    return config.with_random_seeds(draw)
