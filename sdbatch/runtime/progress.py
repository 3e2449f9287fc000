"""Progress for long runs: a rich live display on a terminal, plain lines otherwise (logs, cron, CI)."""

from __future__ import annotations

import sys
import time
from typing import Any


class Reporter:
    """Jobs done/total, ETA and the current stage. Messages go to stderr; stdout stays for data."""

    def __init__(self, stream: Any = None, live: bool | None = None):
        self.stream = stream or sys.stderr
        self.live = self.stream.isatty() if live is None else live
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

    def _advance(self, line: str) -> None:
        self.count += 1
        if self._progress is not None:
            self._progress.advance(self._task)
            return
        elapsed = time.time() - self.started
        eta = elapsed / self.count * (self.total - self.count) if self.count else 0
        self.say(f"[{self.count}/{self.total}] {line} (ETA {_fmt(eta)})")

    def done(self, job: Any, seconds: float) -> None:
        self._advance(f"{job.output} {seconds:.1f}s")

    def failed(self, job: Any, error: str) -> None:
        self.say(f"FAILED {job.output}: {error}")
        self._advance(f"{job.output} failed")

    def skipped(self, job: Any, reason: str) -> None:
        self._advance(f"{job.output} skipped: {reason}")

    def stop(self) -> None:
        if self._progress is not None:
            progress, self._progress = self._progress, None
            try:
                progress.stop()
            except (OSError, ValueError):
                pass

    def summary(self, stats: dict[str, Any], failures: list[tuple[str, str, str]], out_dir: Any) -> None:
        from rich.table import Table

        table = Table(title=f"sdbatch: {out_dir}", title_justify="left")
        for column in ("stage", "jobs", "done before", "rendered", "failed", "skipped"):
            table.add_column(column, justify="left" if column == "stage" else "right")
        for name, s in stats.items():
            table.add_row(name, str(s.jobs), str(s.done_before), str(s.rendered), str(s.failed), str(s.skipped))
        self.console.print(table)
        for _stage, output, error in failures[:20]:
            self.console.print(f"failed: {output}: {error}", markup=False)
        if len(failures) > 20:
            self.console.print(f"... and {len(failures) - 20} more failures (see manifest.jsonl)")


def _fmt(seconds: float) -> str:
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"
