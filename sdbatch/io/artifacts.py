"""Crash-safe output files and their PNG metadata.

Every output is written to a temp file in its own folder, fsynced and renamed, so a final name never
holds a broken file; leftover temp files (``.<name>.tmp-<pid>-<rand>``) are removed by the next run.
PNGs carry a ``parameters`` text chunk in AUTOMATIC1111's format (its PNG Info reads it) and an
``sdbatch`` chunk with the output's manifest record (less its own sha256, size and mtime) as JSON.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import secrets
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..core.record import FILE_FIELDS

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
    "FlowMatchEulerDiscreteScheduler": "Euler",  # SD3 / Flux.1: Forge writes "Euler, Schedule type: Simple"
}


def default_sampler_name(class_name: str, config: Any) -> str:
    """A1111's sampler name for a model's own scheduler: its class, and the noise schedule and algorithm its
    config selects (an SD 1.5 folder with ``DPMSolverMultistepScheduler`` and ``use_karras_sigmas: true`` is
    ``DPM++ 2M Karras``, ``algorithm_type: sde-dpmsolver++`` is ``DPM++ 2M SDE``), so ``Schedule type`` is right."""
    name = SAMPLER_BY_CLASS.get(class_name, class_name)
    get = config.get if hasattr(config, "get") else (lambda key, default=None: getattr(config, key, default))
    if class_name == "DPMSolverMultistepScheduler" and str(get("algorithm_type", "")).startswith("sde-"):
        name = "DPM++ 2M SDE"
    if class_name.startswith("FlowMatch"):
        return f"{name} Simple"
    if name not in _SCHEDULED_SAMPLERS:
        return name
    for key, label in (("use_karras_sigmas", "Karras"), ("use_exponential_sigmas", "Exponential")):
        if get(key, False) is True:
            return f"{name} {label}"
    return name


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
    """The AUTOMATIC1111 ``parameters`` text for an output record, as A1111 1.9+ writes it (its PNG Info,
    sd-parsers and Civitai read it back field by field).

    Example: ``a wolf\\nNegative prompt: blurry\\nSteps: 25, Sampler: DPM++ 2M, Schedule type: Karras,
    CFG scale: 7, Seed: 1000, Size: 512x512, Model hash: 0123456789, Model: sd-turbo, Denoising strength: 0.8``

    A video frame writes its own values: its prompt and seed, an animate frame's schedule values (never the
    schedule's text), an interpolate frame between two seeds A1111's noise slerp (``Seed: <segment start>,
    Variation seed: <segment end>, Variation seed strength: <t>``). Values holding ``,``, ``:``, ``"`` or a
    newline are quoted as A1111 quotes them (JSON), so they read back whole.
    """
    from ..config.control import controlnet_units
    from ..config.ipadapter import ip_adapter_units
    from ..config.refiner import refiner_fields

    params = record.get("params") if isinstance(record.get("params"), dict) else {}
    frame = record.get("frame") if isinstance(record.get("frame"), dict) else {}
    schedule = frame.get("schedule") if isinstance(frame.get("schedule"), dict) else {}
    lines = [frame.get("prompt") or record.get("prompt", "")]  # a video frame's own prompt and seed
    if record.get("negative_prompt"):
        lines.append(f"Negative prompt: {record['negative_prompt']}")
    scheduler = params.get("scheduler", "default")
    sampler, schedule_type = a1111_sampler(record.get("sampler") or SAMPLER_NAMES.get(scheduler) or scheduler)
    model = record.get("model") if isinstance(record.get("model"), dict) else {}
    model_id = str(model.get("id") or "")
    seed = frame.get("seed") if frame.get("seed") is not None else record.get("seed")
    hires = params.get("hires") if isinstance(params.get("hires"), dict) else {}
    variation_seed = frame.get("variation_seed")
    fields = [
        ("Steps", params.get("steps")),
        ("Sampler", sampler),
        ("Schedule type", schedule_type),
        *_guidance_fields(params, schedule),  # CFG scale (Flux.1: its true_cfg, then Distilled CFG Scale)
        ("Seed", seed),
        ("Size", f"{params.get('width')}x{params.get('height')}"),
        ("Model hash", str(model.get("revision") or "")[:10]),
        ("Model", Path(model_id).stem if model_id.endswith(".safetensors") else model_id.split("/")[-1]),
        ("Variation seed", variation_seed),
        ("Variation seed strength", _strength(frame.get("variation_strength")) if variation_seed is not None
         else None),
        ("Denoising strength", _num(schedule.get("strength", params.get("strength", hires.get("strength"))))),
        *_hires_fields(hires),  # A1111's hires fix (sdbatch.stages.hires); Size is the first pass's
        *refiner_fields(params),  # A1111's "Refiner: <name> [<hash>], Refiner switch at: 0.8"
        *(postprocess_fields(params) if record.get("type") == "upscale" else ()),  # A1111's extras (upscale stage)
        ("Clip skip", params.get("clip_skip")),  # A1111 writes it only when > 1 (the params omit 1)
        ("TI hashes", _ti_hashes(params.get("embeddings"), lines[0], record.get("negative_prompt") or "")),
        *controlnet_units(params),  # A1111 sd-webui-controlnet's "ControlNet 0: ..." (sdbatch.config.control)
        *ip_adapter_units(params, len(params.get("controlnet") or ())),  # ControlNet <n>: after the ControlNets
    ]
    if record.get("type") == "upscale" and (params.get("upscaler") or {}).get("name") != "sd-x4":  # no diffusion
        fields = [(k, v) for k, v in fields if k == "Size" or k.startswith("Postprocess")]
    lines.append(", ".join(f"{k}: {a1111_quote(v)}" for k, v in fields if v is not None and v != ""))
    return "\n".join(lines)


def _guidance_fields(params: dict[str, Any], schedule: dict[str, Any]) -> list[tuple[str, Any]]:
    """``CFG scale``; a Flux.1 job (its params hold ``true_cfg``) as Forge writes it: ``CFG scale`` is the real
    CFG (1 = off), ``Distilled CFG Scale`` diffusers' ``guidance_scale``."""
    guidance = _num(schedule.get("guidance", params.get("guidance")))
    if params.get("true_cfg") is None:
        return [("CFG scale", guidance)]
    return [("CFG scale", _num(params["true_cfg"])), ("Distilled CFG Scale", guidance)]


def _hires_fields(hires: dict[str, Any]) -> list[tuple[str, Any]]:
    """A1111's ``Hires upscale: 2`` (or ``Hires resize: 1024x0``), ``Hires steps``, ``Hires upscaler``
    (:func:`upscaler_name`)."""
    if not hires:
        return []
    up = hires.get("upscaler") if isinstance(hires.get("upscaler"), dict) else {}
    resize = f"{hires.get('width') or 0}x{hires.get('height') or 0}" if hires.get("width") or hires.get("height") else None
    return [("Hires upscale", None if resize else _num(hires.get("scale"))), ("Hires resize", resize),
            ("Hires steps", hires.get("steps")),
            ("Hires upscaler", upscaler_name(up) if up else None)]


def upscaler_name(upscaler: dict[str, Any]) -> str:
    """A1111's name of an upscaler identity (sdbatch.config.upscaler): Lanczos, Latent, SD x4, a file's stem."""
    if upscaler.get("name") == "model":
        return Path(str(upscaler.get("file", "model"))).stem
    return {"lanczos": "Lanczos", "latent": "Latent", "sd-x4": "SD x4"}.get(str(upscaler.get("name")), "?")


def postprocess_fields(params: dict[str, Any]) -> list[tuple[str, Any]]:
    """An upscale's A1111 extras fields: ``Postprocess upscale by: 4`` (or ``... to: WxH``), ``... upscaler``."""
    upscaler = params.get("upscaler") if isinstance(params.get("upscaler"), dict) else None
    scale = params.get("scale")
    return [("Postprocess upscale by", _num(scale) if scale is not None else None),
            ("Postprocess upscale to", f"{params.get('width')}x{params.get('height')}" if scale is None else None),
            ("Postprocess upscaler", upscaler_name(upscaler) if upscaler else None)]


def _ti_hashes(embeddings: Any, *texts: str) -> str | None:
    """A1111's ``TI hashes``: each embedding a prompt names, ``token: <first 12 of its sha256>``."""
    if not isinstance(embeddings, list):
        return None
    words = set(re.findall(r"[^\s()\[\]\\:,]+", " ".join(texts)))
    named = [f"{e['token']}: {str(e.get('sha256', ''))[:12]}" for e in embeddings
             if isinstance(e, dict) and e.get("token") in words]
    return ", ".join(named) or None


# A1111's k-diffusion samplers, whose noise schedule its "Schedule type" field names (A1111 1.9+,
# modules/sd_samplers_kdiffusion.py); its other samplers (DDIM, PLMS, UniPC) have none.
_SCHEDULED_SAMPLERS = {"Euler a", "Euler", "LMS", "Heun", "DPM2", "DPM2 a", "DPM++ 2S a", "DPM++ 2M",
                       "DPM++ SDE", "DPM++ 2M SDE", "DPM++ 3M SDE", "LCM"}
# schedule suffixes of A1111's sampler names before 1.9 ("DPM++ 2M Karras"), by the label 1.9+ writes
# (modules/sd_schedulers.py)
_SCHEDULE_SUFFIXES = {"Karras": "Karras", "Exponential": "Exponential", "Polyexponential": "Polyexponential",
                      "SGM Uniform": "SGM Uniform", "Simple": "Simple"}


def a1111_sampler(name: Any) -> tuple[Any, str | None]:
    """(Sampler, Schedule type) as A1111 1.9+ writes them: ``DPM++ 2M Karras`` -> (``DPM++ 2M``, ``Karras``);
    a k-diffusion sampler without a schedule suffix samples diffusers' uniform timesteps: ``Uniform`` (A1111
    would read "Automatic", the sampler's own default: Karras for DPM++ 2M); others: no schedule type."""
    if not isinstance(name, str):
        return name, None
    for suffix, label in _SCHEDULE_SUFFIXES.items():
        if name.endswith(" " + suffix) and name[: -len(suffix) - 1] in _SCHEDULED_SAMPLERS:
            return name[: -len(suffix) - 1], label
    return name, ("Uniform" if name in _SCHEDULED_SAMPLERS else None)


def a1111_quote(value: Any) -> Any:
    """A value as A1111's infotext writer quotes it (``modules/infotext_utils.py`` ``quote``): JSON when it
    holds ``,``, ``:``, ``"`` or a newline (A1111 itself does not quote a lone ``"``; a value that starts and
    ends with one would be unquoted on reading), else as it is."""
    text = str(value)
    if not any(ch in text for ch in ',:"\n'):
        return value
    return json.dumps(text, ensure_ascii=False)


def _num(value: Any) -> Any:
    """A number as A1111 writes it (7.0 -> 7, 0.5250000000000001 -> 0.525); anything else (a schedule's
    text) is not a number: None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            return None
        value = float(f"{value:.6g}")
        if value.is_integer():
            return int(value)
    return value


def _strength(value: Any) -> Any:
    """A variation seed strength: a number to 4 decimals."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return _num(round(float(value), 4))


def png_bytes(image: Any, record: dict[str, Any]) -> bytes:
    """Encode a PIL image as PNG with the ``parameters`` and ``sdbatch`` chunks."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    source = getattr(image, "info", {}).get("parameters") if record.get("type") == "upscale" else None
    info.add_text("parameters", source or a1111_parameters(record))  # an upscale keeps its input's, as A1111's extras
    if source:  # A1111's extras tab keeps the input's text and writes its own fields into this chunk
        fields = postprocess_fields(record.get("params") if isinstance(record.get("params"), dict) else {})
        info.add_text("postprocessing", ", ".join(f"{k}: {a1111_quote(v)}" for k, v in fields if v is not None))
    embedded = {k: v for k, v in record.items() if k not in FILE_FIELDS}  # facts of the file it is written into
    info.add_text("sdbatch", json.dumps(embedded, ensure_ascii=False, sort_keys=True))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info, compress_level=4)
    return buffer.getvalue()


def save_png(path: Path, image: Any, record: dict[str, Any]) -> str:
    """Write ``image`` atomically with metadata; return the file's sha256."""
    data = png_bytes(image, record)
    atomic_write_bytes(path, data)
    return hashlib.sha256(data).hexdigest()  # not io.hashing's helper: hashing writes its cache through here


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: bytes of one metadata chunk, compressed or inflated: a larger one is refused before it is read
MAX_PNG_TEXT = 1 << 20
TEXT_CHUNKS = (b"tEXt", b"zTXt", b"iTXt")


class PngTextError(ValueError):
    """A metadata chunk that cannot be trusted to read: ``key`` names it (None: the file itself)."""

    def __init__(self, key: str | None, message: str):
        super().__init__(message)
        self.key = key


def read_png_text(path: Path, keys: tuple[str, ...] = ("sdbatch", "parameters"),
                  limit: int = MAX_PNG_TEXT) -> dict[str, str]:
    """The text chunks ``keys`` of a PNG (a file from anyone), read chunk by chunk without PIL: PIL's text limits
    only guard inflating, and with ``ImageFile.LOAD_TRUNCATED_IMAGES`` a chunk over them is silently dropped.
    Each chunk's length is checked before it is read, a compressed one inflates to at most ``limit`` bytes,
    its CRC is checked, and a key given twice is refused. Raises :class:`PngTextError`, or OSError."""
    found: dict[str, str] = {}
    with open(path, "rb") as fh:
        if fh.read(8) != PNG_SIGNATURE:
            raise PngTextError(None, "not a PNG file")
        while len(head := fh.read(8)) == 8:
            length, kind = struct.unpack(">I4s", head)
            if kind == b"IEND":
                break
            start = fh.read(min(length, 80)) if kind in TEXT_CHUNKS else b""  # a keyword is 1-79 bytes + NUL
            key = start.split(b"\0", 1)[0].decode("latin-1")
            if b"\0" not in start or key not in keys:
                fh.seek(length - len(start) + 4, os.SEEK_CUR)
                continue
            if length > limit:
                raise PngTextError(key, f"its chunk is {length:,} bytes, over the {limit:,}-byte limit (not read)")
            data = start + fh.read(length - len(start))
            crc = fh.read(4)
            if len(data) < length or len(crc) < 4 or struct.unpack(">I", crc)[0] != zlib.crc32(kind + data):
                raise PngTextError(key, "its chunk is truncated or corrupt (CRC mismatch)")
            if key in found:
                raise PngTextError(key, "the PNG has more than one chunk of this name")
            found[key] = _chunk_text(kind, data[len(key) + 1:], key, limit)
    return found


def _chunk_text(kind: bytes, body: bytes, key: str, limit: int) -> str:
    """The text of a tEXt / zTXt / iTXt chunk's ``body`` (what follows its keyword and NUL)."""
    try:
        if kind == b"tEXt":
            return body.decode("latin-1")
        if kind == b"zTXt":  # a compression method byte (0: zlib), then the text
            return _inflate(body[1:], key, limit).decode("latin-1")
        compressed = body[0]  # iTXt: flag, method, language NUL, translated keyword NUL, UTF-8 text
        text = body[2:].split(b"\0", 2)[2]
        return (_inflate(text, key, limit) if compressed else text).decode("utf-8")
    except PngTextError:
        raise
    except (IndexError, ValueError, zlib.error) as exc:  # UnicodeDecodeError is a ValueError
        raise PngTextError(key, f"its chunk is malformed ({exc})") from None


def _inflate(data: bytes, key: str, limit: int) -> bytes:
    out = zlib.decompressobj().decompress(data, limit + 1)
    if len(out) > limit:
        raise PngTextError(key, f"its text inflates to over the {limit:,}-byte limit")
    return out


def read_png_record(path: Path) -> dict[str, Any] | None:
    """The ``sdbatch`` record embedded in a PNG, or None (no chunk, or one that does not read as a JSON object:
    :mod:`sdbatch.reports.untrusted` reads it strictly, naming what is wrong)."""
    try:
        text = read_png_text(path, ("sdbatch",)).get("sdbatch")
        data = json.loads(text) if text else None
    except (OSError, ValueError, RecursionError):  # any unreadable file simply has no record
        return None
    return data if isinstance(data, dict) else None
