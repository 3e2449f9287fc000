"""Masks mean what they show (issue 9, item 18): a 16-bit mask is scaled, not clipped (a near-black 16-bit
mask repaints nothing), and a mask with a non-opaque alpha channel is its alpha (opaque = repaint)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import manifest_records, png_pixels, run_cli
from PIL import Image, ImageDraw

from sdbatch.config.images import to_mode

SIZE = 64


def ellipse(value_in: int, value_out: int, dtype=np.uint8) -> np.ndarray:
    mask = Image.new("L", (SIZE, SIZE), 0)
    ImageDraw.Draw(mask).ellipse((16, 8, 48, 40), fill=255)
    inside = np.asarray(mask) >= 128
    return np.where(inside, value_in, value_out).astype(dtype)


def test_sixteen_bit_masks_are_scaled_not_clipped():
    dark = Image.fromarray(np.full((4, 4), 1000, np.uint16))  # 1000 / 65535: nearly black
    assert dark.mode == "I;16"
    assert np.asarray(to_mode(dark, "mask")).max() == 4  # old: convert("L") clipped it to 255
    grey = Image.fromarray(np.array([[0, 32896, 65535]], np.uint16))
    assert np.asarray(to_mode(grey, "mask")).tolist() == [[0, 128, 255]]
    wide = Image.fromarray(np.array([[0, 65535]], np.int32))  # mode "I": 16-bit range too
    assert np.asarray(to_mode(wide, "mask")).tolist() == [[0, 255]]
    assert np.asarray(to_mode(grey, "RGB"))[0, 2].tolist() == [255, 255, 255]  # inputs too


def test_alpha_is_the_mask_when_not_opaque():
    rgba = Image.new("RGBA", (4, 4), (255, 255, 255, 0))  # white everywhere, transparent but one pixel
    rgba.putpixel((1, 1), (255, 255, 255, 255))
    mask = np.asarray(to_mode(rgba, "mask"))
    assert mask[1, 1] == 255 and mask.sum() == 255
    opaque = Image.new("RGBA", (4, 4), (0, 0, 0, 255))  # fully opaque: its grey is the mask
    assert np.asarray(to_mode(opaque, "mask")).max() == 0
    la = Image.new("LA", (2, 1), (255, 0))
    la.putpixel((0, 0), (255, 255))
    assert np.asarray(to_mode(la, "mask")).tolist() == [[255, 0]]


@pytest.fixture(scope="module")
def masked_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("masks")
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)).save(folder / "scene.png")
    Image.fromarray(np.full((SIZE, SIZE), 1000, np.uint16)).save(folder / "dark16.png")
    Image.fromarray(ellipse(65535, 1000, np.uint16)).save(folder / "ellipse16.png")
    alpha = np.zeros((SIZE, SIZE, 4), np.uint8)
    alpha[..., :3] = 255  # white everywhere: only the alpha says where
    alpha[..., 3] = ellipse(255, 0)
    Image.fromarray(alpha, "RGBA").save(folder / "alpha.png")
    stages = "".join(f"  - {{name: {name}, type: inpaint, input: scene.png, mask: {name}.png, prompt: a moon, "
                     "strength: 1.0, seed: 4}\n" for name in ("dark16", "ellipse16", "alpha"))
    (folder / "r.yaml").write_text("model: sdbatch/tiny-sd\ndefaults: {steps: 2}\nstages:\n" + stages)
    out = folder / "out"
    result = run_cli("run", folder / "r.yaml", "--rehearse", "--out", out)
    assert result.returncode == 0, result.stderr
    return folder, out


def output_of(out: Path, stage: str) -> np.ndarray:
    record = next(r for r in manifest_records(out, "output") if r["stage"] == stage)
    return png_pixels(out / record["path"])


def test_a_near_black_sixteen_bit_mask_repaints_nothing(masked_run):
    folder, out = masked_run
    assert np.array_equal(output_of(out, "dark16"), png_pixels(folder / "scene.png"))


@pytest.mark.parametrize("stage", ["ellipse16", "alpha"])
def test_only_the_masked_area_is_repainted(masked_run, stage):
    folder, out = masked_run
    inside = ellipse(1, 0).astype(bool)
    before, after = png_pixels(folder / "scene.png"), output_of(out, stage)
    assert np.array_equal(before[~inside], after[~inside]), "pixels outside the mask changed"
    assert np.abs(before[inside] - after[inside]).mean() > 1, "the masked area did not change"
