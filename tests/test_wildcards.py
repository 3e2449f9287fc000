"""Wildcards (dynamicprompts): ``{a|b}``, ``{2$$a|b|c}``, ``__name__`` from ``wildcards/`` beside the recipe.

``random``: a job's prompt is drawn from its seed (a re-run renders nothing, a re-plan draws the same);
``combinatorial``: every expansion is a sweep point. The manifest records the expanded ``prompt`` and the
``prompt_template``; a missing wildcard file is ``file:line`` at validate; prompts without the syntax (and
A1111's ``(x:1.2)``, ``[x]``, ``#``, ``50%``) pass through untouched, their job ids unchanged.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

from conftest import manifest_records

from sdbatch import cli
from sdbatch.config.recipe import parse_recipe
from sdbatch.core.plan import build_plan
from sdbatch.io.hashing import HashCache

TEMPLATE = "(masterpiece:1.2), a {red|green|blue} __animals__ in a forest, [blurry], 50% #1"
HEAD = """\
name: wild
model: sdbatch/tiny-sd
defaults: {steps: 2, width: 32, height: 32}
stages:
"""


def project(tmp_path: Path, stages: str) -> Path:
    (tmp_path / "wildcards").mkdir()
    (tmp_path / "wildcards" / "animals.txt").write_text("cat\n# a comment\n\ndog\nowl\n")
    (tmp_path / "wildcards" / "light.yaml").write_text("light:\n  - dawn\n  - dusk\n")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(HEAD + stages)
    return recipe


def planned(recipe: Path, out: Path, capsys) -> list[dict]:
    capsys.readouterr()
    assert cli.main(["plan", str(recipe), "--json", "--out", str(out)]) == 0
    data = json.loads(capsys.readouterr().out)
    return data["jobs"] if isinstance(data, dict) else data


def test_random_wildcards_draw_from_the_seed_and_resume_draws_the_same(tmp_path, capsys):
    recipe = project(tmp_path, f"""\
  - name: sketch
    type: generate
    prompt: "{TEMPLATE}"
    seeds: {{start: 0, count: 6}}
  - name: plain
    type: generate
    prompt: a plain lighthouse, (soft:1.1), [x]
""")
    out = tmp_path / "out"
    before = planned(recipe, out, capsys)
    assert cli.main(["run", str(recipe), "--out", str(out)]) == 0
    records = [r for r in manifest_records(out, "output") if r["stage"] == "sketch"]
    assert len(records) == 6
    prompts = {r["seed"]: r["prompt"] for r in records}
    for prompt in prompts.values():
        assert "{" not in prompt and "__" not in prompt
        colour, animal = prompt.split(", a ")[1].split(" in a forest")[0].split()
        assert colour in ("red", "green", "blue") and animal in ("cat", "dog", "owl")
        assert prompt == f"(masterpiece:1.2), a {colour} {animal} in a forest, [blurry], 50% #1"
    assert len(set(prompts.values())) > 1, "the seeds drew different prompts"
    assert all(r["prompt_template"] == TEMPLATE for r in records)
    capsys.readouterr()
    assert cli.main(["inspect", str(out / records[0]["path"])]) == 0  # the template as written, beside the prompt
    shown = capsys.readouterr().out
    fields = {line.split(":", 1)[0]: line.split(":", 1)[1].strip() for line in shown.splitlines() if ":" in line}
    assert fields["prompt template"] == TEMPLATE and fields["prompt"] == records[0]["prompt"]
    plain = [r for r in manifest_records(out, "output") if r["stage"] == "plain"]
    assert plain[0]["prompt"] == "a plain lighthouse, (soft:1.1), [x]" and "prompt_template" not in plain[0]
    # the plan before the run drew the same prompts the run rendered; a re-plan and a re-run do too
    assert {j["seed"]: j["prompt"] for j in before if j["stage"] == "sketch"} == prompts
    again = planned(recipe, out, capsys)
    assert {j["seed"]: j["prompt"] for j in again if j["stage"] == "sketch"} == prompts
    assert all(j["status"] == "done" for j in again)
    assert cli.main(["run", str(recipe), "--out", str(out)]) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert len(manifest_records(out, "output")) == 7


def test_combinatorial_sweeps_every_expansion(tmp_path, capsys):
    recipe = project(tmp_path, """\
  - name: combo
    type: generate
    wildcards: combinatorial
    prompt: ["a {red|green} __animals__ at __light__", "a {2$$x|y|z} lighthouse", a plain one]
    seeds: [1, 2]
""")
    capsys.readouterr()
    assert cli.main(["validate", str(recipe)]) == 0
    expected = [f"a {c} {a} at {t}" for c, a, t in itertools.product(("red", "green"), ("cat", "dog", "owl"),
                                                                      ("dawn", "dusk"))]
    pairs = [f"a {a},{b} lighthouse" for a, b in itertools.permutations("xyz", 2)]
    assert f"{(len(expected) + len(pairs) + 1) * 2} job(s)" in capsys.readouterr().out
    jobs = planned(recipe, tmp_path / "out", capsys)
    assert sorted({j["prompt"] for j in jobs}) == sorted(expected + pairs + ["a plain one"])
    assert {j["prompt_template"] for j in jobs if j["prompt"] in expected} == {"a {red|green} __animals__ at __light__"}
    assert all("prompt_template" not in j for j in jobs if j["prompt"] == "a plain one")
    # the default, random, makes one job per seed and prompt of the list
    (tmp_path / "recipe.yaml").write_text(recipe.read_text().replace("wildcards: combinatorial", "wildcards: random"))
    assert len(planned(recipe, tmp_path / "out", capsys)) == 3 * 2


def test_an_expanded_prompt_is_the_job_of_that_prompt_written_out(tmp_path):
    """The expanded prompt is the job's identity: the same id as a recipe naming that prompt itself."""
    recipe = project(tmp_path, """\
  - {name: s, type: generate, wildcards: combinatorial, prompt: "a {red|green} cat", seed: 3}
""")
    literal = HEAD + '  - {name: s, type: generate, prompt: ["a red cat", "a green cat"], seed: 3}\n'
    ids = [j.job_id for j in build_plan(parse_recipe(recipe.read_text(), recipe), tmp_path / "o",
                                        hashes=HashCache(None, {})).jobs]
    plain = [j.job_id for j in build_plan(parse_recipe(literal, tmp_path / "recipe.yaml"), tmp_path / "o",
                                          hashes=HashCache(None, {})).jobs]
    assert ids == plain


def test_missing_wildcard_file_and_bad_syntax_are_file_line_at_validate(tmp_path, capsys):
    recipe = project(tmp_path, """\
  - name: a
    type: generate
    prompt: "a __nope__ cat"
  - name: b
    type: generate
    prompt: ["fine", "a {red|green cat"]
""")
    capsys.readouterr()
    assert cli.main(["validate", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert f"{recipe}:7: stages[0].prompt[0]: wildcard __nope__: no " in err
    assert "nope.txt (or .yaml)" in err
    assert f"{recipe}:10: stages[1].prompt[1]: cannot read the wildcard template" in err
    assert "Traceback" not in err


def test_the_example_recipe_plans_without_torch(tmp_path):
    """recipes/prompt-sources.yaml (wildcards, a prompt file, a rows table): validate and plan import no torch."""
    import subprocess
    import sys

    code = ("import sys; from sdbatch import cli\n"
            "rc = cli.main(['validate', 'recipes/prompt-sources.yaml']) or "
            "cli.main(['plan', 'recipes/prompt-sources.yaml', '--out', sys.argv[1]])\n"
            "heavy = [m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules]\n"
            "print('heavy:', heavy); sys.exit(rc or (3 if heavy else 0))")
    repo = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path / "out")], cwd=repo, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "15 job(s)" in result.stdout and "heavy: []" in result.stdout
