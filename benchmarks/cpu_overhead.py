"""sdbatch versus the plain diffusers loop a user would otherwise write, on the CPU.

Both render the same 48 generate jobs (4 prompts x 12 seeds, ``--seeds``; 64x64, 4 steps, guidance 7) from the
same local tiny model folder, each in a fresh process (same start-up, every package's bytecode compiled), each
saving PNGs; sdbatch with `batch_size: 8` (``--batch-size``; ``auto`` renders one image at a time on a CPU, the default settings).
Prints the wall-time ratio sdbatch / plain, the median of 5 alternating pairs. Goals (issue 17): <= 1.00 with
``--batch-size auto`` (identical pixels), <= 0.80 with ``--batch-size 8``.

    python benchmarks/cpu_overhead.py [--pairs 5] [--size 64] [--steps 4] [--seeds 12] [--batch-size auto]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROMPTS = ["a wolf howling at the moon", "a fox in the snow", "an owl in a pine tree", "a bear by a river"]
SEEDS = list(range(100, 112))

PLAIN = """\
import sys, torch
from pathlib import Path
from diffusers import StableDiffusionPipeline
model, out, size, steps = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
out.mkdir(parents=True, exist_ok=True)
pipe = StableDiffusionPipeline.from_pretrained(model)
pipe.set_progress_bar_config(disable=True)
prompts = {prompts!r}
for prompt in prompts:
    for seed in {seeds!r}:
        image = pipe(prompt=prompt, num_inference_steps=steps, guidance_scale=7.0, width=size, height=size,
                     generator=torch.Generator("cpu").manual_seed(seed)).images[0]
        image.save(out / f"{{prompts.index(prompt)}}-{{seed}}.png")
"""

RECIPE = """\
model: {model}
defaults: {{steps: {steps}, guidance: 7.0, width: {size}, height: {size}, batch_size: {batch}}}
stages:
  - name: bench
    type: generate
    prompt: {prompts!r}
    seeds: {seeds!r}
"""


def timed(cmd: list[str], env: dict) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[:4]} failed:\n{proc.stderr[-2000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--seeds", type=int, default=len(SEEDS), help="seeds per prompt (4 prompts)")
    parser.add_argument("--batch-size", default="8", help="the recipe's batch_size (auto renders one at a time on CPU)")
    args = parser.parse_args()
    seeds = list(range(SEEDS[0], SEEDS[0] + args.seeds))
    import compileall

    import sdbatch
    from sdbatch.sources.tiny import save_tiny_sd

    # sdbatch's bytecode, as `pip install` compiles it: torch and diffusers come with theirs, and where
    # PYTHONDONTWRITEBYTECODE is set (as on CI machines) an editable checkout would otherwise compile its ~100
    # modules from source in every run (0.1-0.2 s), which is not what a user's installed sdbatch does
    compileall.compile_dir(os.path.dirname(sdbatch.__file__), quiet=1)
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = save_tiny_sd(tmp / "tiny-sd", seed=3)
        script = tmp / "plain.py"
        script.write_text(PLAIN.format(prompts=PROMPTS, seeds=seeds))
        recipe = tmp / "bench.yaml"
        recipe.write_text(RECIPE.format(model=model, steps=args.steps, size=args.size, prompts=PROMPTS, seeds=seeds,
                                        batch=args.batch_size))
        env["SDBATCH_CACHE"] = str(tmp / "cache")
        plain_cmd = [sys.executable, str(script), str(model), str(tmp / "plain"), str(args.size), str(args.steps)]
        sdbatch_cmd = [sys.executable, "-m", "sdbatch", "run", str(recipe), "--out", str(tmp / "sdbatch")]
        timed(sdbatch_cmd, env)  # warm the file-hash cache and the OS page cache once for both
        timed(plain_cmd, env)
        ratios, plains, ours = [], [], []
        for i in range(args.pairs):
            shutil.rmtree(tmp / "plain", ignore_errors=True)
            shutil.rmtree(tmp / "sdbatch", ignore_errors=True)
            order = [("plain", plain_cmd), ("sdbatch", sdbatch_cmd)]
            if i % 2:
                order.reverse()
            got = {name: timed(cmd, env) for name, cmd in order}
            plains.append(got["plain"])
            ours.append(got["sdbatch"])
            ratios.append(got["sdbatch"] / got["plain"])
            print(f"pair {i + 1}: plain {got['plain']:.2f} s, sdbatch {got['sdbatch']:.2f} s, "
                  f"ratio {ratios[-1]:.3f}", flush=True)
        n = len(PROMPTS) * len(seeds)
        print(f"{n} jobs, {args.size}x{args.size}, {args.steps} steps, {os.cpu_count()} CPUs")
        print(f"median plain {statistics.median(plains):.2f} s, median sdbatch {statistics.median(ours):.2f} s")
        median = statistics.median(ratios)
        goal = 1.00 if args.batch_size == "auto" else 0.80
        verdict = "goal met" if median <= goal else "goal MISSED"
        print(f"sdbatch / plain wall-time ratio (median of {args.pairs} pairs, batch_size {args.batch_size}): "
              f"{median:.3f}  ({verdict}; goal <= {goal:.2f})")


if __name__ == "__main__":
    main()
