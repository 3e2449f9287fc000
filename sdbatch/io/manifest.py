"""The run manifest: ``<out>/manifest.jsonl``, append-only, one JSON object a line, fsynced.

Line kinds: ``output`` (one per file written), ``failed`` (a job that raised), ``skipped`` (a job whose
input failed), ``run`` (``event: start|end``). A torn last line (a crash mid-append) is ignored on read
and cut off before the next append, so the file always parses.

Example::

    manifest = Manifest(out_dir / "manifest.jsonl")
    manifest.append({"kind": "output", "job_id": "...", "path": "sketch/a-1-0123abcd.png", ...})
    done = manifest.outputs_by_job()
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator

MANIFEST_NAME = "manifest.jsonl"


def read_records(path: Path) -> Iterator[dict[str, Any]]:
    """Every whole record of a manifest (missing file: none)."""
    try:
        fh = open(path, "rb")
    except FileNotFoundError:
        return
    with fh:
        for raw in fh:
            if not raw.endswith(b"\n"):
                return  # torn tail of a crashed append
            try:
                record = json.loads(raw)
            except ValueError:
                continue
            if isinstance(record, dict):
                yield record


class Manifest:
    def __init__(self, path: Path):
        self.path = Path(path)
        self._fh = None

    def records(self) -> list[dict[str, Any]]:
        return list(read_records(self.path))

    def outputs_by_job(self) -> dict[str, list[dict[str, Any]]]:
        """job_id -> its output records, in order."""
        out: dict[str, list[dict[str, Any]]] = {}
        for record in read_records(self.path):
            if record.get("kind") == "output" and isinstance(record.get("job_id"), str):
                out.setdefault(record["job_id"], []).append(record)
        return out

    def _open(self):
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fh = open(self.path, "ab+")
            size = fh.seek(0, os.SEEK_END)
            if size:
                fh.seek(max(0, size - 65536))
                tail = fh.read()
                if not tail.endswith(b"\n"):
                    cut = tail.rfind(b"\n")
                    fh.truncate(size - len(tail) + cut + 1 if cut >= 0 else (0 if size <= 65536 else size))
                    fh.seek(0, os.SEEK_END)
            self._fh = fh
        return self._fh

    def append(self, record: dict[str, Any]) -> None:
        fh = self._open()
        fh.write(json.dumps(record, ensure_ascii=False, separators=(", ", ": ")).encode() + b"\n")
        fh.flush()
        os.fsync(fh.fileno())

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
