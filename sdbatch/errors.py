"""Errors every layer may raise, and the exit codes they map to (no imports: nothing can cycle through here).

Exit codes: 0 all done, 1 some jobs failed (the rest finished), 2 invalid recipe or usage, 130 interrupted
(Ctrl-C), 143 terminated (SIGTERM), 129 hang-up (SIGHUP).
"""

from __future__ import annotations

from dataclasses import dataclass, field

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
EXIT_TERMINATED, EXIT_HANGUP = 143, 129


class UsageError(Exception):
    """A problem with the command line or the recipe: printed as is, exit 2."""


class ModelUnavailable(RuntimeError):
    """A model that cannot be fetched or loaded; the message is one line for the user."""


@dataclass
class Problem:
    """One mistake in a recipe: where (line, dotted field path) and what."""

    line: int
    path: str
    message: str


@dataclass
class RecipeError(Exception):
    """Every problem found in a recipe; ``str()`` gives one ``file:line: field: message`` per line."""

    file: str
    problems: list[Problem] = field(default_factory=list)

    def __str__(self) -> str:
        lines = []
        for p in self.problems:
            where = f"{self.file}:{p.line}" if p.line else self.file
            lines.append(f"{where}: {p.path}: {p.message}" if p.path else f"{where}: {p.message}")
        return "\n".join(lines)
