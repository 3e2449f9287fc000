"""controlnet_aux preprocessors on a ControlNet unit (issue 12): lineart, softedge (HED) and pidi really run.

There is no network: the weights are random tensors of the real architectures (controlnet_aux's own lineart
``Generator``, ``ControlNetHED_Apache2``, ``pidinet``), saved under the file names controlnet_aux's
``from_pretrained`` reads (``sk_model.pth``, ``sk_model2.pth``, ``ControlNetHED.pth``, ``table5_pidinet.pth``, the
pidi one wrapped as its release is: ``{"state_dict": {"module.<key>": ...}}``) in a folder the recipe names with
``annotators:``; sdbatch loads them through controlnet_aux's real loading path. Checked: the saved control image
is exactly what controlnet_aux makes of the input (and is neither blank nor constant), the manifest and the
infotext (A1111's ``Module:`` names), job ids (the preprocessor and the weights are identity; canny units keep
theirs), reproduce, --rehearse (random stand-ins, no download; a clear refusal where there is none), and the
refusals at validate (missing folder or file, pickles without allow_pickle, controlnet_aux not importable).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
from conftest import image_records, manifest_records
from conftest import png_pixels as pixels

from sdbatch.cli import main

SIZE = 32
AUX = ("lineart", "softedge", "pidi")

RECIPE = f"""
name: aux
model: sdbatch/tiny-sd
allow_pickle: true
defaults: {{steps: 2, guidance: 7.0, width: {SIZE}, height: {SIZE}, seed: 3, strength: 0.6}}
stages:
  - {{name: edges, type: img2img, input: input.png, prompt: a dog,
      controlnet: [{{model: sdbatch/tiny-controlnet, preprocess: canny}}]}}
  - {{name: lineart, type: img2img, input: input.png, prompt: a dog,
      controlnet: [{{model: sdbatch/tiny-controlnet, preprocess: lineart, annotators: ann}}]}}
  - {{name: softedge, type: img2img, input: input.png, prompt: a dog,
      controlnet: [{{model: sdbatch/tiny-controlnet, preprocess: softedge, annotators: ann}}]}}
  - {{name: pidi, type: generate, prompt: a dog,
      controlnet: [{{model: sdbatch/tiny-controlnet, image: input.png, preprocess: pidi, annotators: ann}}]}}
"""


def save_annotators(folder: Path, seed: int = 0) -> None:
    """Random weights of controlnet_aux's real architectures under the names its from_pretrained loads."""
    import torch
    from controlnet_aux.hed import ControlNetHED_Apache2
    from controlnet_aux.lineart import Generator
    from controlnet_aux.pidi.model import pidinet

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    torch.save(Generator(3, 1, 3).state_dict(), folder / "sk_model.pth")
    torch.save(Generator(3, 1, 3).state_dict(), folder / "sk_model2.pth")
    hed = ControlNetHED_Apache2()
    with torch.no_grad():
        hed.norm.copy_(torch.full((1, 3, 1, 1), 100.0))  # the release's mean colour: edges, not a saturated map
    torch.save(hed.state_dict(), folder / "ControlNetHED.pth")
    pidi = pidinet()
    with torch.no_grad():  # pidinet's own init maps every image to flat grey
        for weight in (p for p in pidi.parameters() if p.dim() > 1):
            weight.mul_(2.0 + seed)
    torch.save({"state_dict": {f"module.{k}": v for k, v in pidi.state_dict().items()}},
               folder / "table5_pidinet.pth")


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    from PIL import Image

    root = tmp_path_factory.mktemp("controlnet-aux")
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    image = np.stack([xx * 8, yy * 8, ((xx // 8 + yy // 8) % 2) * 255], axis=2).clip(0, 255).astype(np.uint8)
    image[10:22, 6:26] = (250, 40, 30)  # a shape with edges
    Image.fromarray(image).save(root / "input.png")
    save_annotators(root / "ann")
    (root / "recipe.yaml").write_text(RECIPE)
    return root


@pytest.fixture(scope="module")
def rendered(project) -> tuple[Path, dict]:
    out = project / "out"
    assert main(["run", str(project / "recipe.yaml"), "--out", str(out)]) == 0
    return out, {stage: found[-1] for stage, found in image_records(out).items()}


def manifest(out: Path) -> list[dict]:
    return manifest_records(out)


def direct(project: Path, name: str):
    """What controlnet_aux itself makes of the input with the folder's weights (its own from_pretrained)."""
    import controlnet_aux
    from PIL import Image

    cls = {"lineart": controlnet_aux.LineartDetector, "softedge": controlnet_aux.HEDdetector,
           "pidi": controlnet_aux.PidiNetDetector}[name]
    detector = cls.from_pretrained(str(project / "ann"))
    with Image.open(project / "input.png") as im:
        out = detector(im.convert("RGB"), detect_resolution=64, image_resolution=64)  # sides round to 64s
    return np.asarray(out.convert("RGB").resize((SIZE, SIZE)), dtype=np.int16)


@pytest.mark.parametrize("stage", AUX)
def test_control_image_is_controlnet_aux_own_output(rendered, project, stage):
    from sdbatch.io.hashing import sha256_file

    out, records = rendered
    record = records[stage]
    (entry,) = record["controlnet"]
    assert entry["path"] == f"{stage}/control/{Path(record['path']).stem}-0.png"
    saved = out / entry["path"]
    assert entry["sha256"] == sha256_file(saved)
    control = pixels(saved)
    assert control.shape == (SIZE, SIZE, 3)
    assert np.array_equal(control, direct(project, stage))  # exactly controlnet_aux's image of this input
    assert control.std() > 2 and len(np.unique(control)) > 8, (control.min(), control.max(), control.std())
    assert not np.array_equal(control, pixels(out / records["edges"]["controlnet"][0]["path"]))


def test_infotext_names_the_module_and_ids_follow_preprocessor_and_weights(rendered, project, tmp_path):
    from PIL import Image

    from sdbatch.config.recipe import load_recipe
    from sdbatch.core.plan import build_plan

    out, records = rendered
    expected = {"lineart": "lineart_realistic", "softedge": "softedge_hed", "pidi": "softedge_pidinet",
                "edges": "canny"}
    for stage, module in expected.items():
        with Image.open(out / records[stage]["path"]) as im:
            text = im.text["parameters"]
        assert f'ControlNet 0: "Module: {module}, Model: tiny-controlnet' in text, text
    units = {stage: records[stage]["params"]["controlnet"][0] for stage in expected}
    assert "annotators" not in units["edges"]  # canny: the unit is as before (older ids stay)
    assert units["lineart"]["annotators"].startswith("folder:ann@")
    assert len({records[s]["job_id"] for s in ("lineart", "softedge")}) == 2  # same input, other preprocessor

    # other weights in the folder -> another id; canny's id does not move
    copy = tmp_path / "p"
    shutil.copytree(project, copy, ignore=shutil.ignore_patterns("out"))
    before = {j.stage: j.job_id for j in build_plan(load_recipe(copy / "recipe.yaml"), copy / "out").jobs}
    assert before == {s: records[s]["job_id"] for s in expected}
    save_annotators(copy / "ann", seed=1)
    after = {j.stage: j.job_id for j in build_plan(load_recipe(copy / "recipe.yaml"), copy / "out").jobs}
    assert after["edges"] == before["edges"]
    assert all(after[s] != before[s] for s in AUX)


def test_reproduce_finds_the_folder_by_content_and_matches(rendered, tmp_path, capsys):
    out, records = rendered
    capsys.readouterr()
    target = out / records["lineart"]["path"]
    assert main(["reproduce", str(target), "--out", str(tmp_path / "again")]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("match")


@pytest.mark.parametrize("unit,words", [
    ("{model: sdbatch/tiny-controlnet, preprocess: lineart, annotators: ./nowhere}", "no such folder"),
    ("{model: sdbatch/tiny-controlnet, preprocess: lineart, annotators: half}", "no sk_model2.pth in it"),
    ("{model: sdbatch/tiny-controlnet, preprocess: pidi, annotators: input.png}", "not a folder"),
    ("{model: sdbatch/tiny-controlnet, preprocess: lineart, annotators: 'not a hub id'}", "not a hub id"),
])
def test_bad_annotators_refused_at_validate(project, tmp_path, capsys, unit, words):
    shutil.copy(project / "input.png", tmp_path / "input.png")
    (tmp_path / "half").mkdir()
    shutil.copy(project / "ann" / "sk_model.pth", tmp_path / "half" / "sk_model.pth")
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("model: sdbatch/tiny-sd\nallow_pickle: true\nstages:\n  - name: s\n    type: img2img\n"
                      f"    input: input.png\n    prompt: x\n    controlnet: [{unit}]\n")
    assert main(["validate", str(recipe)]) == 2
    err = capsys.readouterr().err
    line = next((ln for ln in err.splitlines() if "stages[0].controlnet[0].annotators:" in ln), None)
    assert line is not None and words in line, err
    assert line.startswith(f"{recipe}:8: ") and "Traceback" not in err


@pytest.mark.parametrize("annotators", ["ann", None])
def test_pickles_need_allow_pickle(project, tmp_path, capsys, annotators):
    """The weights are .pth pickles: the one pickle policy applies (a folder's file is named; a hub id too)."""
    shutil.copytree(project / "ann", tmp_path / "ann")
    shutil.copy(project / "input.png", tmp_path / "input.png")
    extra = f", annotators: {annotators}" if annotators else ""
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: sdbatch/tiny-sd\nstages:\n  - {name: s, type: img2img, input: input.png, prompt: x,\n"
                      f"     controlnet: [{{model: sdbatch/tiny-controlnet, preprocess: lineart{extra}}}]}}\n")
    assert main(["validate", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert "controlnet[0].annotators:" in err and "allow_pickle: true" in err, err
    assert ("sk_model.pth is a pickle file" if annotators else "lllyasviel/Annotators's lineart weights") in err


def test_refused_with_the_install_command_when_controlnet_aux_is_not_importable(project, tmp_path):
    """In a fresh process where controlnet_aux cannot be found (``sys.modules[...] = None``: find_spec says
    None), validate refuses the unit with the extra's install command; canny still validates."""
    shutil.copy(project / "input.png", tmp_path / "input.png")
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: sdbatch/tiny-sd\nstages:\n  - name: s\n    type: img2img\n    input: input.png\n"
                      "    prompt: x\n    controlnet:\n      - {model: sdbatch/tiny-controlnet, preprocess: canny}\n"
                      "      - {model: sdbatch/tiny-controlnet, preprocess: softedge}\n")
    code = ("import sys; sys.modules['controlnet_aux'] = None; from sdbatch.cli import main; "
            f"sys.exit(main(['validate', {str(recipe)!r}]))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert res.returncode == 2, res.stdout + res.stderr
    lines = [ln for ln in res.stderr.splitlines() if "controlnet[" in ln]
    assert lines == [f"{recipe}:9: stages[0].controlnet[1].preprocess: 'softedge' needs controlnet_aux, which is "
                     "not installed: pip install -e \".[controlnet-aux]\""], res.stderr
    assert "Traceback" not in res.stderr


@pytest.mark.skipif(__import__("importlib.util").util.find_spec("mediapipe") is not None,
                    reason="mediapipe is installed here")
def test_a_preprocessor_needing_another_package_names_it(project, tmp_path, capsys):
    shutil.copy(project / "input.png", tmp_path / "input.png")
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: sdbatch/tiny-sd\nstages:\n  - {name: s, type: img2img, input: input.png, prompt: x,\n"
                      "     controlnet: [{model: sdbatch/tiny-controlnet, preprocess: mediapipe_face}]}\n")
    assert main(["validate", str(recipe)]) == 2
    assert "stages[0].controlnet[0].preprocess: 'mediapipe_face' needs mediapipe, which is not installed: " \
           "pip install mediapipe" in capsys.readouterr().err


def test_rehearse_uses_random_stand_ins_offline_and_refuses_where_there_is_none(project, tmp_path, capsys):
    """--rehearse with the default ``annotators`` (the hub's lllyasviel/Annotators, not downloaded): lineart runs
    with random weights of its architecture (no network), the same image every time, and records that; a
    preprocessor without a stand-in is refused by plan --rehearse (as run --rehearse), naming the key to set."""
    shutil.copy(project / "input.png", tmp_path / "input.png")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model: stable-diffusion-v1-5/stable-diffusion-v1-5\nallow_pickle: true\n"
                      f"defaults: {{steps: 2, width: {SIZE}, height: {SIZE}, strength: 0.6}}\nstages:\n"
                      "  - {name: s, type: img2img, input: input.png, prompt: x,\n"
                      "     controlnet: [{model: lllyasviel/control_v11p_sd15_lineart, preprocess: lineart}]}\n")
    runs = []
    for name in ("a", "b"):
        assert main(["run", str(recipe), "--rehearse", "--out", str(tmp_path / name)]) == 0
        record = next(r for r in manifest(tmp_path / name) if r.get("role") == "image")
        runs.append((record, pixels(tmp_path / name / record["controlnet"][0]["path"])))
    (first, control), (_, again) = runs
    assert first["params"]["controlnet"][0]["annotators"] == "rehearsal:random-annotators@1"
    assert np.array_equal(control, again) and control.std() > 2
    capsys.readouterr()
    recipe.write_text(recipe.read_text().replace("preprocess: lineart", "preprocess: openpose"))
    assert main(["plan", str(recipe), "--rehearse"]) == 2
    err = capsys.readouterr().err
    assert "controlnet[0].annotators: --rehearse has no stand-in for 'openpose'" in err and "local folder" in err


def test_a_hub_annotators_run_offline_fails_with_one_clear_line(project, tmp_path, capsys):
    """A hub id's identity is its revision as written (``main``); not cached and offline, the job fails naming the
    file it needs and the way out, no traceback."""
    shutil.copy(project / "input.png", tmp_path / "input.png")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model: sdbatch/tiny-sd\nallow_pickle: true\n"
                      f"defaults: {{steps: 2, width: {SIZE}, height: {SIZE}, strength: 0.6}}\nstages:\n"
                      "  - {name: s, type: img2img, input: input.png, prompt: x,\n"
                      "     controlnet: [{model: sdbatch/tiny-controlnet, preprocess: pidi,"
                      " annotators: nobody-sdbatch/no-annotators}]}\n")
    assert main(["validate", str(recipe)]) == 0
    from sdbatch.config.recipe import load_recipe
    from sdbatch.core.plan import build_plan

    (job,) = build_plan(load_recipe(recipe), tmp_path / "out").jobs  # the revision as written: stable offline
    assert job.params.controlnet[0].annotators == "hub:nobody-sdbatch/no-annotators@main"
    assert "controlnet-aux:0" not in job.aux_models  # never fetched as a whole repository before the run
    capsys.readouterr()
    assert main(["run", str(recipe), "--out", str(tmp_path / "out")]) != 0
    text = "".join(capsys.readouterr())
    assert "nobody-sdbatch/no-annotators/table5_pidinet.pth" in text and "annotators:" in text, text
    assert "Traceback" not in text


def test_restyle_frames_steered_by_a_controlnet_aux_preprocessor_reproduce(project, tmp_path):
    """A restyle whose per-frame control image is pidi's map of each source frame: the control frames are saved
    (one per frame, each the map of its own frame), and ``reproduce`` of a frame finds the weights folder again by
    its sha256 and says ``match``."""
    from sdbatch.io.testclips import make_test_clip

    make_test_clip(tmp_path / "clip.mp4", frames=3, fps=12, size=(SIZE, SIZE), audio=False)
    (tmp_path / "ann").mkdir()
    shutil.copy(project / "ann" / "table5_pidinet.pth", tmp_path / "ann" / "table5_pidinet.pth")
    (tmp_path / "r.yaml").write_text(
        "model: sdbatch/tiny-sd\nallow_pickle: true\nstages:\n"
        "  - {name: ink, type: restyle, input: clip.mp4, prompt: ink, strength: 0.5, steps: 2, guidance: 0.0,\n"
        "     coherence: {flow: 0.3}, controlnet: [{model: sdbatch/tiny-controlnet, preprocess: pidi,"
        " annotators: ann}]}\n")
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    sdbatch = [sys.executable, "-m", "sdbatch"]
    res = subprocess.run([*sdbatch, "run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out")],
                         capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    frames = sorted((r for r in manifest(tmp_path / "out") if r.get("role") == "frame"),
                    key=lambda r: r["frame"]["index"])
    assert len(frames) == 3
    controls = [pixels(tmp_path / "out" / f"ink/control/{i:06d}.png") for i in range(3)]
    assert all(c.std() > 2 for c in controls) and not np.array_equal(controls[0], controls[2])
    assert [r["controlnet"][0]["path"] for r in frames] == [f"ink/control/{i:06d}.png" for i in range(3)]
    assert frames[0]["params"]["controlnet"][0]["annotators"].startswith("folder:ann@")
    again = subprocess.run([*sdbatch, "reproduce", str(tmp_path / "out" / frames[2]["path"]), "--out",
                            str(tmp_path / "again")], capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr[-3000:]
    assert again.stdout.strip().splitlines()[-1].startswith("match"), again.stdout
