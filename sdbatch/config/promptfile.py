"""``prompt: {file: prompts.txt}``: a sweep of the prompts in a text file beside the recipe.

One prompt a line; a line whose first non-blank character is ``#`` is a comment, blank lines are skipped.
The file is read when the recipe is validated and its prompts replace the mapping (``negative_prompt`` takes
the same form); a problem with one of them is reported at the file's own ``file:line``. Where each prompt
came from is kept (:data:`Places`) so later checks (wildcards) can point at its line too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import Problem
from . import limits
from .yamlio import format_path

FIELDS = ("prompt", "negative_prompt")
#: a recipe path (``("stages", 1, "prompt", 3)``) -> (file as shown, line) of a value read from a file
Places = dict[tuple, tuple[str, int]]


def shown_path(recipe: Path, name: str) -> str:
    """A file the recipe names, as errors show it: beside the recipe as the recipe itself is shown."""
    target = Path(name)
    return str(target if target.is_absolute() else recipe.parent / target)


def read_prompt_files(raw: dict, lines: dict[tuple, int], recipe: Path, places: Places) -> list[Problem]:
    """Replace every ``{file: ...}`` prompt of ``defaults`` and the stages by the file's prompts (in place)."""
    problems: list[Problem] = []
    owners: list[tuple[tuple, Any]] = [(("defaults",), raw.get("defaults"))]
    stages = raw.get("stages")
    if isinstance(stages, list):
        owners += [(("stages", i), stage) for i, stage in enumerate(stages)]
    for where, owner in owners:
        if not isinstance(owner, dict):
            continue
        for key in FIELDS:
            value = owner.get(key)
            if isinstance(value, dict):
                prompts = _read(value, where + (key,), lines, recipe, places, problems)
                owner[key] = prompts if prompts is not None else [""]  # reported: no second problem for it
    return problems


def _read(value: dict, path: tuple, lines: dict[tuple, int], recipe: Path, places: Places,
          problems: list[Problem]) -> list[str] | None:
    from .checks import line_of

    line, field = line_of(lines, path), format_path(path)
    name = value.get("file")
    if set(value) != {"file"} or not isinstance(name, str) or not name:
        problems.append(Problem(line, field, "a mapping here is {file: prompts.txt} (a file of prompts, one a "
                                             "line, relative to the recipe); else a prompt or a list of prompts"))
        return None
    target = Path(name) if Path(name).is_absolute() else recipe.parent / name
    try:
        data = target.read_bytes()
    except OSError as exc:
        problems.append(Problem(line, field, f"{name!r}: cannot read the prompt file ({exc.strerror or exc}; "
                                             f"relative to {recipe.parent})"))
        return None
    shown = shown_path(recipe, name)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line_no = data[:exc.start].count(b"\n") + 1
        problems.append(Problem(line_no, field, "the file is not UTF-8 text", file=shown))
        return None
    prompts: list[str] = []
    for number, item in enumerate(text.splitlines(), 1):
        prompt = item.strip()
        if not prompt or prompt.startswith("#"):
            continue
        if len(prompt) > limits.MAX_PROMPT_CHARS:
            problems.append(Problem(number, field, f"a prompt of {len(prompt):,} characters is over the limit of "
                                                   f"{limits.MAX_PROMPT_CHARS:,}", file=shown))
            continue
        places[path + (len(prompts),)] = (shown, number)
        prompts.append(prompt)
    if not prompts:
        problems.append(Problem(line, field, f"{name!r} holds no prompt (one a line; '#' starts a comment)"))
        return None
    return prompts


def follow_defaults(places: Places, origins: dict[tuple, tuple]) -> None:
    """Give a stage's prompts merged from ``defaults`` the places of the defaults' (see ``_merge_defaults``)."""
    for stage_path, default_path in origins.items():
        for key, place in list(places.items()):
            if key[:len(default_path)] == default_path and len(key) == len(default_path) + 1:
                places[stage_path + key[len(default_path):]] = place
