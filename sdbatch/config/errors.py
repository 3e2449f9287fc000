"""Pydantic validation errors -> recipe :class:`~sdbatch.errors.Problem` s (``file:line: field: message``)."""

from __future__ import annotations

import re

from pydantic import ValidationError

from ..errors import Problem
from .yamlio import format_path

_BRANCH_MARKER = re.compile(r"^[A-Z]\w*$|\[|^function-|^literal\[|^int$|^str$")


def pydantic_problems(exc: ValidationError, lines: dict, origins: dict, stage_types: tuple[str, ...]) -> list[Problem]:
    """One :class:`Problem` per place, with the line the user wrote it on (``origins``: values merged from ``defaults``)."""
    problems = []
    for err in exc.errors(include_url=False):
        loc = list(err["loc"])
        # drop the discriminator tag pydantic inserts: ('stages', 1, 'img2img', 'strength')
        if len(loc) >= 3 and loc[0] == "stages" and loc[2] in stage_types:
            del loc[2]
        # drop internal union/validator markers
        # drop union-branch markers pydantic inserts ("list[int]", "SeedRange", "function-before[...]")
        loc = [p for p in loc if not (isinstance(p, str) and _BRANCH_MARKER.search(p))]
        if loc and loc[-1] == 0 and tuple(loc) not in lines and tuple(loc[:-1]) in lines:
            loc.pop()  # a scalar the user wrote, wrapped into a one-item sweep list
        path = tuple(loc)
        message = err["msg"]
        kind = err["type"]
        if kind == "extra_forbidden":
            message = f"unknown key '{loc[-1]}'"
        elif kind == "union_tag_invalid":
            tag = err.get("input", {}).get("type") if isinstance(err.get("input"), dict) else None
            message = f"unknown stage type {tag!r} (expected one of: {', '.join(stage_types)})"
            path = path + ("type",)
        elif kind == "union_tag_not_found":
            message = f"missing 'type' (one of: {', '.join(stage_types)})"
        elif kind == "missing":
            message = "required"
        elif kind == "string_pattern_mismatch" and loc and loc[-1] == "name":
            message = "must contain only letters, digits, '_' and '-'"
        elif kind == "string_pattern_mismatch" and loc and loc[-1] == "device":
            message = "must be auto, cpu, cuda, cuda:N or mps"
        elif message.startswith("Value error, "):
            message = message[len("Value error, "):]
        shown = format_path(path)
        for n in range(len(path), 0, -1):
            if path[:n] in origins:
                src = origins[path[:n]] + path[n:]
                shown = f"{format_path(path)} (from {format_path(src)})"
                path = src
                break
        line = 0
        for n in range(len(path), -1, -1):
            if path[:n] in lines:
                line = lines[path[:n]]
                break
        problems.append(Problem(line, shown, message))
    # one problem per place: unions report each branch; keep the first message per path
    seen: set[tuple[int, str]] = set()
    unique = []
    paths = {p.path for p in problems}
    for p in problems:
        if "instance of SeedRange" in p.message and any(q.startswith(p.path + "[") for q in paths):
            continue  # the list form was meant; its error says more
        if (p.line, p.path) not in seen:
            seen.add((p.line, p.path))
            unique.append(p)
    return sorted(unique, key=lambda p: p.line)
