"""``--rehearse`` caps the frames of every video stage (issue 9, item 19): animate renders the first
REHEARSE_MAX_FRAMES frames, restyle the first REHEARSE_MAX_FRAMES kept frames of its selected range, interpolate
that many frames along the same path (each renders what its params say: the plan shows it); plans without
``--rehearse`` keep their frames and ids."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import manifest_records, run_cli

from sdbatch.config.stage import REHEARSE_MAX_FRAMES as N
from sdbatch.io.testclips import make_test_clip

RECIPE = """\
name: video
model: stabilityai/sd-turbo
defaults: {steps: 2, width: 64, height: 48}
stages:
  - {name: fly, type: animate, prompt: a forest, frames: 40, seed: 3}
  - {name: anime, type: restyle, input: clips/walk.mp4, prompt: anime, strength: 0.5, seed: 5}
  - {name: every3, type: restyle, input: clips/walk.mp4, prompt: anime, start_frame: 4, every_nth_frame: 3}
  - {name: ranged, type: restyle, input: clips/walk.mp4, prompt: anime, start_frame: 2, end_frame: 9}
  - {name: refly, type: restyle, input: fly, prompt: anime, start_frame: 20, end_frame: 36}
  - {name: dream, type: interpolate, prompt: a lighthouse, seeds: [3, 9, 12], frames: 48}
"""


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("video")
    make_test_clip(folder / "clips" / "walk.mp4", frames=40, fps=12, size=(64, 48))
    (folder / "video.yaml").write_text(RECIPE)
    return folder


def planned(project: Path, *args: str) -> dict[str, dict]:
    result = run_cli("plan", project / "video.yaml", "--json", "--out", project / "out", *args)
    assert result.returncode == 0, result.stderr
    return {job["stage"]: job for job in json.loads(result.stdout)["jobs"]}


def kept(params: dict, source_frames: int) -> list[int]:
    end = params["end_frame"] if params["end_frame"] is not None else source_frames
    return list(range(params["start_frame"], end, params["every_nth_frame"]))


def test_rehearsal_caps_the_frames_of_every_video_stage(project):
    real, rehearsal = planned(project), planned(project, "--rehearse")
    assert real["fly"]["params"]["frames"] == 40 and rehearsal["fly"]["params"]["frames"] == N
    assert real["dream"]["params"]["frames"] == 48 and rehearsal["dream"]["params"]["frames"] == N
    assert rehearsal["dream"]["params"]["seeds"] == [3, 9, 12]  # the same path, fewer frames
    # restyle: the first N kept frames of the selected range, whatever the range
    for stage, first in (("anime", list(range(N))), ("every3", list(range(4, 40, 3))[:N]), ("ranged", list(range(2, 9)))):
        assert kept(rehearsal[stage]["params"], 40) == first, stage
    # reading the rehearsed animation (N frames): its range is kept inside them
    assert len(kept(rehearsal["refly"]["params"], N)) >= 1
    assert all(0 <= i < N for i in kept(rehearsal["refly"]["params"], N))
    assert kept(real["refly"]["params"], 40) == list(range(20, 36))


def test_rehearsal_leaves_real_plans_alone(project):
    before = planned(project)
    planned(project, "--rehearse")
    after = planned(project)
    assert {s: j["job_id"] for s, j in before.items()} == {s: j["job_id"] for s, j in after.items()}
    assert before["anime"]["params"]["end_frame"] is None and before["anime"]["params"]["start_frame"] == 0


def test_a_rehearsed_restyle_renders_n_frames(project):
    out = project / "rehearsal"
    recipe = project / "short.yaml"  # strength 0: no diffusion, the frames and the mp4 only
    recipe.write_text(RECIPE.split("  - {name: fly")[0]
                      + "  - {name: anime, type: restyle, input: clips/walk.mp4, prompt: x, strength: 0, seed: 5}\n")
    result = run_cli("run", recipe, "--rehearse", "--out", out, timeout=600)
    assert result.returncode == 0, result.stderr
    frames = [r for r in manifest_records(out, "output") if r["stage"] == "anime" and r.get("role") == "frame"]
    assert sorted(r["frame"]["index"] for r in frames) == list(range(N))
    assert (out / "anime" / "anime.mp4").is_file()
