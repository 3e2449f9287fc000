"""``ip_adapter:`` and ``controlnet:`` on the image stages (generate, img2img, inpaint): both keys and their planning.

A stage config takes them by listing :class:`ImageConditioning` first among its bases::

    class Img2ImgStage(ImageConditioning, ImageToImageConfig): ...

Its ``plan_hook`` runs the stage's own checks (``super().plan_hook``), then plans the adapters
(:func:`sdbatch.stages.ipadapter_config.plan_ip_adapter`) and the ControlNets
(:func:`sdbatch.stages.control.plan_control`; a stage with an image input, ``READS == "image"``, is the units'
default image). Never imports torch.
"""

from __future__ import annotations

from typing import Any

from ..config.control import ControlUnit
from ..config.ipadapter import IpAdapter
from ..config.types import StrictModel
from .control import plan_control
from .ipadapter_config import plan_ip_adapter


class ImageConditioning(StrictModel):
    """Mixin of a :class:`~sdbatch.config.stage.StageConfig`: image prompts and ControlNets."""

    ip_adapter: list[IpAdapter] | None = None  # image prompts (sdbatch.stages.ipadapter_config)
    controlnet: list[ControlUnit] | None = None  # ControlNets (sdbatch.stages.control)

    def plan_hook(self, planner: Any, fixed: dict[str, Any]) -> None:
        super().plan_hook(planner, fixed)  # type: ignore[misc]  # the StageConfig's own checks
        plan_ip_adapter(planner, self, fixed)  # fixed["ip_adapter"]: the adapters' and images' sha256
        reads_input = getattr(self, "READS", None) == "image"
        plan_control(self, planner, fixed, reads_input=reads_input)  # type: ignore[arg-type]  # fixed["controlnet"]
