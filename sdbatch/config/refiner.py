"""``refiner:`` in a recipe (generate's SDXL refiner) and the reference a job keeps; pure pydantic, no torch.

The recipe's model is :class:`Refiner` (``model``, ``switch_at``); a job keeps a :class:`RefinerRef` in
``job.params.refiner`` (identity: the model as written, its identity, ``switch_at``; omitted without a refiner,
so older ids stay). Planning and rendering are :mod:`sdbatch.stages.refiner`; :func:`refiner_fields` is what the
PNG infotext writes.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from .types import StrictModel


class Refiner(StrictModel):
    """``refiner:`` of a generate stage: the SDXL refiner model and where it takes over."""

    model: Annotated[str, Field(min_length=1)]
    switch_at: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.8  # A1111's default "Switch at"


class RefinerRef(BaseModel):
    """The refiner as a job uses it (identity): the model as the recipe wrote it, its identity, ``switch_at``."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    model: str
    identity: str  # ModelRef.identity(): source:id@revision
    switch_at: float


def refiner_fields(params: dict[str, Any]) -> list[tuple[str, Any]]:
    """A1111's infotext fields of a refined job: ``Refiner: <name> [<short hash>]``, ``Refiner switch at``."""
    refiner = params.get("refiner")
    if not isinstance(refiner, dict):
        return []
    revision = str(refiner.get("identity", "")).rpartition("@")[2]  # identity: source:id@revision
    name = str(refiner.get("model", "")).rstrip("/").split("@")[0].rsplit("/", 1)[-1]
    name = f"{name} [{revision[:10]}]" if revision else name
    return [("Refiner", name), ("Refiner switch at", refiner.get("switch_at"))]
