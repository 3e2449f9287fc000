"""A folder of many finished outputs stays fast (issue 15): a run with nothing to do reads the manifest's
compact index, not the JSONL, and rewrites no gallery page; the index is never trusted over the JSONL (an
edited, truncated or replaced manifest, or a broken index, is read again from the JSONL); ``plan --json``'s
fast path lists exactly what ``Job.to_json`` does. The 20,000 / 100,000-output figures: benchmarks/scale.py."""

from __future__ import annotations

import json

import pytest
from test_gallery_pages import fabricate, recipe

from sdbatch.cli import main
from sdbatch.config.recipe import load_recipe
from sdbatch.core import record as record_module
from sdbatch.core.plan import build_plan
from sdbatch.core.record import plan_entries
from sdbatch.io import index as index_module
from sdbatch.io import regular as regular_module
from sdbatch.io.index import INDEX_NAME, load_index
from sdbatch.io.manifest import MANIFEST_NAME


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch):
    monkeypatch.setattr(regular_module, "_WARNED", set())
    monkeypatch.setattr(index_module, "_MEMO", {})  # each load below reads the saved index, not this process's


def count_parses(monkeypatch) -> list[int]:
    calls = [0]
    real = record_module.parse_line

    def counting(raw):
        calls[0] += 1
        return real(raw)

    monkeypatch.setattr(record_module, "parse_line", counting)
    return calls


def test_a_run_with_nothing_to_do_reads_the_index_not_the_manifest(tmp_path, monkeypatch, capsys):
    path = recipe(tmp_path, [f"prompt {i}" for i in range(10)], list(range(30)))
    out = tmp_path / "out"
    records = fabricate(path, out)  # 300 finished outputs
    assert main(["run", str(path), "--out", str(out)]) == 0  # the first: builds the index and the gallery
    assert (out / INDEX_NAME).is_file() and (out / "index.html").is_file()
    pages = {p: p.stat().st_mtime_ns for p in out.rglob("*.html")}
    sheets = {p: p.stat().st_mtime_ns for p in out.glob("*/grid*.png")}
    assert sheets, "a contact sheet of the sweep"
    calls = count_parses(monkeypatch)
    assert main(["run", str(path), "--out", str(out)]) == 0
    assert "300 job(s) already done" in capsys.readouterr().err
    assert calls[0] <= 6, f"{calls[0]} manifest lines parsed for {len(records)} outputs: only the last run's are new"
    assert {p: p.stat().st_mtime_ns for p in pages} == pages and {p: p.stat().st_mtime_ns for p in sheets} == sheets
    calls[0] = 0
    assert main(["plan", str(path), "--out", str(out), "--json"]) == 0
    assert {j["status"] for j in json.loads(capsys.readouterr().out)["jobs"]} == {"done"}
    assert calls[0] <= 2, "plan uses the index too (it never writes it)"


def test_the_index_is_never_trusted_over_the_manifest(tmp_path, capsys):
    out = tmp_path / "out"
    records = fabricate(recipe(tmp_path, ["a wolf", "a fox"], [1, 2]), out)
    manifest = out / MANIFEST_NAME
    index = load_index(manifest, save=True)
    assert [e.path for e in index.outputs] == [r.path for r in records] and (out / INDEX_NAME).is_file()

    # edited in the middle (same length): the saved index no longer matches the bytes it covered
    text = manifest.read_text()
    old = records[1].sha256
    manifest.write_text(text.replace(old, "f" * 64))
    assert next(e for e in load_index(manifest, save=True).outputs if e.path == records[1].path).sha256 == "f" * 64

    # appended to: only the new line is read, and it counts
    with open(manifest, "a") as fh:
        fh.write(json.dumps({"kind": "pruned", "job_id": records[0].job_id, "stage": "sketch",
                             "path": records[0].path}) + "\n")
    assert [e.path for e in load_index(manifest, save=True).live_outputs()] == [r.path for r in records[1:]]

    # truncated, or replaced by a shorter file: rebuilt from the JSONL
    lines = manifest.read_text().splitlines(keepends=True)
    manifest.write_text("".join(lines[:2]))
    assert [e.path for e in load_index(manifest).outputs] == [r.path for r in records[:2]]

    # a broken index file, and a malformed manifest line (warned about, as the JSONL reader does)
    index_module._MEMO.clear()
    (out / INDEX_NAME).write_text('{"version": 1, "outputs": [[1, 2]]}')
    with open(manifest, "a") as fh:
        fh.write('{"kind": "output", "job_id": 3}\n')
    capsys.readouterr()
    assert len(load_index(manifest, save=True).outputs) == 2
    assert "skipped a malformed line: line 3" in capsys.readouterr().err
    regular_module._WARNED.clear()
    assert len(load_index(manifest).outputs) == 2  # from the saved index: the warning is kept with it
    assert "line 3" in capsys.readouterr().err


def test_the_saved_index_is_what_the_jsonl_says(tmp_path, monkeypatch):
    out = tmp_path / "out"
    fabricate(recipe(tmp_path, ["a wolf"], [1, 2, 3]), out)
    manifest = out / MANIFEST_NAME
    built = load_index(manifest, save=True)
    index_module._MEMO.clear()
    monkeypatch.setattr(index_module, "_extend", lambda *a: pytest.fail("the saved index was not used"))
    reused = load_index(manifest)
    assert [e.row() for e in reused.outputs] == [e.row() for e in built.outputs]
    assert reused.digest == built.digest and reused.covered == manifest.stat().st_size


def test_plan_json_fast_path_lists_what_job_to_json_does(tmp_path):
    (tmp_path / "in").mkdir()
    from PIL import Image

    for name in ("a", "b"):
        Image.new("RGB", (64, 64), (9, 9, 9)).save(tmp_path / "in" / f"{name}.png")
    Image.new("L", (64, 64), 255).save(tmp_path / "mask.png")
    path = tmp_path / "r.yaml"
    path.write_text("model: sdbatch/tiny-sd\ndefaults: {steps: 4, width: 64, height: 64}\nstages:\n"
                    "  - {name: s, type: generate, prompt: [a, b], seeds: [1, 2], guidance: [3, 7]}\n"
                    "  - {name: p, type: img2img, input: s, prompt: oil, strength: [0.5, 0.8]}\n"
                    "  - {name: f, type: inpaint, input: in, mask: mask.png, prompt: x, strength: 0.9}\n")
    plan = build_plan(load_recipe(path), tmp_path / "out")
    done = {plan.jobs[0].job_id, plan.jobs[-1].job_id}
    assert plan_entries(plan.jobs, done) == [j.to_json("done" if j.job_id in done else "pending") for j in plan.jobs]
