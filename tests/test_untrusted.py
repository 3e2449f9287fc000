"""Untrusted files never steer a write (issue 9, items 1 and 2).

A PNG's metadata (its ``sdbatch`` chunk, its A1111 ``parameters`` chunk) and the lines of a manifest are input
from whoever made the file: ``reproduce`` and ``inspect`` refuse a path that is absolute, holds ``..`` or leads
out of its folder through a symlink, an oversized chunk, invalid JSON and fields of the wrong type (exit 2,
one line naming the field), and ``reproduce`` writes only under ``--out``; the gallery and its contact sheets
ignore a manifest line whose ``path`` or ``stage`` leads out of the output folder. Each case checks the file
system before and after: nothing outside the folder it may write changes.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import manifest_records, run_cli
from PIL import Image, ImageFile
from PIL.PngImagePlugin import PngInfo
from test_provenance import rendered_project

from sdbatch import cli
from sdbatch.io.artifacts import read_png_record
from sdbatch.reports.gallery import GALLERY_NAME, write_gallery


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return rendered_project(tmp_path_factory)


def first_output(out: Path, stage: str) -> dict:
    return next(r for r in manifest_records(out, "output") if r["stage"] == stage)


def tree(root: Path, skip: tuple[Path, ...] = ()) -> dict[str, tuple[int, int, str]]:
    """Every entry under ``root`` (symlinks not followed) -> (size, mtime_ns, kind), less ``skip``."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            if any(path == s or s in path.parents for s in skip):
                continue
            st = path.lstat()
            kind = "link" if path.is_symlink() else ("dir" if path.is_dir() else "file")
            out[path.relative_to(root).as_posix()] = (0 if kind == "dir" else st.st_size, st.st_mtime_ns, kind)
    return out


def pixels_of(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def hostile_png(path: Path, pixels: np.ndarray, sdbatch: str | dict | None, **chunks: str) -> Path:
    """A PNG with ``pixels`` and the given text chunks (``sdbatch``: a record, or raw chunk text)."""
    info = PngInfo()
    if sdbatch is not None:
        info.add_text("sdbatch", sdbatch if isinstance(sdbatch, str) else json.dumps(sdbatch))
    for key, value in chunks.items():
        info.add_text(key, value)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.astype(np.uint8)).save(path, pnginfo=info)
    return path


@pytest.fixture
def sketch(project: Path) -> tuple[dict, np.ndarray]:
    """The record a real generate output embeds, and its pixels."""
    path = project / "out" / first_output(project / "out", "sketch")["path"]
    return read_png_record(path), pixels_of(path)


@pytest.fixture
def fresh_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where ``reproduce`` makes its default folder: watched like the rest of tmp_path."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def one_error(err: str, file: Path, field: str) -> None:
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"error: {file}: metadata field '{field}': "), err


# --------------------------------------------------------------------------- item 1: paths steer no write
@pytest.mark.parametrize("where", ["absolute", "dotdot", "home"])
def test_reproduce_never_writes_at_a_path_from_the_metadata(where, sketch, tmp_path, fresh_temp, capsys):
    record, pixels = sketch
    victim = tmp_path / "victim.png"
    victim.write_bytes(b"precious")
    hostile_path = {"absolute": str(victim), "dotdot": "../../victim.png", "home": "~/victim.png"}[where]
    png = hostile_png(tmp_path / "a" / "b" / "gift.png", pixels, {**record, "path": hostile_path})
    again = tmp_path / "again"
    before = tree(tmp_path)
    for args in (["--out", str(again)], []):  # an explicit --out, and the default fresh folder
        assert cli.main(["reproduce", str(png), *args]) == 2
        captured = capsys.readouterr()
        one_error(captured.err, png, "path")
        assert "match" not in captured.out
    assert tree(tmp_path) == before, "nothing written, nothing overwritten"
    assert victim.read_bytes() == b"precious"

    assert cli.main(["inspect", str(png)]) == 0  # shown, marked untrusted, not followed
    shown = capsys.readouterr().out
    assert "untrusted:" in shown and "metadata field 'path'" in shown and "not followed" in shown
    assert tree(tmp_path) == before


def test_a_path_through_a_symlink_out_of_the_folder_is_not_followed(project, tmp_path, fresh_temp, capsys):
    """An output folder whose sub-folder is a symlink to elsewhere: a record there leads out of the folder."""
    folder = tmp_path / "copy"
    shutil.copytree(project, folder)
    outside = tmp_path / "outside"
    outside.mkdir()
    (folder / "out" / "link").symlink_to(outside, target_is_directory=True)
    record = first_output(folder / "out", "sketch")
    source = folder / "out" / record["path"]
    png = hostile_png(folder / "out" / "link" / "x.png", pixels_of(source),
                      {**read_png_record(source), "path": "link/x.png"})
    before = tree(tmp_path)
    assert cli.main(["reproduce", str(png), "--out", str(tmp_path / "again")]) == 2
    err = capsys.readouterr().err
    one_error(err, png, "path")
    assert "symlink" in err
    assert tree(tmp_path) == before


def test_reproduce_writes_only_inside_out_even_through_its_symlinks(project, tmp_path, fresh_temp, capsys):
    sketch = project / "out" / first_output(project / "out", "sketch")["path"]
    outside = tmp_path / "outside"
    outside.mkdir()
    again = tmp_path / "again"
    again.mkdir()
    (again / "sketch").symlink_to(outside, target_is_directory=True)  # --out/<stage> leads elsewhere
    before = tree(tmp_path)
    assert cli.main(["reproduce", str(sketch), "--out", str(again)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "leads out of it through a symlink" in err
    assert tree(tmp_path) == before and not any(outside.iterdir())


def test_reproduce_by_default_writes_a_fresh_folder_it_names(project, tmp_path, fresh_temp, capsys):
    sketch = project / "out" / first_output(project / "out", "sketch")["path"]
    before = tree(project)
    assert cli.main(["reproduce", str(sketch)]) == 0
    line = capsys.readouterr().out.splitlines()[0]
    assert line.startswith("match (re-rendered: ")
    written = Path(line.removeprefix("match (re-rendered: ").removesuffix(")"))
    assert written.is_file()
    rel = written.relative_to(fresh_temp)  # <temp>/sdbatch-reproduce-XXXX/<the output's own path>
    assert rel.parts[0].startswith("sdbatch-reproduce-")
    assert Path(*rel.parts[1:]) == sketch.relative_to(project / "out")
    assert tree(project) == before


@pytest.mark.parametrize(("field", "change"), [
    ("inputs[0].path", {"type": "img2img", "inputs": [{"path": "/etc/hostname", "sha256": "0" * 64}]}),
    ("inputs[0].path", {"type": "img2img", "inputs": [{"path": "../../etc/hostname", "sha256": "0" * 64}]}),
    ("model.id", {"model": {"id": "/etc/hostname", "revision": "0" * 64, "source": "file"}}),
    ("model.id", {"model": {"id": "../../../x", "revision": "0" * 40, "source": "hub"}}),
    ("model.revision", {"model": {"id": "org/name", "revision": "../../../x", "source": "hub"}}),
    ("params.loras[0].path", {"params": {"loras": [{"path": "/etc/hostname", "sha256": "0" * 64, "weight": 1.0}]}}),
    ("params.vae", {"params": {"vae": "file:/etc/hostname@" + "0" * 64}}),
    ("params.pipeline_config", {"params": {"pipeline_config": "../../configs"}}),
    ("stage", {"stage": "../../up"}),
])
def test_every_path_in_the_metadata_must_be_relative_and_inside(field, change, sketch, tmp_path, fresh_temp,
                                                                capsys):
    record, pixels = sketch
    hostile = {**record, **change}
    if "params" in change:
        hostile["params"] = {**record["params"], **change["params"]}
    png = hostile_png(tmp_path / "gift.png", pixels, hostile)
    before = tree(tmp_path)
    assert cli.main(["reproduce", str(png), "--out", str(tmp_path / "again")]) == 2
    one_error(capsys.readouterr().err, png, field)
    assert cli.main(["inspect", str(png)]) == 0
    assert f"untrusted: metadata field '{field}'" in " ".join(capsys.readouterr().out.split())
    assert tree(tmp_path) == before


def test_an_input_behind_a_symlink_out_of_the_recipe_folder_is_not_read(project, tmp_path, fresh_temp, capsys):
    folder = tmp_path / "copy"
    shutil.copytree(project, folder)
    shutil.move(folder / "masks", tmp_path / "elsewhere")
    (folder / "masks").symlink_to(tmp_path / "elsewhere", target_is_directory=True)  # same file, outside
    moon = folder / "out" / first_output(folder / "out", "moon")["path"]
    before = tree(tmp_path)
    assert cli.main(["reproduce", str(moon), "--out", str(tmp_path / "again")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "masks/moon.png leads out of" in err and "symlink" in err
    assert tree(tmp_path) == before


# ---------------------------------------------------------------------- item 1: size, JSON and types
def _zipped_text_png(path: Path, pixels: np.ndarray, key: str, text: str) -> Path:
    info = PngInfo()
    info.add_text(key, text, zip=True)  # zTXt: small on disk, large once inflated
    Image.fromarray(pixels.astype(np.uint8)).save(path, pnginfo=info)
    assert path.stat().st_size < len(text) // 100
    return path


@pytest.mark.parametrize("load_truncated", [False, True])
def test_an_oversized_chunk_is_refused_before_it_is_parsed(load_truncated, sketch, tmp_path, fresh_temp, capsys,
                                                           monkeypatch):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", load_truncated)
    record, pixels = sketch
    big = {**record, "prompt": "x" * (5 << 20)}  # a 5 MiB chunk, valid JSON
    cases = [("sdbatch", hostile_png(tmp_path / "big.png", pixels, big)),
             ("parameters", hostile_png(tmp_path / "a1111.png", pixels, record, parameters="y" * (5 << 20))),
             ("sdbatch", _zipped_text_png(tmp_path / "bomb.png", pixels, "sdbatch", json.dumps(big)))]
    before = tree(tmp_path)
    for field, png in cases:
        for command in ("reproduce", "inspect"):
            started = time.monotonic()
            assert cli.main([command, str(png)]) == 2, (command, png)
            err = capsys.readouterr().err
            one_error(err, png, field)
            assert "1,048,576-byte limit" in err
            assert time.monotonic() - started < 2
    assert tree(tmp_path) == before


DEEP = '{"kind": "output", "x": ' + "[" * 100_000 + "]" * 100_000 + "}"


@pytest.mark.parametrize(("field", "text"), [
    ("seed", {"seed": "abc"}),
    ("inputs", {"inputs": {"path": 1}}),
    ("inputs[0].path", {"inputs": [{"path": 1}]}),
    ("prompt", {"prompt": ["a", "list"]}),
    ("model", {"model": "sdbatch/tiny-sd"}),
    ("kind", {"kind": "failed"}),
    ("prompt", {"prompt": "\ud800 a lone surrogate"}),
    ("sdbatch", "{not json"),
    ("sdbatch", '["a", "list"]'),
    ("sdbatch", DEEP),
])
def test_metadata_of_the_wrong_shape_exits_2_naming_the_field(field, text, sketch, tmp_path, fresh_temp, capsys):
    record, pixels = sketch
    chunk = text if isinstance(text, str) else json.dumps({**record, **text})
    png = hostile_png(tmp_path / "gift.png", pixels, chunk)
    before = tree(tmp_path)
    for command in ("reproduce", "inspect"):
        assert cli.main([command, str(png)]) == 2, command
        one_error(capsys.readouterr().err, png, field)
    assert tree(tmp_path) == before


@pytest.mark.parametrize(("field", "params"), [("params.steps", {"steps": "many"}),
                                               ("params.width", {"width": -64}),
                                               ("params.loras[0].sha256", {"loras": [{"path": "a.safetensors"}]})])
def test_params_of_the_wrong_type_exit_2_naming_the_field(field, params, sketch, tmp_path, fresh_temp, capsys):
    record, pixels = sketch
    png = hostile_png(tmp_path / "gift.png", pixels, {**record, "params": {**record["params"], **params}})
    assert cli.main(["reproduce", str(png), "--out", str(tmp_path / "again")]) == 2
    one_error(capsys.readouterr().err, png, field)
    assert not (tmp_path / "again").exists()


def test_a_corrupt_or_doubled_chunk_is_refused(sketch, tmp_path, capsys):
    record, pixels = sketch
    png = hostile_png(tmp_path / "twice.png", pixels, record)
    data = png.read_bytes()
    chunk_at = data.index(b"tEXtsdbatch") - 4
    length = int.from_bytes(data[chunk_at:chunk_at + 4], "big")
    chunk = data[chunk_at:chunk_at + 12 + length]
    png.write_bytes(data[:chunk_at] + chunk + chunk + data[chunk_at + len(chunk):])  # two sdbatch chunks
    assert cli.main(["inspect", str(png)]) == 2
    one_error(capsys.readouterr().err, png, "sdbatch")
    body = bytearray(data)
    body[chunk_at + 20] ^= 1  # one bit of the record: the CRC no longer matches
    png.write_bytes(bytes(body))
    assert zlib.crc32(bytes(body[chunk_at + 4:chunk_at + 8 + length])) != \
        int.from_bytes(body[chunk_at + 8 + length:chunk_at + 12 + length], "big")
    assert cli.main(["inspect", str(png)]) == 2
    one_error(capsys.readouterr().err, png, "sdbatch")


def test_inspect_escapes_control_characters_from_the_metadata(sketch, tmp_path, capsys):
    record, pixels = sketch
    png = hostile_png(tmp_path / "gift.png", pixels, {**record, "prompt": "calm\x1b[2J\nfake: line"})
    assert cli.main(["inspect", str(png)]) == 0
    shown = capsys.readouterr().out
    assert "\x1b" not in shown and "calm\\x1b[2J\\nfake: line" in shown
    assert not any(line.startswith("fake") for line in shown.splitlines())


# ------------------------------------------------------------------- item 2: the gallery stays inside
def test_the_gallery_ignores_manifest_lines_that_lead_out_of_the_folder(project, tmp_path, capsys):
    folder = tmp_path / "copy"
    shutil.copytree(project, folder)
    out = folder / "out"
    outside = tmp_path / "outside"
    outside.mkdir()
    sweep = [r for r in manifest_records(out, "output") if r["stage"] == "sweep"]
    shutil.copy(out / sweep[0]["path"], outside / "a.png")
    shutil.copy(out / sweep[1]["path"], outside / "b.png")
    (out / "link").symlink_to(outside, target_is_directory=True)
    (out / "sweeplink").symlink_to(outside, target_is_directory=True)

    def line(stage: str, path: str, seed: int) -> dict:
        return {**sweep[seed % 2], "job_id": f"{seed:064x}", "stage": stage, "path": path, "seed": seed}

    hostile = [line("sweep", str(outside / "a.png"), 1), line("sweep", "../../outside/b.png", 2),  # path
               line("link", "link/a.png", 3), line("link", "link/b.png", 4),  # a symlinked folder
               line("../../outside", sweep[0]["path"], 5), line("../../outside", sweep[1]["path"], 6),  # stage
               line(str(outside), sweep[0]["path"], 7), line(str(outside), sweep[1]["path"], 8),
               line("sweeplink", sweep[0]["path"], 9), line("sweeplink", sweep[1]["path"], 10)]
    with open(out / "manifest.jsonl", "a") as fh:
        fh.writelines(json.dumps(record) + "\n" for record in hostile)
    before = tree(tmp_path, skip=(out,))
    write_gallery(out)
    err = capsys.readouterr().err
    warnings = [x for x in err.splitlines() if "ignored" in x]
    assert len(warnings) == 1 and "10 output record(s) leading out of" in warnings[0], err
    assert tree(tmp_path, skip=(out,)) == before, "nothing written outside the output folder"
    assert sorted(p.name for p in outside.iterdir()) == ["a.png", "b.png"]
    page = (out / GALLERY_NAME).read_text(encoding="utf-8")
    assert "outside" not in page and "link/" not in page and "sweeplink" not in page
    assert (out / "sweep" / "grid.png").is_file()  # the real stages are still shown

    # `sdbatch run` writes the gallery at its end: a re-run (nothing to render) ignores the same lines
    (out / GALLERY_NAME).unlink()
    result = run_cli("run", "recipe.yaml", "--out", "out", cwd=folder)
    assert result.returncode == 0, result.stdout + result.stderr
    assert len([x for x in result.stderr.splitlines() if "leading out of" in x]) == 1, result.stderr
    assert (out / GALLERY_NAME).is_file()
    assert tree(tmp_path, skip=(out,)) == before
