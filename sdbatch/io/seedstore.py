"""Random seeds (``seed: -1``, as in AUTOMATIC1111), drawn once per output folder and kept in it.

A recipe's ``-1`` (``seed: -1``, a ``-1`` in ``seeds: [...]``, ``seeds: {start: -1, count: N}``, also from
``defaults`` or ``--set defaults.seed=-1``) is drawn on the first ``run`` into an output folder, in
AUTOMATIC1111's range 0..2**32-1 (a range's start so that its last seed stays in it), and stored in
``<out>/random-seeds.json`` (written atomically, under the run lock) by a key naming the stage and the place
of the ``-1`` (see :meth:`sdbatch.config.stage.StageConfig.random_seeds`). Every later ``run``, resume,
``--force`` and ``plan`` of that folder uses the stored seeds, so job ids, names and pixels stay the same; a
``--rehearse`` run has its own folder and so its own draws. Stored seeds are never dropped: a recipe edited
back to an earlier form gets its earlier seeds.

``plan`` (and ``validate``) never write: before the first run a seed still to be drawn is drawn provisionally,
for that plan only (``plan`` marks it ``random, provisional``); the first run draws its own.

The file::

    {"format": 1, "seeds": {"sketch/seed": 2739105443, "grid/seeds/start": 12004511}}
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path

from ..config.limits import MAX_SEED
from ..config.types import RANDOM_SEED_MAX
from ..errors import UsageError
from .artifacts import atomic_write_bytes

STORE_NAME = "random-seeds.json"
FORMAT = 1


class SeedStore:
    """The random seeds of one output folder: those stored, and those drawn by this process (provisional until
    :meth:`commit`)."""

    def __init__(self, path: Path, stored: dict[str, int] | None = None):
        self.path = path
        self.stored: dict[str, int] = dict(stored or {})
        self.drawn: dict[str, int] = {}

    @classmethod
    def read(cls, out_dir: Path) -> SeedStore:
        """The store of ``out_dir`` (empty when it has none); reads only. A UsageError if the file is not one."""
        path = Path(out_dir) / STORE_NAME
        return cls(path, _load(path))

    def seed(self, key: str, count: int = 1) -> int:
        """The seed stored for ``key``, else one drawn (once per store) so that ``count`` consecutive seeds from
        it stay in 0..2**32-1."""
        if key in self.stored:
            return self.stored[key]
        if key not in self.drawn:
            self.drawn[key] = secrets.randbelow(RANDOM_SEED_MAX + 2 - max(1, min(count, RANDOM_SEED_MAX)))
        return self.drawn[key]

    def commit(self) -> bool:
        """Store the seeds drawn so far (call it holding the run lock). The folder's file is read again first:
        a seed another run stored meanwhile wins over ours, and True says so (plan again); else False."""
        if not self.drawn:
            return False
        on_disk = _load(self.path)
        changed = any(key in on_disk and on_disk[key] != value for key, value in self.drawn.items())
        merged = {**self.drawn, **on_disk}
        if merged != on_disk:
            text = json.dumps({"format": FORMAT, "seeds": dict(sorted(merged.items()))}, indent=2) + "\n"
            atomic_write_bytes(self.path, text.encode())
        self.stored, self.drawn = merged, {}
        return changed


def _load(path: Path) -> dict[str, int]:
    if not (path.exists() or path.is_symlink()):
        return {}
    fix = "fix it, or delete it to draw new random seeds (which renders those jobs again)"
    if path.is_symlink() or not path.is_file():
        raise UsageError(f"error: {path} is not a regular file: {fix}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"error: cannot read {path}: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise UsageError(f"error: {path} is not valid JSON ({exc}): {fix}") from None
    seeds = data.get("seeds") if isinstance(data, dict) else None
    if not isinstance(seeds, dict):
        raise UsageError(f'error: {path} has no "seeds" object: {fix}')
    for key, value in seeds.items():
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SEED:
            raise UsageError(f"error: {path}: {key}: {value!r} is not a seed (0..2^64-1): {fix}")
    return seeds
