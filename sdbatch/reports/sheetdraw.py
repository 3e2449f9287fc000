"""Drawing a contact sheet page (see :mod:`.grid`, which lays the pages out): labels wrapped into their boxes,
cells decoded in a few threads and pasted centred."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..core.record import OutputRecord

GRID_LABEL_WIDTH = 160  # the Y labels' column
GRID_HEADER_HEIGHT = 36  # the X labels' row (per block)
GRID_BLOCK_TITLE_HEIGHT = 24  # a block's title (only when there are several blocks)


def fmt(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if value is None:
        return "-"
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False, sort_keys=True)
    return str(value)


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


def label(key: str, value: Any) -> str:
    name = {"negative_prompt": "negative", "guidance": "CFG"}.get(key, key)
    return f"{name}: {fmt(value) if value != '' else '(empty)'}"


def draw_page(out_dir: Path, layout: Any, page: Any, cells: dict[tuple, OutputRecord],
              source: Callable[[OutputRecord], Path] | None = None) -> Any:
    """One page (a :class:`~.grid.SheetPage` of a :class:`~.grid.Layout`) as a PIL image; ``source`` says which
    file shows a cell (e.g. its cached thumbnail)."""
    from PIL import Image, ImageDraw

    from ..config.images import pil_image

    pil_image()  # sdbatch's pixel limit, explicitly
    cell_w, cell_h = layout.cell
    label_w, x_key, y_key = layout.label_w, layout.x_key, layout.y_key
    sheet = Image.new("RGB", (page.width, page.height), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    font = _font()
    bbox = draw.textbbox((0, 0), "Ag", font=font)
    line_height = bbox[3] - bbox[1] + 3
    wanted = [(band, y, x) for band in page.bands for y in band.ys for x in band.xs]
    images = load_cells(out_dir, [cells.get((b.block, y, x)) for b, y, x in wanted], (cell_w, cell_h), source)
    loaded = dict(zip(((id(b), y, x) for b, y, x in wanted), images))
    top = 0
    for band in page.bands:
        width = label_w + len(band.xs) * cell_w
        if band.title is not None:
            draw.rectangle((0, top, width - 1, top + GRID_BLOCK_TITLE_HEIGHT - 1), fill=(232, 232, 236))
            _draw_text(draw, (0, top, width, top + GRID_BLOCK_TITLE_HEIGHT), band.title, font, line_height)
            top += GRID_BLOCK_TITLE_HEIGHT
        for i, xv in enumerate(band.xs):
            left = label_w + i * cell_w
            if x_key:
                _draw_text(draw, (left, top, left + cell_w, top + GRID_HEADER_HEIGHT), label(x_key, xv), font,
                           line_height)
        top += GRID_HEADER_HEIGHT
        for j, yv in enumerate(band.ys):
            row_top = top + j * cell_h
            if y_key:
                _draw_text(draw, (0, row_top, GRID_LABEL_WIDTH, row_top + cell_h), label(y_key, yv), font,
                           line_height)
            for i, xv in enumerate(band.xs):
                left = label_w + i * cell_w
                image = loaded[(id(band), yv, xv)]
                if image is None:
                    draw.rectangle((left, row_top, left + cell_w - 1, row_top + cell_h - 1), fill=(225, 225, 225))
                    continue
                sheet.paste(image, (left + (cell_w - image.size[0]) // 2, row_top + (cell_h - image.size[1]) // 2))
        top += len(band.ys) * cell_h
    return sheet


def load_cells(out_dir: Path, records: list[OutputRecord | None], size: tuple[int, int],
                source: Callable[[OutputRecord], Path] | None) -> list[Any]:
    """Each record's image fitted into ``size`` (None: an empty cell, or a file that cannot be read), decoded
    in a few threads (PIL releases the GIL)."""
    from concurrent.futures import ThreadPoolExecutor

    from PIL import Image

    def load(record: OutputRecord | None) -> Any:
        if record is None:
            return None
        path = source(record) if source is not None else out_dir / record.path
        try:
            with Image.open(path) as im:
                im.draft("RGB", size)  # JPEG thumbnails decode at the size they are shown
                image = im.convert("RGB")
        except (OSError, ValueError, Image.DecompressionBombError):
            return None
        if image.size[0] > size[0] or image.size[1] > size[1]:
            image.thumbnail(size, Image.LANCZOS)
        return image

    if len(records) < 16:
        return [load(r) for r in records]
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        return list(pool.map(load, records))
