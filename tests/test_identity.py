"""Which fields are identity and which are runtime options is declared once, in the stage config models.

Every field of every registered stage type is either a runtime option (changing it keeps the job id) or
identity (changing it changes the id). ``ALTERNATIVES`` must name a changed value for every identity field:
a new field without one fails here, so nobody adds a field without deciding what it is.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from sdbatch.config.recipe import parse_recipe
from sdbatch.core.plan import build_plan
from sdbatch.io.hashing import HashCache
from sdbatch.stages import stage_configs

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "recipes"

BASE = {
    "generate": {"prompt": "a lighthouse", "seed": 1},
    "img2img": {"input": "masks/moon.png", "prompt": "a lighthouse", "seed": 1},
    "inpaint": {"input": "masks/moon.png", "mask": "masks/moon.png", "prompt": "a lighthouse", "seed": 1},
    "restyle": {"input": "clips/walk.mp4", "prompt": "a lighthouse", "seed": 1, "end_frame": 2},
    "animate": {"prompt": "a lighthouse", "seed": 1, "frames": 3},
    "interpolate": {"prompt": "a lighthouse", "seeds": [1, 2], "frames": 3},
    "upscale": {"input": "masks/moon.png", "seed": 1},
}

#: identity field -> a different valid value (per stage type where it must differ)
ALTERNATIVES = {
    "name": "other",
    "model": "sdbatch/tiny-sdxl",
    "dtype": "float16",
    "prompt": "a castle",
    "negative_prompt": "blurry",
    "steps": 7,
    "guidance": 3.0,
    "width": 48,
    "height": 40,
    "scheduler": "euler-a",
    "seed": 2,
    "seeds": [5, 6],
    "strength": 0.6,
    "input": "chain.yaml",  # replaced per type below
    "mask": "masks/moon-copy.png",
    "loras": [{"path": "lora.safetensors", "weight": 0.5}],
    "embeddings": [{"path": "lora.safetensors", "token": "zzemb"}],  # hashed by content, never loaded to plan
    "clip_skip": 2,
    "prompt_syntax": "plain",
    "wildcards": "combinatorial",
    "vae": "sdbatch/tiny-sdxl",
    "seed_behavior": "iter",
    "every_nth_frame": 2,
    "start_frame": 1,
    "end_frame": 3,
    "coherence": {"flow": 0.5},
    "audio": "drop",
    "mode": "3d",
    "frames": 4,
    "fps": 10.0,
    "prompts": None,  # per type below
    "init": "masks/moon.png",
    "noise": "0:(0.1)",
    "contrast": "0:(0.9)",
    "color_coherence": "hsv",
    "cadence": 2,
    "border": "wrap",
    "motion": {"zoom": "0:(1.1)"},
    "controlnet": [{"model": "sdbatch/tiny-controlnet", "image": "masks/moon.png"}],  # stages/control.py
    "ip_adapter": [{"model": "sdbatch/tiny-ip-adapter", "image": "masks/moon.png"}],  # stages/ipadapter_config.py
    "hires": {"upscaler": "lanczos"},  # stages/hires.py
    "refiner": {"model": "sdbatch/tiny-sdxl-refiner"},  # stages/refiner.py
    "max_sequence_length": 128,  # SD3 / Flux.1 (config/families.py)
    "true_cfg": 2.0,
    "upscaler": "sd-x4",  # stages/upscale.py
    "scale": 3.0,
    "tile": 256,
    "noise_level": 40,
}
PER_TYPE = {
    ("img2img", "input"): "masks/moon-copy.png",
    ("inpaint", "input"): "masks/moon-copy.png",
    ("restyle", "input"): "clips/walk-copy.mp4",
    ("animate", "prompts"): {0: "a castle"},
    ("animate", "seed_behavior"): "fixed",
    ("animate", "strength"): "0:(0.5)",
    ("animate", "guidance"): "0:(5)",
    ("interpolate", "prompts"): ["a castle", "a ship"],
    ("upscale", "input"): "masks/moon-copy.png",
}
#: identity only in combination with another value; checked with that value set
CONDITIONAL = {
    ("animate", "depth_model"): {"mode": "3d"},  # the depth model of a 2d animation is never loaded
    ("*", "pipeline_config"): None,  # configs of a single-file model: checked in test_model_sources
    ("animate", "prompt"): {"prompts": None},
    ("*", "prompt_syntax"): {"prompt": "a (lighthouse:1.2)"},  # a prompt without A1111 syntax reads the same
    ("*", "wildcards"): {"prompt": "a {red|green|blue} lighthouse"},  # a prompt without templates: the same jobs
    ("*", "rows"): None,  # a table's rows are the jobs: checked in test_prompt_rows
    ("generate", "refiner"): {"model": "sdbatch/tiny-sdxl"},  # an SDXL base only
    **{(t, k): {"model": "sdbatch/tiny-flux"} for t in ("generate", "img2img", "inpaint")
       for k in ("max_sequence_length", "true_cfg")},
    ("*", "max_sequence_length"): None,  # refused at validate on the video stages and upscale (test_flow_families)
    ("*", "true_cfg"): None,
    ("upscale", "noise_level"): {"upscaler": "sd-x4"},  # sd-x4's only
    ("upscale", "frames"): {"input": "clips/walk.mp4"},  # a video input only
    ("upscale", "audio"): {"input": "clips/walk.mp4"},
}
RUNTIME_VALUES = {
    "device": "cpu", "batch_size": 4, "attention": "sdpa", "channels_last": True, "compile": True,
    "vae_tiling": True, "offload": "model", "tf32": True, "previews": 1,
}


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("identity")
    (root / "masks").mkdir()
    (root / "clips").mkdir()
    moon = (RECIPES / "masks" / "moon.png").read_bytes()
    (root / "masks" / "moon.png").write_bytes(moon)
    from PIL import Image

    Image.new("RGB", (64, 64), (10, 20, 30)).save(root / "masks" / "moon-copy.png")
    clip = (RECIPES / "clips" / "walk.mp4").read_bytes()
    (root / "clips" / "walk.mp4").write_bytes(clip)
    (root / "clips" / "walk-copy.mp4").write_bytes(clip + b"\0")  # same frames, other content hash
    (root / "lora.safetensors").write_bytes(b"not really a lora, but hashed by content")
    return root


def plan_ids(project: Path, stage: dict) -> list[str]:
    import yaml

    recipe = {"name": "identity", "model": "sdbatch/tiny-sd", "stages": [stage]}
    path = project / "recipe.yaml"
    loaded = parse_recipe(yaml.safe_dump(recipe), path)
    plan = build_plan(loaded, project / "out", hashes=HashCache(None, {}))
    return [job.job_id for job in plan.jobs]


def base_stage(stage_type: str) -> dict:
    return {"name": "s", "type": stage_type, **copy.deepcopy(BASE[stage_type])}


@pytest.mark.parametrize("stage_type", list(BASE))
def test_every_field_is_classified(stage_type):
    config = stage_configs()[stage_type]
    runtime = set(config.runtime_fields())
    assert runtime == set(RUNTIME_VALUES), "a new runtime option needs a value in RUNTIME_VALUES"
    unknown = [name for name in config.model_fields
               if name not in runtime and name != "type" and name not in ALTERNATIVES
               and (stage_type, name) not in CONDITIONAL and ("*", name) not in CONDITIONAL]
    assert not unknown, f"{stage_type}: decide whether these fields are identity or runtime: {unknown}"


@pytest.mark.parametrize("stage_type", list(BASE))
def test_changing_an_identity_field_changes_the_job_id(project, stage_type):
    config = stage_configs()[stage_type]
    names = [n for n in config.model_fields if n not in config.runtime_fields() and n != "type"]
    for name in names:
        condition = CONDITIONAL.get((stage_type, name), CONDITIONAL.get(("*", name), {}))
        if condition is None:
            continue
        before = base_stage(stage_type)
        for key, value in condition.items():
            if value is None:
                before.pop(key, None)
            else:
                before[key] = value
        after = copy.deepcopy(before)
        if name == "depth_model":
            after[name] = "sdbatch/tiny-depth"
        else:
            after[name] = PER_TYPE.get((stage_type, name), ALTERNATIVES[name])
        if name == "seeds":
            after.pop("seed", None)
            if stage_type == "interpolate":
                after["seeds"] = [1, 3]
        if name == "prompts":
            after.pop("prompt", None)
        if name == "seed" and stage_type == "interpolate":
            continue  # interpolate takes only seeds
        assert plan_ids(project, before) != plan_ids(project, after), f"{stage_type}.{name} is not in the job id"


@pytest.mark.parametrize("stage_type", list(BASE))
def test_changing_a_runtime_option_keeps_the_job_id(project, stage_type):
    before = plan_ids(project, base_stage(stage_type))
    for name, value in RUNTIME_VALUES.items():
        stage = dict(base_stage(stage_type), **{name: value})
        assert plan_ids(project, stage) == before, f"{stage_type}.{name} is a runtime option but changes the id"
