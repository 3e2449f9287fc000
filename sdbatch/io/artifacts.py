"""Crash-safe output files and their PNG metadata.

Every output is written to a temp file in its own folder, fsynced and renamed, so a final name never
holds a broken file; leftover temp files (``.<name>.tmp-<pid>-<rand>``) are removed by the next run.
PNGs carry a ``parameters`` text chunk in AUTOMATIC1111's format (its PNG Info reads it) and an
``sdbatch`` chunk with the output's manifest record (less its own sha256) as JSON.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

TEMP_MARK = ".tmp-"

SAMPLER_NAMES = {
    "ddim": "DDIM",
    "euler": "Euler",
    "euler-a": "Euler a",
    "dpmpp-2m": "DPM++ 2M",
    "dpmpp-2m-karras": "DPM++ 2M Karras",
    "dpmpp-sde-karras": "DPM++ SDE Karras",
    "unipc": "UniPC",
    "lms": "LMS",
    "pndm": "PLMS",
    "heun": "Heun",
    "lcm": "LCM",
}
# the model's own scheduler ("default"), by diffusers class name
SAMPLER_BY_CLASS = {
    "DDIMScheduler": "DDIM",
    "EulerDiscreteScheduler": "Euler",
    "EulerAncestralDiscreteScheduler": "Euler a",
    "DPMSolverMultistepScheduler": "DPM++ 2M",
    "DPMSolverSDEScheduler": "DPM++ SDE",
    "UniPCMultistepScheduler": "UniPC",
    "LMSDiscreteScheduler": "LMS",
    "PNDMScheduler": "PLMS",
    "HeunDiscreteScheduler": "Heun",
    "LCMScheduler": "LCM",
}


def temp_path_for(path: Path) -> Path:
    return path.with_name(f".{path.name}{TEMP_MARK}{os.getpid()}-{secrets.token_hex(4)}")


def fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[Any], None]) -> None:
    """Write ``path`` through ``write(fileobj)`` into a temp file, fsync, then rename into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_for(path)
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda fh: fh.write(data))


def move_into_place(tmp: Path, path: Path) -> None:
    """Rename a finished temp file (already in ``path``'s folder) to its final name, durably."""
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def clean_temp_files(out_dir: Path) -> list[Path]:
    """Remove temp files left by a killed run anywhere under ``out_dir``; returns what was removed."""
    removed = []
    if not out_dir.is_dir():
        return removed
    for dirpath, _dirnames, filenames in os.walk(out_dir):
        for name in filenames:
            if name.startswith(".") and TEMP_MARK in name:
                path = Path(dirpath) / name
                try:
                    path.unlink()
                    removed.append(path)
                except OSError:
                    pass
    return removed


def a1111_parameters(record: dict[str, Any]) -> str:
    """The AUTOMATIC1111 ``parameters`` text for an output record.

    Example: ``a wolf\\nNegative prompt: blurry\\nSteps: 25, Sampler: DPM++ 2M Karras, CFG scale: 7,
    Seed: 1000, Size: 512x512, Model hash: 0123456789, Model: sd-turbo, Denoising strength: 0.8``
    """
    params = record.get("params", {})
    frame = record.get("frame") if isinstance(record.get("frame"), dict) else {}
    schedule = frame.get("schedule") if isinstance(frame.get("schedule"), dict) else {}
    lines = [frame.get("prompt") or record.get("prompt", "")]  # a video frame's own prompt and seed
    if record.get("negative_prompt"):
        lines.append(f"Negative prompt: {record['negative_prompt']}")
    scheduler = params.get("scheduler", "default")
    sampler = record.get("sampler") or SAMPLER_NAMES.get(scheduler) or scheduler
    model = record.get("model", {})
    fields = [
        ("Steps", params.get("steps")),
        ("Sampler", sampler),
        ("CFG scale", _num(schedule.get("guidance", params.get("guidance")))),
        ("Seed", frame.get("seed", record.get("seed"))),
        ("Size", f"{params.get('width')}x{params.get('height')}"),
        ("Model hash", (model.get("revision") or "")[:10]),
        ("Model", Path(str(model.get("id", ""))).stem if model.get("id", "").endswith(".safetensors")
         else str(model.get("id", "")).split("/")[-1]),
        ("Denoising strength", _num(schedule.get("strength", params.get("strength")))),
    ]
    lines.append(", ".join(f"{k}: {v}" for k, v in fields if v is not None and v != ""))
    return "\n".join(lines)


def _num(value: Any) -> Any:
    """A number as A1111 writes it (7.0 -> 7); anything else (a schedule's text) is not a number: None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def png_bytes(image: Any, record: dict[str, Any]) -> bytes:
    """Encode a PIL image as PNG with the ``parameters`` and ``sdbatch`` chunks."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("parameters", a1111_parameters(record))
    embedded = {k: v for k, v in record.items() if k != "sha256"}
    info.add_text("sdbatch", json.dumps(embedded, ensure_ascii=False, sort_keys=True))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info, compress_level=4)
    return buffer.getvalue()


def save_png(path: Path, image: Any, record: dict[str, Any]) -> str:
    """Write ``image`` atomically with metadata; return the file's sha256."""
    data = png_bytes(image, record)
    atomic_write_bytes(path, data)
    return hashlib.sha256(data).hexdigest()  # not io.hashing's helper: hashing writes its cache through here


def read_png_text(path: Path) -> dict[str, str]:
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        return dict(getattr(im, "text", {}) or {})


def read_png_record(path: Path) -> dict[str, Any] | None:
    """The ``sdbatch`` record embedded in a PNG, or None."""
    try:
        text = read_png_text(path).get("sdbatch")
        return json.loads(text) if text else None
    except Exception:  # noqa: BLE001 - any unreadable file simply has no record
        return None
