"""One module per stage type, each with the same entry point::

    def render(jobs: list[Job], ctx: StageContext) -> Iterator[Rendered]

``jobs`` is a batch of jobs of one stage sharing a batch key (see ``Job.batch_key``); ``render`` yields
one :class:`Rendered` per output file. Modules are imported only when a stage runs, so validation and
planning never pull in torch.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

STAGE_MODULES = {
    "generate": "sdbatch.stages.generate",
    "img2img": "sdbatch.stages.img2img",
    "inpaint": "sdbatch.stages.inpaint",
    "restyle": "sdbatch.stages.restyle",
    "animate": "sdbatch.stages.animate",
    "interpolate": "sdbatch.stages.interpolate",
}


def stage_entry(stage_type: str) -> Callable:
    """The ``render`` function of a stage type."""
    return importlib.import_module(STAGE_MODULES[stage_type]).render


def params_from_json(stage_type: str, data: dict) -> Any:
    """A job's typed params rebuilt from a manifest record's ``params`` (the inverse of ``Job.params_json``)."""
    return dict(data)
