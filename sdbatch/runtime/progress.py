"""Progress for long runs: a rich live display on a terminal, plain lines otherwise (logs, cron, CI).

Jobs count one by one; a video job's frames count too (a second bar on a terminal; in a log a line at every
tenth of its frames or every ``FRAME_LINE_SECONDS``, whichever comes first, never a carriage return), each with
an ETA. The summary at the end of a run goes to stdout: the time, what was rendered, the failures, the gallery
and how to resume.
"""

from __future__ import annotations

import os
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FRAME_LINE_SECONDS = 10.0  # a log line about a video job's frames at least this often (and every 10 %)
MAX_FAILURES_SHOWN = 20


@dataclass
class _Frames:
    """One video job's frames: the first report (what existed then), the first frame rendered since, the last
    line written to a log."""

    total: int
    first: tuple[float, int]
    second: tuple[float, int] | None = None
    task: Any = None
    line_at: float = 0.0
    line_done: int = 0

    def eta(self, now: float, done: int) -> float | None:
        """Seconds left, from the frames rendered since the first one (which also loaded the models)."""
        base = self.second if self.second is not None and done > self.second[1] else self.first
        rendered = done - base[1]
        if rendered <= 0:
            return None
        return (now - base[0]) / rendered * max(0, self.total - done)


class Reporter:
    """Jobs done/total, ETA and the current stage, and video jobs' frames. Messages go to stderr; only the
    summary (the run's result, like ``output:``) goes to stdout."""

    def __init__(self, stream: Any = None, live: bool | None = None, out: Any = None):
        self.stream = stream or sys.stderr
        self.out = out  # the summary's stream (None: sys.stdout when it is printed)
        self.live = self.stream.isatty() if live is None else live
        self._frames: dict[str, _Frames] = {}
        self.clock = time.time  # of the frame lines' ETA and pacing
        self.total = 0
        self.count = 0
        self.started = 0.0
        self._progress = None
        self._task = None
        self._console = None

    @property
    def console(self) -> Any:
        if self._console is None:
            from rich.console import Console

            self._console = Console(file=self.stream, highlight=False, soft_wrap=True)
        return self._console

    def say(self, message: str) -> None:
        try:
            if self._progress is not None:
                self._progress.console.print(message, markup=False)
            else:
                print(message, file=self.stream, flush=True)
        except (OSError, ValueError):
            pass  # the terminal is gone (a closed ssh session): the run goes on, the manifest tells

    def start(self, total: int, already_done: int) -> None:
        self.total, self.count, self.started = total, 0, time.time()
        if already_done:
            self.say(f"{already_done} job(s) already done; {total} to render")
        elif total:
            self.say(f"{total} job(s) to render")
        if self.live and total:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                      TextColumn("ETA"), TimeRemainingColumn(), console=self.console,
                                      transient=False)
            self._progress.start()
            self._task = self._progress.add_task("starting", total=total)

    def current(self, stage: str, size: int) -> None:
        if self._progress is not None:
            self._progress.update(self._task, description=f"{stage} (batch of {size})" if size > 1 else stage)

    def frames(self, job: Any, done: int, total: int) -> None:
        """``done`` of the ``total`` frames of video job ``job`` are saved (first call: before it renders any)."""
        now = self.clock()
        state = self._frames.get(job.job_id)
        if state is None:
            state = self._frames[job.job_id] = _Frames(total, (now, done), line_at=now, line_done=done)
            if self._progress is not None:
                state.task = self._progress.add_task(f"  {job.output} frames", total=total, completed=done)
            elif done:
                self.say(f"{job.output}: {done}/{total} frames saved before, rendering the rest")
            return
        if state.second is None and done > state.first[1]:
            state.second = (now, done)
        state.total = total
        if self._progress is not None:
            try:
                self._progress.update(state.task, completed=done, total=total)
            except (OSError, ValueError):
                pass
            return
        step = max(1, -(-total // 10))
        if now - state.line_at >= FRAME_LINE_SECONDS or done // step > state.line_done // step:
            state.line_at, state.line_done = now, done
            eta = state.eta(now, done)
            self.say(f"{job.output}: frame {done}/{total} (ETA {_fmt(eta) if eta is not None else '?'})")

    def _job_over(self, job: Any) -> None:
        state = self._frames.pop(job.job_id, None)
        if state is not None and state.task is not None and self._progress is not None:
            try:
                self._progress.remove_task(state.task)
            except (KeyError, OSError, ValueError):
                pass

    def _advance(self, line: str) -> None:
        self.count += 1
        if self._progress is not None:
            self._progress.advance(self._task)
            return
        elapsed = time.time() - self.started
        eta = elapsed / self.count * (self.total - self.count) if self.count else 0
        self.say(f"[{self.count}/{self.total}] {line} (ETA {_fmt(eta)})")

    def done(self, job: Any, seconds: float) -> None:
        self._job_over(job)
        self._advance(f"{job.output} {seconds:.1f}s")

    def failed(self, job: Any, error: str) -> None:
        self._job_over(job)
        self.say(f"FAILED {job.output}: {error}")
        self._advance(f"{job.output} failed")

    def skipped(self, job: Any, reason: str) -> None:
        self._job_over(job)
        self._advance(f"{job.output} skipped: {reason}")

    def stop(self) -> None:
        self._frames.clear()
        if self._progress is not None:
            progress, self._progress = self._progress, None
            try:
                progress.stop()
            except (OSError, ValueError):
                pass

    def summary(self, outcome: Any, out_dir: Path, command: str | None = None) -> None:
        """The end of a run, on stdout: a table per stage (when anything was tried), the time and what was
        rendered, each failure with its first error line, the gallery, and the command that resumes."""
        from rich.console import Console

        stream = self.out or sys.stdout
        try:
            console = Console(file=stream, highlight=False, soft_wrap=True)
            tried = sum(s.rendered + s.failed + s.skipped for s in outcome.stats.values())
            if tried:
                console.print(stage_table(outcome.stats, out_dir))
            for line in summary_lines(outcome, out_dir, command):
                console.print(line, markup=False)
            stream.flush()
        except (OSError, ValueError):
            pass  # the terminal is gone: the manifest tells


def stage_table(stats: dict[str, Any], out_dir: Path) -> Any:
    from rich.table import Table

    table = Table(title=f"sdbatch: {shown_path(out_dir)}", title_justify="left")
    for column in ("stage", "jobs", "done before", "rendered", "failed", "skipped"):
        table.add_column(column, justify="left" if column == "stage" else "right")
    for name, s in stats.items():
        table.add_row(name, str(s.jobs), str(s.done_before), str(s.rendered), str(s.failed), str(s.skipped))
    return table


def summary_lines(outcome: Any, out_dir: Path, command: str | None) -> list[str]:
    """The summary's lines (see :meth:`Reporter.summary`)."""
    stats = outcome.stats.values()
    failed, skipped = sum(s.failed for s in stats), sum(s.skipped for s in stats)
    done_before = sum(s.done_before for s in stats)
    roles = outcome.roles
    images, frames, videos = roles.get("image", 0), roles.get("frame", 0), roles.get("video", 0)
    lines = []
    if not (images or frames or videos or failed or skipped or outcome.interrupted or outcome.error):
        lines.append(f"nothing to do: {done_before} job(s) already done, 0 rendered ({_seconds(outcome.seconds)})")
    else:
        if outcome.interrupted:
            verb = f"{_STOPPED.get(outcome.signal or '', 'interrupted')} after"
        else:
            verb = "stopped after" if outcome.error else "finished in"
        what = _count(images, "image")
        if frames or videos:
            what += f", {_count(frames, 'frame')} rendered ({_count(videos, 'video')})"
        else:
            what += " rendered"
        text = f"{verb} {_seconds(outcome.seconds)}: {what}"
        if images + frames:
            text += f", {_per_image(outcome.seconds / (images + frames))} s/image"
        if failed or skipped:
            text += f"; {failed} failed, {skipped} skipped"
        lines.append(text)
    for _stage, output, error in outcome.failures[:MAX_FAILURES_SHOWN]:
        first = (str(error).strip().splitlines() or [""])[0]
        lines.append(f"failed: {output}: {first}")
    if len(outcome.failures) > MAX_FAILURES_SHOWN:
        lines.append(f"... and {len(outcome.failures) - MAX_FAILURES_SHOWN} more failed (see manifest.jsonl)")
    gallery = Path(out_dir) / "index.html"
    if gallery.is_file():
        lines.append(f"gallery: {shown_path(gallery)}")
    if command:
        lines.append(f"resume: {command}")
    return lines


_STOPPED = {"SIGINT": "interrupted", "SIGTERM": "terminated (SIGTERM)", "SIGHUP": "hung up (SIGHUP)"}


def shown_path(path: Path) -> str:
    """``path`` as the user would type it: relative to the current directory when inside it, else absolute."""
    try:
        absolute = Path(os.path.abspath(path))  # ".." folded; symlinks kept as typed
        cwd = Path.cwd()
    except OSError:  # the current directory is gone
        return str(path)
    for candidate, base in ((absolute, cwd), (absolute.resolve(), cwd.resolve())):
        try:
            return candidate.relative_to(base).as_posix() or "."
        except ValueError:
            continue
    return str(absolute)


def resume_command(argv: list[str] | None, prog: str = "sdbatch") -> str | None:
    """The command line the user ran (``argv``: the arguments after the program), less ``--force`` (and any
    abbreviation of it argparse accepted): running it again resumes, rendering only what is not done."""
    if argv is None:
        return None
    kept = [arg for arg in argv if not (arg.startswith("--f") and "--force".startswith(arg))]
    return shlex.join([prog, *kept])


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _seconds(seconds: float) -> str:
    return f"{seconds:.1f}s" if seconds < 60 else _fmt(seconds)


def _per_image(seconds: float) -> str:
    return f"{seconds:.2f}" if seconds < 10 else f"{seconds:.1f}"


def _fmt(seconds: float) -> str:
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"
