"""Pure numpy/OpenCV animation helpers (Deforum-compatible), no torch.

* :mod:`.schedule` -- keyframe schedules ``"0:(1.0), 30:(1.05)"`` (imported eagerly, pure Python)
* :mod:`.warp2d` -- Deforum's 2D zoom/rotate/translate warp
* :mod:`.warp3d` -- depth-based 3D camera reprojection
* :mod:`.color` -- colour coherence, noise, contrast
* :mod:`.flow` -- optical flow warping for video restyle coherence
* :mod:`.seeds` -- Deforum ``seed_behavior`` sequences

Importing this package is cheap: the OpenCV/scikit-image backed names are
loaded on first attribute access (PEP 562), so recipe validation can use the
schedule functions without paying for ``cv2``.

>>> from sdbatch.animation import evaluate_schedule
>>> evaluate_schedule("0:(1), 2:(2)", 3)
[1.0, 1.5, 2.0]
"""

from __future__ import annotations

import importlib
from typing import Any

from .schedule import ScheduleError, as_schedule_text, evaluate_schedule, validate_schedule

_LAZY = {
    "matrix_2d": "warp2d",
    "warp_2d": "warp2d",
    "warp_3d": "warp3d",
    "reprojection_maps": "warp3d",
    "match_colors": "color",
    "add_noise": "color",
    "adjust_contrast": "color",
    "optical_flow": "flow",
    "warp_by_flow": "flow",
    "consistency_mask": "flow",
    "warp_previous": "flow",
    "blend_coherent": "flow",
    "next_seed": "seeds",
    "frame_seeds": "seeds",
    "SEED_BEHAVIORS": "seeds",
}

__all__ = [
    "SEED_BEHAVIORS",
    "ScheduleError",
    "add_noise",
    "adjust_contrast",
    "as_schedule_text",
    "blend_coherent",
    "consistency_mask",
    "evaluate_schedule",
    "frame_seeds",
    "match_colors",
    "matrix_2d",
    "next_seed",
    "optical_flow",
    "reprojection_maps",
    "validate_schedule",
    "warp_2d",
    "warp_3d",
    "warp_by_flow",
    "warp_previous",
]


def __getattr__(name: str) -> Any:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = importlib.import_module(f"{__name__}.{module_name}")
    return getattr(module, name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
