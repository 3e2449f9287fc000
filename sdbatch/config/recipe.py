"""The recipe: its Pydantic model (assembled from the stage types' own config models) and loading.

A recipe is a YAML file::

    name: wolves
    model: stabilityai/sd-turbo
    defaults: {steps: 25, guidance: 7.0}
    stages:
      - {name: sketch, type: generate, prompt: [a wolf, a fox], seeds: [1, 2]}
      - {name: painted, type: img2img, input: sketch, prompt: oil painting, strength: 0.8}

``load_recipe(path)`` returns a validated :class:`LoadedRecipe` or raises :class:`~sdbatch.errors.RecipeError`
carrying every problem as ``file:line: field.path: message``. This module never imports torch or diffusers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import Field, StrictBool, ValidationError, create_model

from ..errors import Problem, RecipeError
from ..stages import STAGE_MODULES, stage_configs
from . import checks
from .errors import pydantic_problems
from .expansions import Expansions
from .limits import MAX_JOBS
from .stage import Defaults, StageConfig
from .types import NAME_PATTERN, DeviceName, DtypeName, StrictModel
from .variants import sweepable_schema
from .yamlio import YamlError, load_yaml


class RayOptions(StrictModel):
    """``ray:`` what each Ray worker asks its node for (``--num-gpus`` / ``--num-cpus`` win). Not part of any
    job's id. Default: 1 GPU on a cluster with GPUs (else none) and 1 CPU."""

    num_gpus: Annotated[float, Field(ge=0, description="GPUs per Ray worker (fractions share a GPU)")] | None = None
    num_cpus: Annotated[float, Field(ge=0, description="CPUs per Ray worker")] | None = None


class RecipeBase(StrictModel):
    """A whole recipe. ``stages`` have had ``defaults`` merged into them (a stage's own value wins)."""

    name: Annotated[str, Field(pattern=NAME_PATTERN, max_length=100)]
    model: str | None = None
    device: DeviceName = "auto"
    dtype: DtypeName = "auto"
    executor: Literal["local", "ray"] = "local"
    ray: RayOptions = RayOptions()  # --executor ray: resources per worker
    pipeline_config: str | None = None  # for a single-file top-level model (a stage's own value wins)
    allow_pickle: StrictBool = False  # load pickle checkpoints (.ckpt/.pt/.pth/.bin): they can run code
    defaults: Defaults = Defaults()
    stages: list[StageConfig]

    def stage(self, name: str) -> StageConfig:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise KeyError(name)


Recipe = RecipeBase  # the type of a validated recipe; its model is :func:`recipe_model`


def recipe_model() -> type[RecipeBase]:
    """The recipe model for the registered stage types (``stages`` a union discriminated by ``type``)."""
    return _recipe_model(tuple(STAGE_MODULES.items()))


@lru_cache(maxsize=8)
def _recipe_model(modules: tuple[tuple[str, str], ...]) -> type[RecipeBase]:
    configs = tuple(stage_configs().values())
    stage = Annotated[Union[configs], Field(discriminator="type")] if len(configs) > 1 else configs[0]
    return create_model("Recipe", __base__=RecipeBase, __doc__=RecipeBase.__doc__,
                        stages=(Annotated[list[stage], Field(min_length=1)], ...))


@dataclass
class LoadedRecipe:
    """A validated recipe with where it came from."""

    recipe: RecipeBase
    path: Path
    text: str
    lines: dict[tuple, int]
    out_dir: Path | None = None  # ``--out``, when given
    max_jobs: int = MAX_JOBS  # ``--max-jobs``
    expansions: Expansions | None = None  # prompt files, wildcards, rows and scalar sweeps

    @property
    def base_dir(self) -> Path:
        return self.path.parent

    @property
    def output_dirs(self) -> list[Path]:
        """Where this recipe's outputs go, which input globs never read: ``outputs/`` beside it, the default
        output folders (``outputs/<name>`` and ``outputs/<name>-rehearsal`` at the project root) and ``--out``."""
        from ..io.outdir import default_out_dir

        name = self.recipe.name
        dirs = [self.base_dir / "outputs", default_out_dir(self.path, name), default_out_dir(self.path, name, True)]
        return dirs + [self.out_dir] if self.out_dir is not None else dirs


def _merge_defaults(raw: dict) -> dict[tuple, tuple]:
    """Merge ``defaults`` into each stage dict in place; return {stage path: defaults path} of merged keys."""
    origins: dict[tuple, tuple] = {}
    defaults = raw.get("defaults")
    stages = raw.get("stages")
    if not isinstance(defaults, dict) or not isinstance(stages, list):
        return origins
    for i, stage in enumerate(stages):
        if not isinstance(stage, dict):
            continue
        model = stage_configs().get(stage.get("type"))  # type: ignore[arg-type]
        if model is None:
            continue
        own_seeds = "seed" in stage or "seeds" in stage  # a stage's own seed(s) win over either form in defaults
        for key, value in defaults.items():
            if key in ("seed", "seeds") and own_seeds:
                continue
            if key in model.model_fields and key not in stage and key not in ("name", "type"):
                stage[key] = value
                origins[("stages", i, key)] = ("defaults", key)
    return origins


def apply_overrides(raw: Any, overrides: list[str]) -> list[Problem]:
    """Apply ``--set KEY=VALUE`` overrides (``defaults.steps=10``, ``stages.sketch.prompt=...``).

    ``stages.<name>`` addresses a stage by name. VALUE is parsed as a YAML value.
    """
    problems = []
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            problems.append(Problem(0, "--set", f"expected KEY=VALUE, got {item!r}"))
            continue
        try:
            value, _ = load_yaml(text) if text.strip() else ("", {})
        except YamlError as exc:
            problems.append(Problem(0, f"--set {key}", exc.message))
            continue
        parts = key.split(".")
        target = raw
        for depth, part in enumerate(parts[:-1]):
            if isinstance(target, list):  # stages.<name>
                match = [s for s in target if isinstance(s, dict) and s.get("name") == part]
                if not match:
                    problems.append(Problem(0, f"--set {key}", f"no stage named {part!r}"))
                    target = None
                    break
                target = match[0]
            elif isinstance(target, dict):
                target = target.setdefault(part, {} if parts[depth + 1] != "stages" else [])
            else:
                target = None
                break
        if isinstance(target, dict):
            target[parts[-1]] = value
        elif target is not None:
            problems.append(Problem(0, f"--set {key}", "cannot set this key"))
    return problems


def parse_recipe(text: str, path: Path, overrides: list[str] | None = None) -> LoadedRecipe:
    """Parse and validate recipe text (no file-system checks). Raises :class:`RecipeError`."""
    file = str(path)
    try:
        raw, lines = load_yaml(text)
    except YamlError as exc:
        raise RecipeError(file, [Problem(exc.line, "", exc.message)]) from None
    if not isinstance(raw, dict):
        raise RecipeError(file, [Problem(1, "", "the top level must be a mapping of recipe keys (name, model, stages, ...)")])
    problems = apply_overrides(raw, overrides or [])
    if "\\u" in text or "\\U" in text or overrides:  # only an escape (or the command line) makes a lone surrogate
        problems += checks.check_text(raw, lines)
    if problems:
        raise RecipeError(file, problems)
    raw.setdefault("name", path.stem)
    expansions, problems = Expansions.read_files(raw, lines, path)  # prompt: {file: ...}
    origins = _merge_defaults(raw)
    problems += expansions.pull(raw, lines, path, origins, stage_configs())  # rows:, scalar sweeps
    try:
        recipe = recipe_model().model_validate(raw)
    except ValidationError as exc:
        raise RecipeError(file, problems + expansions.own(pydantic_problems(
            exc, lines, origins, tuple(stage_configs()), model=recipe_model()))) from None
    problems += expansions.check(recipe, lines, tuple(stage_configs()))  # wildcards, rows, sweeps' values
    if problems:
        raise RecipeError(file, problems)
    loaded = LoadedRecipe(recipe, path, text, lines, expansions=expansions)
    problems = checks.check_graph(loaded)
    if problems:
        raise RecipeError(file, problems)
    return loaded


def load_recipe(path: str | os.PathLike, overrides: list[str] | None = None, check_files: bool = True, *,
                out_dir: Path | None = None, max_jobs: int | None = None) -> LoadedRecipe:
    """Load, validate and (by default) check the files it names. ``out_dir``: ``--out`` (never read as input);
    ``max_jobs``: the job limit its plans obey (default :data:`~sdbatch.config.limits.MAX_JOBS`)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise RecipeError(str(path), [Problem(0, "", f"cannot read recipe: {exc.strerror or exc}")]) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise RecipeError(str(path), [Problem(0, "", "the file is not UTF-8 text")]) from None
    loaded = parse_recipe(text, path, overrides)
    loaded.out_dir = out_dir
    loaded.max_jobs = max_jobs or MAX_JOBS
    if check_files:
        problems = checks.check_files(loaded)
        if problems:
            raise RecipeError(str(path), problems)
    return loaded


def recipe_json_schema() -> dict[str, Any]:
    """The recipe's JSON Schema (draft 2020-12), generated from the models."""
    schema = recipe_model().model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "sdbatch recipe"
    # `name` defaults to the file's stem
    schema["required"] = [key for key in schema.get("required", []) if key != "name"]
    runtime = {name for config in stage_configs().values() for name in config.runtime_fields()}
    return sweepable_schema(schema, runtime, keep={"RayOptions", "SeedRange"})  # width: [512, 768] sweeps
