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
    """A model that cannot be fetched or loaded. ``str()`` is one line: why (``reason``, whole), then
    each hint after ``; `` (what to do, the underlying error); ``case`` names the kind of failure (for a hub
    model: offline, network, gated, not_found, revision, not_pipeline, http, other; see
    :mod:`sdbatch.sources.hub_errors`)."""

    def __init__(self, reason: str, *, case: str = "other", hints: list[str] | tuple[str, ...] = ()):
        super().__init__("; ".join([reason, *hints]))  # one line: the CLI's `error: ...` convention
        self.reason, self.case, self.hints = reason, case, list(hints)


def one_line(text: str, limit: int = 300) -> str:
    """``text`` with its whitespace collapsed to single spaces; past ``limit`` characters it is shortened at a
    word boundary and ends with "...", never mid-word."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    cut = text[:limit - 3]
    space = cut.rfind(" ")
    return cut[:space].rstrip(" ,;:") + "..." if space > 0 else text  # one huge word: kept whole


@dataclass
class Problem:
    """One mistake in a recipe: where (line, dotted field path) and what."""

    line: int
    path: str
    message: str
    file: str | None = None  # the file the line is in, when not the recipe (a prompt file, a rows table)


@dataclass
class RecipeError(Exception):
    """Every problem found in a recipe; ``str()`` gives one ``file:line: field: message`` per line."""

    file: str
    problems: list[Problem] = field(default_factory=list)

    def __str__(self) -> str:
        lines = []
        for p in self.problems:
            file = p.file or self.file
            where = f"{file}:{p.line}" if p.line else file
            lines.append(f"{where}: {p.path}: {p.message}" if p.path else f"{where}: {p.message}")
        return "\n".join(lines)
