"""Small argument checks shared by the animation modules (private).

Every public function of :mod:`sdbatch.animation` validates its inputs with
these helpers so that a wrong shape or dtype fails with a one-line
``ValueError``/``TypeError`` naming the argument, instead of an opaque OpenCV
assertion deep inside ``cv2``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np


def rgb_uint8(image: object, name: str = "image") -> np.ndarray:
    """Return ``image`` if it is an ``HxWx3`` ``uint8`` array, else raise.

    >>> rgb_uint8(np.zeros((2, 3, 3), np.uint8)).shape
    (2, 3, 3)
    """
    if not isinstance(image, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ValueError(f"{name} must have dtype uint8, got {image.dtype}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"{name} must have shape (H, W, 3), got {image.shape}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"{name} must not be empty, got {image.shape}")
    return image


def same_size(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str) -> None:
    """Raise ``ValueError`` unless ``a`` and ``b`` share height and width."""
    if a.shape[:2] != b.shape[:2]:
        raise ValueError(
            f"{name_a} and {name_b} must have the same height and width, "
            f"got {a.shape[:2]} and {b.shape[:2]}"
        )


def flow_field(flow: object, name: str = "flow") -> np.ndarray:
    """Return ``flow`` as a finite ``float32`` ``HxWx2`` array, else raise."""
    if not isinstance(flow, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(flow).__name__}")
    if flow.ndim != 3 or flow.shape[2] != 2:
        raise ValueError(f"{name} must have shape (H, W, 2), got {flow.shape}")
    if not np.issubdtype(flow.dtype, np.floating):
        raise ValueError(f"{name} must be a float array, got {flow.dtype}")
    if not np.all(np.isfinite(flow)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return np.ascontiguousarray(flow, dtype=np.float32)


def finite_number(value: object, name: str) -> float:
    """Return ``value`` as a finite float; booleans and non-numbers are refused."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{name} must be finite, got {number}")
    return number


def choice(value: object, name: str, allowed: Iterable[str]) -> str:
    """Return ``value`` if it is one of ``allowed`` strings, else raise ``ValueError``."""
    options = tuple(allowed)
    if not isinstance(value, str) or value not in options:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, options))}; got {value!r}")
    return value
