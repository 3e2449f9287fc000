"""Input images are opened at validate (issue 9, item 8) and recursive globs never read the recipe's own outputs
(item 20). Through the CLI: every bad file is exit 2, one line ``file:line: field: file: message``."""

from __future__ import annotations

import json
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli
from PIL import Image

from sdbatch.config import limits

HEAD = "model: sdbatch/tiny-sd\ndefaults: {steps: 2}\n"


def png_header_only(path: Path, width: int, height: int) -> None:
    """A valid PNG claiming ``width`` x ``height`` pixels, a few bytes long."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16))
                     + chunk(b"IEND", b""))


def make(folder: Path, name: str) -> Path:
    """A test file: a good image, or one of the bad kinds."""
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    name = path.name
    if name.startswith("bomb"):  # over PIL's warning limit: 100 MP of a 1-bit image, a few KB
        Image.new("1", (10_000, 10_000)).save(path)
    elif name.startswith("huge"):  # over twice the limit: PIL's error
        png_header_only(path, 100_000, 100_000)
    elif name.startswith("text"):
        path.write_text("not an image\n")
    elif name.startswith("trunc"):
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (128, 128, 3), dtype=np.uint8)).save(path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif name.startswith("anim"):
        frames = [Image.new("RGB", (32, 32), color) for color in ((255, 0, 0), (0, 255, 0))]
        frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    elif name.startswith("wide"):
        Image.new("RGB", (20_000, 8)).save(path)
    elif name.startswith("tiny"):
        Image.new("RGB", (4, 4)).save(path)
    else:
        Image.new("RGB", (64, 48), (200, 120, 40)).save(path)
    return path


def cli(folder: Path, text: str, *args: str, command: str = "validate"):
    recipe = folder / "recipe.yaml"
    recipe.write_text(HEAD + text)
    start = time.perf_counter()
    result = run_cli(command, recipe, *args)
    return result, time.perf_counter() - start


def one_line(result, line: int, fragment: str) -> None:
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr and "Warning" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"recipe.yaml:{line}: " in lines[0] and fragment in lines[0], lines[0]


BAD = [
    ("bomb.png", f"bomb.png: 100,000,000 pixels is over the limit of {limits.MAX_IMAGE_PIXELS:,} pixels"),
    ("huge.png", "huge.png: 10,000,000,000 pixels is over the limit"),
    ("text.png", "text.png: not an image file"),
    ("trunc.png", "trunc.png: broken or truncated image"),
    ("anim.gif", "anim.gif: an animated image (GIF, several frames)"),
]


@pytest.mark.parametrize("name,fragment", BAD, ids=[b[0] for b in BAD])
@pytest.mark.parametrize("command", ["validate", "run"])
def test_a_bad_input_image_is_refused_naming_the_file(tmp_path, name, fragment, command):
    make(tmp_path, name)
    args = ("--rehearse", "--out", str(tmp_path / "out")) if command == "run" else ()
    result, seconds = cli(tmp_path, f"stages:\n  - name: a\n    type: img2img\n    input: {name}\n    prompt: x\n",
                          *args, command=command)
    one_line(result, 6, f"stages[0].input: {fragment}")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name,fragment", BAD, ids=[b[0] for b in BAD])
def test_a_bad_mask_is_refused_naming_the_file(tmp_path, name, fragment):
    make(tmp_path, "in.png")
    make(tmp_path, f"masks/{name}")
    result, _ = cli(tmp_path, f"stages:\n  - {{name: a, type: inpaint, input: in.png, prompt: x, mask: masks/{name}}}\n")
    one_line(result, 4, f"stages[0].mask: masks/{fragment}")


def test_a_bad_animation_init_is_refused(tmp_path):
    make(tmp_path, "huge.png")
    result, _ = cli(tmp_path, "stages:\n  - {name: a, type: animate, prompt: x, frames: 3, init: huge.png}\n")
    one_line(result, 4, "stages[0].init: huge.png: 10,000,000,000 pixels is over the limit")


def test_a_bad_file_in_a_folder_input_is_named(tmp_path):
    for name in ("photos/a.png", "photos/b.png", "photos/c-trunc.png"):
        make(tmp_path, name.replace("c-trunc", "trunc-c"))
    result, _ = cli(tmp_path, "stages:\n  - {name: a, type: img2img, input: photos, prompt: x}\n")
    one_line(result, 4, "stages[0].input: photos/trunc-c.png: broken or truncated image")


def test_sizes_taken_from_inputs_obey_the_explicit_limits(tmp_path):
    make(tmp_path, "wide.png")
    result, _ = cli(tmp_path, "stages:\n  - {name: a, type: img2img, input: wide.png, prompt: x}\n")
    one_line(result, 4, "stages[0].input: wide.png is 20000x8: the size taken from it, 20000x8, is outside "
                        "8..16384 px a side")
    make(tmp_path, "tiny.png")
    result, _ = cli(tmp_path, "stages:\n  - {name: a, type: img2img, input: tiny.png, prompt: x}\n")
    one_line(result, 4, "the size taken from it, 0x0, is outside 8..16384 px a side")
    # an explicit width makes the size from the aspect: 512 x 8 is fine
    result, _ = cli(tmp_path, "stages:\n  - {name: a, type: img2img, input: wide.png, prompt: x, width: 512}\n")
    assert result.returncode == 0, result.stderr


def test_validate_stays_fast_with_many_inputs(tmp_path):
    rng = np.random.default_rng(1)
    (tmp_path / "photos").mkdir()
    for i in range(200):
        Image.fromarray(rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)).save(tmp_path / "photos" / f"{i:03}.png")
    Image.fromarray(rng.integers(0, 255, (2048, 2048, 3), dtype=np.uint8)).save(tmp_path / "photos" / "big.jpg")
    result, seconds = cli(tmp_path, "stages:\n  - {name: a, type: img2img, input: photos, prompt: x}\n")
    assert result.returncode == 0, result.stderr
    assert "201 job(s)" in result.stdout
    assert seconds < 3.0, f"validate took {seconds:.2f} s"


# --------------------------------------------------------------------------------- item 20: outputs
def test_a_recursive_glob_never_reads_the_recipes_outputs(tmp_path):
    make(tmp_path, "photos/cat.png")
    make(tmp_path, "photos/deep/dog.png")
    make(tmp_path, "outputs/recipe/a/old-1-abcdef12.png")  # last night's outputs beside the recipe
    make(tmp_path, "renders/a/other-2-abcdef12.png")  # --out renders
    text = "stages:\n  - {name: a, type: img2img, input: '**/*.png', prompt: x}\n"
    result, _ = cli(tmp_path, text, "--json", "--out", str(tmp_path / "renders"), command="plan")
    assert result.returncode == 0, result.stderr
    inputs = sorted(job["inputs"][0]["path"] for job in json.loads(result.stdout)["jobs"])
    assert inputs == ["photos/cat.png", "photos/deep/dog.png"]
    result, _ = cli(tmp_path, text)  # validate: the default output folder
    assert result.returncode == 0 and "3 job(s)" in result.stdout, result.stdout  # renders/ is just a folder here


def test_a_glob_aimed_into_the_outputs_still_reads_them(tmp_path):
    make(tmp_path, "outputs/recipe/a/old-1-abcdef12.png")
    result, _ = cli(tmp_path, "stages:\n  - {name: a, type: img2img, input: 'outputs/recipe/**/*.png', prompt: x}\n",
                    "--json", command="plan")
    assert result.returncode == 0, result.stderr
    assert [job["inputs"][0]["path"] for job in json.loads(result.stdout)["jobs"]] == ["outputs/recipe/a/old-1-abcdef12.png"]


def test_a_recursive_mask_glob_never_reads_the_outputs(tmp_path):
    make(tmp_path, "photos/cat.png")
    make(tmp_path, "zz/cat.png")
    make(tmp_path, "outputs/recipe/a/cat.png")  # sorts first: it would be the mask
    text = "stages:\n  - {name: a, type: inpaint, input: photos, mask: '**/cat.png', prompt: x}\n"
    result, _ = cli(tmp_path, text, "--json", command="plan")
    assert result.returncode == 0, result.stderr
    assert [job["mask"]["path"] for job in json.loads(result.stdout)["jobs"]] == ["photos/cat.png"]
