"""Issue 10, item 7: video stages (animate, interpolate, restyle) report their frames with an ETA, in the same
display as the jobs: a second bar on a terminal, and in logs a line every tenth of the frames or every ~10 s,
never a flood of carriage returns."""

from __future__ import annotations

import io
import re
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import manifest_records, run_cli
from helpers import video_project

from sdbatch.runtime.progress import FRAME_LINE_SECONDS, Reporter

RECIPE = """\
name: clips
model: sdbatch/tiny-sd
defaults: {steps: 2, width: 32, height: 32}
stages:
  - {name: anim, type: animate, prompt: a lighthouse, frames: 40, strength: "0:(0)", seed: 4}
  - {name: dream, type: interpolate, prompt: a castle, seeds: [1, 2], frames: 3}
  - {name: re, type: restyle, input: clips/walk.mp4, prompt: ink, strength: 0.5}
"""
FRAME_LINE = re.compile(r"^(?P<output>\S+): frame (?P<done>\d+)/(?P<total>\d+) \(ETA (?P<eta>[\d:]+|\?)\)$")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def log_reporter() -> tuple[Reporter, io.StringIO, FakeClock]:
    stream = io.StringIO()
    reporter = Reporter(stream=stream, live=False)
    reporter.clock = clock = FakeClock()
    reporter.start(1, 0)
    return reporter, stream, clock


JOB = SimpleNamespace(job_id="j1", output="anim/anim.mp4")


def frame_lines(text: str) -> list[re.Match]:
    return [m for m in map(FRAME_LINE.match, text.splitlines()) if m]


# ------------------------------------------------------------------------------------ the log lines
def test_fast_frames_give_a_line_per_tenth_never_one_per_frame():
    reporter, stream, clock = log_reporter()
    reporter.frames(JOB, 0, 1000)
    for done in range(1, 1001):
        clock.now += 0.001
        reporter.frames(JOB, done, 1000)
    lines = frame_lines(stream.getvalue())
    assert [int(m["done"]) for m in lines] == list(range(100, 1001, 100))
    assert "\r" not in stream.getvalue()
    reporter.done(JOB, 1.0)
    assert stream.getvalue().splitlines()[-1].startswith("[1/1] anim/anim.mp4 1.0s")


def test_slow_frames_give_a_line_every_ten_seconds_with_an_eta_from_rendered_frames():
    reporter, stream, clock = log_reporter()
    reporter.frames(JOB, 0, 200)
    clock.now += 100.0  # the first frame loads the models
    reporter.frames(JOB, 1, 200)
    for done in range(2, 6):
        clock.now += 4.0  # then 4 s a frame: a line at most every FRAME_LINE_SECONDS
        reporter.frames(JOB, done, 200)
    lines = frame_lines(stream.getvalue())
    assert [int(m["done"]) for m in lines] == [1, 4]
    assert 4.0 * 2 < FRAME_LINE_SECONDS <= 4.0 * 3
    assert lines[-1]["eta"] == "13:04"  # 196 frames left at 4 s (the 100 s model load left out)


def test_a_resumed_job_says_how_many_frames_it_had():
    reporter, stream, clock = log_reporter()
    reporter.frames(JOB, 30, 40)
    assert stream.getvalue().splitlines()[-1] == "anim/anim.mp4: 30/40 frames saved before, rendering the rest"
    for done in range(31, 41):
        clock.now += 1.0
        reporter.frames(JOB, done, 40)
    assert [int(m["done"]) for m in frame_lines(stream.getvalue())] == [32, 36, 40]


def test_on_a_terminal_frames_are_a_second_bar_of_the_same_display():
    reporter = Reporter(stream=io.StringIO(), live=True)
    reporter.start(2, 0)
    try:
        reporter.frames(JOB, 5, 40)
        reporter.frames(JOB, 6, 40)
        tasks = {task.description.strip(): task for task in reporter._progress.tasks}
        assert tasks["anim/anim.mp4 frames"].completed == 6 and tasks["anim/anim.mp4 frames"].total == 40
        reporter.done(JOB, 1.0)
        assert [task.description for task in reporter._progress.tasks] == ["starting"]  # the job's bar stays
        assert reporter._progress.tasks[0].completed == 1
    finally:
        reporter.stop()


# ------------------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return video_project(tmp_path_factory.mktemp("progress"), RECIPE)


def test_every_video_stage_reports_its_frames_in_the_log(project):
    out = project / "out"
    began = time.time()
    result = run_cli("run", project / "clips.yaml", "--out", out)
    wall = time.time() - began
    assert result.returncode == 0, result.stdout + result.stderr
    assert "\r" not in result.stderr
    videos = {r["stage"]: r["path"] for r in manifest_records(out, "output") if r["role"] == "video"}
    lines = frame_lines(result.stderr)
    totals = {"anim": 40, "dream": 3, "re": 3}
    for stage, total in totals.items():
        mine = [m for m in lines if m["output"] == videos[stage]]
        assert mine, f"no frame progress for {stage}:\n{result.stderr}"
        assert {int(m["total"]) for m in mine} == {total}
        done = [int(m["done"]) for m in mine]
        assert done == sorted(done) and done[-1] == total, done
    anim = [m for m in lines if m["output"] == videos["anim"]]
    # every 4th of the 40 frames, plus at most one per FRAME_LINE_SECONDS when frames are slow
    assert 10 <= len(anim) <= 10 + wall / FRAME_LINE_SECONDS, [m.group(0) for m in anim]
    assert all(m["eta"] != "?" for m in anim)
    jobs = [line for line in result.stderr.splitlines() if re.match(r"^\[\d/3\] ", line)]
    assert len(jobs) == 3, result.stderr  # the job lines stay, one per job
