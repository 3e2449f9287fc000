"""The static gallery end to end: ``index.html`` shows and links every image of a run with its settings,
escaped; a sweeping stage gets a labelled contact sheet; and a real browser (headless Chromium) loads the
page from disk with no console errors and every image decoded."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
from conftest import manifest_records
from PIL import Image
from test_provenance import PROMPT, SIZE, SWEEP_PROMPT, rendered_project

from sdbatch.core.record import OutputRecord
from sdbatch.reports.gallery import write_gallery
from sdbatch.reports.grid import GRID_HEADER_HEIGHT, GRID_LABEL_WIDTH, grid_axes

GUIDANCE, SEEDS = [5.0, 9.0], [1, 2, 3]


@pytest.fixture(scope="module")
def run_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The output folder of test_provenance's recipe (rendered once per session): a chain sketch -> paint ->
    moon of one image each, and a sweep stage of guidance [5, 9] x seeds [1, 2, 3]."""
    out = rendered_project(tmp_path_factory) / "out"
    page = write_gallery(out)  # `sdbatch run` writes it too; writing again must be harmless
    assert page == out / "index.html"
    return out


class Page(HTMLParser):
    """Collects links, image and video sources, and the visible text."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.images: list[str] = []
        self.videos: list[str] = []
        self.tags: list[str] = []
        self.text: list[str] = []
        self.linked_images: list[str] = []  # <img> inside <a href=...>: src
        self._href: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags.append(tag)
        if tag == "a" and a.get("href"):
            self.links.append(unquote(a["href"]))
            self._href = unquote(a["href"])
        elif tag == "img":
            self.images.append(unquote(a.get("src") or ""))
            if self._href == unquote(a.get("src") or ""):
                self.linked_images.append(self._href)
        elif tag in ("video", "source") and a.get("src"):
            self.videos.append(unquote(a["src"]))

    def handle_endtag(self, tag: str) -> None:
        if tag == "a":
            self._href = None

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(out: Path) -> Page:
    page = Page()
    page.feed((out / "index.html").read_text(encoding="utf-8"))
    return page


def test_index_links_every_image_with_its_settings(run_out):
    out = run_out
    page = parse(out)
    records = manifest_records(out, "output")
    pngs = {p.relative_to(out).as_posix() for p in out.rglob("*.png") if p.name != "grid.png"}
    assert pngs == {r["path"] for r in records} and len(pngs) == 9
    assert pngs <= set(page.linked_images), "every image shown as a thumbnail linking to its file"
    for ref in page.links + page.images:
        if "://" not in ref and not ref.startswith("#"):
            assert (out / ref).is_file(), f"broken link {ref}"
    html_text = (out / "index.html").read_text(encoding="utf-8")
    assert "http://" not in html_text and "https://" not in html_text and "<script" not in html_text
    text = " ".join(page.text)
    assert PROMPT in text, "the prompt is shown as text"
    assert "b" not in page.tags, "the prompt's markup is escaped, not rendered"
    assert "<b>bold</b>" not in html_text
    assert {"sketch", "paint", "moon", "sweep"} <= set(text.split())
    assert "oil painting" in text and SWEEP_PROMPT in text
    assert "masks/moon.png" in text  # the inpaint's mask is listed with its settings


def test_sweep_grid_is_a_labelled_2x3_contact_sheet(run_out):
    out = run_out
    grid = out / "sweep" / "grid.png"
    assert grid.is_file()
    assert "sweep/grid.png" in parse(out).images
    with Image.open(grid) as im:
        sheet = np.asarray(im.convert("RGB"), dtype=np.int16)
    # X: seed (3 values, the most), Y: guidance (2)
    assert sheet.shape[:2] == (GRID_HEADER_HEIGHT + 2 * SIZE, GRID_LABEL_WIDTH + 3 * SIZE)
    records = {(r["params"]["guidance"], r["seed"]): r for r in manifest_records(out, "output")
               if r["stage"] == "sweep"}
    for row, guidance in enumerate(GUIDANCE):
        for col, seed in enumerate(SEEDS):
            with Image.open(out / records[(guidance, seed)]["path"]) as im:
                image = np.asarray(im.convert("RGB"), dtype=np.int16)
            top, left = GRID_HEADER_HEIGHT + row * SIZE, GRID_LABEL_WIDTH + col * SIZE
            assert np.array_equal(sheet[top:top + SIZE, left:left + SIZE], image), (guidance, seed)
    header, labels = sheet[:GRID_HEADER_HEIGHT, GRID_LABEL_WIDTH:], sheet[GRID_HEADER_HEIGHT:, :GRID_LABEL_WIDTH]
    for area in (header, labels):
        dark = (area.max(axis=2) < 100).sum()
        assert dark > 20, "axis labels are drawn"
    for stage in ("sketch", "paint", "moon"):  # one image each: nothing to compare
        assert not (out / stage / "grid.png").exists()


def record(path: str, seed: int, prompt: str = "p", guidance: float = 7.5, source: str | None = None
           ) -> OutputRecord:
    return OutputRecord(job_id=path, stage=path.split("/")[0], type="generate", path=path, seed=seed, prompt=prompt,
                        params={"guidance": guidance}, inputs=[{"path": source, "sha256": "0"}] if source else [])


def test_grid_axes_tell_sweeps_from_inherited_values():
    sweep = [record(f"s/{g}-{s}.png", s, guidance=g) for g in GUIDANCE for s in SEEDS]
    assert grid_axes(sweep) == ("seed", "guidance", [])
    seeds = {r.path: r.seed for r in sweep}
    # img2img over the six images: seeds inherited (not a sweep), two prompts swept -> prompts x inputs
    paint = [record(f"p/{q}-{r.seed}.png", r.seed, prompt=q, source=r.path)
             for q in ("oil", "ink") for r in sweep]
    assert grid_axes(paint, seeds) == ("prompt", "input", [])
    # one prompt: only inherited seeds vary -> no sweep, no sheet
    assert grid_axes(paint[:6], seeds) == (None, None, [])
    # its own seeds over one input are a sweep
    assert grid_axes([record(f"q/{s}.png", s, source="in.png") for s in (7, 8)], seeds) == ("seed", None, [])


# ------------------------------------------------------------------------------------------ browser
CHROMIUM = next((shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome")
                 if shutil.which(name)), None)
CHECK_SCRIPT = """<script>
window.addEventListener("load", () => {
  const images = [...document.images];
  const broken = images.filter(i => !i.complete || i.naturalWidth === 0).map(i => i.getAttribute("src"));
  const first = images.find(i => i.classList.contains("thumb")).getBoundingClientRect();
  document.body.dataset.result = JSON.stringify({images: images.length, broken,
    thumb: [first.left, first.top, first.width, first.height].map(Math.round)});
});
</script>"""


def chromium(url: str, profile: Path, *extra: str) -> subprocess.CompletedProcess:
    args = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
            "--disable-dev-shm-usage", "--enable-logging=stderr", "--v=0", "--hide-scrollbars",
            "--window-size=1200,900", "--force-device-scale-factor=1", *extra, url]
    return subprocess.run(args, check=False, capture_output=True, text=True, timeout=60)


def console_messages(stderr: str) -> list[str]:
    """Page console output (Chromium logs every level as INFO:CONSOLE); the page has no script, so any is bad."""
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]


@pytest.mark.skipif(CHROMIUM is None and not os.environ.get("CI"),
                    reason="chromium not installed (apt-get install -y chromium); required in CI")
def test_browser_renders_the_page_with_all_images(run_out, tmp_path):
    assert CHROMIUM is not None, "CI must install chromium: apt-get install -y chromium"
    out = run_out
    page = (out / "index.html").read_text(encoding="utf-8")
    # a copy with every image loaded eagerly and a check that reports what the browser decoded
    check = out / "_check.html"
    check.write_text(page.replace(' loading="lazy"', "").replace("</body>", CHECK_SCRIPT + "</body>"),
                     encoding="utf-8")
    try:
        dom = chromium(check.as_uri(), tmp_path / "profile-dom", "--virtual-time-budget=10000", "--dump-dom")
    finally:
        check.unlink()
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert not console_messages(dom.stderr), console_messages(dom.stderr)
    found = re.search(r'data-result="([^"]*)"', dom.stdout)
    assert found, "the page did not finish loading"
    result = json.loads(html.unescape(found.group(1)))
    assert result["broken"] == [] and result["images"] >= 10, result

    shot = tmp_path / "shot.png"
    screenshot = chromium((out / "index.html").as_uri(), tmp_path / "profile-shot", f"--screenshot={shot}")
    assert screenshot.returncode == 0 and shot.is_file(), screenshot.stderr[-2000:]
    assert not console_messages(screenshot.stderr), console_messages(screenshot.stderr)
    left, top, width, height = result["thumb"]
    with Image.open(shot) as im:
        pixels = np.asarray(im.convert("RGB"), dtype=np.float64)
    assert top + height <= pixels.shape[0], "the first thumbnail is on screen"
    thumb = pixels[top + 2:top + height - 2, left + 2:left + width - 2]
    first = manifest_records(out, "output")[0]  # the page lists outputs in manifest order
    with Image.open(out / first["path"]) as im:
        image = np.asarray(im.convert("RGB"), dtype=np.float64)
    assert thumb.std() > 10, "the thumbnail area is blank"
    assert np.abs(thumb.mean(axis=(0, 1)) - image.mean(axis=(0, 1))).max() < 12, "the thumbnail shows the image"
