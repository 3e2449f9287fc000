"""A static gallery of an output folder: ``<out>/index.html``, pages of it, and contact sheets per sweeping stage.

``write_gallery(out_dir, current)`` reads the manifest (through its index, :mod:`sdbatch.io.index`: the latest
record per path, only files that still exist, none that ``prune`` retired) and writes self-contained pages:
inline CSS, no script, no network, every link relative (the folder can be moved or zipped). Each stage gets a
section: images as thumbnails (cached under ``<out>/.thumbs``, :mod:`.thumbs`; ``loading="lazy"``) linking to
the files, mp4s as ``<video controls>``, each with its prompt, seed and parameters; video frames and
previews folded under the output they belong to. A stage whose images sweep gets contact sheets
(``<stage>/grid.png``, or ``grid-001.png``, ... within a pixel budget: :mod:`.grid`) at the top of its section.

``current`` is the current plan's job ids: outputs of other jobs (earlier versions of the recipe, files still
there) go in a collapsed "older outputs" section (``<details>``), newest first. Without it, the jobs the last
gallery written with a plan called older still are.

Up to :data:`PAGE_SIZE` outputs the gallery is the one page ``index.html``. A larger one is paged: ``index.html``
keeps each stage's heading and sheets and links its pages, ``gallery/stage-<stage>-001.html``, ... of at most
:data:`PAGE_SIZE` outputs each (older outputs: ``gallery/older-001.html``, ...). Pages are written atomically
and only when they change; when nothing the gallery shows changed since it was last written (its key, kept in
``<out>/.gallery-state.json``, hashes every recorded output's path, job, sha256, size and mtime, as the
manifest's index has them), nothing is read, looked at or written: a run with nothing to do stays fast at
100,000 outputs. (A recorded file deleted by hand is still linked until the gallery next changes; a run renders
a missing current output again, which changes it.)

Everything is written inside the output folder: a manifest line whose ``path`` or ``stage`` is absolute, holds
``..`` or leads out of the folder through a symlink is ignored, with one warning line on stderr.
The HTML is in Jinja2 templates (``templates/gallery.html`` and its parts, autoescaped).

Example::

    write_gallery(Path("outputs/wolves"))      # -> outputs/wolves/index.html
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import sys
from collections import OrderedDict
from collections.abc import Collection
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ..core.record import OutputRecord, RunRecord
from ..io.index import IndexEntry, ManifestIndex, load_index, read_record_at
from ..io.manifest import MANIFEST_NAME
from . import gallery_view as view
from .grid import GRID_CELL_MAX, GRID_MAX_SIDE, GRID_MIN_CELL, is_image, write_grid, write_if_changed
from .thumbs import THUMB_SIZE, make_thumbs, needs_thumb, remove_stale, thumb_rel
from .untrusted import relpath_problem, shown

GALLERY_NAME = "index.html"
PAGES_DIR = "gallery"
PAGE_SIZE = 500  # outputs per page; a gallery of at most this many is the one page index.html
STATE_NAME = ".gallery-state.json"
GALLERY_VERSION = 2
PAGE_PATTERN = re.compile(r"(stage-[A-Za-z0-9_-]+|older)-\d{3,}\.html")
_SAFE_PATH = re.compile(r"(?:[A-Za-z0-9_-][A-Za-z0-9_.-]*/)*[A-Za-z0-9_-][A-Za-z0-9_.-]*")
_ENV: Any = None


def _environment() -> Any:
    global _ENV
    if _ENV is None:
        from jinja2 import Environment, PackageLoader, StrictUndefined, pass_context

        env = Environment(loader=PackageLoader("sdbatch.reports", "templates"), autoescape=True,
                          trim_blocks=True, lstrip_blocks=True, undefined=StrictUndefined)
        # a path relative to the output folder, as a link from the page (pages under gallery/ go up one)
        env.filters["href"] = pass_context(lambda ctx, rel: quote(ctx.get("root", "") + rel, safe="/"))
        _ENV = env
    return _ENV


# ------------------------------------------------------------------------------------------ records
class _Guard:
    """Which manifest paths stay inside the output folder (no ``..``, nothing absolute, no symlink out), and
    which exist; folders resolved once each."""

    def __init__(self, out_dir: Path):
        self.out = str(out_dir)
        self.base = os.path.realpath(out_dir)
        self.dirs: dict[str, bool] = {}
        self.stages: dict[str, str | None] = {}
        self.states: dict[str, str] = {}

    def _inside(self, real: str) -> bool:
        return real == self.base or real.startswith(self.base.rstrip(os.sep) + os.sep)

    def dir_inside(self, rel: str) -> bool:
        known = self.dirs.get(rel)
        if known is None:
            known = self.dirs[rel] = self._inside(os.path.realpath(os.path.join(self.out, rel)))
        return known

    def escapes(self, entry: IndexEntry) -> str | None:
        """Why ``entry`` would lead the gallery out of the folder (its file, or its stage's sheets), or None."""
        path = entry.path
        if (not _SAFE_PATH.fullmatch(path) and relpath_problem(path)) or not self.dir_inside(os.path.dirname(path)) \
                or self.state(path) == "outside":
            return f"path {shown(path)}"
        stage = entry.stage or "outputs"
        if stage not in self.stages:
            bad = relpath_problem(stage) or "/" in stage or not self.dir_inside(stage)
            self.stages[stage] = f"stage {shown(stage)}" if bad else None
        return self.stages[stage]

    def state(self, rel: str) -> str:
        """``file`` (a regular file inside), ``outside`` (a symlink out) or ``missing``."""
        known = self.states.get(rel)
        if known is None:
            known = self.states[rel] = self._state(rel)
        return known

    def _state(self, rel: str) -> str:
        full = os.path.join(self.out, rel)
        try:
            st = os.lstat(full)
        except (OSError, ValueError):
            return "missing"
        if stat.S_ISLNK(st.st_mode):
            real = os.path.realpath(full)
            if not self._inside(real):
                return "outside"
            return "file" if os.path.isfile(real) else "missing"
        return "file" if stat.S_ISREG(st.st_mode) else "missing"


def shown_entries(out_dir: Path, index: ManifestIndex, warned: list[str] | None = None) -> list[IndexEntry]:
    """The latest output line per path, for files that exist, in order of each path's first line; lines
    leading out of ``out_dir`` are ignored (one warning line, also appended to ``warned``)."""
    guard = _Guard(out_dir)
    latest: dict[str, IndexEntry] = {}
    ignored = []
    for entry in index.live_outputs():
        why = guard.escapes(entry)
        if why:
            ignored.append(why)
        else:
            latest[entry.path] = entry
    if ignored:
        line = (f"warning: {out_dir / MANIFEST_NAME}: ignored {len(ignored)} output record(s) leading out of "
                f"{out_dir} (first: {ignored[0]})")
        print(line, file=sys.stderr)
        if warned is not None:
            warned.append(line)
    return [e for e in latest.values() if guard.state(e.path) == "file"]


def latest_outputs(out_dir: Path) -> list[OutputRecord]:
    """The latest output record per path, for files that exist, in order of each path's first record."""
    out_dir = Path(out_dir)
    return [r for _, r in _records(out_dir, shown_entries(out_dir, load_index(out_dir / MANIFEST_NAME)))]


def _records(out_dir: Path, entries: list[IndexEntry]) -> list[tuple[IndexEntry, OutputRecord]]:
    """Each entry with its full record, read from its manifest line."""
    if not entries:
        return []
    out = []
    with open(out_dir / MANIFEST_NAME, "rb") as fh:
        for entry in entries:
            record = read_record_at(fh, entry.offset)
            if isinstance(record, OutputRecord) and record.path == entry.path:
                out.append((entry, record))
    return out


def _last_run(out_dir: Path, index: ManifestIndex) -> RunRecord | None:
    if index.last_start is None:
        return None
    with open(out_dir / MANIFEST_NAME, "rb") as fh:
        record = read_record_at(fh, index.last_start)
    return record if isinstance(record, RunRecord) else None


# ------------------------------------------------------------------------------------------- state
def _read_state(out_dir: Path) -> dict[str, Any]:
    try:
        data = json.loads((out_dir / STATE_NAME).read_bytes())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) and data.get("version") == GALLERY_VERSION else {}


def _key(entries: list[IndexEntry], older: set[str], run: RunRecord | None, title: str) -> str:
    """Everything the gallery shows depends on, as one hash."""
    env = _environment()
    digest = hashlib.sha256()
    templates = [env.loader.get_source(env, name)[0] for name in ("gallery.html", "_gallery_parts.html",
                                                                   "gallery.css")]
    digest.update(json.dumps([GALLERY_VERSION, templates, PAGE_SIZE, GRID_MAX_SIDE, GRID_MIN_CELL, GRID_CELL_MAX,
                              THUMB_SIZE, title, bool(run is not None and run.rehearse),
                              run.recipe.path if run is not None and run.recipe is not None else None]).encode())
    for e in entries:
        digest.update(f"\0{e.path}\1{e.job_id}\1{e.stage}\1{e.role}\1{e.sha256}\1{e.size}\1{e.mtime_ns}\1"
                      f"{e.offset}\1{e.job_id in older}".encode())
    return digest.hexdigest()


def _unchanged(out_dir: Path, state: dict[str, Any], key: str) -> bool:
    files = state.get("files")
    return state.get("key") == key and isinstance(files, list) and \
        all(isinstance(f, str) and (out_dir / f).is_file() for f in [GALLERY_NAME, *files])


# ------------------------------------------------------------------------------------------- build
def _build(out_dir: Path, current: Collection[str] | None, write: bool, shortcut: bool = False
           ) -> tuple[str, dict[str, str], dict]:
    """(index.html, {page path: html}, state) of the gallery; ``write``: also write sheets and thumbnails;
    ``shortcut``: ("", {}, {}) when nothing it shows changed since it was written."""
    from markupsafe import Markup

    index = load_index(out_dir / MANIFEST_NAME)
    latest = list({e.path: e for e in index.live_outputs()}.values())  # before any file is looked at
    state = _read_state(out_dir)
    if current is not None:
        current = set(current)
        older = {e.job_id for e in latest if e.job_id not in current}
    else:
        older = {str(i) for i in state.get("older", []) if isinstance(i, str)}
    run = _last_run(out_dir, index)
    rehearsal = bool(run is not None and run.rehearse)  # the last run was --rehearse: say so in title and heading
    title = f"sdbatch · {out_dir.resolve().name}" + (" · rehearsal" if rehearsal else "")
    key = _key(latest, older, run, title)
    if shortcut and _unchanged(out_dir, state, key):  # nothing it shows changed: nothing to read or write
        if isinstance(state.get("warning"), str):
            print(state["warning"], file=sys.stderr)  # the lines it ignores are still ignored: still said
        return "", {}, {}
    warned: list[str] = []
    entries = shown_entries(out_dir, index, warned)
    new_state = {"version": GALLERY_VERSION, "key": key, "older": sorted(older), "files": [],
                 "warning": warned[0] if warned else None}
    pairs = _records(out_dir, entries)
    records = [r for _, r in pairs]
    thumbs = _thumbnails(out_dir, records, write)
    known = {r.path for r in records}
    seeds = {r.path: r.seed for r in records}
    by_stage: OrderedDict[str, list[OutputRecord]] = OrderedDict()
    for record in records:
        if record.job_id not in older:
            by_stage.setdefault(record.stage or "outputs", []).append(record)
    old = [r for e, r in sorted(pairs, key=lambda pair: -pair[0].offset) if r.job_id in older]  # newest first
    stages = []
    for stage, group in by_stage.items():
        grids = write_grid(out_dir, stage, group, seeds, _cell_source(out_dir, thumbs)) if write else []
        stages.append(view.stage_view(stage, group, known, thumbs, grids))
        new_state["files"] += [g["path"] for g in grids]
    older_view = {"count": sum(1 for r in old if not r.is_part), "outputs": view.items(old, known, thumbs, True),
                  "pages": None} if old else None
    count = sum(1 for r in records if not r.is_part and r.job_id not in older)
    info = f"{count} output(s) in {len(stages)} stage(s)"
    if older_view:
        info += f" · {older_view['count']} older output(s)"
    if rehearsal:
        info = "Rehearsal (--rehearse): tiny built-in models, not real images · " + info
    if run is not None and run.recipe is not None and run.recipe.path:
        info += f" · recipe {run.recipe.path}"
    times = [r.time for r in records if r.time]
    if times:
        info += f" · last rendered {max(times)}"
    env = _environment()
    css = Markup(env.loader.get_source(env, "gallery.css")[0].strip("\n"))
    context = {"title": title, "info": info, "manifest": MANIFEST_NAME, "css": css, "root": "", "page": None}
    pages: dict[str, str] = {}
    total = sum(s["count"] for s in stages) + (older_view["count"] if older_view else 0)
    if total > PAGE_SIZE:  # paged: the index links each stage's pages
        template = env.get_template("gallery.html")
        groups = [(f"stage-{s['name']}", s, f"{s['name']}: outputs") for s in stages]
        groups += [("older", older_view, "older outputs")] if older_view else []
        for name, holder, label in groups:
            cut = view.paged(name, holder["outputs"], PAGE_SIZE, label)
            links = [{"href": f"{PAGES_DIR}/{p['name']}", "label": p["label"]} for p in cut]
            for n, page in enumerate(cut):
                siblings = [{"href": f"{PAGES_DIR}/{p['name']}", "label": str(i + 1), "current": i == n}
                            for i, p in enumerate(cut)]
                pages[f"{PAGES_DIR}/{page['name']}"] = template.render(
                    context, stages=stages, older=older_view, root="../",
                    page={"heading": page["label"], "outputs": page["outputs"], "siblings": siblings}) + "\n"
            holder["pages"] = links
    html = env.get_template("gallery.html").render(context, stages=stages, older=older_view) + "\n"
    new_state["files"] += sorted(pages)
    return html, pages, new_state


def _thumbnails(out_dir: Path, records: list[OutputRecord], write: bool) -> dict[str, str]:
    """Output path -> its cached thumbnail, for images larger than a thumbnail (made when missing)."""
    wanted = {}
    for r in records:
        if is_image(r.path) and not r.is_part and needs_thumb(r.params.get("width"), r.params.get("height")):
            rel = thumb_rel(r.sha256)
            if rel is not None:
                wanted[r.path] = rel
    if not write:
        return {path: rel for path, rel in wanted.items() if (out_dir / rel).is_file()}
    made = make_thumbs(out_dir, wanted.items())
    remove_stale(out_dir, made)
    return {path: rel for path, rel in wanted.items() if rel in made}


def _cell_source(out_dir: Path, thumbs: dict[str, str]) -> Any:
    """A contact sheet cell's file: the thumbnail when the cell is no larger (fast to decode), else the image."""
    return lambda record: out_dir / thumbs.get(record.path, record.path)


def render_gallery(out_dir: Path, current: Collection[str] | None = None) -> str:
    """``index.html``'s HTML (writes the contact sheets and thumbnails as a side effect)."""
    out_dir = Path(out_dir)
    return _build(out_dir, current, write=out_dir.is_dir())[0]


def write_gallery(out_dir: Path, current: Collection[str] | None = None) -> Path:
    """Write ``<out>/index.html`` (its pages, sheets and thumbnails) atomically, each only when it changed;
    ``current``: the current plan's job ids (see the module's docstring). Returns the index page's path."""
    out_dir = Path(out_dir)
    path = out_dir / GALLERY_NAME
    html, pages, state = _build(out_dir, current, write=True, shortcut=True)
    if not state:
        return path  # unchanged
    folder = out_dir / PAGES_DIR
    if pages and (folder.is_symlink() or (folder.exists() and not folder.is_dir())):
        raise OSError(f"{folder} is not a folder of its own (a symlink or a file): the gallery's pages go there")
    for rel, page in pages.items():
        write_if_changed(out_dir / rel, page.encode("utf-8"))
    if folder.is_dir() and not folder.is_symlink():
        for old in folder.iterdir():  # pages of an earlier, larger gallery
            if PAGE_PATTERN.fullmatch(old.name) and f"{PAGES_DIR}/{old.name}" not in pages and old.is_file():
                old.unlink()
    write_if_changed(path, html.encode("utf-8"))
    from ..io.artifacts import atomic_write_bytes

    atomic_write_bytes(out_dir / STATE_NAME, json.dumps(state).encode())
    return path
