"""Sweeps over any scalar stage parameter: ``width: [32, 48]``, a LoRA's ``weight: [0.4, 0.8]``, ``clip_skip``,
``model``, ... Each combination is the stage with those values (the same job ids as a recipe naming them), a
bad value is reported at its own list item's line, and the contact sheet labels every swept axis (X/Y/Z)."""

from __future__ import annotations

from pathlib import Path

from conftest import manifest_records
from PIL import Image
from test_model_sources import builtin, make_lora

from sdbatch import cli
from sdbatch.config.recipe import parse_recipe
from sdbatch.config.stage import StageParams
from sdbatch.core.plan import build_plan
from sdbatch.core.record import parse_record
from sdbatch.io.hashing import HashCache
from sdbatch.reports.grid import grid_axes, grid_layout

CLIP_SKIP = "clip_skip" in StageParams.model_fields  # the encoding half of issue 11 adds it


def plan_ids(text: str, path: Path) -> list[str]:
    return [job.job_id for job in build_plan(parse_recipe(text, path), path.parent / "out",
                                             hashes=HashCache(None, {})).jobs]


def test_sweep_of_width_lora_weight_and_clip_skip_renders_a_labelled_contact_sheet(tmp_path, capsys):
    make_lora(builtin("sdbatch/tiny-sd"), tmp_path / "loras" / "style.safetensors")
    extra = "    clip_skip: [1, 2]\n" if CLIP_SKIP else ""
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"""\
name: axes
model: sdbatch/tiny-sd
defaults: {{steps: 2, height: 32}}
stages:
  - name: axes
    type: generate
    prompt: a lighthouse
    seed: 3
    width: [32, 48]
    loras: [{{path: loras/style.safetensors, weight: [0.4, 0.8]}}]
{extra}""")
    out = tmp_path / "out"
    capsys.readouterr()
    assert cli.main(["validate", str(recipe)]) == 0
    total = 8 if CLIP_SKIP else 4
    assert f"{total} job(s)" in capsys.readouterr().out
    assert cli.main(["run", str(recipe), "--out", str(out)]) == 0
    records = [parse_record(r) for r in manifest_records(out, "output")]
    assert len(records) == total
    assert {(r.params["width"], r.params["loras"][0]["weight"]) for r in records} == \
        {(32, 0.4), (32, 0.8), (48, 0.4), (48, 0.8)}
    x, y, blocks = grid_axes(records)
    assert {x, y, *blocks} == {"width", "LoRA style"} | ({"clip_skip"} if CLIP_SKIP else set())
    made = grid_layout(records)
    assert made is not None
    layout, cells = made
    titles = [band.title for page in layout.pages for band in page.bands]
    if CLIP_SKIP:  # the third axis (Z): one block per value, titled with it
        assert len(blocks) == 1 and len(titles) == 2 and all(t.startswith(f"{blocks[0]}: ") for t in titles)
    assert len(cells) == total
    sheet = out / "axes" / "grid.png"
    assert sheet.is_file()
    with Image.open(sheet) as im:
        assert im.size == (layout.pages[0].width, layout.pages[0].height)


def test_a_sweep_point_is_the_job_of_that_value_written_alone(tmp_path):
    head = "name: s\nmodel: sdbatch/tiny-sd\nstages:\n"
    swept = head + "  - {name: s, type: generate, prompt: a cat, width: [64, 128], dtype: [float32, float16]}\n"
    alone = [head + f"  - {{name: s, type: generate, prompt: a cat, width: {w}, dtype: {d}}}\n"
             for w in (64, 128) for d in ("float32", "float16")]
    path = tmp_path / "recipe.yaml"
    assert plan_ids(swept, path) == [i for text in alone for i in plan_ids(text, path)]
    # a sweep in defaults sweeps every stage it reaches
    defaults = head.replace("stages:", "defaults: {width: [64, 128]}\nstages:") + \
        "  - {name: s, type: generate, prompt: a cat}\n"
    assert len(plan_ids(defaults, path)) == 2


def test_a_bad_sweep_value_is_reported_at_its_item(tmp_path, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("""\
name: s
model: sdbatch/tiny-sd
stages:
  - name: s
    type: generate
    prompt: a cat
    width:
      - 64
      - 60
    loras: [{path: nope.safetensors, weight: [0.5, 99]}]
""")
    capsys.readouterr()
    assert cli.main(["validate", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert f"{recipe}:9: stages[0].width[1]: must be a multiple of 8 (got 60)" in err
    assert f"{recipe}:10: stages[0].loras[0].weight[1]: " in err
    assert "Traceback" not in err
