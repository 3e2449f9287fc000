"""Adding a stage type is one module plus one registry line: a toy stage runs through validate, plan and run."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest

from sdbatch import stages

TOY = '''
"""A toy stage type: a solid colour per job (its own config model, planning hook and render)."""
from typing import Iterator, Literal

from sdbatch.config.stage import StageConfig
from sdbatch.config.types import Prompt, Sweep
from sdbatch.stages.base import Rendered


class ToyStage(StageConfig):
    """Paints the whole image one colour."""

    type: Literal["toy"]
    prompt: Sweep(Prompt) = ["toy"]
    color: list[int] = [255, 0, 0]

    def plan_hook(self, planner, fixed):
        if sum(self.color) == 0:
            planner.problem(("color",), "black is not a colour")


def render(jobs, ctx) -> Iterator[Rendered]:
    from PIL import Image

    for job in jobs:
        p = job.params
        yield Rendered(job, job.output, Image.new("RGB", (p.width, p.height), tuple(p.color)))


CONFIG = ToyStage
'''


@pytest.fixture
def toy_stage(tmp_path, monkeypatch):
    (tmp_path / "toy_stage_module.py").write_text(TOY)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(stages.STAGE_MODULES, "toy", "toy_stage_module")
    yield tmp_path
    sys.modules.pop("toy_stage_module", None)


def write_recipe(folder: Path, color: str) -> Path:
    path = folder / "toy.yaml"
    path.write_text(textwrap.dedent(f"""\
        name: toy
        model: sdbatch/tiny-sd
        stages:
          - name: paint
            type: toy
            width: 16
            height: 8
            seeds: [1, 2]
            color: {color}
        """))
    return path


def test_toy_stage_validates_plans_and_runs(toy_stage, capsys):
    from sdbatch.cli import main

    recipe = write_recipe(toy_stage, "[0, 128, 255]")
    out = toy_stage / "out"
    assert main(["validate", str(recipe)]) == 0
    assert "paint: 2" in capsys.readouterr().out
    assert main(["plan", str(recipe), "--out", str(out), "--json"]) == 0
    planned = json.loads(capsys.readouterr().out)["jobs"]
    assert [j["status"] for j in planned] == ["pending", "pending"]
    assert planned[0]["params"]["color"] == [0, 128, 255]  # a new field is identity without a list to update
    assert main(["run", str(recipe), "--out", str(out)]) == 0
    from PIL import Image

    for job in planned:
        with Image.open(out / job["output"]) as im:
            assert im.size == (16, 8) and im.getpixel((3, 3)) == (0, 128, 255)
    lines = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert sorted(r["seed"] for r in lines if r["kind"] == "output") == [1, 2]
    capsys.readouterr()
    assert main(["plan", str(recipe), "--out", str(out)]) == 0
    assert "2 done, 0 pending" in capsys.readouterr().out


def test_toy_stage_problems_and_schema(toy_stage, capsys):
    from sdbatch.cli import main

    recipe = write_recipe(toy_stage, "[0, 0, 0]")
    assert main(["validate", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert f"{recipe}:9: stages[0].color: black is not a colour" in err
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert "ToyStage" in schema["$defs"]
