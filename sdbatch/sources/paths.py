"""Where a model spec points on disk (no torch, no hub): the one helper :mod:`.specs` and :mod:`.families` share."""

from __future__ import annotations

from pathlib import Path

from .tiny import BUILTIN_PREFIX


def local_model_path(spec: str, base_dir: Path) -> Path | None:
    """The local file or folder a model spec names, or None for a hub id / builtin."""
    if spec.startswith(BUILTIN_PREFIX):
        return None
    candidate = Path(spec).expanduser()
    if not candidate.is_absolute():
        candidate = base_dir / candidate
    if candidate.exists():
        return candidate
    return None
