"""The A1111 ``parameters`` text read back the way AUTOMATIC1111's "PNG Info" reads it (sd-parsers and
Civitai use the same rules): every output type, animate and interpolate frames, schedule types, quoting."""

from __future__ import annotations

import json
import re

import pytest
from conftest import manifest_records, run_cli
from PIL import Image

from sdbatch.io.artifacts import a1111_parameters

# AUTOMATIC1111/stable-diffusion-webui modules/infotext_utils.py: re_param, quote/unquote and the line logic of
# parse_generation_parameters (styles, defaults and back-compat left out).
RE_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
RE_IMAGESIZE = re.compile(r"^(\d+)x(\d+)$")


def unquote(text: str) -> str:
    if len(text) == 0 or text[0] != '"' or text[-1] != '"':
        return text
    try:
        return json.loads(text)
    except Exception:
        return text


def parse_generation_parameters(x: str) -> dict[str, str]:
    res: dict[str, str] = {}
    prompt = ""
    negative_prompt = ""
    done_with_prompt = False
    *lines, lastline = x.strip().split("\n")
    if len(RE_PARAM.findall(lastline)) < 3:
        lines.append(lastline)
        lastline = ""
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            done_with_prompt = True
            line = line[16:].strip()
        if done_with_prompt:
            negative_prompt += ("" if negative_prompt == "" else "\n") + line
        else:
            prompt += ("" if prompt == "" else "\n") + line
    res["Prompt"] = prompt
    res["Negative prompt"] = negative_prompt
    for k, v in RE_PARAM.findall(lastline):
        if v[0] == '"' and v[-1] == '"':
            v = unquote(v)
        m = RE_IMAGESIZE.match(v)
        if m is not None:
            res[f"{k}-1"] = m.group(1)
            res[f"{k}-2"] = m.group(2)
        else:
            res[k] = v
    return res


def record(**changes) -> dict:
    base = {"kind": "output", "type": "generate", "prompt": "a wolf howling at the moon", "negative_prompt": "blurry",
            "seed": 1000, "params": {"steps": 25, "scheduler": "euler-a", "guidance": 7.0, "width": 512,
                                     "height": 768},
            "sampler": "Euler a", "model": {"id": "stabilityai/sd-turbo", "revision": "0123456789abcdef"}}
    base.update(changes)
    return base


def read(rec: dict) -> dict[str, str]:
    return parse_generation_parameters(a1111_parameters(rec))


def test_generate_reads_back():
    res = read(record())
    assert res["Prompt"] == "a wolf howling at the moon" and res["Negative prompt"] == "blurry"
    assert (res["Steps"], res["Sampler"], res["CFG scale"], res["Seed"]) == ("25", "Euler a", "7", "1000")
    assert (res["Size-1"], res["Size-2"]) == ("512", "768")
    assert res["Model hash"] == "0123456789" and res["Model"] == "sd-turbo"
    assert "Denoising strength" not in res and "Variation seed" not in res


def test_img2img_reads_back():
    res = read(record(type="img2img", params={"steps": 30, "scheduler": "ddim", "guidance": 7.5, "strength": 0.8,
                                              "width": 64, "height": 64}, sampler="DDIM"))
    assert (res["Sampler"], res["CFG scale"], res["Denoising strength"]) == ("DDIM", "7.5", "0.8")
    assert "Schedule type" not in res  # A1111's DDIM has none


@pytest.mark.parametrize(("scheduler", "sampler", "schedule_type"), [
    ("dpmpp-2m-karras", "DPM++ 2M", "Karras"),
    ("dpmpp-2m", "DPM++ 2M", "Uniform"),  # never read as A1111's default for DPM++ 2M (Karras)
    ("dpmpp-sde-karras", "DPM++ SDE", "Karras"),
    ("euler", "Euler", "Uniform"),
])
def test_schedule_type(scheduler, sampler, schedule_type):
    for rec in (record(params={**record()["params"], "scheduler": scheduler}, sampler=None),  # name from params
                record(params={**record()["params"], "scheduler": scheduler})
                | {"sampler": {"dpmpp-2m-karras": "DPM++ 2M Karras", "dpmpp-2m": "DPM++ 2M",
                               "dpmpp-sde-karras": "DPM++ SDE Karras", "euler": "Euler"}[scheduler]}):
        res = read(rec)
        assert (res["Sampler"], res["Schedule type"]) == (sampler, schedule_type)


def test_animate_frame_writes_its_numbers_not_schedule_text():
    rec = record(type="animate", params={"steps": 4, "scheduler": "default", "guidance": "0:(7)",
                                         "strength": "0:(0.5), 6:(0.65)", "width": 64, "height": 64},
                 sampler="PLMS", role="frame",
                 frame={"index": 3, "seed": 1003, "prompt": "a castle at dusk",
                        "schedule": {"guidance": 7.0, "strength": 0.5250000000000001, "zoom": 1.02}})
    text = a1111_parameters(rec)
    assert "0:(" not in text
    res = parse_generation_parameters(text)
    assert (res["Prompt"], res["Seed"], res["CFG scale"], res["Denoising strength"]) == \
        ("a castle at dusk", "1003", "7", "0.525")


def interpolate_record(frame: dict) -> dict:
    return record(type="interpolate", seed=9, role="frame", frame=frame, sampler="PLMS",
                  params={"steps": 2, "scheduler": "default", "guidance": 7.0, "seeds": [9, 12], "frames": 4,
                          "width": 32, "height": 32})


def test_interpolate_mid_frame_is_a_variation_seed():
    res = read(interpolate_record({"index": 1, "segment": [9, 12], "t": 1 / 3, "seed": 9, "variation_seed": 12,
                                   "variation_strength": round(1 / 3, 4)}))
    assert (res["Seed"], res["Variation seed"], res["Variation seed strength"]) == ("9", "12", "0.3333")


def test_interpolate_end_frame_has_only_its_seed():
    res = read(interpolate_record({"index": 3, "segment": [9, 12], "t": 1.0, "seed": 12}))
    assert res["Seed"] == "12"
    assert "Variation seed" not in res and "Variation seed strength" not in res


def test_values_with_commas_colons_quotes_read_back_whole():
    rec = record(model={"id": "/models/dreamshaper, v8.safetensors", "revision": "abcdef0123456789"})
    res = read(rec)
    assert res["Model"] == "dreamshaper, v8" and res["Model hash"] == "abcdef0123"
    assert res["Seed"] == "1000" and res["Steps"] == "25"  # nothing after it is lost
    for name in ('org/a:b', 'say "hi"', 'x, "y": z'):
        assert read(record(model={"id": name, "revision": "r"}))["Model"] == name.split("/")[-1]


RECIPE = """\
name: dreamtext
model: sdbatch/tiny-sd
defaults: {steps: 2, guidance: 6.0, width: 32, height: 32}
stages:
  - name: dream
    type: interpolate
    prompt: a lighthouse
    seeds: [9, 12, 20]
    frames: 5
    fps: 8
"""


def test_interpolate_rehearsal_frames_read_back(tmp_path):
    recipe = tmp_path / "dreamtext.yaml"
    recipe.write_text(RECIPE)
    out = tmp_path / "out"
    result = run_cli("run", recipe, "--rehearse", "--out", out)
    assert result.returncode == 0, result.stderr
    frames = sorted((r for r in manifest_records(out, "output") if r["role"] == "frame"),
                    key=lambda r: r["frame"]["index"])
    # path_point over 3 seeds, 5 frames: (0, 0), (0, .5), (1, 0), (1, .5), (1, 1)
    expected = [("9", None, None), ("9", "12", "0.5"), ("12", None, None), ("12", "20", "0.5"), ("20", None, None)]
    assert len(frames) == 5
    for rec, (seed, variation, strength) in zip(frames, expected):
        with Image.open(out / rec["path"]) as im:
            res = parse_generation_parameters(im.text["parameters"])
        assert res["Prompt"] == "a lighthouse" and res["Steps"] == "2" and res["CFG scale"] == "6"
        assert (res["Seed"], res.get("Variation seed"), res.get("Variation seed strength")) == \
            (seed, variation, strength)
        frame = rec["frame"]
        assert str(frame["seed"]) == seed
        assert frame.get("variation_seed") == (int(variation) if variation else None)
        assert frame.get("variation_strength") == (float(strength) if strength else None)


@pytest.mark.parametrize("config, sampler, schedule_type", [
    ({"_class_name": "DPMSolverMultistepScheduler", "use_karras_sigmas": True}, "DPM++ 2M", "Karras"),
    ({"_class_name": "DPMSolverMultistepScheduler", "algorithm_type": "sde-dpmsolver++", "use_karras_sigmas": True},
     "DPM++ 2M SDE", "Karras"),
    ({"_class_name": "EulerDiscreteScheduler"}, "Euler", "Uniform"),
    ({"_class_name": "DDIMScheduler"}, "DDIM", None),
])
def test_default_scheduler_names_the_models_own_schedule(tmp_path, tiny_sd_folder, config, sampler, schedule_type):
    """``scheduler: default`` on a model whose scheduler config uses Karras sigmas writes ``Schedule type: Karras``
    (A1111 would otherwise read a different sampler from the same file)."""
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_sd_folder, model)
    path = model / "scheduler" / "scheduler_config.json"
    base = json.loads(path.read_text())
    base = {k: v for k, v in base.items() if k not in ("use_karras_sigmas", "algorithm_type")}
    path.write_text(json.dumps({**base, **config}))
    index = json.loads((model / "model_index.json").read_text())
    index["scheduler"] = ["diffusers", config["_class_name"]]  # the class from_pretrained builds
    (model / "model_index.json").write_text(json.dumps(index))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model: {model}\ndefaults: {{steps: 2, width: 32, height: 32}}\n"
                      "stages:\n  - name: a\n    type: generate\n    prompt: a fox\n    seed: 3\n")
    out = tmp_path / "out"
    result = run_cli("run", recipe, "--out", out)
    assert result.returncode == 0, result.stderr
    [rec] = manifest_records(out, "output")
    with Image.open(out / rec["path"]) as im:
        res = parse_generation_parameters(im.text["parameters"])
    assert res["Sampler"] == sampler
    assert res.get("Schedule type") == schedule_type
