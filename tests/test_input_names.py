"""Image inputs given as files keep their names (issue 10, item 3): ``input: photos/*.png`` gives
``<stage>/<input-stem>-<prompt-slug>-<seed>-<id8>.png``, the stem slugified as prompts are and bounded; an upstream
stage's output as input keeps today's name; job ids do not change (only output paths)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import manifest_records, run_cli
from PIL import Image

from sdbatch import cli

LONG = "Holiday_" + "x" * 60  # a stem longer than the 40 characters a name keeps of it
RECIPE = """\
name: names
model: sdbatch/tiny-sd
defaults: {steps: 2, width: 32, height: 32}
stages:
  - {name: paint, type: img2img, input: "photos/**/*.png", prompt: oil painting, strength: 0.5, seed: 7}
  - {name: varnish, type: img2img, input: paint, prompt: glossy varnish, strength: 0.5}
  - {name: patch, type: inpaint, input: "photos/*.png", mask: masks, prompt: a patch, strength: 1.0, seed: 3}
"""
STEMS = {"IMG_0012": "img-0012", "Beach Day (2)": "beach-day-2", "a_b": "a-b", "A-B": "a-b",
         LONG: ("holiday-" + "x" * 60)[:40]}


def image(path: Path, seed: int, size: int = 32) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def make_project(folder: Path, recipe: str = RECIPE) -> Path:
    for i, stem in enumerate(STEMS):
        image(folder / "photos" / f"{stem}.png", i)
        image(folder / "masks" / f"{stem}.png", 100 + i)
    image(folder / "photos" / "more" / "IMG_0012.png", 50)  # the same stem in another folder, other content
    (folder / "recipe.yaml").write_text(recipe)
    return folder / "recipe.yaml"


def plan_jobs(recipe: Path, capsys: pytest.CaptureFixture) -> list[dict]:
    capsys.readouterr()
    assert cli.main(["plan", str(recipe), "--json", "--out", str(recipe.parent / "out")]) == 0
    return json.loads(capsys.readouterr().out)["jobs"]


def test_file_inputs_name_their_outputs(tmp_path, capsys):
    jobs = plan_jobs(make_project(tmp_path), capsys)
    by_stage: dict[str, list[dict]] = {}
    for job in jobs:
        by_stage.setdefault(job["stage"], []).append(job)
    assert len(by_stage["paint"]) == 6 and len(by_stage["patch"]) == 5
    for stage, prompt, seed in (("paint", "oil-painting", 7), ("patch", "a-patch", 3)):
        for job in by_stage[stage]:
            stem = Path(job["inputs"][0]["path"]).stem
            assert job["output"] == f"{stage}/{STEMS[stem]}-{prompt}-{seed}-{job['job_id'][:8]}.png"
    names = {Path(job["inputs"][0]["path"]).as_posix(): job["output"] for job in by_stage["paint"]}
    assert names["photos/IMG_0012.png"].startswith("paint/img-0012-oil-painting-7-")
    assert names["photos/Beach Day (2).png"].startswith("paint/beach-day-2-oil-painting-7-")
    assert names[f"photos/{LONG}.png"].startswith(f"paint/holiday-{'x' * 32}-oil-painting-7-")  # 40 of the stem
    # stems that collide (a_b / A-B, IMG_0012 in two folders) still get distinct names: the id8 differs
    outputs = [job["output"] for job in jobs]
    assert len(set(outputs)) == len(outputs)
    assert len([o for o in outputs if o.startswith("paint/img-0012-")]) == 2
    assert len([o for o in outputs if o.startswith("paint/a-b-")]) == 2
    # an upstream stage's output as input keeps today's name
    for job in by_stage["varnish"]:
        assert re.fullmatch(rf"varnish/glossy-varnish-7-{job['job_id'][:8]}\.png", job["output"]), job["output"]
        assert "oil-painting" not in job["output"] and "img-0012" not in job["output"]


def test_names_do_not_change_job_ids(tmp_path, capsys):
    """A job's id hashes the input's content, not its name: a renamed input renames the output, keeps the id."""
    recipe = make_project(tmp_path)
    before = {job["inputs"][0]["sha256"]: job for job in plan_jobs(recipe, capsys) if job["stage"] == "paint"}
    photo = tmp_path / "photos" / "IMG_0012.png"
    digest = next(k for k, job in before.items() if job["inputs"][0]["path"] == "photos/IMG_0012.png")
    photo.rename(tmp_path / "photos" / "Renamed_Shot.png")
    (tmp_path / "masks" / "IMG_0012.png").rename(tmp_path / "masks" / "Renamed_Shot.png")  # inpaint's, by stem
    after = {job["inputs"][0]["sha256"]: job for job in plan_jobs(recipe, capsys) if job["stage"] == "paint"}
    assert {k: j["job_id"] for k, j in before.items()} == {k: j["job_id"] for k, j in after.items()}
    assert after[digest]["output"] == f"paint/renamed-shot-oil-painting-7-{before[digest]['job_id'][:8]}.png"
    assert before[digest]["output"] != after[digest]["output"]
    unchanged = [k for k in before if k != digest]
    assert [before[k]["output"] for k in unchanged] == [after[k]["output"] for k in unchanged]


def test_equal_inputs_under_two_names_share_one_output(tmp_path, capsys):
    """Two files with equal content are one job (one id, as before names): one output, named after the first."""
    recipe = make_project(tmp_path)
    shutil.copy(tmp_path / "photos" / "a_b.png", tmp_path / "photos" / "more" / "zz_copy.png")
    jobs = [j for j in plan_jobs(recipe, capsys) if j["stage"] == "paint"]
    twins = [j for j in jobs if j["inputs"][0]["path"] in ("photos/a_b.png", "photos/more/zz_copy.png")]
    assert len(twins) == 2 and twins[0]["job_id"] == twins[1]["job_id"]
    assert twins[0]["output"] == twins[1]["output"] == f"paint/a-b-oil-painting-7-{twins[0]['job_id'][:8]}.png"


E2E = """\
name: e2e
model: sdbatch/tiny-sd
defaults: {steps: 2, width: 32, height: 32}
stages:
  - {name: paint, type: img2img, input: "photos/*.png", prompt: oil painting, strength: 0.5, seed: 7}
  - {name: varnish, type: img2img, input: paint, prompt: glossy, strength: 0.5}
"""


def test_named_outputs_end_to_end(tmp_path, capsys):
    """Rendered under their names; the manifest, inspect, reproduce, verify and the gallery find them; a re-run
    renders nothing."""
    image(tmp_path / "photos" / "IMG_0012.png", 1)
    image(tmp_path / "photos" / "Beach Day (2).png", 2)
    (tmp_path / "recipe.yaml").write_text(E2E)
    result = run_cli("run", "recipe.yaml", "--out", "out", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    out = tmp_path / "out"
    records = {r["path"]: r for r in manifest_records(out, "output")}
    paint = sorted(p for p in records if p.startswith("paint/"))
    assert [re.sub(r"-[0-9a-f]{8}\.png$", "", p) for p in paint] == \
        ["paint/beach-day-2-oil-painting-7", "paint/img-0012-oil-painting-7"]
    assert all((out / p).is_file() and records[p]["job_id"].startswith(p[-12:-4]) for p in paint)
    varnish = sorted(p for p in records if p.startswith("varnish/"))
    assert len(varnish) == 2 and all(re.fullmatch(r"varnish/glossy-7-[0-9a-f]{8}\.png", p) for p in varnish)

    named = out / next(p for p in paint if "img-0012" in p)
    assert cli.main(["inspect", str(named)]) == 0
    assert "photos/IMG_0012.png" in capsys.readouterr().out
    assert cli.main(["reproduce", str(named), "--out", str(tmp_path / "again")]) == 0
    assert capsys.readouterr().out.startswith("match")
    assert cli.main(["verify", str(tmp_path / "recipe.yaml"), "--out", str(out)]) == 0
    assert "4 recorded output(s)" in (shown := capsys.readouterr().out) and "all match" in shown
    gallery = (out / "index.html").read_text()
    assert all(Path(p).name in gallery for p in paint)

    again = run_cli("run", "recipe.yaml", "--out", "out", cwd=tmp_path)
    assert again.returncode == 0 and "nothing to do" in again.stdout, again.stdout + again.stderr
