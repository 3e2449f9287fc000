"""Resource bounds are checked before the work they bound (issue 9, items 6 and 7): a recipe of too many jobs is
refused before any job is built, prompts, seeds and schedules out of bounds are refused naming the field, and
validate stays fast for the largest recipe it accepts. Through the CLI, as a user would."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml
from conftest import run_cli

from sdbatch.config import limits

HEAD = "model: sdbatch/tiny-sd\n"
MAX_SEED = 2**64 - 1


def validate(tmp_path: Path, text: str, *args: str, command: str = "validate") -> tuple[object, float]:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(text, encoding="utf-8")
    start = time.perf_counter()
    result = run_cli(command, recipe, *args, "--out", tmp_path / "out") if command != "validate" else \
        run_cli(command, recipe, *args)
    return result, time.perf_counter() - start


def refused(result, line: int, fragment: str) -> str:
    """The one line of a refusal (exit 2, no traceback) at ``line`` containing ``fragment``."""
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"recipe.yaml:{line}: " in lines[0] and fragment in lines[0], lines[0]
    return lines[0]


# ------------------------------------------------------------------------------------------ job counts
def test_ten_million_seeds_are_refused_at_once_with_the_count_and_the_stage(tmp_path):
    text = HEAD + "stages:\n  - name: a\n    type: generate\n    prompt: x\n    seeds: {start: 0, count: 10000000}\n"
    result, seconds = validate(tmp_path, text)
    line = refused(result, 3, "stages[0]: 10,000,000 jobs (seeds 10,000,000) is over the limit of 100,000; "
                              "raise it with --max-jobs")
    assert seconds < 2.5, f"{seconds:.2f} s"  # the process; the count itself is instant (below)
    assert line


def test_job_count_is_computed_without_building_jobs(tmp_path):
    from sdbatch.config.recipe import parse_recipe
    from sdbatch.core.plan import build_plan
    from sdbatch.errors import RecipeError
    from sdbatch.io.hashing import HashCache

    text = HEAD + "stages:\n  - {name: a, type: generate, prompt: x, seeds: {start: 0, count: 10000000}}\n"
    loaded = parse_recipe(text, tmp_path / "recipe.yaml")
    start = time.perf_counter()
    with pytest.raises(RecipeError) as info:
        build_plan(loaded, tmp_path / "out", hashes=HashCache(None, {}))
    assert time.perf_counter() - start < 0.5
    assert "10,000,000 jobs" in str(info.value)


def test_a_sweep_of_ten_to_the_twelve_is_refused_not_a_memory_error(tmp_path):
    stage = {"name": "a", "type": "generate", "prompt": [f"p{i}" for i in range(1000)],
             "negative_prompt": [f"n{i}" for i in range(1000)], "steps": list(range(1, 1001)),
             "guidance": [i / 10 for i in range(1000)]}
    text = yaml.safe_dump({"model": "sdbatch/tiny-sd", "stages": [stage]}, default_flow_style=True, width=10**9)
    result, seconds = validate(tmp_path, text)
    refused(result, 1, "stages[0]: 1,000,000,000,000 jobs (prompt 1,000 x negative_prompt 1,000 x steps 1,000 x "
                       "guidance 1,000) is over the limit of 100,000")
    assert seconds < 2.5


def test_upstream_counts_feed_downstream_stages(tmp_path):
    text = HEAD + ("stages:\n  - {name: a, type: generate, prompt: x, seeds: {start: 0, count: 400}}\n"
                   "  - name: b\n    type: img2img\n    input: a\n    prompt: y\n"
                   f"    strength: {[round(0.3 + i / 1000, 3) for i in range(300)]}\n")
    result, _ = validate(tmp_path, text)
    refused(result, 4, "stages[1]: 120,000 jobs (strength 300 x inputs from 'a' 400) is over the limit of 100,000")


def test_stages_each_under_the_limit_can_add_up_over_it(tmp_path):
    text = HEAD + ("stages:\n  - {name: a, type: generate, prompt: x, seeds: {start: 0, count: 60000}}\n"
                   "  - {name: b, type: generate, prompt: y, seeds: {start: 0, count: 50000}}\n")
    result, _ = validate(tmp_path, text)
    refused(result, 3, "stages[0]: 60,000 jobs (seeds 60,000) make the recipe 110,000 jobs, over the limit of 100,000")


@pytest.mark.parametrize("command", ["validate", "plan", "run"])
def test_max_jobs_raises_the_limit_on_every_command(tmp_path, command):
    text = HEAD + "stages:\n  - {name: a, type: generate, prompt: x, seeds: {start: 0, count: 150}}\n"
    result, _ = validate(tmp_path, text, "--max-jobs", "100", command=command)
    refused(result, 3, "150 jobs (seeds 150) is over the limit of 100; raise it with --max-jobs")
    assert not (tmp_path / "out").exists()
    if command != "run":
        result, _ = validate(tmp_path, text, "--max-jobs", "150", command=command)
        assert result.returncode == 0, result.stderr
        assert ("150 job(s)" in result.stdout) if command == "validate" else ("150 job(s): 0 done" in result.stdout)


def test_max_jobs_must_be_a_positive_number(tmp_path):
    text = HEAD + "stages:\n  - {name: a, type: generate, prompt: x}\n"
    result, _ = validate(tmp_path, text, "--max-jobs", "0")
    assert result.returncode == 2 and "--max-jobs: must be at least 1" in result.stderr


def test_default_limit_accepts_exactly_its_count(tmp_path):
    text = HEAD + f"stages:\n  - {{name: a, type: generate, prompt: x, seeds: {{start: 0, count: {limits.MAX_JOBS}}}}}\n"
    result, _ = validate(tmp_path, text)
    assert result.returncode == 0, result.stderr
    assert f"{limits.MAX_JOBS} job(s)" in result.stdout


# ------------------------------------------------------------------------------- prompts and text
STAGE = "stages:\n  - name: a\n    type: generate\n"


@pytest.mark.parametrize("field,text,line", [
    ("stages[0].prompt", STAGE + "    prompt: {long}\n", 5),
    ("stages[0].prompt[1]", STAGE + "    prompt: [ok, {long}]\n", 5),
    ("defaults.negative_prompt",
     "defaults: {{negative_prompt: {long}}}\n" + STAGE + "    prompt: x\n", 2),
    ("stages[0].prompts[30]", "stages:\n  - {{name: a, type: animate, frames: 4, prompts: {{0: ok, 30: {long}}}}}\n", 3),
    ("stages[0].prompts[1]", "stages:\n  - {{name: a, type: interpolate, frames: 4, seeds: [1, 2], "
                             "prompts: [ok, {long}]}}\n", 3),
])
def test_prompts_over_the_length_limit_are_refused(tmp_path, field, text, line):
    long = "a" * (limits.MAX_PROMPT_CHARS + 1)
    result, _ = validate(tmp_path, HEAD + text.format(long=long))
    refused(result, line, f"{field}: String should have at most {limits.MAX_PROMPT_CHARS} characters")


@pytest.mark.parametrize("text,line,field", [
    (STAGE + '    prompt: "a \\ud800 wolf"\n', 5, "stages[0].prompt"),
    (STAGE + '    prompt: [ok, "\\udfff"]\n', 5, "stages[0].prompt[1]"),
    (STAGE + '    prompt: x\n    negative_prompt: "\\U0000d800"\n', 6, "stages[0].negative_prompt"),
    ('stages:\n  - {name: a, type: img2img, input: "in\\ud800.png", prompt: x}\n', 3, "stages[0].input"),
])
def test_lone_surrogates_are_refused_naming_the_field(tmp_path, text, line, field):
    result, _ = validate(tmp_path, HEAD + text)
    refused(result, line, f"{field}: contains a lone surrogate")


def test_lone_surrogate_from_the_command_line_is_refused(tmp_path):
    result, _ = validate(tmp_path, HEAD + STAGE + "    prompt: x\n", "--set", 'stages.a.prompt="\\ud83d"')
    assert result.returncode == 2 and "lone surrogate" in result.stderr and "Traceback" not in result.stderr


# ------------------------------------------------------------------------------------------- seeds
@pytest.mark.parametrize("text,line,fragment", [
    (STAGE + "    prompt: x\n    seed: -7\n", 6, "stages[0].seed: -7 is outside the seeds 0..2^64-1"),
    (STAGE + f"    prompt: x\n    seed: {MAX_SEED + 1}\n", 6, "stages[0].seed: 18,446,744,073,709,551,616 is outside"),
    (STAGE + f"    prompt: x\n    seed: {10**40}\n", 6, "stages[0].seed: a 41-digit number is outside"),
    (STAGE + f"    prompt: x\n    seeds: [1, {MAX_SEED + 5}]\n", 6, "stages[0].seeds[1]:"),
    (STAGE + "    prompt: x\n    seeds: {start: -3, count: 2}\n", 6, "stages[0].seeds.start: -3 is outside"),
    (STAGE + f"    prompt: x\n    seeds: {{start: {MAX_SEED - 5}, count: 10}}\n", 6,
     "stages[0].seeds: the range's last seed 18,446,744,073,709,551,619 is outside"),
    ("stages:\n  - {name: a, type: interpolate, prompt: x, frames: 4, seeds: [0, -2]}\n", 3,
     "stages[0].seeds[1]: -2 is outside the seeds 0..2^64-1 (18,446,744,073,709,551,615); -1 draws a random seed"),
    ("stages:\n  - {name: a, type: animate, prompt: x, frames: 4, seed: -2}\n", 3, "stages[0].seed: -2 is outside"),
    (f"stages:\n  - {{name: a, type: animate, prompt: x, frames: 10, seed: {MAX_SEED - 3}}}\n", 3,
     "stages[0].seed: seed 18446744073709551612 + 9 for the frames after the first is past the largest seed"),
])
def test_seeds_outside_the_generator_range_are_refused(tmp_path, text, line, fragment):
    result, _ = validate(tmp_path, HEAD + text)
    refused(result, line, fragment)


def test_the_largest_seeds_are_accepted(tmp_path):
    text = HEAD + (f"stages:\n  - {{name: a, type: generate, prompt: x, seeds: {{start: {MAX_SEED - 9}, count: 10}}}}\n"
                   f"  - {{name: b, type: animate, prompt: x, frames: 10, seed: {MAX_SEED}, seed_behavior: fixed}}\n"
                   f"  - {{name: c, type: interpolate, prompt: x, frames: 3, seeds: [0, {MAX_SEED}]}}\n")
    result, _ = validate(tmp_path, text)
    assert result.returncode == 0, result.stderr


# ---------------------------------------------------------------------------------------- schedules
COSTLY = "+".join(f"sin(t/{i + 1})" for i in range(40))
HUGE = ", ".join(f"{i}:({i % 7}.5)" for i in range(100_000))


@pytest.mark.parametrize(("body", "line", "message"), [
    (f'    frames: 100000\n    noise: "0:({COSTLY})"\n', 7,
     "stages[0].noise: evaluating this schedule over 100,000 frames is too much work"),
    (f'    frames: 10\n    motion:\n      zoom: "{HUGE}"\n', 8,
     "stages[0].motion.zoom: schedule too large to check quickly (100,000 keyframes"),
], ids=["too-costly-to-evaluate", "too-long-to-compile"])
def test_a_schedule_too_costly_to_check_is_refused_fast(tmp_path, body, line, message):
    text = HEAD + "stages:\n  - name: a\n    type: animate\n    prompt: x\n" + body
    result, seconds = validate(tmp_path, text)
    refused(result, line, message)
    assert seconds < 2.5


def test_the_schedule_budget_is_shared_by_the_whole_recipe(tmp_path):
    expr = "0.3+0.05*sin(t/30)"  # under the budget alone, not twice
    assert limits.schedule_work(f"0:({expr})", 100_000) * 2 > limits.MAX_SCHEDULE_WORK
    stage = "  - {{name: {name}, type: animate, prompt: x, frames: 100000, strength: '0:({expr})'}}\n"
    text = HEAD + "stages:\n" + stage.format(name="a", expr=expr) + stage.format(name="b", expr=expr)
    result, _ = validate(tmp_path, text)
    refused(result, 4, "stages[1].strength: evaluating this schedule")


# -------------------------------------------------------------------------------- the largest recipe
def largest_recipe() -> str:
    """Every bound at (or just under) its largest accepted value, in one recipe."""
    prompt = ("a lighthouse on a cliff in a storm, " * 300)[:limits.MAX_PROMPT_CHARS]
    strength = "0:(0.3+0.05*sin(t/30))"
    frames = 100_000
    numeric = 12 * limits.schedule_work("0:(1.0)", frames)
    assert numeric + limits.schedule_work(strength, frames) <= limits.MAX_SCHEDULE_WORK
    count = limits.MAX_JOBS - 2
    stages = [
        {"name": "g", "type": "generate", "prompt": prompt, "negative_prompt": prompt,
         "seeds": {"start": MAX_SEED - count + 1, "count": count}},
        {"name": "fly", "type": "animate", "frames": frames, "prompts": {0: prompt, 99_999: prompt}, "seed": 7,
         "strength": strength},
        {"name": "dream", "type": "interpolate", "frames": frames, "prompts": [prompt, prompt],
         "seeds": [0, MAX_SEED]},
    ]
    return HEAD + yaml.safe_dump({"stages": stages}, width=10**9)


def test_validate_stays_fast_for_the_largest_recipe_it_accepts(tmp_path):
    result, seconds = validate(tmp_path, largest_recipe())
    assert result.returncode == 0, result.stderr
    assert f"{limits.MAX_JOBS} job(s)" in result.stdout
    assert seconds < 2.0, f"validate took {seconds:.2f} s"
