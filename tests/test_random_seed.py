"""Issue 10, item 10: ``seed: -1`` (and ``-1`` in ``seeds``) is a random seed, as in AUTOMATIC1111: drawn once on
the first run (in 0..2**32-1), stored in ``<out>/random-seeds.json``, reused by every later run and resume (same
job ids, nothing rendered again), and recorded as the real seed in the manifest and the PNG infotext. ``plan``
before the first run writes nothing and marks the seeds it drew as provisional."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import manifest_records, run_cli
from PIL import Image

from sdbatch import cli
from sdbatch.io.seedstore import STORE_NAME, SeedStore

A1111_MAX = 2**32 - 1
HEAD = "model: sdbatch/tiny-sd\ndefaults: {steps: 2, width: 32, height: 32}\nstages:\n"


def write(tmp_path: Path, stages: str, name: str = "r") -> Path:
    recipe = tmp_path / f"{name}.yaml"
    recipe.write_text(HEAD + stages)
    return recipe


def plan_json(capsys, recipe: Path, out: Path, *extra: str) -> list[dict]:
    assert cli.main(["plan", str(recipe), "--out", str(out), "--json", *extra]) == 0
    return json.loads(capsys.readouterr().out)["jobs"]


def stored(out: Path) -> dict[str, int]:
    return json.loads((out / STORE_NAME).read_text())["seeds"]


def test_a_random_seed_is_drawn_once_stored_and_reused_by_every_run(tmp_path, capsys):
    recipe = write(tmp_path, "  - {name: a, type: generate, prompt: a cat, seeds: [7, -1]}\n")
    out = tmp_path / "out"

    before = plan_json(capsys, recipe, out)  # plan draws for itself and writes nothing
    assert not out.exists()
    assert [j["status"] for j in before] == ["pending", "pending"]
    assert before[0]["seed"] == 7 and "random_seed" not in before[0]
    assert before[1]["random_seed"] == "provisional" and 0 <= before[1]["seed"] <= A1111_MAX

    assert cli.main(["run", str(recipe), "--out", str(out)]) == 0
    capsys.readouterr()
    seeds = stored(out)
    assert list(seeds) == ["a/seeds/1"] and 0 <= seeds["a/seeds/1"] <= A1111_MAX
    drawn = seeds["a/seeds/1"]
    records = manifest_records(out, "output")
    assert sorted(r["seed"] for r in records) == sorted([7, drawn])  # the real seed, never -1
    png = out / next(r["path"] for r in records if r["seed"] == drawn)
    assert f"-{drawn}-" in png.name
    with Image.open(png) as im:
        assert f"Seed: {drawn}," in im.text["parameters"]

    after = plan_json(capsys, recipe, out)  # the stored seed, every job done
    assert [j["status"] for j in after] == ["done", "done"]
    assert after[1]["seed"] == drawn and after[1]["random_seed"] == "stored"
    ids = [j["job_id"] for j in after]

    store_bytes = (out / STORE_NAME).read_bytes()
    assert cli.main(["run", str(recipe), "--out", str(out)]) == 0  # a re-run renders nothing
    capsys.readouterr()
    assert len(manifest_records(out, "output")) == 2
    assert (out / STORE_NAME).read_bytes() == store_bytes

    png.unlink()  # resume after losing an output: the same job, the same seed
    assert cli.main(["run", str(recipe), "--out", str(out)]) == 0
    capsys.readouterr()
    again = manifest_records(out, "output")
    assert len(again) == 3 and again[-1]["seed"] == drawn and again[-1]["job_id"] == ids[1]
    assert png.exists() and [j["job_id"] for j in plan_json(capsys, recipe, out)] == ids


def test_plan_text_marks_random_seeds_and_writes_nothing(tmp_path, capsys):
    recipe = write(tmp_path, "  - {name: a, type: generate, prompt: a cat, seed: -1}\n")
    out = tmp_path / "out"
    assert cli.main(["plan", str(recipe), "--out", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "(random, provisional)" in shown and "the first run draws and stores its own" in shown
    assert cli.main(["validate", str(recipe)]) == 0
    assert not out.exists() and not (tmp_path / "outputs").exists()


def test_a_random_start_gives_consecutive_seeds_within_a1111s_range(tmp_path, capsys):
    recipe = write(tmp_path, "  - {name: a, type: generate, prompt: a cat, seeds: {start: -1, count: 4}}\n")
    out = tmp_path / "out"
    seeds = [j["seed"] for j in plan_json(capsys, recipe, out)]
    assert seeds == list(range(seeds[0], seeds[0] + 4)) and 0 <= seeds[0] and seeds[-1] <= A1111_MAX
    out.mkdir()
    (out / STORE_NAME).write_text(json.dumps({"format": 1, "seeds": {"a/seeds/start": 1000}}))
    jobs = plan_json(capsys, recipe, out)
    assert [j["seed"] for j in jobs] == [1000, 1001, 1002, 1003]
    assert {j["random_seed"] for j in jobs} == {"stored"}
    # a longer range keeps its start: the first four are the same jobs
    longer = write(tmp_path, "  - {name: a, type: generate, prompt: a cat, seeds: {start: -1, count: 6}}\n")
    assert [j["job_id"] for j in plan_json(capsys, longer, out)][:4] == [j["job_id"] for j in jobs]
    # the largest count still ends within 0..2**32-1
    assert SeedStore(tmp_path / "s.json").seed("k", 10_000_000) <= A1111_MAX - 10_000_000 + 1


def test_random_seeds_of_video_stages_and_a_downstream_stage(tmp_path, capsys):
    """interpolate's path and animate's base seed are drawn once; a stage reading a random-seeded one inherits it."""
    recipe = write(tmp_path, "  - {name: g, type: generate, prompt: a cat, seed: -1}\n"
                             "  - {name: p, type: img2img, input: g, prompt: oil, strength: 0.5}\n"
                             "  - {name: d, type: interpolate, prompt: x, frames: 3, seeds: [-1, 3, -1]}\n"
                             "  - {name: an, type: animate, prompt: x, frames: 2, seed: -1}\n")
    out = tmp_path / "out"
    out.mkdir()
    store = {"g/seed": 11, "d/seeds/0": 21, "d/seeds/2": 23, "an/seed": 31}
    (out / STORE_NAME).write_text(json.dumps({"format": 1, "seeds": store}))
    jobs = {j["stage"]: j for j in plan_json(capsys, recipe, out)}
    assert jobs["g"]["seed"] == 11 and jobs["p"]["seed"] == 11 and jobs["p"]["random_seed"] == "stored"
    assert jobs["d"]["params"]["seeds"] == [21, 3, 23] and jobs["d"]["seed"] == 21
    assert jobs["an"]["seed"] == 31
    assert all(j["random_seed"] == "stored" for j in jobs.values())
    assert stored(out) == store  # plan only reads


def test_rehearse_and_set_defaults_seed_draw_into_the_rehearsal_folder(tmp_path):
    """``--set defaults.seed=-1`` on an animation, rehearsed: its own folder, its own draw, frames' real seeds."""
    (tmp_path / ".git").mkdir()  # the project root: outputs/ go here
    recipe = write(tmp_path, "  - {name: an, type: animate, prompt: x, frames: 2, seed_behavior: iter}\n", "anim")
    result = run_cli("run", recipe, "--rehearse", "--set", "defaults.seed=-1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rehearsal = tmp_path / "outputs" / "anim-rehearsal"
    base = stored(rehearsal)["an/seed"]
    assert 0 <= base <= A1111_MAX
    assert not (tmp_path / "outputs" / "anim").exists()
    frames = [r for r in manifest_records(rehearsal, "output") if r["path"].endswith(".png")]
    assert {r["seed"] for r in frames} == {base}  # the job's seed: the drawn base seed
    assert [r["frame"]["seed"] for r in frames] == [base, base + 1]  # iter: each frame's own seed follows it
    with Image.open(rehearsal / frames[1]["path"]) as im:
        assert f"Seed: {base + 1}," in im.text["parameters"]
    again = run_cli("plan", recipe, "--rehearse", "--set", "defaults.seed=-1", "--json", cwd=tmp_path)
    assert {j["status"] for j in json.loads(again.stdout)["jobs"]} == {"done"}


def test_a_stage_with_its_own_seeds_keeps_them_over_defaults_seed(tmp_path, capsys):
    recipe = write(tmp_path, "  - {name: a, type: generate, prompt: a cat, seeds: [4, 5]}\n"
                             "  - {name: b, type: generate, prompt: a dog}\n")
    jobs = plan_json(capsys, recipe, tmp_path / "out", "--set", "defaults.seed=-1")
    assert [j["seed"] for j in jobs[:2]] == [4, 5] and "random_seed" not in jobs[0]
    assert jobs[2]["random_seed"] == "provisional"


@pytest.mark.parametrize("content,fragment", [
    ("{not json", "is not valid JSON"),
    ('{"format": 1}', 'has no "seeds" object'),
    ('{"format": 1, "seeds": {"a/seed": -1}}', "a/seed: -1 is not a seed"),
])
def test_a_broken_seed_store_is_refused_in_one_line(tmp_path, capsys, content, fragment):
    recipe = write(tmp_path, "  - {name: a, type: generate, prompt: a cat, seed: -1}\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / STORE_NAME).write_text(content)
    assert cli.main(["plan", str(recipe), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and fragment in err and "delete it" in err


def test_a_seed_another_run_stored_first_wins(tmp_path):
    first, second = SeedStore.read(tmp_path), SeedStore.read(tmp_path)
    mine, theirs = first.seed("a/seed"), second.seed("a/seed")
    second.seed("b/seed")
    assert second.commit() is False
    if mine != theirs:
        assert first.commit() is True  # plan again: the stored seed is theirs
    else:
        assert first.commit() is False
    assert first.seed("a/seed") == theirs and stored(tmp_path)["a/seed"] == theirs and "b/seed" in stored(tmp_path)


@pytest.mark.parametrize("text,fragment", [
    ("  - {name: a, type: generate, prompt: x, seed: -2}\n",
     "stages[0].seed: -2 is outside the seeds 0..2^64-1 (18,446,744,073,709,551,615); -1 draws a random seed"),
    ("  - {name: a, type: generate, prompt: x, seeds: {start: -2, count: 3}}\n", "stages[0].seeds.start: -2"),
])
def test_only_minus_one_is_a_random_seed(tmp_path, capsys, text, fragment):
    assert cli.main(["validate", str(write(tmp_path, text))]) == 2
    assert fragment in capsys.readouterr().err


def test_the_schema_allows_minus_one_as_validate_does(capsys):
    assert cli.main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    seed = schema["$defs"]["SeedRange"]["properties"]["start"]
    assert seed["minimum"] == -1 and "random" in seed["description"]
