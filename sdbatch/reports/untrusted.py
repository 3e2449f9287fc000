"""A file's metadata is untrusted input: what ``inspect`` and ``reproduce`` (:mod:`.provenance`) check before
they use a record read from a PNG anyone may have made (or from a manifest beside it).

- **Reading**: the ``sdbatch`` and ``parameters`` chunks are read with a size cap (1 MiB, checked before a
  chunk is read: :func:`~sdbatch.io.artifacts.read_png_text`), the record as JSON (invalid JSON, nesting
  deeper than :data:`MAX_DEPTH`, lone surrogates: refused), then typed as an
  :class:`~sdbatch.core.record.OutputRecord` (wrong types: refused).
- **Paths**: every path a record names (``path``, ``stage``, ``inputs[i].path``, a local ``model.id``,
  ``params.loras[i].path``, ``params.embeddings[i].path``, a local ``params.vae`` or ``params.pipeline_config``)
  must be relative, without ``..``, ``~``, backslashes or control characters (:func:`path_problems`), and is
  looked up only where it
  resolves inside the folder it is compared in (:func:`inside`: no symlink out of it). ``recipe.dir``
  (absolute by nature) is never followed, and a recipe path that is not relative is looked up by its file
  name only. ``reproduce`` writes only under ``--out``.
- **Errors**: :class:`UntrustedMetadata` names the field; the commands print
  ``error: <file>: metadata field 'inputs[0].path': ...`` and exit 2 (``inspect`` shows a record whose only
  problem is a path, with the problem as a note, and follows none of its paths).
"""

from __future__ import annotations

import json
import re
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from ..core.record import KINDS, OutputRecord, parse_record

MAX_DEPTH = 32  # nesting of a record's JSON (today's records nest 4 deep)
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class UntrustedMetadata(ValueError):
    """A field of a file's metadata that is not used: ``field`` as ``inputs[0].path``."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field, self.message = field, message

    def line(self, file: Any) -> str:
        return f"error: {file}: metadata field '{self.field}': {self.message}"


def field_name(loc: Any) -> str:
    """``("inputs", 0, "path")`` -> ``inputs[0].path``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def shown(value: Any, limit: int = 60) -> str:
    """A value from metadata as one short, printable line."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "...'"


def printable(text: str) -> str:
    """``text`` with control characters escaped (``\\x1b``): metadata shown cannot move the cursor or add lines."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)


def relpath_problem(value: Any) -> str | None:
    """Why ``value`` is not a safe relative path (None when it is one)."""
    if not isinstance(value, str) or not value:
        return f"{shown(value)} is not a path"
    if _CONTROL.search(value) or "\\" in value:
        return f"{shown(value)} holds a control character or a backslash"
    if value.startswith(("/", "~")) or PureWindowsPath(value).drive:
        return f"{shown(value)} is an absolute path (paths in metadata must be relative)"
    if ".." in PurePosixPath(value).parts:
        return f"{shown(value)} contains '..' (paths in metadata must stay inside their folder)"
    return None


def inside(base: Path, rel: str) -> Path | None:
    """``base / rel`` when it resolves inside ``base`` (no symlink leads out of it), else None."""
    path = Path(base) / rel
    try:
        path.resolve().relative_to(Path(base).resolve())
    except (ValueError, OSError, RuntimeError):
        return None
    return path


def _check_json(data: Any) -> None:
    """Refuse nesting deeper than MAX_DEPTH and strings with lone surrogates (they cannot be printed)."""
    stack = [(data, "", 0)]
    while stack:
        value, where, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise UntrustedMetadata(where, f"nested deeper than {MAX_DEPTH} levels")
        if isinstance(value, dict):
            stack += [(v, f"{where}.{k}" if where else str(k), depth + 1) for k, v in value.items()]
            texts = list(value)  # its keys
        elif isinstance(value, list):
            stack += [(v, f"{where}[{i}]", depth + 1) for i, v in enumerate(value)]
            texts = []
        else:
            texts = [value] if isinstance(value, str) else []
        for text in texts:
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                raise UntrustedMetadata(where or "sdbatch", "holds a lone surrogate (not text)") from None


def parse_embedded(text: str) -> OutputRecord:
    """The record of an ``sdbatch`` chunk's text, checked as JSON and typed. Raises :class:`UntrustedMetadata`."""
    from pydantic import ValidationError

    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UntrustedMetadata("sdbatch", f"invalid JSON: {exc.msg} (line {exc.lineno} column {exc.colno})") from None
    except (RecursionError, ValueError) as exc:
        raise UntrustedMetadata("sdbatch", f"unreadable JSON ({type(exc).__name__})") from None
    if not isinstance(data, dict):
        raise UntrustedMetadata("sdbatch", f"a JSON {type(data).__name__}, not an object")
    _check_json(data)
    if data.get("kind") != "output":
        raise UntrustedMetadata("kind", f"{shown(data.get('kind'))}, not 'output' (the record of an output)")
    try:
        record = parse_record(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        loc = list(first["loc"])
        if loc and loc[0] in KINDS:
            loc = loc[1:]  # the union's tag
        raise UntrustedMetadata(field_name(loc) or "kind", first["msg"]) from None
    except ValueError as exc:
        raise UntrustedMetadata("sdbatch", str(exc)) from None
    assert isinstance(record, OutputRecord)
    return record


def _model_problem(model_id: Any, revision: Any, source: Any) -> tuple[str, str] | None:
    """(sub-field, why) when a recorded model identity names a path or a hub id that is not safe."""
    if source in ("file", "folder"):
        problem = relpath_problem(model_id)
        return ("id", problem) if problem else None
    if not isinstance(model_id, str) or model_id.startswith("sdbatch/"):
        return None  # no model (reported when used), or a built-in (looked up by name)
    if not _HUB_ID.fullmatch(model_id) or ".." in model_id:
        return "id", f"{shown(model_id)} is not a hub id like 'org/name'"
    if isinstance(revision, str) and (re.search(r"[/\\]", revision) or revision.startswith(".")):
        return "revision", f"{shown(revision)} is not a commit"
    return None


def path_problems(record: OutputRecord) -> list[tuple[str, str]]:
    """(field, why) for every path of ``record`` that must not be followed (see the module's rules)."""
    found = [(name, relpath_problem(value)) for name, value in
             [("path", record.path), *((f"inputs[{i}].path", e.path) for i, e in enumerate(record.inputs))]]
    if "/" in record.stage or record.stage in (".", ".."):
        found.append(("stage", f"{shown(record.stage)} is not a folder name"))
    else:
        found.append(("stage", relpath_problem(record.stage)))
    model = _model_problem(record.model.id, record.model.revision, record.model.source)
    if model:
        found.append((f"model.{model[0]}", model[1]))
    params = record.params
    loras = params.get("loras")
    for i, lora in enumerate(loras if isinstance(loras, list) else []):
        path = lora.get("path") if isinstance(lora, dict) else lora
        found.append((f"params.loras[{i}].path", relpath_problem(path)))
    embeddings = params.get("embeddings")
    for i, embedding in enumerate(embeddings if isinstance(embeddings, list) else []):
        path = embedding.get("path") if isinstance(embedding, dict) else embedding
        found.append((f"params.embeddings[{i}].path", relpath_problem(path)))
    vae = params.get("vae")
    if isinstance(vae, str):
        from ..sources.specs import parse_identity

        model_id, revision, source = parse_identity(vae)
        problem = _model_problem(model_id, revision, source)
        found.append(("params.vae", problem[1] if problem else None))
    config = params.get("pipeline_config")
    if isinstance(config, str) and not config.startswith("sdbatch/"):
        found.append(("params.pipeline_config", relpath_problem(config)))
    return [(name, problem) for name, problem in found if problem]
