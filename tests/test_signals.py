"""A run among other processes (issue 9): one run per output folder (a lock), SIGTERM and SIGHUP stop it like
the first Ctrl-C, and an output folder deleted or replaced mid-run stops it. Real processes, real signals."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import manifest_records, run_cli

from sdbatch.io.hashing import sha256_file

RECIPE = """\
name: long
model: sdbatch/tiny-sd
defaults: {steps: 2, width: 32, height: 32}
stages:
  - {name: many, type: generate, prompt: a harbour at night, seeds: {start: 0, count: 60}}
"""


def start_run(tmp_path: Path) -> tuple[subprocess.Popen, Path, Path]:
    """A long run, returned once it has recorded two outputs."""
    recipe = tmp_path / "long.yaml"
    recipe.write_text(RECIPE)
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "sdbatch", "run", str(recipe), "--rehearse", "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None and len(manifest_records(out, "output")) < 2:
        time.sleep(0.02)
    assert proc.poll() is None, proc.communicate()[1]
    return proc, recipe, out


def assert_consistent(out: Path) -> None:
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name], "temp files left behind"
    for record in manifest_records(out, "output"):
        assert sha256_file(out / record["path"]) == record["sha256"]


# ----------------------------------------------------------------------------------------- item 11
def test_a_second_run_on_the_same_folder_is_refused_at_once(tmp_path):
    proc, recipe, out = start_run(tmp_path)
    try:
        started = time.time()
        second = run_cli("run", recipe, "--rehearse", "--out", out, timeout=120)
        assert second.returncode == 2, second.stderr
        err = second.stderr.strip()
        assert err.startswith(f"error: another sdbatch run (pid {proc.pid}, since "), err
        assert err.endswith(f"is using {out}") and "\n" not in err and "Traceback" not in err
        assert time.time() - started < 60
        plan = run_cli("plan", recipe, "--rehearse", "--out", out, timeout=120)  # reading needs no lock
        assert plan.returncode == 0, plan.stderr
        starts = [r for r in manifest_records(out, "run") if r["event"] == "start"]
        assert len(starts) == 1, "the refused run wrote to the manifest"
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert_consistent(out)
    again = run_cli("run", recipe, "--rehearse", "--out", out, "--only", "many", "--set", "stages.many.seeds=[0]")
    assert again.returncode == 0, again.stderr  # the lock went with the run


# ----------------------------------------------------------------------------------------- item 13
@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_sigterm_and_sighup_stop_like_the_first_ctrl_c(tmp_path, signum, code):
    proc, recipe, out = start_run(tmp_path)
    proc.send_signal(signum)
    _stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == code, stderr
    assert "Traceback" not in stderr
    end = manifest_records(out, "run")[-1]
    assert end["event"] == "end" and end["interrupted"] is True and end["exit_code"] == code
    assert end["signal"] == signal.Signals(signum).name
    done = manifest_records(out, "output")
    assert 2 <= len(done) < 60
    assert_consistent(out)


# ----------------------------------------------------------------------------------------- item 15
@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_an_output_folder_deleted_or_replaced_mid_run_stops_it(tmp_path, how):
    proc, recipe, out = start_run(tmp_path)
    moved = tmp_path / "moved"
    os.rename(out, moved)
    if how == "deleted":
        shutil.rmtree(moved, ignore_errors=True)
    else:
        out.mkdir()
    _stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 1, stderr
    assert "Traceback" not in stderr
    assert "deleted or replaced" in stderr and str(out) in stderr, stderr
    assert not [r for r in manifest_records(out, "run")], "the new folder's manifest must not get the run's records"
    if how == "replaced":
        assert [p.name for p in out.rglob("manifest.jsonl")] == []
