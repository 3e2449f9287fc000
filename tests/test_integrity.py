"""Outputs stay true (issue 9): the manifest is a regular file of the output folder, a missing or changed output
is noticed and rendered again (a changed one kept), ``verify`` checks every hash, a changed input is hashed
again, a full disk ends a run cleanly, and a bad ``--out`` is one line, exit 2."""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import pytest
from conftest import manifest_records, png_pixels, run_cli
from PIL import Image

from sdbatch.io.hashing import sha256_file

RECIPE = """\
name: integrity
model: sdbatch/tiny-sd
defaults: {{steps: 2, width: 32, height: 32}}
stages:
  - {{name: sketch, type: generate, prompt: a lighthouse, seeds: {seeds}}}
"""


def write_recipe(folder: Path, seeds: str = "[1, 2, 3]") -> Path:
    recipe = folder / "recipe.yaml"
    recipe.write_text(RECIPE.format(seeds=seeds))
    return recipe


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("integrity")
    recipe = write_recipe(folder)
    out = folder / "out"
    result = run_cli("run", recipe, "--rehearse", "--out", out)
    assert result.returncode == 0, result.stderr
    return recipe, out


@pytest.fixture
def copy(rendered, tmp_path) -> tuple[Path, Path]:
    """A copy of the rendered folder (mtimes kept, so every output is still as recorded)."""
    recipe, out = rendered
    target = tmp_path / "out"
    shutil.copytree(out, target)
    return recipe, target


def outputs(out: Path) -> list[dict]:
    return manifest_records(out, "output")


def newest(out: Path, rel: str) -> dict:
    return [r for r in outputs(out) if r["path"] == rel][-1]


def plan_status(recipe: Path, out: Path) -> dict[str, tuple[str, str | None]]:
    result = run_cli("plan", recipe, "--rehearse", "--out", out, "--json")
    assert result.returncode == 0, result.stderr
    return {j["output"]: (j["status"], j.get("reason")) for j in json.loads(result.stdout)["jobs"]}


def one_error_line(result) -> str:
    err = result.stderr.strip()
    assert "Traceback" not in err and "\n" not in err, err
    assert err.startswith("error: "), err
    return err


# ------------------------------------------------------------------------------------------ item 3
@pytest.mark.parametrize("kind", ["symlink", "folder", "fifo", "hardlink"])
def test_a_manifest_that_is_not_a_regular_file_of_the_folder_is_refused(copy, tmp_path, kind):
    recipe, out = copy
    manifest = out / "manifest.jsonl"
    outside = tmp_path / "elsewhere.jsonl"
    outside.write_text('{"kind": "run", "event": "start"}\n{"kind": "run", "eve')  # a torn tail to cut
    before = outside.read_bytes()
    manifest.unlink()
    if kind == "symlink":
        manifest.symlink_to(outside)
    elif kind == "folder":
        manifest.mkdir()
    elif kind == "fifo":
        os.mkfifo(manifest)
    else:
        os.link(outside, manifest)
    result = run_cli("run", recipe, "--rehearse", "--out", out, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "manifest.jsonl" in one_error_line(result)
    assert outside.read_bytes() == before, "the file behind the manifest's name was written"
    if kind != "hardlink":  # reading a hard-linked manifest is harmless; writing it is not
        plan = run_cli("plan", recipe, "--rehearse", "--out", out, timeout=120)
        assert plan.returncode == 2 and "manifest.jsonl" in one_error_line(plan)


def test_a_torn_tail_longer_than_64_kib_is_cut_and_only_it(copy):
    recipe, out = copy
    manifest = out / "manifest.jsonl"
    whole = manifest.read_bytes()
    torn = b'{"kind": "output", "job_id": "' + b"x" * 150_000  # a crash mid-append: no newline
    manifest.write_bytes(whole + torn)
    result = run_cli("run", recipe, "--rehearse", "--out", out)
    assert result.returncode == 0, result.stderr
    after = manifest.read_bytes()
    assert after.startswith(whole) and torn not in after
    assert all(json.loads(line) for line in after.decode().splitlines())
    assert manifest_records(out, "run")[-1]["rendered"] == 0


# ------------------------------------------------------------------------------------------ item 9
def test_a_missing_output_is_pending_and_its_render_is_recorded(copy):
    recipe, out = copy
    rel = outputs(out)[0]["path"]
    (out / rel).unlink()
    status = plan_status(recipe, out)
    assert status[rel] == ("pending", "missing")
    assert sum(s == "done" for s, _ in status.values()) == 2
    result = run_cli("run", recipe, "--rehearse", "--out", out)
    assert result.returncode == 0, result.stderr
    assert manifest_records(out, "run")[-1]["rendered"] == 1
    record = newest(out, rel)
    assert record["sha256"] == sha256_file(out / rel), "the manifest keeps a stale sha256"
    assert record["size"] == (out / rel).stat().st_size and record["mtime_ns"] == (out / rel).stat().st_mtime_ns
    assert {s for s, _ in plan_status(recipe, out).values()} == {"done"}


# ----------------------------------------------------------------------------------------- item 10
def test_a_changed_output_is_rendered_again_and_the_users_file_kept(copy):
    recipe, out = copy
    first, second = outputs(out)[0]["path"], outputs(out)[1]["path"]
    original = png_pixels(out / first)
    Image.new("RGB", (32, 32), (250, 0, 0)).save(out / first)  # the user painted over it
    edited = (out / first).read_bytes()
    st = (out / second).stat()
    # only its mtime moved (touched, or a folder copied without keeping times): hashed, the same: still done
    os.utime(out / second, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    status = plan_status(recipe, out)
    assert status[first] == ("pending", "changed") and status[second] == ("done", None)
    result = run_cli("run", recipe, "--rehearse", "--out", out)
    assert result.returncode == 0, result.stderr
    assert manifest_records(out, "run")[-1]["rendered"] == 1
    kept = sorted((out / first).parent.glob(Path(first).stem + ".edited-*.png"))
    assert len(kept) == 1 and kept[0].read_bytes() == edited, "the user's file must be kept, never overwritten"
    stamp = kept[0].name.split(".edited-")[1].removesuffix(".png")
    assert len(stamp) == 15 and stamp[8] == "T" and stamp.replace("T", "").isdigit()
    assert (png_pixels(out / first) == original).all()  # the same job renders the same pixels
    assert newest(out, first)["sha256"] == sha256_file(out / first)
    assert {s for s, _ in plan_status(recipe, out).values()} == {"done"}


def test_verify_hashes_every_output_and_names_each_difference(copy, tmp_path):
    recipe, out = copy
    ok = run_cli("verify", "--out", out)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "3 recorded output(s)" in ok.stdout and "all match" in ok.stdout
    gone, changed = outputs(out)[0]["path"], outputs(out)[1]["path"]
    (out / gone).unlink()
    data = bytearray((out / changed).read_bytes())
    data[-20] ^= 0xFF  # same size: only a hash tells
    st = (out / changed).stat()
    (out / changed).write_bytes(bytes(data))
    os.utime(out / changed, ns=(st.st_atime_ns, st.st_mtime_ns))  # and the same mtime
    bad = run_cli("verify", recipe, "--out", out)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    lines = bad.stdout.splitlines()
    assert any(line.startswith("missing") and gone in line for line in lines), bad.stdout
    assert any(line.startswith("changed") and changed in line for line in lines), bad.stdout
    assert "1 missing, 1 changed" in lines[-1]
    usage = run_cli("verify")
    assert usage.returncode == 2 and "Traceback" not in usage.stderr
    nothing = run_cli("verify", "--out", tmp_path / "no-such-folder")
    assert nothing.returncode == 2 and one_error_line(nothing)


# ----------------------------------------------------------------------------------------- item 12
def test_an_input_changed_with_its_size_and_mtime_restored_is_hashed_again(tmp_path):
    source = tmp_path / "in.png"
    Image.new("RGB", (32, 32), (10, 120, 200)).save(source, compress_level=0)  # stored: the size is the pixels'
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("""\
model: sdbatch/tiny-sd
defaults: {steps: 2, width: 32, height: 32}
stages:
  - {name: paint, type: img2img, input: in.png, prompt: watercolor, strength: 1.0, seed: 4}
""")
    out = tmp_path / "out"
    assert run_cli("run", recipe, "--rehearse", "--out", out).returncode == 0
    st = source.stat()
    Image.new("RGB", (32, 32), (200, 30, 30)).save(source, compress_level=0)
    os.utime(source, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert source.stat().st_size == st.st_size and source.stat().st_mtime_ns == st.st_mtime_ns
    assert {s for s, _ in plan_status(recipe, out).values()} == {"pending"}
    result = run_cli("run", recipe, "--rehearse", "--out", out)
    assert result.returncode == 0, result.stderr
    end = manifest_records(out, "run")[-1]
    assert end["rendered"] == 1 and end["failed"] == 0
    assert outputs(out)[-1]["inputs"][0]["sha256"] == sha256_file(source)


# ----------------------------------------------------------------------------------------- item 14
def run_in_process(*args: object) -> int:
    from sdbatch.cli import main

    return main([str(a) for a in args])


def test_a_manifest_write_that_fails_for_a_full_disk_stops_the_run_at_once(tmp_path, monkeypatch, capsys):
    from sdbatch.io import manifest as manifest_module

    recipe = write_recipe(tmp_path, "[1, 2, 3, 4, 5, 6]")
    out = tmp_path / "out"
    real = manifest_module._write_all
    calls = []

    def disk_fills(fd: int, data: bytes) -> None:
        calls.append(data)
        if len(calls) == 3:  # the start record, one output, then the disk is full mid-line
            real(fd, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd, data)

    monkeypatch.setattr(manifest_module, "_write_all", disk_fills)
    code = run_in_process("run", recipe, "--rehearse", "--out", out)
    err = capsys.readouterr().err
    assert code == 1, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert errors == [f"error: no space left writing {out / 'manifest.jsonl'}"], err
    assert "Traceback" not in err
    text = (out / "manifest.jsonl").read_text()
    assert text.endswith("\n") and all(json.loads(line) for line in text.splitlines()), "half a line recorded"
    assert [r["event"] for r in manifest_records(out, "run")] == ["start"]
    assert len(outputs(out)) == 1 and len(calls) == 3, "the run went on writing after the manifest failed"


def test_outputs_that_keep_failing_for_a_full_disk_stop_the_run(tmp_path, monkeypatch, capsys):
    from sdbatch.io import artifacts

    recipe = write_recipe(tmp_path, "{start: 0, count: 12}")
    out = tmp_path / "out"
    real = artifacts.atomic_write

    def full(path, write):
        if Path(path).suffix == ".png":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, write)

    monkeypatch.setattr(artifacts, "atomic_write", full)
    code = run_in_process("run", recipe, "--rehearse", "--out", out)
    err = capsys.readouterr().err
    assert code == 1, err
    assert "Traceback" not in err and any(line.startswith("error: no space left") for line in err.splitlines())
    failed = manifest_records(out, "failed")
    # three in a row stop it; a batch already rendering when the third failed may still fail too
    assert 3 <= len(failed) <= 4, "the run must stop after a few failures in a row, not fail every job"
    end = manifest_records(out, "run")[-1]
    assert end["event"] == "end" and end["exit_code"] == 1 and "no space" in end["error"]
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]


# ----------------------------------------------------------------------------------------- item 16
def test_an_out_that_is_a_file_or_under_a_file_is_one_line_exit_2(tmp_path):
    recipe = write_recipe(tmp_path)
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    for out in (afile, afile / "sub" / "out"):
        result = run_cli("run", recipe, "--rehearse", "--out", out, timeout=120)
        assert result.returncode == 2, result.stderr
        assert str(afile) in one_error_line(result)
    assert afile.read_text() == "not a folder"


def test_a_read_only_out_or_parent_is_one_line_exit_2(tmp_path):
    recipe = write_recipe(tmp_path)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running as root: permission bits do not stop writes")
        for out in (locked, locked / "new"):
            result = run_cli("run", recipe, "--rehearse", "--out", out, timeout=120)
            assert result.returncode == 2, result.stderr
            assert "not writable" in one_error_line(result)
    finally:
        locked.chmod(0o755)
