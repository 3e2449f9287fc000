"""The contact sheet of a sweeping stage: ``<out>/<stage>/grid.png`` (see :mod:`.gallery`).

A stage whose images sweep (more than one distinct value of prompt, negative_prompt, steps, guidance,
strength, scheduler or seed) gets a labelled contact sheet like AUTOMATIC1111's X/Y plot: the parameter with
the most distinct values runs along X, the next along Y, and the rest (and the input image, when that is
what tells two cells apart) make one block per combination, stacked.

Grid geometry (all cells the size of the largest image, capped at :data:`GRID_CELL_MAX` px a side)::

    width  = GRID_LABEL_WIDTH (0 when there is no Y) + columns * cell_width
    height = sum over blocks of (GRID_BLOCK_TITLE_HEIGHT if several blocks) + GRID_HEADER_HEIGHT + rows * cell_height
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..core.record import OutputRecord
from ..io.artifacts import atomic_write_bytes

GRID_NAME = "grid.png"
#: parameters a sweep may vary, in the order ties are broken
SWEEP_PARAMS = ("prompt", "negative_prompt", "steps", "guidance", "strength", "scheduler", "seed")
GRID_LABEL_WIDTH = 160  # the Y labels' column
GRID_HEADER_HEIGHT = 36  # the X labels' row (per block)
GRID_BLOCK_TITLE_HEIGHT = 24  # a block's title (only when there are several blocks)
GRID_CELL_MAX = 512  # longest cell side; larger images are scaled down in the grid
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp")


def is_image(path: str) -> bool:
    return path.lower().endswith(IMAGE_SUFFIXES)


def sweep_value(record: OutputRecord, key: str) -> Any:
    if key in ("prompt", "negative_prompt", "seed"):
        return getattr(record, key)
    return record.params.get(key)


def primary_input(record: OutputRecord) -> str | None:
    """The path of the record's input image (not its mask), if any."""
    return next((entry.path for entry in record.inputs if entry.role is None), None)


def _ordered(values: Iterable[Any]) -> list[Any]:
    """Distinct values: numbers ascending, anything else in order of first appearance."""
    distinct = list(dict.fromkeys(_hashable(v) for v in values))
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in distinct):
        return sorted(distinct)
    return distinct


def _hashable(value: Any) -> Any:
    return json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else value


def fmt(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if value is None:
        return "-"
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False, sort_keys=True)
    return str(value)


# --------------------------------------------------------------------------------------------- grid
def grid_axes(records: list[OutputRecord], seeds_by_path: dict[str, Any] | None = None
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
            primary_input(r) in seeds_by_path and seeds_by_path[primary_input(r)] == r.seed for r in records):
        dims.remove("seed")  # inherited, not swept
    if not dims:
        return None, None, []
    cells = {tuple(_value(r, k) for k in dims) for r in records}
    if len(cells) < len(records) and len({primary_input(r) for r in records}) > 1:
        counts["input"] = len({primary_input(r) for r in records})
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


def _determines(records: list[OutputRecord], b: str, a: str) -> bool:
    """Whether each value of ``b`` comes with a single value of ``a``."""
    seen: dict[Any, Any] = {}
    for r in records:
        vb, va = _value(r, b), _value(r, a)
        if seen.setdefault(vb, va) != va:
            return False
    return True


def _value(record: OutputRecord, key: str) -> Any:
    return _hashable(primary_input(record) if key == "input" else sweep_value(record, key))


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
    return f"{name}: {fmt(value) if value != '' else '(empty)'}"


def make_grid(out_dir: Path, records: list[OutputRecord], seeds_by_path: dict[str, Any] | None = None) -> Any:
    """The contact sheet (a PIL image) of a stage's image records, or None when nothing sweeps."""
    from PIL import Image, ImageDraw

    x_key, y_key, block_keys = grid_axes(records, seeds_by_path)
    if x_key is None and y_key is None:
        return None
    sizes = []
    for record in records:
        sizes.append((int(record.params.get("width") or 0), int(record.params.get("height") or 0)))
    cell_w = max(w for w, _ in sizes) or 64
    cell_h = max(h for _, h in sizes) or 64
    scale = min(1.0, GRID_CELL_MAX / max(cell_w, cell_h))
    cell_w, cell_h = max(8, round(cell_w * scale)), max(8, round(cell_h * scale))
    xs = _ordered(_value(r, x_key) for r in records) if x_key else [None]
    ys = _ordered(_value(r, y_key) for r in records) if y_key else [None]
    blocks = _ordered(tuple(_value(r, k) for k in block_keys) for r in records) if block_keys else [()]
    cells: dict[tuple, OutputRecord] = {}
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
                with Image.open(out_dir / record.path) as im:
                    im.load()
                    image = im.convert("RGB")
                if image.size[0] > cell_w or image.size[1] > cell_h:
                    image.thumbnail((cell_w, cell_h), Image.LANCZOS)
                sheet.paste(image, (left + (cell_w - image.size[0]) // 2, row_top + (cell_h - image.size[1]) // 2))
    return sheet


def write_grid(out_dir: Path, stage: str, records: list[OutputRecord],
               seeds_by_path: dict[str, Any] | None = None) -> Path | None:
    """Write ``<out>/<stage>/grid.png`` atomically when the stage sweeps; return its path (or None)."""
    images = [r for r in records if is_image(r.path) and not r.is_part]
    path = out_dir / stage / GRID_NAME
    sheet = make_grid(out_dir, images, seeds_by_path) if len(images) > 1 else None
    if sheet is None:
        if path.is_file():  # the stage swept before, no more: the old sheet would mislead
            path.unlink()
        return None
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG", compress_level=6)
    write_if_changed(path, buffer.getvalue())
    return path


def write_if_changed(path: Path, data: bytes) -> None:
    """Atomically write ``data``, unless the file already holds exactly it (a no-op re-run rewrites nothing)."""
    try:
        if path.stat().st_size == len(data) and path.read_bytes() == data:
            return
    except OSError:
        pass
    atomic_write_bytes(path, data)
