"""Input images and masks, opened safely: bounded pixels, whole files, still images; 8-bit and mask semantics.

:func:`check_image` is what ``validate`` runs on every file input, mask and animation ``init``: it refuses a
decompression bomb (more than :data:`~sdbatch.config.limits.MAX_IMAGE_PIXELS`, PIL's warning and error
alike), a file that is not an image, a truncated or corrupt one, and an animated one. It stays cheap: the
header always; a PNG's chunks and checksums (``verify()``, no decompression); a full decode of other formats
up to :data:`FULL_DECODE_PIXELS` (a large JPEG at 1/8 scale). :func:`to_mode` is how a stage converts what it
read: 16-bit and float images are scaled to 8 bits (never clipped), and a mask with a non-opaque alpha
channel is its alpha. PIL is imported inside the functions.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Any

from .limits import MAX_IMAGE_PIXELS

#: decode non-PNG images up to this many pixels at validate (about 30 ms for a JPEG this size)
FULL_DECODE_PIXELS = 2048 * 2048
#: modes holding more than 8 bits per sample: scaled into 0..255
WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_checked: dict[tuple[str, int, int], tuple[int, int]] = {}


def pil_image() -> Any:
    """``PIL.Image`` with sdbatch's pixel limit set (explicitly: not whatever another library left there)."""
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
    return Image


def _bomb(exc: Exception) -> str:
    found = re.search(r"\((\d+) pixels\)", str(exc))
    size = f"{int(found.group(1)):,} pixels" if found else "its size"
    return f"{size} is over the limit of {MAX_IMAGE_PIXELS:,} pixels (a decompression bomb?)"


def _verify(im: Any) -> None:
    """Read the whole file as cheaply as its format allows (raises what PIL raises for a broken one)."""
    if im.format == "PNG":
        im.verify()  # every chunk and its CRC, up to IEND: a truncated file fails
    elif im.width * im.height <= FULL_DECODE_PIXELS:
        im.load()
    elif im.format == "JPEG":
        im.draft("RGB", (im.width // 8, im.height // 8))
        im.load()


def check_image(path: Path) -> tuple[tuple[int, int] | None, str | None]:
    """((width, height), None) for a readable still image, else (None, why not) in one line."""
    try:
        stat = path.stat()
    except OSError as exc:
        return None, f"cannot read ({exc.strerror or exc})"
    key = (os.fspath(path), stat.st_size, stat.st_mtime_ns)
    if key in _checked:
        return _checked[key], None
    Image = pil_image()  # noqa: N806 - the module
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                size = im.size
                if getattr(im, "is_animated", False):
                    return None, (f"an animated image ({im.format}, several frames): image stages read one "
                                  "still image (a restyle stage reads a video)")
                _verify(im)
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        return None, _bomb(exc)
    except Image.UnidentifiedImageError:
        return None, "not an image file (PIL cannot identify it)"
    except Exception as exc:  # noqa: BLE001 - truncated, corrupt, unsupported: all one answer
        detail = " ".join(str(exc).split()) or type(exc).__name__
        return None, f"broken or truncated image ({detail[:120]})"
    _checked[key] = size
    return size, None


def image_size(path: Path) -> tuple[int, int]:
    """The size of an image :func:`check_image` accepted (its header only otherwise)."""
    size, problem = check_image(path)
    if size is None:
        raise ValueError(f"{path}: {problem}")
    return size


def to_mode(im: Any, mode: str) -> Any:
    """``im`` converted to ``mode`` ("RGB", "L", ... or "mask": white = repaint, as mode "L").

    Images with more than 8 bits per sample are scaled (65535 and 1.0 are white), never clipped; a mask whose
    alpha channel is not fully opaque is that alpha (opaque = repaint, transparent = keep).
    """
    import numpy as np

    Image = pil_image()  # noqa: N806 - the module
    if mode == "mask":
        if im.mode == "P" and "transparency" in im.info:
            im = im.convert("RGBA")
        if "A" in im.getbands():
            alpha = im.getchannel("A")
            if alpha.getextrema()[0] < 255:
                return alpha
        mode = "L"
    if im.mode in WIDE_MODES or im.mode == "F":
        values = np.asarray(im, dtype=np.float64)
        scale = 255.0 if im.mode == "F" and values.size and values.max() <= 1.0 else 1.0
        if im.mode in WIDE_MODES:
            scale = 1.0 / 257.0  # 0..65535 onto 0..255 (257 = 65535 / 255)
        im = Image.fromarray(np.clip(np.rint(values * scale), 0, 255).astype(np.uint8))
    return im if im.mode == mode else im.convert(mode)
