"""A static gallery of an output folder: ``<out>/index.html``, and a contact sheet per sweeping stage.

``write_gallery(out_dir)`` reads ``manifest.jsonl`` (the latest record per path, only files that still
exist) and writes one self-contained page: inline CSS, no script, no network, every link relative (the
folder can be moved or zipped). Each stage gets a section with every output: images as thumbnails linking
to the files, mp4s as ``<video controls>``, each with its prompt, seed and parameters. Video frames and
in-progress previews are folded under the output they belong to.

A stage whose images sweep (more than one distinct value of prompt, negative_prompt, steps, guidance,
strength, scheduler or seed) also gets ``<out>/<stage>/grid.png``, a labelled contact sheet like
AUTOMATIC1111's X/Y plot: the parameter with the most distinct values runs along X, the next along Y, and
the rest (and the input image, when that is what tells two cells apart) make one block per combination,
stacked. It is shown at the top of the stage's section.

Grid geometry (all cells the size of the largest image, capped at :data:`GRID_CELL_MAX` px a side)::

    width  = GRID_LABEL_WIDTH (0 when there is no Y) + columns * cell_width
    height = sum over blocks of (GRID_BLOCK_TITLE_HEIGHT if several blocks) + GRID_HEADER_HEIGHT + rows * cell_height

Example::

    write_gallery(Path("outputs/wolves"))      # -> outputs/wolves/index.html
"""

from __future__ import annotations

import html
import io
import json
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ..io.artifacts import atomic_write_bytes
from ..io.manifest import MANIFEST_NAME, read_records

GALLERY_NAME = "index.html"
GRID_NAME = "grid.png"
#: parameters a sweep may vary, in the order ties are broken
SWEEP_PARAMS = ("prompt", "negative_prompt", "steps", "guidance", "strength", "scheduler", "seed")
GRID_LABEL_WIDTH = 160  # the Y labels' column
GRID_HEADER_HEIGHT = 36  # the X labels' row (per block)
GRID_BLOCK_TITLE_HEIGHT = 24  # a block's title (only when there are several blocks)
GRID_CELL_MAX = 512  # longest cell side; larger images are scaled down in the grid

CSS = """
:root { color-scheme: light dark; --fg: #1d1d1f; --muted: #6e6e73; --bg: #fafafa; --card: #fff; --line: #ddd; }
@media (prefers-color-scheme: dark) {
  :root { --fg: #eee; --muted: #a1a1a6; --bg: #161617; --card: #232325; --line: #3a3a3c; }
}
* { box-sizing: border-box; }
body { margin: 0; padding: 1.5rem; font: 14px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif;
       color: var(--fg); background: var(--bg); }
header { margin-bottom: 1.5rem; }
h1 { margin: 0 0 .25rem; font-size: 1.5rem; }
h2 { margin: 2rem 0 .75rem; font-size: 1.2rem; border-bottom: 1px solid var(--line); padding-bottom: .3rem; }
h2 small, .muted { color: var(--muted); font-weight: normal; }
nav a { margin-right: .8rem; }
a { color: inherit; }
.grid { margin: 0 0 1rem; }
.grid img { max-width: 100%; height: auto; border: 1px solid var(--line); background: #fff; }
.grid figcaption { margin-top: .2rem; }
.items { display: flex; flex-wrap: wrap; gap: 1rem; }
figure.item { margin: 0; width: 220px; background: var(--card); border: 1px solid var(--line); border-radius: 6px;
              padding: 8px; overflow-wrap: anywhere; }
figure.item.video { width: 340px; }
figure.item img.thumb { display: block; width: 100%; height: auto; max-height: 260px; object-fit: contain;
                        background: #0001; border-radius: 3px; }
figure.item video { display: block; width: 100%; height: auto; background: #000; border-radius: 3px; }
figcaption { margin-top: 6px; font-size: 12px; }
figcaption .prompt { font-weight: 600; font-size: 13px; }
figcaption dl { display: grid; grid-template-columns: auto 1fr; gap: 0 .5rem; margin: .3rem 0 0; }
figcaption dt { color: var(--muted); }
figcaption dd { margin: 0; }
details { margin-top: .4rem; }
details .strip { display: flex; flex-wrap: wrap; gap: 3px; margin-top: .3rem; }
details .strip img { width: 48px; height: auto; }
footer { margin-top: 2rem; color: var(--muted); font-size: 12px; }
"""


# ------------------------------------------------------------------------------------------ records
def latest_outputs(out_dir: Path) -> list[dict[str, Any]]:
    """The latest output record per path, for files that exist, in order of each path's first record."""
    latest: OrderedDict[str, dict[str, Any]] = OrderedDict()
    for record in read_records(out_dir / MANIFEST_NAME):
        path = record.get("path")
        if record.get("kind") != "output" or not isinstance(path, str) or not path:
            continue
        latest.setdefault(path, record)
        latest[path] = record
    return [r for p, r in latest.items() if _inside(out_dir, p) and (out_dir / p).is_file()]


def _inside(out_dir: Path, rel: str) -> bool:
    try:
        (out_dir / rel).resolve().relative_to(out_dir.resolve())
        return True
    except (ValueError, OSError):
        return False


def _is_extra(record: dict[str, Any]) -> bool:
    """A video frame or an in-progress preview: shown folded under its job's output."""
    return "frame" in record or "preview" in record


def _is_image(path: str) -> bool:
    return Path(path).suffix.lower() in (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp")


def _is_video(path: str) -> bool:
    return Path(path).suffix.lower() in (".mp4", ".webm", ".mov", ".m4v")


def sweep_value(record: dict[str, Any], key: str) -> Any:
    if key in ("prompt", "negative_prompt", "seed"):
        return record.get(key)
    return (record.get("params") or {}).get(key)


def _primary_input(record: dict[str, Any]) -> str | None:
    for entry in record.get("inputs") or []:
        if entry.get("role") is None:
            return entry.get("path")
    return None


def _ordered(values: Iterable[Any]) -> list[Any]:
    """Distinct values: numbers ascending, anything else in order of first appearance."""
    distinct = list(dict.fromkeys(_hashable(v) for v in values))
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in distinct):
        return sorted(distinct)
    return distinct


def _hashable(value: Any) -> Any:
    return json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else value


def _fmt(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if value is None:
        return "-"
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False, sort_keys=True)
    return str(value)


# --------------------------------------------------------------------------------------------- grid
def grid_axes(records: list[dict[str, Any]], seeds_by_path: dict[str, Any] | None = None
              ) -> tuple[str | None, str | None, list[str]]:
    """(X, Y, block parameters) of a stage's images; (None, None, []) when nothing sweeps.

    The two parameters with most distinct values are X and Y (ties in :data:`SWEEP_PARAMS` order), the rest
    make blocks. When two images would share a cell only because they came from different inputs (an
    img2img over several upstream images), the input becomes a dimension too (never X: its labels are
    long), and a parameter that the input alone determines (e.g. a seed inherited from it) is dropped; a
    stage where nothing but such inherited values varies does not sweep. ``seeds_by_path`` (output path ->
    seed) tells a seed each image inherited from its input (a stage without seeds of its own) from a swept one.
    """
    counts = {key: len(_ordered(sweep_value(r, key) for r in records)) for key in SWEEP_PARAMS}
    dims = [key for key in SWEEP_PARAMS if counts[key] > 1]
    if "seed" in dims and seeds_by_path and all(
            _primary_input(r) in seeds_by_path and seeds_by_path[_primary_input(r)] == r.get("seed") for r in records):
        dims.remove("seed")  # inherited, not swept
    if not dims:
        return None, None, []
    cells = {tuple(_value(r, k) for k in dims) for r in records}
    if len(cells) < len(records) and len({_primary_input(r) for r in records}) > 1:
        counts["input"] = len({_primary_input(r) for r in records})
        dims.append("input")
        for a in sorted(dims, key=lambda k: (k != "input", -SWEEP_PARAMS.index(k) if k in SWEEP_PARAMS else 0)):
            if len(dims) > 1 and any(b != a and counts[b] >= counts[a] and _determines(records, b, a) for b in dims):
                dims.remove(a)
    dims.sort(key=lambda k: (k == "input", -counts[k], SWEEP_PARAMS.index(k) if k in SWEEP_PARAMS else 99))
    if dims == ["input"]:  # what varied was only inherited from the inputs (e.g. their seeds): no sweep
        return None, None, []
    x = dims[0]
    y = dims[1] if len(dims) > 1 else None
    text = ("prompt", "negative_prompt")
    if y is not None and counts[x] == counts[y] and x in text and y not in text:
        x, y = y, x  # on a tie, long prompt labels go down the wide left column
    if y is not None and "input" in dims[2:]:  # the input reads better as rows than as a block title
        y = "input"
    return x, y, [k for k in dims if k not in (x, y)]


def _determines(records: list[dict[str, Any]], b: str, a: str) -> bool:
    """Whether each value of ``b`` comes with a single value of ``a``."""
    seen: dict[Any, Any] = {}
    for r in records:
        vb, va = _value(r, b), _value(r, a)
        if seen.setdefault(vb, va) != va:
            return False
    return True


def _value(record: dict[str, Any], key: str) -> Any:
    return _hashable(_primary_input(record) if key == "input" else sweep_value(record, key))


def _font(size: int = 11) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 (no size argument)
        return ImageFont.load_default()


def _wrap(draw: Any, text: str, font: Any, width: int, max_lines: int) -> list[str]:
    """``text`` broken into lines no wider than ``width`` px (long words split), ellipsised to ``max_lines``."""
    lines: list[str] = []
    line = ""
    for word in text.split():
        candidate = f"{line} {word}" if line else word
        if draw.textlength(candidate, font=font) <= width:
            line = candidate
            continue
        if draw.textlength(word, font=font) <= width:  # fits on a line of its own
            lines.append(line)
            line = word
            continue
        line = f"{line} " if line else ""  # too long for any line: fill this one, then split
        for ch in word:
            if draw.textlength(line + ch, font=font) > width and line.strip():
                lines.append(line.rstrip())
                line = ""
            line += ch
    if line:
        lines.append(line)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        last = lines[-1]
        while last and draw.textlength(last + "…", font=font) > width:
            last = last[:-1]
        lines[-1] = last + "…"
    return lines or [""]


def _draw_text(draw: Any, box: tuple[int, int, int, int], text: str, font: Any, line_height: int) -> None:
    """``text`` wrapped and centred in ``box`` (left, top, right, bottom)."""
    left, top, right, bottom = box
    pad = 3
    max_lines = max(1, (bottom - top - 2 * pad) // line_height)
    lines = _wrap(draw, text, font, max(8, right - left - 2 * pad), max_lines)
    y = top + (bottom - top - len(lines) * line_height) // 2
    for line in lines:
        w = draw.textlength(line, font=font)
        draw.text((left + (right - left - w) / 2, y), line, fill=(20, 20, 20), font=font)
        y += line_height


def _label(key: str, value: Any) -> str:
    name = {"negative_prompt": "negative", "guidance": "CFG"}.get(key, key)
    return f"{name}: {_fmt(value) if value != '' else '(empty)'}"


def make_grid(out_dir: Path, records: list[dict[str, Any]], seeds_by_path: dict[str, Any] | None = None) -> Any:
    """The contact sheet (a PIL image) of a stage's image records, or None when nothing sweeps."""
    from PIL import Image, ImageDraw

    x_key, y_key, block_keys = grid_axes(records, seeds_by_path)
    if x_key is None and y_key is None:
        return None
    sizes = []
    for record in records:
        params = record.get("params") or {}
        sizes.append((int(params.get("width") or 0), int(params.get("height") or 0)))
    cell_w = max(w for w, _ in sizes) or 64
    cell_h = max(h for _, h in sizes) or 64
    scale = min(1.0, GRID_CELL_MAX / max(cell_w, cell_h))
    cell_w, cell_h = max(8, round(cell_w * scale)), max(8, round(cell_h * scale))
    xs = _ordered(_value(r, x_key) for r in records) if x_key else [None]
    ys = _ordered(_value(r, y_key) for r in records) if y_key else [None]
    blocks = _ordered(tuple(_value(r, k) for k in block_keys) for r in records) if block_keys else [()]
    cells: dict[tuple, dict[str, Any]] = {}
    for record in records:  # later records win a cell
        key = (tuple(_value(record, k) for k in block_keys), _value(record, y_key) if y_key else None,
               _value(record, x_key) if x_key else None)
        cells[key] = record
    titled = len(blocks) > 1
    block_h = (GRID_BLOCK_TITLE_HEIGHT if titled else 0) + GRID_HEADER_HEIGHT + len(ys) * cell_h
    label_w = GRID_LABEL_WIDTH if y_key else 0  # one row: no row labels
    width = label_w + len(xs) * cell_w
    sheet = Image.new("RGB", (width, block_h * len(blocks)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    font = _font()
    bbox = draw.textbbox((0, 0), "Ag", font=font)
    line_height = bbox[3] - bbox[1] + 3
    for b, block in enumerate(blocks):
        top = b * block_h
        if titled:
            title = ", ".join(_label(k, v) for k, v in zip(block_keys, block))
            draw.rectangle((0, top, width - 1, top + GRID_BLOCK_TITLE_HEIGHT - 1), fill=(232, 232, 236))
            _draw_text(draw, (0, top, width, top + GRID_BLOCK_TITLE_HEIGHT), title, font, line_height)
            top += GRID_BLOCK_TITLE_HEIGHT
        for i, xv in enumerate(xs):
            left = label_w + i * cell_w
            if x_key:
                _draw_text(draw, (left, top, left + cell_w, top + GRID_HEADER_HEIGHT), _label(x_key, xv), font,
                           line_height)
        top += GRID_HEADER_HEIGHT
        for j, yv in enumerate(ys):
            row_top = top + j * cell_h
            if y_key:
                _draw_text(draw, (0, row_top, GRID_LABEL_WIDTH, row_top + cell_h), _label(y_key, yv), font,
                           line_height)
            for i, xv in enumerate(xs):
                left = label_w + i * cell_w
                record = cells.get((block, yv, xv))
                if record is None:
                    draw.rectangle((left, row_top, left + cell_w - 1, row_top + cell_h - 1), fill=(225, 225, 225))
                    continue
                with Image.open(out_dir / record["path"]) as im:
                    im.load()
                    image = im.convert("RGB")
                if image.size[0] > cell_w or image.size[1] > cell_h:
                    image.thumbnail((cell_w, cell_h), Image.LANCZOS)
                sheet.paste(image, (left + (cell_w - image.size[0]) // 2, row_top + (cell_h - image.size[1]) // 2))
    return sheet


def write_grid(out_dir: Path, stage: str, records: list[dict[str, Any]],
               seeds_by_path: dict[str, Any] | None = None) -> Path | None:
    """Write ``<out>/<stage>/grid.png`` atomically when the stage sweeps; return its path (or None)."""
    images = [r for r in records if _is_image(r["path"]) and not _is_extra(r)]
    path = out_dir / stage / GRID_NAME
    sheet = make_grid(out_dir, images, seeds_by_path) if len(images) > 1 else None
    if sheet is None:
        if path.is_file():  # the stage swept before, no more: the old sheet would mislead
            path.unlink()
        return None
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG", compress_level=6)
    _write_if_changed(path, buffer.getvalue())
    return path


def _write_if_changed(path: Path, data: bytes) -> None:
    """Atomically write ``data``, unless the file already holds exactly it (a no-op re-run rewrites nothing)."""
    try:
        if path.stat().st_size == len(data) and path.read_bytes() == data:
            return
    except OSError:
        pass
    atomic_write_bytes(path, data)


# --------------------------------------------------------------------------------------------- html
def _href(rel: str) -> str:
    return html.escape(quote(rel, safe="/"), quote=True)


def _e(text: Any) -> str:
    return html.escape(_fmt(text) if not isinstance(text, str) else text, quote=True)


def _params_rows(record: dict[str, Any]) -> list[tuple[str, str]]:
    params = dict(record.get("params") or {})
    rows = [("seed", _fmt(record.get("seed")))]
    if "width" in params and "height" in params:
        rows.append(("size", f"{params.pop('width')}×{params.pop('height')}"))
    for key in ("steps", "guidance", "strength", "scheduler"):
        if key in params:
            value = _fmt(params.pop(key))
            if key == "scheduler" and record.get("sampler") and record["sampler"] != value:
                value += f" ({record['sampler']})"
            rows.append((key, value))
    for key in sorted(params):
        if params[key] is not None:
            rows.append((key, _fmt(params[key])))
    source = _primary_input(record)
    if source:
        rows.append(("input", source))
    for entry in record.get("inputs") or []:
        if entry.get("role"):
            rows.append((str(entry["role"]), str(entry.get("path"))))
    return rows


def _caption(record: dict[str, Any], out_dir: Path, known: set[str]) -> str:
    parts = [f'<div class="prompt">{_e(record.get("prompt") or "(no prompt)")}</div>']
    if record.get("negative_prompt"):
        parts.append(f'<div class="muted">negative: {_e(record["negative_prompt"])}</div>')
    rows = []
    for key, value in _params_rows(record):
        if key in ("input", "mask") and value in known:
            shown = f'<a href="{_href(value)}">{_e(value)}</a>'
        else:
            shown = _e(value)
        rows.append(f"<dt>{_e(key)}</dt><dd>{shown}</dd>")
    parts.append("<dl>" + "".join(rows) + "</dl>")
    return "".join(parts)


def _extras_html(extras: list[dict[str, Any]]) -> str:
    if not extras:
        return ""
    frames = [r for r in extras if "frame" in r]
    previews = [r for r in extras if "preview" in r and "frame" not in r]
    out = []
    for label, group in (("frames", frames), ("previews", previews)):
        if not group:
            continue
        imgs = "".join(
            f'<a href="{_href(r["path"])}"><img src="{_href(r["path"])}" loading="lazy" alt="{_e(r["path"])}" '
            f'title="{_e(r["path"])}"></a>' for r in group)
        out.append(f"<details><summary>{len(group)} {label}</summary><div class=\"strip\">{imgs}</div></details>")
    return "".join(out)


def _item_html(record: dict[str, Any] | None, extras: list[dict[str, Any]], out_dir: Path, known: set[str]) -> str:
    shown = record or extras[0]
    rel = shown["path"]
    if record is not None and _is_video(rel):
        frames = [r["path"] for r in extras if "frame" in r]
        poster = f' poster="{_href(frames[0])}"' if frames else ""
        media = (f'<video controls preload="metadata"{poster} src="{_href(rel)}"></video>'
                 f'<div><a href="{_href(rel)}">{_e(rel)}</a></div>')
        cls = "item video"
    elif record is not None and _is_image(rel):
        size = ""
        params = record.get("params") or {}
        if params.get("width") and params.get("height"):
            size = f' width="{int(params["width"])}" height="{int(params["height"])}"'
        media = (f'<a href="{_href(rel)}"><img class="thumb" src="{_href(rel)}"{size} loading="lazy" '
                 f'alt="{_e(record.get("prompt") or rel)}" title="{_e(rel)}"></a>')
        cls = "item"
    elif record is not None:
        media = f'<a href="{_href(rel)}">{_e(rel)}</a>'
        cls = "item"
    else:  # frames without their video yet (an unfinished job)
        media = '<div class="muted">(video not finished)</div>'
        cls = "item"
    return (f'<figure class="{cls}">{media}<figcaption>{_caption(shown, out_dir, known)}'
            f"{_extras_html(extras)}</figcaption></figure>")


def _stage_html(stage: str, records: list[dict[str, Any]], out_dir: Path, grid: Path | None,
                known: set[str], grid_size: tuple[int, int] = (0, 0)) -> str:
    mains = [r for r in records if not _is_extra(r)]
    extras: dict[Any, list[dict[str, Any]]] = {}
    for r in records:
        if _is_extra(r):
            extras.setdefault(r.get("job_id"), []).append(r)
    types = sorted({str(r.get("type")) for r in records if r.get("type")})
    model = (records[0].get("model") or {}).get("id")
    head = (f'<h2 id="stage-{_e(stage)}">{_e(stage)} <small>{_e(", ".join(types))} · {len(mains)} output(s)'
            + (f" · {_e(model)}" if model else "") + "</small></h2>")
    parts = [f"<section>{head}"]
    if grid is not None:
        rel = grid.relative_to(out_dir).as_posix()
        w, h = grid_size
        zoom = 2 if w < 480 else 1  # small sheets (rehearsals) shown larger
        parts.append(f'<figure class="grid"><a href="{_href(rel)}"><img src="{_href(rel)}" width="{w * zoom}" '
                     f'height="{h * zoom}" alt="{_e(stage)} contact sheet"></a><figcaption class="muted">contact '
                     f'sheet: <a href="{_href(rel)}">{_e(rel)}</a></figcaption></figure>')
    items = []
    seen_jobs = set()
    for record in mains:
        job = record.get("job_id")
        own = extras.get(job, []) if job not in seen_jobs else []
        seen_jobs.add(job)
        items.append(_item_html(record, own, out_dir, known))
    for job, group in extras.items():
        if job not in seen_jobs:
            items.append(_item_html(None, group, out_dir, known))
    parts.append('<div class="items">' + "".join(items) + "</div></section>")
    return "".join(parts)


def _run_info(out_dir: Path) -> dict[str, Any]:
    last: dict[str, Any] = {}
    for record in read_records(out_dir / MANIFEST_NAME):
        if record.get("kind") == "run" and record.get("event") == "start":
            last = record
    return last


def render_gallery(out_dir: Path) -> str:
    """The page's HTML (writes each sweeping stage's grid.png as a side effect)."""
    out_dir = Path(out_dir)
    records = latest_outputs(out_dir)
    stages: OrderedDict[str, list[dict[str, Any]]] = OrderedDict()
    for record in records:
        stages.setdefault(str(record.get("stage") or "outputs"), []).append(record)
    known = {r["path"] for r in records}
    seeds = {r["path"]: r.get("seed") for r in records}
    run = _run_info(out_dir)
    recipe = (run.get("recipe") or {}).get("path") or ""
    title = f"sdbatch · {out_dir.resolve().name}"
    nav = "".join(f'<a href="#stage-{_e(s)}">{_e(s)}</a>' for s in stages)
    sections = []
    for stage, stage_records in stages.items():
        grid = write_grid(out_dir, stage, stage_records, seeds)
        size = (0, 0)
        if grid is not None:
            from PIL import Image

            with Image.open(grid) as im:
                size = im.size
        sections.append(_stage_html(stage, stage_records, out_dir, grid, known, size))
    count = sum(1 for r in records if not _is_extra(r))
    info = f"{count} output(s) in {len(stages)} stage(s)"
    if recipe:
        info += f" · recipe {recipe}"
    times = [str(r["time"]) for r in records if r.get("time")]
    if times:
        info += f" · last rendered {max(times)}"
    body = "".join(sections) or '<p class="muted">No outputs yet.</p>'
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{CSS}</style></head><body>"
        f"<header><h1>{_e(title)}</h1><div class=\"muted\">{_e(info)}</div><nav>{nav}</nav></header>"
        f"<main>{body}</main>"
        f'<footer>Written by sdbatch from <a href="{MANIFEST_NAME}">{MANIFEST_NAME}</a>. '
        "Open any image to see its settings; <code>sdbatch inspect FILE</code> shows how it was made.</footer>"
        "</body></html>\n"
    )


def write_gallery(out_dir: Path) -> Path:
    """Write ``<out>/index.html`` (and the stages' ``grid.png``) atomically; return the page's path."""
    out_dir = Path(out_dir)
    page = render_gallery(out_dir)
    path = out_dir / GALLERY_NAME
    _write_if_changed(path, page.encode("utf-8"))
    return path
