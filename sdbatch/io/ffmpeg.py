"""The ffmpeg binary bundled with imageio-ffmpeg: running it, and reading what it prints.

Shared by :mod:`sdbatch.io.video` (probing, decoding), :mod:`sdbatch.io.encode` and
:mod:`sdbatch.io.testclips`. ``imageio_ffmpeg`` is imported only when ffmpeg is first needed.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Union

PathLike = Union[str, "os.PathLike[str]"]

# Containers VideoWriter / encode_video can produce (H.264 + AAC), by suffix.
OUTPUT_FORMATS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska"}
# Known NTSC-style rates that ffmpeg prints rounded ("23.98 fps").
_NTSC_RATES = [Fraction(n * 1000, 1001) for n in (24, 30, 48, 60, 120)]
# ffmpeg stderr lines that carry no information about *why* something failed.
_NOISE = (
    "error opening input file",
    "error opening input files",
    "misdetection possible",
    "error opening output file",
    "error opening output files",
    "error parsing options",
    "conversion failed",
    "nothing was written into output file",
)


class VideoError(ValueError):
    """A user-facing, one-line error about a video file (the message names it)."""


@functools.cache
def ffmpeg_exe() -> str:
    import imageio_ffmpeg  # lazy: keeps `import sdbatch.io.video` fast

    return imageio_ffmpeg.get_ffmpeg_exe()


@functools.cache
def passthrough_args() -> tuple[str, ...]:
    """ffmpeg output options that pass frames through 1:1 (no dup/drop).

    ``-fps_mode`` exists since ffmpeg 5.1 and ``-vsync`` was removed in 8.0.
    """
    try:
        out = run([ffmpeg_exe(), "-hide_banner", "-version"], timeout=30).stdout
    except (OSError, subprocess.SubprocessError):  # pragma: no cover
        out = ""
    m = re.search(r"version\s+n?(\d+)\.(\d+)", out)
    if m and (int(m.group(1)), int(m.group(2))) < (5, 1):
        return ("-vsync", "passthrough")  # pragma: no cover - old ffmpeg only
    return ("-fps_mode", "passthrough")


def base_cmd(loglevel: str = "error") -> list[str]:
    return [ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", loglevel]


def run(cmd: list[str], timeout: float | None = None) -> subprocess.CompletedProcess:
    """Run ffmpeg to completion; stdout and stderr come back as text."""
    return subprocess.run(
        cmd,
        check=False,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        errors="replace",
        timeout=timeout,
    )


def detail(stderr: str) -> str:
    """The most informative single line of an ffmpeg error log."""
    lines = []
    for raw in stderr.splitlines():
        line = re.sub(r"^(\[[^\]]*\]\s*)+", "", raw.strip()).strip()
        if line:
            lines.append(line)
    useful = [ln for ln in lines if not any(n in ln.lower() for n in _NOISE)]
    # Prefer something that looks like an error over informational header text.
    errorish = [
        ln
        for ln in useful
        if re.search(r"error|invalid|not found|cannot|could not|failed|unknown|no such", ln, re.IGNORECASE)
    ]
    pick = (errorish or useful or lines or ["unknown error"])[0]
    return pick if len(pick) <= 200 else pick[:197] + "..."


def read_error(exc: BaseException) -> str:
    """One line from an imageio_ffmpeg read error ("<what>\n=== stderr ===\n<log>")."""
    text = str(exc)
    head, sep, log_text = text.partition("=== stderr ===")
    if sep and log_text.strip():
        line = detail(log_text)
        if line != "unknown error":
            return line
    return detail(head)


def check_input(path: PathLike) -> Path:
    p = Path(path)
    if not p.exists():
        raise VideoError(f"{os.fspath(path)}: no such file")
    if p.is_dir():
        raise VideoError(f"{os.fspath(path)}: is a directory, not a video file")
    if p.stat().st_size == 0:
        raise VideoError(f"{os.fspath(path)}: not a readable video (file is empty)")
    return p


@dataclass
class Header:
    """The stream list ffmpeg prints on stderr."""

    video_lines: list[str]  # input video stream lines
    audio_lines: list[str]  # input audio stream lines
    output_video_lines: list[str]  # output video stream lines (post-filter)
    duration: float | None  # container "Duration:"


def parse_header(stderr: str) -> Header:
    video, audio, out_video = [], [], []
    duration = None
    section = None
    for line in stderr.splitlines():
        s = line.strip()
        if s.startswith("Input #"):
            section = "in"
        elif s.startswith("Output #"):
            section = "out"
        elif s.startswith("Stream mapping"):
            section = "map"
        elif s.startswith("Duration:") and section == "in" and duration is None:
            m = re.match(r"Duration:\s*(\d+):(\d+):(\d+(?:\.\d+)?)", s)
            if m:
                h, mi, se = m.groups()
                duration = int(h) * 3600 + int(mi) * 60 + float(se)
        elif re.match(r"Stream #\d+:\d+", s):
            if section == "in":
                if ": Video:" in s and "(attached pic)" not in s:
                    video.append(s)
                elif ": Audio:" in s:
                    audio.append(s)
            elif section == "out" and ": Video:" in s:
                out_video.append(s)
    return Header(video, audio, out_video, duration)


def probe_header(path: PathLike) -> Header:
    """Stream list of any media file, without decoding (fast)."""
    name = os.fspath(path)
    p = check_input(path)
    res = run(base_cmd("info") + ["-i", str(p)])  # exits 1: no output file
    hdr = parse_header(res.stderr)
    if not hdr.video_lines and not hdr.audio_lines:
        raise VideoError(f"{name}: not a readable media file (ffmpeg: {detail(res.stderr)})")
    return hdr


def stream_size(line: str) -> tuple[int, int] | None:
    m = re.search(r" (\d+)x(\d+)(?=[,\s\[]|$)", line)
    return (int(m.group(1)), int(m.group(2))) if m else None


def stream_rate(line: str, unit: str) -> float | None:
    m = re.search(r"(\d+(?:\.\d+)?)(k?) " + unit + r"\b", line)
    if not m:
        return None
    value = float(m.group(1)) * (1000 if m.group(2) else 1)
    return value if value > 0 else None


def snap_fps(fps: float) -> float:
    for rate in _NTSC_RATES:
        if abs(fps - float(rate)) < 0.006:  # ffmpeg prints two decimals
            return float(rate)
    return fps


def fmt_seconds(t: float) -> str:
    return f"{t:.6f}"


def fps_fraction(fps, name: str) -> Fraction:
    try:
        frac = fps if isinstance(fps, Fraction) else Fraction(fps).limit_denominator(1001)
    except (TypeError, ValueError):
        raise VideoError(f"{name}: fps must be a positive number, got {fps!r}") from None
    if frac <= 0:
        raise VideoError(f"{name}: fps must be a positive number, got {fps!r}")
    return frac


def output_format(path: Path, container: str | None = None) -> str:
    """The ffmpeg muxer for ``path``: ``container`` if given, else by suffix (mp4/m4v/mov/mkv)."""
    if container:
        return container
    fmt = OUTPUT_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise VideoError(
            f"{os.fspath(path)}: unsupported output container {path.suffix or '(no suffix)'!r} "
            f"(use one of {', '.join(sorted(OUTPUT_FORMATS))})"
        )
    return fmt


def check_size(size, name: str) -> tuple[int, int]:
    """``(width, height)`` as two positive ints, or a VideoError."""
    if len(size) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size):
        raise VideoError(f"{name}: size must be (width, height) positive ints, got {size!r}")
    return (int(size[0]), int(size[1]))
