"""``sdbatch inspect FILE``: how an output was made, from its record (see :mod:`.provenance`).

Every value shown comes from the file's metadata (untrusted: see :mod:`.untrusted`): control characters are
shown escaped, and a path that would not be followed is shown with an ``untrusted:`` line saying why.

Exit codes: 0, or 2 (missing file, no metadata, unreadable metadata: one line on stderr).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from ..io.manifest import MANIFEST_NAME
from .provenance import EXIT_CANNOT, EXIT_MATCH, Found, ProvenanceError, check_manifest_hash, find_record, short
from .untrusted import printable


def _fmt(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False, sort_keys=True)
    return str(value)


def _parameters(found: Found) -> list[tuple[str, str]]:
    r = found.record
    params = dict(r.params)
    head = []
    if "width" in params and "height" in params:
        head.append(f"size {params.pop('width')}x{params.pop('height')}")
    if "scheduler" in params:
        scheduler = params.pop("scheduler")
        sampler = r.sampler
        head.append(f"scheduler {scheduler}" + (f" ({sampler})" if sampler and sampler != scheduler else ""))
    for key in ("steps", "guidance", "strength"):
        if key in params:
            head.append(f"{key} {_fmt(params.pop(key))}")
    lines = [("parameters", ", ".join(head) or "-")]
    lines += [("", f"{key}: {_fmt(params[key])}") for key in sorted(params)]
    details = r.details()  # what the stage told about this output (a frame's schedule, a video's fps, ...)
    lines += [("output" if i == 0 else "", f"{key}: {_fmt(details[key])}") for i, key in enumerate(sorted(details))]
    return lines


def _provenance(found: Found) -> list[tuple[str, str]]:
    r = found.record
    lines = [("model", f"{r.model.id or '?'} @ {r.model.revision or '?'}"
              + (f" ({r.model.source})" if r.model.source else ""))]
    if not r.inputs:
        lines.append(("inputs", "(none)"))
    for i, entry in enumerate(r.inputs):
        role = f" [{entry.role}]" if entry.role else ""
        lines.append(("inputs" if i == 0 else "", f"{entry.path}{role}  sha256 {short(entry.sha256)}"))
    if "recipe" in r.model_fields_set:
        recipe = r.recipe
        commit = recipe.git_commit
        git = "not in git" if not commit else f"git {commit[:12]}" + (" (dirty)" if recipe.git_dirty else " (clean)")
        lines.append(("recipe", f"{recipe.path or '?'}  sha256 {short(recipe.sha256)}, {git}"))
    if r.versions:
        lines.append(("versions", ", ".join(f"{k} {v}" for k, v in r.versions.items())))
    device = f"{r.device or '?'} {r.dtype or ''}".strip()
    if r.threads is not None:
        device += f", {r.threads} CPU threads"
    if r.batch is not None and len(r.batch) > 1:
        device += f", in a batch of {len(r.batch)}"
    lines.append(("device", device))
    if r.options:
        lines.append(("options", ", ".join(f"{k}={_fmt(v)}" for k, v in sorted(r.options.items()))))
    if r.time:
        took = f" in {r.seconds} s" if r.seconds is not None else ""
        lines.append(("rendered", f"{r.time}{took}"))
    return lines


def describe(found: Found) -> list[str]:
    """The human-readable lines of ``sdbatch inspect``."""
    r = found.record
    where = "PNG 'sdbatch' chunk" if found.source == "png" else f"{found.out_dir}/{MANIFEST_NAME}"
    lines = [("file", f"{found.file}  (metadata from {where})"),
             ("stage", f"{r.stage} ({r.type}), job {short(r.job_id)}")]
    if r.frame is not None:
        lines.append(("frame", _fmt(r.frame.index)))
    lines.append(("prompt", r.effective_prompt))
    if r.prompt_template:  # wildcards: the prompt as written, before it was expanded
        lines.append(("prompt template", r.prompt_template))
    lines.append(("negative prompt", r.negative_prompt or "(none)"))
    if r.negative_prompt_template:
        lines.append(("negative template", r.negative_prompt_template))
    lines.append(("seed", _fmt(r.effective_seed)))
    lines += _parameters(found) + _provenance(found)
    lines += [("untrusted", f"metadata field '{name}': {why}; not followed") for name, why in found.untrusted]
    lines += [("note", note) for note in found.notes]
    width = max(len(k) for k, _ in lines) + 1
    return [f"{(k + ':') if k else '':<{width}} {printable(str(v))}" for k, v in lines]


def inspect_output(path: Path, as_json: bool = False) -> int:
    """Print how ``path`` was made; 0, or 2 when it has no metadata (one line on stderr)."""
    try:
        found = find_record(Path(path))
    except ProvenanceError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_CANNOT
    if as_json:
        json.dump(found.record.to_json(), sys.stdout, ensure_ascii=False, indent=2, sort_keys=True)
        sys.stdout.write("\n")
        return EXIT_MATCH
    check_manifest_hash(found)
    print("\n".join(describe(found)))
    return EXIT_MATCH
