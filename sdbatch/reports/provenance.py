"""``sdbatch inspect`` and ``sdbatch reproduce``: how an output was made, and whether it can be made again.

An output's record (its manifest line) comes from the PNG's ``sdbatch`` text chunk or, for an mp4 or a PNG
without the chunk, from the ``manifest.jsonl`` of the output folder the file lives in (the nearest parent
folder holding one, matched by the file's path relative to that folder).

``reproduce`` rebuilds the :class:`~sdbatch.core.plan.Job` from the record alone, finds the model (built-in by
name, a hub model in the local cache at the recorded commit, a local file or folder by its recorded path,
checked against its recorded hash) and the inputs (stage outputs relative to the output folder, files
relative to the recipe's folder, each checked against its recorded sha256), renders it with a
:class:`~sdbatch.runtime.worker.JobWorker` and compares the pixels with the given file.

Match rule: **exact** (every channel of every pixel equal), no tolerance. PNG is lossless, so an untouched
file decodes to exactly the pixels that were rendered, and a job renders bit-identically again with the
same software on the same device and CPU thread count: a CPU generator seeds all noise and torch's CPU
kernels are deterministic for equal inputs and thread count. (Measured with the tiny model: 2 vs 3 threads
gave equal pixels, 1 vs 2 threads moved 1-6 pixels of 4096 by one level, because float sums are split per
thread; so the record's ``threads``, when present, is used again.) A tolerance of one level would hide a
+-1 edit of any number of pixels, and would not make reproduction across machines reliable anyway (on big
models a rounding difference grows over the steps); so a difference is reported with its size, how many
pixels differ, and the recorded-vs-current environment differences (versions, device, dtype, threads,
batching) that could explain it.

Exit codes: ``inspect`` 0, or 2 (missing file, no metadata). ``reproduce`` 0 match, 1 pixels differ,
2 cannot reproduce (no metadata, unsupported output kind, missing/changed input or model, render error).

Example::

    $ sdbatch inspect outputs/wolves/sketch/a-wolf-1000-0123abcd.png
    $ sdbatch reproduce outputs/wolves/sketch/a-wolf-1000-0123abcd.png
    match
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from ..io.manifest import MANIFEST_NAME, read_records

EXIT_MATCH, EXIT_DIFFERS, EXIT_CANNOT = 0, 1, 2
REPRODUCIBLE_TYPES = ("generate", "img2img", "inpaint")
VIDEO_TYPES = ("restyle", "animate", "interpolate")


class ProvenanceError(Exception):
    """One line for the user; the command exits 2."""


@dataclass
class Found:
    """An output file's record and where it came from."""

    file: Path  # absolute
    record: dict[str, Any]
    source: str  # "png" | "manifest"
    out_dir: Path | None  # the output folder (holding manifest.jsonl), when known
    manifest_record: dict[str, Any] | None = None  # the manifest line for this path, when there is one
    notes: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------------- lookup
def _abs(path: Path) -> Path:
    return Path(os.path.abspath(Path(path).expanduser()))


def _rel_parts(record: dict[str, Any]) -> tuple[str, ...]:
    path = record.get("path")
    return PurePosixPath(path).parts if isinstance(path, str) and path else ()


def _manifest_dirs(file: Path) -> list[Path]:
    """Parent folders of ``file`` holding a manifest, nearest first."""
    return [folder for folder in file.parents if (folder / MANIFEST_NAME).is_file()]


def _latest_output(out_dir: Path, rel: str) -> dict[str, Any] | None:
    latest = None
    for record in read_records(out_dir / MANIFEST_NAME):
        if record.get("kind") == "output" and record.get("path") == rel:
            latest = record
    return latest


def _out_dir_from_record(file: Path, record: dict[str, Any]) -> Path | None:
    """The folder that ``record['path']`` is relative to, if ``file`` sits at that path."""
    parts = _rel_parts(record)
    if parts and len(file.parts) > len(parts) and tuple(file.parts[-len(parts):]) == parts:
        return Path(*file.parts[:-len(parts)])
    return None


def find_record(path: Path) -> Found:
    """The record of an output file. Raises :class:`ProvenanceError` (missing file, no metadata)."""
    from ..io.artifacts import read_png_record

    file = _abs(path)
    if not file.exists():
        raise ProvenanceError(f"{path}: no such file")
    if not file.is_file():
        raise ProvenanceError(f"{path}: not a file")
    embedded = read_png_record(file) if file.suffix.lower() == ".png" else None
    if embedded is not None and not isinstance(embedded, dict):
        embedded = None
    if embedded:
        out_dir = _out_dir_from_record(file, embedded)
        manifest_record = None
        if out_dir is not None and (out_dir / MANIFEST_NAME).is_file():
            manifest_record = _latest_output(out_dir, embedded.get("path", ""))
        elif out_dir is None:  # moved or renamed: an output folder above it that has this job
            out_dir = next((d for d in _manifest_dirs(file) if any(
                r.get("job_id") == embedded.get("job_id") for r in read_records(d / MANIFEST_NAME))), None)
        return Found(file, embedded, "png", out_dir, manifest_record)
    for out_dir in _manifest_dirs(file):
        rel = file.relative_to(out_dir).as_posix()
        record = _latest_output(out_dir, rel)
        if record is not None:
            return Found(file, record, "manifest", out_dir, record)
    what = "no 'sdbatch' PNG chunk and " if file.suffix.lower() == ".png" else ""
    raise ProvenanceError(f"{path}: no sdbatch metadata ({what}no {MANIFEST_NAME} record for it in a parent folder)")


# ------------------------------------------------------------------------------------------ inspect
#: record keys ``describe`` shows in their own lines; any other key is shown under "output"
SHOWN_KEYS = {"kind", "job_id", "stage", "type", "path", "prompt", "negative_prompt", "seed", "params", "model",
              "inputs", "recipe", "versions", "device", "dtype", "options", "seconds", "time", "sampler", "sha256",
              "frame", "batch", "threads"}


def _fmt(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False, sort_keys=True)
    return str(value)


def _short(digest: Any, n: int = 12) -> str:
    return str(digest)[:n] if digest else "-"


def describe(found: Found) -> list[str]:
    """The human-readable lines of ``sdbatch inspect``."""
    r = found.record
    params = dict(r.get("params") or {})
    lines: list[tuple[str, str]] = []
    where = "PNG 'sdbatch' chunk" if found.source == "png" else f"{found.out_dir}/{MANIFEST_NAME}"
    lines.append(("file", f"{found.file}  (metadata from {where})"))
    lines.append(("stage", f"{r.get('stage', '?')} ({r.get('type', '?')}), job {_short(r.get('job_id'))}"))
    if "frame" in r:
        lines.append(("frame", _fmt(r["frame"])))
    lines.append(("prompt", str(r.get("prompt", ""))))
    lines.append(("negative prompt", str(r.get("negative_prompt", "")) or "(none)"))
    lines.append(("seed", _fmt(r.get("seed"))))
    head = []
    if "width" in params and "height" in params:
        head.append(f"size {params.pop('width')}x{params.pop('height')}")
    if "scheduler" in params:
        scheduler = params.pop("scheduler")
        sampler = r.get("sampler")
        head.append(f"scheduler {scheduler}" + (f" ({sampler})" if sampler and sampler != scheduler else ""))
    for key in ("steps", "guidance", "strength"):
        if key in params:
            head.append(f"{key} {_fmt(params.pop(key))}")
    lines.append(("parameters", ", ".join(head) or "-"))
    for key in sorted(params):
        lines.append(("", f"{key}: {_fmt(params[key])}"))
    extra = [key for key in sorted(r) if key not in SHOWN_KEYS]
    for i, key in enumerate(extra):
        lines.append(("output" if i == 0 else "", f"{key}: {_fmt(r[key])}"))
    model = r.get("model") or {}
    lines.append(("model", f"{model.get('id', '?')} @ {model.get('revision', '?')}"
                  + (f" ({model['source']})" if model.get("source") else "")))
    inputs = r.get("inputs") or []
    if not inputs:
        lines.append(("inputs", "(none)"))
    for i, entry in enumerate(inputs):
        role = f" [{entry['role']}]" if entry.get("role") else ""
        lines.append(("inputs" if i == 0 else "", f"{entry.get('path')}{role}  sha256 {_short(entry.get('sha256'))}"))
    recipe = r.get("recipe") or {}
    if recipe:
        commit = recipe.get("git_commit")
        git = "not in git" if not commit else f"git {commit[:12]}" + (" (dirty)" if recipe.get("git_dirty") else
                                                                       " (clean)")
        lines.append(("recipe", f"{recipe.get('path', '?')}  sha256 {_short(recipe.get('sha256'))}, {git}"))
    versions = r.get("versions") or {}
    if versions:
        lines.append(("versions", ", ".join(f"{k} {v}" for k, v in versions.items())))
    device = f"{r.get('device', '?')} {r.get('dtype', '')}".strip()
    if isinstance(r.get("threads"), int):
        device += f", {r['threads']} CPU threads"
    if isinstance(r.get("batch"), list) and len(r["batch"]) > 1:
        device += f", in a batch of {len(r['batch'])}"
    lines.append(("device", device))
    if r.get("options"):
        lines.append(("options", ", ".join(f"{k}={_fmt(v)}" for k, v in sorted(r["options"].items()))))
    if r.get("time"):
        took = f" in {r['seconds']} s" if r.get("seconds") is not None else ""
        lines.append(("rendered", f"{r['time']}{took}"))
    for note in found.notes:
        lines.append(("note", note))
    width = max(len(k) for k, _ in lines) + 1
    return [f"{(k + ':') if k else '':<{width}} {v}" for k, v in lines]


def _check_manifest_hash(found: Found) -> None:
    """Note when the file is not the one the manifest recorded (a re-saved or edited file)."""
    from ..io.hashing import sha256_file

    recorded = (found.manifest_record or {}).get("sha256")
    if recorded and sha256_file(found.file) != recorded:
        found.notes.append(f"the file's sha256 differs from the one recorded in {MANIFEST_NAME}: it was "
                           "modified (or re-saved) after rendering")


def inspect_output(path: Path, as_json: bool = False) -> int:
    """Print how ``path`` was made; 0, or 2 when it has no metadata (one line on stderr)."""
    try:
        found = find_record(Path(path))
    except ProvenanceError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_CANNOT
    if as_json:
        json.dump(found.record, sys.stdout, ensure_ascii=False, indent=2, sort_keys=True)
        sys.stdout.write("\n")
        return EXIT_MATCH
    _check_manifest_hash(found)
    print("\n".join(describe(found)))
    return EXIT_MATCH


# ---------------------------------------------------------------------------------------- reproduce
def _recipe_dirs(found: Found) -> list[Path]:
    """Folders the recipe may live in, best first: those holding a file with the recorded recipe's sha256,
    then those holding a file of that name. A relative recipe path was relative to where ``sdbatch run``
    started: tried against the recorded ``dir`` (when the record has one), this working directory and the
    output folder's parents."""
    from ..io.hashing import sha256_file

    recipe = found.record.get("recipe") or {}
    rp = recipe.get("path")
    if not isinstance(rp, str) or not rp:
        return []
    rel = Path(rp).expanduser()
    # a project moved or copied with its outputs finds its own files first, then where the run started
    candidates: list[Path] = []
    for anchor in (found.out_dir, found.file.parent):
        if anchor is not None:
            candidates += [root / rel.name for root in (anchor, *anchor.parents)]
            if not rel.is_absolute():
                candidates += [root / rel for root in (anchor, *anchor.parents)]
    if isinstance(recipe.get("dir"), str):
        candidates.append(Path(recipe["dir"]) / rel.name)
    candidates.append(rel if rel.is_absolute() else Path.cwd() / rel)
    exact, named = [], []
    for candidate in dict.fromkeys(_abs(c) for c in candidates):
        if candidate.is_file():
            try:
                same = sha256_file(candidate) == recipe.get("sha256")
            except OSError:
                same = False
            (exact if same else named).append(candidate.parent)
    return list(dict.fromkeys(exact + named))


def _search_bases(found: Found, recipe_dirs: list[Path]) -> list[Path]:
    bases = list(recipe_dirs) + [Path.cwd()]
    if found.out_dir is not None:
        bases += [found.out_dir.parent, *found.out_dir.parent.parents]
    return list(dict.fromkeys(_abs(b) for b in bases))


def _hash_cache_lookup(digest: str, rel: str) -> Path | None:
    """A file this machine hashed before (planning hashes every input) with ``digest``, ending in ``rel``."""
    from ..io.hashing import HashCache

    tail = PurePosixPath(rel).parts
    for real, entry in HashCache.open().entries.items():
        if isinstance(entry, list) and len(entry) >= 3 and entry[2] == digest:
            path = Path(real)
            if tuple(path.parts[-len(tail):]) == tail and path.is_file():
                return path
    return None


def _locate_input(entry: dict[str, Any], found: Found, stage_outputs: set[str], bases: list[Path]) -> Path:
    from ..io.hashing import sha256_file

    rel = entry.get("path")
    digest = entry.get("sha256")
    if not isinstance(rel, str) or not rel:
        raise ProvenanceError("the record names an input without a path")
    what = entry.get("role") or "input"
    given = Path(rel).expanduser()
    if given.is_absolute():
        candidates = [given]
    elif rel in stage_outputs and found.out_dir is not None:
        candidates = [found.out_dir / rel]  # an upstream stage's output
    else:
        candidates = ([found.out_dir / rel] if found.out_dir is not None and not stage_outputs else []) + \
                     [base / rel for base in bases]
    changed = []
    for candidate in dict.fromkeys(candidates):
        if candidate.is_file():
            # the nearest file at the recorded path decides: a changed input is never swapped for a copy elsewhere
            if not digest or sha256_file(candidate) == digest:
                return candidate
            changed.append(candidate)
            break
    if digest and not changed and not given.is_absolute() and rel not in stage_outputs:
        cached = _hash_cache_lookup(digest, rel)  # e.g. a recipe run from a folder we cannot guess
        if cached is not None and sha256_file(cached) == digest:
            return cached
    if changed:
        raise ProvenanceError(f"{what} {rel} has changed since this output was made (sha256 differs from "
                              f"{_short(digest)}): {changed[0]}")
    looked = ", ".join(str(c.parent) for c in list(dict.fromkeys(candidates))[:4])
    hint = "" if rel in stage_outputs else " (a recipe-relative path: run reproduce next to the recipe)"
    raise ProvenanceError(f"{what} {rel} not found (looked in {looked}){hint}")


def _recorded_model(model_id: Any, revision: Any, source: Any, bases: list[Path], what: str = "model") -> Any:
    from ..errors import ModelUnavailable
    from ..sources.specs import locate_recorded_model

    try:
        return locate_recorded_model(model_id, revision, source, bases, what)
    except ModelUnavailable as exc:
        raise ProvenanceError(str(exc)) from None


def _aux_models(params: dict[str, Any], found: Found, bases: list[Path]) -> dict[str, Any]:
    """The job's extra model sources recorded in its params: LoRA files, a VAE override, a pipeline config."""
    from ..core.job import ModelRef
    from ..sources.specs import local_model_path, parse_identity

    aux: dict[str, Any] = {}
    for lora in params.get("loras") or []:
        entry = {"path": lora.get("path"), "sha256": lora.get("sha256"), "role": "LoRA"}
        path = _locate_input(entry, found, set(), bases)
        aux[f"lora:{lora['sha256']}"] = ModelRef(lora["path"], lora["sha256"], "file", str(path))
    if isinstance(params.get("vae"), str):
        aux["vae"] = _recorded_model(*parse_identity(params["vae"]), bases, what="VAE")
    config = params.get("pipeline_config")
    if isinstance(config, str):
        if config.startswith("sdbatch/"):
            from ..sources.tiny import BUILTIN_MODELS

            aux["pipeline_config"] = ModelRef(config, BUILTIN_MODELS.get(config, "?"), "builtin")
        else:
            local = next((p for p in (local_model_path(config, b) for b in bases) if p is not None), None)
            aux["pipeline_config"] = ModelRef(config, "local", "folder", str(local)) if local is not None \
                else ModelRef(config, "configs", "hub-config", None)
    return aux


def build_job(found: Found) -> tuple[Any, dict[str, Path], list[Path]]:
    """The Job of ``found``'s record, with every input located and checked; plus {input path: file}."""
    from ..core.job import InputRef, Job

    r = found.record
    kind = r.get("type")
    if "preview" in r:
        raise ProvenanceError(f"{found.file.name}: an in-progress preview; reproduce the job's final image instead")
    if "frame" in r or kind in VIDEO_TYPES or found.file.suffix.lower() != ".png":
        what = "video frames" if "frame" in r else (f"{kind} outputs" if kind in VIDEO_TYPES else "this file type")
        raise ProvenanceError(f"{found.file.name}: reproducing {what} is not supported yet (only the image stages: "
                              f"{', '.join(REPRODUCIBLE_TYPES)})")
    if kind not in REPRODUCIBLE_TYPES:
        raise ProvenanceError(f"{found.file.name}: unknown stage type {kind!r}")
    for key in ("job_id", "stage", "path", "params", "seed"):
        if key not in r:
            raise ProvenanceError(f"{found.file.name}: the record lacks {key!r}")
    stage_outputs: set[str] = set()
    upstream: dict[str, str] = {}
    if found.out_dir is not None:
        for rec in read_records(found.out_dir / MANIFEST_NAME):
            if rec.get("kind") == "output" and isinstance(rec.get("path"), str):
                stage_outputs.add(rec["path"])
                upstream[rec["path"]] = rec.get("job_id")
    recipe_dirs = _recipe_dirs(found)
    bases = _search_bases(found, recipe_dirs)
    located: dict[str, Path] = {}
    inputs, mask = [], None
    for entry in r.get("inputs") or []:
        path = _locate_input(entry, found, stage_outputs, bases)
        located[entry["path"]] = path
        is_stage = entry["path"] in stage_outputs and found.out_dir is not None and \
            _abs(path) == _abs(found.out_dir / entry["path"])
        ref = InputRef(entry["path"], entry.get("sha256"), upstream.get(entry["path"]) if is_stage else None)
        if entry.get("role") == "mask":
            mask = ref
        else:
            inputs.append(ref)
    if kind in ("img2img", "inpaint") and not inputs:
        raise ProvenanceError(f"{found.file.name}: the record of this {kind} output names no input image")
    if kind == "inpaint" and mask is None:
        raise ProvenanceError(f"{found.file.name}: the record of this inpaint output names no mask")
    model = r.get("model") or {}
    model = _recorded_model(model.get("id"), model.get("revision"), model.get("source"), bases)
    aux = _aux_models(r["params"], found, bases)
    device, dtype = _device_for(r)
    options = {k: v for k, v in (r.get("options") or {}).items() if k not in ("batch_size", "previews")}
    job = Job(r["job_id"], r["stage"], kind, r.get("prompt", ""), r.get("negative_prompt", ""), int(r["seed"]),
              dict(r["params"]), model, device, dtype, r["path"], inputs, mask, options, aux)
    return job, located, recipe_dirs


def _device_for(record: dict[str, Any]) -> tuple[str, str]:
    """The recorded device and dtype, or CPU float32 when that device is not here."""
    device = str(record.get("device") or "cpu")
    dtype = str(record.get("dtype") or "float32")
    if device == "cpu":
        return device, dtype
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return device, dtype
    if device == "mps" and getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return device, dtype
    return "cpu", "float32"


def _pixels(path: Path) -> Any:
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        mode = "RGBA" if "A" in im.getbands() else "RGB"
        return np.asarray(im.convert(mode), dtype=np.int16)


def _pin_threads(record: dict[str, Any], job: Any) -> tuple[int, int]:
    """Use the recorded CPU thread count (float sums are split by thread, so it can move a pixel by a level).

    Returns (threads now, threads before) so the caller can restore them.
    """
    import torch

    before = torch.get_num_threads()
    recorded = record.get("threads")
    if job.device == "cpu" and isinstance(recorded, int) and recorded > 0 and recorded != before:
        torch.set_num_threads(recorded)
    return torch.get_num_threads(), before


def _maybe_batched(record: dict[str, Any]) -> bool:
    """Whether an output without batch membership in its record may still have been rendered in a batch."""
    size = (record.get("options") or {}).get("batch_size", "auto")
    if isinstance(size, int):
        return size > 1
    params = record.get("params") or {}
    pixels = int(params.get("width") or 512) * int(params.get("height") or 512)
    return not str(record.get("device", "cpu")).startswith("cpu") or pixels <= 256 * 256 // 2  # CPU auto batching


def _differences(record: dict[str, Any], job: Any, threads: int, batch_size: int) -> list[str]:
    """Why pixels may legitimately differ: environment differences from the record."""
    from ..runtime.worker import software_versions

    reasons = []
    if job.device == "cpu":
        recorded = record.get("threads")
        if recorded is None:
            reasons.append(f"CPU threads not recorded (now {threads})")
        elif recorded != threads:
            reasons.append(f"CPU threads {recorded} -> {threads}")
    now = software_versions()
    for name, version in (record.get("versions") or {}).items():
        if name != "sdbatch" and now.get(name) not in (None, version):
            reasons.append(f"{name} {version} -> {now[name]}")
    if record.get("device") and record.get("device") != job.device:
        reasons.append(f"device {record['device']} -> {job.device}")
    if record.get("dtype") and record.get("dtype") != job.dtype:
        reasons.append(f"dtype {record['dtype']} -> {job.dtype}")
    recorded_batch = record.get("batch")
    if isinstance(recorded_batch, list) and len(recorded_batch) > batch_size:
        reasons.append(f"rendered in a batch of {len(recorded_batch)}, whose other jobs' records are not at hand; "
                       f"now {'alone' if batch_size == 1 else f'in a batch of {batch_size}'}")
    elif not isinstance(recorded_batch, list) and _maybe_batched(record):
        reasons.append("it may have been rendered in a batch, which its record does not tell; now alone")
    return reasons


def batch_jobs(found: Found, job: Any) -> tuple[list[Any], dict[str, Path]]:
    """The jobs rendered in one batch with ``found`` (its record's ``batch``: job ids in batch order), rebuilt from
    their manifest records, so its pixels come out as they did: a batched render may differ from a lone one by
    a level. Just ``[job]`` when it was rendered alone or the others' records are not at hand."""
    ids = found.record.get("batch")
    if not isinstance(ids, list) or len(ids) < 2 or found.out_dir is None or job.job_id not in ids:
        return [job], {}
    finals: dict[str, dict[str, Any]] = {}
    for record in read_records(found.out_dir / MANIFEST_NAME):
        if record.get("kind") == "output" and record.get("job_id") in ids and "frame" not in record \
                and "preview" not in record:
            finals[record["job_id"]] = record
    jobs, located = [], {}
    for job_id in ids:
        if job_id == job.job_id:
            jobs.append(job)
            continue
        record = finals.get(job_id)
        if record is None:
            return [job], {}
        try:
            other, where, _dirs = build_job(Found(found.out_dir / record["path"], record, "manifest", found.out_dir))
        except ProvenanceError:
            return [job], {}
        jobs.append(other)
        located.update(where)
    return jobs, located


def reproduce_output(path: Path, out: Path | None = None) -> int:
    """Re-render ``path`` from its record and compare pixels: 0 match, 1 differ, 2 cannot reproduce."""
    try:
        found = find_record(Path(path))
        job, located, recipe_dirs = build_job(found)
    except ProvenanceError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_CANNOT
    temp = None
    if out is None:
        temp = tempfile.mkdtemp(prefix="sdbatch-reproduce-")
        out_dir = Path(temp)
    else:
        out_dir = _abs(Path(out))
    target = out_dir / job.output
    if (found.out_dir is not None and out_dir.resolve() == found.out_dir.resolve()) or \
            (target.exists() and target.resolve() == found.file.resolve()):
        print(f"--out {out}: re-rendered files would overwrite the originals; choose another folder", file=sys.stderr)
        return EXIT_CANNOT
    jobs, more = batch_jobs(found, job)
    try:
        return _render_and_compare(found, job, jobs, {**more, **located}, recipe_dirs, out_dir, target,
                                   keep=temp is None)
    finally:
        if temp is not None:
            shutil.rmtree(temp, ignore_errors=True)


def _render_and_compare(found: Found, job: Any, jobs: list[Any], located: dict[str, Path], recipe_dirs: list[Path],
                        out_dir: Path, target: Path, keep: bool) -> int:
    import numpy as np

    from ..runtime.worker import JobWorker, RunInfo, software_versions
    from ..stages.base import StageContext

    class _Context(StageContext):
        def input_path(self, ref: Any) -> Path:  # inputs where they were found, not where the run put them
            return located.get(ref.path) or super().input_path(ref)

    base_dir = recipe_dirs[0] if recipe_dirs else Path.cwd()
    run = RunInfo(str(out_dir), str(base_dir), dict(found.record.get("recipe") or {}), software_versions())
    worker = JobWorker(run)
    worker.ctx = _Context(worker.models, out_dir, base_dir)
    if job.device != found.record.get("device"):
        print(f"note: recorded on {found.record.get('device')} {found.record.get('dtype')}, which is not available "
              f"here; rendering on {job.device} {job.dtype}", file=sys.stderr)
    import torch

    threads, before = _pin_threads(found.record, job)
    try:
        results = {r.job_id: r for r in worker(jobs)}
    finally:
        torch.set_num_threads(before)
    result = results.get(job.job_id)
    if result is None or result.error:
        print(f"could not re-render {found.file.name}: {result.error if result else 'no output'}", file=sys.stderr)
        return EXIT_CANNOT
    original, again = _pixels(found.file), _pixels(target)
    where = f" (re-rendered: {target})" if keep else ""
    if original.shape != again.shape:
        print(f"size differs: {original.shape[1]}x{original.shape[0]} vs re-rendered "
              f"{again.shape[1]}x{again.shape[0]}{where}")
        return EXIT_DIFFERS
    if original.shape[2] != again.shape[2]:
        original, again = original[..., :3], again[..., :3]
    diff = np.abs(original - again)
    worst = int(diff.max()) if diff.size else 0
    if worst == 0:
        print(f"match{where}")
        return EXIT_MATCH
    changed = int(np.count_nonzero(diff.max(axis=2)))
    print(f"max pixel difference: {worst}")
    detail = f"{changed} of {diff.shape[0] * diff.shape[1]} pixels differ{where}"
    reasons = _differences(found.record, job, threads, len(jobs))
    if reasons:
        detail += "; the environment differs from the record: " + ", ".join(reasons)
    print(detail)
    _check_manifest_hash(found)
    for note in found.notes:
        print(f"note: {note}")
    return EXIT_DIFFERS
