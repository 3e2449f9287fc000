"""Stopping a run cleanly: Ctrl-C (SIGINT), SIGTERM (schedulers, systemd, ``kill``) and SIGHUP (a closed ssh session).

The first of them finishes the current batch (no broken file: every write is atomic), the run-end record is
written and the run exits 130 (SIGINT), 143 (SIGTERM) or 129 (SIGHUP). A second one stops at once (the same
exit code: that of the first). After SIGHUP the terminal is gone: stdout and stderr, if they were it, go to
/dev/null so a message can no longer fail the run.
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

from ..errors import EXIT_HANGUP, EXIT_INTERRUPTED, EXIT_TERMINATED

EXIT_CODES = {signal.SIGINT: EXIT_INTERRUPTED, signal.SIGTERM: EXIT_TERMINATED, signal.SIGHUP: EXIT_HANGUP}
WHAT = {signal.SIGINT: "Interrupted", signal.SIGTERM: "Terminated (SIGTERM)", signal.SIGHUP: "Hung up (SIGHUP)"}


class StopSignals:
    """A context manager: while inside, SIGINT/SIGTERM/SIGHUP set ``stop`` (then, a second time, raise
    KeyboardInterrupt). ``received`` is the first signal, or None."""

    def __init__(self, stop: threading.Event, say: Any):
        self.stop = stop
        self.say = say
        self.received: signal.Signals | None = None
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in EXIT_CODES:
                self.previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGHUP:
            _detach_terminal()
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signal.Signals(signum)
        self.stop.set()
        again = "Ctrl-C" if signum == signal.SIGINT else "again"
        try:
            self.say(f"{WHAT[self.received]}: finishing the current job, then stopping ({again} to stop now)")
        except (OSError, ValueError):
            pass

    @property
    def exit_code(self) -> int:
        return EXIT_CODES.get(self.received, EXIT_INTERRUPTED) if self.received is not None else EXIT_INTERRUPTED

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self.previous = {}


def _detach_terminal() -> None:
    devnull = None
    for fd in (1, 2):
        try:
            if os.isatty(fd):
                devnull = devnull if devnull is not None else os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, fd)
        except OSError:
            pass
    if devnull is not None:
        os.close(devnull)
