"""Depth maps for 3D animation: any transformers depth-estimation model, in Deforum's depth units.

A depth model is loaded with the standard transformers classes, ``AutoModelForDepthEstimation`` and
``AutoImageProcessor``, from a local folder, a built-in (``sdbatch/tiny-depth``, built offline on first use)
or a hub snapshot (already cached, or fetched once), found by :mod:`sdbatch.sources.specs` and loaded under
its pickle policy (``.safetensors`` weights only, unless ``allow_pickle``)::

    model, processor = load_depth_model("depth-anything/Depth-Anything-V2-Small-hf")
    depth = estimate_depth(model, processor, rgb)      # rgb: HxWx3 uint8 -> HxW float64

Units (what :func:`sdbatch.animation.warp_3d` expects): Deforum's depth units, in which the image plane
spans ``[-1, 1]`` and larger is farther. Deforum converts MiDaS disparity ``d`` (DPT-Large, larger =
nearer, roughly ``0 .. 40``) with ``(50 - d) / 19``. Here:

* **relative** models (Depth Anything's default, DPT/MiDaS: affine-invariant *disparity* of arbitrary
  scale) are min-max normalised per frame to ``n`` in ``[0, 1]`` (1 = nearest), read as a MiDaS disparity
  ``40 n`` and converted the same way: ``depth = (50 - 40 n) / 19``. So the nearest pixel of every frame
  lies at ``10/19 ~ 0.53`` and the farthest at ``50/19 ~ 2.63`` units. A flat prediction (no contrast at
  all) gives the middle depth ``30/19`` everywhere.
* **metric** models (``depth_estimation_type: metric``, ZoeDepth, GLPN, DepthPro) predict metres, used as
  is -- as Deforum does with ZoeDepth -- floored at ``METRIC_MIN_DEPTH``.

The map is resized to the frame's size with the processor's ``post_process_depth_estimation`` (bicubic, as
Deforum resizes MiDaS output) and is always finite and positive.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import numpy as np

from ..core.job import ModelRef
from ..errors import ModelUnavailable, one_line
from ..sources.specs import locate_model, model_folder
from ..sources.weights import ensure_loadable, safetensors_only

__all__ = [
    "METRIC_MIN_DEPTH",
    "MIDAS_DISPARITY_RANGE",
    "depth_kind",
    "depth_model_folder",
    "estimate_depth",
    "load_depth_model",
    "to_deforum_depth",
]

#: A normalised relative prediction is read as a MiDaS (DPT-Large) disparity in ``[0, this]``.
MIDAS_DISPARITY_RANGE = 40.0
#: Metric predictions (metres) are floored here so that no point sits on the camera.
METRIC_MIN_DEPTH = 0.05
_METRIC_MODEL_TYPES = {"zoedepth", "glpn", "depth_pro"}


def depth_model_folder(source: ModelRef | str | Path) -> Path:
    """The local folder of a depth model: a :class:`ModelRef`, a built-in name, a folder, or a hub id."""
    ref = source if isinstance(source, ModelRef) else locate_model(str(source), Path.cwd())
    return model_folder(ref, pipeline=False)


def load_depth_model(source: ModelRef | str | Path, device: str = "cpu", dtype: Any = None,
                     allow_pickle: bool = False) -> tuple[Any, Any]:
    """``(model, processor)`` of a transformers depth-estimation model, in eval mode on ``device``.

    Any model ``AutoModelForDepthEstimation`` knows works (Depth Anything V1/V2, DPT, ZoeDepth, GLPN, ...).
    Raises :class:`sdbatch.errors.ModelUnavailable` with one line when it cannot be loaded (pickle weights
    among them, unless ``allow_pickle``).
    """
    import torch
    from transformers import AutoImageProcessor, AutoModelForDepthEstimation

    folder = depth_model_folder(source)
    name = source.id if isinstance(source, ModelRef) else str(source)
    ensure_loadable(folder, allow_pickle, f"depth model {name!r}")
    try:
        processor = AutoImageProcessor.from_pretrained(str(folder))
        model = AutoModelForDepthEstimation.from_pretrained(str(folder), dtype=dtype or torch.float32,
                                                            use_safetensors=safetensors_only(allow_pickle))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        reason = one_line(str(exc), 400) or type(exc).__name__  # the whole reason on one line, never cut mid-word
        raise ModelUnavailable(f"depth model {name!r} could not be loaded: {reason}") from None
    model.to(device)
    model.eval()
    return model, processor


def depth_kind(model: Any) -> str:
    """``"metric"`` (metres) or ``"relative"`` (disparity, larger = nearer) for a loaded depth model."""
    config = getattr(model, "config", None)
    kind = getattr(config, "depth_estimation_type", None)
    if kind in ("relative", "metric"):
        return kind
    return "metric" if getattr(config, "model_type", None) in _METRIC_MODEL_TYPES else "relative"


def to_deforum_depth(raw: np.ndarray, kind: str = "relative") -> np.ndarray:
    """Convert a model's prediction (``HxW``) to Deforum depth units (see the module docstring).

    >>> to_deforum_depth(np.array([[0.0, 2.0], [4.0, 4.0]])).round(4).tolist()
    [[2.6316, 1.5789], [0.5263, 0.5263]]
    >>> to_deforum_depth(np.array([[0.0, 3.0]]), "metric").tolist()
    [[0.05, 3.0]]
    """
    values = np.nan_to_num(np.asarray(raw, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    if kind == "metric":
        return np.maximum(values, METRIC_MIN_DEPTH)
    if kind != "relative":
        raise ValueError(f"kind must be 'relative' or 'metric', got {kind!r}")
    low, high = float(values.min()), float(values.max())
    span = high - low
    if not span > 1e-6 * max(abs(low), abs(high)):  # flat (up to float noise): no depth contrast at all
        nearness = np.full(values.shape, 0.5)
    else:
        nearness = (values - low) / span
    return (50.0 - MIDAS_DISPARITY_RANGE * nearness) / 19.0


def estimate_depth(model: Any, processor: Any, rgb: Any) -> np.ndarray:
    """Depth of an ``HxWx3`` uint8 RGB frame (or PIL image): ``HxW`` float64 in Deforum's depth units."""
    import torch
    from PIL import Image

    image = rgb if isinstance(rgb, Image.Image) else Image.fromarray(np.asarray(rgb, dtype=np.uint8))
    image = image.convert("RGB")
    width, height = image.size
    inputs = processor(images=image, return_tensors="pt")
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    inputs = {k: (v.to(device, dtype=dtype) if v.is_floating_point() else v.to(device)) for k, v in inputs.items()
              if hasattr(v, "to")}
    with torch.no_grad():
        outputs = model(**inputs)
    predicted = _resized_prediction(processor, outputs, height, width)
    return to_deforum_depth(predicted, depth_kind(model))


def _resized_prediction(processor: Any, outputs: Any, height: int, width: int) -> np.ndarray:
    import torch

    post = getattr(processor, "post_process_depth_estimation", None)
    depth = None
    if post is not None:
        kwargs: dict[str, Any] = {"target_sizes": [(height, width)]}
        try:
            if "source_sizes" in inspect.signature(post).parameters:
                kwargs["source_sizes"] = [(height, width)]  # ZoeDepth: removes its reflect padding
            depth = post(outputs, **kwargs)[0]["predicted_depth"]
        except (TypeError, ValueError, KeyError):
            depth = None
    if depth is None:
        predicted = outputs.predicted_depth
        if predicted.dim() == 3:
            predicted = predicted.unsqueeze(1)
        depth = torch.nn.functional.interpolate(predicted.float(), size=(height, width), mode="bicubic",
                                                align_corners=False)[0, 0]
    depth = depth.detach().float().cpu().numpy().astype(np.float64)
    depth = np.squeeze(depth)
    if depth.shape != (height, width):  # a processor that ignored target_sizes
        import cv2

        depth = cv2.resize(depth, (width, height), interpolation=cv2.INTER_CUBIC)
    return depth
