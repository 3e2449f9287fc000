"""Every bad recipe is refused by validate AND run: exit 2, one clear line naming the field (file:line), no
traceback, nothing rendered. These run the real CLI in a subprocess, as a user would."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import run_cli
from PIL import Image

HEAD = "model: sdbatch/tiny-sd\n"

CASES = [
    # (id, recipe text, expected line, expected fragment of the message)
    ("yaml-syntax", HEAD + "stages:\n  - name: a\n    type: generate\n    prompt: [unclosed\n", 5, "YAML syntax error"),
    ("empty", "", 1, "empty"),
    ("not-mapping", "- just\n- a list\n", 1, "top level must be a mapping"),
    ("unknown-top-key", HEAD + "colour: red\nstages:\n  - {name: a, type: generate, prompt: x}\n", 2,
     "colour: unknown key 'colour'"),
    ("unknown-stage-key", HEAD + "stages:\n  - name: a\n    type: generate\n    prompt: x\n    promt: y\n", 6,
     "stages[0].promt: unknown key 'promt'"),
    ("unknown-type", HEAD + "stages:\n  - name: a\n    type: outpaint\n", 4,
     "stages[0].type: unknown stage type 'outpaint'"),
    ("strength-range", HEAD + "stages:\n  - {name: a, type: generate, prompt: x}\n"
     "  - name: b\n    type: img2img\n    input: a\n    strength: 1.5\n", 7, "stages[1].strength:"),
    ("strength-range-sweep", HEAD + "stages:\n  - {name: a, type: generate, prompt: x}\n"
     "  - name: b\n    type: img2img\n    input: a\n    strength: [0.5, -0.1]\n", 7, "stages[1].strength[1]:"),
    ("steps-zero", HEAD + "defaults:\n  steps: 0\nstages:\n  - {name: a, type: generate, prompt: x}\n", 3,
     "steps"),
    ("steps-negative", HEAD + "stages:\n  - name: a\n    type: generate\n    prompt: x\n    steps: -3\n", 6,
     "stages[0].steps:"),
    ("width-not-8", HEAD + "stages:\n  - name: a\n    type: generate\n    prompt: x\n    width: 500\n", 6,
     "stages[0].width: must be a multiple of 8"),
    ("height-not-8", HEAD + "defaults: {height: 100}\nstages:\n  - {name: a, type: generate, prompt: x}\n", 2,
     "multiple of 8"),
    ("seed-float", HEAD + "stages:\n  - name: a\n    type: generate\n    prompt: x\n    seeds: [1, 2.5]\n", 6,
     "stages[0].seeds[1]: Input should be a valid integer"),
    ("seed-string", HEAD + "stages:\n  - name: a\n    type: generate\n    prompt: x\n    seed: \"7\"\n", 6,
     "stages[0].seed:"),
    ("duplicate-stage", HEAD + "stages:\n  - {name: a, type: generate, prompt: x}\n"
     "  - {name: a, type: generate, prompt: y}\n", 4, "stages[1].name: duplicate stage name 'a'"),
    ("input-no-stage", HEAD + "stages:\n  - {name: a, type: generate, prompt: x}\n"
     "  - name: b\n    type: img2img\n    input: skech\n", 6, "stages[1].input: 'skech' names no stage"),
    ("input-cycle", HEAD + "stages:\n  - {name: a, type: img2img, input: b, prompt: x}\n"
     "  - {name: b, type: img2img, input: a, prompt: y}\n", 4, "input cycle: a -> b -> a"),
    ("missing-file", HEAD + "stages:\n  - name: b\n    type: img2img\n    input: photos/cat.png\n", 5,
     "stages[0].input: 'photos/cat.png': no such image file"),
    ("glob-nothing", HEAD + "stages:\n  - name: b\n    type: img2img\n    input: 'photos/*.jpg'\n", 5,
     "matches no image file"),
    ("missing-mask", HEAD + "stages:\n  - {name: a, type: generate, prompt: x}\n"
     "  - name: b\n    type: inpaint\n    input: a\n    mask: masks/none.png\n", 7,
     "stages[1].mask: 'masks/none.png': no such mask"),
    ("bad-name", HEAD + "stages:\n  - {name: 'my stage', type: generate, prompt: x}\n", 3,
     "stages[0].name: must contain only letters"),
    ("bad-recipe-name", "name: wolves/../x\n" + HEAD + "stages:\n  - {name: a, type: generate, prompt: x}\n", 1,
     "name: must contain only letters"),
    ("python-tag", HEAD + "stages:\n  - !!python/object/apply:os.system ['touch pwned']\n", 3,
     "not allowed (safe loading only)"),
    ("python-tag-scalar", HEAD + "name: !!python/name:os.system\nstages: []\n", 2, "not allowed"),
    ("no-stages", HEAD + "stages: []\n", 2, "stages:"),
    ("bad-scheduler", HEAD + "stages:\n  - name: a\n    type: generate\n    prompt: x\n    scheduler: dpm-fast\n", 6,
     "stages[0].scheduler:"),
    ("strength-steps", HEAD + "stages:\n  - {name: a, type: generate, prompt: x}\n"
     "  - name: b\n    type: img2img\n    input: a\n    steps: 2\n    strength: 0.2\n", 8, "leaves no denoising step"),
    ("seed-and-seeds", HEAD + "stages:\n  - {name: a, type: generate, prompt: x, seed: 1, seeds: [2]}\n", 3,
     "either 'seed' or 'seeds'"),
    ("model-missing-file", "model: ./weights/none.safetensors\nstages:\n  - {name: a, type: generate, prompt: x}\n", 1,
     "model: './weights/none.safetensors': no such model file"),
    ("duplicate-key", HEAD + "stages:\n  - name: a\n    type: generate\n    prompt: x\n    prompt: y\n", 6,
     "duplicate key"),
]


@pytest.mark.parametrize("case_id,text,line,fragment", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("command", ["validate", "run"])
def test_bad_recipe_is_refused(tmp_path, case_id, text, line, fragment, command):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(text)
    out = tmp_path / "out"
    args = ["validate", recipe] if command == "validate" else ["run", recipe, "--out", out]
    result = run_cli(*args, cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    first = result.stderr.strip().splitlines()[0]
    assert first.startswith(f"{recipe}:{line}: "), first
    assert fragment in result.stderr, result.stderr
    assert not out.exists(), "nothing may be rendered or written for an invalid recipe"
    assert not (tmp_path / "pwned").exists()


def test_every_error_is_reported_at_once(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(HEAD + "stages:\n  - name: a\n    type: generate\n    prompt: x\n    width: 500\n"
                      "    steps: 0\n  - name: b\n    type: img2img\n    input: a\n    strength: 2\n")
    result = run_cli("validate", recipe)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines == [f"{recipe}:6: stages[0].width: must be a multiple of 8 (got 500)",
                     f"{recipe}:7: stages[0].steps: Input should be greater than 0",
                     f"{recipe}:11: stages[1].strength: Input should be less than or equal to 1"]


BOUNDED_VALIDATE = ("import resource, sys, runpy; resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30));"
                    "sys.argv = ['sdbatch', 'validate', sys.argv[1]]; runpy.run_module('sdbatch', run_name='__main__')")


def validate_bounded(recipe: Path) -> tuple[subprocess.CompletedProcess, float]:
    """``sdbatch validate`` in a process limited to 2 GiB of address space: (result, wall seconds)."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", BOUNDED_VALIDATE, str(recipe)], check=False, capture_output=True,
                          text=True, timeout=60)
    return proc, time.perf_counter() - start


def test_alias_bomb_is_answered_quickly(tmp_path):
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 12):
        prev = f"*a{i - 1}"
        lines.append(f"a{i}: &a{i} [{', '.join([prev] * 10)}]")
    recipe = tmp_path / "bomb.yaml"
    recipe.write_text("\n".join(lines) + "\nstages: *a11\n")
    proc, seconds = validate_bounded(recipe)
    assert seconds < 10
    assert proc.returncode == 2, proc.stderr
    assert "alias bomb" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("leaf", ["{}", "{k: 1}"])
def test_merge_key_bomb_is_answered_quickly(tmp_path, leaf):
    """62 lines of ``<<: [*a, *a, *a]`` chains expand 3^58 times: the merges count against the alias budget."""
    lines = [f"a0: &a0 {leaf}"]
    lines += [f"a{i}: &a{i} {{<<: [*a{i - 1}, *a{i - 1}, *a{i - 1}]}}" for i in range(1, 59)]
    lines += [HEAD.strip(), "stages:", "  - {<<: *a58, name: s, type: generate, prompt: x}"]
    assert len(lines) == 62
    recipe = tmp_path / "merge-bomb.yaml"
    recipe.write_text("\n".join(lines) + "\n")
    proc, seconds = validate_bounded(recipe)
    assert proc.returncode == 2, proc.stderr
    assert seconds < 2.0, f"validate took {seconds:.2f} s"
    out = proc.stderr.strip().splitlines()
    assert len(out) == 1 and "Traceback" not in proc.stderr, proc.stderr
    match = re.fullmatch(rf"{re.escape(str(recipe))}:(\d+): YAML expands to more than \d+ values \(an alias bomb\?\)",
                         out[0])
    assert match, out[0]
    assert "<<" in lines[int(match.group(1)) - 1], "the line named is a merge that expands too far"


def nested_lists(levels: int) -> str:
    return "[" * levels + "x" + "]" * levels


DEEP = 100  # nesting levels (the limit is 64)
DEEP_CASES = [
    ("flow-lists", HEAD + "stages:\n  - {name: a, type: generate, prompt: " + nested_lists(100_000) + "}\n", 3),
    ("flow-mappings", HEAD + "x: " + "{a: " * 5000 + "1" + "}" * 5000 + "\n", 2),
    ("block-mappings", "".join("  " * i + "k:\n" for i in range(DEEP)) + "  " * DEEP + "x: 1\n", 65),
    ("block-lists", "".join("  " * i + "-\n" for i in range(DEEP)) + "  " * DEEP + "- x\n", 65),
    ("alias-chain", "l0: &l0 [x]\n" + "".join(f"l{i}: &l{i} [*l{i - 1}]\n" for i in range(1, DEEP)), 64),
    ("alias-in-itself", HEAD + "stages: &s [*s]\n", 2),
    ("merge-of-itself", HEAD + "stages:\n  - &s {<<: *s, name: a, type: generate, prompt: x}\n", 3),
]


@pytest.mark.parametrize("text,line", [c[1:] for c in DEEP_CASES], ids=[c[0] for c in DEEP_CASES])
def test_deep_nesting_is_refused_with_one_line(tmp_path, text, line):
    recipe = tmp_path / "deep.yaml"
    recipe.write_text(text)
    proc, seconds = validate_bounded(recipe)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "RecursionError" not in proc.stderr
    out = proc.stderr.strip().splitlines()
    assert len(out) == 1, proc.stderr
    assert re.fullmatch(rf"{re.escape(str(recipe))}:{line}: YAML nests deeper than 64 levels of .*", out[0]), out[0]
    assert seconds < 2.0


def test_defaults_error_names_where_the_value_came_from(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(HEAD + "defaults:\n  strength: 3\nstages:\n  - {name: a, type: generate, prompt: x}\n"
                      "  - {name: b, type: img2img, input: a}\n")
    result = run_cli("validate", recipe)
    assert result.returncode == 2
    assert f"{recipe}:3: defaults.strength" in result.stderr


def test_set_overrides_and_bad_set(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(HEAD + "stages:\n  - {name: a, type: generate, prompt: x, seeds: [1, 2]}\n")
    ok = run_cli("validate", recipe, "--set", "defaults.steps=10", "--set", "stages.a.seeds=[1, 2, 3]")
    assert ok.returncode == 0 and "3 job(s)" in ok.stdout
    bad = run_cli("validate", recipe, "--set", "stages.zz.prompt=y")
    assert bad.returncode == 2 and "no stage named 'zz'" in bad.stderr
    bad = run_cli("validate", recipe, "--set", "defaults.steps=-1")
    assert bad.returncode == 2 and "defaults.steps" in bad.stderr


def test_mask_folder_matched_by_stem(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "masks").mkdir()
    for name in ("a", "b"):
        Image.new("RGB", (64, 64)).save(tmp_path / "in" / f"{name}.png")
    Image.new("L", (64, 64)).save(tmp_path / "masks" / "a.png")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(HEAD + "stages:\n  - name: fix\n    type: inpaint\n    input: in\n    mask: masks\n")
    result = run_cli("validate", recipe)
    assert result.returncode == 2 and "no mask with the stem of input 'b.png'" in result.stderr
    Image.new("L", (64, 64)).save(tmp_path / "masks" / "b.png")
    assert run_cli("validate", recipe).returncode == 0


def test_offline_hub_model_fails_with_one_line_suggesting_rehearse(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: nobody-here/no-such-model-xyz\nstages:\n  - {name: a, type: generate, prompt: x}\n")
    out = tmp_path / "out"
    result = run_cli("run", recipe, "--out", out, env={"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hf")})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "nobody-here/no-such-model-xyz" in lines[0] and "--rehearse" in lines[0]
    assert not out.exists()
