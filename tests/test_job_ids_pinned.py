"""The job ids of every example recipe are a contract: a re-run of a finished folder must find its jobs done.

``tests/data/pinned_job_ids.json`` was written before the typed-core restructuring; any change to how ids
are computed shows up here. Regenerate only for a deliberate, documented id change:
``python tests/test_job_ids_pinned.py --write``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PINNED = REPO / "tests" / "data" / "pinned_job_ids.json"
RECIPES = sorted((REPO / "recipes").glob("*.yaml"))


def plan_ids(recipe: Path, rehearse: bool) -> list[list[str]]:
    from sdbatch.config.recipe import load_recipe
    from sdbatch.core.plan import build_plan
    from sdbatch.io.hashing import HashCache

    loaded = load_recipe(recipe)
    plan = build_plan(loaded, REPO / "outputs" / loaded.recipe.name, rehearse=rehearse, hashes=HashCache(None, {}))
    return [[job.job_id, job.output] for job in plan.jobs]


def current() -> dict[str, list[list[str]]]:
    return {f"{recipe.name}{' --rehearse' if rehearse else ''}": plan_ids(recipe, rehearse)
            for recipe in RECIPES for rehearse in (False, True)}


@pytest.fixture(autouse=True)
def _empty_hub_cache(tmp_path, monkeypatch):
    # a hub model already in the user's cache resolves to its commit; keep every hub id unresolved
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))


@pytest.mark.parametrize("recipe", [r.name for r in RECIPES])
@pytest.mark.parametrize("rehearse", [False, True])
def test_example_recipe_job_ids_are_pinned(recipe, rehearse):
    pinned = json.loads(PINNED.read_text())
    key = f"{recipe}{' --rehearse' if rehearse else ''}"
    assert key in pinned, f"no pinned ids for {key}: a new example recipe? run this file with --write"
    assert plan_ids(REPO / "recipes" / recipe, rehearse) == pinned[key]


if __name__ == "__main__" and "--write" in sys.argv:
    import tempfile

    os.environ["HF_HUB_CACHE"] = tempfile.mkdtemp()
    PINNED.write_text(json.dumps(current(), indent=1) + "\n")
    print(f"wrote {PINNED}")
