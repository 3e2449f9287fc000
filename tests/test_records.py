"""Typed manifest records: one writer, one reader. A malformed line is skipped with one warning, never a crash;
a torn tail of any length is repaired; stage extras live in typed sub-objects and cannot override the
top-level fields; records of the format before ``role`` existed are upgraded on read."""

from __future__ import annotations

import json
import pickle
from types import SimpleNamespace

import pytest

from sdbatch.core.record import (
    FailedRecord,
    FrameInfo,
    OutputRecord,
    RunRecord,
    SkippedRecord,
    job_fields,
    parse_line,
    parse_record,
    plan_entry,
    stage_fields,
)
from sdbatch.io import manifest as manifest_module
from sdbatch.io.manifest import Manifest, read_outputs, read_records

GOOD = {"kind": "output", "job_id": "a" * 64, "stage": "sketch", "type": "generate", "path": "sketch/a-1-aaaaaaaa.png",
        "sha256": "b" * 64, "role": "image", "prompt": "a wolf", "negative_prompt": "", "seed": 1,
        "params": {"steps": 2, "width": 64, "height": 64}, "model": {"id": "m", "revision": "r", "source": "hub"},
        "inputs": [], "recipe": {"path": "r.yaml", "dir": "/x", "sha256": "c", "git_commit": None, "git_dirty": None},
        "versions": {"sdbatch": "0.1.0"}, "device": "cpu", "dtype": "float32", "options": {}, "seconds": 0.5,
        "time": "2026-01-01T00:00:00+00:00"}


def line(record: dict) -> str:
    return json.dumps(record) + "\n"


def good(i: int, **changes) -> dict:
    return {**GOOD, "job_id": f"{i:064d}", "path": f"sketch/img-{i}.png", **changes}


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch):
    monkeypatch.setattr(manifest_module, "_WARNED", set())


# ----------------------------------------------------------------------------------------- malformed
MALFORMED = {
    "invalid JSON": '{"kind": "output", "job_id": \n',
    "not an object": "[1, 2, 3]\n",
    "path is an object": line(good(90, path={"nested": "x"})),
    "a number for a string": line(good(91, stage=7)),
    "missing job_id": line({k: v for k, v in good(92).items() if k != "job_id"}),
    "an unknown kind": line(good(93, kind="outptu")),
    "a wrong-typed sub-object": line(good(94, model="just a string")),
    "an older frame record gone wrong": line({k: v for k, v in good(95, frame="x").items() if k != "role"}),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_malformed_line_is_skipped_with_one_warning(tmp_path, capsys, case):
    path = tmp_path / "manifest.jsonl"
    path.write_text(line(good(1)) + MALFORMED[case] + line(good(2)))
    records = read_records(path)
    assert [r.job_id for r in records] == [f"{1:064d}", f"{2:064d}"]
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "line 2" in err and str(path) in err and "Traceback" not in err
    read_records(path)  # the same manifest again: no second warning
    assert capsys.readouterr().err == ""
    assert list(Manifest(path).outputs_by_job()) == [f"{1:064d}", f"{2:064d}"]


def test_many_malformed_lines_make_one_warning_line(tmp_path, capsys):
    path = tmp_path / "manifest.jsonl"
    path.write_text("".join(MALFORMED[case] for case in sorted(MALFORMED)) + line(good(1)))
    assert len(read_records(path)) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{len(MALFORMED)} malformed lines" in err and "line 1 (" in err


def test_the_warning_names_what_is_wrong(tmp_path, capsys):
    path = tmp_path / "manifest.jsonl"
    path.write_text(line(good(1, path={"x": 1})))
    read_records(path)
    assert "line 1 (path: Input should be a valid string)" in capsys.readouterr().err


def test_run_with_a_malformed_manifest_line_still_resumes(tmp_path, capsys):
    """The runner's reads (done jobs, recorded outputs) skip the bad line and keep the rest."""
    from sdbatch.runtime.runner import recorded_outputs

    path = tmp_path / "manifest.jsonl"
    path.write_text(line(good(1)) + MALFORMED["path is an object"] + line(good(2)))
    by_job = Manifest(path).outputs_by_job()
    assert recorded_outputs(by_job) == {(f"{1:064d}", "sketch/img-1.png"), (f"{2:064d}", "sketch/img-2.png")}


# ----------------------------------------------------------------------------------------- torn tail
@pytest.mark.parametrize("torn_size", [10, 70_000, 300_000])
def test_a_torn_tail_of_any_length_is_ignored_then_cut_before_the_next_append(tmp_path, capsys, torn_size):
    path = tmp_path / "manifest.jsonl"
    torn = json.dumps(good(9, prompt="x" * torn_size))[: torn_size + 100]  # a crash mid-append: no newline
    path.write_text(line(good(1)) + line(good(2)) + torn)
    assert [r.path for r in read_records(path)] == ["sketch/img-1.png", "sketch/img-2.png"]
    manifest = Manifest(path)
    manifest.append(FailedRecord(job_id="f" * 64, stage="sketch", path="sketch/x.png", error="boom"))
    manifest.close()
    lines = path.read_text().splitlines()
    assert len(lines) == 3 and all(json.loads(text) for text in lines)
    assert [r.kind for r in read_records(path)] == ["output", "output", "failed"]
    assert capsys.readouterr().err == ""  # a torn tail is expected after a crash: no warning


def test_a_manifest_that_is_only_a_long_torn_line_is_emptied(tmp_path):
    path = tmp_path / "manifest.jsonl"
    path.write_text('{"kind": "output", "prompt": "' + "y" * 200_000)
    assert read_records(path) == []
    manifest = Manifest(path)
    manifest.append(RunRecord(event="start", run_id="r"))
    manifest.close()
    assert path.read_text() == '{"kind": "run", "event": "start", "run_id": "r"}\n'


# ----------------------------------------------------------------------------------------- extras
def test_stage_extras_cannot_override_top_level_fields():
    """Animate overwrote the job's seed and prompt with the frame's: now they are the frame's own."""
    fields = stage_fields({"frame": 3, "seed": 10, "prompt": "a castle", "schedule": {"zoom": 1.02},
                           "diffused": True}, is_file=False)
    record = OutputRecord(**{**GOOD, **fields})
    assert record.seed == 1 and record.prompt == "a wolf"  # the job's
    assert record.role == "frame" and record.frame == FrameInfo(index=3, seed=10, prompt="a castle",
                                                                 schedule={"zoom": 1.02}, diffused=True)
    assert record.effective_seed == 10 and record.effective_prompt == "a castle"
    data = record.to_json()
    assert data["seed"] == 1 and data["frame"]["seed"] == 10 and data["role"] == "frame"


def test_unknown_fields_are_kept_beside_the_typed_ones_never_instead():
    record = parse_line(line(good(1, future_field={"x": 1})))
    assert record.model_extra == {"future_field": {"x": 1}}
    assert record.to_json()["future_field"] == {"x": 1}
    assert record.details() == {"future_field": {"x": 1}}
    with pytest.raises(ValueError):  # a typed field keeps its type: a line cannot put a number in ``prompt``
        parse_line(line(good(1, prompt=5)))


EXTRAS = {  # what each stage yields today (Rendered.extra)
    "animate frame": ({"frame": 1, "seed": 8, "prompt": "p", "schedule": {"zoom": 1.0}, "diffused": False,
                       "keyframe": 0, "tween": 0.5}, "frame"),
    "interpolate frame": ({"frame": 2, "path_position": 0.5, "segment": [3, 9], "t": 0.25, "seed": 3, "prompt": "a",
                           "prompts": ["a", "b"]}, "frame"),
    "restyle frame": ({"frame": 0, "source_frame": 4, "seed": 5}, "frame"),
    "animate video": ({"frames": 12, "fps": 8}, "video"),
    "restyle video": ({"frames": 4, "fps": 12.0, "audio": True, "timing": {"total_s": 1.5, "frames_reused": 0}},
                      "video"),
    "preview": ({"preview": {"step": 2, "steps": 4}}, "preview"),
    "image": ({}, "image"),
}


@pytest.mark.parametrize("case", sorted(EXTRAS))
def test_every_stage_extra_has_a_typed_home(case):
    extra, role = EXTRAS[case]
    fields = stage_fields(extra, is_file=role == "video")
    record = OutputRecord(**{**GOOD, **fields})
    assert record.role == role
    again = parse_line(json.dumps(record.to_json()))
    assert again == record and again.to_json() == record.to_json()
    assert not record.model_extra


@pytest.mark.parametrize("extra", [{"frame": 1, "sparkle": 2}, {"frames": 3, "fps": 1, "bogus": 1},
                                   {"preview": {"step": 1, "steps": 2, "x": 1}}, {"preview": {"step": 1, "steps": 2},
                                                                                 "seed": 3}])
def test_a_stage_extra_the_models_do_not_declare_is_an_error(extra):
    with pytest.raises(ValueError, match="not a field of"):
        stage_fields(extra, is_file=False)


# ------------------------------------------------------------------------------------ older records
def test_records_from_before_roles_are_upgraded():
    legacy_frame = {k: v for k, v in good(1, frame=3, seed=10, schedule={"zoom": 1.0}, diffused=True, tween=0.5,
                                          keyframe=3).items() if k != "role"}
    frame = parse_line(line(legacy_frame))
    assert frame.role == "frame" and frame.frame.index == 3 and frame.frame.schedule == {"zoom": 1.0}
    assert frame.effective_seed == 10 and not frame.model_extra
    preview = parse_line(line({k: v for k, v in good(2, preview={"step": 1, "steps": 2}).items() if k != "role"}))
    assert preview.role == "preview" and preview.preview.step == 1 and preview.is_part
    video = parse_line(line({k: v for k, v in good(3, path="a/a.mp4", frames=4, fps=2, audio=False).items()
                             if k != "role"}))
    assert video.role == "video" and video.video.frames == 4 and video.video.audio is False
    bare_video = parse_record({k: v for k, v in good(4, path="a/a.mp4").items() if k != "role"})
    assert bare_video.role == "video" and bare_video.video is None
    image = parse_line(line({k: v for k, v in good(5).items() if k != "role"}))
    assert image.role == "image" and image.to_json()["role"] == "image"
    mask_input = {k: v for k, v in good(6, inputs=[{"path": "m.png", "sha256": "0", "role": "mask"}]).items()
                  if k != "role"}
    assert parse_line(line(mask_input)).role == "image"


# ------------------------------------------------------------------------------------ writing
def test_records_write_exactly_what_they_were_given(tmp_path):
    path = tmp_path / "manifest.jsonl"
    manifest = Manifest(path)
    manifest.append(RunRecord(event="start", run_id="r", jobs=2, only=[]))
    manifest.append(SkippedRecord(job_id="s" * 64, stage="b", path="b/x.png", reason="input failed", time="t"))
    manifest.append(RunRecord(event="end", run_id="r", exit_code=None, error="RuntimeError: x", interrupted=False))
    manifest.append(OutputRecord(**GOOD))
    manifest.close()
    lines = [json.loads(text) for text in path.read_text().splitlines()]
    assert lines[0] == {"kind": "run", "event": "start", "run_id": "r", "jobs": 2, "only": []}
    assert lines[1] == {"kind": "skipped", "job_id": "s" * 64, "stage": "b", "path": "b/x.png",
                        "reason": "input failed", "time": "t"}
    assert lines[2]["exit_code"] is None and "rendered" not in lines[2]
    assert lines[3] == GOOD
    assert '"kind": "output", "job_id": ' in path.read_text()  # the line format is unchanged
    assert [type(r) for r in read_records(path)] == [RunRecord, SkippedRecord, RunRecord, OutputRecord]
    assert [r.path for r in read_outputs(path)] == [GOOD["path"]]


def test_records_survive_pickling_for_ray():
    record = parse_line(line(good(1)))
    record.sha256 = "d" * 64
    again = pickle.loads(pickle.dumps(record))
    assert again == record and again.to_json() == record.to_json()


def test_one_serialisation_of_a_job():
    ref = SimpleNamespace(path="in.png", sha256="0", job_id=None)
    job = SimpleNamespace(job_id="j" * 64, stage="s", type="img2img", prompt="p", negative_prompt="n", seed=3,
                          model=SimpleNamespace(id="m", revision="r", source="hub"), inputs=[ref], mask=None,
                          output="s/x.png", params_json=lambda: {"steps": 2})
    fields = job_fields(job)
    assert fields == {"job_id": "j" * 64, "stage": "s", "type": "img2img", "prompt": "p", "negative_prompt": "n",
                      "seed": 3, "params": {"steps": 2}, "model": {"id": "m", "revision": "r", "source": "hub"}}
    entry = plan_entry(job, "pending")
    assert entry["model"] == {"id": "m", "revision": "r"} and entry["status"] == "pending"
    assert entry["inputs"] == [{"path": "in.png", "sha256": "0", "job_id": None}] and entry["output"] == "s/x.png"
