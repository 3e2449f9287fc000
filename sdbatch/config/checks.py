"""Checks of a validated recipe beyond its model: the stage graph, and the files and models it names."""

from __future__ import annotations

import glob as globlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import Problem
from ..sources.specs import check_model_spec, check_pipeline_config, check_vae_spec, check_weights_file
from .families import family_problems
from .images import check_image
from .stage import StageConfig
from .types import IMAGE_SUFFIXES
from .yamlio import format_path

if TYPE_CHECKING:
    from .recipe import LoadedRecipe


def line_of(lines: dict[tuple, int], path: tuple) -> int:
    """The line of ``path``, or of the nearest enclosing value that has one."""
    return next((lines[path[:n]] for n in range(len(path), -1, -1) if path[:n] in lines), 0)


def _line(loaded: LoadedRecipe, *path: Any) -> int:
    return line_of(loaded.lines, path)


def _lone_surrogate(text: str) -> str | None:
    if text.isascii():
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return text[exc.start]
    return None


def check_text(raw: Any, lines: dict[tuple, int]) -> list[Problem]:
    """A problem for every string (key or value) holding a lone surrogate (a YAML ``"\\ud800"`` escape): it is
    not text, and could be neither tokenized nor written to the manifest."""
    problems: list[Problem] = []
    stack: list[tuple[tuple, Any]] = [((), raw)]
    seen: set[int] = set()  # an alias's value once
    while stack:
        path, node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for key, value in items:
            bad = (_lone_surrogate(key) if isinstance(key, str) else None) or \
                (_lone_surrogate(value) if isinstance(value, str) else None)
            if bad:
                where = path + (key,)
                problems.append(Problem(line_of(lines, where), format_path(where),
                                        f"contains a lone surrogate (\\u{ord(bad):04x}), which is not text: write the "
                                        "character itself, or a pair of escapes for one above U+FFFF"))
            elif isinstance(value, (dict, list)):
                stack.append((path + (key,), value))
    return sorted(problems, key=lambda p: p.line)


def check_graph(loaded: LoadedRecipe) -> list[Problem]:
    recipe = loaded.recipe
    problems: list[Problem] = []
    names: dict[str, int] = {}
    for i, stage in enumerate(recipe.stages):
        if stage.name in names:
            problems.append(Problem(_line(loaded, "stages", i, "name"), f"stages[{i}].name",
                                    f"duplicate stage name {stage.name!r} (also stages[{names[stage.name]}])"))
        else:
            names[stage.name] = i
        if (stage.model or recipe.model) is None:
            problems.append(Problem(_line(loaded, "stages", i), f"stages[{i}].model",
                                    "no model: set 'model' at the top level or on the stage"))
    # cycles among stage inputs
    graph = {s.name: [n for n in s.input_names if n in names] for s in recipe.stages}
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in graph.get(node, []):
            if state.get(nxt) == 1:
                cycle = trail[trail.index(nxt):] + [nxt] if nxt in trail else [node, nxt]
                i = names[node]
                problems.append(Problem(_line(loaded, "stages", i, "input"), f"stages[{i}].input",
                                        "input cycle: " + " -> ".join(cycle)))
            elif state.get(nxt) is None:
                visit(nxt, trail + [nxt])
        state[node] = 2

    for name in graph:
        if name not in state:
            visit(name, [name])
    return problems


def resolve_input_files(pattern: str, base_dir: Path, suffixes: set[str], exclude: Sequence[Path] = ()) -> list[Path]:
    """Files named by a file, folder or glob relative to ``base_dir``, sorted by name.

    A glob's matches never come from a folder of ``exclude`` (the recipe's output folders: a recursive glob
    would read last night's outputs as inputs), unless the glob's fixed part lies inside that folder.
    """
    target = Path(pattern).expanduser()
    if not target.is_absolute():
        target = base_dir / target
    try:
        if target.is_dir():
            return sorted(p for p in target.iterdir() if p.is_file() and p.suffix.lower() in suffixes)
        if target.is_file():
            return [target]
    except OSError:  # e.g. a name too long: no such file
        return []
    if globlib.has_magic(pattern):
        fixed = Path(*_fixed_parts(target))
        skip = [d for d in _forms(exclude) if not _inside(os.path.abspath(fixed), d)]
        return sorted(Path(p) for p in globlib.glob(str(target), recursive=True)
                      if not any(_inside(os.path.abspath(p), d) for d in skip)
                      and Path(p).is_file() and Path(p).suffix.lower() in suffixes)
    return []


def _fixed_parts(target: Path) -> list[str]:
    parts = []
    for part in target.parts:
        if globlib.has_magic(part):
            break
        parts.append(part)
    return parts


def _forms(folders: Sequence[Path]) -> list[str]:
    """Each folder as written (absolute) and resolved (symlinks followed)."""
    return list(dict.fromkeys(form for d in folders for form in (os.path.abspath(d), os.path.realpath(d))))


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def looks_like_path(text: str) -> bool:
    return "/" in text or "\\" in text or globlib.has_magic(text) or Path(text).suffix != ""


def image_problems(paths: list[Path], base: Path, line: int, field: str) -> list[Problem]:
    """A problem for each file that is not a readable still image within the limits (see ``check_image``)."""
    problems = []
    for path in paths:
        problem = check_image(path)[1]
        if problem:
            problems.append(Problem(line, field, f"{os.path.relpath(path, base)}: {problem}"))
    return problems


def check_files(loaded: LoadedRecipe) -> list[Problem]:
    recipe, base = loaded.recipe, loaded.base_dir
    problems: list[Problem] = []
    stage_names = {s.name for s in recipe.stages}
    for i, stage in enumerate(recipe.stages):
        field_name = stage.INPUT_FIELD
        value = getattr(stage, field_name, None)
        inputs: list[Path] = []
        if isinstance(value, str) and value not in stage_names and stage.READS != "video":
            inputs = resolve_input_files(value, base, IMAGE_SUFFIXES, loaded.output_dirs)
            problems.extend(image_problems(inputs, base, _line(loaded, "stages", i, field_name),
                                           f"stages[{i}].{field_name}"))
            if not inputs:
                if looks_like_path(value):
                    what = "matches no image file" if globlib.has_magic(value) else "no such image file or folder"
                    problems.append(Problem(_line(loaded, "stages", i, field_name), f"stages[{i}].{field_name}",
                                            f"{value!r}: {what} (relative to {base})"))
                else:
                    problems.append(Problem(_line(loaded, "stages", i, field_name), f"stages[{i}].{field_name}",
                                            f"{value!r} names no stage (stages: {', '.join(sorted(stage_names))})"
                                            " and no file"))
        mask = getattr(stage, "mask", None)
        if isinstance(mask, str):
            masks = resolve_input_files(mask, base, IMAGE_SUFFIXES, loaded.output_dirs)
            line = _line(loaded, "stages", i, "mask")
            problems.extend(image_problems(masks, base, line, f"stages[{i}].mask"))
            if not masks:
                problems.append(Problem(line, f"stages[{i}].mask", f"{mask!r}: no such mask file, folder or glob match"))
            elif len(masks) > 1 or Path(base / mask).is_dir():
                if value in stage_names:
                    problems.append(Problem(line, f"stages[{i}].mask",
                                            "several masks can only be matched to file inputs (by file stem); "
                                            "use one mask file for a stage input"))
                else:
                    stems = {m.stem for m in masks}
                    missing = [p.name for p in inputs if p.stem not in stems]
                    if missing:
                        problems.append(Problem(line, f"stages[{i}].mask",
                                                f"no mask with the stem of input {missing[0]!r}"
                                                + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")))
        # each config the stage stands for (a row, a sweep of model / LoRAs / VAE), each problem once
        for config in (loaded.expansions.configs(stage) if loaded.expansions else [stage]):
            model = config.model or recipe.model
            if model:
                problem = check_model_spec(model, base, allow_pickle=recipe.allow_pickle)
                if problem:
                    where = ("stages", i, "model") if config.model and ("stages", i, "model") in loaded.lines \
                        else ("model",)
                    problems.append(Problem(_line(loaded, *where), format_path(where), problem))
            problems.extend(p for p in _check_sources(loaded, i, config) if p not in problems)
            problems.extend(p for p in family_problems(loaded, i, config, model, _where) if p not in problems)
    return list({(p.line, p.path, p.message, p.file): p for p in problems}.values())


def _where(loaded: LoadedRecipe, i: int, *path: Any) -> tuple[int, str]:
    """(line, shown path) of a stage value that may have come from ``defaults``."""
    own = ("stages", i) + path
    if own[:3] in loaded.lines:
        return _line(loaded, *own), format_path(own)
    if ("defaults",) + path[:1] in loaded.lines:
        return _line(loaded, "defaults", *path), f"{format_path(own)} (from {format_path(('defaults',) + path)})"
    return _line(loaded, "stages", i), format_path(own)


def _check_sources(loaded: LoadedRecipe, i: int, stage: StageConfig) -> list[Problem]:
    """LoRA and embedding files, VAE and pipeline config of stage ``i``."""
    recipe, base = loaded.recipe, loaded.base_dir
    problems = []
    for j, lora in enumerate(stage.loras or []):
        problem = check_weights_file(lora.path, base, recipe.allow_pickle, "LoRA")
        if problem:
            line, shown = _where(loaded, i, "loras", j, "path")
            problems.append(Problem(line, shown, problem))
    for j, embedding in enumerate(stage.embeddings or []):  # textual inversion: the LoRAs' pickle policy
        problem = check_weights_file(embedding.path, base, recipe.allow_pickle, "embedding")
        if problem:
            line, shown = _where(loaded, i, "embeddings", j, "path")
            problems.append(Problem(line, shown, problem))
    if stage.vae:
        problem = check_vae_spec(stage.vae, base, recipe.allow_pickle)
        if problem:
            line, shown = _where(loaded, i, "vae")
            problems.append(Problem(line, shown, problem))
    if stage.pipeline_config:
        problem = check_pipeline_config(stage.pipeline_config, base)
        if problem:
            line, shown = _where(loaded, i, "pipeline_config")
            problems.append(Problem(line, shown, problem))
    if recipe.pipeline_config and i == 0:  # the top-level value, checked once
        problem = check_pipeline_config(recipe.pipeline_config, base)
        if problem:
            problems.append(Problem(_line(loaded, "pipeline_config"), "pipeline_config", problem))
    return problems


