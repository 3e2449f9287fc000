"""Tests for sdbatch.animation.color (Deforum maintain_colors, add_noise, contrast)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from skimage.exposure import match_histograms

from sdbatch.animation.color import add_noise, adjust_contrast, match_colors


def _image(height: int = 32, width: int = 40, seed: int = 0, low: int = 0, high: int = 256) -> np.ndarray:
    return np.random.default_rng(seed).integers(low, high, (height, width, 3), dtype=np.uint8)


def _gradient(height: int = 32, width: int = 40) -> np.ndarray:
    ramp = np.linspace(0, 255, width)[None, :].repeat(height, 0)
    return np.rint(np.stack([ramp, ramp[:, ::-1], np.full_like(ramp, 128)], axis=-1)).astype(np.uint8)


# ---------------------------------------------------------------------------
# match_colors
# ---------------------------------------------------------------------------


def test_none_mode_returns_an_equal_copy() -> None:
    image = _image()
    out = match_colors(image, _image(seed=1), "none")
    np.testing.assert_array_equal(out, image)
    assert out is not image


def test_rgb_mode_is_per_channel_histogram_matching() -> None:
    image, reference = _gradient(), _image(seed=2, low=50, high=120)
    out = match_colors(image, reference, "rgb")
    assert out.dtype == np.uint8 and out.shape == image.shape
    np.testing.assert_array_equal(out, match_histograms(image, reference, channel_axis=-1))
    # the matched channels take the reference's value range
    assert out.min() >= 50 and out.max() <= 119


@pytest.mark.parametrize(("mode", "to_space", "from_space"), [
    ("lab", cv2.COLOR_RGB2LAB, cv2.COLOR_LAB2RGB),
    ("hsv", cv2.COLOR_RGB2HSV, cv2.COLOR_HSV2RGB),
])
def test_lab_and_hsv_modes_follow_deforum_maintain_colors(mode: str, to_space: int, from_space: int) -> None:
    image, reference = _image(seed=3), _image(seed=4, low=0, high=90)
    expected = cv2.cvtColor(
        match_histograms(cv2.cvtColor(image, to_space), cv2.cvtColor(reference, to_space), channel_axis=-1),
        from_space,
    )
    out = match_colors(image, reference, mode)  # type: ignore[arg-type]
    assert out.dtype == np.uint8 and out.shape == image.shape
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("mode", ["rgb", "hsv", "lab", "LAB", "Rgb"])
def test_dark_image_takes_the_brightness_of_a_bright_reference(mode: str) -> None:
    dark = _image(seed=5, low=0, high=60)
    bright = _image(48, 24, seed=6, low=150, high=250)  # different size is fine
    out = match_colors(dark, bright, mode)  # type: ignore[arg-type]
    assert abs(float(out.mean()) - float(bright.mean())) < 15
    assert out.shape == dark.shape


def test_matching_an_image_to_itself_is_identity_in_rgb() -> None:
    image = _image(seed=7)
    np.testing.assert_array_equal(match_colors(image, image, "rgb"), image)


def test_inputs_are_not_modified() -> None:
    image, reference = _image(seed=8), _image(seed=9)
    copies = image.copy(), reference.copy()
    for mode in ("rgb", "hsv", "lab"):
        match_colors(image, reference, mode)  # type: ignore[arg-type]
    np.testing.assert_array_equal(image, copies[0])
    np.testing.assert_array_equal(reference, copies[1])


@pytest.mark.parametrize("mode", ["xyz", "", None, "Match Frame 0 LAB"])
def test_bad_mode(mode: object) -> None:
    with pytest.raises((ValueError, TypeError), match="mode must be one of"):
        match_colors(_image(), _image(), mode)  # type: ignore[arg-type]


def test_bad_images() -> None:
    with pytest.raises(ValueError, match="reference must have dtype uint8"):
        match_colors(_image(), _image().astype(np.float32), "rgb")
    with pytest.raises(ValueError, match=r"image must have shape \(H, W, 3\)"):
        match_colors(_image()[..., 0], _image(), "rgb")


# ---------------------------------------------------------------------------
# add_noise
# ---------------------------------------------------------------------------


def test_add_noise_is_reproducible_and_seed_dependent() -> None:
    image = _image(seed=10)
    a = add_noise(image, 0.2, seed=42)
    b = add_noise(image, 0.2, seed=42)
    c = add_noise(image, 0.2, seed=43)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a.dtype == np.uint8 and a.shape == image.shape


def test_add_noise_ignores_and_keeps_global_numpy_state() -> None:
    image = _image(seed=11)
    np.random.seed(1)
    first = add_noise(image, 0.3, seed=5)
    state = np.random.get_state()
    np.random.seed(999)
    second = add_noise(image, 0.3, seed=5)
    np.testing.assert_array_equal(first, second)
    np.random.seed(1)
    add_noise(image, 0.3, seed=5)
    after = np.random.get_state()
    assert np.array_equal(state[1], after[1]) and state[2] == after[2]


def test_zero_amount_is_identity() -> None:
    image = _image(seed=12)
    np.testing.assert_array_equal(add_noise(image, 0.0, seed=3), image)


def test_full_amount_is_deforums_noise_picture() -> None:
    # Deforum: noise picture = clip(0.5 * n + 0.5, 0, 1) * 255 with n ~ N(0, 1)
    noise = add_noise(np.zeros((200, 200, 3), np.uint8), 1.0, seed=0)
    saturated = (noise == 255).mean()  # P(n > 1)
    black = (noise == 0).mean()  # P(n < -1)
    assert saturated == pytest.approx(0.1587, abs=0.01)
    assert black == pytest.approx(0.1587, abs=0.01)
    assert float(noise.mean()) == pytest.approx(127.0, abs=2.0)


def test_noise_is_blended_linearly() -> None:
    image = _image(seed=13)
    noise = add_noise(image, 1.0, seed=9).astype(np.float64)
    out = add_noise(image, 0.3, seed=9).astype(np.float64)
    np.testing.assert_allclose(out, 0.7 * image + 0.3 * noise, atol=1.0)


@pytest.mark.parametrize(("amount", "seed"), [(-0.1, 0), (1.5, 0), (float("nan"), 0), (0.1, -1), (0.1, 1.5), (0.1, True)])
def test_add_noise_bad_arguments(amount: float, seed: object) -> None:
    with pytest.raises((ValueError, TypeError)):
        add_noise(_image(), amount, seed)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------
# adjust_contrast
# ---------------------------------------------------------------------------


def test_adjust_contrast_exact_values() -> None:
    image = np.array([[[0, 1, 3], [5, 100, 200], [254, 255, 128]]], np.uint8)
    out = adjust_contrast(image, 0.5)
    # Deforum: (img * contrast).round() -- numpy rounds halves to even: 0.5 -> 0, 1.5 -> 2, 2.5 -> 2
    np.testing.assert_array_equal(out, [[[0, 0, 2], [2, 50, 100], [127, 128, 64]]])
    np.testing.assert_array_equal(adjust_contrast(image, 1.0), image)
    np.testing.assert_array_equal(adjust_contrast(image, 0.0), np.zeros_like(image))


def test_adjust_contrast_saturates_instead_of_wrapping() -> None:
    image = np.array([[[100, 200, 250]]], np.uint8)
    np.testing.assert_array_equal(adjust_contrast(image, 1.3), [[[130, 255, 255]]])


def test_adjust_contrast_bad_arguments() -> None:
    with pytest.raises(ValueError):
        adjust_contrast(_image(), -0.1)
    with pytest.raises(TypeError):
        adjust_contrast(_image(), "1")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        adjust_contrast(_image().astype(np.int16), 1.0)
