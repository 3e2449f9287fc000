"""The source side of a restyle: the kept frames decoded as a stream (with their optical flow computed ahead
when diffusion runs on a GPU), and the clock of the stage's phases (the mp4 record's ``timing``)."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class _Clock:
    """Seconds spent per named phase."""

    PHASES = ("model_load", "decode", "flow", "diffusion", "color", "read_back", "encode")

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.spent = {name: 0.0 for name in self.PHASES}

    def add(self, name: str, since: float) -> float:
        now = time.perf_counter()
        self.spent[name] += now - since
        return now

    def summary(self, rendered: int, reused: int, background: dict[str, float]) -> dict[str, Any]:
        """Seconds per phase on the stage's thread; ``other_s`` is the rest: time the stage was suspended
        while the worker saved PNGs and wrote the manifest, plus hashing the input. Shares leave out the
        one-off model load. ``background`` is the decoding thread's busy time (decode, flow), which
        overlaps the phases; ``decode_s`` / ``flow_s`` are what the stage waited for / the warp + blend."""
        total = time.perf_counter() - self.start
        spent = self.spent
        out: dict[str, Any] = {f"{name}_s": round(sec, 4) for name, sec in spent.items()}
        out["other_s"] = round(max(0.0, total - sum(spent.values())), 4)
        out["total_s"] = round(total, 4)
        work = total - spent["model_load"]
        own = sum(spent[k] for k in ("decode", "flow", "color", "read_back", "encode"))
        # the stage's own work outside diffusion (decode, flow, colour, read-back, encode)
        out["overhead_share"] = round(own / work, 4) if work > 0 else 0.0
        # everything but diffusion, incl. the worker's PNG writing
        out["non_diffusion_share"] = round((work - spent["diffusion"]) / work, 4) if work > 0 else 0.0
        out.update({f"background_{name}_s": round(sec, 4) for name, sec in background.items()})
        out["frames_rendered"] = rendered
        out["frames_reused"] = reused
        return out


_END = object()


class _SourceFrames:
    """The kept source frames, each with its motion from the previous source frame.

    With ``ahead`` (diffusion on a GPU) a thread decodes one or two frames ahead and computes the optical
    flow (both directions) and the forward-backward consistency mask, which depend on the source frames
    only, while the main thread waits on diffusion: only warping the previous *output* and the blend
    remain on the critical path. ``needs_motion(i)`` says whether frame ``i`` will be rendered (frames a
    killed run already saved need none). A queue of ``depth`` frames keeps memory constant. Without
    ``ahead`` (diffusion on the CPU, which needs every core: OpenCV's and torch's thread pools competing
    for them slowed diffusion down many times over) frames are decoded in line and ``motion`` is None.
    Iterating yields ``(i, j, frame, motion)`` with ``motion = (flow, valid) | None``.
    """

    def __init__(self, source: Path, kept: list[int], size: tuple[int, int], ahead: bool,
                 needs_motion: Any, depth: int = 2):
        from ..io.video import iter_frames

        self._frames = iter_frames(source, kept, size=size)  # validates now
        self._needs_motion = needs_motion
        self._ahead = ahead
        self.busy = {"decode": 0.0, "flow": 0.0}  # the thread's time, off the critical path
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = None
        if ahead:
            self._thread = threading.Thread(target=self._run, name="sdbatch-restyle-frames", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        from ..animation.flow import consistency_mask, optical_flow

        prev = None
        try:
            t = time.perf_counter()
            for i, (j, src) in enumerate(self._frames):
                now = time.perf_counter()
                self.busy["decode"] += now - t
                motion = None
                if prev is not None and self._needs_motion(i):
                    # exactly what warp_previous(prev_out, prev, src) computes, less the warp itself
                    cur_to_prev = optical_flow(src, prev)
                    motion = (cur_to_prev, consistency_mask(cur_to_prev, optical_flow(prev, src)))
                    self.busy["flow"] += time.perf_counter() - now
                if not self._put((i, j, src, motion)):
                    return
                prev = src
                t = time.perf_counter()
            self._put(_END)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the consumer
            self._put(exc)
        finally:
            self._frames.close()  # stops ffmpeg

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Iterator[tuple[int, int, Any, Any]]:
        if not self._ahead:
            for i, (j, src) in enumerate(self._frames):
                yield i, j, src, None
            return
        while True:
            item = self._queue.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
        else:
            self._frames.close()
