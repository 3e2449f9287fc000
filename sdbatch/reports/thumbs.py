"""Cached gallery thumbnails: ``<out>/.thumbs/<sha[:2]>/<sha256>.jpg``, at most :data:`THUMB_SIZE` px a side.

A thumbnail is named by its source's recorded sha256, so it is made once and made again only when its source
changes (a re-render has another sha256); images no larger than a thumbnail are shown as they are, with no
thumbnail. They are made in a few threads (PIL releases the GIL while decoding), written atomically; a source
that cannot be read gets no thumbnail (the gallery shows the file itself). Thumbnails no output names any
more are removed when the gallery is rebuilt.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ..io.artifacts import atomic_write_bytes

THUMB_SIZE = 256  # longest side
THUMBS_DIR = ".thumbs"
_SHA = re.compile(r"[0-9a-f]{64}")


def needs_thumb(width: Any, height: Any) -> bool:
    """Whether an image of this recorded size is larger than a thumbnail (unknown size: yes)."""
    try:
        return max(int(width), int(height)) > THUMB_SIZE
    except (TypeError, ValueError):
        return True


def thumb_rel(sha256: str | None) -> str | None:
    """The thumbnail's path relative to the output folder (None for a sha256 that is not one)."""
    if not isinstance(sha256, str) or not _SHA.fullmatch(sha256):
        return None
    return f"{THUMBS_DIR}/{sha256[:2]}/{sha256}.jpg"


def _make(out_dir: Path, source: str, target: str) -> bool:
    from ..config.images import pil_image

    image_module = pil_image()
    path = out_dir / target
    if path.parent.is_symlink():  # never written through a link (out of the folder)
        return False
    if path.is_file():
        return True
    try:
        with image_module.open(out_dir / source) as im:
            im.draft("RGB", (THUMB_SIZE, THUMB_SIZE))
            image = im.convert("RGB")
        image.thumbnail((THUMB_SIZE, THUMB_SIZE), image_module.LANCZOS)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=85)
    except (OSError, ValueError, image_module.DecompressionBombError):
        return False
    try:
        atomic_write_bytes(path, buffer.getvalue())
    except OSError:
        return False
    return True


def make_thumbs(out_dir: Path, wanted: Iterable[tuple[str, str]]) -> set[str]:
    """Make the thumbnails ``wanted`` ((source, thumbnail) paths relative to ``out_dir``) that are missing;
    returns the thumbnails that exist."""
    pairs = list(dict(((t, s) for s, t in wanted)).items())  # one per thumbnail
    root = out_dir / THUMBS_DIR
    if not pairs or root.is_symlink() or (root.exists() and not root.is_dir()):
        return set()
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        made = list(pool.map(lambda pair: _make(out_dir, pair[1], pair[0]), pairs))
    return {target for (target, _), ok in zip(pairs, made) if ok}


def remove_stale(out_dir: Path, keep: set[str]) -> None:
    """Remove the thumbnails (only files named like ours under ``.thumbs``) not in ``keep``."""
    root = out_dir / THUMBS_DIR
    if not root.is_dir() or root.is_symlink():
        return
    for folder in root.iterdir():
        if not (folder.is_dir() and not folder.is_symlink() and re.fullmatch(r"[0-9a-f]{2}", folder.name)):
            continue
        for path in folder.iterdir():
            rel = f"{THUMBS_DIR}/{folder.name}/{path.name}"
            if rel not in keep and re.fullmatch(r"[0-9a-f]{64}\.jpg", path.name) and path.is_file():
                try:
                    path.unlink()
                except OSError:
                    pass
