"""Streaming video I/O on top of the ffmpeg binary bundled with imageio-ffmpeg.

Everything here is streaming: frames are decoded / encoded one at a time and
memory use does not grow with clip length.  Heavy imports (numpy,
imageio_ffmpeg, cv2, PIL) happen lazily inside the functions so that
``import sdbatch.io.video`` stays cheap.

Public API
----------
* :class:`VideoError` -- one-line, user-facing error naming the file.
* :class:`VideoInfo` / :func:`probe_video` -- exact frame count, fps, size, audio.
* :func:`select_frames` -- ``range(start_frame, end_frame, every_nth)`` with
  validation; ``end_frame`` is EXCLUSIVE.
* :func:`iter_frames` -- streaming RGB decoder yielding ``(source_index, frame)``.
* :class:`VideoWriter` -- streaming H.264/yuv420p encoder (context manager).
* :func:`encode_video` -- PNG frames (+ optional trimmed audio) -> video file,
  written atomically.
* :func:`make_test_clip` -- synthetic clip for tests.

Frame numbering: frame ``i`` is the ``i``-th frame the decoder produces (0-based)
with ffmpeg's ``-fps_mode passthrough`` (no frames duplicated or dropped to
force a constant rate).  :func:`probe_video` counts frames with exactly the same
ffmpeg settings as :func:`iter_frames` decodes them, so ``info.frames`` is the
number of frames ``iter_frames`` yields.
"""

from __future__ import annotations

import functools
import logging
import operator
import os
import re
import secrets
import subprocess
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence, Union

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

__all__ = [
    "VideoError",
    "VideoInfo",
    "probe_video",
    "select_frames",
    "iter_frames",
    "VideoWriter",
    "encode_video",
    "make_test_clip",
]

log = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

# Containers VideoWriter / encode_video can produce (H.264 + AAC), by suffix.
_OUTPUT_FORMATS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska"}
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


# --------------------------------------------------------------------------
# ffmpeg plumbing


@functools.lru_cache(maxsize=None)
def _ffmpeg_exe() -> str:
    import imageio_ffmpeg  # lazy: keeps `import sdbatch.io.video` fast

    return imageio_ffmpeg.get_ffmpeg_exe()


@functools.lru_cache(maxsize=None)
def _passthrough_args() -> tuple[str, ...]:
    """ffmpeg output options that pass frames through 1:1 (no dup/drop).

    ``-fps_mode`` exists since ffmpeg 5.1 and ``-vsync`` was removed in 8.0.
    """
    try:
        out = subprocess.run(
            [_ffmpeg_exe(), "-hide_banner", "-version"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=30,
        ).stdout
    except (OSError, subprocess.SubprocessError):  # pragma: no cover
        out = ""
    m = re.search(r"version\s+n?(\d+)\.(\d+)", out)
    if m and (int(m.group(1)), int(m.group(2))) < (5, 1):
        return ("-vsync", "passthrough")  # pragma: no cover - old ffmpeg only
    return ("-fps_mode", "passthrough")


def _base_cmd(loglevel: str = "error") -> list[str]:
    return [_ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", loglevel]


def _run(cmd: list[str], timeout: float | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        cmd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        errors="replace",
        timeout=timeout,
    )


def _detail(stderr: str) -> str:
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
        if re.search(r"error|invalid|not found|cannot|could not|failed|unknown|no such", ln, re.I)
    ]
    pick = (errorish or useful or lines or ["unknown error"])[0]
    return pick if len(pick) <= 200 else pick[:197] + "..."


def _read_error(exc: BaseException) -> str:
    """One line from an imageio_ffmpeg read error ("<what>\n=== stderr ===\n<log>")."""
    text = str(exc)
    head, sep, log_text = text.partition("=== stderr ===")
    if sep and log_text.strip():
        detail = _detail(log_text)
        if detail != "unknown error":
            return detail
    return _detail(head)


def _check_input(path: PathLike) -> Path:
    p = Path(path)
    if not p.exists():
        raise VideoError(f"{os.fspath(path)}: no such file")
    if p.is_dir():
        raise VideoError(f"{os.fspath(path)}: is a directory, not a video file")
    if p.stat().st_size == 0:
        raise VideoError(f"{os.fspath(path)}: not a readable video (file is empty)")
    return p


@dataclass
class _Header:
    video_lines: list[str]  # input video stream lines
    audio_lines: list[str]  # input audio stream lines
    output_video_lines: list[str]  # output video stream lines (post-filter)
    duration: float | None  # container "Duration:"


def _parse_header(stderr: str) -> _Header:
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
    return _Header(video, audio, out_video, duration)


def _stream_size(line: str) -> tuple[int, int] | None:
    m = re.search(r" (\d+)x(\d+)(?=[,\s\[]|$)", line)
    return (int(m.group(1)), int(m.group(2))) if m else None


def _stream_rate(line: str, unit: str) -> float | None:
    m = re.search(r"(\d+(?:\.\d+)?)(k?) " + unit + r"\b", line)
    if not m:
        return None
    value = float(m.group(1)) * (1000 if m.group(2) else 1)
    return value if value > 0 else None


def _snap_fps(fps: float) -> float:
    for rate in _NTSC_RATES:
        if abs(fps - float(rate)) < 0.006:  # ffmpeg prints two decimals
            return float(rate)
    return fps


def _fmt_seconds(t: float) -> str:
    return f"{t:.6f}"


# --------------------------------------------------------------------------
# probing


def probe_video(path: PathLike) -> VideoInfo:
    """Inspect a video file: size, fps, exact frame count, duration, audio.

    The frame count is exact: ffmpeg decodes the first video stream with the
    same settings :func:`iter_frames` uses and counts the frames (one ffmpeg
    run; cost is one decode of the video track, no pixel transfer).

    Raises :class:`VideoError` for missing, empty, unreadable or corrupt files,
    files without a video stream and files with zero decodable frames.
    """
    name = os.fspath(path)
    p = _check_input(path)
    cmd = _base_cmd("info") + [
        "-nostats",
        "-progress",
        "pipe:1",
        "-i",
        str(p),
        "-map",
        "0:v:0?",
        *_passthrough_args(),
        "-f",
        "null",
        "-",
    ]
    try:
        res = _run(cmd)
    except OSError as exc:  # pragma: no cover - broken ffmpeg install
        raise VideoError(f"{name}: could not run ffmpeg ({exc})") from None
    hdr = _parse_header(res.stderr)
    if not hdr.video_lines:
        if hdr.audio_lines:
            raise VideoError(f"{name}: not a video file (it contains only audio)")
        raise VideoError(f"{name}: not a readable video (ffmpeg: {_detail(res.stderr)})")
    if res.returncode != 0:
        raise VideoError(f"{name}: video could not be decoded (ffmpeg: {_detail(res.stderr)})")

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
        size = _stream_size(hdr.output_video_lines[0])
    size = size or _stream_size(in_line)
    if size is None:  # pragma: no cover - never seen
        raise VideoError(f"{name}: could not determine the frame size")

    header_fps = _stream_rate(in_line, "fps") or _stream_rate(in_line, "tbr")
    measured = frames / out_time if out_time and out_time > 0 else None
    if header_fps and (measured is None or abs(header_fps - measured) <= 0.02 * measured):
        fps = header_fps
    elif measured:
        fps = measured  # variable frame rate (e.g. GIF): mean rate
    elif header_fps:  # pragma: no cover
        fps = header_fps
    else:
        raise VideoError(f"{name}: could not determine the frame rate")
    fps = _snap_fps(fps)

    return VideoInfo(
        path=p,
        width=size[0],
        height=size[1],
        fps=fps,
        frames=frames,
        duration=frames / fps,
        has_audio=bool(hdr.audio_lines),
    )


def _probe_header(path: PathLike) -> _Header:
    """Stream list of any media file, without decoding (fast)."""
    name = os.fspath(path)
    p = _check_input(path)
    res = _run(_base_cmd("info") + ["-i", str(p)])  # exits 1: no output file
    hdr = _parse_header(res.stderr)
    if not hdr.video_lines and not hdr.audio_lines:
        raise VideoError(f"{name}: not a readable media file (ffmpeg: {_detail(res.stderr)})")
    return hdr


# --------------------------------------------------------------------------
# frame selection / decoding


def _as_int(value, what: str, name: str) -> int:
    if not isinstance(value, bool):
        try:
            return operator.index(value)  # int, numpy integers
        except TypeError:
            pass
    raise VideoError(f"{name}: {what} must be an integer, got {value!r}")


def select_frames(
    info: VideoInfo,
    start_frame: int = 0,
    end_frame: int | None = None,
    every_nth: int = 1,
) -> list[int]:
    """Source frame indices kept from ``info``: ``range(start_frame, end_frame, every_nth)``.

    * ``start_frame`` -- first frame kept (0-based, inclusive).
    * ``end_frame`` -- EXCLUSIVE end, like a Python range; ``None`` means the
      end of the clip (``info.frames``).  ``select_frames(info, 0, 10)`` keeps
      frames 0..9.
    * ``every_nth`` -- keep every n-th frame counting from ``start_frame``.

    Raises :class:`VideoError` ("... range selects no frames") when the range
    is empty or reaches outside ``[0, info.frames]``; negative values are
    rejected rather than counted from the end.
    """
    name = os.fspath(info.path)
    n = info.frames
    start = _as_int(start_frame, "start_frame", name)
    end = n if end_frame is None else _as_int(end_frame, "end_frame", name)
    step = _as_int(every_nth, "every_nth", name)
    where = f"start_frame={start}, end_frame={end_frame}, every_nth={step} on a {n}-frame clip"
    if step < 1:
        raise VideoError(f"{name}: every_nth must be >= 1 ({where})")
    if start < 0 or end < 0:
        raise VideoError(f"{name}: negative frame numbers are not allowed ({where})")
    if start >= n:
        raise VideoError(f"{name}: start_frame is past the last frame ({where}): range selects no frames")
    if end > n:
        raise VideoError(
            f"{name}: end_frame is past the end of the clip (end_frame is exclusive, "
            f"at most {n}; {where}): range selects no frames"
        )
    kept = list(range(start, end, step))
    if not kept:
        raise VideoError(f"{name}: start_frame must be < end_frame ({where}): range selects no frames")
    return kept


def _resize(frame, size: tuple[int, int]):
    w, h = size
    src_h, src_w = frame.shape[:2]
    try:
        import cv2
    except ImportError:  # pragma: no cover - cv2 is a project dependency
        import numpy as np
        from PIL import Image

        return np.asarray(Image.fromarray(frame).resize((w, h), Image.LANCZOS))
    shrink = w <= src_w and h <= src_h
    return cv2.resize(frame, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LANCZOS4)


def iter_frames(
    path: PathLike,
    indices: Sequence[int] | None = None,
    size: tuple[int, int] | None = None,
) -> Iterator[tuple[int, "np.ndarray"]]:
    """Stream ``(source_index, frame)`` pairs from a video, one frame in memory at a time.

    * ``indices`` -- source frame indices to yield (e.g. from
      :func:`select_frames`); ``None`` yields every frame.  Frames are yielded
      in increasing source order (duplicates are collapsed).  Seeking is exact:
      ffmpeg decodes from the start and drops unwanted frames itself (``select``
      filter), so no frame is ever off by one; decoding stops right after the
      last wanted frame.
    * ``size`` -- optional ``(width, height)``; frames are resized with
      cv2 INTER_AREA (shrinking) / LANCZOS4 (enlarging).

    Frames are writable ``HxWx3`` ``uint8`` RGB arrays.  Closing the iterator
    early (``break``, ``.close()``, garbage collection) stops ffmpeg.  Raises
    :class:`VideoError` if the file is unreadable or an index is past the end
    of the video.  Arguments are validated immediately, at call time.
    """
    name = os.fspath(path)
    p = _check_input(path)
    wanted: list[int] | None = None
    if indices is not None:
        wanted = sorted({_as_int(i, "frame index", name) for i in indices})
        if wanted and wanted[0] < 0:
            raise VideoError(f"{name}: negative frame index {wanted[0]}")
    if size is not None:
        if (
            len(size) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)
        ):
            raise VideoError(f"{name}: size must be (width, height) positive ints, got {size!r}")
        size = (int(size[0]), int(size[1]))
    return _iter_frames(name, p, wanted, size)


class _DropSizeWarning(logging.Filter):
    # imageio_ffmpeg warns whenever decoded size != stored size, which is the
    # normal case for rotated phone clips (ffmpeg auto-rotates); we report the
    # decoded size in VideoInfo, so the warning is noise.
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("The frame size for reading")


_SIZE_FILTER = _DropSizeWarning()


def _iter_frames(name: str, p: Path, wanted: list[int] | None, size) -> Iterator:
    if wanted is not None and not wanted:
        return
    import numpy as np
    import imageio_ffmpeg

    ff_log = logging.getLogger("imageio_ffmpeg")
    if _SIZE_FILTER not in ff_log.filters:
        ff_log.addFilter(_SIZE_FILTER)

    output_params = list(_passthrough_args())
    # Source index of the k-th frame ffmpeg gives us.
    if wanted is None:
        index_of = lambda k: k  # noqa: E731
    else:
        first, last = wanted[0], wanted[-1]
        steps = {b - a for a, b in zip(wanted, wanted[1:])}
        if len(steps) <= 1:  # arithmetic progression: let ffmpeg drop the rest
            step = steps.pop() if steps else 1
            expr = f"between(n,{first},{last})*not(mod(n-{first},{step}))"
            index_of = lambda k: first + k * step  # noqa: E731
            n_out = len(wanted)
        else:  # arbitrary list: ffmpeg keeps [first, last], we drop the rest
            expr = f"between(n,{first},{last})"
            index_of = lambda k: first + k  # noqa: E731
            n_out = last - first + 1
        # -frames:v makes ffmpeg exit by itself after the last wanted frame.
        output_params += ["-vf", f"select='{expr}'", "-frames:v", str(n_out)]
    wanted_set = None if wanted is None else set(wanted)

    gen = imageio_ffmpeg.read_frames(
        str(p),
        pix_fmt="rgb24",
        input_params=["-nostdin", "-hide_banner", "-nostats"],
        output_params=output_params,
    )
    k = 0
    try:
        try:
            meta = next(gen)
        except (IOError, RuntimeError, StopIteration, IndexError, AttributeError) as exc:
            raise VideoError(f"{name}: not a readable video (ffmpeg: {_read_error(exc)})") from None
        w, h = meta["size"]
        while True:
            try:
                buf = next(gen)
            except StopIteration:
                break
            except (IOError, RuntimeError) as exc:
                raise VideoError(
                    f"{name}: decoding failed at frame {index_of(k)} (ffmpeg: {_read_error(exc)})"
                ) from None
            idx = index_of(k)
            k += 1
            if wanted_set is not None and idx not in wanted_set:
                continue
            frame = np.frombuffer(buf, dtype=np.uint8).reshape(h, w, 3)
            del buf
            if size is not None and size != (w, h):
                frame = _resize(frame, size)
            else:
                frame = frame.copy()  # writable, owns its memory
            yield idx, frame
            if wanted is not None and idx == wanted[-1]:
                return
        if wanted is not None:
            got_up_to = index_of(k - 1) if k else -1
            missing = [i for i in wanted if i > got_up_to]
            if missing:
                raise VideoError(
                    f"{name}: frame {missing[0]} requested but the video has no such frame "
                    f"(decoding ended after frame {got_up_to})"
                )
    finally:
        gen.close()  # terminates ffmpeg (closes its pipes, kills it if needed)


# --------------------------------------------------------------------------
# encoding


def _output_format(path: Path, container: str | None) -> str:
    if container:
        return container
    fmt = _OUTPUT_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise VideoError(
            f"{os.fspath(path)}: unsupported output container {path.suffix or '(no suffix)'!r} "
            f"(use one of {', '.join(sorted(_OUTPUT_FORMATS))})"
        )
    return fmt


def _fps_fraction(fps, name: str) -> Fraction:
    try:
        frac = fps if isinstance(fps, Fraction) else Fraction(fps).limit_denominator(1001)
    except (TypeError, ValueError):
        raise VideoError(f"{name}: fps must be a positive number, got {fps!r}") from None
    if frac <= 0:
        raise VideoError(f"{name}: fps must be a positive number, got {fps!r}")
    return frac


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
        self.fps = _fps_fraction(fps, self._name)
        if (
            len(size) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)
        ):
            raise VideoError(f"{self._name}: size must be (width, height) positive ints, got {size!r}")
        if size[0] % 2 or size[1] % 2:
            raise VideoError(f"{self._name}: H.264/yuv420p needs even width and height, got {size[0]}x{size[1]}")
        self.size = (int(size[0]), int(size[1]))
        fmt = _output_format(self.path, container)
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
        except (IOError, RuntimeError, StopIteration) as exc:
            self._closed = True
            try:
                self._gen.close()  # reap ffmpeg
            except Exception:  # pragma: no cover
                pass
            raise VideoError(f"{self._name}: ffmpeg encoder failed ({_detail(str(exc))})") from None
        self.frames_written += 1

    def close(self) -> None:
        """Finish the file (waits for ffmpeg). Raises VideoError if nothing was written."""
        if self._closed:
            return
        self._closed = True
        self._gen.close()
        if self.frames_written == 0:
            self._unlink()
            raise VideoError(f"{self._name}: no frames were written")
        if not self.path.exists() or self.path.stat().st_size == 0:
            raise VideoError(f"{self._name}: ffmpeg did not produce an output file")

    def abort(self) -> None:
        """Stop encoding and delete the partial output."""
        if not self._closed:
            self._closed = True
            try:
                self._gen.close()
            except Exception:  # pragma: no cover
                pass
        self._unlink()

    def _unlink(self) -> None:
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _temp_path(final: Path) -> Path:
    return final.with_name(f".{final.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def encode_video(
    frame_paths: Sequence[PathLike],
    out_path: PathLike,
    fps: float,
    audio_from: PathLike | None = None,
    audio_start: float = 0.0,
    audio_duration: float | None = None,
    *,
    crf: int = 18,
) -> None:
    """Encode image files (PNG, read one at a time) into an H.264 video at ``out_path``.

    The video is written to a temp file ``.<name>.tmp-<pid>-<random>`` in the
    destination folder, fsynced and atomically ``os.replace``-d into place; on
    any error the temp files are removed and ``out_path`` is left untouched.

    Audio: if ``audio_from`` is given and has an audio stream, its sound from
    ``audio_start`` seconds on is muxed in (AAC), lasting
    ``min(audio_duration, len(frame_paths) / fps)`` seconds (``audio_duration``
    ``None`` = as long as the video).  The audio is cut with ``-ss``/``-t`` on
    the audio input, so the video is never shortened; if the source's sound
    ends earlier, the audio track is simply shorter.  ``audio_from`` without an
    audio stream is ignored (logged); a missing/unreadable ``audio_from`` or an
    ``audio_start`` past its end raises :class:`VideoError`.
    """
    out = Path(out_path)
    name = os.fspath(out_path)
    fmt = _output_format(out, None)
    frame_paths = list(frame_paths)
    if not frame_paths:
        raise VideoError(f"{name}: no frames to encode")
    fps_frac = _fps_fraction(fps, name)
    video_seconds = len(frame_paths) / float(fps_frac)

    use_audio = False
    if audio_from is not None:
        audio_name = os.fspath(audio_from)
        if isinstance(audio_start, bool) or not isinstance(audio_start, (int, float)) or audio_start < 0:
            raise VideoError(f"{audio_name}: audio_start must be >= 0 seconds, got {audio_start!r}")
        if audio_duration is not None and (
            isinstance(audio_duration, bool)
            or not isinstance(audio_duration, (int, float))
            or audio_duration <= 0
        ):
            raise VideoError(f"{audio_name}: audio_duration must be > 0 seconds, got {audio_duration!r}")
        hdr = _probe_header(audio_from)
        if not hdr.audio_lines:
            log.warning("%s: has no audio stream; %s is encoded without sound", audio_name, name)
        else:
            if hdr.duration is not None and audio_start >= hdr.duration:
                raise VideoError(
                    f"{audio_name}: audio_start {audio_start:g}s is past the end of the audio "
                    f"({hdr.duration:g}s)"
                )
            use_audio = True

    from PIL import Image
    import numpy as np

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_video = _temp_path(out)
    tmp_mux = _temp_path(out)
    try:
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
                    writer = VideoWriter(tmp_video, fps_frac, (w, h), crf=crf, container=fmt)
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

        final_tmp = tmp_video
        if use_audio:
            length = video_seconds if audio_duration is None else min(float(audio_duration), video_seconds)
            cmd = _base_cmd("error") + [
                "-y",
                "-i",
                str(tmp_video),
                "-ss",
                _fmt_seconds(float(audio_start)),
                "-t",
                _fmt_seconds(length),
                "-i",
                str(Path(audio_from)),
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
            cmd += ["-f", fmt, str(tmp_mux)]
            res = _run(cmd)
            if res.returncode != 0 or not tmp_mux.exists():
                raise VideoError(
                    f"{name}: adding audio from {os.fspath(audio_from)} failed (ffmpeg: {_detail(res.stderr)})"
                )
            tmp_video.unlink()
            final_tmp = tmp_mux

        _fsync_file(final_tmp)
        os.replace(final_tmp, out)
        _fsync_dir(out.parent)
    finally:
        for t in (tmp_video, tmp_mux):
            try:
                t.unlink()
            except FileNotFoundError:
                pass


# --------------------------------------------------------------------------
# test helper


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
    rate = str(_fps_fraction(fps, os.fspath(path)))
    seconds = frames / float(Fraction(rate))
    cmd = _base_cmd("error") + ["-y", "-f", "lavfi", "-i", f"testsrc2=size={w}x{h}:rate={rate}"]
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
    res = _run(cmd)
    if res.returncode != 0:
        raise VideoError(f"{os.fspath(path)}: could not make test clip (ffmpeg: {_detail(res.stderr)})")
    return p
