"""``sdbatch verify``: hash every recorded output against the manifest.

Each path's newest output record (a re-render supersedes older lines; one a later ``pruned`` line retired is not
expected to exist, and is not checked) is checked: ``missing`` (no file there),
``changed`` (its sha256 differs from the recorded one), ``outside`` (the record's path leaves the output folder:
never read). One line per difference on stdout, then a summary; exit 1 on any difference, 0 when every output
matches, 2 when there is no manifest to check. Reads only: takes no lock, writes nothing.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from ..errors import EXIT_FAILED, EXIT_OK, UsageError
from ..io.hashing import sha256_file
from ..io.manifest import MANIFEST_NAME, read_outputs


def inside(out_dir: Path, rel: str) -> Path | None:
    """``out_dir / rel`` when ``rel`` is relative, has no ``..`` and resolves inside ``out_dir``; else None."""
    pure = PurePosixPath(rel)
    if not rel or pure.is_absolute() or ".." in pure.parts or "\\" in rel:
        return None
    path = out_dir / rel
    try:
        path.resolve().relative_to(out_dir.resolve())
    except (OSError, ValueError):
        return None
    return path


def check_output(out_dir: Path, rel: str, sha256: str | None) -> str | None:
    """Why the output ``rel`` does not match the manifest, or None when it does."""
    path = inside(out_dir, rel)
    if path is None:
        return "outside"
    if not path.is_file():
        return "missing"
    try:
        digest = sha256_file(path)
    except OSError:
        return "unreadable"
    return None if sha256 and digest == sha256 else "changed"


def verify_outputs(out_dir: Path) -> int:
    manifest = out_dir / MANIFEST_NAME
    if not out_dir.is_dir():
        raise UsageError(f"error: {out_dir} is not a folder")
    if not (manifest.exists() or manifest.is_symlink()):
        raise UsageError(f"error: no {MANIFEST_NAME} in {out_dir}: nothing to verify")
    latest = {record.path: record.sha256 for record in read_outputs(manifest)}
    problems: dict[str, int] = {}
    for rel, sha256 in latest.items():
        why = check_output(out_dir, rel, sha256)
        if why is not None:
            problems[why] = problems.get(why, 0) + 1
            detail = " (sha256 differs from the manifest)" if why == "changed" else ""
            print(f"{why:8} {out_dir / rel if why != 'outside' else rel}{detail}")
    summary = ", ".join(f"{n} {why}" for why, n in problems.items()) if problems else "all match"
    print(f"{len(latest)} recorded output(s) in {out_dir}: {summary}")
    return EXIT_FAILED if problems else EXIT_OK
