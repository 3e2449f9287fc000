"""Planning: content-addressed ids, sweeps, seeds, lineage; and validate/plan stay light (no torch)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from sdbatch.config.recipe import parse_recipe
from sdbatch.core.plan import build_plan, rehearse_size

BASE = """\
model: sdbatch/tiny-sd
defaults: {steps: 4, width: 64, height: 64}
stages:
  - name: sketch
    type: generate
    prompt: [a wolf, a fox]
    seeds: [1, 2]
    guidance: [3, 7, 14]
  - name: painted
    type: img2img
    input: sketch
    prompt: oil
    strength: [0.5, 0.8]
"""


def plan_of(text: str, tmp_path: Path, **kw):
    recipe = tmp_path / "r.yaml"
    return build_plan(parse_recipe(text, recipe), tmp_path / "out", **kw)


def test_sweeps_are_a_cartesian_product_and_stages_inherit_seeds(tmp_path):
    plan = plan_of(BASE, tmp_path)
    assert plan.counts() == {"sketch": 12, "painted": 24}
    for job in plan.jobs:
        if job.stage == "painted":
            parent = plan.index[job.deps[0]]
            assert job.seed == parent.seed
            assert job.inputs[0].path == parent.output


def test_ids_ignore_list_order_and_change_with_any_parameter(tmp_path):
    ids = {job.job_id for job in plan_of(BASE, tmp_path).jobs}
    reordered = BASE.replace("[a wolf, a fox]", "[a fox, a wolf]").replace("[1, 2]", "[2, 1]")
    assert {job.job_id for job in plan_of(reordered, tmp_path).jobs} == ids
    edited = plan_of(BASE.replace("[a wolf, a fox]", "[a wolf, a cat]"), tmp_path)
    changed = [job for job in edited.jobs if job.job_id not in ids]
    assert len(changed) == 18  # 6 sketches of the cat and their 12 paintings
    assert {j.stage for j in changed if j.prompt == "a cat"} == {"sketch"}
    steps = plan_of(BASE.replace("steps: 4", "steps: 5"), tmp_path)
    assert not ids & {job.job_id for job in steps.jobs}


def test_output_names_are_deterministic(tmp_path):
    a = [job.output for job in plan_of(BASE, tmp_path).jobs]
    b = [job.output for job in plan_of(BASE, tmp_path / "x").jobs]
    assert a == b
    assert a[0].startswith("sketch/a-wolf-1-") and a[0].endswith(".png")


def test_rehearse_caps_size_steps_and_swaps_model(tmp_path):
    text = BASE.replace("sdbatch/tiny-sd", "stabilityai/sd-turbo").replace("width: 64, height: 64",
                                                                          "width: 768, height: 512")
    plan = plan_of(text.replace("steps: 4", "steps: 30"), tmp_path, rehearse=True)
    job = plan.jobs[0]
    assert job.model.id == "sdbatch/tiny-sd" and job.device == "cpu" and job.dtype == "float32"
    assert (job.params.width, job.params.height) == (64, 40) == rehearse_size(768, 512)
    assert job.params.steps == 4
    xl = plan_of(text.replace("stabilityai/sd-turbo", "stabilityai/sdxl-turbo"), tmp_path, rehearse=True)
    assert xl.jobs[0].model.id == "sdbatch/tiny-sdxl"


def test_validate_and_plan_never_import_torch(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(BASE)
    probe = ("import runpy, sys; sys.argv = ['sdbatch'] + sys.argv[1:]\n"
             "try:\n    runpy.run_module('sdbatch', run_name='__main__')\n"
             "except SystemExit as e:\n    code = e.code\n"
             "print('HEAVY', [m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules])\n"
             "sys.exit(code)")
    for args in (["validate", str(recipe)], ["plan", str(recipe), "--json", "--out", str(tmp_path / "o")],
                 ["schema"]):
        proc = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip().splitlines()[-1] == "HEAVY []", args
    out = subprocess.run([sys.executable, "-m", "sdbatch", "plan", str(recipe), "--json"], capture_output=True,
                         text=True, cwd=tmp_path)
    assert len(json.loads(out.stdout)["jobs"]) == 36
