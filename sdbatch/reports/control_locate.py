"""``sdbatch reproduce`` of a ControlNet job: its recorded ControlNets and depth models as the job's aux models.

A record's ``params.controlnet`` holds each unit's model identity (and a depth preprocessor's depth model, a
controlnet_aux preprocessor's ``annotators`` folder); they are found again the way the base model is
(:func:`sdbatch.reports.locate.recorded_model`: a built-in, a local file or folder with the recorded sha256, a hub
commit). The control images are made again from the recorded
sources (each checked against its sha256) exactly as the run made them, and the saved
``<stage>/control/...`` images are what the record's ``controlnet`` entries point to.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any


def recorded_controlnets(params: dict[str, Any], bases: list[Path], recorded_model: Callable[..., Any]
                         ) -> dict[str, Any]:
    """``{"controlnet:<i>": ModelRef, "controlnet-depth:<i>": ModelRef, "controlnet-aux:<i>": ModelRef}`` of a
    record's ControlNet units (a controlnet_aux folder found by its sha256; a hub commit and ``--rehearse``'s
    random weights need no lookup: the render side reads the identity);
    ``recorded_model`` is :func:`sdbatch.reports.locate.recorded_model` (passed in: no import cycle)."""
    from ..sources.specs import parse_identity

    aux: dict[str, Any] = {}
    for i, unit in enumerate(u for u in params.get("controlnet") or () if isinstance(u, dict)):
        aux[f"controlnet:{i}"] = recorded_model(*parse_identity(str(unit.get("identity", ""))), bases,
                                                what="ControlNet")
        if isinstance(unit.get("depth_model"), str):
            aux[f"controlnet-depth:{i}"] = recorded_model(*parse_identity(unit["depth_model"]), bases,
                                                          what="depth model")
        annotators = unit.get("annotators")
        if isinstance(annotators, str) and parse_identity(annotators)[2] in ("folder", "file"):
            aux[f"controlnet-aux:{i}"] = recorded_model(*parse_identity(annotators), bases,
                                                        what="controlnet_aux weights folder")
    return aux
