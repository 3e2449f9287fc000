"""Deforum's 2D animation warp (zoom, rotate, translate), no torch.

Deforum's ``anim_frame_warp_2d`` builds ``rot_mat`` with
``cv2.getRotationMatrix2D((W // 2, H // 2), angle, zoom)`` and a translation
matrix ``[[1, 0, tx], [0, 1, ty], [0, 0, 1]]``, both as 3x3, and warps the
previous frame with ``cv2.warpPerspective(prev, rot_mat @ trans_mat, (W, H),
borderMode=...)``.  So a pixel is first translated by ``(tx, ty)`` and then
rotated by ``angle`` degrees counter-clockwise and scaled by ``zoom`` about
the centre ``(W // 2, H // 2)``: a positive ``tx`` moves the picture right, a
positive ``ty`` moves it down, ``zoom > 1`` zooms in.

Difference from Deforum: the translation matrix is float64 here (Deforum builds
it as float32, which rounds e.g. ``tx=0.1`` to ``0.10000000149``).

>>> import numpy as np
>>> matrix_2d(100, 80, angle=0, zoom=1, tx=3, ty=-2).tolist()
[[1.0, 0.0, 3.0], [0.0, 1.0, -2.0], [0.0, 0.0, 1.0]]
"""

from __future__ import annotations

from typing import Literal

import cv2
import numpy as np

from ._checks import choice, finite_number, rgb_uint8

__all__ = ["BORDER_MODES", "matrix_2d", "warp_2d"]

Border2D = Literal["replicate", "wrap"]

#: Accepted ``border`` values and their OpenCV border modes (as in Deforum).
BORDER_MODES: dict[str, int] = {"replicate": cv2.BORDER_REPLICATE, "wrap": cv2.BORDER_WRAP}


def matrix_2d(width: int, height: int, angle: float, zoom: float, tx: float, ty: float) -> np.ndarray:
    """Return Deforum's 3x3 2D warp matrix ``rotation_zoom @ translation`` (float64).

    ``angle`` is in degrees (counter-clockwise on screen), ``zoom`` is a scale
    factor (``1.0`` = none), ``tx``/``ty`` are pixels.  The rotation/zoom centre
    is ``(width // 2, height // 2)``.

    >>> m = matrix_2d(64, 64, angle=0, zoom=2, tx=1, ty=0)
    >>> m[0].tolist()  # x' = 2 * (x + 1) + (1 - 2) * 32
    [2.0, 0.0, -30.0]
    """
    for value, name in ((width, "width"), (height, "height")):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    angle = finite_number(angle, "angle")
    zoom = finite_number(zoom, "zoom")
    if zoom <= 0:
        raise ValueError(f"zoom must be > 0, got {zoom}")
    tx = finite_number(tx, "tx")
    ty = finite_number(ty, "ty")
    rotation = np.vstack([cv2.getRotationMatrix2D((int(width) // 2, int(height) // 2), angle, zoom), [0.0, 0.0, 1.0]])
    translation = np.array([[1.0, 0.0, tx], [0.0, 1.0, ty], [0.0, 0.0, 1.0]])
    return rotation @ translation


def warp_2d(
    image: np.ndarray,
    angle: float,
    zoom: float,
    tx: float,
    ty: float,
    border: Border2D = "replicate",
) -> np.ndarray:
    """Warp an ``HxWx3`` ``uint8`` frame with :func:`matrix_2d` like Deforum's 2D mode.

    Uses ``cv2.warpPerspective`` with its default bilinear interpolation and
    ``BORDER_REPLICATE`` (``border="replicate"``) or ``BORDER_WRAP``
    (``border="wrap"``) for the pixels that enter the frame.

    >>> import numpy as np
    >>> frame = np.zeros((4, 6, 3), np.uint8); frame[1, 2] = 255
    >>> moved = warp_2d(frame, angle=0, zoom=1, tx=1, ty=2)
    >>> tuple(int(v) for v in np.argwhere(moved[..., 0] == 255)[0])
    (3, 3)
    """
    image = rgb_uint8(image)
    mode = BORDER_MODES[choice(border, "border", BORDER_MODES)]
    height, width = image.shape[:2]
    matrix = matrix_2d(width, height, angle, zoom, tx, ty)
    return cv2.warpPerspective(image, matrix, (width, height), borderMode=mode)
