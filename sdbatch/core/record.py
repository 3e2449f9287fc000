"""Manifest records: the lines of ``<out>/manifest.jsonl`` as typed models, tagged by ``kind``.

:class:`OutputRecord` (``kind: output``, one per file written), :class:`FailedRecord`, :class:`SkippedRecord`,
:class:`RunRecord` (``event: start | end``; ``cluster``: a Ray run's workers) and :class:`PrunedRecord`
(``sdbatch prune`` deleted an output).
The field names are a contract other tools read (README, "Outputs and manifest"): they keep their names and
meanings; new fields may be added.

What a stage adds to an output lives in one typed sub-object that cannot clash with the top-level fields:
``frame`` (:class:`FrameInfo`: a video frame's index, its own seed and prompt, schedule values, ...),
``preview`` (:class:`PreviewInfo`) or ``video`` (:class:`VideoInfo`); ``role`` says which kind of output a
record is (``image | frame | preview | video``), so readers never sniff keys.

A record writes exactly the fields it was given, or read (:meth:`to_json`). Reading is typed but forward
compatible: unknown fields are kept (and written back) beside the typed ones, never instead of them.
Records written before ``role`` existed (stage extras merged over the top level) are upgraded on read.
This module builds the job part of a record from a :class:`~sdbatch.core.job.Job` (:func:`job_fields`,
the one serialisation of a job); it imports nothing of sdbatch.

Example::

    record = parse_line(b'{"kind": "failed", "job_id": "...", "stage": "sketch", "error": "..."}')
    line = json.dumps(record.to_json())
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

Role = Literal["image", "frame", "preview", "video"]
VIDEO_SUFFIXES = (".mp4", ".webm", ".mov", ".m4v")


class _Model(BaseModel):
    # unknown fields are kept (forward compatibility); typed fields always parse as declared
    model_config = ConfigDict(extra="allow")


class ModelInfo(_Model):
    """The model an output was rendered with: ``revision`` is a hub commit, a sha256 or a built-in's version."""

    id: str | None = None
    revision: str | None = None
    source: str | None = None  # hub | folder | file | builtin


class InputInfo(_Model):
    path: str
    sha256: str | None = None  # as read when rendering
    role: str | None = None  # "mask"; none for an input image


class RecipeInfo(_Model):
    path: str | None = None  # as given to ``sdbatch run``
    dir: str | None = None  # its folder, absolute
    sha256: str | None = None
    git_commit: str | None = None
    git_dirty: bool | None = None


class FrameInfo(_Model):
    """A video frame (``role: frame``): its index and what its diffusion used, where that is its own."""

    index: int
    source_frame: int | None = None  # restyle: the frame of the input video
    seed: int | None = None  # the frame's own seed (animate, restyle; interpolate: its segment's start seed)
    variation_seed: int | None = None  # interpolate between two seeds: the segment's end seed (A1111's name)
    variation_strength: float | None = None  # ... and how far towards it the noise is slerped (t, 4 decimals)
    prompt: str | None = None  # the frame's own prompt (animate's prompt schedule, interpolate's nearer prompt)
    schedule: dict[str, float] | None = None  # animate: every schedule's value at this frame
    diffused: bool | None = None  # animate: diffused (a key frame), or only warped
    keyframe: int | None = None  # animate with cadence > 1: the key frame this one tweens from
    tween: float | None = None
    path_position: float | None = None  # interpolate: 0 at the first seed, 1 at the last
    segment: list[int] | None = None  # interpolate: the seeds at the ends of this frame's segment
    t: float | None = None  # interpolate: the position within the segment
    prompts: list[str] | None = None  # interpolate: the prompts at the ends of the segment


class PreviewInfo(_Model):
    """An in-progress preview (``role: preview``): the decoded image after ``step`` of ``steps``."""

    step: int
    steps: int


class VideoInfo(_Model):
    """A video (``role: video``)."""

    frames: int
    fps: float
    audio: bool | None = None  # restyle: the input's sound kept
    timing: dict[str, int | float] | None = None  # restyle: where the time went


class _Record(_Model):
    def to_json(self) -> dict[str, Any]:
        """The manifest line: the fields this record was given or read, ``kind`` first."""
        return {"kind": self.kind, **self.model_dump(mode="json", exclude_unset=True)}  # type: ignore[attr-defined]


class OutputRecord(_Record):
    kind: Literal["output"] = "output"
    job_id: str
    stage: str
    type: str
    path: str  # relative to the output folder
    sha256: str | None = None  # of the file (not in the record a PNG embeds)
    size: int | None = None  # the file's size and mtime when written (not embedded): a change is noticed
    mtime_ns: int | None = None
    role: Role = "image"
    prompt: str = ""
    negative_prompt: str = ""
    prompt_template: str | None = None  # the wildcard template ``prompt`` was expanded from, when it was one
    negative_prompt_template: str | None = None
    seed: int | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    model: ModelInfo = Field(default_factory=ModelInfo)
    inputs: list[InputInfo] = Field(default_factory=list)
    recipe: RecipeInfo = Field(default_factory=RecipeInfo)
    versions: dict[str, str] = Field(default_factory=dict)
    device: str | None = None
    dtype: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)  # runtime options (never part of the job id)
    seconds: float | None = None
    time: str | None = None
    sampler: str | None = None  # the scheduler's A1111 name
    threads: int | None = None  # CPU threads (CPU float32 pixels depend on them, by a level at most)
    batch: list[str] | None = None  # the job ids of the batch it was rendered in, in order
    node: str | None = None  # --executor ray: the id of the Ray node that rendered it (manifest only, not in the PNG)
    frame: FrameInfo | None = None
    preview: PreviewInfo | None = None
    video: VideoInfo | None = None

    @property
    def is_part(self) -> bool:
        """A video frame or an in-progress preview: part of its job, not the job's output."""
        return self.role in ("frame", "preview")

    @property
    def effective_seed(self) -> int | None:
        """The seed this output's diffusion used: a frame's own, else the job's."""
        return self.frame.seed if self.frame is not None and self.frame.seed is not None else self.seed

    @property
    def effective_prompt(self) -> str:
        """The prompt this output's diffusion used: a frame's own, else the job's."""
        return self.frame.prompt if self.frame is not None and self.frame.prompt is not None else self.prompt

    def details(self) -> dict[str, Any]:
        """What the stage told about this output beyond the job (a frame's schedule, a video's fps, a preview's
        step; fields of a newer sdbatch), flat, for display. A frame's index, seed and prompt are not here."""
        out: dict[str, Any] = {}
        if self.frame is not None:
            out.update(self.frame.model_dump(mode="json", exclude_unset=True, exclude={"index", "seed", "prompt"}))
        if self.video is not None:
            out.update(self.video.model_dump(mode="json", exclude_unset=True))
        if self.preview is not None:
            out["preview"] = self.preview.model_dump(mode="json", exclude_unset=True)
        out.update(self.model_extra or {})
        return out


class FailedRecord(_Record):
    kind: Literal["failed"] = "failed"
    job_id: str
    stage: str
    path: str | None = None  # the job's output
    error: str
    time: str | None = None


class SkippedRecord(_Record):
    kind: Literal["skipped"] = "skipped"
    job_id: str
    stage: str
    path: str | None = None
    reason: str
    time: str | None = None


class PrunedRecord(_Record):
    """``sdbatch prune`` deleted this output (its job is no longer in the recipe's plan): from this line on the
    file is not expected to exist (``verify``, the gallery and the done-check forget the output lines before it)."""

    kind: Literal["pruned"] = "pruned"
    job_id: str
    stage: str
    path: str
    sha256: str | None = None  # of the file deleted
    time: str | None = None


class RunRecord(_Record):
    kind: Literal["run"] = "run"
    event: Literal["start", "end", "cluster"]  # cluster: --executor ray's workers and nodes, after the start
    run_id: str | None = None
    time: str | None = None
    # start
    recipe: RecipeInfo | None = None
    versions: dict[str, str] | None = None
    jobs: int | None = None
    pending: int | None = None
    rehearse: bool | None = None
    force: bool | None = None
    only: list[str] | None = None
    executor: str | None = None
    pid: int | None = None
    # end
    seconds: float | None = None
    exit_code: int | None = None  # null: the executor itself failed (see error)
    rendered: int | None = None
    failed: int | None = None
    skipped: int | None = None
    interrupted: bool | None = None
    signal: str | None = None  # what stopped the run: SIGINT, SIGTERM or SIGHUP
    error: str | None = None
    # cluster: address, joined, num_gpus and num_cpus per worker, workers (at most), worker_timeout, nodes [{id, ip}]
    ray: dict[str, Any] | None = None


Record = Annotated[Union[OutputRecord, FailedRecord, SkippedRecord, RunRecord, PrunedRecord],
                   Field(discriminator="kind")]
RECORD = TypeAdapter(Record)
KINDS = ("output", "failed", "skipped", "run", "pruned")
FILE_FIELDS = ("sha256", "size", "mtime_ns")  # facts of the written file: in the manifest, not in the PNG it describes


# ------------------------------------------------------------------------------------------- reading
def parse_line(raw: bytes | str) -> OutputRecord | FailedRecord | SkippedRecord | RunRecord:
    """One manifest line as its record. Raises ValueError (invalid JSON) or ValidationError (wrong shape)."""
    try:
        record = RECORD.validate_json(raw)  # one pass in pydantic-core, no Python objects in between
    except ValidationError:
        return parse_record(json.loads(raw))  # an older frame record ("frame": 3), or an error to report
    if record.kind == "output" and "role" not in record.model_fields_set:  # written before roles existed
        if record.model_extra or is_video_path(record.path):
            return parse_record(json.loads(raw))  # e.g. a video's "fps" at the top level: see upgrade()
        record.role = "preview" if record.preview is not None else "image"
    return record


def parse_record(data: Any) -> OutputRecord | FailedRecord | SkippedRecord | RunRecord:
    """A record from its JSON object (a manifest line, or the record a PNG embeds), older formats upgraded."""
    return RECORD.validate_python(upgrade(data) if isinstance(data, dict) else data)


def upgrade(data: dict[str, Any]) -> dict[str, Any]:
    """An output record of an sdbatch that had no ``role`` (stage extras at the top level: ``"frame": 3,
    "schedule": ...``; ``"preview": {...}``; ``"frames", "fps", ...``) in today's shape. Others as they are."""
    if data.get("kind") != "output" or "role" in data:
        return data
    data = dict(data)
    frame = data.get("frame")
    if isinstance(data.get("preview"), dict):
        data["role"] = "preview"
    elif frame is not None and not isinstance(frame, dict):
        # the frame's seed and prompt were merged over the job's: they stay the record's (the job's are lost)
        moved = [key for key in FrameInfo.model_fields if key not in ("index", "seed", "prompt") and key in data]
        data["frame"] = {"index": frame, **{key: data.pop(key) for key in moved}}
        data["role"] = "frame"
    elif any(key in data for key in VideoInfo.model_fields):
        data["video"] = {key: data.pop(key) for key in list(VideoInfo.model_fields) if key in data}
        data["role"] = "video"
    else:
        data["role"] = "video" if is_video_path(data.get("path")) else "image"
    return data


def describe_invalid(exc: Exception) -> str:
    """Why a line is not a record, in a few words."""
    if isinstance(exc, ValidationError):
        errors = exc.errors(include_url=False)
        first = errors[0]
        loc = [str(part) for part in first["loc"]]
        if loc and loc[0] in KINDS:
            loc = loc[1:]  # the union's tag
        text = f"{'.'.join(loc)}: {first['msg']}" if loc else first["msg"]
        return text + (f" (+{len(errors) - 1} more)" if len(errors) > 1 else "")
    if isinstance(exc, json.JSONDecodeError):
        return f"invalid JSON: {exc.msg}"
    return f"{type(exc).__name__}: {exc}"


def is_video_path(path: Any) -> bool:
    return isinstance(path, str) and path.lower().endswith(VIDEO_SUFFIXES)


# ------------------------------------------------------------------------------------------- writing
def job_fields(job: Any, *, model_source: bool = True) -> dict[str, Any]:
    """The fields of a record that come from the job alone (``job`` a :class:`~sdbatch.core.job.Job`): the
    one serialisation of a job, shared by output records and ``plan --json``."""
    model = {"id": job.model.id, "revision": job.model.revision}
    if model_source:
        model["source"] = job.model.source
    fields = {"job_id": job.job_id, "stage": job.stage, "type": job.type, "prompt": job.prompt,
              "negative_prompt": job.negative_prompt, "seed": job.seed, "params": job.params_json(), "model": model}
    return _templates(job, fields)


def _templates(job: Any, fields: dict[str, Any]) -> dict[str, Any]:
    """``fields`` with the job's wildcard templates (``prompt_template``, ...), only where it had one."""
    for key in ("prompt_template", "negative_prompt_template"):
        if getattr(job, key, None) is not None:
            fields[key] = getattr(job, key)
    return fields


def plan_entry(job: Any, status: str | None = None) -> dict[str, Any]:
    """A job as ``sdbatch plan --json`` lists it."""
    data = job_fields(job, model_source=False)
    data["inputs"] = [{"path": r.path, "sha256": r.sha256, "job_id": r.job_id} for r in job.inputs]
    data["output"] = job.output
    if job.mask:
        data["mask"] = {"path": job.mask.path, "sha256": job.mask.sha256}
    if status is not None:
        data["status"] = status
    return data


def plan_entries(jobs: list[Any], done: Any) -> list[dict[str, Any]]:
    """:func:`plan_entry` of each job with its status (``done`` when its id is in ``done``, else ``pending``):
    the same dicts, made faster for a plan of 100,000 jobs (each params object and model serialised once)."""
    params: dict[int, dict[str, Any]] = {}
    models: dict[int, dict[str, Any]] = {}
    out = []
    for job in jobs:
        p = params.get(id(job.params))
        if p is None:
            p = params[id(job.params)] = job.params_json()
        m = models.get(id(job.model))
        if m is None:
            m = models[id(job.model)] = {"id": job.model.id, "revision": job.model.revision}
        data = {"job_id": job.job_id, "stage": job.stage, "type": job.type, "prompt": job.prompt,
                "negative_prompt": job.negative_prompt, "seed": job.seed, "params": dict(p), "model": dict(m),
                "inputs": [{"path": r.path, "sha256": r.sha256, "job_id": r.job_id} for r in job.inputs],
                "output": job.output}
        if job.mask:
            data["mask"] = {"path": job.mask.path, "sha256": job.mask.sha256}
        data["status"] = "done" if job.job_id in done else "pending"
        out.append(_templates(job, data))
    return out


def input_entries(job: Any, hashes: list[str]) -> list[dict[str, Any]]:
    """The record's ``inputs``: the job's inputs, then its mask (``role: mask``), with the sha256 each had when
    read (``hashes``, in that order), else the planned one."""
    entries = []
    refs = list(job.inputs) + ([job.mask] if job.mask else [])
    for i, ref in enumerate(refs):
        entry = {"path": ref.path, "sha256": hashes[i] if i < len(hashes) else ref.sha256}
        if ref is job.mask:
            entry["role"] = "mask"
        entries.append(entry)
    return entries


def stage_fields(extra: dict[str, Any], *, is_file: bool) -> dict[str, Any]:
    """``role`` and the typed sub-object of a stage's ``Rendered.extra`` (``{"frame": 3, "seed": 10, ...}``,
    ``{"preview": {...}}``, ``{"frames": 48, "fps": 12}``); ``is_file``: the output is a file, not an image.

    A key the sub-object does not declare is a ValueError: declare new stage fields in its model."""
    if "controlnet" in extra:  # the control images an image used (sdbatch.runtime.controlnet), beside its role
        return {**stage_fields({k: v for k, v in extra.items() if k != "controlnet"}, is_file=is_file),
                "controlnet": extra["controlnet"]}
    rest = dict(extra)
    if "preview" in rest:
        return {"role": "preview", "preview": _strict(PreviewInfo, rest.pop("preview"), rest)}
    if "frame" in rest:
        rest["index"] = rest.pop("frame")
        return {"role": "frame", "frame": _strict(FrameInfo, rest)}
    if rest:
        return {"role": "video", "video": _strict(VideoInfo, rest)}
    return {"role": "video" if is_file else "image"}


def _strict(model: type[_Model], data: Any, left: dict[str, Any] | None = None) -> Any:
    unknown = [key for key in (data if isinstance(data, dict) else {}) if key not in model.model_fields]
    unknown += list(left or {})
    if unknown:
        raise ValueError(f"stage extra {unknown[0]!r} is not a field of {model.__name__} (sdbatch.core.record)")
    return model.model_validate(data)
