"""The one pickle policy: which weights files may be loaded.

``.safetensors`` always; the pickle formats (``.ckpt .pt .pth .bin``: loading one can run code) only where the
recipe says ``allow_pickle: true``. The same functions decide at validate (the recipe checks in
:mod:`sdbatch.sources.specs`) and at load (:mod:`sdbatch.runtime.models` for checkpoints, LoRAs, VAEs and
diffusers folders, :mod:`sdbatch.runtime.depth`), and there is no other way around them.

A diffusers (or transformers) model *folder* is loadable when each of its weights folders (the components its
``model_index.json`` names, else the folder itself) has ``.safetensors`` weights or no weights at all; then it is
loaded with ``use_safetensors=True`` (:func:`safetensors_only`), so a pickle beside them is never read.

    >>> weights_problem(Path("style.safetensors"), allow_pickle=False) is None
    True
    >>> weights_problem(Path("old.pth"), allow_pickle=True) is None
    True
    >>> weights_problem(Path("old.pth"), allow_pickle=False)[:28]
    'old.pth is a pickle file (.p'
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import ModelUnavailable

SAFETENSORS = ".safetensors"
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
WEIGHT_SUFFIXES = (SAFETENSORS, *PICKLE_SUFFIXES)
PICKLE_ADVICE = ("pickle files can run code when loaded; convert it to .safetensors, or set "
                 "'allow_pickle: true' at the top level of the recipe if you trust it")


def weights_problem(path: Path, allow_pickle: bool, name: str | None = None) -> str | None:
    """Why the weights file ``path`` (shown as ``name``, default its file name) may not be loaded, or None.

    This is the pickle policy; every other check here applies it.
    """
    suffix, name = path.suffix.lower(), name or path.name
    if suffix == SAFETENSORS or (suffix in PICKLE_SUFFIXES and allow_pickle):
        return None
    if suffix in PICKLE_SUFFIXES:
        return f"{name} is a pickle file ({suffix}): {PICKLE_ADVICE}"
    return f"{name} is not a weights file (.safetensors; {', '.join(PICKLE_SUFFIXES)} with allow_pickle)"


def _weights_folders(folder: Path) -> list[Path]:
    """Where a model folder keeps weights: its pipeline components' folders, else the folder itself."""
    try:
        index = json.loads((folder / "model_index.json").read_text())
    except (OSError, ValueError):
        return [folder]
    if not isinstance(index, dict):
        return [folder]
    return [folder / name for name, value in index.items()
            if not name.startswith("_") and isinstance(value, list) and (folder / name).is_dir()]


def folder_problem(folder: Path, allow_pickle: bool) -> str | None:
    """Why the diffusers/transformers model folder ``folder`` may not be loaded, or None.

    A weights folder whose weights are all pickles is refused without ``allow_pickle``, naming the file
    (relative to ``folder``); one with ``.safetensors`` weights is loaded from those alone.
    """
    if allow_pickle:
        return None
    for weights in _weights_folders(folder):
        files = sorted(p for p in weights.iterdir() if p.suffix.lower() in WEIGHT_SUFFIXES and p.is_file())
        if files and not any(p.suffix.lower() == SAFETENSORS for p in files):
            return weights_problem(files[0], False, f"{files[0].relative_to(folder).as_posix()} (no .safetensors "
                                                     "beside it)")
    return None


def ensure_loadable(path: Path, allow_pickle: bool, what: str = "") -> None:
    """Raise :class:`ModelUnavailable` (its message led by ``what``) unless the weights file or model folder
    ``path`` may be loaded: the check at load time, the same as at validate."""
    problem = folder_problem(path, allow_pickle) if path.is_dir() else weights_problem(path, allow_pickle)
    if problem:
        raise ModelUnavailable(f"{what}: {problem}" if what else problem)


def load_weights(path: Path, sha256: str, allow_pickle: bool, what: str) -> Any:
    """A weights file's contents at load time (LoRAs, embeddings): checked against the sha256 the plan recorded
    (RuntimeError: re-run), then the pickle policy (:func:`ensure_loadable`); a ``.safetensors`` file's tensors,
    else what ``torch.load(weights_only=True)`` returns. ``what`` leads the messages (``LoRA``)."""
    from ..io.hashing import sha256_file

    if sha256_file(path) != sha256:
        raise RuntimeError(f"{what} {path} changed since the plan was made (sha256 differs); re-run")
    ensure_loadable(path, allow_pickle, what)
    if path.suffix.lower() == SAFETENSORS:
        from safetensors.torch import load_file

        return load_file(str(path))
    import torch

    return torch.load(str(path), map_location="cpu", weights_only=True)


def safetensors_only(allow_pickle: bool) -> bool | None:
    """diffusers' / transformers' ``use_safetensors=`` for a folder: True (never a pickle) unless allowed."""
    return None if allow_pickle else True
