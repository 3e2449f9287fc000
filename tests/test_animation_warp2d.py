"""Tests for sdbatch.animation.warp2d (Deforum's 2D warp)."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from sdbatch.animation.warp2d import matrix_2d, warp_2d


def _image(height: int = 24, width: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_identity_matrix() -> None:
    np.testing.assert_array_equal(matrix_2d(64, 48, angle=0, zoom=1, tx=0, ty=0), np.eye(3))


def test_pure_translation_matrix() -> None:
    expected = np.array([[1.0, 0.0, 3.5], [0.0, 1.0, -2.0], [0.0, 0.0, 1.0]])
    np.testing.assert_allclose(matrix_2d(100, 80, 0, 1, 3.5, -2), expected, atol=1e-12)


def test_zoom_is_applied_after_translation() -> None:
    # rot_zoom @ translation: x' = z * (x + tx) + (1 - z) * cx, centre (W // 2, H // 2) = (50, 40)
    expected = np.array(
        [
            [2.0, 0.0, (1 - 2) * 50 + 2 * 3],
            [0.0, 2.0, (1 - 2) * 40 + 2 * (-1)],
            [0.0, 0.0, 1.0],
        ]
    )
    np.testing.assert_allclose(matrix_2d(100, 80, angle=0, zoom=2, tx=3, ty=-1), expected, atol=1e-12)
    # (the other order, translation @ rot_zoom, would put 3 and -1 unscaled in the last column)
    assert matrix_2d(100, 80, 0, 2, 3, -1)[0, 2] == -44.0


def test_rotation_90_with_translation() -> None:
    # getRotationMatrix2D((50, 40), 90, 1) = [[0, 1, 50 - 40], [-1, 0, 50 + 40]]
    # times [[1, 0, 3], [0, 1, -2]] -> last column (0*3 + 1*(-2) + 10, -1*3 + 0*(-2) + 90)
    expected = np.array([[0.0, 1.0, 8.0], [-1.0, 0.0, 87.0], [0.0, 0.0, 1.0]])
    np.testing.assert_allclose(matrix_2d(100, 80, angle=90, zoom=1, tx=3, ty=-2), expected, atol=1e-12)


def test_general_matrix_by_hand_with_odd_size() -> None:
    width, height, angle, zoom, tx, ty = 101, 75, 30.0, 1.2, 4.0, -6.5
    cx, cy = width // 2, height // 2  # 50, 37: integer centre as in Deforum
    a = zoom * math.cos(math.radians(angle))
    b = zoom * math.sin(math.radians(angle))
    rotation = np.array([[a, b, (1 - a) * cx - b * cy], [-b, a, b * cx + (1 - a) * cy], [0, 0, 1]])
    translation = np.array([[1, 0, tx], [0, 1, ty], [0, 0, 1]])
    np.testing.assert_allclose(matrix_2d(width, height, angle, zoom, tx, ty), rotation @ translation, atol=1e-12)


def test_matches_deforum_transcription() -> None:
    # Deforum's anim_frame_warp_2d, literally (integer translations are exact in float32)
    width, height, angle, zoom, tx, ty = 512, 384, -7.0, 1.04, 3, -5
    trans_mat = np.vstack([np.float32([[1, 0, tx], [0, 1, ty]]), [0, 0, 1]])
    rot_mat = np.vstack([cv2.getRotationMatrix2D((width // 2, height // 2), angle, zoom), [0, 0, 1]])
    np.testing.assert_allclose(
        matrix_2d(width, height, angle, zoom, tx, ty), np.matmul(rot_mat, trans_mat), rtol=0, atol=1e-12
    )


def test_pure_translation_shifts_pixels_exactly() -> None:
    image = _image()
    out = warp_2d(image, angle=0, zoom=1, tx=3, ty=2)
    assert out.dtype == np.uint8 and out.shape == image.shape
    np.testing.assert_array_equal(out[2:, 3:], image[:-2, :-3])  # picture moved right 3, down 2


def test_replicate_border_fills_with_edge_pixels() -> None:
    image = _image()
    out = warp_2d(image, 0, 1, 3, 0, border="replicate")
    for column in range(3):
        np.testing.assert_array_equal(out[:, column], image[:, 0])


def test_wrap_border_wraps_around() -> None:
    image = _image()
    out = warp_2d(image, 0, 1, 3, 2, border="wrap")
    np.testing.assert_array_equal(out, np.roll(image, shift=(2, 3), axis=(0, 1)))


def test_rotation_180_about_integer_centre() -> None:
    image = _image(10, 8)
    out = warp_2d(image, angle=180, zoom=1, tx=0, ty=0)
    cx, cy = 8 // 2, 10 // 2
    for y in range(1, 10):
        for x in range(1, 8):
            np.testing.assert_array_equal(out[y, x], image[2 * cy - y, 2 * cx - x])


def test_positive_angle_is_counter_clockwise_on_screen() -> None:
    image = np.zeros((41, 41, 3), np.uint8)
    image[20, 35] = 255  # right of the centre (20, 20)
    out = warp_2d(image, angle=90, zoom=1, tx=0, ty=0)
    row, col = np.unravel_index(np.argmax(out[..., 0]), out.shape[:2])
    assert (row, col) == (5, 20)  # moved to the top


def test_zoom_in_keeps_centre_and_magnifies() -> None:
    image = np.zeros((41, 41, 3), np.uint8)
    image[20, 20] = 200
    image[20, 25] = 100
    out = warp_2d(image, angle=0, zoom=2, tx=0, ty=0)
    assert out[20, 20, 0] == 200
    assert out[20, 30, 0] == 100  # 5 px from the centre -> 10 px


def test_input_is_not_modified() -> None:
    image = _image()
    copy = image.copy()
    warp_2d(image, 10, 1.1, 1.5, -2.5)
    np.testing.assert_array_equal(image, copy)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"border": "reflect"},
        {"border": "zeros"},
        {"zoom": 0},
        {"zoom": -1},
        {"angle": float("nan")},
        {"tx": float("inf")},
        {"ty": "1"},
    ],
)
def test_bad_arguments(kwargs: dict) -> None:
    args = {"angle": 0.0, "zoom": 1.0, "tx": 0.0, "ty": 0.0, **kwargs}
    with pytest.raises((ValueError, TypeError)):
        warp_2d(_image(), **args)


@pytest.mark.parametrize(
    "image",
    [
        np.zeros((8, 8, 3), np.float32),
        np.zeros((8, 8), np.uint8),
        np.zeros((8, 8, 4), np.uint8),
        [[0, 0, 0]],
    ],
)
def test_bad_images(image: object) -> None:
    with pytest.raises((ValueError, TypeError)):
        warp_2d(image, 0, 1, 0, 0)  # type: ignore[arg-type]


def test_bad_sizes() -> None:
    with pytest.raises(ValueError):
        matrix_2d(0, 10, 0, 1, 0, 0)
    with pytest.raises(ValueError):
        matrix_2d(10.5, 10, 0, 1, 0, 0)  # type: ignore[arg-type]
