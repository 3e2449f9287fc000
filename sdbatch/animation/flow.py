"""Optical-flow warping for temporally coherent video restyling (OpenCV DIS).

Flow convention: a flow field ``F`` (``HxWx2`` float32, ``F[y, x] = (dx, dy)``)
*from* image ``A`` *to* image ``B`` says where each pixel of ``A`` is in ``B``:
``A[y, x] ~= B[y + dy, x + dx]``.  That is what OpenCV's ``DISOpticalFlow.calc(A,
B)`` returns, and it is exactly the map needed for **backward warping**: with a
flow from the current frame to the previous one, ``warp_by_flow(previous,
flow)`` pulls every pixel of the current frame from where it was before.

Typical restyle step (``prev_styled`` is the previous stylised output)::

    warped, valid = warp_previous(prev_styled, prev_source, cur_source)
    init_image = blend_coherent(cur_source, warped, valid, flow_weight=0.6)

>>> import numpy as np
>>> still = np.zeros((8, 8, 3), np.uint8)
>>> bool(np.array_equal(warp_by_flow(still, np.zeros((8, 8, 2), np.float32)), still))
True
"""

from __future__ import annotations

import cv2
import numpy as np

from ._checks import finite_number, flow_field, rgb_uint8, same_size

__all__ = ["blend_coherent", "consistency_mask", "optical_flow", "warp_by_flow", "warp_previous"]


def _pixel_grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    cols, rows = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
    return cols, rows


def optical_flow(prev_rgb: np.ndarray, next_rgb: np.ndarray) -> np.ndarray:
    """Dense flow from ``prev_rgb`` to ``next_rgb`` (DIS, medium preset, on grayscale).

    Returns ``HxWx2`` float32 with ``prev[y, x] ~= next[y + dy, x + dx]``.

    >>> import numpy as np
    >>> img = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    >>> optical_flow(img, img).shape
    (32, 32, 2)
    """
    prev_rgb = rgb_uint8(prev_rgb, "prev_rgb")
    next_rgb = rgb_uint8(next_rgb, "next_rgb")
    same_size(prev_rgb, next_rgb, "prev_rgb", "next_rgb")
    prev_gray = cv2.cvtColor(prev_rgb, cv2.COLOR_RGB2GRAY)
    next_gray = cv2.cvtColor(next_rgb, cv2.COLOR_RGB2GRAY)
    dis = cv2.DISOpticalFlow.create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    flow = dis.calc(prev_gray, next_gray, None)  # type: ignore[call-overload]  # None = no initial flow
    return np.asarray(flow, dtype=np.float32)


def warp_by_flow(image: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """Backward-warp ``image``: ``out[y, x] = image[y + dy, x + dx]`` (bilinear, replicate border).

    ``image`` is ``HxW`` or ``HxWxC`` (any dtype ``cv2.remap`` supports) with
    the same height and width as ``flow``.

    >>> import numpy as np
    >>> img = np.arange(12, dtype=np.uint8).reshape(3, 4)
    >>> shift = np.zeros((3, 4, 2), np.float32); shift[..., 0] = 1   # look one pixel right
    >>> warp_by_flow(img, shift)[0].tolist()
    [1, 2, 3, 3]
    """
    if not isinstance(image, np.ndarray) or image.ndim not in (2, 3) or min(image.shape[:2]) < 1:
        raise ValueError(f"image must be an (H, W) or (H, W, C) numpy array, got {getattr(image, 'shape', image)}")
    flow = flow_field(flow)
    same_size(image, flow, "image", "flow")
    cols, rows = _pixel_grid(*flow.shape[:2])
    return cv2.remap(
        image, cols + flow[..., 0], rows + flow[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )


def consistency_mask(forward_flow: np.ndarray, backward_flow: np.ndarray, threshold: float = 1.0) -> np.ndarray:
    """Forward-backward flow check: ``True`` where a pixel's motion is reliable.

    ``forward_flow`` goes from frame ``A`` to frame ``B`` and ``backward_flow``
    from ``B`` to ``A``; the mask is over ``A``'s pixels.  A pixel ``p`` is
    consistent when its target ``q = p + forward(p)`` lies inside the frame and
    ``|forward(p) + backward(q)| <= threshold`` pixels (``backward`` sampled
    bilinearly at ``q``).  Occluded or mis-tracked pixels fail the check.

    >>> import numpy as np
    >>> fwd = np.zeros((4, 6, 2), np.float32); fwd[..., 0] = 2
    >>> bwd = np.zeros((4, 6, 2), np.float32); bwd[..., 0] = -2
    >>> consistency_mask(fwd, bwd)[0].tolist()   # the last 2 columns move out of frame
    [True, True, True, True, False, False]
    """
    forward_flow = flow_field(forward_flow, "forward_flow")
    backward_flow = flow_field(backward_flow, "backward_flow")
    if forward_flow.shape != backward_flow.shape:
        raise ValueError(
            f"forward_flow and backward_flow must have the same shape, got {forward_flow.shape} and {backward_flow.shape}"
        )
    threshold = finite_number(threshold, "threshold")
    if threshold <= 0:
        raise ValueError(f"threshold must be > 0, got {threshold}")
    height, width = forward_flow.shape[:2]
    cols, rows = _pixel_grid(height, width)
    target_x = cols + forward_flow[..., 0]
    target_y = rows + forward_flow[..., 1]
    inside = (target_x >= 0) & (target_x <= width - 1) & (target_y >= 0) & (target_y <= height - 1)
    back_at_target = cv2.remap(backward_flow, target_x, target_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    round_trip = np.hypot(*np.moveaxis(forward_flow + back_at_target, -1, 0))
    return inside & (round_trip <= threshold)


def warp_previous(
    prev_styled: np.ndarray, prev_source: np.ndarray, cur_source: np.ndarray, threshold: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Carry the previous stylised frame onto the current frame.

    Computes the flow from ``cur_source`` to ``prev_source`` (for each pixel of
    the current frame: where it was in the previous one), backward-warps
    ``prev_styled`` with it, and returns ``(warped, valid_mask)`` where
    ``valid_mask`` is the forward-backward :func:`consistency_mask` over the
    current frame (``False`` where the pixel was occluded or out of frame).

    >>> import numpy as np
    >>> img = np.random.default_rng(1).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    >>> warped, valid = warp_previous(img, img, img)
    >>> warped.shape, valid.dtype.name
    ((16, 16, 3), 'bool')
    """
    prev_styled = rgb_uint8(prev_styled, "prev_styled")
    prev_source = rgb_uint8(prev_source, "prev_source")
    cur_source = rgb_uint8(cur_source, "cur_source")
    same_size(prev_styled, prev_source, "prev_styled", "prev_source")
    same_size(prev_source, cur_source, "prev_source", "cur_source")
    cur_to_prev = optical_flow(cur_source, prev_source)
    prev_to_cur = optical_flow(prev_source, cur_source)
    warped = warp_by_flow(prev_styled, cur_to_prev)
    return warped, consistency_mask(cur_to_prev, prev_to_cur, threshold)


def blend_coherent(
    cur_source: np.ndarray, warped_prev: np.ndarray, valid_mask: np.ndarray, flow_weight: float
) -> np.ndarray:
    """Blend the warped previous output into the current frame where the flow is valid.

    ``out = (1 - w) * cur + w * warped`` where ``valid_mask`` is ``True``,
    ``out = cur`` elsewhere (occlusions), rounded to ``uint8``; ``w =
    flow_weight`` in ``[0, 1]``.

    >>> import numpy as np
    >>> cur = np.full((1, 2, 3), 100, np.uint8); prev = np.full((1, 2, 3), 200, np.uint8)
    >>> blend_coherent(cur, prev, np.array([[True, False]]), 0.25)[0, :, 0].tolist()
    [125, 100]
    """
    cur_source = rgb_uint8(cur_source, "cur_source")
    warped_prev = rgb_uint8(warped_prev, "warped_prev")
    same_size(cur_source, warped_prev, "cur_source", "warped_prev")
    if not isinstance(valid_mask, np.ndarray) or valid_mask.shape != cur_source.shape[:2]:
        raise ValueError(
            f"valid_mask must be an array of shape {cur_source.shape[:2]}, got {getattr(valid_mask, 'shape', valid_mask)}"
        )
    weight = finite_number(flow_weight, "flow_weight")
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"flow_weight must be in [0, 1], got {weight}")
    cur = cur_source.astype(np.float32)
    mixed = (1.0 - weight) * cur + weight * warped_prev.astype(np.float32)
    out = np.where(valid_mask.astype(bool)[..., None], mixed, cur)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
