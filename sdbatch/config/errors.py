"""Pydantic validation errors -> recipe :class:`~sdbatch.errors.Problem` s (``file:line: field: message``).

Only the error data Pydantic documents is read (``loc``, ``type``, ``ctx``, ``input``), never the spelling of its
location markers. A location is walked through the recipe model (``model_fields``, list items, dict values,
union branches): an element the type at that point cannot consume (a field of the model, an index of a list, a
key of a dict) is a marker Pydantic inserted, such as the union-branch tags ``'generate'``, ``'list[int]'`` or
``'SeedRange'``, and is dropped. Without the model the paths the user wrote (``lines``) stand in for the fields.

Where a union reports every branch, the branch the user's value has the shape of is kept (its error is inside
the value, or is not a type mismatch); when no branch fits, one message says what the value may be.
Unknown keys and values get a "did you mean" from :mod:`difflib` over the valid names at that place, and
AUTOMATIC1111's names for ours are mapped (``cfg_scale`` -> ``guidance``, ``txt2img`` -> ``generate``, ...).
"""

from __future__ import annotations

import difflib
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, Tag, ValidationError

from ..errors import Problem
from .yamlio import format_path

#: AUTOMATIC1111's key names -> ours
A1111_KEYS = {"cfg_scale": "guidance", "sampler": "scheduler", "sampler_name": "scheduler",
              "denoising_strength": "strength", "negative": "negative_prompt", "batch_count": "seeds"}
#: AUTOMATIC1111's values -> ours (stage types)
A1111_VALUES = {"txt2img": "generate"}
#: how a mapped name is shown when it takes another form here
_SHOWN = {("batch_count", "seeds"): "seeds: {start, count}"}
_CUTOFF = 0.7  # difflib similarity a suggestion needs ('promt' ~ 'prompt' 0.91; 'strength' ~ 'steps' 0.62 is not one)


def pydantic_problems(exc: ValidationError, lines: dict, origins: dict, stage_types: tuple[str, ...], *,
                      model: type[BaseModel] | None = None) -> list[Problem]:
    """One :class:`Problem` per place, with the line the user wrote it on.

    ``lines``: {path: line} from :func:`~sdbatch.config.yamlio.load_yaml`; ``origins``: {stage path: defaults
    path} of values merged from ``defaults``; ``stage_types``: the valid stage types; ``model``: the model that
    was validated (the recipe model), walked to read locations and to name valid keys and values.
    """
    written = _Written(lines, origins)
    located = [_locate(err, model, written) for err in exc.errors(include_url=False)]
    located = _pick_branches([replace(e, message=_message(e, stage_types)) for e in located])
    placed = [_problem(e, lines, origins) for e in located]
    own = {(p.line, p.path, p.message) for p, _ in placed}
    seen: set[tuple[int, str]] = set()
    unique = []
    for p, src in placed:
        if (p.line, src, p.message) in own and src != p.path:
            continue  # a value merged from `defaults`, reported there already with the same message
        if (p.line, p.path) not in seen:
            seen.add((p.line, p.path))
            unique.append(p)
    return sorted(unique, key=lambda p: p.line)


# ----------------------------------------------------------------------------------- type structure
@dataclass(frozen=True)
class _Type:
    """An annotation with ``Annotated`` and ``Optional`` stripped: ``tp`` and the metadata seen on the way."""

    tp: Any
    meta: tuple = ()

    @classmethod
    def of(cls, tp: Any, meta: tuple = ()) -> _Type:
        while True:
            if get_origin(tp) is Annotated:
                meta += tuple(tp.__metadata__)
                tp = get_args(tp)[0]
            elif _is_union(tp) and len(_members(tp)) == 1:
                tp = _members(tp)[0]
            else:
                return cls(tp, meta)

    @property
    def model(self) -> type[BaseModel] | None:
        return self.tp if isinstance(self.tp, type) and issubclass(self.tp, BaseModel) else None

    @property
    def kind(self) -> str:
        origin = get_origin(self.tp)
        if self.model is not None:
            return "model"
        if _is_union(self.tp):
            return "union"
        if origin is Literal:
            return "literal"
        if isinstance(origin, type) and issubclass(origin, Mapping):
            return "dict"
        if origin in (list, tuple, set, frozenset) or (isinstance(origin, type) and issubclass(origin, Sequence)):
            return "list"
        return "scalar"

    def field(self, name: Any) -> _Type | None:
        info = self.model.model_fields.get(name) if self.model is not None and isinstance(name, str) else None
        return None if info is None else _Type.of(info.annotation, (info,))

    def item(self) -> _Type:
        args = [a for a in get_args(self.tp) if a is not Ellipsis]
        return _Type.of(args[-1] if args else Any)

    def branches(self) -> list[_Type]:
        return [_Type.of(a) for a in _members(self.tp)]

    def discriminator(self) -> str | None:
        for m in self.meta:
            d = getattr(m, "discriminator", None)
            d = getattr(d, "discriminator", d)  # Field(discriminator=Discriminator('type'))
            if isinstance(d, str):
                return d
        return None

    def tags(self) -> list[list[Any]]:
        """The tags each branch of a tagged union answers to (``Tag`` metadata, or its discriminator's Literal)."""
        out = []
        disc = self.discriminator()
        for branch in self.branches():
            sub = branch.field(disc) if disc else None
            out.append([m.tag for m in branch.meta if isinstance(m, Tag)] or (sub.values() if sub else None) or [])
        return out

    def values(self) -> list[Any] | None:
        """A Literal's values."""
        if self.kind == "literal":
            return list(get_args(self.tp))
        return None


def _is_union(tp: Any) -> bool:
    return get_origin(tp) in (Union, types.UnionType)


def _members(tp: Any) -> list[Any]:
    return [a for a in get_args(tp) if a is not type(None)]


# ---------------------------------------------------------------------------------------- locations
@dataclass(frozen=True)
class _Written:
    """The paths the user wrote, directly or through ``defaults`` (the stand-in for a model's fields)."""

    lines: dict
    origins: dict

    def __contains__(self, path: tuple) -> bool:
        return source_path(path, self.origins) in self.lines


@dataclass(frozen=True)
class _Located:
    err: dict
    path: tuple  # the place as the user wrote it: keys and indices
    node: _Type | None  # the type the location ends at (None: not known)
    models: tuple = ()  # the models the walk went through, innermost last
    unions: tuple = ()  # (path, tag) of each union branch the location went through
    message: str = ""
    siblings: tuple = ()  # (tag, model) of the other branches of the last tagged union on the way


def _locate(err: dict, root: type[BaseModel] | None, written: _Written) -> _Located:
    loc, kind = list(err["loc"]), err["type"]
    node = _Type.of(root) if root is not None else None
    path: list = []
    unions: list = []
    models: list = []
    siblings: tuple = ()
    i = 0
    while i < len(loc):
        e, last = loc[i], i == len(loc) - 1
        if node is None:  # no model: a tag can only stand below a value the user wrote, and is not a key of it
            named = last and kind in ("extra_forbidden", "missing")  # a key the user wrote, or one missing
            if isinstance(e, int) or named or not path or tuple(path) not in written or tuple(path + [e]) in written:
                path.append(e)
            else:
                unions.append((tuple(path), e))
            i += 1
            continue
        if node.kind == "model":
            models.append(node.model)
            sub = node.field(e)
            if sub is not None:
                path.append(e)
                node = sub
            elif last and kind == "extra_forbidden":
                path.append(e)  # the unknown key itself; node stays the model it is unknown in
            i += 1  # anything else is a marker inside the model (a key error, a validator's tag)
            continue
        if node.kind == "union":
            branch, is_tag = _branch(node, loc[i:], err)
            if is_tag:
                siblings = tuple((t[0], b.model) for t, b in zip(node.tags(), node.branches()) if t and e not in t)
                unions.append((tuple(path), e))
                i += 1
            if branch is None:
                break
            node = branch
            continue
        if node.kind == "list" and isinstance(e, int):
            path.append(e)
            node = node.item()
        elif node.kind == "dict":
            path.append(e)  # a key of the user's
            node = node.item()
        elif node.kind in ("literal", "scalar"):
            break  # nothing below a value but markers
        i += 1
    return _Located(err, tuple(path), node, tuple(models), tuple(unions), siblings=siblings)


def _branch(union: _Type, rest: list, err: dict) -> tuple[_Type | None, bool]:
    """(the branch ``rest`` goes on in, whether ``rest[0]`` is a branch tag)."""
    e, after = rest[0], rest[1:]
    branches = union.branches()
    for tags, branch in zip(union.tags(), branches):
        if e in tags:
            return branch, True
    fields = [b for b in branches if b.model is not None and b.field(e) is not None]
    if fields:  # a field name, no tag in front of it
        return fields[0], False
    if isinstance(e, int):
        return next((b for b in branches if b.kind in ("list", "dict")), None), False
    if after:  # a tag: the next element says which branch it is
        nxt = after[0]
        if err["type"] == "extra_forbidden" and len(after) == 1:  # an unknown key: of a model without that field
            fits = [b for b in branches if b.model is not None and b.field(nxt) is None]
        else:
            fits = [b for b in branches if (b.kind == "list" and isinstance(nxt, int)) or b.kind == "dict"
                    or (b.model is not None and b.field(nxt) is not None)]
        # several models fit: the one the tag names, if it does (only ever a tie-break, never required)
        named = [b for b in fits if b.model is not None and b.model.__name__ == e]
        return (named or fits or [None])[0], True
    ctx = err.get("ctx") or {}
    if err["type"] == "model_type":  # the error is the branch itself: pick it by what it expected
        bases = [b for b in branches if b.model is not None]
        named = [b for b in bases if b.model.__name__ == ctx.get("class_name")]
        return (named or bases or [None])[0], True
    if err["type"] == "literal_error":
        return next((b for b in branches if b.kind == "literal"), None), True
    return None, True


# ---------------------------------------------------------------------------------- union branches
def _mismatch(kind: str) -> bool:
    """Pydantic's error types that say "not this kind of value".

    See https://docs.pydantic.dev/latest/errors/validation_errors/ (``int_type``, ``list_type``, ...).
    """
    return kind.endswith(("_type", "_parsing")) or kind in ("literal_error", "int_from_float", "is_instance_of",
                                                           "union_tag_invalid", "union_tag_not_found")


def _pick_branches(located: list[_Located]) -> list[_Located]:
    """Keep the errors of the union branch the value was meant for; merge them when it fits none."""
    positions = sorted({u[0] for e in located for u in e.unions}, key=len, reverse=True)
    for pos in positions:
        members = [e for e in located if any(u[0] == pos for u in e.unions)]
        tag_of = {id(e): next(u[1] for u in e.unions if u[0] == pos) for e in members}
        if len(set(tag_of.values())) < 2:
            continue
        fits = {tag_of[id(e)] for e in members if len(e.path) > len(pos) or not _mismatch(e.err["type"])}
        if len(fits) > 1:  # the value has the shape of several: the branch with the fewest errors was meant
            count = {t: sum(tag_of[id(e)] == t for e in members) for t in fits}
            fits = {t for t in fits if count[t] == min(count.values())}
        if fits:
            located = [e for e in located if id(e) not in tag_of or tag_of[id(e)] in fits]
            continue
        first = members[0]
        combined = replace(first, path=pos, message=_either(members),
                           unions=tuple(u for u in first.unions if len(u[0]) < len(pos)))
        located = [combined if e is first else e for e in located if e is first or id(e) not in tag_of]
    return located


def _either(members: list[_Located]) -> str:
    """One message for a value that fits no branch of a union: "Input should be A or B"."""
    wanted, hint = [], ""
    for e in members:
        text = _expected(e)
        if text is None:
            return members[0].message
        if text not in wanted:
            wanted.append(text)
        if e.err["type"] == "literal_error" and e.node is not None and not hint:
            hint = _value_hint(e.err["input"], e.node.values() or [])
    return "Input should be " + " or ".join(wanted) + hint


def _expected(e: _Located) -> str | None:
    values = e.node.values() if e.node is not None else None
    if e.err["type"] == "model_type" and e.node is not None and e.node.model is not None:
        return "a mapping {" + ", ".join(e.node.model.model_fields) + "}"
    if e.err["type"] == "literal_error" and values:
        return " or ".join(map(repr, values)) if len(values) < 3 else "one of " + _names(values)
    prefix = "Input should be "
    return e.err["msg"][len(prefix):] if e.err["msg"].startswith(prefix) else None


# ----------------------------------------------------------------------------------------- messages
def _message(e: _Located, stage_types: tuple[str, ...]) -> str:
    err, kind = e.err, e.err["type"]
    ctx = err.get("ctx") or {}
    if kind == "extra_forbidden":
        return f"unknown key {e.path[-1]!r}" + _key_hint(e)
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        union = e.node if e.node is not None and e.node.kind == "union" else None
        tags = [t for ts in union.tags() for t in ts] if union is not None else []
        tags = tags or list(stage_types)
        if kind == "union_tag_not_found":
            return f"missing {_disc(e)!r} (one of: {_names(tags)})"
        what = "stage type" if _disc(e) == "type" else _disc(e)
        tag = err["input"].get(_disc(e), ctx.get("tag")) if isinstance(err.get("input"), dict) else ctx.get("tag")
        return f"unknown {what} {tag!r}" + (_value_hint(tag, tags) or f" (expected one of: {_names(tags)})")
    if kind == "missing":
        return "required"
    if kind == "string_pattern_mismatch" and e.path and e.path[-1] == "name":
        return "must contain only letters, digits, '_' and '-'"
    if kind == "string_pattern_mismatch" and e.path and e.path[-1] == "device":
        return "must be auto, cpu, cuda, cuda:N or mps"
    if kind in ("value_error", "assertion_error") and "error" in ctx:
        return str(ctx["error"])
    values = e.node.values() if e.node is not None else None
    if kind == "literal_error" and values:
        return f"{err['input']!r} is not one of {_names(values)}" + _value_hint(err["input"], values)
    if kind == "model_type" and e.node is not None and e.node.model is not None:
        return f"Input should be {_expected(e)}"
    return err["msg"]


def _names(values: list) -> str:
    return ", ".join(map(str, values))


def _disc(e: _Located) -> str:
    return (e.node.discriminator() if e.node is not None else None) or "type"


def _value_hint(value: Any, valid: list) -> str:
    if not isinstance(value, str):
        return ""
    if A1111_VALUES.get(value) in valid:
        return f" (AUTOMATIC1111's name; here it is {A1111_VALUES[value]!r})"
    names = {str(v).lower(): v for v in valid}
    close = difflib.get_close_matches(value.lower(), list(names), n=1, cutoff=_CUTOFF)
    return f" (did you mean {names[close[0]]!r}?)" if close else ""


def _key_hint(e: _Located) -> str:
    """Why a key is unknown here, and what was likely meant."""
    key = e.path[-1]
    model = e.models[-1] if e.models else None
    if not isinstance(key, str):
        return ""
    target = A1111_KEYS.get(key.lower())
    a1111 = f"AUTOMATIC1111's name; here it is {_SHOWN.get((key.lower(), target), target)!r}" if target else ""
    names = list(model.model_fields) if model is not None else []
    if target in names or (target and model is None):
        return f" ({a1111})"
    wanted = target or key
    where = ""
    for name in names:  # a key of a mapping one level down: `steps` at the top level goes in `defaults:`
        sub = _Type.of(model.model_fields[name].annotation).model
        if sub is not None and wanted in sub.model_fields:
            where = f"under '{name}:'" + (" or on a stage" if name == "defaults" else "")
            break
    others = [str(t) for t, m in e.siblings if m is not None and wanted in m.model_fields]
    if others:  # a key another branch of a tagged union takes: `strength` on a generate stage (or its `hires:`)
        which, here = _names(others), (f", or here {where}" if where else "")
        return f" ({a1111}, for {which} stages{here})" if target else f" (only {which} stages take it{here})"
    if where:
        return f" ({a1111}, {where})" if target else f" (it goes {where})"
    close = difflib.get_close_matches(key, names, n=1, cutoff=_CUTOFF)
    return f" (did you mean {close[0]!r}?)" if close else ""


# ------------------------------------------------------------------------------------------- places
def source_path(path: tuple, origins: dict) -> tuple:
    """Where the user wrote the value at ``path``: itself, or the ``defaults`` entry it was merged from."""
    for n in range(len(path), 0, -1):
        if path[:n] in origins:
            return tuple(origins[path[:n]]) + path[n:]
    return path


def _problem(e: _Located, lines: dict, origins: dict) -> tuple[Problem, str]:
    """The problem, and the path the user wrote the value at (its ``defaults`` entry for a merged value)."""
    path = e.path
    if e.err["type"] == "union_tag_invalid":
        path = path + (_disc(e),)
    src = source_path(path, origins)
    if src and type(src[-1]) is int and src[-1] == 0 and src not in lines and src[:-1] in lines:
        path, src = path[:-1], src[:-1]  # a scalar the user wrote, wrapped into a one-item sweep list
    shown = format_path(path) if src == path else f"{format_path(path)} (from {format_path(src)})"
    line = next((lines[src[:n]] for n in range(len(src), -1, -1) if src[:n] in lines), 0)
    return Problem(line, shown, e.message), format_path(src)
