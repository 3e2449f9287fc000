#!/usr/bin/env python
"""Restyle benchmark: temporal flicker with coherence off vs on, and the time spent outside diffusion.

One recipe restyles one clip twice, in one ``sdbatch run`` (one process, one model load):

* ``off``: ``coherence: {flow: 0, color: none}``
* ``on``:  ``coherence: {flow: 0.5, color: lab}`` (``--flow`` / ``--color``)

(a) **Flicker** (:func:`sdbatch.stages.restyle.flicker`): the mean absolute difference (0..255) between each
restyled frame and the previous restyled frame warped onto it by the optical flow of the *source* frames,
over the pixels that pass the forward-backward check. The source clip's own figure is printed for scale.

(b) **Time outside diffusion**, from the ``timing`` the stage writes on its mp4's manifest line:
``overhead`` = decode + flow + colour + frame read-back + mp4 encode (the stage's own work),
``other`` = the rest (the worker writing each frame's PNG and manifest line, hashing the input),
both as a share of the stage's time without the one-off model load. Goal: < 5 %.

Examples::

    python benchmarks/restyle_flicker.py                              # CPU, tiny random-weight model, 64x48
    python benchmarks/restyle_flicker.py --frames 48 --steps 4 --json out.json
    python benchmarks/restyle_flicker.py --arch sd15 --size 512x512 --steps 20 --device cuda --dtype float16

``--arch sd15`` builds a randomly initialised full-size SD1.5 pipeline (sdbatch/configs/sd15, the tiny
tokenizer) into ``--cache`` once, so diffusion costs what it costs with real SD1.5 weights (the pixels
are meaningless; use it for timing). The default model is the built-in ``sdbatch/tiny-sd`` (random
weights too): flicker figures then show what coherence does to frames, not how a trained model looks.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def build_sd15_random(folder: Path) -> Path:
    """A full-size SD1.5 diffusers folder with random weights (tiny tokenizer), built once."""
    if (folder / "model_index.json").exists():
        return folder
    import diffusers
    import torch
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from sdbatch.sources.tiny import _save_pipeline, build_tiny_tokenizer

    cfg = REPO / "sdbatch" / "configs" / "sd15"

    def load(name: str) -> dict[str, Any]:
        return json.loads((cfg / f"{name}.json").read_text())

    tokenizer = build_tiny_tokenizer()
    text = load("text_encoder")
    text.update(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    text = {k: v for k, v in text.items() if not k.startswith("_") and k not in ("architectures", "torch_dtype",
                                                                                  "transformers_version")}
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):  # random init of ~1 B parameters is much faster on a GPU
        unet = UNet2DConditionModel.from_config(load("unet"))
        vae = AutoencoderKL.from_config(load("vae"))
        text_encoder = CLIPTextModel(CLIPTextConfig(**text))
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=getattr(diffusers, load("scheduler")["_class_name"]).from_config(
                                       load("scheduler")),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.to(torch.float16)  # half the bytes to write, hash and load
    tmp = folder.with_name(folder.name + ".partial")
    _save_pipeline(pipe, tmp)
    os.replace(tmp, folder)
    return folder


def recipe_text(args: argparse.Namespace, model: str) -> str:
    common = (f"input: clips/{args.clip_name}, prompt: {json.dumps(args.prompt)}, strength: {args.strength}, "
              f"steps: {args.steps}, guidance: {args.guidance}, seed: {args.seed}, "
              f"seed_behavior: {args.seed_behavior}")
    return (
        "name: flicker\n"
        f"model: {json.dumps(model)}\n"
        f"device: {args.device}\n"
        f"dtype: {args.dtype}\n"
        "stages:\n"
        f"  - {{name: 'off', type: restyle, {common}, coherence: {{flow: 0.0, color: none}}}}\n"
        f"  - {{name: 'on', type: restyle, {common}, coherence: {{flow: {args.flow}, color: {args.color}}}}}\n"
    )


def stage_figures(out: Path, stage: str, sources: Path, size: tuple[int, int]) -> dict[str, Any]:
    import numpy as np
    from PIL import Image

    from sdbatch.io.video import iter_frames
    from sdbatch.stages.restyle import flicker

    records = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines() if line.strip()]
    (video,) = [r for r in records if r.get("kind") == "output" and r.get("stage") == stage
                and r["path"].endswith(".mp4")]
    frames = sorted(p for p in (out / stage / "frames").glob("*.png") if not p.name.startswith("."))

    def outputs():
        for path in frames:
            with Image.open(path) as im:
                yield np.asarray(im.convert("RGB"))

    source_frames = (f for _, f in iter_frames(sources, size=size))
    info = video["video"]  # the mp4's record: {"frames", "fps", "audio", "timing"}
    return {"flicker": flicker(outputs(), source_frames), "frames": info["frames"], "fps": info["fps"],
            "timing": info["timing"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clip", type=Path, help="a video to restyle (default: a synthetic test clip)")
    parser.add_argument("--frames", type=int, default=24, help="frames of the synthetic clip")
    parser.add_argument("--fps", type=float, default=12)
    parser.add_argument("--size", default="64x48", help="WxH of the synthetic clip (multiples of 8)")
    parser.add_argument("--model", default="sdbatch/tiny-sd")
    parser.add_argument("--arch", choices=["sd15"], help="random-weight full-size model instead of --model")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "sdbatch-bench-models")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--strength", type=float, default=0.5)
    parser.add_argument("--guidance", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--seed-behavior", choices=["fixed", "iter"], default="iter",
                        help="iter (a new seed per frame) is the harder case for flicker")
    parser.add_argument("--prompt", default="anime style, cel shading")
    parser.add_argument("--flow", type=float, default=0.5)
    parser.add_argument("--color", default="lab", choices=["none", "lab", "hsv", "rgb"])
    parser.add_argument("--out", type=Path, help="work folder (default: a temp folder)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)

    from sdbatch.io.video import iter_frames, make_test_clip, probe_video
    from sdbatch.stages.restyle import flicker

    work = args.out or Path(tempfile.mkdtemp(prefix="restyle-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    clips = work / "clips"
    clips.mkdir(exist_ok=True)
    if args.clip:
        args.clip_name = args.clip.name
        target = clips / args.clip.name
        if not target.exists():
            target.symlink_to(args.clip.resolve())
    else:
        w, h = (int(v) for v in args.size.lower().split("x"))
        args.clip_name = "clip.mp4"
        make_test_clip(clips / args.clip_name, frames=args.frames, fps=args.fps, size=(w, h), audio=True)
    source = clips / args.clip_name
    info = probe_video(source)
    size = (info.width // 8 * 8, info.height // 8 * 8)

    model = args.model
    if args.arch == "sd15":
        started = time.perf_counter()
        model = str(build_sd15_random(args.cache / "sd15-random").resolve())
        print(f"random-weight SD1.5 at {model} ({time.perf_counter() - started:.0f} s)", file=sys.stderr)
    recipe = work / "flicker.yaml"
    recipe.write_text(recipe_text(args, model))
    out = work / "out"
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    started = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "sdbatch", "run", str(recipe), "--out", str(out)],
                         check=False, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - started
    if res.returncode != 0:
        print(res.stdout[-3000:], res.stderr[-3000:], sep="\n", file=sys.stderr)
        return res.returncode

    results: dict[str, Any] = {
        "clip": {"path": str(source), "frames": info.frames, "fps": info.fps, "size": list(size)},
        "model": args.arch or args.model, "device": args.device, "dtype": args.dtype, "steps": args.steps,
        "strength": args.strength, "guidance": args.guidance, "seed_behavior": args.seed_behavior,
        "run_seconds": round(wall, 2),
    }
    sources = (f for _, f in iter_frames(source, size=size))
    results["source_flicker"] = flicker(sources, (f for _, f in iter_frames(source, size=size)))
    for stage in ("off", "on"):
        results[stage] = stage_figures(out, stage, source, size)
    results["on"]["coherence"] = {"flow": args.flow, "color": args.color}

    print(f"clip: {info.frames} frames {size[0]}x{size[1]} @ {info.fps:g} fps; model {results['model']} on "
          f"{args.device}/{args.dtype}, steps {args.steps} x strength {args.strength}, {args.seed_behavior} seeds")
    print("flicker (mean |frame - warped previous|, 0..255; lower is steadier)")
    print(f"  source clip                       {results['source_flicker']:7.2f}")
    print(f"  coherence off                     {results['off']['flicker']:7.2f}")
    change = 100 * (results["on"]["flicker"] / max(results["off"]["flicker"], 1e-9) - 1)
    print(f"  coherence flow {args.flow:g} / color {args.color:<5}  {results['on']['flicker']:7.2f}"
          f"   ({change:+.0f}% vs off)")
    print("time per stage (s; shares leave out the one-off model load)")
    header = ("stage", "total", "diffusion", "decode", "flow", "color", "readback", "encode", "other",
              "overhead%", "non-diff%")
    print("  " + " ".join(f"{h:>9}" for h in header))
    for stage in ("off", "on"):
        t = results[stage]["timing"]
        row = [stage] + [f"{t[k]:.2f}" for k in ("total_s", "diffusion_s", "decode_s", "flow_s", "color_s",
                                                  "read_back_s", "encode_s", "other_s")]
        row += [f"{100 * t['overhead_share']:.1f}", f"{100 * t['non_diffusion_share']:.1f}"]
        print("  " + " ".join(f"{v:>9}" for v in row))
    print("  overhead = decode + flow + colour + read-back + encode (the stage's own work outside diffusion);")
    print("  non-diff = everything but diffusion, incl. the worker writing PNGs and manifest lines. Goal < 5 %.")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
