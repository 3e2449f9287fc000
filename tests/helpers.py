"""Helpers several test modules share (conftest.py holds the fixtures): CLI runs that must succeed, a run
SIGKILLed mid-way, a video stage's frames and records, a recipe rendered once with its outputs by stage, and
the Ray tests' recipe and comparison with the local executor."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import numpy as np
from conftest import manifest_records, output_pngs, png_pixels, run_cli

# one intra-op thread in the CLI subprocesses (and conftest's one_thread for in-process reference renders): the
# same float sums on both sides (thread count can move a pixel by a level), no OpenMP oversubscription on a busy CPU
THREADS = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


# ------------------------------------------------------------------------------------------ CLI runs
def run_ok(recipe: Path, out: Path, *extra: str, timeout: float = 900) -> subprocess.CompletedProcess:
    """``sdbatch run RECIPE --out OUT EXTRA...`` in a fresh process; it must exit 0."""
    res = run_cli("run", recipe, "--out", out, *extra, timeout=timeout)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def kill_run_when(recipe: Path, out: Path, ready: Callable[[], bool], timeout: float = 600) -> None:
    """Start ``sdbatch run RECIPE --out OUT`` and SIGKILL it as soon as ``ready()`` (or once it ended or
    ``timeout`` seconds passed: the caller asserts what it left)."""
    proc = subprocess.Popen([sys.executable, "-m", "sdbatch", "run", str(recipe), "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + timeout
        while not ready() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)


# ------------------------------------------------------------------------------------- video stages
def pngs(folder: Path) -> list[Path]:
    """The finished PNGs in ``folder`` (temp files left out), sorted; none when it does not exist."""
    return sorted(p for p in folder.glob("*.png") if not p.name.startswith(".")) if folder.is_dir() else []


def frame_files(out: Path, stage: str) -> list[Path]:
    """A video stage's saved frames (``<stage>/frames/000000.png`` ...)."""
    return pngs(out / stage / "frames")


def frame_records(out: Path, stage: str) -> list[dict]:
    """A video stage's frame records, in manifest order."""
    return [r for r in manifest_records(out, "output") if r.get("stage") == stage and r.get("role") == "frame"]


# ----------------------------------------------------------------- one recipe, every stage's output
def render_by_stage(project: Path) -> tuple[Path, dict[str, dict]]:
    """``project/recipe.yaml`` rendered to ``project/out`` on one thread: (out, stage -> its output record)."""
    out = project / "out"
    result = run_cli("run", "recipe.yaml", "--out", "out", cwd=project, env=THREADS)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    records = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    return out, {r["stage"]: r for r in records if r.get("kind") == "output"}


def stage_image(rendered: tuple[Path, dict[str, dict]], stage: str) -> np.ndarray:
    """The pixels (int16) of a stage's output in :func:`render_by_stage`'s result."""
    out, records = rendered
    return png_pixels(out / records[stage]["path"])


def tiny_sd_pipe() -> Any:
    """Plain diffusers: the built-in tiny model's StableDiffusionPipeline (from the session cache)."""
    from diffusers import StableDiffusionPipeline

    from sdbatch.sources.tiny import builtin_model_path

    pipe = StableDiffusionPipeline.from_pretrained(builtin_model_path("sdbatch/tiny-sd"))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def diffusers_image(pipe: Any, *, seed: int, steps: int, size: int, guidance: float = 7.0, **prompt: Any) -> np.ndarray:
    """``pipe(**prompt, ...)`` with a CPU generator, as the generate stage documents it: int16 pixels."""
    import torch

    result = pipe(**prompt, num_inference_steps=steps, guidance_scale=guidance, width=size, height=size,
                  generator=torch.Generator("cpu").manual_seed(seed)).images[0]
    return np.asarray(result, dtype=np.int16)


# ------------------------------------------------------------------------------------------- Ray
def ray_recipe(name: str, steps: int) -> str:
    """12 generate jobs and 12 img2img jobs reading them (stage dependencies), 64 px."""
    return f"""\
name: {name}
model: sdbatch/tiny-sd
defaults: {{steps: {steps}, width: 64, height: 64}}
stages:
  - {{name: sketch, type: generate, prompt: [a wolf, a fox, a cat, an owl], seeds: [1, 2, 3]}}
  - {{name: painted, type: img2img, input: sketch, prompt: oil painting, strength: 0.5}}
"""


def local_reference(recipe: Path, out: Path, env: dict[str, str]) -> dict[str, Path]:
    """The recipe through the local executor: its PNGs (relative path -> file)."""
    proc = run_cli("run", recipe, "--out", out, "--executor", "local", env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return output_pngs(out)


def assert_same_as_local(out: Path, reference: dict[str, Path]) -> None:
    """``out`` has the local executor's outputs, pixel for pixel, each recorded once, nothing failed or skipped."""
    found = output_pngs(out)
    assert sorted(found) == sorted(reference)
    for rel, path in reference.items():
        assert np.array_equal(png_pixels(found[rel]), png_pixels(path)), f"{rel} differs from the local executor"
    outputs = [r["path"] for r in manifest_records(out, "output")]
    twice = [path for path, n in Counter(outputs).items() if n > 1]
    assert not twice, f"recorded more than once: {twice}"
    assert sorted(outputs) == sorted(reference)
    assert not manifest_records(out, "failed") and not manifest_records(out, "skipped")


def manifest_so_far(out: Path) -> list[dict]:
    """The lines so far of a manifest still being appended to (a torn last line is left out)."""
    path = out / "manifest.jsonl"
    records = []
    for line in (path.read_text() if path.exists() else "").splitlines(keepends=True):
        if line.endswith("\n"):
            try:
                records.append(json.loads(line))
            except ValueError:
                pass
    return records


def video_project(root: Path, recipe: str) -> Path:
    """``root`` with ``clips/walk.mp4`` (3 frames, 6 fps, 32x32, silent) and ``clips.yaml``: ``recipe``."""
    from sdbatch.io.testclips import make_test_clip

    make_test_clip(root / "clips" / "walk.mp4", frames=3, fps=6, size=(32, 32), audio=False)
    (root / "clips.yaml").write_text(recipe)
    return root
