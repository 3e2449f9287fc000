"""The recipe JSON Schema: ``sdbatch schema`` prints a valid draft 2020-12 schema, the committed copy in
docs/ (which editors use through each recipe's yaml-language-server modeline) is up to date, and every
example recipe meets it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import run_cli
from jsonschema import Draft202012Validator

REPO = Path(__file__).resolve().parents[1]
DOCS_SCHEMA = REPO / "docs" / "recipe.schema.json"
RECIPES = sorted((REPO / "recipes").glob("*.yaml"))
MODELINE = "# yaml-language-server: $schema=../docs/recipe.schema.json"


@pytest.fixture(scope="module")
def printed_schema() -> dict:
    result = run_cli("schema", timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_schema_is_valid_draft_2020_12(printed_schema):
    Draft202012Validator.check_schema(printed_schema)
    assert printed_schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert "stages" in printed_schema["properties"]


def test_committed_schema_is_up_to_date(printed_schema):
    committed = json.loads(DOCS_SCHEMA.read_text(encoding="utf-8"))
    assert committed == printed_schema, (
        "docs/recipe.schema.json is stale: regenerate it with  sdbatch schema > docs/recipe.schema.json")


def test_there_are_example_recipes():
    names = {p.name for p in RECIPES}
    assert {"chain.yaml", "sweep.yaml", "inpaint.yaml"} <= names


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.name for p in RECIPES])
def test_example_recipe_meets_the_schema(printed_schema, recipe):
    text = recipe.read_text(encoding="utf-8")
    assert text.splitlines()[0] == MODELINE, f"{recipe.name}: the first line must be the schema modeline"
    data = yaml.safe_load(text)
    errors = sorted(Draft202012Validator(printed_schema).iter_errors(data), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{recipe.name}: {'.'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}"
                                 for e in errors)


def test_schema_rejects_a_broken_recipe(printed_schema):
    validator = Draft202012Validator(printed_schema)
    assert not list(validator.iter_errors({"model": "m", "stages": [{"name": "a", "type": "generate",
                                                                        "prompt": "x"}]}))
    assert list(validator.iter_errors({"model": "m", "stages": [{"name": "a", "type": "generate"}]}))  # no prompt
    assert list(validator.iter_errors({"model": "m", "stages": [{"name": "a", "type": "nope", "prompt": "x"}]}))
    assert list(validator.iter_errors({"model": "m", "stages": [{"name": "a", "type": "img2img", "input": "x",
                                                                "strength": 2}]}))
