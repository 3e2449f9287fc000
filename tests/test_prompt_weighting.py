"""A1111 prompt syntax with compel: weights, BREAK, long prompts, clip skip, SDXL; plain prompts unchanged.

One recipe renders every case on the tiny built-ins through the CLI (a subprocess, one thread); the tests compare
its PNGs with each other, with plain diffusers and with the embeddings compel itself produces.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
from conftest import run_cli
from helpers import THREADS, render_by_stage, tiny_sd_pipe
from helpers import diffusers_image as pipe_image
from helpers import stage_image as image

from sdbatch.stages.prompts import has_syntax, parse_attention

SIZE = 32
STEPS = 2
SECOND_A = "under a red sky with birds"
SECOND_B = "in a green sea with fish"


# ------------------------------------------------------------------------------- the parser (pure)
@pytest.mark.parametrize("text, expected", [  # A1111's own examples (modules/prompt_parser.py), weights rounded
    ("normal text", [[("normal text", 1.0)]]),
    ("an (important) word", [[("an ", 1.0), ("important", 1.1), (" word", 1.0)]]),
    ("(unbalanced", [[("unbalanced", 1.1)]]),
    ("\\(literal\\]", [[("(literal]", 1.0)]]),
    ("(unnecessary)(parens)", [[("unnecessaryparens", 1.1)]]),
    ("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
     [[("a ", 1.0), ("house", 1.573), (" ", 1.1), ("on", 1.0), (" a ", 1.1), ("hill", 0.55), (", sun, ", 1.1),
       ("sky", 1.4641), (".", 1.1)]]),
    ("((x))", [[("x", 1.21)]]),
    ("[x]", [[("x", 0.9091)]]),
    ("(x:1.5)", [[("x", 1.5)]]),
    ("a cat BREAK a dog", [[("a cat", 1.0)], [("a dog", 1.0)]]),
    ("BREAK a dog", [[("", 1.0)], [("a dog", 1.0)]]),  # A1111: an empty first chunk
    ("a dog BREAK", [[("a dog", 1.0)]]),  # nothing after it: no chunk
    ("a BREAKfast", [[("a BREAKfast", 1.0)]]),  # only the word
    ("a cat) b: c", [[("a cat) b: c", 1.0)]]),  # stray closing bracket and colon are text
    ("", [[("", 1.0)]]),
])
def test_parse_attention_as_a1111(text, expected):
    assert parse_attention(text) == expected


def test_has_syntax_is_any_difference_from_the_literal_text():
    assert not any(has_syntax(t) for t in ("a wolf, howling", "a cat)", "x: y", "", "Breakfast"))
    assert all(has_syntax(t) for t in ("a (wolf)", "[a]", "a \\(b\\)", "a BREAK b", "(x:1)"))


# ------------------------------------------------------------------------------------ the rendered recipe
def builtin(name: str) -> Path:
    from sdbatch.sources.tiny import builtin_model_path

    return builtin_model_path(name)


def long_first_half() -> str:
    """A prompt start of more than 75 tokens (the tiny tokenizer's count)."""
    from sdbatch.sources.tiny import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    words = "a quiet lake at dawn with mist over pines and a wooden boat near the shore".split()
    text = ""
    while len(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]) <= 80:
        text = (text + " " + words[len(text.split()) % len(words)]).strip()
    return text + ","


RECIPE = """
name: weights
model: sdbatch/tiny-sd
defaults: {{steps: {steps}, guidance: 7.0, width: {size}, height: {size}, seed: 3}}
stages:
  - {{name: plain, type: generate, prompt: a cat}}
  - {{name: weighted, type: generate, prompt: "a (cat:1.5)"}}
  - {{name: literal, type: generate, prompt: "a (cat:1.5)", prompt_syntax: plain}}
  - {{name: long_a, type: generate, prompt: "{first} {second_a}"}}
  - {{name: long_b, type: generate, prompt: "{first} {second_b}"}}
  - {{name: joined, type: generate, prompt: "a cat, a dog"}}
  - {{name: broken, type: generate, prompt: "a cat BREAK a dog"}}
  - {{name: clip2, type: generate, prompt: a cat, clip_skip: 2}}
  - {{name: xl_plain, type: generate, model: sdbatch/tiny-sdxl, prompt: a cat}}
  - {{name: xl_weighted, type: generate, model: sdbatch/tiny-sdxl, prompt: "a (cat:1.5)"}}
  - {{name: xl_long, type: generate, model: sdbatch/tiny-sdxl, prompt: "{first} {second_a}", negative_prompt: ugly}}
"""


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("weights")
    (root / "recipe.yaml").write_text(RECIPE.format(steps=STEPS, size=SIZE, first=long_first_half(),
                                                    second_a=SECOND_A, second_b=SECOND_B))
    return root


@pytest.fixture(scope="module")
def rendered(project) -> tuple[Path, dict[str, dict]]:
    return render_by_stage(project)


def diffusers_image(pipe, **prompt) -> np.ndarray:
    """Plain diffusers with the recipe's defaults (seed 3)."""
    return pipe_image(pipe, seed=3, steps=STEPS, size=SIZE, **prompt)


def test_weight_changes_the_image_and_is_compels_weighting(rendered, one_thread):
    """``(cat:1.5)`` renders exactly what diffusers renders from compel's own embeddings of ``a (cat)1.5``."""
    from compel import Compel

    assert np.abs(image(rendered, "weighted") - image(rendered, "plain")).max() > 0, "the weight changed nothing"
    pipe = tiny_sd_pipe()
    embeds = Compel(tokenizer=pipe.tokenizer, text_encoder=pipe.text_encoder, truncate_long_prompts=False)("a (cat)1.5")
    assert np.array_equal(image(rendered, "weighted"), diffusers_image(pipe, prompt_embeds=embeds))
    _, records = rendered
    assert records["weighted"]["params"]["prompt_syntax"] == "a1111"
    assert records["weighted"]["prompt"] == "a (cat:1.5)"


def test_plain_prompts_are_plain_diffusers(rendered, one_thread):
    """A prompt without syntax (a1111 mode) and a syntax prompt in plain mode are the pipeline's own strings."""
    pipe = tiny_sd_pipe()
    assert np.array_equal(image(rendered, "plain"), diffusers_image(pipe, prompt="a cat"))
    assert np.array_equal(image(rendered, "literal"), diffusers_image(pipe, prompt="a (cat:1.5)"))
    _, records = rendered
    assert "prompt_syntax" not in records["plain"]["params"] and "clip_skip" not in records["plain"]["params"]
    assert records["literal"]["params"]["prompt_syntax"] == "plain"


def test_long_prompt_is_not_truncated(rendered):
    from sdbatch.sources.tiny import build_tiny_tokenizer

    first = long_first_half()
    assert len(build_tiny_tokenizer()(first, add_special_tokens=False, verbose=False)["input_ids"]) > 75
    assert np.abs(image(rendered, "long_a") - image(rendered, "long_b")).max() > 0, "the second half was cut"
    assert image(rendered, "xl_long").shape == (SIZE, SIZE, 3)  # SDXL: long positive, short negative padded


def test_break_starts_a_new_chunk(rendered):
    from sdbatch.stages.encoding import encode_text

    assert np.abs(image(rendered, "broken") - image(rendered, "joined")).max() > 0
    pipe = tiny_sd_pipe()
    joined, _ = encode_text(pipe, "a cat, a dog", xl=False, syntax=None, clip_skip=None)
    broken, _ = encode_text(pipe, "a cat BREAK a dog", xl=False, syntax=None, clip_skip=None)
    cat, _ = encode_text(pipe, "a cat", xl=False, syntax=None, clip_skip=None)
    assert joined.shape[1] == 77 and broken.shape[1] == 154
    assert np.array_equal(broken[:, :77].numpy(), cat.numpy())  # the first chunk is "a cat" alone


def test_clip_skip_changes_the_image_and_is_in_the_infotext(rendered):
    import torch
    from PIL import Image

    from sdbatch.stages.encoding import encode_text

    out, records = rendered
    assert np.abs(image(rendered, "clip2") - image(rendered, "plain")).max() > 0
    assert records["clip2"]["params"]["clip_skip"] == 2
    with Image.open(out / records["clip2"]["path"]) as im:
        assert "Clip skip: 2" in im.text["parameters"].splitlines()[-1]
    with Image.open(out / records["plain"]["path"]) as im:
        assert "Clip skip" not in im.text["parameters"]
    pipe = tiny_sd_pipe()  # A1111's clip skip 2: the penultimate layer, then the final layer norm
    ids = pipe.tokenizer("a cat", padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        hidden = pipe.text_encoder(ids, output_hidden_states=True).hidden_states[-2]
        expected = getattr(pipe.text_encoder, "text_model", pipe.text_encoder).final_layer_norm(hidden)
    got, _ = encode_text(pipe, "a cat", xl=False, syntax=None, clip_skip=2)
    assert torch.allclose(got, expected, atol=1e-6)


def test_sdxl_weighting_is_compels(rendered):
    import torch
    from compel import CompelForSDXL
    from diffusers import StableDiffusionXLPipeline

    from sdbatch.stages.encoding import encode_text

    assert np.abs(image(rendered, "xl_weighted") - image(rendered, "xl_plain")).max() > 0
    pipe = StableDiffusionXLPipeline.from_pretrained(builtin("sdbatch/tiny-sdxl"))
    embeds, pooled = encode_text(pipe, "a (cat:1.5)", xl=True, syntax=None, clip_skip=None)
    assert torch.equal(embeds, CompelForSDXL(pipe)("a (cat)1.5").embeds)
    with torch.no_grad():
        plain = pipe.encode_prompt("a cat", device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=False)
    assert torch.equal(pooled, plain[2])  # pooled: the first chunk's text, unweighted
    long, long_pooled = encode_text(pipe, "a cat BREAK a dog", xl=True, syntax=None, clip_skip=None)
    assert long.shape[1] == 154 and torch.equal(long_pooled, plain[2])


# ------------------------------------------------------------------------------------------ identity
def plan_ids(project: Path, *overrides: str) -> dict[str, str]:
    from sdbatch.config.recipe import load_recipe
    from sdbatch.core.plan import build_plan
    from sdbatch.io.hashing import HashCache

    loaded = load_recipe(project / "recipe.yaml", list(overrides))
    plan = build_plan(loaded, project / "ids", hashes=HashCache(None, {}))
    return {job.stage: job.job_id for job in plan.jobs}


def test_syntax_free_prompts_keep_their_ids_in_both_modes(project):
    a1111, plain = plan_ids(project), plan_ids(project, "defaults.prompt_syntax=plain")
    for stage in ("plain", "long_a", "joined", "clip2", "xl_plain"):
        assert a1111[stage] == plain[stage], stage
    for stage in ("weighted", "broken", "xl_weighted"):
        assert a1111[stage] != plain[stage], stage
    assert plan_ids(project, "stages.plain.clip_skip=1")["plain"] == a1111["plain"]  # 1 = no skip = unset
    assert plan_ids(project, "stages.plain.clip_skip=2")["plain"] != a1111["plain"]


def test_validate_and_plan_do_not_import_compel_or_torch(project, tmp_path):
    probe = ("import sys\nfrom sdbatch.cli import main\ncode = main(sys.argv[1:])\n"
             "print('HEAVY', [m for m in ('torch', 'compel', 'diffusers') if m in sys.modules])\nsys.exit(code)")
    for args in (["validate", "recipe.yaml"], ["plan", "recipe.yaml", "--out", str(tmp_path / "o")]):
        proc = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, cwd=project)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert proc.stdout.strip().splitlines()[-1] == "HEAVY []", args


def test_bad_values_are_reported_at_their_line(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: sdbatch/tiny-sd\nstages:\n  - name: a\n    type: generate\n    prompt: x\n"
                      "    prompt_syntax: compel\n    clip_skip: 0\n")
    result = run_cli("validate", recipe)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "r.yaml:6: stages[0].prompt_syntax" in result.stderr and "r.yaml:7: stages[0].clip_skip" in result.stderr
    assert "Traceback" not in result.stderr


def test_rehearse_runs_syntax_clip_skip_and_embeddings(tmp_path):
    """``--rehearse`` proves such a recipe offline: embeddings (made for the real model) are left out, as LoRAs
    are; clip skip is capped at the tiny text encoder's depth; the infotext still says what the real run will do."""
    import torch
    from PIL import Image
    from safetensors.torch import save_file

    save_file({"emb_params": torch.zeros(1, 768)}, tmp_path / "easynegative.safetensors")
    (tmp_path / "r.yaml").write_text(
        "model: stabilityai/sd-turbo\ndefaults:\n  clip_skip: 12\n  embeddings: [{path: easynegative.safetensors}]\n"
        f"  steps: {STEPS}\n  width: {SIZE}\n  height: {SIZE}\nstages:\n"
        "  - {name: a, type: generate, prompt: '(masterpiece:1.2), a fox BREAK soft light, [blurry]', "
        "negative_prompt: easynegative}\n")
    result = run_cli("run", "r.yaml", "--rehearse", "--out", "out", cwd=tmp_path, env=THREADS)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    record = [json.loads(line) for line in (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()
              if '"kind": "output"' in line][0]
    assert record["params"]["clip_skip"] == 12 and record["params"]["prompt_syntax"] == "a1111"
    assert "embeddings" not in record["params"]
    with Image.open(tmp_path / "out" / record["path"]) as im:
        assert "Clip skip: 12" in im.text["parameters"]
