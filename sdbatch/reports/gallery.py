"""A static gallery of an output folder: ``<out>/index.html``, and a contact sheet per sweeping stage.

``write_gallery(out_dir)`` reads ``manifest.jsonl`` (the latest record per path, only files that still
exist) and writes one self-contained page: inline CSS, no script, no network, every link relative (the
folder can be moved or zipped). Each stage gets a section with every output: images as thumbnails linking
to the files, mp4s as ``<video controls>``, each with its prompt, seed and parameters. Video frames and
in-progress previews are folded under the output they belong to. A stage whose images sweep also gets
``<out>/<stage>/grid.png`` (:mod:`.grid`), shown at the top of its section.

Everything is written inside the output folder: a manifest line whose ``path`` or ``stage`` is absolute, holds
``..`` or leads out of the folder through a symlink is ignored, with one warning line on stderr.

The HTML is in Jinja2 templates (``templates/gallery.html`` and its parts, autoescaped); this module only
prepares what they show.

Example::

    write_gallery(Path("outputs/wolves"))      # -> outputs/wolves/index.html
"""

from __future__ import annotations

import sys
from collections import OrderedDict
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ..core.record import OutputRecord, RunRecord, is_video_path
from ..io.manifest import MANIFEST_NAME, read_records
from .grid import fmt, is_image, primary_input, write_grid, write_if_changed
from .untrusted import inside, relpath_problem, shown

GALLERY_NAME = "index.html"
_ENV: Any = None


def _environment() -> Any:
    global _ENV
    if _ENV is None:
        from jinja2 import Environment, PackageLoader, StrictUndefined

        env = Environment(loader=PackageLoader("sdbatch.reports", "templates"), autoescape=True,
                          trim_blocks=True, lstrip_blocks=True, undefined=StrictUndefined)
        env.filters["href"] = lambda rel: quote(rel, safe="/")  # then escaped as any value
        _ENV = env
    return _ENV


# ------------------------------------------------------------------------------------------ records
def _escapes(out_dir: Path, record: OutputRecord) -> str | None:
    """Why ``record`` would lead the gallery out of ``out_dir`` (its file, or its stage's grid.png), or None."""
    stage = record.stage or "outputs"
    for name, value in (("path", record.path), ("stage", stage)):
        if relpath_problem(value) or (name == "stage" and "/" in value) or inside(out_dir, value) is None:
            return f"{name} {shown(value)}"
    return None


def read_gallery_records(out_dir: Path) -> tuple[list[OutputRecord], RunRecord | None]:
    """The latest output record per path, for files that exist, in order of each path's first record; and the
    last run's start record (one read of the manifest). Records leading out of ``out_dir`` are ignored (one
    warning line)."""
    latest: OrderedDict[str, OutputRecord] = OrderedDict()
    run, ignored = None, []
    for record in read_records(out_dir / MANIFEST_NAME):
        if isinstance(record, RunRecord) and record.event == "start":
            run = record
        elif isinstance(record, OutputRecord) and record.path:
            why = _escapes(out_dir, record)
            if why:
                ignored.append(why)
            else:
                latest[record.path] = record
    if ignored:
        print(f"warning: {out_dir / MANIFEST_NAME}: ignored {len(ignored)} output record(s) leading out of "
              f"{out_dir} (first: {ignored[0]})", file=sys.stderr)
    return [r for p, r in latest.items() if (out_dir / p).is_file()], run


def latest_outputs(out_dir: Path) -> list[OutputRecord]:
    """The latest output record per path, for files that exist, in order of each path's first record."""
    return read_gallery_records(out_dir)[0]


# ------------------------------------------------------------------------------------- what is shown
def _rows(record: OutputRecord, known: set[str]) -> list[tuple[str, str, bool]]:
    """(label, value, links to an output) of the settings shown under an output."""
    params = dict(record.params)
    rows = [("seed", fmt(record.effective_seed))]
    if "width" in params and "height" in params:
        rows.append(("size", f"{params.pop('width')}×{params.pop('height')}"))
    for key in ("steps", "guidance", "strength", "scheduler"):
        if key in params:
            value = fmt(params.pop(key))
            if key == "scheduler" and record.sampler and record.sampler != value:
                value += f" ({record.sampler})"
            rows.append((key, value))
    rows += [(key, fmt(params[key])) for key in sorted(params) if params[key] is not None]
    source = primary_input(record)
    if source:
        rows.append(("input", source))
    rows += [(str(entry.role), str(entry.path)) for entry in record.inputs if entry.role]
    return [(key, value, key in ("input", "mask") and value in known) for key, value in rows]


def _item(record: OutputRecord | None, parts: list[OutputRecord], known: set[str]) -> dict[str, Any]:
    """An output (``None``: frames without their video yet, an unfinished job) with its frames and previews."""
    shown = record or parts[0]
    frames = [r.path for r in parts if r.role == "frame"]
    previews = [r.path for r in parts if r.role == "preview"]
    item: dict[str, Any] = {
        "path": shown.path, "css_class": "item", "prompt": shown.effective_prompt,
        "negative_prompt": shown.negative_prompt, "rows": _rows(shown, known),
        "parts": [(label, paths) for label, paths in (("frames", frames), ("previews", previews)) if paths]}
    if record is None:
        item["kind"] = "pending"
    elif is_video_path(record.path):
        item.update(kind="video", css_class="item video", poster=frames[0] if frames else None)
    elif is_image(record.path):
        width, height = record.params.get("width"), record.params.get("height")
        item.update(kind="image", alt=record.prompt or record.path,
                    size=(int(width), int(height)) if width and height else None)
    else:
        item["kind"] = "file"
    return item


def _stage(out_dir: Path, stage: str, records: list[OutputRecord], known: set[str],
           seeds: dict[str, Any]) -> dict[str, Any]:
    mains = [r for r in records if not r.is_part]
    parts: dict[str, list[OutputRecord]] = {}
    for r in records:
        if r.is_part:
            parts.setdefault(r.job_id, []).append(r)
    items, seen = [], set()
    for record in mains:
        items.append(_item(record, parts.get(record.job_id, []) if record.job_id not in seen else [], known))
        seen.add(record.job_id)
    items += [_item(None, group, known) for job_id, group in parts.items() if job_id not in seen]
    view = {"name": stage, "types": sorted({r.type for r in records if r.type}), "count": len(mains),
            "model": records[0].model.id, "outputs": items, "grid": None}
    grid = write_grid(out_dir, stage, records, seeds)
    if grid is not None:
        from PIL import Image

        with Image.open(grid) as im:
            w, h = im.size
        zoom = 2 if w < 480 else 1  # small sheets (rehearsals) shown larger
        view["grid"] = {"path": grid.relative_to(out_dir).as_posix(), "width": w * zoom, "height": h * zoom}
    return view


def render_gallery(out_dir: Path) -> str:
    """The page's HTML (writes each sweeping stage's grid.png as a side effect)."""
    from markupsafe import Markup

    out_dir = Path(out_dir)
    records, run = read_gallery_records(out_dir)
    by_stage: OrderedDict[str, list[OutputRecord]] = OrderedDict()
    for record in records:
        by_stage.setdefault(record.stage or "outputs", []).append(record)
    known = {r.path for r in records}
    seeds = {r.path: r.seed for r in records}
    stages = [_stage(out_dir, stage, group, known, seeds) for stage, group in by_stage.items()]
    info = f"{sum(1 for r in records if not r.is_part)} output(s) in {len(stages)} stage(s)"
    rehearsal = bool(run is not None and run.rehearse)  # the last run was --rehearse: say so in title and heading
    if rehearsal:
        info = "Rehearsal (--rehearse): tiny built-in models, not real images · " + info
    recipe = run.recipe.path if run is not None and run.recipe is not None else None
    if recipe:
        info += f" · recipe {recipe}"
    times = [r.time for r in records if r.time]
    if times:
        info += f" · last rendered {max(times)}"
    env = _environment()
    css = env.loader.get_source(env, "gallery.css")[0]
    return env.get_template("gallery.html").render(
        title=f"sdbatch · {out_dir.resolve().name}" + (" · rehearsal" if rehearsal else ""), info=info,
        stages=stages, manifest=MANIFEST_NAME,
        css=Markup(css.strip("\n"))) + "\n"


def write_gallery(out_dir: Path) -> Path:
    """Write ``<out>/index.html`` (and the stages' ``grid.png``) atomically; return the page's path."""
    out_dir = Path(out_dir)
    page = render_gallery(out_dir)
    path = out_dir / GALLERY_NAME
    write_if_changed(path, page.encode("utf-8"))
    return path
