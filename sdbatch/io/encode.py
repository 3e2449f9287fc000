"""Streaming H.264 encoding: :class:`VideoWriter`, and PNG frames (+ trimmed audio) -> a video file.

:func:`write_video` writes straight into a temp file the caller then moves into place (the worker does,
with :func:`sdbatch.io.artifacts.move_into_place`: one rename); :func:`encode_video` is the same thing
with that temp file and the rename done for you, through :mod:`sdbatch.io.artifacts`.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from . import ffmpeg
from .artifacts import move_into_place, temp_path_for
from .ffmpeg import PathLike, VideoError

if TYPE_CHECKING:  # pragma: no cover
    from typing_extensions import Self

log = logging.getLogger(__name__)


class VideoWriter:
    """Streaming H.264 (libx264, yuv420p) encoder writing to ``path``.

    ``size`` is ``(width, height)``; both must be even (yuv420p), the caller
    normally guarantees multiples of 8, frames are never rescaled.  ``fps``
    may be a float or Fraction.  Frames are ``HxWx3`` uint8 RGB arrays passed to
    :meth:`write`.  Writes go straight to ``path`` (use :func:`encode_video` for
    atomic output); the container comes from the suffix (mp4/m4v/mov/mkv) or
    ``container`` (an ffmpeg muxer name, needed for suffix-less temp names).

    As a context manager the file is finalised on normal exit; if the block
    raises, the partial file is deleted.
    """

    def __init__(
        self,
        path: PathLike,
        fps: float,
        size: tuple[int, int],
        *,
        crf: int = 18,
        preset: str = "medium",
        container: str | None = None,
    ) -> None:
        import imageio_ffmpeg

        self.path = Path(path)
        self._name = os.fspath(path)
        self.fps = ffmpeg.fps_fraction(fps, self._name)
        self.size = ffmpeg.check_size(size, self._name)
        if size[0] % 2 or size[1] % 2:
            raise VideoError(f"{self._name}: H.264/yuv420p needs even width and height, got {size[0]}x{size[1]}")
        fmt = ffmpeg.output_format(self.path, container)
        out = ["-crf", str(int(crf)), "-preset", preset]
        if fmt in ("mp4", "mov"):
            out += ["-movflags", "+faststart"]
        out += ["-f", fmt]
        self.frames_written = 0
        self._closed = False
        self._gen = imageio_ffmpeg.write_frames(
            str(self.path),
            self.size,
            pix_fmt_in="rgb24",
            pix_fmt_out="yuv420p",
            fps=self.fps,
            quality=None,  # we pass -crf ourselves
            codec="libx264",
            macro_block_size=1,  # never rescale; evenness is checked above
            ffmpeg_log_level="error",
            input_params=["-nostdin", "-hide_banner"],
            output_params=out,
        )
        self._gen.send(None)  # starts ffmpeg

    def write(self, frame) -> None:
        """Append one ``HxWx3`` uint8 RGB frame."""
        import numpy as np

        if self._closed:
            raise VideoError(f"{self._name}: write() on a closed VideoWriter")
        arr = np.asarray(frame)
        w, h = self.size
        if arr.shape != (h, w, 3) or arr.dtype != np.uint8:
            raise VideoError(
                f"{self._name}: frame must be a {h}x{w}x3 uint8 RGB array, "
                f"got shape {arr.shape} dtype {arr.dtype}"
            )
        try:
            self._gen.send(np.ascontiguousarray(arr))
        except (OSError, RuntimeError, StopIteration) as exc:
            self._closed = True
            self._close_quietly()  # reap ffmpeg
            raise VideoError(f"{self._name}: ffmpeg encoder failed ({ffmpeg.detail(str(exc))})") from None
        self.frames_written += 1

    def close(self) -> None:
        """Finish the file (waits for ffmpeg). Raises VideoError if nothing was written."""
        if self._closed:
            return
        self._closed = True
        self._gen.close()
        if self.frames_written == 0:
            self.path.unlink(missing_ok=True)
            raise VideoError(f"{self._name}: no frames were written")
        if not self.path.exists() or self.path.stat().st_size == 0:
            raise VideoError(f"{self._name}: ffmpeg did not produce an output file")

    def abort(self) -> None:
        """Stop encoding and delete the partial output."""
        if not self._closed:
            self._closed = True
            self._close_quietly()
        self.path.unlink(missing_ok=True)

    def _close_quietly(self) -> None:
        with contextlib.suppress(Exception):  # ffmpeg already failed; its exit status adds nothing
            self._gen.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def encode_video(frame_paths: Sequence[PathLike], out_path: PathLike, fps: float, audio_from: PathLike | None = None,
                 audio_start: float = 0.0, audio_duration: float | None = None, *, crf: int = 18) -> None:
    """Encode image files (PNG, read one at a time) into an H.264 video at ``out_path``, atomically.

    The video is written (:func:`write_video`) to a temp file ``.<name>.tmp-<pid>-<random>`` in the
    destination folder, then fsynced and renamed into place (:func:`sdbatch.io.artifacts.move_into_place`);
    on any error the temp files are removed and ``out_path`` is left untouched.
    """
    out = Path(out_path)
    ffmpeg.output_format(out)  # an unsupported suffix fails before anything is written
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_for(out)
    try:
        write_video(frame_paths, tmp, fps, audio_from, audio_start, audio_duration, crf=crf, final=out)
        move_into_place(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


def write_video(frame_paths: Sequence[PathLike], path: PathLike, fps: float, audio_from: PathLike | None = None,
                audio_start: float = 0.0, audio_duration: float | None = None, *, crf: int = 18,
                final: PathLike | None = None) -> None:
    """Encode image files (PNG, read one at a time) into an H.264 video written straight to ``path``.

    ``path`` is normally a temp file that the caller renames into place; ``final`` is the name it will
    get (its suffix picks the container, mp4/m4v/mov/mkv, and error messages name it; default ``path``).
    On any error ``path`` and every intermediate file are removed.

    Audio: if ``audio_from`` is given and has an audio stream, its sound from
    ``audio_start`` seconds on is muxed in (AAC), lasting
    ``min(audio_duration, len(frame_paths) / fps)`` seconds (``audio_duration``
    ``None`` = as long as the video).  The audio is cut with ``-ss``/``-t`` on
    the audio input, so the video is never shortened; if the source's sound
    ends earlier, the audio track is simply shorter.  ``audio_from`` without an
    audio stream is ignored (logged); a missing/unreadable ``audio_from`` or an
    ``audio_start`` past its end raises :class:`VideoError`.
    """
    target = Path(path)
    named = Path(final) if final is not None else target
    name = os.fspath(named)
    fmt = ffmpeg.output_format(named)
    frame_paths = list(frame_paths)
    if not frame_paths:
        raise VideoError(f"{name}: no frames to encode")
    fps_frac = ffmpeg.fps_fraction(fps, name)
    video_seconds = len(frame_paths) / float(fps_frac)
    use_audio = audio_from is not None and _has_audio(audio_from, audio_start, audio_duration, name)

    target.parent.mkdir(parents=True, exist_ok=True)
    video_only = temp_path_for(target) if use_audio else target
    try:
        _write_frames(frame_paths, video_only, fps_frac, crf, fmt)
        if use_audio:
            length = video_seconds if audio_duration is None else min(float(audio_duration), video_seconds)
            _mux_audio(video_only, Path(audio_from), float(audio_start), length, fmt, target, name)
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    finally:
        if use_audio:
            video_only.unlink(missing_ok=True)


def _has_audio(audio_from: PathLike, audio_start, audio_duration, name: str) -> bool:
    """Check the audio arguments; whether ``audio_from`` has sound to mux in."""
    audio_name = os.fspath(audio_from)
    if isinstance(audio_start, bool) or not isinstance(audio_start, (int, float)) or audio_start < 0:
        raise VideoError(f"{audio_name}: audio_start must be >= 0 seconds, got {audio_start!r}")
    if audio_duration is not None and (
        isinstance(audio_duration, bool)
        or not isinstance(audio_duration, (int, float))
        or audio_duration <= 0
    ):
        raise VideoError(f"{audio_name}: audio_duration must be > 0 seconds, got {audio_duration!r}")
    hdr = ffmpeg.probe_header(audio_from)
    if not hdr.audio_lines:
        log.warning("%s: has no audio stream; %s is encoded without sound", audio_name, name)
        return False
    if hdr.duration is not None and audio_start >= hdr.duration:
        raise VideoError(
            f"{audio_name}: audio_start {audio_start:g}s is past the end of the audio ({hdr.duration:g}s)"
        )
    return True


def _write_frames(frame_paths: list[PathLike], path: Path, fps, crf: int, fmt: str) -> None:
    """The frames, read one at a time, as a silent video at ``path`` (removed again if anything fails)."""
    import numpy as np
    from PIL import Image

    writer = None
    try:
        for fp in frame_paths:
            try:
                with Image.open(fp) as im:
                    rgb = np.asarray(im.convert("RGB"))
            except (OSError, ValueError) as exc:
                raise VideoError(f"{os.fspath(fp)}: cannot read frame image ({exc})") from None
            if writer is None:
                h, w = rgb.shape[:2]
                writer = VideoWriter(path, fps, (w, h), crf=crf, container=fmt)
            elif rgb.shape[:2] != (writer.size[1], writer.size[0]):
                raise VideoError(
                    f"{os.fspath(fp)}: frame is {rgb.shape[1]}x{rgb.shape[0]}, "
                    f"expected {writer.size[0]}x{writer.size[1]} like the first frame"
                )
            writer.write(rgb)
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    writer.close()


def _mux_audio(video: Path, audio_from: Path, start: float, length: float, fmt: str, out: Path,
               name: str) -> None:
    """``video``'s picture with ``length`` seconds of ``audio_from``'s sound from ``start`` on, as ``out``."""
    cmd = ffmpeg.base_cmd("error") + [
        "-y",
        "-i",
        str(video),
        "-ss",
        ffmpeg.fmt_seconds(start),
        "-t",
        ffmpeg.fmt_seconds(length),
        "-i",
        str(audio_from),
        "-map",
        "0:v:0",
        "-map",
        "1:a:0",
        "-c:v",
        "copy",
        "-c:a",
        "aac",
        "-b:a",
        "192k",
    ]
    if fmt in ("mp4", "mov"):
        cmd += ["-movflags", "+faststart"]
    cmd += ["-f", fmt, str(out)]
    res = ffmpeg.run(cmd)
    if res.returncode != 0 or not out.exists():
        raise VideoError(
            f"{name}: adding audio from {os.fspath(audio_from)} failed (ffmpeg: {ffmpeg.detail(res.stderr)})"
        )
