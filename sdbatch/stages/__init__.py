"""The stage types: one module each, registered here by one line.

A stage module defines ``CONFIG`` (its Pydantic config model: the class the JSON Schema names, a subclass of
:class:`sdbatch.config.stage.StageConfig` with its planning hooks) and the render entry::

    def render(jobs: list[Job], ctx: StageContext) -> Iterator[Rendered]

``jobs`` is a batch of jobs of one stage sharing a batch key (``Job.batch_key``); ``render`` yields one
:class:`~sdbatch.stages.base.Rendered` per output file. Stage modules import torch and diffusers only inside
``render``, so validation and planning (which read ``CONFIG``) never pull them in.
"""

from __future__ import annotations

import importlib
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from ..config.stage import StageConfig

#: stage type -> module. Adding a stage type is one module and one line here (or :func:`register_stage`).
STAGE_MODULES: dict[str, str] = {
    "generate": "sdbatch.stages.generate",
    "img2img": "sdbatch.stages.img2img",
    "inpaint": "sdbatch.stages.inpaint",
    "restyle": "sdbatch.stages.restyle",
    "animate": "sdbatch.stages.animate",
    "interpolate": "sdbatch.stages.interpolate",
    "upscale": "sdbatch.stages.upscale",
}


def register_stage(stage_type: str, module: str) -> None:
    """Add (or replace) a stage type at run time, e.g. a plugin's; the recipe model is rebuilt on next use."""
    STAGE_MODULES[stage_type] = module


def stage_configs() -> dict[str, type[StageConfig]]:
    """stage type -> its config model, in registry order."""
    return dict(_configs(tuple(STAGE_MODULES.items())))


@lru_cache(maxsize=8)
def _configs(modules: tuple[tuple[str, str], ...]) -> tuple[tuple[str, type[StageConfig]], ...]:
    return tuple((name, importlib.import_module(module).CONFIG) for name, module in modules)


def stage_config(stage_type: str) -> type[StageConfig]:
    return stage_configs()[stage_type]


def stage_entry(stage_type: str) -> Callable:
    """The ``render`` function of a stage type."""
    return importlib.import_module(STAGE_MODULES[stage_type]).render


def params_from_json(stage_type: str, data: dict) -> Any:
    """A job's typed params rebuilt from a manifest record's ``params`` (the inverse of ``Job.params_json``)."""
    from ..core.params import params_from_json as build

    return build(stage_config(stage_type), data)
