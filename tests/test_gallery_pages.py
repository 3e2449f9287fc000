"""The gallery of a large folder (issue 15) and older outputs (issue 10 item 4): pages of at most PAGE_SIZE
outputs linked from index.html, cached lazy thumbnails linking the full images, contact sheets paged within a
pixel budget and drawn again only when their cells change, a gallery that is not rewritten when nothing changed,
and outputs of earlier versions of the recipe collapsed under "older outputs", newest first.

Budgets are lowered (monkeypatched) so a few dozen fabricated outputs stand for 20,000; the folders are
fabricated like benchmarks/scale.py does: the real planner, real records, real manifest writer, small PNGs."""

from __future__ import annotations

import html
import json
import re
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
from PIL import Image

from sdbatch.cli import main
from sdbatch.config.recipe import load_recipe
from sdbatch.core.plan import build_plan
from sdbatch.core.record import OutputRecord, input_entries, job_fields, stage_fields
from sdbatch.io.hashing import sha256_bytes
from sdbatch.io.manifest import MANIFEST_NAME, Manifest
from sdbatch.reports import gallery, grid

RECIPE = """\
name: pages
model: sdbatch/tiny-sd
defaults: {{steps: 2, width: {size}, height: {size}}}
stages:
  - name: sketch
    type: generate
    prompt: [{prompts}]
    seeds: [{seeds}]
"""


def recipe(folder: Path, prompts: list[str], seeds: list[int], size: int = 64, name: str = "r.yaml") -> Path:
    path = folder / name
    path.write_text(RECIPE.format(size=size, prompts=", ".join(prompts), seeds=", ".join(map(str, seeds))))
    return path


def fabricate(recipe_path: Path, out: Path, pixels: int | None = 8) -> list[OutputRecord]:
    """Record every planned job of ``recipe_path`` as done: a PNG each (``pixels`` px a side, None: the recorded
    size; distinct noise) and its real manifest line."""
    plan = build_plan(load_recipe(recipe_path), out)
    records = []
    for job in plan.jobs:
        path = out / job.output
        path.parent.mkdir(parents=True, exist_ok=True)
        side = pixels or job.params.width
        rng = np.random.default_rng(int(job.job_id[:8], 16))
        Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)).save(path)
        data = path.read_bytes()
        record = OutputRecord(**job_fields(job), path=job.output, inputs=input_entries(job, []), device="cpu",
                              dtype="float32", time="2026-12-01T03:00:00+00:00", **stage_fields({}, is_file=False))
        st = path.stat()
        record.sha256, record.size, record.mtime_ns = sha256_bytes(data), st.st_size, st.st_mtime_ns
        records.append(record)
    manifest = Manifest(out / MANIFEST_NAME)
    manifest.append_many(records)
    manifest.close()
    return records


class Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.images: list[dict] = []
        self._href: str | None = None
        self.details = 0

    def handle_starttag(self, tag: str, attrs: list) -> None:
        a = dict(attrs)
        if tag == "a":
            self._href = unquote(a.get("href") or "")
            self.links.append(self._href)
        elif tag == "img":
            self.images.append({**a, "src": unquote(a["src"]), "href": self._href})
        elif tag == "details":
            self.details += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "a":
            self._href = None


def parse(path: Path) -> Page:
    page = Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def test_a_large_gallery_is_paged_with_cached_lazy_thumbnails(tmp_path, monkeypatch):
    monkeypatch.setattr(gallery, "PAGE_SIZE", 5)
    records = fabricate(recipe(tmp_path, ["a wolf", "a fox", "an owl"], [1, 2, 3, 4], size=512), tmp_path / "out")
    out = tmp_path / "out"
    index = gallery.write_gallery(out)
    front = parse(index)
    pages = sorted((out / "gallery").glob("*.html"))
    assert [p.name for p in pages] == ["stage-sketch-001.html", "stage-sketch-002.html", "stage-sketch-003.html"]
    assert {f"gallery/{p.name}" for p in pages} <= set(front.links), "index.html links every page"
    assert not [i for i in front.images if "thumb" in (i.get("class") or "")], "the index holds no items"
    linked = []
    for page in pages:
        parsed = parse(page)
        thumbs = [i for i in parsed.images if "thumb" in (i.get("class") or "")]
        assert 1 <= len(thumbs) <= 5
        for image in thumbs:
            assert image["loading"] == "lazy"
            assert re.fullmatch(r"\.\./\.thumbs/[0-9a-f]{2}/[0-9a-f]{64}\.jpg", image["src"]), image["src"]
            assert image["href"].startswith("../sketch/") and image["href"].endswith(".png")
            linked.append(image["href"][3:])
            with Image.open(page.parent / image["src"]) as im:
                assert im.format == "JPEG" and max(im.size) <= 256
        for ref in parsed.links + [i["src"] for i in parsed.images]:
            assert (page.parent / ref).resolve().is_file(), f"{page.name}: broken link {ref}"
    assert sorted(linked) == sorted(r.path for r in records), "every output on exactly one page, full image linked"

    # written again with nothing changed: no page, sheet or thumbnail is rewritten
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.suffix != ".jsonl"}
    gallery.write_gallery(out)
    assert {p: p.stat().st_mtime_ns for p in before} == before


def test_contact_sheets_are_paged_within_the_pixel_budget_and_redrawn_only_when_their_cells_change(tmp_path,
                                                                                                   monkeypatch):
    monkeypatch.setattr(grid, "GRID_MAX_SIDE", 400)
    monkeypatch.setattr(grid, "GRID_MIN_CELL", 64)
    prompts, seeds = ["a wolf", "a fox", "an owl"], [1, 2, 3, 4, 5, 6]
    out = tmp_path / "out"
    records = fabricate(recipe(tmp_path, prompts, seeds, size=64), out, pixels=None)
    (out / "sketch" / "grid.png").write_bytes(b"an old single sheet")  # an earlier layout's sheet goes away
    gallery.write_gallery(out)
    sheets = sorted((out / "sketch").glob("grid*.png"))
    assert [p.name for p in sheets] == ["grid-001.png", "grid-002.png"]  # X (6 seeds) split in two halves
    width = grid.GRID_LABEL_WIDTH + 3 * 64
    height = grid.GRID_BLOCK_TITLE_HEIGHT + grid.GRID_HEADER_HEIGHT + 3 * 64
    by_cell = {(r.prompt, r.seed): r for r in records}
    for number, sheet in enumerate(sheets):
        with Image.open(sheet) as im:
            assert im.size == (width, height) and max(im.size) <= 400
            pixels = np.asarray(im.convert("RGB"), dtype=np.int16)
        title = pixels[:grid.GRID_BLOCK_TITLE_HEIGHT]
        assert (title.max(axis=2) < 100).sum() > 20, "each page says which columns it shows"
        header = pixels[grid.GRID_BLOCK_TITLE_HEIGHT:grid.GRID_BLOCK_TITLE_HEIGHT + grid.GRID_HEADER_HEIGHT]
        assert (header.max(axis=2) < 100).sum() > 20, "each page has its X labels"
        top0 = grid.GRID_BLOCK_TITLE_HEIGHT + grid.GRID_HEADER_HEIGHT
        for row, prompt in enumerate(prompts):  # Y: prompts, in order; X: this page's seeds
            for col, seed in enumerate(seeds[number * 3:number * 3 + 3]):
                with Image.open(out / by_cell[(prompt, seed)].path) as im:
                    image = np.asarray(im.convert("RGB"), dtype=np.int16)
                top, left = top0 + row * 64, grid.GRID_LABEL_WIDTH + col * 64
                assert np.array_equal(pixels[top:top + 64, left:left + 64], image), (prompt, seed)
    page = parse(out / "index.html")
    assert {"sketch/grid-001.png", "sketch/grid-002.png"} <= {i["src"] for i in page.images}

    # a re-render of one cell (seed 5: the second page) redraws that page only
    mtimes = [p.stat().st_mtime_ns for p in sheets]
    old = by_cell[("an owl", 5)]
    Image.new("RGB", (64, 64), (255, 0, 0)).save(out / old.path)
    data = (out / old.path).read_bytes()
    new = old.model_copy(update={"sha256": sha256_bytes(data), "size": len(data),
                                 "mtime_ns": (out / old.path).stat().st_mtime_ns})
    manifest = Manifest(out / MANIFEST_NAME)
    manifest.append(new)
    manifest.close()
    gallery.write_gallery(out)
    assert sheets[0].stat().st_mtime_ns == mtimes[0]
    assert sheets[1].stat().st_mtime_ns != mtimes[1]
    with Image.open(sheets[1]) as im:
        pixels = np.asarray(im.convert("RGB"))
    top, left = grid.GRID_BLOCK_TITLE_HEIGHT + grid.GRID_HEADER_HEIGHT + 2 * 64, grid.GRID_LABEL_WIDTH + 1 * 64
    assert (pixels[top:top + 64, left:left + 64] == (255, 0, 0)).all()


def test_sheet_pages_follow_the_slowest_axis():
    xs, ys = list(range(10)), list(range(7))
    cell, label, pages = grid.plan_sheets(xs, ys, [("a",), ("b",)], (64, 64), True, ["block a", "block b"],
                                          max_side=600, min_cell=64)
    assert cell == (64, 64) and label == grid.GRID_LABEL_WIDTH
    bands = [band for page in pages for band in page.bands]
    # blocks (slowest), then rows (all 7 fit a page), then columns (6 of 10 fit): one band a page here
    assert [(band.block, band.ys, band.xs[0]) for band in bands] == [
        (("a",), ys, 0), (("a",), ys, 6), (("b",), ys, 0), (("b",), ys, 6)]
    assert len(pages) == 4 and all(page.width <= 600 and page.height <= 600 for page in pages)
    assert bands[0].title == "block a · columns 1-6 of 10" and bands[3].title == "block b · columns 7-10 of 10"
    # a sweep that fits once its cells are smaller is one sheet of smaller cells (never below the minimum)
    cell, _, pages = grid.plan_sheets(list(range(8)), list(range(4)), [()], (128, 128), True, [""],
                                      max_side=1000, min_cell=64)
    assert len(pages) == 1 and cell == (105, 105) and pages[0].width <= 1000


def test_outputs_of_earlier_recipe_versions_are_collapsed_newest_first(tmp_path):
    out = tmp_path / "out"
    oldest = fabricate(recipe(tmp_path, ["a zebra"], [1, 2], name="v0.yaml"), out)
    older = fabricate(recipe(tmp_path, ["a fox"], [1, 2], name="v1.yaml"), out)
    current = fabricate(recipe(tmp_path, ["a wolf"], [1, 2], name="v2.yaml"), out)
    assert main(["run", str(tmp_path / "v2.yaml"), "--out", str(out)]) == 0  # nothing to render
    text = (out / "index.html").read_text(encoding="utf-8")
    main_part, _, older_part = text.partition('<details class="older"')
    assert older_part, "an older outputs section"
    assert "older outputs: 4 not in the current plan" in html.unescape(older_part)
    assert all(r.path in main_part for r in current) and not any(r.path in main_part for r in oldest + older)
    order = re.findall(r'href="(sketch/[^"]+\.png)"', older_part)
    positions = [order.index(r.path) for r in reversed(oldest + older)]  # the last recorded first
    assert positions == sorted(positions), "newest first"
    assert "older outputs" in re.search(r"<nav>.*?</nav>", text, re.S).group(0)
    # the gallery written without a plan keeps what the last one with a plan called older
    gallery.write_gallery(out)
    assert '<details class="older"' in (out / "index.html").read_text(encoding="utf-8")


CHECK = """<script>
window.addEventListener("load", () => {
  const broken = [...document.images].filter(i => !i.complete || i.naturalWidth === 0).map(i => i.getAttribute("src"));
  document.body.dataset.result = JSON.stringify({images: document.images.length, broken});
});
</script>"""


def test_a_paged_gallery_opens_in_a_browser_without_console_errors(tmp_path, monkeypatch):
    from test_gallery import CHROMIUM, chromium, console_messages

    if CHROMIUM is None:
        pytest.skip("chromium not installed")
    monkeypatch.setattr(gallery, "PAGE_SIZE", 4)
    out = tmp_path / "out"
    fabricate(recipe(tmp_path, ["a wolf", "a fox"], [1, 2, 3], size=512), out)
    gallery.write_gallery(out)
    for page in (out / "index.html", out / "gallery" / "stage-sketch-002.html"):
        check = page.with_name("_check.html")
        check.write_text(page.read_text(encoding="utf-8").replace(' loading="lazy"', "")
                         .replace("</body>", CHECK + "</body>"), encoding="utf-8")
        dom = chromium(check.as_uri(), tmp_path / f"profile-{page.stem}", "--virtual-time-budget=10000", "--dump-dom")
        check.unlink()
        assert dom.returncode == 0, dom.stderr[-2000:]
        assert not console_messages(dom.stderr), console_messages(dom.stderr)
        found = re.search(r'data-result="([^"]*)"', dom.stdout)
        result = json.loads(html.unescape(found.group(1)))
        assert result["broken"] == [] and result["images"] >= 1, result
