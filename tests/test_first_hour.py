"""Issue 10, items 1, 2, 9, 17: where outputs go (the recipe's project root, never the current directory),
rehearsals in their own folder and gallery, A1111 sampler names as scheduler aliases, and a JSON Schema that
says what ``validate`` says (sizes a multiple of 8, counts at least 1)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import REPO, manifest_records, run_cli
from jsonschema import Draft202012Validator

from sdbatch.io.outdir import default_out_dir, project_root

TINY = ("model: sdbatch/tiny-sd\ndefaults: {steps: 2, width: 64, height: 64}\n"
        "stages:\n  - {name: a, type: generate, prompt: a cat, seeds: [1, 2]}\n")


def _project(tmp_path: Path, text: str = TINY, git: str = "dir") -> Path:
    """A project folder with a ``.git`` (a folder, or a file as in a worktree) and ``recipes/x.yaml``."""
    proj = tmp_path / "proj"
    (proj / "recipes").mkdir(parents=True)
    if git == "dir":
        (proj / ".git").mkdir()
    elif git == "file":
        (proj / ".git").write_text("gitdir: /somewhere/else/.git/worktrees/proj\n")
    (proj / "recipes" / "x.yaml").write_text(text)
    return proj


def _plan_json(recipe: Path, *extra: str, cwd: Path) -> dict:
    result = run_cli("plan", recipe, "--json", *extra, cwd=cwd, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


# ------------------------------------------------------------------------ item 1: the project root
@pytest.mark.parametrize("git", ["dir", "file"])
def test_the_project_root_is_the_nearest_folder_holding_git(tmp_path, git):
    proj = _project(tmp_path, git=git)
    (proj / "recipes" / "deep").mkdir()
    assert project_root(proj / "recipes" / "x.yaml") == proj
    assert project_root(proj / "recipes" / "deep" / "y.yaml") == proj
    assert default_out_dir(proj / "recipes" / "x.yaml", "x") == proj / "outputs" / "x"
    assert default_out_dir(proj / "recipes" / "x.yaml", "x", rehearse=True) == proj / "outputs" / "x-rehearsal"


def test_without_git_the_root_is_the_recipes_own_folder(tmp_path):
    proj = _project(tmp_path, git="none")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    plan = _plan_json(proj / "recipes" / "x.yaml", cwd=elsewhere)
    assert Path(plan["out"]) == proj / "recipes" / "outputs" / "x"


def test_out_stays_relative_to_the_current_directory(tmp_path):
    proj = _project(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    plan = _plan_json(proj / "recipes" / "x.yaml", "--out", "mine", cwd=elsewhere)
    assert (elsewhere / plan["out"]).absolute() == elsewhere / "mine"
    rehearse = _plan_json(proj / "recipes" / "x.yaml", "--out", "mine", "--rehearse", cwd=elsewhere)
    assert rehearse["out"] == plan["out"]  # --out wins over the rehearsal folder too


def test_a_run_from_the_project_is_done_for_plan_and_verify_from_elsewhere(tmp_path):
    proj = _project(tmp_path)
    result = run_cli("run", "recipes/x.yaml", cwd=proj)
    assert result.returncode == 0, result.stdout + result.stderr
    out = proj / "outputs" / "x"
    assert f"output: {out}" in result.stdout.splitlines()
    assert len(manifest_records(out, "output")) == 2
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    plan = _plan_json(proj / "recipes" / "x.yaml", cwd=elsewhere)
    assert Path(plan["out"]) == out
    assert [job["status"] for job in plan["jobs"]] == ["done", "done"]
    text = run_cli("plan", proj / "recipes" / "x.yaml", cwd=elsewhere, timeout=120)
    assert "2 done, 0 pending" in text.stdout
    verify = run_cli("verify", proj / "recipes" / "x.yaml", cwd=elsewhere, timeout=120)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert not (elsewhere / "outputs").exists()
    validate = run_cli("validate", proj / "recipes" / "x.yaml", cwd=elsewhere, timeout=120)
    assert validate.returncode == 0, validate.stderr


# ------------------------------------------------------------------ item 2: rehearsals on their own
def test_a_rehearsal_writes_to_its_own_folder_and_says_so(tmp_path):
    proj = _project(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = run_cli("run", proj / "recipes" / "x.yaml", "--rehearse", cwd=elsewhere)
    assert result.returncode == 0, result.stdout + result.stderr
    out = proj / "outputs" / "x-rehearsal"
    assert f"output: {out}" in result.stdout.splitlines()
    assert len(manifest_records(out, "output")) == 2
    assert not (proj / "outputs" / "x").exists() and not (elsewhere / "outputs").exists()
    page = (out / "index.html").read_text(encoding="utf-8")
    title = page.split("<title>")[1].split("</title>")[0]
    heading = page.split("<h1>")[1].split("</h1>")[0]
    assert "rehearsal" in title.lower() and "rehearsal" in heading.lower()
    plan = _plan_json(proj / "recipes" / "x.yaml", "--rehearse", cwd=elsewhere)
    assert Path(plan["out"]) == out and {job["status"] for job in plan["jobs"]} == {"done"}
    real = _plan_json(proj / "recipes" / "x.yaml", cwd=elsewhere)
    assert {job["status"] for job in real["jobs"]} == {"pending"}  # noise never counts as the real outputs


def test_a_real_gallery_does_not_say_rehearsal():
    from sdbatch.reports.gallery import render_gallery

    assert "rehearsal" not in render_gallery(Path("/nonexistent/outputs/x")).lower()


# ------------------------------------------------------------------- item 9: A1111 sampler names
ALIASES = {"Euler a": "euler-a", "Euler": "euler", "DPM++ 2M Karras": "dpmpp-2m-karras", "DPM++ 2M": "dpmpp-2m",
           "DPM++ SDE Karras": "dpmpp-sde-karras", "DDIM": "ddim", "UniPC": "unipc", "LMS": "lms", "Heun": "heun",
           "PLMS": "pndm", "LCM": "lcm"}


def test_the_aliases_are_the_inverse_of_the_names_we_write():
    from sdbatch.config.types import SCHEDULER_ALIASES
    from sdbatch.io.artifacts import SAMPLER_NAMES

    assert SCHEDULER_ALIASES == ALIASES
    assert set(SCHEDULER_ALIASES.values()) == set(SAMPLER_NAMES)  # every scheduler of ours has its A1111 name
    for ours, a1111 in SAMPLER_NAMES.items():  # and the name we write reads back as ours
        assert SCHEDULER_ALIASES.get(a1111, ours) == ours


def _recipe(tmp_path: Path, name: str, scheduler: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"name: same\nmodel: sdbatch/tiny-sd\nstages:\n  - name: a\n    type: generate\n"
                    f"    prompt: x\n    scheduler: {scheduler}\n")
    return path


def test_a1111_sampler_names_make_the_same_jobs(tmp_path):
    ours = _plan_json(_recipe(tmp_path, "ours", json.dumps(list(ALIASES.values()))), cwd=tmp_path)
    theirs = _plan_json(_recipe(tmp_path, "theirs", json.dumps(list(ALIASES))), cwd=tmp_path)
    assert [j["job_id"] for j in ours["jobs"]] == [j["job_id"] for j in theirs["jobs"]]
    assert [j["params"]["scheduler"] for j in theirs["jobs"]] == list(ALIASES.values())
    one = _plan_json(_recipe(tmp_path, "one", '"Euler a"'), cwd=tmp_path)
    assert one["jobs"][0]["job_id"] == ours["jobs"][0]["job_id"]
    bad = run_cli("validate", _recipe(tmp_path, "bad", '"Euler b"'), cwd=tmp_path, timeout=120)
    assert bad.returncode == 2 and "stages[0].scheduler" in bad.stderr


# ------------------------------------------------------------- item 17: the schema says what validate says
@pytest.fixture(scope="module")
def validator() -> Draft202012Validator:
    return Draft202012Validator(json.loads((REPO / "docs" / "recipe.schema.json").read_text(encoding="utf-8")))


GEN = {"name": "a", "type": "generate", "prompt": "x"}
CASES = [  # (recipe, valid)
    ({"defaults": {"width": 512, "height": 512}, "stages": [GEN]}, True),
    ({"stages": [{**GEN, "width": 504, "scheduler": ["Euler a", "ddim"]}]}, True),
    ({"defaults": {"width": 500}, "stages": [GEN]}, False),
    ({"stages": [{**GEN, "height": 100}]}, False),
    ({"stages": [{**GEN, "steps": 0}]}, False),
    ({"stages": [{**GEN, "steps": [10, 0]}]}, False),
    ({"stages": [{**GEN, "seeds": {"start": 0, "count": 0}}]}, False),
    ({"stages": [{**GEN, "batch_size": 0}]}, False),
    ({"stages": [{"name": "f", "type": "animate", "prompt": "x", "frames": 0, "width": 64, "height": 64}]}, False),
    ({"stages": [{"name": "f", "type": "animate", "prompt": "x", "frames": 2, "width": 64, "height": 64}]}, True),
]


@pytest.mark.parametrize(("recipe", "valid"), CASES, ids=[str(i) for i in range(len(CASES))])
def test_the_schema_and_validate_agree(tmp_path, validator, recipe, valid):
    data = {"model": "sdbatch/tiny-sd", **recipe}
    schema_ok = not list(validator.iter_errors(data))
    path = tmp_path / "r.yaml"
    path.write_text(json.dumps(data))  # JSON is YAML
    result = run_cli("validate", path, cwd=tmp_path, timeout=120)
    assert schema_ok is valid
    assert (result.returncode == 0) is valid, result.stderr


def test_sizes_say_multiple_of_8_in_the_schema():
    from sdbatch.config.recipe import recipe_json_schema

    schema = recipe_json_schema()
    width = schema["$defs"]["GenerateStage"]["properties"]["width"]["anyOf"][0]
    assert width["multipleOf"] == 8 and width["exclusiveMinimum"] == 0
