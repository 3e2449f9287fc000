"""``rows: shots.csv``: a table of stage parameters, one job (set) per row rather than a product.

A table is ``.csv`` (a header row naming the columns), ``.jsonl`` (one JSON object a line) or ``.yaml`` /
``.yml`` (a list of mappings), relative to the recipe. Each row is a mapping of stage parameters (``prompt``,
``negative_prompt``, ``seed``, ``steps``, ``guidance``, ``width``, ``height``, ``scheduler``, ``strength``,
...) laid over the stage's own values; it is validated like a stage (:mod:`sdbatch.config.variants`), every
problem at the row's own ``file:line``. CSV cells are text: an empty cell is not set, a number reads as a
number, ``true``/``false`` as a boolean, a cell starting with ``[`` or ``{`` as YAML (``loras``), and a text
parameter (prompt, negative_prompt, scheduler, model, ...) is always the text itself.
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import Problem
from .promptfile import shown_path
from .yamlio import YamlError, load_yaml

SUFFIXES = (".csv", ".jsonl", ".yaml", ".yml")
MAX_ROWS = 100_000
#: keys a row may not set: they name the stage and what it reads, not a job of it
RESERVED = ("name", "type", "rows", "input", "mask", "init")
#: CSV columns read as text whatever they look like
TEXT_COLUMNS = frozenset({"prompt", "negative_prompt", "scheduler", "model", "vae", "pipeline_config", "dtype",
                          "input", "mask", "init", "depth_model", "prompt_syntax"})
_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")


@dataclass
class Row:
    line: int  # of the row in its file
    values: dict[str, Any]
    lines: dict[str, int] = field(default_factory=dict)  # column -> line (a YAML row's keys)


def read_rows(name: str, recipe: Path, line: int, field_path: str) -> tuple[list[Row], list[Problem], str]:
    """The rows of table ``name`` (relative to the recipe), the problems reading it, and the file as shown."""
    shown = shown_path(recipe, name)
    target = Path(name) if Path(name).is_absolute() else recipe.parent / name
    suffix = target.suffix.lower()
    if suffix not in SUFFIXES:
        return [], [Problem(line, field_path, f"{name!r}: a rows table is .csv, .jsonl or .yaml")], shown
    try:
        text = target.read_bytes().decode("utf-8-sig")
    except OSError as exc:
        return [], [Problem(line, field_path, f"{name!r}: cannot read the rows table ({exc.strerror or exc}; "
                                              f"relative to {recipe.parent})")], shown
    except UnicodeDecodeError:
        return [], [Problem(line, field_path, f"{name!r}: the file is not UTF-8 text")], shown
    reader = _csv if suffix == ".csv" else _jsonl if suffix == ".jsonl" else _yaml
    rows, problems = reader(text, shown, field_path)
    if not rows and not problems:
        problems.append(Problem(line, field_path, f"{name!r} holds no row"))
    if len(rows) > MAX_ROWS:
        problems.append(Problem(line, field_path, f"{name!r} has {len(rows):,} rows, over the limit of {MAX_ROWS:,}"))
    return rows, problems, shown


def _csv(text: str, shown: str, field_path: str) -> tuple[list[Row], list[Problem]]:
    reader = csv.reader(io.StringIO(text, newline=""))
    rows: list[Row] = []
    problems: list[Problem] = []
    header: list[str] | None = None
    start = 1
    try:
        for cells in reader:
            line, start = start, reader.line_num + 1
            if not any(cell.strip() for cell in cells):
                continue
            if header is None:
                header = [cell.strip() for cell in cells]
                continue
            if len(cells) > len(header):
                problems.append(Problem(line, f"{field_path}[{len(rows)}]",
                                        f"{len(cells)} cells but {len(header)} columns in the header", file=shown))
                rows.append(Row(line, {}))
                continue
            values = {key: _cell(key, cell) for key, cell in zip(header, cells) if key and cell.strip() != ""}
            rows.append(Row(line, values))
    except csv.Error as exc:
        problems.append(Problem(reader.line_num, field_path, f"not CSV: {exc}", file=shown))
    return rows, problems


def _cell(key: str, cell: str) -> Any:
    text = cell.strip()
    if key in TEXT_COLUMNS:
        return text
    if _NUMBER.fullmatch(text):
        return int(text) if re.fullmatch(r"[+-]?\d+", text) else float(text)
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    if text[:1] in "[{":
        try:
            return load_yaml(text)[0]
        except YamlError:
            return text
    return text


def _jsonl(text: str, shown: str, field_path: str) -> tuple[list[Row], list[Problem]]:
    rows: list[Row] = []
    problems: list[Problem] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(Problem(number, f"{field_path}[{len(rows)}]", f"invalid JSON: {exc.msg}", file=shown))
            rows.append(Row(number, {}))
            continue
        rows.append(_row(value, number, {}, shown, f"{field_path}[{len(rows)}]", problems))
    return rows, problems


def _yaml(text: str, shown: str, field_path: str) -> tuple[list[Row], list[Problem]]:
    try:
        data, lines = load_yaml(text)
    except YamlError as exc:
        return [], [Problem(exc.line, field_path, exc.message, file=shown)]
    if not isinstance(data, list):
        return [], [Problem(1, field_path, "a YAML rows table is a list of mappings", file=shown)]
    rows: list[Row] = []
    problems: list[Problem] = []
    for i, value in enumerate(data):
        keys = {k: lines[(i, k)] for k in (value if isinstance(value, dict) else {}) if (i, k) in lines}
        rows.append(_row(value, lines.get((i,), 1), keys, shown, f"{field_path}[{i}]", problems))
    return rows, problems


def _row(value: Any, line: int, lines: dict[str, int], shown: str, where: str, problems: list[Problem]) -> Row:
    if not isinstance(value, dict):
        problems.append(Problem(line, where, "a row is a mapping of stage parameters (prompt, seed, steps, ...)",
                                file=shown))
        return Row(line, {})
    return Row(line, value, lines)


def reserved_problems(row: Row, shown: str, where: str) -> list[Problem]:
    """A row setting what names the stage or what it reads (:data:`RESERVED`)."""
    return [Problem(row.lines.get(key, row.line), f"{where}.{key}", "a row cannot set this (it is the stage's)",
                    file=shown) for key in RESERVED if key in row.values]
