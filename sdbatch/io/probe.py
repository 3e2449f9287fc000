"""What a video file holds: exact frame count, fps, size, audio; remembered by content hash.

:func:`probe_video` decodes the whole video track once to count its frames exactly (no pixels leave
ffmpeg, but a long clip still takes a while). :func:`probe_video_cached` keeps the answer in the sdbatch
cache folder under the file's sha256, so planning a recipe again does not decode the clip again.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from . import ffmpeg
from .artifacts import atomic_write_bytes
from .ffmpeg import PathLike, VideoError
from .hashing import cache_dir

log = logging.getLogger(__name__)

# Bump when probe_video's answer for the same bytes could change: older cache entries are then ignored.
PROBE_CACHE_VERSION = 1
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class VideoInfo:
    """What :func:`probe_video` found out about a video file.

    ``width``/``height`` are the size of the decoded frames (after ffmpeg's
    automatic rotation for phone clips). ``frames`` is the exact number of
    decodable video frames. ``fps`` is the frame rate (for variable-rate inputs
    such as GIFs: the mean rate, ``frames / video length``). ``duration`` is the
    length of the video track in seconds, ``frames / fps``.
    """

    path: Path
    width: int
    height: int
    fps: float
    frames: int
    duration: float
    has_audio: bool


def probe_video(path: PathLike) -> VideoInfo:
    """Inspect a video file: size, fps, exact frame count, duration, audio.

    The frame count is exact: ffmpeg decodes the first video stream with the
    same settings :func:`~sdbatch.io.video.iter_frames` uses and counts the
    frames (one ffmpeg run; cost is one decode of the video track, no pixel
    transfer).

    Raises :class:`VideoError` for missing, empty, unreadable or corrupt files,
    files without a video stream and files with zero decodable frames.
    """
    name = os.fspath(path)
    p = ffmpeg.check_input(path)
    cmd = ffmpeg.base_cmd("info") + [
        "-nostats",
        "-progress",
        "pipe:1",
        "-i",
        str(p),
        "-map",
        "0:v:0?",
        *ffmpeg.passthrough_args(),
        "-f",
        "null",
        "-",
    ]
    try:
        res = ffmpeg.run(cmd)
    except OSError as exc:  # pragma: no cover - broken ffmpeg install
        raise VideoError(f"{name}: could not run ffmpeg ({exc})") from None
    hdr = ffmpeg.parse_header(res.stderr)
    if not hdr.video_lines:
        if hdr.audio_lines:
            raise VideoError(f"{name}: not a video file (it contains only audio)")
        raise VideoError(f"{name}: not a readable video (ffmpeg: {ffmpeg.detail(res.stderr)})")
    if res.returncode != 0:
        raise VideoError(f"{name}: video could not be decoded (ffmpeg: {ffmpeg.detail(res.stderr)})")

    frames, out_time = 0, None
    for line in res.stdout.splitlines():
        key, _, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if key == "frame" and value.isdigit():
            frames = int(value)
        elif key == "out_time_us" and value.lstrip("-").isdigit():
            out_time = int(value) / 1e6
    if frames <= 0:
        raise VideoError(f"{name}: video stream has no decodable frames")

    in_line = hdr.video_lines[0]
    size = None
    if hdr.output_video_lines:  # post-autorotate size of what we decode
        size = ffmpeg.stream_size(hdr.output_video_lines[0])
    size = size or ffmpeg.stream_size(in_line)
    if size is None:  # pragma: no cover - never seen
        raise VideoError(f"{name}: could not determine the frame size")

    header_fps = ffmpeg.stream_rate(in_line, "fps") or ffmpeg.stream_rate(in_line, "tbr")
    measured = frames / out_time if out_time and out_time > 0 else None
    if header_fps and (measured is None or abs(header_fps - measured) <= 0.02 * measured):
        fps = header_fps
    elif measured:
        fps = measured  # variable frame rate (e.g. GIF): mean rate
    elif header_fps:  # pragma: no cover
        fps = header_fps
    else:
        raise VideoError(f"{name}: could not determine the frame rate")
    fps = ffmpeg.snap_fps(fps)

    return VideoInfo(
        path=p,
        width=size[0],
        height=size[1],
        fps=fps,
        frames=frames,
        duration=frames / fps,
        has_audio=bool(hdr.audio_lines),
    )


def probe_cache_path(sha256: str) -> Path:
    """Where the probe of content ``sha256`` is kept: ``<cache>/video-probe/<sha256>.json``."""
    return cache_dir() / "video-probe" / f"{sha256}.json"


def probe_video_cached(path: PathLike, sha256: str) -> VideoInfo:
    """:func:`probe_video`, remembered under the file's content hash ``sha256`` (hex, as
    :class:`~sdbatch.io.hashing.HashCache` gives it).

    A hit runs no ffmpeg at all; the answer's ``path`` is ``path``. A missing, unreadable, corrupt or
    older-version entry is ignored and rebuilt (written atomically); an unwritable cache folder only costs
    the next probe. Errors are not remembered: a bad file is probed (and reported) every time.
    """
    key = str(sha256).lower()
    if not _SHA256.fullmatch(key):
        return probe_video(path)
    entry = probe_cache_path(key)
    cached = _read_entry(entry, Path(path))
    if cached is not None:
        return cached
    info = probe_video(path)
    data = {k: v for k, v in asdict(info).items() if k != "path"}
    data["version"] = PROBE_CACHE_VERSION
    try:
        atomic_write_bytes(entry, json.dumps(data, sort_keys=True).encode())
    except OSError as exc:
        log.debug("video probe cache not written (%s): %s", entry, exc)
    return info


# every field of VideoInfo but ``path``, with its JSON type
_TYPES = {"width": int, "height": int, "fps": float, "frames": int, "duration": float, "has_audio": bool}


def _read_entry(entry: Path, path: Path) -> VideoInfo | None:
    try:
        data = json.loads(entry.read_bytes())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("version") != PROBE_CACHE_VERSION:
        return None
    values = {}
    for key, kind in _TYPES.items():
        value = data.get(key)
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if type(value) is not kind or (kind is not bool and value <= 0):
            return None
        values[key] = value
    return VideoInfo(path=path, **values)
