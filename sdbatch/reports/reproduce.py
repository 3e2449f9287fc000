"""``sdbatch reproduce FILE``: re-render an output from its record alone and compare the pixels.

The :class:`~sdbatch.core.job.Job` is rebuilt from the record (:func:`build_job`, the one place that does it),
the model found (built-in by name, a hub model in the local cache at the recorded commit, a local file or
folder by its recorded path, checked against its recorded hash) and the inputs (see :mod:`.locate`); it is
rendered with a :class:`~sdbatch.runtime.worker.JobWorker` and its pixels compared with the given file.

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

The record is untrusted input (:mod:`.untrusted`): its paths are checked before anything is looked up, its
params, options and seed are validated (a wrong one: ``error: <file>: metadata field 'params.steps': ...``),
and the re-rendered files go only under ``--out`` (default: a fresh temp folder, named in the result line),
never to a path taken from the metadata.

A frame of a video stage (animate, restyle, interpolate) is re-rendered from its record and the saved frames
before it, by the stage's own code (:mod:`.reproduce_frames`), and compared the same way; a whole video is not.

Exit codes: 0 match, 1 pixels differ, 2 cannot reproduce (no metadata, untrusted metadata, unsupported output
kind, missing/changed input or model, a missing frame before a frame, render error).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any

from ..core.record import OutputRecord
from ..io.manifest import MANIFEST_NAME, read_outputs
from .locate import aux_models, locate_input, recipe_dirs, recorded_model, search_bases
from .provenance import (
    EXIT_CANNOT,
    EXIT_DIFFERS,
    EXIT_MATCH,
    Found,
    ProvenanceError,
    abs_path,
    check_manifest_hash,
    find_record,
)
from .reproduce_frames import VIDEO_TYPES, FrameContext, check_frame_record, frame_aux, job_output, render_frame
from .untrusted import UntrustedMetadata, field_name, inside, path_problems

REPRODUCIBLE_TYPES = ("generate", "img2img", "inpaint", "upscale")


def _check_reproducible(found: Found) -> None:
    r, name = found.record, found.file.name
    kind = r.type
    if r.role == "preview":
        raise ProvenanceError(f"{name}: an in-progress preview; reproduce the job's final image instead")
    if r.role == "frame":
        check_frame_record(found)
    elif kind in VIDEO_TYPES:
        frames = PurePosixPath(r.path).parent / "frames"
        raise ProvenanceError(f"{name}: reproducing a whole {kind} video is not supported yet; reproduce one of its "
                              f"frames ({frames}/000000.png, ...)")
    elif found.file.suffix.lower() != ".png":
        raise ProvenanceError(f"{name}: reproducing this file type is not supported yet (only images and video "
                              f"frames: {', '.join(REPRODUCIBLE_TYPES + VIDEO_TYPES)})")
    elif kind not in REPRODUCIBLE_TYPES:
        raise ProvenanceError(f"{name}: unknown stage type {kind!r}")
    for key in ("params", "seed"):
        if key not in r.model_fields_set or getattr(r, key) is None:
            raise ProvenanceError(f"{name}: the record lacks {key!r}")
    problems = found.untrusted or path_problems(r)
    if problems:
        field, why = problems[0]
        raise ProvenanceError(UntrustedMetadata(field, f"{why}; not followed").line(found.file))


def _typed(found: Found, field: str, build: Any, *args: Any) -> Any:
    """``build(*args)`` (a typed value made from the record's ``field``); a wrong value is a ProvenanceError
    naming the field (``params.steps``)."""
    from pydantic import ValidationError

    try:
        return build(*args)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        error = UntrustedMetadata(field_name([field, *first["loc"]]), first["msg"])
    except (TypeError, ValueError) as exc:
        error = UntrustedMetadata(field, str(exc))
    raise ProvenanceError(error.line(found.file))


def _params(kind: str, data: dict[str, Any]) -> Any:
    """A job's typed params from its record, validated as the JSON they were read from (so that the integer
    keys of animate's ``prompts`` schedule, strings in JSON, read back as integers)."""
    from ..core.params import params_model
    from ..stages import stage_config

    return params_model(stage_config(kind)).model_validate_json(json.dumps(data))


def build_job(found: Found) -> tuple[Any, dict[str, Path], list[Path]]:
    """The Job of ``found``'s record, with every input located and checked; plus {input path: file} and the
    folders the recipe may be in."""
    from pydantic import TypeAdapter

    from ..config.limits import check_seed
    from ..config.types import Size, multiple_of_8
    from ..core.job import InputRef, Job, options_from_json

    _check_reproducible(found)
    r = found.record
    params = _typed(found, "params", _params, r.type, r.params)
    for side in ("width", "height"):  # the bounds a recipe's sizes have
        _typed(found, f"params.{side}", TypeAdapter(Size).validate_python, getattr(params, side))
        _typed(found, f"params.{side}", multiple_of_8, getattr(params, side))
    # a video frame keeps its batch size: restyle diffuses independent frames in fixed groups of it, and a
    # frame re-rendered in its own group is the frame it was (an image job is re-rendered alone, see _differences)
    runtime = {k: v for k, v in r.options.items() if k != "previews" and (k != "batch_size" or r.role == "frame")}
    options = _typed(found, "options", options_from_json, runtime)
    seed = _typed(found, "seed", check_seed, int(r.seed))
    stage_outputs: set[str] = set()
    upstream: dict[str, str] = {}
    if found.out_dir is not None:
        for rec in read_outputs(found.out_dir / MANIFEST_NAME):
            stage_outputs.add(rec.path)
            upstream[rec.path] = rec.job_id
    dirs = recipe_dirs(found)
    bases = search_bases(found, dirs)
    located: dict[str, Path] = {}
    inputs, mask = [], None
    for entry in r.inputs:
        path = locate_input(entry.path, entry.sha256, entry.role or "input", found, stage_outputs, bases)
        located[entry.path] = path
        is_stage = entry.path in stage_outputs and found.out_dir is not None and \
            abs_path(path) == abs_path(found.out_dir / entry.path)
        ref = InputRef(entry.path, entry.sha256, upstream.get(entry.path) if is_stage else None)
        if entry.role == "mask":
            mask = ref
        else:
            inputs.append(ref)
    if r.type in ("img2img", "inpaint") and not inputs:
        raise ProvenanceError(f"{found.file.name}: the record of this {r.type} output names no input image")
    if r.type == "inpaint" and mask is None:
        raise ProvenanceError(f"{found.file.name}: the record of this inpaint output names no mask")
    if r.type == "restyle" and not inputs:
        raise ProvenanceError(f"{found.file.name}: the record of this restyle frame names no input video")
    model = recorded_model(r.model.id, r.model.revision, r.model.source, bases)
    device, dtype = _device_for(r)
    frame = r.role == "frame"
    aux = {**aux_models(r.params, found, bases), **(frame_aux(r, bases) if frame else {})}
    job = Job(job_id=r.job_id, stage=r.stage, type=r.type, prompt=r.prompt, negative_prompt=r.negative_prompt,
              seed=seed, params=params, model=model, device=device, dtype=dtype,
              output=job_output(r) if frame else r.path, inputs=inputs, mask=mask, options=options, aux_models=aux)
    return job, located, dirs


def _device_for(record: OutputRecord) -> tuple[str, str]:
    """The recorded device and dtype, or CPU float32 when that device is not here."""
    device = record.device or "cpu"
    dtype = record.dtype or "float32"
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


def _pin_threads(record: OutputRecord, job: Any) -> tuple[int, int]:
    """Use the recorded CPU thread count (float sums are split by thread, so it can move a pixel by a level).

    Returns (threads now, threads before) so the caller can restore them.
    """
    import torch

    before = torch.get_num_threads()
    recorded = record.threads
    if job.device == "cpu" and recorded is not None and 0 < recorded <= (os.cpu_count() or 1) and recorded != before:
        torch.set_num_threads(recorded)
    return torch.get_num_threads(), before


def _maybe_batched(record: OutputRecord) -> bool:
    """Whether an output without batch membership in its record may still have been rendered in a batch."""
    size = record.options.get("batch_size", "auto")
    if isinstance(size, int):
        return size > 1
    params = record.params
    pixels = int(params.get("width") or 512) * int(params.get("height") or 512)
    return not (record.device or "cpu").startswith("cpu") or pixels <= 256 * 256 // 2  # CPU auto batching


def _differences(record: OutputRecord, job: Any, threads: int, batch_size: int) -> list[str]:
    """Why pixels may legitimately differ: environment differences from the record."""
    from ..runtime.worker import software_versions

    reasons = []
    if job.device == "cpu":
        if record.threads is None:
            reasons.append(f"CPU threads not recorded (now {threads})")
        elif record.threads != threads:
            reasons.append(f"CPU threads {record.threads} -> {threads}")
    now = software_versions()
    for name, version in record.versions.items():
        if name != "sdbatch" and now.get(name) not in (None, version):
            reasons.append(f"{name} {version} -> {now[name]}")
    if record.device and record.device != job.device:
        reasons.append(f"device {record.device} -> {job.device}")
    if record.dtype and record.dtype != job.dtype:
        reasons.append(f"dtype {record.dtype} -> {job.dtype}")
    if record.role == "frame":
        pass  # a video frame is re-rendered in the same group of frames it was rendered in
    elif record.batch is not None and len(record.batch) > batch_size:
        reasons.append(f"rendered in a batch of {len(record.batch)}, whose other jobs' records are not at hand; "
                       f"now {'alone' if batch_size == 1 else f'in a batch of {batch_size}'}")
    elif record.batch is None and _maybe_batched(record):
        reasons.append("it may have been rendered in a batch, which its record does not tell; now alone")
    return reasons


def batch_jobs(found: Found, job: Any) -> tuple[list[Any], dict[str, Path]]:
    """The jobs rendered in one batch with ``found`` (its record's ``batch``: job ids in batch order), rebuilt from
    their manifest records, so its pixels come out as they did: a batched render may differ from a lone one by
    a level. Just ``[job]`` when it was rendered alone or the others' records are not at hand."""
    ids = found.record.batch
    if ids is None or len(ids) < 2 or found.out_dir is None or job.job_id not in ids:
        return [job], {}
    finals = {r.job_id: r for r in read_outputs(found.out_dir / MANIFEST_NAME) if r.job_id in ids and not r.is_part}
    jobs, located = [], {}
    for job_id in ids:
        if job_id == job.job_id:
            jobs.append(job)
            continue
        record = finals.get(job_id)
        if record is None:
            return [job], {}
        try:
            other, where, _dirs = build_job(Found(found.out_dir / record.path, record, "manifest", found.out_dir))
        except ProvenanceError:
            return [job], {}
        jobs.append(other)
        located.update(where)
    return jobs, located


def reproduce_output(path: Path, out: Path | None = None) -> int:
    """Re-render ``path`` from its record into ``out`` (default: a fresh temp folder, named in the result line)
    and compare pixels: 0 match, 1 differ, 2 cannot reproduce. Nothing is written outside that folder."""
    try:
        found = find_record(Path(path))
        job, located, dirs = build_job(found)
        jobs, more = batch_jobs(found, job) if found.record.role != "frame" else ([job], {})
        targets = [found.record.path] if found.record.role == "frame" else [j.output for j in jobs]
        out_dir = _out_folder(found, targets, out)
    except ProvenanceError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_CANNOT
    target = out_dir / (found.record.path if found.record.role == "frame" else job.output)
    code = _render_and_compare(found, job, jobs, {**more, **located}, dirs, out_dir, target)
    if code == EXIT_CANNOT and out is None:
        shutil.rmtree(out_dir, ignore_errors=True)
    return code


def _out_folder(found: Found, targets: list[str], out: Path | None) -> Path:
    """Where the re-rendered files go: ``out``, else a fresh temp folder; every target (a job's output, or the
    frame) lands inside it (no symlink in ``out`` leads out of it) and none on the original file."""
    overwrite = f"--out {out}: re-rendered files would overwrite the originals; choose another folder"
    if out is None:
        return Path(tempfile.mkdtemp(prefix="sdbatch-reproduce-"))  # the job paths are checked relative ones
    out_dir = abs_path(Path(out))
    if found.out_dir is not None and out_dir.resolve() == found.out_dir.resolve():
        raise ProvenanceError(overwrite)
    for rel in targets:
        target = inside(out_dir, rel)
        if target is None:
            raise ProvenanceError(f"--out {out}: {rel} leads out of it through a symlink; choose another folder")
        if target.exists() and target.resolve() == found.file.resolve():
            raise ProvenanceError(overwrite)
    return out_dir


def _render(found: Found, job: Any, jobs: list[Any], located: dict[str, Path], dirs: list[Path],
            out_dir: Path) -> tuple[Any, int]:
    """Render ``jobs`` into ``out_dir`` with the recorded thread count; (``job``'s result, threads used)."""
    import torch

    from ..runtime.worker import JobWorker, RunInfo, software_versions
    from ..stages.base import StageContext

    class _Context(StageContext):
        def input_path(self, ref: Any) -> Path:  # inputs where they were found, not where the run put them
            return located.get(ref.path) or super().input_path(ref)

    base_dir = dirs[0] if dirs else Path.cwd()
    recipe = found.record.recipe.model_dump(mode="json", exclude_unset=True)
    worker = JobWorker(RunInfo(str(out_dir), str(base_dir), recipe, software_versions()))
    if found.record.role == "frame":
        worker.ctx = FrameContext(worker.models, out_dir, base_dir, located, found, job)
    else:
        worker.ctx = _Context(worker.models, out_dir, base_dir)
    if job.device != found.record.device:
        print(f"note: recorded on {found.record.device} {found.record.dtype}, which is not available "
              f"here; rendering on {job.device} {job.dtype}", file=sys.stderr)
    threads, before = _pin_threads(found.record, job)
    try:
        if found.record.role == "frame":
            return render_frame(worker, found, job), threads
        return {r.job_id: r for r in worker(jobs)}.get(job.job_id), threads
    finally:
        torch.set_num_threads(before)


def _render_and_compare(found: Found, job: Any, jobs: list[Any], located: dict[str, Path], dirs: list[Path],
                        out_dir: Path, target: Path) -> int:
    import numpy as np

    try:
        result, threads = _render(found, job, jobs, located, dirs, out_dir)
    except ProvenanceError as exc:  # e.g. a missing frame before a video frame
        print(str(exc), file=sys.stderr)
        return EXIT_CANNOT
    if result is None or result.error:
        print(f"could not re-render {found.file.name}: {result.error if result else 'no output'}", file=sys.stderr)
        return EXIT_CANNOT
    original, again = _pixels(found.file), _pixels(target)
    where = f" (re-rendered: {target})"
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
    check_manifest_hash(found)
    for note in found.notes:
        print(f"note: {note}")
    return EXIT_DIFFERS
