"""What a recipe names beyond its own text, read and checked when it is validated: prompt files
(:mod:`.promptfile`), wildcard templates (:mod:`.wildcards`), rows tables and scalar sweeps (:mod:`.variants`).

:func:`sdbatch.config.recipe.parse_recipe` calls, in order: :meth:`Expansions.read_files` (before ``defaults``
are merged), :meth:`Expansions.pull` (after), the recipe model's validation (its problems through
:meth:`Expansions.own`), then :meth:`Expansions.check`. The planner asks :meth:`Expansions.configs` for the
configs a stage stands for. Never imports torch (nor dynamicprompts, unless a prompt is a template).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from ..errors import Problem
from .checks import line_of
from .promptfile import FIELDS, Places, follow_defaults, read_prompt_files
from .variants import StageVariants, own_problems, pull_variants
from .wildcards import Wildcards, is_template
from .yamlio import format_path


@dataclass
class Expansions:
    wildcards: Wildcards
    places: Places = field(default_factory=dict)  # recipe path -> (file, line) of prompts read from files
    pulled: dict[int, StageVariants] = field(default_factory=dict)  # by stage index
    stages: dict[str, StageVariants] = field(default_factory=dict)  # by stage name, once validated

    @classmethod
    def read_files(cls, raw: dict, lines: dict[tuple, int], recipe: Path) -> tuple[Expansions, list[Problem]]:
        """Read the prompt files (``prompt: {file: ...}``) of ``raw`` into it."""
        found = cls(Wildcards(recipe.parent))
        return found, read_prompt_files(raw, lines, recipe, found.places)

    def pull(self, raw: dict, lines: dict[tuple, int], recipe: Path, origins: dict[tuple, tuple],
             configs: dict[str, type[BaseModel]]) -> list[Problem]:
        """Take the scalar sweeps and rows tables out of the (defaults-merged) stages of ``raw``."""
        follow_defaults(self.places, origins)
        self.pulled, problems = pull_variants(raw, lines, recipe, configs)
        return problems

    def own(self, problems: list[Problem]) -> list[Problem]:
        """The recipe model's problems, less those a rows table's first row caused (reported at the row)."""
        return own_problems(problems, self.pulled) if self.pulled else problems

    def check(self, recipe: Any, lines: dict[tuple, int], stage_types: tuple[str, ...]) -> list[Problem]:
        """Validate the sweeps' other values and the rows; check every wildcard template."""
        problems: list[Problem] = []
        for i, variants in self.pulled.items():
            problems += variants.validate(recipe.stages[i], lines, stage_types)
            self.stages[recipe.stages[i].name] = variants
        for i, stage in enumerate(recipe.stages):
            problems += self._templates(stage, ("stages", i), lines, None)
            variants = self.pulled.get(i)
            for k, config in enumerate(variants.row_configs if variants else ()):
                assert variants is not None and variants.rows is not None
                row = variants.rows[k]
                problems += self._templates(config, ("stages", i, "rows", k), {}, (variants.rows_file, row.line))
        return problems

    def _templates(self, stage: Any, where: tuple, lines: dict[tuple, int], place: tuple[str, int] | None
                   ) -> list[Problem]:
        problems = []
        for key in FIELDS:
            for k, text in enumerate(getattr(stage, key, None) or ()):
                if not isinstance(text, str) or not is_template(text):
                    continue
                message = self.wildcards.problem(text)
                if message is None:
                    continue
                path = where + (key, k)
                file, line = place or self.places.get(path) or (None, line_of(lines, path))
                problems.append(Problem(line, format_path(path), message, file=file))
        return problems

    def configs(self, stage: Any) -> list[Any]:
        """The configs ``stage`` stands for: itself, unless it has rows or sweeps a scalar parameter."""
        variants = self.stages.get(stage.name)
        return [stage] if variants is None else variants.configs(stage)
