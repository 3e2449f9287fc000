"""A folder of N finished outputs stays fast, small and browsable (issue 15): prints, for each N,

- ``plan --json`` time and peak memory on the N-job recipe,
- a no-op ``run`` (every output done) time and peak memory,
- the gallery: the first build (thumbnails and contact sheets made) and a rebuild (nothing changed),
- the largest contact sheet in pixels, the number of sheets and gallery pages,
- ``index.html`` and gallery pages opened in headless Chromium: console messages (goal: none).

    python benchmarks/scale.py [--n 20000 100000] [--keep DIR]

The finished folder is fabricated, not rendered: the recipe (100 prompts x N/200 seeds, then an img2img of
each) is planned by the real planner, each job gets a tiny PNG (8x8 px, distinct pixels; the records say
512x512, as a real sweep's would) and its manifest line is the real record code's (``job_fields``,
``input_entries``, ``stage_fields``, :class:`OutputRecord`) appended by the real :class:`Manifest` writer.
Each figure is a fresh ``python -m sdbatch ...`` process; peak memory is that child's ``ru_maxrss``.
Goals (issue 15): no-op run < 2 s / 500 MB at 20,000, < 5 s / 1 GB at 100,000; plan --json < 5 s / 1 GB.
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROMPTS = 100
RECIPE = """\
name: scale
model: sdbatch/tiny-sd
defaults: {{steps: 4, guidance: 7.0, width: 512, height: 512}}
stages:
  - name: sketch
    type: generate
    prompt: [{prompts}]
    seeds: {{start: 0, count: {seeds}}}
  - name: paint
    type: img2img
    input: sketch
    prompt: an oil painting
    strength: 0.5
"""
GOALS = {20000: (2.0, 500), 100000: (5.0, 1000)}  # no-op run: seconds, MB


def recipe_text(n: int) -> str:
    prompts = ", ".join(f'"a photo of subject {i}"' for i in range(PROMPTS))
    return RECIPE.format(prompts=prompts, seeds=max(1, n // (2 * PROMPTS)))


def tiny_png(i: int) -> bytes:
    from PIL import Image

    image = Image.new("RGB", (8, 8), ((i * 37) % 256, (i * 91) % 256, (i * 13) % 256))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def fabricate(recipe: Path, out: Path) -> int:
    """A finished output folder for ``recipe``: a tiny PNG and a real manifest line per planned job."""
    from sdbatch import __version__
    from sdbatch.config.recipe import load_recipe
    from sdbatch.core.plan import build_plan
    from sdbatch.core.record import OutputRecord, input_entries, job_fields, stage_fields
    from sdbatch.io.hashing import sha256_bytes
    from sdbatch.io.manifest import MANIFEST_NAME, Manifest

    loaded = load_recipe(recipe)
    plan = build_plan(loaded, out)
    info = {"path": str(recipe), "dir": str(recipe.parent), "sha256": sha256_bytes(loaded.text.encode()),
            "git_commit": None, "git_dirty": None}
    versions = {"sdbatch": __version__, "python": sys.version.split()[0]}
    records = []
    made: set[str] = set()
    for i, job in enumerate(plan.jobs):
        path = out / job.output
        if path.parent.as_posix() not in made:
            path.parent.mkdir(parents=True, exist_ok=True)
            made.add(path.parent.as_posix())
        data = tiny_png(i)
        path.write_bytes(data)
        st = path.stat()
        hashes = [None] * len(job.inputs)
        record = OutputRecord(**job_fields(job), path=job.output, inputs=input_entries(job, hashes), recipe=info,
                              versions=versions, device="cpu", dtype="float32", options=job.options_json(),
                              seconds=0.1, time="2026-12-01T03:00:00+00:00", **stage_fields({}, is_file=False))
        record.sha256, record.size, record.mtime_ns = sha256_bytes(data), st.st_size, st.st_mtime_ns
        records.append(record)
    manifest = Manifest(out / MANIFEST_NAME)
    try:
        manifest.append_many(records)
    finally:
        manifest.close()
    return len(records)


PEAK = ("import resource, sys\n"
        "def _peak():\n"
        "    sys.stdout.flush()\n"
        "    sys.stderr.write('PEAK_KB %d\\n' % resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n")
SDBATCH = (PEAK + "import runpy; sys.argv = ['sdbatch'] + sys.argv[1:]\n"
           "try:\n    runpy.run_module('sdbatch', run_name='__main__')\n"
           "except SystemExit as e:\n    code = e.code\n"
           "else:\n    code = 0\n"
           "_peak(); sys.exit(code)")
GALLERY = (PEAK + "from pathlib import Path\nfrom sdbatch.reports.gallery import write_gallery\n"
           "write_gallery(Path(sys.argv[1])); _peak()")


def child(code: str, args: list[str]) -> tuple[float, float, str]:
    """(seconds, peak MB, stdout) of a fresh Python process running ``code`` with ``args``; the peak is the
    child's own ``ru_maxrss``."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    peak = next(int(line.split()[1]) for line in proc.stderr.splitlines() if line.startswith("PEAK_KB"))
    return elapsed, peak / 1024, proc.stdout


def sheets(out: Path) -> tuple[int, int, tuple[int, int]]:
    """(sheets, gallery pages, the largest sheet's size) of the folder."""
    from PIL import Image

    largest, count = (0, 0), 0
    for path in sorted(out.glob("*/grid*.png")):
        count += 1
        with Image.open(path) as im:
            if im.size[0] * im.size[1] > largest[0] * largest[1]:
                largest = im.size
    pages = len(list((out / "gallery").glob("*.html"))) if (out / "gallery").is_dir() else 0
    return count, pages, largest


def browser(out: Path, profile: Path) -> str:
    """Open ``index.html`` and the first and last gallery page in headless Chromium (as a user's browser would:
    lazy images, file:// URLs): the pages opened and the page console messages (any is a failure)."""
    import shutil

    chrome = next((shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome")
                   if shutil.which(name)), None)
    if chrome is None:
        return "chromium not installed: not checked"
    pages = sorted((out / "gallery").glob("*.html")) if (out / "gallery").is_dir() else []
    opened, messages, start = 0, [], time.perf_counter()
    for page in [out / "index.html", *pages[:1], *pages[-1:]]:
        proc = subprocess.run([chrome, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                               "--disable-background-networking", "--disable-component-update", "--disable-sync",
                               f"--user-data-dir={profile / page.stem}", "--disable-dev-shm-usage",
                               "--enable-logging=stderr", "--v=0", "--virtual-time-budget=10000", "--dump-dom",
                               page.as_uri()], capture_output=True, text=True, timeout=120, check=False)
        opened += proc.returncode == 0 and "</html>" in proc.stdout.lower()
        messages += [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    return (f"{opened} of {1 + len(pages[:1]) + len(pages[-1:])} page(s) opened in {time.perf_counter() - start:.1f} s,"
            f" {len(messages)} console message(s){': ' + messages[0] if messages else ''}")


def bench(n: int, root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    recipe = root / "scale.yaml"
    recipe.write_text(recipe_text(n))
    out = root / "out"
    start = time.perf_counter()
    # in a child: the parent stays small, and each measured child's ru_maxrss starts from it (fork keeps it)
    done = subprocess.run([sys.executable, __file__, "--fabricate", str(recipe), str(out)], capture_output=True,
                          text=True)
    if done.returncode:
        raise SystemExit(f"fabricating failed: {done.stderr[-2000:]}")
    made = int(done.stdout.split()[-1])
    print(f"N = {made:,} outputs (fabricated in {time.perf_counter() - start:.1f} s)", flush=True)
    goal_s, goal_mb = GOALS.get(n, GOALS[100000] if n > 20000 else GOALS[20000])
    seconds, peak, stdout = child(SDBATCH, ["plan", str(recipe), "--json", "--out", str(out)])
    jobs = json.loads(stdout)["jobs"]
    assert len(jobs) == made and all(job["status"] == "done" for job in jobs), "the fabricated folder is not done"
    print(f"  plan --json, no index yet   {seconds:6.2f} s  {peak:6.0f} MB   goal < 5 s, < 1000 MB", flush=True)
    seconds, peak, _ = child(SDBATCH, ["run", str(recipe), "--out", str(out)])
    count, pages, largest = sheets(out)
    print(f"  first run (index, gallery: {count} sheet(s), {pages} page(s), thumbnails made)  {seconds:6.2f} s  "
          f"{peak:6.0f} MB", flush=True)
    runs = [child(SDBATCH, ["run", str(recipe), "--out", str(out)])[:2] for _ in range(3)]
    seconds, peak = min(runs)
    print(f"  run, nothing to do          {seconds:6.2f} s  {peak:6.0f} MB   goal < {goal_s} s, < {goal_mb} MB "
          "(best of 3)", flush=True)
    seconds, peak, _ = child(SDBATCH, ["plan", str(recipe), "--json", "--out", str(out)])
    print(f"  plan --json                 {seconds:6.2f} s  {peak:6.0f} MB   goal < 5 s, < 1000 MB", flush=True)
    seconds, peak, _ = child(GALLERY, [str(out)])
    print(f"  gallery, nothing changed    {seconds:6.2f} s  {peak:6.0f} MB", flush=True)
    print(f"  largest sheet               {largest[0]} x {largest[1]} px = {largest[0] * largest[1] / 1e6:.1f} Mpx",
          flush=True)
    print(f"  headless chromium           {browser(out, root / 'chromium')}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[20000, 100000], help="output counts")
    parser.add_argument("--keep", type=Path, help="fabricate under this folder and keep it")
    parser.add_argument("--fabricate", nargs=2, type=Path, metavar=("RECIPE", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.fabricate:
        print(fabricate(*args.fabricate))
        return
    for n in args.n:
        if args.keep:
            bench(n, args.keep / f"n{n}")
        else:
            with tempfile.TemporaryDirectory() as tmp:
                bench(n, Path(tmp))


if __name__ == "__main__":
    main()
