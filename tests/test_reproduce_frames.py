"""``sdbatch reproduce`` of video frames (issue 10, item 18): a frame of an animate, restyle or interpolate job is
re-rendered from its record and the saved frame before it (animate warps it, restyle blends it by optical flow,
interpolate needs none: it slerps its segment's seeds' noises) and says ``match``, or the largest difference when
the frame or the frame it continues from was altered."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import manifest_records, run_cli
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from sdbatch import cli
from sdbatch.io.artifacts import read_png_record
from sdbatch.io.testclips import make_test_clip

W, H = 64, 48
RECIPE = f"""\
name: frames
model: sdbatch/tiny-sd
defaults: {{steps: 2, width: {W}, height: {H}, guidance: 0.0}}
stages:
  - name: fly
    type: animate
    prompt: a forest
    init: start.png
    frames: 4
    seed: 3
    strength: "0:(0.5)"
    noise: "0:(0.04)"
    color_coherence: lab
    motion: {{zoom: "0:(1.05)", angle: "0:(2*t)"}}
  - name: deep
    type: animate
    mode: 3d
    prompts: {{0: a cave, 2: a castle}}
    frames: 4
    cadence: 2
    seed: 4
    seed_behavior: random
    strength: "0:(0.5)"
    motion: {{translation_z: "0:(2)", rotation_3d_y: "0:(3)"}}
  - name: anime
    type: restyle
    input: clips/walk.mp4
    prompt: anime style
    strength: 0.5
    seed: 5
    seed_behavior: iter
    end_frame: 4
    coherence: {{flow: 0.5, color: lab}}
  - name: dream
    type: interpolate
    prompts: [a lighthouse, a harbour, a boat]
    seeds: [3, 9, 12]
    frames: 5
"""
#: the frame each test reproduces, and the one it is rendered from (None: interpolate's frames stand alone)
MIDDLE = {"fly": (2, 1), "deep": (3, 1), "anime": (2, 1), "dream": (3, None)}


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("reproduce-frames") / "project"
    make_test_clip(folder / "clips" / "walk.mp4", frames=6, fps=6, size=(W, H), audio=False)
    gradient = np.linspace(0, 255, W * H * 3).reshape(H, W, 3).astype(np.uint8)
    Image.fromarray(gradient).save(folder / "start.png")
    (folder / "recipe.yaml").write_text(RECIPE)
    result = run_cli("run", "recipe.yaml", "--rehearse", "--out", "out", cwd=folder)
    assert result.returncode == 0, result.stdout + result.stderr
    return folder


def frame(folder: Path, stage: str, index: int) -> Path:
    path = next(r["path"] for r in manifest_records(folder / "out", "output")
                if r["stage"] == stage and r.get("frame", {}).get("index") == index)
    return folder / "out" / path


def altered(path: Path, levels: int, box: tuple[int, int, int, int] | None = None) -> None:
    """Pixels of ``path`` moved by ``levels`` (in ``box``, else one channel of one pixel), metadata kept."""
    with Image.open(path) as im:
        im.load()
        text = dict(im.text)
        pixels = np.asarray(im.convert("RGB"), dtype=np.int16).copy()
    if box is None:
        pixels[5, 7, 1] += levels if pixels[5, 7, 1] + levels <= 255 else -levels
    else:
        x0, y0, x1, y1 = box
        pixels[y0:y1, x0:x1] = 255 - pixels[y0:y1, x0:x1]
    info = PngInfo()
    for key, value in text.items():
        info.add_text(key, value)
    Image.fromarray(pixels.astype(np.uint8)).save(path, pnginfo=info)


@pytest.fixture
def copy(project: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(project, target)
    return target


@pytest.mark.parametrize("stage", list(MIDDLE))
def test_a_middle_frame_reproduces_exactly(project, tmp_path, capsys, stage):
    index, _ = MIDDLE[stage]
    original = frame(project, stage, index)
    before = original.read_bytes()
    assert cli.main(["reproduce", str(original), "--out", str(tmp_path / "again")]) == 0
    out = capsys.readouterr().out
    again = tmp_path / "again" / original.relative_to(project / "out")
    assert out.splitlines() == [f"match (re-rendered: {again})"]
    assert original.read_bytes() == before, "reproduce must not touch the original"
    # the re-rendered frame is that frame of that job, with the frame's own values (seed, schedule, segment)
    mine, theirs = read_png_record(again), read_png_record(original)
    assert mine["job_id"] == theirs["job_id"] and mine["path"] == theirs["path"]
    assert mine["frame"] == theirs["frame"]
    assert sorted(p.relative_to(tmp_path / "again").as_posix() for p in (tmp_path / "again").rglob("*.png")) == \
        [again.relative_to(tmp_path / "again").as_posix()], "only the frame is written"


@pytest.mark.parametrize("stage", list(MIDDLE))
def test_an_altered_frame_is_not_a_match(copy, capsys, stage):
    index, _ = MIDDLE[stage]
    target = frame(copy, stage, index)
    altered(target, 1)
    assert cli.main(["reproduce", str(target)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "max pixel difference: 1"
    assert lines[1].startswith(f"1 of {W * H} pixels differ (re-rendered: ")
    assert any("sha256 differs from the one recorded in manifest.jsonl" in line for line in lines)


@pytest.mark.parametrize("stage", ["fly", "deep", "anime"])
def test_an_altered_previous_frame_changes_the_re_render(copy, capsys, stage):
    index, source = MIDDLE[stage]
    previous = frame(copy, stage, source)
    altered(previous, 0, box=(8, 8, 40, 32))
    target = frame(copy, stage, index)
    assert cli.main(["reproduce", str(target)]) == 1
    out = capsys.readouterr().out
    worst = int(out.splitlines()[0].removeprefix("max pixel difference: "))
    assert worst > 1
    rel = previous.relative_to(copy / "out").as_posix()
    assert f"note: {rel}, which this frame is rendered from, differs from its record in manifest.jsonl" in out


def test_interpolate_frames_do_not_depend_on_the_frame_before(copy, capsys):
    index, _ = MIDDLE["dream"]
    altered(frame(copy, "dream", index - 1), 0, box=(0, 0, W, H))
    frame(copy, "dream", 0).unlink()
    assert cli.main(["reproduce", str(frame(copy, "dream", index))]) == 0
    assert capsys.readouterr().out.startswith("match")


def test_animate_cadence_recomputes_its_key_frame_from_the_frame_before_it(copy, capsys):
    """With cadence 2, frame 3 tweens from the key frame 2, which is diffused again from saved frame 1: the saved
    frame 2 is only read, so altering it changes nothing."""
    altered(frame(copy, "deep", 2), 0, box=(0, 0, W, H))
    assert cli.main(["reproduce", str(frame(copy, "deep", 3))]) == 0
    assert capsys.readouterr().out.startswith("match")


def test_a_missing_or_foreign_previous_frame_is_refused(copy, capsys):
    target = frame(copy, "fly", 2)
    previous = frame(copy, "fly", 1)
    previous.unlink()
    assert cli.main(["reproduce", str(target)]) == 2
    err = capsys.readouterr().err
    assert err == "fly/frames/000001.png not found beside 000002.png (frame 2 is re-rendered from the saved " \
                  "frames before it)\n"
    shutil.copy(frame(copy, "anime", 1), previous)  # a frame of another job in its place
    assert cli.main(["reproduce", str(target)]) == 2
    err = capsys.readouterr().err
    assert "fly/frames/000001.png is not a frame of this job" in err and err.count("\n") == 1


def test_a_whole_video_is_refused_naming_its_frames(project, capsys):
    video = project / "out" / "fly" / "fly.mp4"
    assert video.is_file()
    assert cli.main(["reproduce", str(video)]) == 2
    err = capsys.readouterr().err
    assert "reproducing a whole animate video is not supported yet" in err and "fly/frames/000000.png" in err


def test_the_frames_record_what_reproduce_reads(project):
    """Each frame's embedded record holds its job's params, seed, inputs (the init image, the source video) and
    its own frame values; the frame's path says which job's frames folder it is in."""
    for stage, (index, _) in MIDDLE.items():
        record = read_png_record(frame(project, stage, index))
        assert record["role"] == "frame" and record["frame"]["index"] == index
        assert record["path"] == f"{stage}/frames/{index:06d}.png"
    fly = read_png_record(frame(project, "fly", 2))
    assert [i["path"] for i in fly["inputs"]] == ["start.png"]
    anime = read_png_record(frame(project, "anime", 2))
    assert [i["path"] for i in anime["inputs"]] == ["clips/walk.mp4"] and anime["frame"]["source_frame"] == 2
