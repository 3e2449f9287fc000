"""``sdbatch prune [--dry-run]`` (issue 10 item 4): deletes the files of jobs the current plan no longer has,
records each as a ``pruned`` manifest line that verify, the gallery and the done-check understand, never
touches anything the manifest does not name or anything outside the output folder, and cannot race a run."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from conftest import manifest_records

from sdbatch.cli import main
from sdbatch.io.outdir import RunLock

V1 = """\
name: prune
model: sdbatch/tiny-sd
defaults: {steps: 2, width: 64, height: 64}
stages:
  - name: sketch
    type: generate
    prompt: [a wolf, a fox]
    seeds: [1]
"""
V2 = V1.replace("[a wolf, a fox]", "[a wolf]")


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder rendered by recipe v1 (a wolf, a fox), then v2 dropped the fox."""
    folder = tmp_path_factory.mktemp("prune")
    (folder / "r.yaml").write_text(V1)
    assert main(["run", str(folder / "r.yaml"), "--out", str(folder / "out")]) == 0
    (folder / "r.yaml").write_text(V2)
    return folder


@pytest.fixture
def project(rendered: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "p"
    shutil.copytree(rendered, folder, symlinks=True)
    return folder


def outputs(out: Path) -> dict[str, str]:
    """prompt -> path of the recorded output."""
    return {r["prompt"]: r["path"] for r in manifest_records(out, "output")}


def test_prune_deletes_the_outputs_of_jobs_no_longer_planned_and_records_them(project, capsys):
    out = project / "out"
    paths = outputs(out)
    fox, wolf = out / paths["a fox"], out / paths["a wolf"]
    (out / "notes.txt").write_text("mine")  # not named by the manifest: never touched
    edited = fox.with_name(fox.stem + ".edited-20261201T000000.png")
    shutil.copy(fox, edited)
    assert main(["run", str(project / "r.yaml"), "--out", str(out)]) == 0  # nothing to render; the fox is older
    assert '<details class="older"' in (out / "index.html").read_text(encoding="utf-8")
    capsys.readouterr()

    lines = (out / "manifest.jsonl").read_bytes()
    assert main(["prune", str(project / "r.yaml"), "--out", str(out), "--dry-run"]) == 0
    said = capsys.readouterr().out
    assert f"would delete {paths['a fox']}" in said and paths["a wolf"] not in said and "nothing changed" in said
    assert fox.is_file() and (out / "manifest.jsonl").read_bytes() == lines, "--dry-run changes nothing"

    assert main(["prune", str(project / "r.yaml"), "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert f"deleted  {paths['a fox']}" in said and "pruned 1 output(s) of 1 job(s)" in said
    assert not fox.exists() and wolf.is_file() and edited.is_file() and (out / "notes.txt").read_text() == "mine"
    pruned = manifest_records(out, "pruned")
    fox_record = next(r for r in manifest_records(out, "output") if r["prompt"] == "a fox")
    assert len(pruned) == 1 and {k: pruned[0][k] for k in ("job_id", "stage", "path", "sha256")} == \
        {k: fox_record[k] for k in ("job_id", "stage", "path", "sha256")} and pruned[0]["time"]
    assert main(["verify", str(project / "r.yaml"), "--out", str(out)]) == 0  # a pruned file is not missing
    assert "missing" not in capsys.readouterr().out
    page = (out / "index.html").read_text(encoding="utf-8")
    assert '<details class="older"' not in page and paths["a fox"] not in page and paths["a wolf"] in page
    assert main(["prune", str(project / "r.yaml"), "--out", str(out)]) == 0  # again: nothing left to do
    assert "nothing to prune" in capsys.readouterr().out

    # back to v1: the fox is pending (not "missing": it was pruned), rendered and recorded again
    (project / "r.yaml").write_text(V1)
    assert main(["plan", str(project / "r.yaml"), "--out", str(out), "--json"]) == 0
    jobs = {j["prompt"]: j for j in json.loads(capsys.readouterr().out)["jobs"]}
    assert jobs["a fox"]["status"] == "pending" and "reason" not in jobs["a fox"]
    assert main(["run", str(project / "r.yaml"), "--out", str(out)]) == 0
    assert fox.is_file() and main(["verify", str(project / "r.yaml"), "--out", str(out)]) == 0


def test_prune_never_deletes_outside_the_folder_nor_a_changed_file(project, tmp_path, capsys):
    out = project / "out"
    paths = outputs(out)
    fox = out / paths["a fox"]
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copy(fox, outside / "x.png")
    (out / "trap").symlink_to(outside, target_is_directory=True)
    record = next(r for r in manifest_records(out, "output") if r["prompt"] == "a fox")
    hostile = [{**record, "job_id": f"{n:064x}", "path": path} for n, path in
               enumerate(["trap/x.png", str(outside / "x.png"), "../outside/x.png"], 1)]
    with open(out / "manifest.jsonl", "a") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in hostile)
    with open(fox, "ab") as fh:  # the user changed the fox since it was recorded: it is theirs now
        fh.write(b"edited")
    assert main(["prune", str(project / "r.yaml"), "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert said.count("kept ") == 4 and "leads out of the output folder" in said and "yours now" in said
    assert (outside / "x.png").is_file() and (out / "trap").is_symlink() and fox.is_file()
    assert manifest_records(out, "pruned") == []


def test_prune_refuses_a_busy_folder_a_foreign_recipe_and_a_folder_without_manifest(project, tmp_path, capsys):
    out = project / "out"
    fox = out / outputs(out)["a fox"]
    with RunLock(out):
        assert main(["prune", str(project / "r.yaml"), "--out", str(out)]) == 2
    assert "another sdbatch run" in capsys.readouterr().err and fox.is_file()
    other = project / "other.yaml"
    other.write_text(V1.replace("[a wolf, a fox]", "[a cat]"))
    assert main(["prune", str(other), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: none of the recipe's 1 job(s) has an output") and "Traceback" not in err
    assert fox.is_file() and manifest_records(out, "pruned") == []
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["prune", str(project / "r.yaml"), "--out", str(empty)]) == 2
    assert "no manifest.jsonl" in capsys.readouterr().err
    assert sorted(os.listdir(empty)) == []
