"""Depth-based 3D camera reprojection as Deforum/Disco do it, in numpy + ``cv2.remap``.

This reproduces Deforum's ``anim_frame_warp_3d`` / ``transform_image_3d`` (an
adaptation of Disco Diffusion's) without torch or pytorch3d:

1. Every pixel becomes a world point ``(x, y, z)`` where ``x`` and ``y`` run
   over ``linspace(-1, 1)`` across the width/height and ``z`` is the depth map
   value at that pixel (``1`` everywhere when no depth map is given).
2. The point is projected by two pytorch3d ``FoVPerspectiveCameras`` with the
   same ``fov``/``near``/``far`` and ``aspect = W / H``: the old camera at the
   identity pose, and the new camera with rotation ``R`` = euler ``"XYZ"`` of
   the rotation angles and translation ``T`` (row-vector convention: a point
   ``P`` goes to ``P @ R + T``).  The projection of a camera-space point is
   ``u = x / (tan(fov/2) * aspect * z)``, ``v = y / (tan(fov/2) * z)``.
3. The image is resampled with the identity sampling grid (pixel centres,
   ``align_corners=False``) minus the per-pixel offset ``new - old`` -- done
   here with ``cv2.remap`` (bicubic, replicate border by default, as Deforum's
   ``sampling_mode="bicubic"`` / ``padding_mode="border"``).

Units (Deforum's):

* ``depth``: Deforum's depth units -- MiDaS output converted with
  ``(50 - midas) / 19``, so typically about ``0.5 .. 3``; larger is farther.
  The image plane spans ``[-1, 1]``, so at depth ``z`` one unit of camera
  translation sideways moves a point by ``1 / (tan(fov/2) * aspect * z)``
  half-widths.  Depth must not be 0 (values within ``1e-6`` of 0 are clamped).
* ``translation = (tx, ty, tz)``: Deforum's ``translation_x/y/z`` schedule
  values (per frame).  They are multiplied by ``TRANSLATION_SCALE = 1/200`` and
  become ``T = (-tx/200, ty/200, -tz/200)``.  Positive ``tx`` moves the camera
  right (the picture slides left), positive ``ty`` moves the camera up (the
  picture slides down), positive ``tz`` moves the camera forward (zoom in).
  E.g. with ``fov=40``, square ``W``-pixel frame and uniform depth 1,
  ``tx = 10`` slides the picture by ``10/200 / tan(20 deg) * W/2`` = about
  ``0.0687 * W`` pixels.
* ``rotation_deg = (rx, ry, rz)``: Deforum's ``rotation_3d_x/y/z`` in degrees
  per frame.  Positive ``rz`` turns the picture counter-clockwise on screen
  (same sense as the 2D ``angle``, but -- as in Deforum -- by more than ``rz``
  degrees, because the offsets are measured in NDC, i.e. scaled by
  ``1 / (tan(fov/2) * depth)``); positive ``ry`` slides the centre of the
  picture left; positive ``rx`` slides it down.
* ``near``/``far``: kept for parity with Deforum's settings and validated
  (``0 < near < far``), but they only affect the projected depth, which
  Deforum discards, so they do not change the result.

Differences from Deforum: float64 maths instead of float32, the output is
rounded (Deforum adds ``1/512 - 0.0001`` and truncates), and ``cv2.remap``'s
``BORDER_REFLECT``/``BORDER_REPLICATE`` differ from ``grid_sample``'s padding
by at most sub-pixel interpolation details at the frame edge.

>>> import numpy as np
>>> img = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
>>> bool(np.array_equal(warp_3d(img, None), img))  # no motion -> identity
True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import cv2
import numpy as np

from ._checks import choice, finite_number, rgb_uint8

__all__ = ["TRANSLATION_SCALE", "euler_xyz_matrix", "reprojection_maps", "warp_3d"]

#: Deforum/Disco scale from ``translation_x/y/z`` schedule units to camera units.
TRANSLATION_SCALE = 1.0 / 200.0
_DEPTH_EPS = 1e-6

Border3D = Literal["replicate", "reflect", "zeros"]
Interpolation = Literal["bicubic", "bilinear", "nearest"]

_BORDERS = {"replicate": cv2.BORDER_REPLICATE, "reflect": cv2.BORDER_REFLECT, "zeros": cv2.BORDER_CONSTANT}
_INTERPOLATIONS = {"bicubic": cv2.INTER_CUBIC, "bilinear": cv2.INTER_LINEAR, "nearest": cv2.INTER_NEAREST}


def euler_xyz_matrix(rx: float, ry: float, rz: float) -> np.ndarray:
    """Rotation matrix ``Rx(rx) @ Ry(ry) @ Rz(rz)`` for angles in radians.

    Same as pytorch3d's ``euler_angles_to_matrix(angles, "XYZ")`` used by
    Deforum (right-handed, ``Rz = [[c, -s, 0], [s, c, 0], [0, 0, 1]]``).

    >>> euler_xyz_matrix(0.0, 0.0, math.pi / 2).round(12).tolist()
    [[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]
    """
    cx, sx = math.cos(rx), math.sin(rx)
    cy, sy = math.cos(ry), math.sin(ry)
    cz, sz = math.cos(rz), math.sin(rz)
    rot_x = np.array([[1.0, 0.0, 0.0], [0.0, cx, -sx], [0.0, sx, cx]])
    rot_y = np.array([[cy, 0.0, sy], [0.0, 1.0, 0.0], [-sy, 0.0, cy]])
    rot_z = np.array([[cz, -sz, 0.0], [sz, cz, 0.0], [0.0, 0.0, 1.0]])
    return rot_x @ rot_y @ rot_z


def _triple(values: Sequence[float], name: str) -> tuple[float, float, float]:
    if isinstance(values, (str, bytes)) or len(values) != 3:
        raise ValueError(f"{name} must be a sequence of three numbers, got {values!r}")
    a, b, c = (finite_number(v, name) for v in values)
    return a, b, c


def _safe_depth(z: np.ndarray) -> np.ndarray:
    """Clamp values near 0 to ``+-_DEPTH_EPS`` keeping their sign (0 -> +eps)."""
    sign = np.where(z < 0, -1.0, 1.0)
    return sign * np.maximum(np.abs(z), _DEPTH_EPS)


def reprojection_maps(
    depth: np.ndarray,
    *,
    translation: Sequence[float] = (0.0, 0.0, 0.0),
    rotation_deg: Sequence[float] = (0.0, 0.0, 0.0),
    fov_deg: float = 40.0,
    near: float = 200.0,
    far: float = 10000.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Return ``cv2.remap`` maps ``(map_x, map_y)`` (float32, ``HxW``) for :func:`warp_3d`.

    ``output[r, c] = input[map_y[r, c], map_x[r, c]]``.  Units as in the
    module docstring.

    >>> mx, my = reprojection_maps(np.ones((4, 4)), translation=(0, 0, 0))
    >>> mx[1].tolist(), my[:, 2].tolist()
    ([0.0, 1.0, 2.0, 3.0], [0.0, 1.0, 2.0, 3.0])
    """
    if not isinstance(depth, np.ndarray) or depth.ndim != 2 or min(depth.shape) < 1:
        raise ValueError(f"depth must be a 2-D (H, W) numpy array, got {getattr(depth, 'shape', type(depth))}")
    if not np.issubdtype(depth.dtype, np.number) or np.issubdtype(depth.dtype, np.complexfloating):
        raise ValueError(f"depth must be a real numeric array, got {depth.dtype}")
    z = depth.astype(np.float64)
    if not np.all(np.isfinite(z)):
        raise ValueError("depth contains NaN or infinite values")
    tx, ty, tz = _triple(translation, "translation")
    rotation = tuple(math.radians(a) for a in _triple(rotation_deg, "rotation_deg"))
    fov = finite_number(fov_deg, "fov_deg")
    if not 0.0 < fov < 180.0:
        raise ValueError(f"fov_deg must be in (0, 180), got {fov}")
    near = finite_number(near, "near")
    far = finite_number(far, "far")
    if not 0.0 < near < far:
        raise ValueError(f"need 0 < near < far, got near={near}, far={far}")

    height, width = z.shape
    tan_half = math.tan(math.radians(fov) / 2.0)
    scale_u = 1.0 / (tan_half * (width / height))
    scale_v = 1.0 / tan_half

    x, y = np.meshgrid(np.linspace(-1.0, 1.0, width), np.linspace(-1.0, 1.0, height))
    points = np.stack([x, y, z], axis=-1)
    moved = points @ euler_xyz_matrix(*rotation) + np.array(
        [-tx * TRANSLATION_SCALE, ty * TRANSLATION_SCALE, -tz * TRANSLATION_SCALE]
    )
    z_old = _safe_depth(z)
    z_new = _safe_depth(moved[..., 2])
    offset_u = scale_u * (moved[..., 0] / z_new - x / z_old)
    offset_v = scale_v * (moved[..., 1] / z_new - y / z_old)

    cols, rows = np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64))
    # grid_sample(align_corners=False): pixel = ((g + 1) * size - 1) / 2, so an NDC
    # offset d moves the sampling point by d * size / 2 pixels.
    map_x = cols - offset_u * (width / 2.0)
    map_y = rows - offset_v * (height / 2.0)
    limit = 4.0 * max(width, height)  # far outside; keeps float32 maps finite
    map_x = np.clip(np.nan_to_num(map_x, nan=-limit), -limit, width + limit)
    map_y = np.clip(np.nan_to_num(map_y, nan=-limit), -limit, height + limit)
    return map_x.astype(np.float32), map_y.astype(np.float32)


def warp_3d(
    image: np.ndarray,
    depth: np.ndarray | None,
    *,
    translation: Sequence[float] = (0.0, 0.0, 0.0),
    rotation_deg: Sequence[float] = (0.0, 0.0, 0.0),
    fov_deg: float = 40.0,
    near: float = 200.0,
    far: float = 10000.0,
    border: Border3D = "replicate",
    interpolation: Interpolation = "bicubic",
) -> np.ndarray:
    """Reproject an ``HxWx3`` ``uint8`` frame for one frame of 3D camera motion.

    ``depth`` is an ``HxW`` float map in Deforum's units (``None`` = uniform
    depth 1); ``translation`` is Deforum's ``(translation_x, translation_y,
    translation_z)`` and ``rotation_deg`` its ``(rotation_3d_x, _y, _z)`` in
    degrees -- see the module docstring for the exact units and signs.
    ``border`` is ``"replicate"`` (Deforum's default ``padding_mode="border"``),
    ``"reflect"`` (``"reflection"``) or ``"zeros"``.

    >>> import numpy as np
    >>> img = np.zeros((9, 9, 3), np.uint8); img[4, 4] = 200
    >>> out = warp_3d(img, np.ones((9, 9)), translation=(0, 0, 0), interpolation="nearest")
    >>> int(out[4, 4, 0])
    200
    """
    image = rgb_uint8(image)
    height, width = image.shape[:2]
    if depth is None:
        depth = np.ones((height, width))
    if not isinstance(depth, np.ndarray) or depth.shape != (height, width):
        raise ValueError(f"depth must have shape {(height, width)}, got {getattr(depth, 'shape', type(depth))}")
    mode = _BORDERS[choice(border, "border", _BORDERS)]
    flags = _INTERPOLATIONS[choice(interpolation, "interpolation", _INTERPOLATIONS)]
    map_x, map_y = reprojection_maps(
        depth, translation=translation, rotation_deg=rotation_deg, fov_deg=fov_deg, near=near, far=far
    )
    return cv2.remap(image, map_x, map_y, flags, borderMode=mode, borderValue=(0, 0, 0))
