"""A stage that stands for several configs: rows of a table (``rows:``) and sweeps of scalar parameters.

``width: [512, 768]``, ``model: [a, b]``, ``clip_skip: [1, 2]``, ``loras: [{path: x.safetensors, weight: [0.4,
0.8]}]``, ``coherence: {flow: [0, 0.5]}``: a list given to a parameter that takes one value (at any depth of
the stage's mapping) is a sweep, a cartesian product with the others. Each combination is the stage with those
values, so its jobs (and their ids) are exactly those of a recipe that names the values alone. Identity
parameters only: runtime options (device, batch_size, ...) and what names the stage, its input or its seeds
do not sweep this way (seeds have ``seeds:``).

Before the recipe model validates, :func:`pull_variants` leaves each sweep's first value in the stage (so the
stage validates as one config) and lays a rows table's first row over it; :meth:`StageVariants.validate` then
validates every other value and every row against the stage's own config model, each problem at its own line
(a list item's, or the row's ``file:line``). :mod:`sdbatch.core.variants` makes the configs the planner expands.
"""

from __future__ import annotations

import copy
import itertools
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError

from ..errors import Problem
from .errors import pydantic_problems
from .rows import RESERVED as RESERVED_IN_ROWS
from .rows import Row, read_rows, reserved_problems
from .stage import Defaults
from .types import is_runtime
from .yamlio import format_path

#: fields a list never sweeps this way (they name the stage, its inputs or its seeds, or take lists)
NOT_SWEPT = frozenset({"name", "type", "seed", "seeds", "input", "mask", "init", "rows", "wildcards", "file"})
MAX_VARIANTS = 100_000


@dataclass
class StageVariants:
    """What one stage sweeps besides its lists: scalar sweeps (path in the stage -> values) and rows."""

    index: int
    config: type[BaseModel]
    raw: dict  # the stage with each sweep at its first value (no row laid over it: what each row is laid over)
    axes: dict[tuple, list[Any]] = field(default_factory=dict)  # path -> raw values (validated: see values)
    values: dict[tuple, list[Any]] = field(default_factory=dict)  # path -> validated values
    rows: list[Row] | None = None
    rows_file: str = ""
    row_configs: list[Any] = field(default_factory=list)  # a validated stage config per row
    row_keys: list[set[str]] = field(default_factory=list)  # the parameters each of those rows set
    checked: dict = field(default_factory=dict)  # the stage as the recipe model validated it (first row laid over)

    def validate(self, stage: Any, lines: dict[tuple, int], stage_types: tuple[str, ...]) -> list[Problem]:
        """Validate every sweep value after the first and every row; ``stage`` is the validated stage."""
        problems: list[Problem] = []
        prefix = ("stages", self.index)
        for path, raw_values in self.axes.items():
            values = [_get(stage, path)]
            for j, value in enumerate(raw_values[1:], 1):
                item = copy.deepcopy(self.checked or self.raw)
                _set_raw(item, path, value)
                where = prefix + path + (j,)
                line = lines.get(where) or _nearest(lines, prefix + path)
                config, found = self._validate(item, {(): line}, stage_types)
                mine = format_path(path)
                for p in found:
                    if p.path == mine or p.path.startswith((mine + ".", mine + "[")):
                        problems.append(Problem(line, format_path(where) + p.path[len(mine):], p.message))
                if config is not None:
                    values.append(_get(config, path))
            self.values[path] = list(_unique(values))
        for k, row in enumerate(self.rows or ()):
            where = f"stages[{self.index}].rows[{k}]"
            bad = reserved_problems(row, self.rows_file, where)
            if bad or not row.values:
                problems.extend(bad)
                continue
            item = dict(self.raw)
            if "seed" in row.values or "seeds" in row.values:  # a row's seed wins over the stage's seeds
                item.pop("seed", None)
                item.pop("seeds", None)
            item.update(row.values)
            row_lines = {(key,): line for key, line in row.lines.items()}
            row_lines[()] = row.line
            config, found = self._validate(item, row_lines, stage_types)
            for p in found:  # every problem of the row's config: its own columns', or what it lacks
                path = _scalar_path(p.path, row.values)
                problems.append(Problem(p.line or row.line, f"{where}.{path}" if path else where, p.message,
                                        file=self.rows_file))
            if config is not None:
                self.row_configs.append(config)
                self.row_keys.append(set(row.values))
        return problems

    def _validate(self, item: dict, lines: dict[tuple, int], stage_types: tuple[str, ...]
                  ) -> tuple[Any, list[Problem]]:
        try:
            return self.config.model_validate(item), []
        except ValidationError as exc:
            return None, pydantic_problems(exc, lines, {}, stage_types, model=self.config)

    def configs(self, stage: Any) -> list[Any]:
        """The configs the stage stands for: ``stage`` (or each row's config) at each combination of its scalar
        sweeps, in order; a row's own value of a parameter wins over the stage's sweep of it."""
        bases = list(zip(self.row_configs, self.row_keys)) if self.rows is not None else [(stage, set())]
        paths = list(self.values)
        out = []
        for base, row_keys in bases:
            for combo in itertools.product(*(self.values[p] for p in paths)):
                config = base
                for path, value in zip(paths, combo):
                    if path[0] not in row_keys:
                        config = _with(config, path, value)
                out.append(config)
        return out

    def count(self) -> int:
        """Configs this stage stands for."""
        n = max(1, len(self.row_configs)) if self.rows is not None else 1
        for values in self.values.values():
            n *= max(1, len(values))
        return n


def pull_variants(raw: dict, lines: dict[tuple, int], recipe: Path, configs: dict[str, type[BaseModel]]
                  ) -> tuple[dict[int, StageVariants], list[Problem]]:
    """Take scalar sweeps and rows tables out of the stages of ``raw`` (in place, before validation)."""
    from .checks import line_of

    found: dict[int, StageVariants] = {}
    problems: list[Problem] = []
    stages = raw.get("stages")
    for i, stage in enumerate(stages if isinstance(stages, list) else ()):
        config = configs.get(stage.get("type")) if isinstance(stage, dict) else None
        if config is None:
            continue
        axes: dict[tuple, list[Any]] = {}
        for key, value in stage.items():
            info = config.model_fields.get(key)
            if info is not None and key not in NOT_SWEPT and not is_runtime(info):
                _find_axes(value, info.annotation, (key,), axes)
        for key in {path[0] for path in axes if len(path) > 1}:  # shared with defaults (merged): not in place
            stage[key] = copy.deepcopy(stage[key])
        for path, values in axes.items():
            _set_raw(stage, path, values[0])
        rows = None
        shown = ""
        if isinstance(stage.get("rows"), str):
            where = ("stages", i, "rows")
            rows, bad, shown = read_rows(stage["rows"], recipe, line_of(lines, where), format_path(where))
            problems.extend(bad)
        if axes or rows is not None:
            found[i] = StageVariants(i, config, dict(stage), axes, rows=rows, rows_file=shown)
            if rows:  # the first row over the stage, so a stage that leaves e.g. its prompt to the rows validates
                first = {k: v for k, v in rows[0].values.items() if k in config.model_fields and k not in NOT_SWEPT}
                stage.update({k: v for k, v in first.items() if k not in stage})
            found[i].checked = dict(stage)
    defaults = raw.get("defaults")
    if isinstance(defaults, dict):  # a sweep in defaults went into each stage (above); defaults keep one value
        axes = {}
        for key, value in defaults.items():
            info = Defaults.model_fields.get(key)
            if info is not None and key not in NOT_SWEPT and not is_runtime(info):
                _find_axes(value, info.annotation, (key,), axes)
        for path, values in axes.items():
            _set_raw(defaults, path, copy.deepcopy(values[0]))
    return found, problems


def own_problems(problems: list[Problem], found: dict[int, StageVariants]) -> list[Problem]:
    """The recipe's problems less those of values a stage took from its first row (reported at the row)."""
    taken = {f"stages[{i}].{k}" for i, v in found.items() if v.rows for k in v.rows[0].values if k not in v.raw}
    return [p for p in problems if p.path.split(" ")[0] not in taken
            and not any(p.path.startswith((t + ".", t + "[")) for t in taken)]


def _find_axes(value: Any, annotation: Any, path: tuple, axes: dict[tuple, list[Any]]) -> None:
    """Record at ``path`` a list given where ``annotation`` takes one value; look inside mappings of models."""
    if isinstance(value, list) and value and not _takes_list(annotation):
        axes[path] = list(value)
        return
    model = _model_of(annotation)
    if isinstance(value, dict) and model is not None:
        for key, item in value.items():
            info = model.model_fields.get(key)
            if info is not None:
                _find_axes(item, info.annotation, path + (key,), axes)
    elif isinstance(value, list):
        item_model = _model_of(_list_item(annotation))
        if item_model is not None:
            for j, item in enumerate(value):
                if isinstance(item, dict):
                    _find_axes(item, item_model, path + (j,), axes)


def _strip(tp: Any) -> Any:
    while get_origin(tp) is Annotated:
        tp = get_args(tp)[0]
    return tp


def _branches(tp: Any) -> list[Any]:
    tp = _strip(tp)
    if get_origin(tp) in (Union, types.UnionType):
        return [b for a in get_args(tp) if a is not type(None) for b in _branches(a)]
    return [tp]


def _takes_list(tp: Any) -> bool:
    return any(get_origin(b) in (list, tuple, set, frozenset) for b in _branches(tp))


def _list_item(tp: Any) -> Any:
    for b in _branches(tp):
        if get_origin(b) is list:
            return get_args(b)[0]
    return None


def _model_of(tp: Any) -> type[BaseModel] | None:
    if tp is None:
        return None
    for b in _branches(tp):
        if isinstance(b, type) and issubclass(b, BaseModel):
            return b
    return None


def _set_raw(node: Any, path: tuple, value: Any) -> None:
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value


def _get(model: Any, path: tuple) -> Any:
    for part in path:
        model = model[part] if isinstance(part, int) else getattr(model, part)
    return model


def _with(model: Any, path: tuple, value: Any) -> Any:
    """``model`` (a frozen pydantic model, or a list of them) with the value at ``path`` replaced."""
    head, rest = path[0], path[1:]
    if isinstance(head, int):
        items = list(model)
        items[head] = _with(items[head], rest, value) if rest else value
        return items
    current = getattr(model, head)
    return model.model_copy(update={head: _with(current, rest, value) if rest else value})


def _scalar_path(path: str, values: dict[str, Any]) -> str:
    """``steps[0]`` -> ``steps`` where the row gave one value (a sweep field reads it as a list of one)."""
    key, _, rest = path.partition("[0]")
    return key + rest if rest[:1] in ("", ".") and key in values and not isinstance(values[key], list) else path


def _unique(values: list[Any]) -> list[Any]:
    out: list[Any] = []
    for value in values:
        if value not in out:
            out.append(value)
    return out


def _nearest(lines: dict[tuple, int], path: tuple) -> int:
    from .checks import line_of

    return line_of(lines, path)


def sweepable_schema(schema: dict, runtime: set[str], keep: set[str]) -> dict:
    """The recipe's JSON Schema with every scalar stage parameter also taking a list (a sweep), as validation
    does: in each model definition but ``keep`` (seed ranges, ...) and the models inside it (a LoRA), every
    property but the runtime options and :data:`NOT_SWEPT`."""
    defs = schema.get("$defs", {})
    for name, definition in defs.items():
        if name not in keep:
            _sweepable(definition, defs, runtime)
        required = definition.get("required", [])
        movable = [key for key in required if key not in RESERVED_IN_ROWS]
        if "rows" in definition.get("properties", {}) and movable:  # a rows table may give them instead
            definition["required"] = [key for key in required if key not in movable]
            definition["anyOf"] = [{"required": movable}, {"required": ["rows"]}]
    return schema


def _sweepable(node: Any, defs: dict, runtime: set[str]) -> None:
    if isinstance(node, list):
        for item in node:
            _sweepable(item, defs, runtime)
        return
    if not isinstance(node, dict):
        return
    for key, value in node.items():
        if key != "properties":
            _sweepable(value, defs, runtime)
    for key, prop in (node.get("properties") or {}).items():
        _sweepable(prop, defs, runtime)
        if key in NOT_SWEPT or key in runtime or _schema_takes_list(prop, defs):
            continue
        node["properties"][key] = _or_list(prop)


def _schema_takes_list(prop: dict, defs: dict) -> bool:
    if prop.get("type") == "array" or (isinstance(prop.get("type"), list) and "array" in prop["type"]):
        return True
    ref = prop.get("$ref", "")
    if ref.startswith("#/$defs/") and "properties" not in defs.get(ref[8:], {"properties": 1}):
        return _schema_takes_list(defs[ref[8:]], defs)
    return any(_schema_takes_list(branch, defs) for key in ("anyOf", "oneOf") for branch in prop.get(key, ()))


_META = ("title", "default", "description", "examples")


def _or_list(prop: dict) -> dict:
    """``prop`` or a non-empty list of its non-null values, flat (``anyOf: [int, null, array of int]``), so an
    editor shows the value's own constraints (``multipleOf: 8``) first and a list as one more alternative."""
    meta = {k: v for k, v in prop.items() if k in _META}
    body = {k: v for k, v in prop.items() if k not in _META}
    alternatives = list(body["anyOf"]) if set(body) == {"anyOf"} else [body]
    values = [alt for alt in alternatives if alt != {"type": "null"}]
    items = values[0] if len(values) == 1 else {"anyOf": values}
    description = "; ".join(filter(None, [meta.get("description"), "a list sweeps it"]))
    return {**meta, "description": description,
            "anyOf": alternatives + [{"type": "array", "items": items, "minItems": 1}]}
