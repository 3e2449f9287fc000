"""``--executor ray``: on a 2-CPU local Ray cluster, 2 workers give the local executor's names and pixels; a worker
SIGKILLed mid-run loses nothing and records nothing twice. The CLI runs in a subprocess, as a user runs it: the
first test lets the executor start Ray itself, the second joins a running cluster through ``RAY_ADDRESS``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import manifest_records
from helpers import assert_same_as_local, local_reference, manifest_so_far, ray_recipe

pytest.importorskip("ray")
psutil = pytest.importorskip("psutil")

# 12 generate jobs and 12 img2img jobs reading them (stage dependencies), 64 px, 4 steps: long enough for a
# worker to be killed while the others are rendering, short enough for two cores.
RECIPE = ray_recipe("raytest", steps=4)
JOBS = 24
WORKER_TITLE = "ray::JobWorker"
# no spinning OpenMP threads while two runs' (or two workers') thread teams share the cores; same results
ENV = {"HF_HUB_OFFLINE": "1", "OMP_WAIT_POLICY": "PASSIVE"}


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, **ENV)
    env.pop("RAY_ADDRESS", None)  # unless given: the executor starts its own local Ray
    env.pop("SDBATCH_RAY_WORKERS", None)
    env.update(extra)
    return env


# A 2-CPU Ray cluster that outlives the driver which starts it; runs join it through RAY_ADDRESS. Ray >= 2.5x
# starts local clusters with token authentication: RAY_AUTH_MODE=token lets a driver join with the saved token.
CLUSTER = """\
import logging, sys, ray
ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
print(ray.get_runtime_context().gcs_address, flush=True)
sys.stdin.read()  # until the test closes stdin
"""


@pytest.fixture(scope="module")
def ray_cluster() -> tuple[str, psutil.Process]:
    """(address, the process whose descendants are the cluster's raylet and workers)."""
    holder = subprocess.Popen([sys.executable, "-c", CLUSTER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True, env=_env(RAY_AUTH_MODE="token"))
    try:
        address = holder.stdout.readline().strip()
        assert address, "the Ray cluster did not start"
        yield address, psutil.Process(holder.pid)
    finally:
        holder.stdin.close()
        try:
            holder.wait(timeout=60)
        except subprocess.TimeoutExpired:
            holder.kill()
            holder.wait()


@pytest.fixture(scope="module")
def recipe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ray-recipe") / "raytest.yaml"
    path.write_text(RECIPE)
    return path


@pytest.fixture(scope="module")
def local_run(recipe: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The reference: the same recipe through the local executor."""
    pngs = local_reference(recipe, tmp_path_factory.mktemp("ray-local") / "out", _env())
    assert len(pngs) == JOBS
    return pngs


def _ray_cmd(recipe: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "sdbatch", "run", str(recipe), "--out", str(out), "--executor", "ray",
            "--workers", "2"]


def _assert_same_as_local(out: Path, reference: dict[str, Path]) -> None:
    assert_same_as_local(out, reference)
    ends = [r for r in manifest_records(out, "run") if r.get("event") == "end"]
    assert ends[-1]["rendered"] == JOBS and ends[-1]["exit_code"] == 0


def _recorded_so_far(out: Path) -> int:
    """Output lines in a manifest that is still being appended to (a torn last line is not counted)."""
    return sum(r.get("kind") == "output" for r in manifest_so_far(out))


def _job_workers(root: psutil.Process) -> dict[int, str]:
    """pid -> process title of the JobWorker actors under ``root`` (the cluster's raylet starts them)."""
    found = {}
    for proc in root.children(recursive=True):
        try:
            title = " ".join(proc.cmdline())
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        if title.startswith(WORKER_TITLE):
            found[proc.pid] = title
    return found


def test_ray_matches_local_executor(recipe: Path, local_run: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.run(_ray_cmd(recipe, out), check=False, capture_output=True, text=True, timeout=300,
                          env=_env())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    _assert_same_as_local(out, local_run)
    run = manifest_records(out, "run")[0]
    assert run["executor"] == "ray"
    # Ray's own start-up and worker logs stay out of the user's terminal
    assert "Started a local Ray instance" not in proc.stdout + proc.stderr
    assert "(JobWorker pid=" not in proc.stdout + proc.stderr


def test_killed_worker_loses_nothing(recipe: Path, local_run: dict[str, Path], ray_cluster: tuple[str, psutil.Process],
                                    tmp_path: Path) -> None:
    """Joins a running cluster (RAY_ADDRESS); one of its JobWorker processes is SIGKILLed mid-batch."""
    address, root = ray_cluster
    out = tmp_path / "out"
    log = tmp_path / "run.log"
    env = _env(RAY_ADDRESS=address, RAY_AUTH_MODE="token")
    with log.open("w") as sink:
        cli = subprocess.Popen(_ray_cmd(recipe, out), stdout=sink, stderr=subprocess.STDOUT, env=env)
    killed = None
    recorded_at_kill = None
    try:
        deadline = time.monotonic() + 240
        while killed is None and cli.poll() is None and time.monotonic() < deadline:
            recorded = _recorded_so_far(out)
            busy = [pid for pid, title in _job_workers(root).items() if ".__call__" in title]
            if recorded >= 1 and busy:  # models loaded, rendering under way: SIGKILL a worker mid-batch
                killed = busy[0]
                os.kill(killed, signal.SIGKILL)
                recorded_at_kill = recorded
                break
            time.sleep(0.02)
        assert killed is not None, "the run ended before a busy worker was seen:\n" + log.read_text()
        code = cli.wait(timeout=300)
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
    text = log.read_text()
    assert code == 0, text
    assert recorded_at_kill < JOBS
    assert "Ray worker lost" in text, text  # the dead worker's batch was re-dispatched
    _assert_same_as_local(out, local_run)
