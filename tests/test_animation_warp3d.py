"""Tests for sdbatch.animation.warp3d (Deforum's depth-based 3D warp, numpy + cv2.remap).

Deforum (anim_frame_warp_3d / transform_image_3d) does, per frame:
    T = [-translation_x / 200, translation_y / 200, -translation_z / 200]
    R = euler_angles_to_matrix(radians([rx, ry, rz]), "XYZ")
    old/new = FoVPerspectiveCameras(near, far, W / H, fov, R=I|R, T=0|T)
    points  = (linspace(-1, 1, W), linspace(-1, 1, H), depth)
    offset  = new.project(points) - old.project(points)
    out     = grid_sample(img, affine_grid(identity) - offset, bicubic, padding "border")
What Deforum therefore does with the signs (asserted below):
    translation_x > 0 -> camera moves right, the picture slides LEFT;
    translation_y > 0 -> camera moves up, the picture slides DOWN;
    translation_z > 0 -> camera moves forward, the picture is magnified (zoom in);
    rotation_3d_z > 0 -> the picture turns counter-clockwise on screen (like the 2D angle);
    rotation_3d_y > 0 -> the picture slides left; rotation_3d_x > 0 -> it slides down.
The numpy port was also compared once against this exact torch pipeline (affine_grid +
grid_sample, align_corners=False) on a GPU machine: max difference 1 grey level
(Deforum truncates, we round).
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from sdbatch.animation.warp2d import warp_2d
from sdbatch.animation.warp3d import TRANSLATION_SCALE, euler_xyz_matrix, reprojection_maps, warp_3d

FOV = 40.0
TAN_HALF = math.tan(math.radians(FOV / 2))


def _texture(height: int, width: int, seed: int = 0) -> np.ndarray:
    noise = np.random.default_rng(seed).standard_normal((height, width, 3)).astype(np.float32)
    noise = cv2.GaussianBlur(noise, (0, 0), 1.5)
    noise = (noise - noise.min()) / (noise.max() - noise.min()) * 255
    return np.rint(noise).astype(np.uint8)


def _grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    cols, rows = np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64))
    return cols, rows


def _bright_spot(image: np.ndarray) -> tuple[float, float]:
    """Intensity-weighted centre (row, col) of channel 0."""
    weights = image[..., 0].astype(np.float64)
    rows, cols = np.indices(weights.shape)
    return float((rows * weights).sum() / weights.sum()), float((cols * weights).sum() / weights.sum())


# ---------------------------------------------------------------------------
# identity
# ---------------------------------------------------------------------------


def test_zero_motion_is_identity() -> None:
    image = _texture(40, 56)
    depth = 0.6 + np.random.default_rng(1).random((40, 56)) * 2
    for border in ("replicate", "reflect", "zeros"):
        out = warp_3d(image, depth, border=border)
        assert out.dtype == np.uint8 and out.shape == image.shape
        assert np.abs(out.astype(int) - image.astype(int)).max() <= 1
    np.testing.assert_array_equal(warp_3d(image, None), image)


def test_zero_motion_maps_are_the_pixel_grid() -> None:
    map_x, map_y = reprojection_maps(np.full((5, 7), 2.0))
    cols, rows = _grid(5, 7)
    assert map_x.dtype == np.float32 and map_x.shape == (5, 7)
    np.testing.assert_array_equal(map_x, cols)
    np.testing.assert_array_equal(map_y, rows)


# ---------------------------------------------------------------------------
# exact maps for simple motions (uniform depth)
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(("height", "width", "depth"), [(64, 64, 1.0), (48, 80, 2.0), (50, 30, 0.75)])
def test_translation_x_map_is_a_constant_shift(height: int, width: int, depth: float) -> None:
    tx = 10.0
    map_x, map_y = reprojection_maps(np.full((height, width), depth), translation=(tx, 0, 0))
    cols, rows = _grid(height, width)
    aspect = width / height
    shift = tx * TRANSLATION_SCALE / (TAN_HALF * aspect * depth) * width / 2
    np.testing.assert_allclose(map_x - cols, shift, atol=1e-4)
    np.testing.assert_allclose(map_y, rows, atol=1e-4)
    # output(c) = input(c + shift): the picture slides left (camera moves right)
    assert shift > 0


def test_translation_x_of_10_is_about_4_4_pixels_on_64_square() -> None:
    map_x, _ = reprojection_maps(np.ones((64, 64)), translation=(10, 0, 0))
    assert float(map_x[10, 10] - 10) == pytest.approx(0.05 / TAN_HALF * 32, abs=1e-4)
    assert float(map_x[10, 10] - 10) == pytest.approx(4.39596, abs=1e-4)


def test_translation_y_map_is_a_constant_shift() -> None:
    ty, height, width, depth = 8.0, 48, 64, 1.5
    map_x, map_y = reprojection_maps(np.full((height, width), depth), translation=(0, ty, 0))
    cols, rows = _grid(height, width)
    shift = ty * TRANSLATION_SCALE / (TAN_HALF * depth) * height / 2
    np.testing.assert_allclose(map_y - rows, -shift, atol=1e-4)  # picture slides down
    np.testing.assert_allclose(map_x, cols, atol=1e-4)


def test_translation_scales_with_inverse_depth() -> None:
    depth = np.ones((32, 64))
    depth[:, 32:] = 2.0  # right half twice as far away
    map_x, _ = reprojection_maps(depth, translation=(12, 0, 0))
    cols, _ = _grid(32, 64)
    near_shift = (map_x - cols)[:, :32]
    far_shift = (map_x - cols)[:, 32:]
    np.testing.assert_allclose(near_shift, 2 * far_shift[:, :1].mean(), atol=1e-4)  # parallax


def test_translation_z_is_a_zoom_about_the_centre() -> None:
    height, width, depth, tz = 40, 60, 1.0, 20.0
    map_x, map_y = reprojection_maps(np.full((height, width), depth), translation=(0, 0, tz))
    cols, rows = _grid(height, width)
    d = tz * TRANSLATION_SCALE
    grow = 1 / (depth - d) - 1 / depth
    # map = c0 + (c - c0) * (1 - size / 2 * K * grow * 2 / (size - 1)), fixed point c0 = (size - 1) / 2
    kx = 1 - (width / 2) * (1 / (TAN_HALF * width / height)) * grow * 2 / (width - 1)
    ky = 1 - (height / 2) * (1 / TAN_HALF) * grow * 2 / (height - 1)
    cx, cy = (width - 1) / 2, (height - 1) / 2
    np.testing.assert_allclose(map_x, cx + (cols - cx) * kx, atol=1e-4)
    np.testing.assert_allclose(map_y, cy + (rows - cy) * ky, atol=1e-4)
    assert kx < 1 and ky < 1  # samples nearer the centre -> magnified (zoom in)


def test_rotation_z_map_by_hand() -> None:
    height, width, depth, angle = 30, 40, 1.0, 7.0
    map_x, map_y = reprojection_maps(np.full((height, width), depth), rotation_deg=(0, 0, angle))
    x, y = np.meshgrid(np.linspace(-1, 1, width), np.linspace(-1, 1, height))
    c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    # row vector [x, y, z] @ Rz with Rz = [[c, -s, 0], [s, c, 0], [0, 0, 1]]
    x_new, y_new = x * c + y * s, -x * s + y * c
    cols, rows = _grid(height, width)
    ku, kv = 1 / (TAN_HALF * width / height), 1 / TAN_HALF
    np.testing.assert_allclose(map_x, cols - ku * (x_new - x) / depth * width / 2, atol=1e-4)
    np.testing.assert_allclose(map_y, rows - kv * (y_new - y) / depth * height / 2, atol=1e-4)


def test_euler_xyz_matrix_matches_pytorch3d_convention() -> None:
    a, b, c = 0.3, -0.2, 0.7
    rx = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    ry = np.array([[math.cos(b), 0, math.sin(b)], [0, 1, 0], [-math.sin(b), 0, math.cos(b)]])
    rz = np.array([[math.cos(c), -math.sin(c), 0], [math.sin(c), math.cos(c), 0], [0, 0, 1]])
    np.testing.assert_allclose(euler_xyz_matrix(a, b, c), rx @ ry @ rz, atol=1e-15)
    np.testing.assert_allclose(euler_xyz_matrix(a, b, c) @ euler_xyz_matrix(a, b, c).T, np.eye(3), atol=1e-12)


def _pytorch3d_style_maps(depth: np.ndarray, translation, rotation_deg, near: float, far: float):
    """Literal transcription of Deforum + pytorch3d with 4x4 row-vector matrices and w-division."""
    height, width = depth.shape
    aspect = width / height
    max_y = TAN_HALF * near
    max_x = max_y * aspect
    k = np.zeros((4, 4))
    k[0, 0] = 2 * near / (2 * max_x)
    k[1, 1] = 2 * near / (2 * max_y)
    k[3, 2] = 1.0
    k[2, 2] = far / (far - near)
    k[2, 3] = -(far * near) / (far - near)

    def full_transform(rotation: np.ndarray, shift: np.ndarray) -> np.ndarray:
        world_to_view = np.eye(4)
        world_to_view[:3, :3] = rotation
        world_to_view[3, :3] = shift
        return world_to_view @ k.T

    x, y = np.meshgrid(np.linspace(-1, 1, width), np.linspace(-1, 1, height))
    points = np.stack([x.ravel(), y.ravel(), depth.ravel(), np.ones(x.size)], axis=1)

    def project(matrix: np.ndarray) -> np.ndarray:
        out = points @ matrix
        return out[:, :2] / out[:, 3:]

    scale = 1 / 200
    shift = np.array([-translation[0] * scale, translation[1] * scale, -translation[2] * scale])
    rotation = euler_xyz_matrix(*(math.radians(v) for v in rotation_deg))
    offset = project(full_transform(rotation, shift)) - project(full_transform(np.eye(3), np.zeros(3)))
    # affine_grid(identity, align_corners=False) pixel-centre grid, then grid_sample unnormalisation
    gx = (2 * np.arange(width) + 1) / width - 1
    gy = (2 * np.arange(height) + 1) / height - 1
    sample_x = gx[None, :] - offset[:, 0].reshape(height, width)
    sample_y = gy[:, None] - offset[:, 1].reshape(height, width)
    return ((sample_x + 1) * width - 1) / 2, ((sample_y + 1) * height - 1) / 2


@pytest.mark.parametrize(
    ("translation", "rotation"),
    [((4, -3, 6), (1, -2, 3)), ((-10, 0, -20), (0, 5, 0)), ((0, 7, 0), (-3, 0, -4))],
)
def test_matches_literal_pytorch3d_transcription(translation, rotation) -> None:
    rng = np.random.default_rng(5)
    depth = 0.6 + 1.7 * cv2.GaussianBlur(rng.random((36, 52)), (0, 0), 5)
    expected_x, expected_y = _pytorch3d_style_maps(depth, translation, rotation, near=200, far=10000)
    map_x, map_y = reprojection_maps(depth, translation=translation, rotation_deg=rotation)
    np.testing.assert_allclose(map_x, expected_x, atol=2e-4)
    np.testing.assert_allclose(map_y, expected_y, atol=2e-4)


def test_near_and_far_do_not_change_the_warp() -> None:
    depth = np.full((20, 30), 1.3)
    a = reprojection_maps(depth, translation=(3, 2, 5), rotation_deg=(1, 2, 3), near=200, far=10000)
    b = reprojection_maps(depth, translation=(3, 2, 5), rotation_deg=(1, 2, 3), near=0.1, far=50)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_wider_fov_moves_less() -> None:
    depth = np.ones((32, 32))
    narrow, _ = reprojection_maps(depth, translation=(10, 0, 0), fov_deg=30)
    wide, _ = reprojection_maps(depth, translation=(10, 0, 0), fov_deg=90)
    assert (narrow[5, 5] - 5) > (wide[5, 5] - 5) > 0
    assert float(wide[5, 5] - 5) == pytest.approx(0.05 / math.tan(math.radians(45)) * 16, abs=1e-4)


# ---------------------------------------------------------------------------
# images: Deforum's sign conventions
# ---------------------------------------------------------------------------


def _spot_image(size: int = 65, row: int = 32, col: int = 32) -> np.ndarray:
    image = np.zeros((size, size, 3), np.uint8)
    image[row - 1 : row + 2, col - 1 : col + 2] = 255
    return image


def test_positive_translation_x_slides_the_picture_left() -> None:
    image = _texture(48, 64)
    depth = np.ones((48, 64))
    out = warp_3d(image, depth, translation=(10, 0, 0))
    shift = 10 * TRANSLATION_SCALE / (TAN_HALF * 64 / 48) * 32  # ~3.3 px
    # compare with a plain sub-pixel shift of the image to the left
    expected = cv2.warpAffine(image, np.float32([[1, 0, -shift], [0, 1, 0]]), (64, 48), flags=cv2.INTER_CUBIC)
    interior = (slice(4, -4), slice(4, -8))
    assert np.abs(out[interior].astype(int) - expected[interior].astype(int)).max() <= 3
    row, col = _bright_spot(warp_3d(_spot_image(), np.ones((65, 65)), translation=(10, 0, 0)))
    assert row == pytest.approx(32, abs=0.05)
    assert col == pytest.approx(32 - 10 * TRANSLATION_SCALE / TAN_HALF * 32.5, abs=0.1)


def test_positive_translation_y_slides_the_picture_down() -> None:
    row, col = _bright_spot(warp_3d(_spot_image(), None, translation=(0, 10, 0)))
    assert col == pytest.approx(32, abs=0.05)
    assert row == pytest.approx(32 + 10 * TRANSLATION_SCALE / TAN_HALF * 32.5, abs=0.1)


def test_positive_translation_z_zooms_in() -> None:
    image = np.zeros((65, 65, 3), np.uint8)
    image[22:43, 22:43] = 255  # 21x21 square around the centre
    out = warp_3d(image, np.full((65, 65), 1.0), translation=(0, 0, 20), interpolation="nearest")
    assert out[32, 32, 0] == 255
    assert (out[..., 0] == 255).sum() > 1.2 * (image[..., 0] == 255).sum()
    smaller = warp_3d(image, np.full((65, 65), 1.0), translation=(0, 0, -20), interpolation="nearest")
    assert (smaller[..., 0] == 255).sum() < (image[..., 0] == 255).sum()


def test_positive_rotation_z_turns_counter_clockwise_like_2d_angle() -> None:
    # Same sense as the 2D angle, but Deforum's 3D in-plane motion is larger: the offsets are
    # taken in NDC (scaled by 1 / (tan(fov / 2) * depth)) while the sampling grid is not.
    right = _spot_image(row=32, col=52)
    left = _spot_image(row=32, col=12)
    row3d, _ = _bright_spot(warp_3d(right, None, rotation_deg=(0, 0, 10)))
    row2d, _ = _bright_spot(warp_2d(right, angle=10, zoom=1, tx=0, ty=0))
    assert row3d < row2d < 30  # the spot right of the centre moved up in both
    row3d, _ = _bright_spot(warp_3d(left, None, rotation_deg=(0, 0, 10)))
    row2d, _ = _bright_spot(warp_2d(left, angle=10, zoom=1, tx=0, ty=0))
    assert row3d > row2d > 34  # the spot left of the centre moved down in both


def test_positive_rotation_y_slides_centre_left_and_x_slides_it_down() -> None:
    row, col = _bright_spot(warp_3d(_spot_image(), None, rotation_deg=(0, 5, 0)))
    assert col < 28 and row == pytest.approx(32, abs=0.5)
    row, col = _bright_spot(warp_3d(_spot_image(), None, rotation_deg=(5, 0, 0)))
    assert row > 36 and col == pytest.approx(32, abs=0.5)


# ---------------------------------------------------------------------------
# borders and options
# ---------------------------------------------------------------------------


def test_borders() -> None:
    image = np.zeros((20, 40, 3), np.uint8)
    image[:, -1] = 200  # bright right edge column
    image[:, -2] = 100
    kwargs = {"translation": (40, 0, 0), "interpolation": "nearest"}  # ~ 4.1 px to the left
    replicate = warp_3d(image, None, border="replicate", **kwargs)
    zeros = warp_3d(image, None, border="zeros", **kwargs)
    reflect = warp_3d(image, None, border="reflect", **kwargs)
    assert (replicate[:, -1, 0] == 200).all()
    assert (zeros[:, -1, 0] == 0).all()
    assert (reflect[:, -4:, 0] > 0).any() and not (reflect[:, -1, 0] == 200).all()


def test_interpolation_modes_all_preserve_identity() -> None:
    image = _texture(16, 20)
    for mode in ("bicubic", "bilinear", "nearest"):
        np.testing.assert_array_equal(warp_3d(image, None, interpolation=mode), image)


def test_input_is_not_modified() -> None:
    image = _texture(16, 20)
    depth = np.ones((16, 20))
    image_copy, depth_copy = image.copy(), depth.copy()
    warp_3d(image, depth, translation=(3, 2, 1), rotation_deg=(1, 1, 1))
    np.testing.assert_array_equal(image, image_copy)
    np.testing.assert_array_equal(depth, depth_copy)


def test_zero_and_negative_depth_do_not_crash() -> None:
    depth = np.zeros((12, 12))
    depth[:6] = -1.0
    out = warp_3d(_texture(12, 12), depth, translation=(5, 5, 5))
    assert out.shape == (12, 12, 3)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"translation": (1, 2)},
        {"translation": (1, 2, float("nan"))},
        {"rotation_deg": (0, 0)},
        {"rotation_deg": "abc"},
        {"fov_deg": 0},
        {"fov_deg": 180},
        {"near": 0},
        {"near": 100, "far": 100},
        {"near": 300, "far": 200},
        {"border": "wrap"},
        {"interpolation": "lanczos"},
    ],
)
def test_bad_arguments(kwargs: dict) -> None:
    with pytest.raises((ValueError, TypeError)):
        warp_3d(_texture(8, 8), None, **kwargs)


@pytest.mark.parametrize(
    "depth",
    [np.ones((8, 9)), np.ones((8, 8, 1)), np.full((8, 8), np.nan), np.ones((8, 8), complex), "ones"],
)
def test_bad_depth(depth: object) -> None:
    with pytest.raises((ValueError, TypeError)):
        warp_3d(_texture(8, 8), depth)  # type: ignore[arg-type]
