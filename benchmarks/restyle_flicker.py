#!/usr/bin/env python
"""Restyle benchmark: flicker and warp error for coherence off / flow / ControlNet / cross-frame, seconds per
frame (with frames batched when nothing ties them together), and the time spent outside diffusion.

One recipe restyles one clip several times, in one ``sdbatch run`` (one process, one model load), each stage
with the same prompt, seeds, steps and strength:

* ``off``:         ``coherence: {flow: 0, color: none}``, one frame per diffusion call
* ``batched``:     the same, ``batch_size: --batch`` (frames do not depend on each other: rendered N at a time)
* ``flow``:        ``coherence: {flow: --flow, color: --color}`` (the previous frame, flow-warped, blended in)
* ``controlnet``:  ``off`` + ``controlnet: [{model: --controlnet, preprocess: canny}]`` (each source frame's edges)
* ``cross-frame``: ``off`` + ``coherence.cross_frame: true`` (self-attention also attends to frame 0's keys/values)

Figures per stage (over the frames, 0..255 levels):

(a) **change**: the mean absolute frame-to-frame change of the output, ``mean |out[t] - out[t-1]|``, and the
    same of the source clip: ``change / source`` above 1 means the restyle moves more than the footage does.
(b) **warp error** (:func:`sdbatch.stages.restyle.flicker`): the previous output warped onto the current one by
    the optical flow of the *source* frames (forward-backward checked), against the current output, on the
    pixels that pass the check: what is left when the real motion is taken out.
(c) **s/frame**: the stage's time less the one-off model load (and ControlNet load), per frame; and the
    ``timing`` the stage writes on its mp4's manifest line: ``overhead`` = decode + flow + colour + frame
    read-back + mp4 encode, ``non-diff`` = everything but diffusion (incl. the worker writing PNGs), as shares.

Examples::

    python benchmarks/restyle_flicker.py                              # CPU, tiny random-weight models, 64x48
    python benchmarks/restyle_flicker.py --frames 48 --steps 4 --json out.json
    python benchmarks/restyle_flicker.py --arch sd15 --size 512x512 --steps 20 --device cuda --dtype float16

``--arch sd15`` builds a randomly initialised full-size SD1.5 pipeline (sdbatch/configs/sd15, the tiny
tokenizer) and a ControlNet of its UNet (``ControlNetModel.from_unet``) into ``--cache`` once, so diffusion costs
what it costs with real weights (the pixels are meaningless; use it for timing). The default models are the
built-in ``sdbatch/tiny-sd`` and ``sdbatch/tiny-controlnet`` (random weights too): the figures then show what
each mechanism does to frames mechanically, not how a trained model looks (see docs/restyle-flicker.md).
On a CPU shared with other work, set ``OMP_NUM_THREADS=1``: torch's thread pool otherwise spin-waits against the
other load and per-stage timings vary several-fold between runs.
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


STAGES = ("off", "batched", "flow", "controlnet", "cross-frame")


def build_controlnet_random(model: Path, folder: Path) -> Path:
    """A ControlNet of ``model``'s UNet config with random weights (``from_unet``), built once."""
    if (folder / "config.json").exists():
        return folder
    from diffusers import ControlNetModel, UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(str(model / "unet"))
    net = ControlNetModel.from_unet(unet)
    tmp = folder.with_name(folder.name + ".partial")
    net.save_pretrained(tmp, safe_serialization=True)
    os.replace(tmp, folder)
    return folder


def recipe_text(args: argparse.Namespace, model: str, controlnet: str) -> str:
    common = (f"input: clips/{args.clip_name}, prompt: {json.dumps(args.prompt)}, strength: {args.strength}, "
              f"steps: {args.steps}, guidance: {args.guidance}, seed: {args.seed}, "
              f"seed_behavior: {args.seed_behavior}")
    off = "coherence: {flow: 0.0, color: none}"
    stages = {
        "off": off,
        "batched": f"{off}, batch_size: {args.batch}",
        "flow": f"coherence: {{flow: {args.flow}, color: {args.color}}}",
        "controlnet": f"{off}, controlnet: [{{model: {json.dumps(controlnet)}, preprocess: canny}}]",
        "cross-frame": "coherence: {flow: 0.0, color: none, cross_frame: true}",
    }
    lines = [f"  - {{name: '{name}', type: restyle, {common}, {stages[name]}}}\n" for name in args.stages]
    return (f"name: flicker\nmodel: {json.dumps(model)}\ndevice: {args.device}\ndtype: {args.dtype}\nstages:\n"
            + "".join(lines))


def frame_change(frames: Any) -> float:
    """The mean absolute frame-to-frame change (0..255) of a stream of HxWx3 uint8 frames."""
    import numpy as np

    total, pairs, prev = 0.0, 0, None
    for frame in frames:
        frame = np.asarray(frame, dtype=np.float32)
        if prev is not None:
            total += float(np.abs(frame - prev).mean())
            pairs += 1
        prev = frame
    return total / pairs if pairs else 0.0


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
    t = info["timing"]
    return {"warp_error": flicker(outputs(), source_frames), "change": frame_change(outputs()),
            "frames": info["frames"], "fps": info["fps"],
            "s_per_frame": (t["total_s"] - t["model_load_s"]) / max(1, info["frames"]), "timing": t}


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
    parser.add_argument("--batch", type=int, default=4, help="batch_size of the 'batched' stage")
    parser.add_argument("--controlnet", default="sdbatch/tiny-controlnet", help="the 'controlnet' stage's model")
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
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

    model, controlnet = args.model, args.controlnet
    if args.arch == "sd15":
        started = time.perf_counter()
        model = str(build_sd15_random(args.cache / "sd15-random").resolve())
        if "controlnet" in args.stages:
            controlnet = str(build_controlnet_random(Path(model), args.cache / "sd15-controlnet-random").resolve())
        print(f"random-weight SD1.5 at {model} ({time.perf_counter() - started:.0f} s)", file=sys.stderr)
    recipe = work / "flicker.yaml"
    recipe.write_text(recipe_text(args, model, controlnet))
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
    results["source_change"] = frame_change(f for _, f in iter_frames(source, size=size))
    sources = (f for _, f in iter_frames(source, size=size))
    results["source_warp_error"] = flicker(sources, (f for _, f in iter_frames(source, size=size)))
    results["batch"] = args.batch
    for stage in args.stages:
        results[stage] = stage_figures(out, stage, source, size)
    print(f"clip: {info.frames} frames {size[0]}x{size[1]} @ {info.fps:g} fps; model {results['model']} on "
          f"{args.device}/{args.dtype}, steps {args.steps} x strength {args.strength}, guidance {args.guidance}, "
          f"{args.seed_behavior} seeds")
    print("| stage | change | change / source | warp error | s/frame | overhead % | non-diffusion % |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    print(f"| source clip | {results['source_change']:.2f} | 1.00 | {results['source_warp_error']:.2f} | | | |")
    labels = {"off": "off", "batched": f"off, batch_size {args.batch}", "flow": f"flow {args.flow:g} + {args.color}",
              "controlnet": "ControlNet (canny)", "cross-frame": "cross-frame attention"}
    for stage in args.stages:
        r, t = results[stage], results[stage]["timing"]
        ratio = r["change"] / max(results["source_change"], 1e-9)
        print(f"| {labels[stage]} | {r['change']:.2f} | {ratio:.2f} | {r['warp_error']:.2f} | {r['s_per_frame']:.3f} "
              f"| {100 * t['overhead_share']:.1f} | {100 * t['non_diffusion_share']:.1f} |")
    if "off" in results and "batched" in results:
        print(f"batch_size {args.batch} vs one frame per call: "
              f"{results['off']['s_per_frame'] / max(results['batched']['s_per_frame'], 1e-9):.2f}x faster")
    print("change: mean |out[t] - out[t-1]|; warp error: mean |out[t] - flow-warped out[t-1]| on the pixels the")
    print("source's flow holds (0..255). overhead = decode + flow + colour + read-back + encode; non-diffusion =")
    print("everything but diffusion, incl. the worker writing PNGs and manifest lines. Goal < 5 %.")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
