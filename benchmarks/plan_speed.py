"""How fast `sdbatch validate` and `sdbatch plan --json` answer on a 20,000-job recipe (goals: < 1.5 s, < 5 s).

    python benchmarks/plan_speed.py [--jobs 20000] [--repeat 3]

Each figure is the median wall time of a fresh `python -m sdbatch ...` process, start-up included, and the
script checks that neither command imported torch or diffusers.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RECIPE = """\
name: big
model: stabilityai/sd-turbo
defaults: {{steps: 4, guidance: 0.0, width: 512, height: 512}}
stages:
  - name: sketch
    type: generate
    prompt: ["a wolf", "a fox", "an owl", "a bear"]
    seeds: {{start: 0, count: {per_prompt}}}
    guidance: [1, 2, 3, 4, 5]
"""

PROBE = ("import runpy, sys; sys.argv = ['sdbatch'] + sys.argv[1:];\n"
         "try:\n    runpy.run_module('sdbatch', run_name='__main__')\n"
         "except SystemExit as e:\n    code = e.code\n"
         "bad = [m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules]\n"
         "sys.stderr.write('IMPORTED:' + ','.join(bad) + '\\n'); sys.exit(code)")


def timed(args: list[str]) -> tuple[float, str, str]:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed: {proc.stderr}")
    return elapsed, proc.stdout, proc.stderr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        recipe = Path(tmp) / "big.yaml"
        recipe.write_text(RECIPE.format(per_prompt=args.jobs // 20))
        results = {}
        for name, cmd in (("validate", ["validate", str(recipe)]),
                          ("plan --json", ["plan", str(recipe), "--json", "--out", str(Path(tmp) / "out")])):
            times = []
            for _ in range(args.repeat):
                elapsed, stdout, stderr = timed(cmd)
                times.append(elapsed)
            imported = stderr.strip().splitlines()[-1].removeprefix("IMPORTED:")
            if name == "plan --json":
                jobs = len(json.loads(stdout)["jobs"])
            results[name] = (statistics.median(times), imported)
        print(f"recipe with {jobs} jobs (median of {args.repeat} fresh processes)")
        for name, (median, imported) in results.items():
            goal = 1.5 if name == "validate" else 5.0
            print(f"  sdbatch {name:12} {median:6.2f} s   goal < {goal} s   {'OK' if median < goal else 'MISSED'}"
                  f"   heavy imports: {imported or 'none'}")


if __name__ == "__main__":
    main()
