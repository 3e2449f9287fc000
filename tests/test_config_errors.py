"""How Pydantic's errors become recipe problems: one line ``file:line: field.path: message`` per mistake.

The mapping reads only the error data Pydantic documents (``loc``, ``type``, ``ctx``, ``input``) and walks the
recipe model to tell field names from union-branch tags, so these pin each union case (seeds as a list or
``{start, count}``, a sweep value or list, the stage type discriminator, values merged from ``defaults``) and
the "did you mean" hints, through the CLI as a user sees them and against toy models.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import pytest
from conftest import run_cli
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    StrictInt,
    Tag,
    ValidationError,
)

from sdbatch.config.errors import pydantic_problems
from sdbatch.config.recipe import parse_recipe
from sdbatch.config.yamlio import load_yaml
from sdbatch.errors import RecipeError

HEAD = "model: sdbatch/tiny-sd\n"
GEN = "stages:\n  - name: a\n    type: generate\n    prompt: x\n"


def problems(text: str) -> list[str]:
    """The problem lines of a recipe text, without the file name."""
    with pytest.raises(RecipeError) as info:
        parse_recipe(HEAD + text, Path("r.yaml"))
    return [line.removeprefix("r.yaml:") for line in str(info.value).splitlines()]


# ------------------------------------------------------------------------ union cases of the recipe
SCHEDULERS = ("default, ddim, euler, euler-a, dpmpp-2m, dpmpp-2m-karras, dpmpp-sde-karras, unipc, lms, pndm, "
              "heun, lcm")
STAGE_TYPES = "generate, img2img, inpaint, restyle, animate, interpolate, upscale"
TWO_STAGES = "stages:\n  - {name: a, type: generate, prompt: x}\n  - name: b\n    type: img2img\n    input: a\n"
ANIMATE = "stages:\n  - name: a\n    type: animate\n    frames: 3\n"
UNION_CASES = [
    ("seeds-list", GEN + "    seeds: [1, 2.5]\n", ["6: stages[0].seeds[1]: Input should be a valid integer"]),
    ("seeds-range-missing", GEN + "    seeds: {start: 3}\n", ["6: stages[0].seeds.count: required"]),
    ("seeds-range-fields", GEN + "    seeds:\n      start: 3\n      count: 0\n      strat: 1\n",
     ["8: stages[0].seeds.count: Input should be greater than 0",
      "9: stages[0].seeds.strat: unknown key 'strat' (did you mean 'start'?)"]),
    ("seeds-neither", GEN + "    seeds: abc\n",
     ["6: stages[0].seeds: Input should be a valid list or a mapping {start, count}"]),
    ("sweep-value", GEN + "    guidance: 200\n", ["6: stages[0].guidance: Input should be less than or equal to 100"]),
    ("sweep-list", GEN + "    guidance:\n      - 3\n      - 200\n",
     ["8: stages[0].guidance[1]: Input should be less than or equal to 100"]),
    ("sweep-enum-value", GEN + "    scheduler: eulr-a\n",
     [f"6: stages[0].scheduler: 'eulr-a' is not one of {SCHEDULERS} (did you mean 'euler-a'?)"]),
    ("sweep-enum-list", GEN + "    scheduler: [euler, dpmpp-2m-karas]\n",
     [f"6: stages[0].scheduler[1]: 'dpmpp-2m-karas' is not one of {SCHEDULERS} (did you mean 'dpmpp-2m-karras'?)"]),
    ("literal-or-int", GEN + "    batch_size: aut\n",
     ["6: stages[0].batch_size: Input should be 'auto' or a valid integer (did you mean 'auto'?)"]),
    ("literal-or-int-range", GEN + "    batch_size: 0\n", ["6: stages[0].batch_size: Input should be greater than 0"]),
    ("discriminated-field", TWO_STAGES + "    strength: 2\n",
     ["7: stages[1].strength: Input should be less than or equal to 1"]),
    ("discriminated-model-check", ANIMATE,
     ["3: stages[0]: give either 'prompt' or 'prompts' ({frame: prompt, ...})"]),
    ("discriminator-unknown", "stages:\n  - name: a\n    type: outpaint\n",
     [f"4: stages[0].type: unknown stage type 'outpaint' (expected one of: {STAGE_TYPES})"]),
    ("discriminator-missing", "stages:\n  - name: a\n    prompt: x\n",
     [f"3: stages[0]: missing 'type' (one of: {STAGE_TYPES})"]),
    ("nested-model", ANIMATE + "    prompt: x\n    motion:\n      zom: 1.1\n",
     ["8: stages[0].motion.zom: unknown key 'zom' (did you mean 'zoom'?)"]),
    ("dict-key", ANIMATE + "    prompts:\n      first: a\n",
     ["7: stages[0].prompts.first: Input should be a valid integer"]),
    ("shorthand-list", GEN + "    loras:\n      - 3\n      - {path: a.safetensors, wieght: 2}\n",
     ["7: stages[0].loras[0]: Input should be a mapping {path, weight}",
      "8: stages[0].loras[1].wieght: unknown key 'wieght' (did you mean 'weight'?)"]),
    # a value merged from defaults: reported once, where it was written
    ("defaults-sweep", "defaults:\n  guidance: [3, 200]\n" + GEN,
     ["3: defaults.guidance[1]: Input should be less than or equal to 100"]),
    ("defaults-range", "defaults:\n  seeds: {count: 0}\n" + GEN,
     ["3: defaults.seeds.count: Input should be greater than 0"]),
    ("defaults-only-wrong-for-the-stage",
     "defaults:\n  seeds: [5]\nstages:\n  - {name: a, type: interpolate, prompt: x, frames: 4}\n",
     ["3: stages[0].seeds (from defaults.seeds): List should have at least 2 items after validation, not 1"]),
    ("yaml-merge-key", "base: &b {guidance: 200}\nstages:\n  - name: a\n    type: generate\n    <<: *b\n"
     + "    prompt: x\n",
     ["2: stages[0].guidance: Input should be less than or equal to 100", "2: base: unknown key 'base'"]),
]


@pytest.mark.parametrize("text,expected", [c[1:] for c in UNION_CASES], ids=[c[0] for c in UNION_CASES])
def test_union_cases_map_to_the_field_the_user_wrote(text, expected):
    assert problems(text) == expected


# ------------------------------------------------------------------------ did you mean, via the CLI
def test_did_you_mean_and_automatic1111_names_through_the_cli(tmp_path):
    written = [
        ("cfg_scale: 7", ("cfg_scale: unknown key 'cfg_scale' (AUTOMATIC1111's name; here it is 'guidance', "
                         "under 'defaults:' or on a stage)")),
        ("steps: 20", "steps: unknown key 'steps' (it goes under 'defaults:' or on a stage)"),
        ("stages:", None),
        ("  - name: a", None),
        ("    type: txt2img",
         "stages[0].type: unknown stage type 'txt2img' (AUTOMATIC1111's name; here it is 'generate')"),
        ("    prompt: x", None),
        ("  - name: b", "stages[1].prompt: required"),
        ("    type: generate", None),
        ("    promt: a fox", "stages[1].promt: unknown key 'promt' (did you mean 'prompt'?)"),
        ("    negativ_prompt: blurry",
         "stages[1].negativ_prompt: unknown key 'negativ_prompt' (did you mean 'negative_prompt'?)"),
        ("    cfg_scale: 7",
         "stages[1].cfg_scale: unknown key 'cfg_scale' (AUTOMATIC1111's name; here it is 'guidance')"),
        ("    sampler: euler",
         "stages[1].sampler: unknown key 'sampler' (AUTOMATIC1111's name; here it is 'scheduler')"),
        ("    sampler_name: euler",
         "stages[1].sampler_name: unknown key 'sampler_name' (AUTOMATIC1111's name; here it is 'scheduler')"),
        ("    negative: ugly",
         "stages[1].negative: unknown key 'negative' (AUTOMATIC1111's name; here it is 'negative_prompt')"),
        ("    batch_count: 4", ("stages[1].batch_count: unknown key 'batch_count' "
                               "(AUTOMATIC1111's name; here it is 'seeds: {start, count}')")),
        ("    denoising_strength: 0.5", ("stages[1].denoising_strength: unknown key 'denoising_strength' "
                                        "(AUTOMATIC1111's name; here it is 'strength', for img2img, inpaint, "
                                        "restyle, animate stages, or here under 'hires:')")),
        ("    scheduler: eulr-a",
         f"stages[1].scheduler: 'eulr-a' is not one of {SCHEDULERS} (did you mean 'euler-a'?)"),
        ("  - name: c", None),
        ("    type: img2imgg", "stages[2].type: unknown stage type 'img2imgg' (did you mean 'img2img'?)"),
        ("    input: a", None),
    ]
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(HEAD + "".join(text + "\n" for text, _ in written))
    result = run_cli("validate", recipe, cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    expected = [f"{recipe}:{n}: {message}" for n, (_, message) in enumerate(written, start=2) if message]
    assert result.stderr.strip().splitlines() == expected


def test_img2img_names_fix_up_to_a_valid_recipe(tmp_path):
    """Following the hints gives a recipe that validates."""
    recipe = tmp_path / "good.yaml"
    recipe.write_text(HEAD + "defaults: {guidance: 7}\nstages:\n  - name: a\n    type: generate\n    prompt: a fox\n"
                      "    negative_prompt: blurry\n    scheduler: euler-a\n    seeds: {start: 0, count: 4}\n")
    result = run_cli("validate", recipe, cwd=tmp_path)
    assert result.returncode == 0, result.stderr


def test_new_fields_are_suggested_without_a_list_to_keep(tmp_path):
    """Valid names come from the model the error is in: a typo of any field of the animate stage is caught."""
    assert problems(ANIMATE + "    prompt: x\n    colour_coherence: lab\n    borders: wrap\n") == [
        "7: stages[0].colour_coherence: unknown key 'colour_coherence' (did you mean 'color_coherence'?)",
        "8: stages[0].borders: unknown key 'borders' (did you mean 'border'?)",
    ]
    assert problems(GEN + "    strength: 0.5\n") == [
        "6: stages[0].strength: unknown key 'strength' (only img2img, inpaint, restyle, animate stages take it, "
        "or here under 'hires:')"]


# ---------------------------------------------------------------------- toy models, any tag spelling
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class Range(_Strict):
    start: StrictInt = 0
    count: Annotated[StrictInt, Field(gt=0)]


class Cat(_Strict):
    kind: Literal["cat"]
    lives: Annotated[StrictInt, Field(le=9)] = 9


class Dog(_Strict):
    kind: Literal["dog"]
    tricks: list[str] = []


def _kind(value: Any) -> Any:
    return value.get("kind") if isinstance(value, dict) else None


def _as_list(value: Any) -> Any:
    return value if isinstance(value, list) else [value]


class Toy(_Strict):
    seeds: list[StrictInt] | Range | None = None
    mode: Annotated[list[Literal["fast", "slow"]], BeforeValidator(_as_list)] | None = None
    pets: list[Annotated[Cat | Dog, Field(discriminator="kind")]] = []
    tagged: list[Annotated[Annotated[Cat, Tag("cat")] | Annotated[Dog, Tag("dog")], Discriminator(_kind)]] = []
    smart: list[Cat | Dog] = []


def toy_problems(text: str, model: type[BaseModel] | None = Toy) -> list[str]:
    data, lines = load_yaml(text)
    with pytest.raises(ValidationError) as info:
        Toy.model_validate(data)
    return [f"{p.line}: {p.path}: {p.message}" for p in pydantic_problems(info.value, lines, {}, (), model=model)]


TOY_CASES = [
    ("seeds: [1, x]\n", ["1: seeds[1]: Input should be a valid integer"]),
    ("seeds:\n  count: 0\n", ["2: seeds.count: Input should be greater than 0"]),
    ("seeds: {}\n", ["1: seeds.count: required"]),
    ("seeds: 3\n", ["1: seeds: Input should be a valid list or a mapping {start, count}"]),
    ("mode: fats\n", ["1: mode: 'fats' is not one of fast, slow (did you mean 'fast'?)"]),
    ("mode: [fast, slwo]\n", ["1: mode[1]: 'slwo' is not one of fast, slow (did you mean 'slow'?)"]),
    ("pets:\n  - {kind: cat, lives: 10}\n  - {kind: dog, triks: []}\n",
     ["2: pets[0].lives: Input should be less than or equal to 9",
      "3: pets[1].triks: unknown key 'triks' (did you mean 'tricks'?)"]),
    ("pets:\n  - {kind: cow}\n", ["2: pets[0].kind: unknown kind 'cow' (expected one of: cat, dog)"]),
    ("tagged:\n  - {kind: cat, lives: 10}\n  - {kind: dog, tricks: [1]}\n",
     ["2: tagged[0].lives: Input should be less than or equal to 9",
      "3: tagged[1].tricks[0]: Input should be a valid string"]),
    ("smart:\n  - {kind: dog, tricks: [1]}\n", ["2: smart[0].tricks[0]: Input should be a valid string"]),
]


@pytest.mark.parametrize("text,expected", TOY_CASES)
def test_toy_model_unions(text, expected):
    assert toy_problems(text) == expected


def test_discriminator_names_the_key_and_suggests():
    assert toy_problems("pets:\n  - {kind: caat}\n") == ["2: pets[0].kind: unknown kind 'caat' (did you mean 'cat'?)"]


def test_branch_tags_are_recognised_by_structure_not_spelling():
    """Tags spelled as no Pydantic version spells them are still told from field names by the model."""
    data, lines = load_yaml("seeds:\n  count: 0\nmode: [fast, x]\npets:\n  - {kind: cat, lives: 10}\n")
    errors = [
        {"type": "list_type", "loc": ("seeds", "<<branch one>>"), "input": data["seeds"]},
        {"type": "greater_than", "loc": ("seeds", "Branch-2!", "count"), "input": 0, "ctx": {"gt": 0}},
        {"type": "literal_error", "loc": ("mode", 1), "input": "x", "ctx": {"expected": "'fast' or 'slow'"}},
        {"type": "less_than_equal", "loc": ("pets", 0, "CAT", "lives"), "input": 10, "ctx": {"le": 9}},
    ]
    exc = ValidationError.from_exception_data("Toy", errors)
    got = [f"{p.line}: {p.path}: {p.message}" for p in pydantic_problems(exc, lines, {}, (), model=Toy)]
    assert got == ["2: seeds.count: Input should be greater than 0",
                   "3: mode[1]: 'x' is not one of fast, slow",
                   "5: pets[0].lives: Input should be less than or equal to 9"]


def test_without_a_model_the_written_paths_stand_in():
    assert toy_problems("seeds:\n  count: 0\npets:\n  - {kind: cat, lives: 10}\n", model=None) == [
        "2: seeds.count: Input should be greater than 0",
        "4: pets[0].lives: Input should be less than or equal to 9",
    ]
