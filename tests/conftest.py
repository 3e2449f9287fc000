"""Shared fixtures: offline, a session cache for built-in models, a tiny local diffusers folder, a CLI runner."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def sdbatch_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache (built-in tiny models, file hashes) for the whole session, inherited by subprocesses."""
    if os.environ.get("SDBATCH_TEST_CACHE"):
        path = Path(os.environ["SDBATCH_TEST_CACHE"])
    else:
        path = tmp_path_factory.mktemp("sdbatch-cache")
    os.environ["SDBATCH_CACHE"] = str(path)
    return path


@pytest.fixture(scope="session")
def tiny_sd_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A local diffusers folder with a tiny randomly initialised Stable Diffusion pipeline."""
    from sdbatch.sources.tiny import save_tiny_sd

    folder = tmp_path_factory.mktemp("models") / "tiny-sd-local"
    save_tiny_sd(folder, seed=7)
    return folder


@pytest.fixture
def one_thread():
    """torch on one thread for the test (the CLI's subprocesses get OMP_NUM_THREADS=1): the same pixels."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def run_cli(*args: str | os.PathLike, cwd: Path | None = None, timeout: float = 300,
            env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``sdbatch ARGS`` as a user would, in a fresh process."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "sdbatch", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env=full_env)


def manifest_records(out: Path, kind: str | None = None) -> list[dict]:
    path = out / "manifest.jsonl"
    if not path.exists():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in records if kind is None or r.get("kind") == kind]


def image_records(out: Path) -> dict[str, list[dict]]:
    """Each stage's image output records (``role: image``), in manifest order."""
    found: dict[str, list[dict]] = {}
    for record in manifest_records(out, "output"):
        if record.get("role") == "image":
            found.setdefault(record["stage"], []).append(record)
    return found


def png_pixels(path: Path, dtype: str = "int16"):
    """An image's RGB pixels (int16 by default: differences do not wrap around)."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=dtype)


def output_pngs(out: Path) -> dict[str, Path]:
    """Relative path -> file for every final PNG under ``out`` (temp files excluded)."""
    return {p.relative_to(out).as_posix(): p for p in sorted(out.rglob("*.png"))
            if not p.name.startswith(".") and "previews" not in p.parts and p.name != "grid.png"}
