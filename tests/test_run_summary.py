"""Issue 10, item 6: the end of every run (exit 0, 1 and interrupted) says how long it took, what it rendered and
how fast, each failure with its first error line, the gallery (``gallery: outputs/x/index.html``, as the user
would type it) and the command that resumes (the same command line, never repeating ``--force``). A run with
nothing to do says so as briefly, without importing torch."""

from __future__ import annotations

import re
import shlex
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

from conftest import manifest_records, run_cli
from PIL import Image

from sdbatch.runtime.progress import resume_command, shown_path, summary_lines
from sdbatch.runtime.runner import RunOutcome, StageStats

RECIPE = """\
model: sdbatch/tiny-sd
defaults: {steps: 2, width: 32, height: 32}
stages:
  - {name: a, type: generate, prompt: a cat, seeds: [1]}
  - {name: b, type: img2img, input: photos, prompt: ink, strength: 0.5}
"""
FINISHED = re.compile(r"^finished in (\d+\.\ds|\d+:\d\d(:\d\d)?): (?P<what>.*)$")


def png_with_corrupt_pixels(width: int, height: int) -> bytes:
    """A PNG whose header and checksums are whole (it opens) but whose pixel data does not inflate."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"not zlib data " * 8) + chunk(b"IEND", b"")


def project(tmp_path: Path, recipe: str = RECIPE) -> Path:
    proj = tmp_path / "proj"
    (proj / ".git").mkdir(parents=True)
    (proj / "recipes" / "photos").mkdir(parents=True)
    (proj / "recipes" / "x.yaml").write_text(recipe)
    Image.new("RGB", (32, 32), (200, 120, 40)).save(proj / "recipes" / "photos" / "good.png")
    return proj


def line(stdout: str, prefix: str) -> str:
    found = [text for text in stdout.splitlines() if text.startswith(prefix)]
    assert len(found) == 1, f"{prefix!r} in:\n{stdout}"
    return found[0]


def test_failed_run_sums_up_and_its_resume_command_drops_force(tmp_path):
    proj = project(tmp_path)
    (proj / "recipes" / "photos" / "bad.png").write_bytes(png_with_corrupt_pixels(32, 32))
    first = run_cli("run", "recipes/x.yaml", "--force", cwd=proj)
    assert first.returncode == 1, first.stdout + first.stderr
    out = proj / "outputs" / "x"
    summary = FINISHED.match(line(first.stdout, "finished in "))
    assert summary, first.stdout
    assert re.fullmatch(r"2 images rendered, \d+\.\d+ s/image; 1 failed, 0 skipped", summary["what"]), summary[0]
    failed = manifest_records(out, "failed")
    assert len(failed) == 1
    assert line(first.stdout, "failed: ") == f"failed: {failed[0]['path']}: {failed[0]['error'].splitlines()[0]}"
    assert line(first.stdout, "gallery: ") == "gallery: outputs/x/index.html"
    assert (out / "index.html").is_file()
    resume = line(first.stdout, "resume: ")
    assert resume == "resume: sdbatch run recipes/x.yaml", resume  # never --force again
    assert "Traceback" not in first.stderr

    # the input fixed, the printed command renders only what is missing (with --force it would be all three)
    Image.new("RGB", (32, 32), (20, 160, 90)).save(proj / "recipes" / "photos" / "bad.png")
    command = shlex.split(resume.removeprefix("resume: "))
    assert command[0] == "sdbatch"
    again = run_cli(*command[1:], cwd=proj)
    assert again.returncode == 0, again.stdout + again.stderr
    assert FINISHED.match(line(again.stdout, "finished in "))["what"].startswith("1 image rendered, ")
    assert "failed: " not in again.stdout
    assert line(again.stdout, "gallery: ") == "gallery: outputs/x/index.html"

    # nothing to do, from elsewhere: a short summary, the gallery's absolute path, and no torch imported
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    recipe = proj / "recipes" / "x.yaml"
    probe = ("import sys\nfrom sdbatch.cli import main\n"
             f"code = main(['run', {str(recipe)!r}])\n"
             "print('HEAVY', [m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules])\n"
             "sys.exit(code)\n")
    idle = subprocess.run([sys.executable, "-c", probe], cwd=elsewhere, capture_output=True, text=True, timeout=120)
    assert idle.returncode == 0, idle.stdout + idle.stderr
    assert "HEAVY []" in idle.stdout, idle.stdout
    assert re.fullmatch(r"nothing to do: 3 job\(s\) already done, 0 rendered \(\d+\.\ds\)",
                        line(idle.stdout, "nothing to do: ")), idle.stdout
    assert line(idle.stdout, "gallery: ") == f"gallery: {out / 'index.html'}"
    assert line(idle.stdout, "resume: ") == f"resume: sdbatch run {recipe}"
    assert "┏" not in idle.stdout  # no per-stage table when nothing was tried


def test_an_interrupted_run_says_how_to_resume(tmp_path):
    many = RECIPE.split("  - {name: b")[0].replace("seeds: [1]", "seeds: {start: 0, count: 16}")
    proj = project(tmp_path, many)
    out = proj / "outputs" / "x-rehearsal"
    proc = subprocess.Popen([sys.executable, "-m", "sdbatch", "run", "recipes/x.yaml", "--rehearse", "--force"],
                            cwd=proj, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None and len(manifest_records(out, "output")) < 2:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stdout + stderr
    done = len(manifest_records(out, "output"))
    assert 2 <= done < 16
    head = line(stdout, "interrupted after ")
    assert re.fullmatch(rf"interrupted after [\d.:s]+: {done} images? rendered, \d+\.\d+ s/image", head), head
    assert line(stdout, "gallery: ") == "gallery: outputs/x-rehearsal/index.html"
    resume = line(stdout, "resume: ")
    assert resume == "resume: sdbatch run recipes/x.yaml --rehearse", resume
    again = run_cli(*shlex.split(resume.removeprefix("resume: "))[1:], cwd=proj)
    assert again.returncode == 0, again.stdout + again.stderr
    rest = 16 - done
    assert FINISHED.match(line(again.stdout, "finished in "))["what"].startswith(f"{rest} image"), again.stdout
    assert len(manifest_records(out, "output")) == 16


# ------------------------------------------------------------------------------------- the pieces
def test_resume_command_is_the_same_command_line_less_force():
    assert resume_command(["run", "r.yaml", "--force", "--out", "my out"]) == "sdbatch run r.yaml --out 'my out'"
    assert resume_command(["run", "--forc", "r.yaml", "--only", "a", "--f"]) == "sdbatch run r.yaml --only a"
    assert resume_command(["run", "r.yaml", "--set", "stages.a.prompt=a cat"]) == \
        "sdbatch run r.yaml --set 'stages.a.prompt=a cat'"


def test_paths_are_shown_relative_inside_the_current_directory_else_absolute(tmp_path, monkeypatch):
    (tmp_path / "here" / "outputs" / "x").mkdir(parents=True)
    (tmp_path / "there").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    assert shown_path(Path("outputs/x/index.html")) == "outputs/x/index.html"
    assert shown_path(tmp_path / "here" / "outputs" / "x" / "index.html") == "outputs/x/index.html"
    assert shown_path(tmp_path / "there" / "index.html") == str(tmp_path / "there" / "index.html")
    assert shown_path(Path("../there/index.html")) == str(tmp_path / "there" / "index.html")


def test_failures_show_their_first_error_line_and_signals_are_named(tmp_path):
    stats = {"a": StageStats(jobs=30, rendered=5, failed=25)}
    failures = [("a", f"a/{i}.png", f"ValueError: bad {i}\n  at line 2") for i in range(25)]
    outcome = RunOutcome(1, stats, failures, seconds=75.0, roles={"image": 5})
    lines = summary_lines(outcome, tmp_path, "sdbatch run r.yaml")
    assert lines[0] == "finished in 1:15: 5 images rendered, 15.0 s/image; 25 failed, 0 skipped"
    assert lines[1:21] == [f"failed: a/{i}.png: ValueError: bad {i}" for i in range(20)]
    assert lines[21] == "... and 5 more failed (see manifest.jsonl)"
    assert lines[22:] == ["resume: sdbatch run r.yaml"]  # no gallery line: there is no index.html
    (tmp_path / "index.html").write_text("<html></html>")
    stopped = RunOutcome(143, {"v": StageStats(jobs=2, rendered=1)}, [], interrupted=True, seconds=3.0,
                         roles={"frame": 7, "video": 1}, signal="SIGTERM")
    assert summary_lines(stopped, tmp_path, None) == [
        "terminated (SIGTERM) after 3.0s: 0 images, 7 frames rendered (1 video), 0.43 s/image",
        f"gallery: {tmp_path / 'index.html'}"]
