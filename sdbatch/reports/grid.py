"""The contact sheets of a sweeping stage: ``<out>/<stage>/grid.png``, or numbered pages ``grid-001.png``, ...
(see :mod:`.gallery`).

A stage whose images sweep (more than one distinct value of prompt, negative_prompt, steps, guidance,
strength, scheduler or seed, or of any other scalar parameter: width, clip_skip, model, a LoRA's weight as
``LoRA <file stem>``, an IP-Adapter's scale as ``IP-Adapter <weight stem>``, ...) gets a labelled contact
sheet like AUTOMATIC1111's X/Y plot: the parameter with
the most distinct values runs along X, the next along Y, and the rest (and the input image, when that is
what tells two cells apart) make one block per combination, stacked.

A sheet has a size budget: at most :data:`GRID_MAX_SIDE` px a side. Cells are the size of the largest image
(capped at :data:`GRID_CELL_MAX` px), scaled down to fit the budget but never below :data:`GRID_MIN_CELL` px;
a sweep that does not fit then is split into pages ``grid-001.png``, ``grid-002.png``, ... along its slowest
axis (blocks, then Y rows, then X columns), each page fully labelled (its X header, its Y labels, and a title
naming its block and the rows/columns it shows). One page keeps the name ``grid.png``. A page is drawn again
only when what it shows changed: its key (a hash of its layout, labels and cells' output sha256s) is stored
in the PNG (``sdbatch-grid`` text chunk); pages are written atomically, and sheets left from an earlier
layout are removed.

Grid geometry of one page (``cell``: the cell size after the budget)::

    width  = GRID_LABEL_WIDTH (0 when there is no Y) + columns * cell_width
    height = sum over its bands of (GRID_BLOCK_TITLE_HEIGHT if titled) + GRID_HEADER_HEIGHT + rows * cell_height
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.record import OutputRecord
from ..io.artifacts import atomic_write_bytes
from .sheetdraw import GRID_BLOCK_TITLE_HEIGHT, GRID_HEADER_HEIGHT, GRID_LABEL_WIDTH, draw_page, fmt, label

__all__ = ["GRID_BLOCK_TITLE_HEIGHT", "GRID_HEADER_HEIGHT", "GRID_LABEL_WIDTH", "fmt", "grid_axes", "write_grid"]

GRID_NAME = "grid.png"
#: parameters a sweep may vary, in the order ties are broken
SWEEP_PARAMS = ("prompt", "negative_prompt", "steps", "guidance", "strength", "scheduler", "seed")
GRID_CELL_MAX = 512  # longest cell side; larger images are scaled down in the grid
GRID_MAX_SIDE = 8192  # the budget: no sheet is wider or taller
GRID_MIN_CELL = 64  # cells are scaled down to fit the budget, never below this (then the sheet is paged)
GRID_VERSION = 2  # of the drawing: a page drawn by another version is drawn again
KEY_CHUNK = "sdbatch-grid"  # the PNG text chunk holding a page's key
SHEET_PATTERN = re.compile(r"grid(-\d{3,})?\.png")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp")


def is_image(path: str) -> bool:
    return path.lower().endswith(IMAGE_SUFFIXES)


def sweep_value(record: OutputRecord, key: str) -> Any:
    if key in ("prompt", "negative_prompt", "seed"):
        return getattr(record, key)
    if key == "model":
        return record.model.id
    if key.startswith(LORA_KEY):  # "LoRA <file stem>": that LoRA's weight (None: not used)
        return next((lora.get("weight") for lora in record.params.get("loras") or ()
                     if isinstance(lora, dict) and _lora_name(lora) == key), None)
    if key.startswith(IP_ADAPTER_KEY):  # "IP-Adapter <weight stem>": that adapter's scale
        return next((unit.get("scale") for unit in record.params.get("ip_adapter") or ()
                     if isinstance(unit, dict) and _ip_adapter_name(unit) == key), None)
    if key.startswith(CONTROLNET_KEY):  # "ControlNet <i>": that ControlNet's scale (sdbatch.stages.control)
        units = record.params.get("controlnet") or ()
        i = int(key[len(CONTROLNET_KEY):])
        return units[i].get("scale") if i < len(units) and isinstance(units[i], dict) else None
    return record.params.get(key)


LORA_KEY = "LoRA "
CONTROLNET_KEY = "ControlNet "


def _lora_name(lora: dict) -> str:
    return LORA_KEY + Path(str(lora.get("path", ""))).stem


IP_ADAPTER_KEY = "IP-Adapter "


def _ip_adapter_name(unit: dict) -> str:
    return IP_ADAPTER_KEY + Path(str(unit.get("weight_name", ""))).stem


def swept_params(records: list[OutputRecord]) -> list[str]:
    """Any other scalar parameter that varies (a sweep of width, clip_skip, model, a LoRA's weight, ...)."""
    keys: set[str] = set()
    for r in records:
        keys.update(k for k, v in r.params.items() if k not in SWEEP_PARAMS and isinstance(v, (str, int, float)))
        keys.update(_lora_name(lora) for lora in r.params.get("loras") or () if isinstance(lora, dict))
        keys.update(_ip_adapter_name(u) for u in r.params.get("ip_adapter") or () if isinstance(u, dict))
        keys.update(f"{CONTROLNET_KEY}{i}" for i, _ in enumerate(r.params.get("controlnet") or ()))
    keys.add("model")
    return sorted(k for k in keys if len({_hashable(sweep_value(r, k)) for r in records}) > 1)


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
    keys = SWEEP_PARAMS + tuple(swept_params(records))
    counts = {key: len(_ordered(sweep_value(r, key) for r in records)) for key in keys}
    dims = [key for key in keys if counts[key] > 1]
    if len({primary_input(r) for r in records}) > 1:  # e.g. a size each input image gave: not a sweep
        dims = [k for k in dims if k in SWEEP_PARAMS or not _determines(records, "input", k)]
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


@dataclass
class Band:
    """One labelled table of a page: a block's rows ``ys`` x columns ``xs``."""

    block: tuple
    title: str | None
    ys: list[Any]
    xs: list[Any]


@dataclass
class SheetPage:
    bands: list[Band]
    width: int
    height: int


@dataclass
class Layout:
    x_key: str | None
    y_key: str | None
    block_keys: list[str]
    cell: tuple[int, int]
    label_w: int
    pages: list[SheetPage] = field(default_factory=list)


def _chunks(values: list[Any], size: int) -> list[list[Any]]:
    return [values[i:i + size] for i in range(0, len(values), size)] or [[]]


def plan_sheets(xs: list[Any], ys: list[Any], blocks: list[tuple], native: tuple[int, int], has_y: bool,
                block_titles: list[str], max_side: int | None = None, min_cell: int | None = None
                ) -> tuple[tuple[int, int], int, list[SheetPage]]:
    """(cell size, label width, pages) of a sweep of ``len(blocks)`` blocks of ``ys`` x ``xs`` cells within the
    budget (default :data:`GRID_MAX_SIDE`, :data:`GRID_MIN_CELL`: read when called, so tests can lower them)."""
    max_side = max_side or GRID_MAX_SIDE
    min_cell = min_cell or GRID_MIN_CELL
    label_w = GRID_LABEL_WIDTH if has_y else 0
    several = len(blocks) > 1
    band_extra = (GRID_BLOCK_TITLE_HEIGHT if several else 0) + GRID_HEADER_HEIGHT
    cw, ch = native
    full_w = label_w + len(xs) * cw
    full_h = len(blocks) * (band_extra + len(ys) * ch)
    if full_w <= max_side and full_h <= max_side:  # it fits as it is: one sheet
        return (cw, ch), label_w, [SheetPage([Band(b, t if several else None, ys, xs) for b, t in
                                              zip(blocks, block_titles)], full_w, full_h)]
    fit = min((max_side - label_w) / (len(xs) * cw),
              max(1.0, max_side - len(blocks) * band_extra) / (len(blocks) * len(ys) * ch))
    floor = min(1.0, min_cell / max(cw, ch))
    scale = min(1.0, max(fit, floor))
    cw, ch = max(8, int(cw * scale)), max(8, int(ch * scale))
    full_w, full_h = label_w + len(xs) * cw, len(blocks) * (band_extra + len(ys) * ch)
    if full_w <= max_side and full_h <= max_side:  # smaller cells: still one sheet
        return (cw, ch), label_w, [SheetPage([Band(b, t if several else None, ys, xs) for b, t in
                                              zip(blocks, block_titles)], full_w, full_h)]
    # pages along the slowest axis: blocks, then rows, then columns; every band titled with what it shows
    per_row = max(1, (max_side - label_w) // cw)
    per_col = max(1, (max_side - GRID_BLOCK_TITLE_HEIGHT - GRID_HEADER_HEIGHT) // ch)
    row_chunks, col_chunks = _chunks(ys, per_col), _chunks(xs, per_row)
    bands = []
    for block, title in zip(blocks, block_titles):
        for r, rows in enumerate(row_chunks):
            for c, cols in enumerate(col_chunks):
                parts = [title] if several else []
                if len(row_chunks) > 1:
                    parts.append(f"rows {r * per_col + 1}-{r * per_col + len(rows)} of {len(ys)}")
                if len(col_chunks) > 1:
                    parts.append(f"columns {c * per_row + 1}-{c * per_row + len(cols)} of {len(xs)}")
                bands.append(Band(block, " · ".join(parts), rows, cols))
    pages: list[SheetPage] = []
    current: list[Band] = []
    height = 0
    for band in bands:
        h = GRID_BLOCK_TITLE_HEIGHT + GRID_HEADER_HEIGHT + len(band.ys) * ch
        if current and height + h > max_side:
            pages.append(SheetPage(current, label_w + max(len(b.xs) for b in current) * cw, height))
            current, height = [], 0
        current.append(band)
        height += h
    pages.append(SheetPage(current, label_w + max(len(b.xs) for b in current) * cw, height))
    return (cw, ch), label_w, pages


def grid_layout(records: list[OutputRecord], seeds_by_path: dict[str, Any] | None = None
                ) -> tuple[Layout, dict[tuple, OutputRecord]] | None:
    """The sheets of a stage's image records and its cells ((block, y, x) -> record), or None (no sweep)."""
    x_key, y_key, block_keys = grid_axes(records, seeds_by_path)
    if x_key is None and y_key is None:
        return None
    cell_w = max(int(r.params.get("width") or 0) for r in records) or 64
    cell_h = max(int(r.params.get("height") or 0) for r in records) or 64
    scale = min(1.0, GRID_CELL_MAX / max(cell_w, cell_h))
    native = (max(8, round(cell_w * scale)), max(8, round(cell_h * scale)))
    xs = _ordered(_value(r, x_key) for r in records) if x_key else [None]
    ys = _ordered(_value(r, y_key) for r in records) if y_key else [None]
    blocks = _ordered(tuple(_value(r, k) for k in block_keys) for r in records) if block_keys else [()]
    cells: dict[tuple, OutputRecord] = {}
    for record in records:  # later records win a cell
        key = (tuple(_value(record, k) for k in block_keys), _value(record, y_key) if y_key else None,
               _value(record, x_key) if x_key else None)
        cells[key] = record
    titles = [", ".join(label(k, v) for k, v in zip(block_keys, block)) for block in blocks]
    cell, label_w, pages = plan_sheets(xs, ys, blocks, native, y_key is not None, titles)
    return Layout(x_key, y_key, block_keys, cell, label_w, pages), cells


def page_key(layout: Layout, page: SheetPage, cells: dict[tuple, OutputRecord]) -> str:
    """What a page shows, as one hash: layout, labels, and each cell's output (path and sha256)."""
    shown = [GRID_VERSION, layout.x_key, layout.y_key, layout.block_keys, list(layout.cell), layout.label_w]
    for band in page.bands:
        rows = []
        for y in band.ys:
            rows.append([[r.path, r.sha256] if (r := cells.get((band.block, y, x))) else None for x in band.xs])
        shown.append([band.title, [fmt(x) for x in band.xs], [fmt(y) for y in band.ys], rows])
    return hashlib.sha256(json.dumps(shown, sort_keys=True, default=str).encode()).hexdigest()


def make_grid(out_dir: Path, records: list[OutputRecord], seeds_by_path: dict[str, Any] | None = None) -> Any:
    """The first contact sheet page (a PIL image) of a stage's image records, or None when nothing sweeps."""
    made = grid_layout(records, seeds_by_path)
    if made is None:
        return None
    layout, cells = made
    return draw_page(out_dir, layout, layout.pages[0], cells)


def sheet_name(number: int, pages: int) -> str:
    return GRID_NAME if pages == 1 else f"grid-{number:03d}.png"


def write_grid(out_dir: Path, stage: str, records: list[OutputRecord], seeds_by_path: dict[str, Any] | None = None,
               source: Callable[[OutputRecord], Path] | None = None) -> list[dict[str, Any]]:
    """Write the stage's contact sheet(s) when it sweeps; return each page (``path`` relative to ``out_dir``,
    ``width``, ``height``), [] when it does not. A page whose key is unchanged is not drawn again; sheets of an
    earlier layout are removed."""
    images = [r for r in records if is_image(r.path) and not r.is_part]
    folder = out_dir / stage
    made = grid_layout(images, seeds_by_path) if len(images) > 1 else None
    pages = made[0].pages if made else []
    wanted = {sheet_name(n, len(pages)) for n in range(1, len(pages) + 1)}
    if folder.is_dir():
        for old in folder.iterdir():  # the stage swept before, or was paged otherwise: old sheets would mislead
            if old.name not in wanted and SHEET_PATTERN.fullmatch(old.name) and old.is_file():
                old.unlink()
    shown = []
    for number, page in enumerate(pages, 1):
        assert made is not None
        layout, cells = made
        path = folder / sheet_name(number, len(pages))
        key = page_key(layout, page, cells)
        if _stored_key(path) != key:
            sheet = draw_page(out_dir, layout, page, cells, source)
            _save_sheet(path, sheet, key)
        shown.append({"path": path.relative_to(out_dir).as_posix(), "width": page.width, "height": page.height})
    return shown


def _stored_key(path: Path) -> str | None:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.info.get(KEY_CHUNK)
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


def _save_sheet(path: Path, sheet: Any, key: str) -> None:
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text(KEY_CHUNK, key)
    buffer = io.BytesIO()
    big = sheet.size[0] * sheet.size[1] > 4_000_000
    sheet.save(buffer, format="PNG", compress_level=1 if big else 6, pnginfo=info)
    atomic_write_bytes(path, buffer.getvalue())


def write_if_changed(path: Path, data: bytes) -> None:
    """Atomically write ``data``, unless the file already holds exactly it (a no-op re-run rewrites nothing)."""
    try:
        if path.stat().st_size == len(data) and path.read_bytes() == data:
            return
    except OSError:
        pass
    atomic_write_bytes(path, data)
