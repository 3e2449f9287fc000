"""What a gallery page shows of each output (see :mod:`.gallery`): its media, prompt and settings, its video
frames and previews folded under it. Pure: records in, dicts for the templates out."""

from __future__ import annotations

from typing import Any

from ..core.record import OutputRecord, is_video_path
from .grid import fmt, is_image, primary_input


def rows(record: OutputRecord, known: set[str]) -> list[tuple[str, str, bool]]:
    """(label, value, links to an output) of the settings shown under an output."""
    params = dict(record.params)
    out = [("seed", fmt(record.effective_seed))]
    if "width" in params and "height" in params:
        out.append(("size", f"{params.pop('width')}×{params.pop('height')}"))
    for key in ("steps", "guidance", "strength", "scheduler"):
        if key in params:
            value = fmt(params.pop(key))
            if key == "scheduler" and record.sampler and record.sampler != value:
                value += f" ({record.sampler})"
            out.append((key, value))
    out += [(key, fmt(params[key])) for key in sorted(params) if params[key] is not None]
    source = primary_input(record)
    if source:
        out.append(("input", source))
    out += [(str(entry.role), str(entry.path)) for entry in record.inputs if entry.role]
    return [(key, value, key in ("input", "mask") and value in known) for key, value in out]


def item(record: OutputRecord | None, parts: list[OutputRecord], known: set[str], thumbs: dict[str, str],
         stage: bool = False) -> dict[str, Any]:
    """An output (``None``: frames without their video yet, an unfinished job) with its frames and previews;
    ``thumbs``: output path -> its cached thumbnail; ``stage``: name the stage (older outputs are mixed)."""
    shown = record or parts[0]
    frames = [r.path for r in parts if r.role == "frame"]
    previews = [r.path for r in parts if r.role == "preview"]
    settings = rows(shown, known)
    if stage:
        settings.insert(0, ("stage", shown.stage, False))
    out: dict[str, Any] = {
        "path": shown.path, "src": thumbs.get(shown.path, shown.path), "css_class": "item",
        "prompt": shown.effective_prompt, "negative_prompt": shown.negative_prompt, "rows": settings,
        "parts": [(label, paths) for label, paths in (("frames", frames), ("previews", previews)) if paths]}
    if record is None:
        out["kind"] = "pending"
    elif is_video_path(record.path):
        out.update(kind="video", css_class="item video", poster=frames[0] if frames else None)
    elif is_image(record.path):
        width, height = record.params.get("width"), record.params.get("height")
        out.update(kind="image", alt=record.prompt or record.path,
                   size=(int(width), int(height)) if width and height else None)
    else:
        out["kind"] = "file"
    return out


def items(records: list[OutputRecord], known: set[str], thumbs: dict[str, str], stage: bool = False
          ) -> list[dict[str, Any]]:
    """The items of ``records`` in their order, each job's frames and previews under its output."""
    mains = [r for r in records if not r.is_part]
    parts: dict[str, list[OutputRecord]] = {}
    for r in records:
        if r.is_part:
            parts.setdefault(r.job_id, []).append(r)
    out, seen = [], set()
    for record in mains:
        out.append(item(record, parts.get(record.job_id, []) if record.job_id not in seen else [], known, thumbs,
                        stage))
        seen.add(record.job_id)
    out += [item(None, group, known, thumbs, stage) for job_id, group in parts.items() if job_id not in seen]
    return out


def stage_view(stage: str, records: list[OutputRecord], known: set[str], thumbs: dict[str, str],
               grids: list[dict[str, Any]]) -> dict[str, Any]:
    """A stage's section: its outputs (``outputs``; paged galleries replace them by ``pages``) and sheets."""
    shown = []
    for grid in grids:
        zoom = 2 if grid["width"] < 480 else 1  # small sheets (rehearsals) shown larger
        shown.append({"path": grid["path"], "width": grid["width"] * zoom, "height": grid["height"] * zoom})
    return {"name": stage, "types": sorted({r.type for r in records if r.type}),
            "count": sum(1 for r in records if not r.is_part), "model": records[0].model.id,
            "outputs": items(records, known, thumbs), "grids": shown, "pages": None}


def paged(name: str, views: list[dict[str, Any]], size: int, label: str) -> list[dict[str, Any]]:
    """``views`` cut into pages of ``size``: each ``{"name", "href", "label", "outputs"}`` (file ``<name>-001.html``
    ... under the pages folder, ``href`` relative to the output folder)."""
    pages = []
    for n, start in enumerate(range(0, len(views), size), 1):
        chunk = views[start:start + size]
        pages.append({"name": f"{name}-{n:03d}.html", "label": f"{label} {start + 1}–{start + len(chunk)}",
                      "outputs": chunk})
    return pages
