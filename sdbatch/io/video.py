"""Streaming video I/O on top of the ffmpeg binary bundled with imageio-ffmpeg.

Everything here is streaming: frames are decoded / encoded one at a time and
memory use does not grow with clip length.  Heavy imports (numpy,
imageio_ffmpeg, cv2, PIL) happen lazily inside the functions so that
``import sdbatch.io.video`` stays cheap.

Public API (this module is the one to import; the pieces live beside it)
------------------------------------------------------------------------
* :class:`VideoError` -- one-line, user-facing error naming the file (:mod:`.ffmpeg`).
* :class:`VideoInfo` / :func:`probe_video` -- exact frame count, fps, size, audio;
  :func:`probe_video_cached` -- the same, remembered by content hash (:mod:`.probe`).
* :func:`select_frames` -- ``range(start_frame, end_frame, every_nth)`` with
  validation; ``end_frame`` is EXCLUSIVE.
* :func:`iter_frames` -- streaming RGB decoder yielding ``(source_index, frame)``.
* :class:`VideoWriter` -- streaming H.264/yuv420p encoder (context manager).
* :func:`encode_video` -- PNG frames (+ optional trimmed audio) -> video file,
  written atomically; :func:`write_video` -- the same into a temp file the
  caller moves into place (:mod:`.encode`).
* :func:`make_test_clip` -- synthetic clip for tests (:mod:`.testclips`).

Frame numbering: frame ``i`` is the ``i``-th frame the decoder produces (0-based)
with ffmpeg's ``-fps_mode passthrough`` (no frames duplicated or dropped to
force a constant rate).  :func:`probe_video` counts frames with exactly the same
ffmpeg settings as :func:`iter_frames` decodes them, so ``info.frames`` is the
number of frames ``iter_frames`` yields.
"""

from __future__ import annotations

import itertools
import logging
import operator
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from . import ffmpeg
from .encode import VideoWriter, encode_video, write_video
from .ffmpeg import PathLike, VideoError
from .ffmpeg import probe_header as _probe_header  # noqa: F401 - tests/test_restyle.py imports it from here
from .probe import VideoInfo, probe_video, probe_video_cached
from .testclips import make_test_clip

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

__all__ = [
    "VideoError",
    "VideoInfo",
    "VideoWriter",
    "encode_video",
    "iter_frames",
    "make_test_clip",
    "probe_video",
    "probe_video_cached",
    "select_frames",
    "write_video",
]


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
) -> Iterator[tuple[int, np.ndarray]]:
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
    p = ffmpeg.check_input(path)
    wanted: list[int] | None = None
    if indices is not None:
        wanted = sorted({_as_int(i, "frame index", name) for i in indices})
        if wanted and wanted[0] < 0:
            raise VideoError(f"{name}: negative frame index {wanted[0]}")
    if size is not None:
        size = ffmpeg.check_size(size, name)
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
    import imageio_ffmpeg
    import numpy as np

    ff_log = logging.getLogger("imageio_ffmpeg")
    if _SIZE_FILTER not in ff_log.filters:
        ff_log.addFilter(_SIZE_FILTER)

    output_params = list(ffmpeg.passthrough_args())
    # Source index of the k-th frame ffmpeg gives us.
    if wanted is None:
        index_of = lambda k: k
    else:
        first, last = wanted[0], wanted[-1]
        steps = {b - a for a, b in itertools.pairwise(wanted)}
        if len(steps) <= 1:  # arithmetic progression: let ffmpeg drop the rest
            step = steps.pop() if steps else 1
            expr = f"between(n,{first},{last})*not(mod(n-{first},{step}))"
            index_of = lambda k: first + k * step
            n_out = len(wanted)
        else:  # arbitrary list: ffmpeg keeps [first, last], we drop the rest
            expr = f"between(n,{first},{last})"
            index_of = lambda k: first + k
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
        except (OSError, RuntimeError, StopIteration, IndexError, AttributeError) as exc:
            raise VideoError(f"{name}: not a readable video (ffmpeg: {ffmpeg.read_error(exc)})") from None
        w, h = meta["size"]
        while True:
            try:
                buf = next(gen)
            except StopIteration:
                break
            except (OSError, RuntimeError) as exc:
                raise VideoError(
                    f"{name}: decoding failed at frame {index_of(k)} (ffmpeg: {ffmpeg.read_error(exc)})"
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

