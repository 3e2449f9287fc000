"""Colour coherence, noise and contrast steps of Deforum's animation loop.

* :func:`match_colors` is Deforum's ``maintain_colors``: per-channel histogram
  matching (``skimage.exposure.match_histograms(..., channel_axis=-1)``) of the
  frame to a reference frame, done in RGB, in OpenCV's 8-bit HSV, or in
  OpenCV's 8-bit LAB.
* :func:`add_noise` is Deforum's (sd-webui-deforum) white-noise ``add_noise``:
  a Gaussian noise picture ``clip(0.5 * n + 0.5, 0, 1) * 255`` (``n`` standard
  normal) blended in with ``cv2.addWeighted(image, 1 - amount, noise, amount, 0)``.
  The noise comes from a ``numpy`` Generator seeded with ``seed`` (Deforum uses
  a module-level torch Generator), so the exact noise differs from Deforum's
  but is reproducible and free of global state.
* :func:`adjust_contrast` is Deforum's ``(prev_img * contrast).round()`` --
  a plain multiplicative scaling of all channels (not around mid-grey), here
  clipped to ``[0, 255]`` (Deforum's ``astype(np.uint8)`` would wrap around).

All images are RGB ``uint8`` ``HxWx3`` arrays; inputs are never modified.

>>> import numpy as np
>>> adjust_contrast(np.full((1, 1, 3), 100, np.uint8), 1.5)[0, 0].tolist()
[150, 150, 150]
"""

from __future__ import annotations

from typing import Literal

import cv2
import numpy as np

from ._checks import choice, finite_number, rgb_uint8

__all__ = ["COLOR_MODES", "add_noise", "adjust_contrast", "match_colors"]

ColorMode = Literal["none", "lab", "hsv", "rgb"]

#: Accepted ``mode`` values of :func:`match_colors` (case-insensitive).
COLOR_MODES = ("none", "lab", "hsv", "rgb")

_TO_SPACE = {"lab": cv2.COLOR_RGB2LAB, "hsv": cv2.COLOR_RGB2HSV}
_FROM_SPACE = {"lab": cv2.COLOR_LAB2RGB, "hsv": cv2.COLOR_HSV2RGB}


def match_colors(image: np.ndarray, reference: np.ndarray, mode: ColorMode = "lab") -> np.ndarray:
    """Match the colour histogram of ``image`` to ``reference`` (Deforum ``maintain_colors``).

    ``mode`` is ``"none"`` (return a copy), ``"rgb"``, ``"hsv"`` or ``"lab"``
    (case-insensitive, so Deforum's ``"LAB"`` works).  ``reference`` may have a
    different size: only its histogram is used.

    >>> import numpy as np
    >>> dark = np.full((2, 2, 3), 10, np.uint8); bright = np.full((2, 2, 3), 200, np.uint8)
    >>> match_colors(dark, bright, "rgb")[0, 0].tolist()
    [200, 200, 200]
    """
    image = rgb_uint8(image, "image")
    reference = rgb_uint8(reference, "reference")
    if not isinstance(mode, str):
        raise TypeError(f"mode must be one of {', '.join(map(repr, COLOR_MODES))}; got {mode!r}")
    space = choice(mode.lower(), "mode", COLOR_MODES)
    if space == "none":
        return image.copy()

    from skimage.exposure import match_histograms  # lazy: keeps module import fast

    if space == "rgb":
        return _as_uint8(match_histograms(image, reference, channel_axis=-1))
    converted = cv2.cvtColor(image, _TO_SPACE[space])
    target = cv2.cvtColor(reference, _TO_SPACE[space])
    matched = _as_uint8(match_histograms(converted, target, channel_axis=-1))
    return cv2.cvtColor(matched, _FROM_SPACE[space])


def _as_uint8(values: np.ndarray) -> np.ndarray:
    if values.dtype == np.uint8:
        return values
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def add_noise(image: np.ndarray, amount: float, seed: int) -> np.ndarray:
    """Blend seeded Gaussian noise into ``image`` like Deforum's ``add_noise``.

    ``amount`` in ``[0, 1]`` is the blend weight of the noise picture (Deforum's
    ``noise_schedule`` value, typically ``0.02``).  Same ``seed`` -> same output.

    >>> import numpy as np
    >>> img = np.full((4, 4, 3), 128, np.uint8)
    >>> bool(np.array_equal(add_noise(img, 0.1, seed=7), add_noise(img, 0.1, seed=7)))
    True
    >>> bool(np.array_equal(add_noise(img, 0.0, seed=7), img))
    True
    """
    image = rgb_uint8(image)
    amount = finite_number(amount, "amount")
    if not 0.0 <= amount <= 1.0:
        raise ValueError(f"amount must be in [0, 1], got {amount}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    rng = np.random.default_rng(int(seed))
    normal = rng.standard_normal(image.shape, dtype=np.float32)
    noise = (np.clip(normal * 0.5 + 0.5, 0.0, 1.0) * 255.0).astype(np.uint8)
    return cv2.addWeighted(image, 1.0 - amount, noise, amount, 0.0)


def adjust_contrast(image: np.ndarray, factor: float) -> np.ndarray:
    """Scale all pixel values by ``factor`` like Deforum's contrast schedule.

    Deforum computes ``(prev_img * contrast).round().astype(np.uint8)``; this
    clips to ``[0, 255]`` before the cast so bright pixels saturate instead of
    wrapping around.

    >>> import numpy as np
    >>> adjust_contrast(np.array([[[0, 101, 200]]], np.uint8), 1.3)[0, 0].tolist()
    [0, 131, 255]
    """
    image = rgb_uint8(image)
    factor = finite_number(factor, "factor")
    if factor < 0:
        raise ValueError(f"factor must be >= 0, got {factor}")
    return np.clip(np.rint(image * factor), 0, 255).astype(np.uint8)
