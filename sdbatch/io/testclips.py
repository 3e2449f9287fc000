"""Synthetic video clips for tests and benchmarks (ffmpeg's ``testsrc2`` pattern and ``sine`` tone)."""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

from . import ffmpeg
from .ffmpeg import PathLike, VideoError


def make_test_clip(
    path: PathLike,
    frames: int = 24,
    fps: float = 12,
    size: tuple[int, int] = (64, 48),
    audio: bool = True,
) -> Path:
    """Write a synthetic clip (ffmpeg ``testsrc2`` pattern, 440 Hz ``sine`` audio).

    mp4/mov/mkv: H.264 yuv420p + AAC; webm: VP9 + Opus; gif: no audio (``audio``
    is ignored).  Exactly ``frames`` video frames; audio (when wanted) lasts
    ``frames / fps`` seconds.  Returns ``Path(path)``.
    """
    p = Path(path)
    w, h = size
    suffix = p.suffix.lower()
    rate = str(ffmpeg.fps_fraction(fps, os.fspath(path)))
    seconds = frames / float(Fraction(rate))
    cmd = ffmpeg.base_cmd("error") + ["-y", "-f", "lavfi", "-i", f"testsrc2=size={w}x{h}:rate={rate}"]
    with_audio = audio and suffix != ".gif"
    if with_audio:
        cmd += ["-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=44100:duration={seconds:.6f}"]
    cmd += ["-map", "0:v:0"] + (["-map", "1:a:0"] if with_audio else [])
    cmd += ["-frames:v", str(int(frames))]
    if suffix == ".gif":
        cmd += ["-f", "gif"]
    elif suffix == ".webm":
        cmd += ["-c:v", "libvpx-vp9", "-pix_fmt", "yuv420p", "-deadline", "realtime"]
        cmd += ["-c:a", "libopus"] if with_audio else []
    else:
        if w % 2 or h % 2:
            raise ValueError(f"{os.fspath(path)}: H.264 test clips need even width/height")
        cmd += ["-c:v", "libx264", "-pix_fmt", "yuv420p", "-preset", "fast"]
        cmd += ["-c:a", "aac"] if with_audio else []
    cmd.append(str(p))
    p.parent.mkdir(parents=True, exist_ok=True)
    res = ffmpeg.run(cmd)
    if res.returncode != 0:
        raise VideoError(f"{os.fspath(path)}: could not make test clip (ffmpeg: {ffmpeg.detail(res.stderr)})")
    return p
