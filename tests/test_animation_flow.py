"""Tests for sdbatch.animation.flow (DIS optical flow, backward warping, coherence)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from sdbatch.animation.flow import blend_coherent, consistency_mask, optical_flow, warp_by_flow, warp_previous


def _texture(height: int, width: int, seed: int, sigma: float = 2.0) -> np.ndarray:
    """Random noise smoothed with a Gaussian and stretched to the full 0..255 range."""
    noise = np.random.default_rng(seed).standard_normal((height, width, 3)).astype(np.float32)
    noise = cv2.GaussianBlur(noise, (0, 0), sigma)
    noise = (noise - noise.min()) / (noise.max() - noise.min()) * 255
    return np.rint(noise).astype(np.uint8)


def _shifted_pair(shift: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """(prev, cur) where the content of cur is prev moved right by ``shift`` pixels."""
    big = _texture(96, 128 + 10, seed=0)
    prev = big[:, shift : shift + 128].copy()
    cur = big[:, :128].copy()
    return prev, cur


# ---------------------------------------------------------------------------
# optical_flow
# ---------------------------------------------------------------------------


def test_flow_of_a_pure_translation() -> None:
    prev, cur = _shifted_pair(3)
    flow = optical_flow(prev, cur)  # prev[y, x] ~= cur[y, x + 3]
    assert flow.dtype == np.float32 and flow.shape == (96, 128, 2)
    interior = flow[8:-8, 8:-8]
    assert float(np.median(interior[..., 0])) == pytest.approx(3.0, abs=0.1)
    assert float(np.median(interior[..., 1])) == pytest.approx(0.0, abs=0.1)
    back = optical_flow(cur, prev)
    assert float(np.median(back[8:-8, 8:-8, 0])) == pytest.approx(-3.0, abs=0.1)


def test_flow_between_identical_frames_is_zero() -> None:
    image = _texture(48, 64, seed=1)
    assert np.abs(optical_flow(image, image)).max() < 0.05


def test_flow_is_deterministic() -> None:
    prev, cur = _shifted_pair(3)
    np.testing.assert_array_equal(optical_flow(prev, cur), optical_flow(prev, cur))


# ---------------------------------------------------------------------------
# warp_by_flow
# ---------------------------------------------------------------------------


def test_warp_by_integer_flow_is_an_exact_shift() -> None:
    image = _texture(20, 30, seed=2)
    flow = np.zeros((20, 30, 2), np.float32)
    flow[..., 0] = -2  # each output pixel looks 2 px to the left ...
    flow[..., 1] = 1  # ... and 1 px down
    out = warp_by_flow(image, flow)
    np.testing.assert_array_equal(out[:-1, 2:], image[1:, :-2])
    np.testing.assert_array_equal(out[:-1, 0], image[1:, 0])  # replicated border


def test_warp_by_flow_accepts_grayscale_and_float_images() -> None:
    flow = np.zeros((4, 5, 2), np.float32)
    flow[..., 0] = 0.5
    gray = np.tile(np.arange(5, dtype=np.float32) * 10, (4, 1))
    np.testing.assert_allclose(warp_by_flow(gray, flow)[0], [5, 15, 25, 35, 40], atol=1e-4)


def test_warp_by_flow_validates() -> None:
    with pytest.raises(ValueError, match="same height and width"):
        warp_by_flow(np.zeros((4, 5, 3), np.uint8), np.zeros((4, 6, 2), np.float32))
    with pytest.raises(ValueError, match="NaN"):
        warp_by_flow(np.zeros((4, 5, 3), np.uint8), np.full((4, 5, 2), np.nan, np.float32))
    with pytest.raises(ValueError, match=r"\(H, W, 2\)"):
        warp_by_flow(np.zeros((4, 5, 3), np.uint8), np.zeros((4, 5), np.float32))
    with pytest.raises(ValueError, match="float"):
        warp_by_flow(np.zeros((4, 5, 3), np.uint8), np.zeros((4, 5, 2), np.int32))


# ---------------------------------------------------------------------------
# consistency_mask
# ---------------------------------------------------------------------------


def test_consistency_of_exact_opposite_flows() -> None:
    forward = np.zeros((10, 12, 2), np.float32)
    forward[..., 0] = 3
    backward = -forward
    mask = consistency_mask(forward, backward)
    assert mask.dtype == bool and mask.shape == (10, 12)
    assert mask[:, :9].all()
    assert not mask[:, 9:].any()  # targets x + 3 > 11 leave the frame


def test_consistency_detects_a_mismatch_region() -> None:
    forward = np.zeros((10, 12, 2), np.float32)
    backward = np.zeros((10, 12, 2), np.float32)
    backward[2:5, 3:7] = (0.0, 4.0)  # B's pixels there claim to come from elsewhere
    mask = consistency_mask(forward, backward, threshold=1.0)
    assert not mask[2:5, 3:7].any()
    assert mask.sum() == 120 - 12


def test_consistency_threshold() -> None:
    forward = np.zeros((6, 6, 2), np.float32)
    backward = np.zeros((6, 6, 2), np.float32)
    backward[..., 0] = 0.8
    assert consistency_mask(forward, backward, threshold=1.0).all()
    assert not consistency_mask(forward, backward, threshold=0.5).any()


def test_consistency_mask_validates() -> None:
    flow = np.zeros((6, 6, 2), np.float32)
    with pytest.raises(ValueError, match="same shape"):
        consistency_mask(flow, np.zeros((6, 7, 2), np.float32))
    with pytest.raises(ValueError, match="threshold"):
        consistency_mask(flow, flow, threshold=0)


# ---------------------------------------------------------------------------
# warp_previous + blend_coherent
# ---------------------------------------------------------------------------


def test_shifted_texture_is_warped_back() -> None:
    prev, cur = _shifted_pair(3)
    warped, valid = warp_previous(prev, prev, cur)
    assert warped.dtype == np.uint8 and warped.shape == cur.shape
    diff = np.abs(warped.astype(int) - cur.astype(int))
    assert diff[8:-8, 8:-8].max() <= 4
    assert diff[8:-8, 8:-8].mean() < 0.5
    # mostly consistent; the 3 columns that entered on the left have no source in prev
    assert valid[8:-8, 8:-8].mean() > 0.98
    assert valid.mean() > 0.9
    assert not valid[:, :3].any()


def test_stylised_previous_frame_follows_the_source_motion() -> None:
    prev, cur = _shifted_pair(3)
    styled_prev = 255 - prev  # any per-pixel "style" of the previous frame
    warped, _ = warp_previous(styled_prev, prev, cur)
    diff = np.abs(warped.astype(int) - (255 - cur).astype(int))
    assert diff[8:-8, 8:-8].max() <= 4


def test_disoccluded_region_is_marked_invalid() -> None:
    height, width, size, move = 128, 160, 48, 8
    background = _texture(height, width, seed=10)
    foreground = _texture(size, size, seed=20)
    top, left = (height - size) // 2, 30
    prev, cur = background.copy(), background.copy()
    prev[top : top + size, left : left + size] = foreground
    cur[top : top + size, left + move : left + move + size] = foreground  # object moved right
    _, valid = warp_previous(prev, prev, cur)
    # in cur, background columns [left, left + move) were hidden behind the object in prev
    revealed = valid[top + 2 : top + size - 2, left + 1 : left + move - 1]
    assert revealed.mean() < 0.4
    assert valid[: top - 4].mean() > 0.9  # static background
    assert valid[top + 4 : top + size - 4, left + move + 4 : left + move + size - 4].mean() > 0.9  # object


def test_blend_coherent_exact_values() -> None:
    cur = np.full((2, 2, 3), 100, np.uint8)
    warped = np.full((2, 2, 3), 201, np.uint8)
    valid = np.array([[True, False], [True, True]])
    out = blend_coherent(cur, warped, valid, 0.5)
    np.testing.assert_array_equal(out[..., 0], [[150, 100], [150, 150]])  # 150.5 rounds to even
    np.testing.assert_array_equal(blend_coherent(cur, warped, valid, 0.0), cur)
    full = blend_coherent(cur, warped, valid, 1.0)
    np.testing.assert_array_equal(full[..., 1], [[201, 100], [201, 201]])
    assert out.dtype == np.uint8


def test_blend_coherent_validates() -> None:
    cur = np.zeros((2, 2, 3), np.uint8)
    with pytest.raises(ValueError, match="flow_weight"):
        blend_coherent(cur, cur, np.ones((2, 2), bool), 1.5)
    with pytest.raises(ValueError, match="valid_mask"):
        blend_coherent(cur, cur, np.ones((2, 3), bool), 0.5)
    with pytest.raises(ValueError, match="same height and width"):
        blend_coherent(cur, np.zeros((3, 2, 3), np.uint8), np.ones((2, 2), bool), 0.5)


def test_full_restyle_step_improves_coherence() -> None:
    prev, cur = _shifted_pair(3)
    styled_prev = cv2.GaussianBlur(prev, (0, 0), 1.0)
    warped, valid = warp_previous(styled_prev, prev, cur)
    init = blend_coherent(cur, warped, valid, 0.7)
    target = cv2.GaussianBlur(cur, (0, 0), 1.0)  # what a coherent stylisation of cur looks like
    err_blend = np.abs(init.astype(int) - target.astype(int))[8:-8, 8:-8].mean()
    err_naive = np.abs(((cur.astype(int) * 3 + styled_prev.astype(int) * 7) / 10) - target)[8:-8, 8:-8].mean()
    assert err_blend < err_naive


def test_warp_previous_validates_sizes() -> None:
    a = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match="same height and width"):
        warp_previous(a, a, np.zeros((8, 9, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        warp_previous(a.astype(np.float32), a, a)
