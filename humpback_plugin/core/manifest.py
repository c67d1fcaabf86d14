"""The run manifest: what each stage read and wrote, with hashes, counts and models.

It is rewritten atomically after every stage change, so a run killed at any moment leaves
a manifest that describes exactly what is on disk.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import Any

from humpback_plugin.core.hashing import file_digest
from humpback_plugin.core.jsonl_io import write_json_atomic
from humpback_plugin.core.layout import MANIFEST_NAME


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def file_info(path: str | os.PathLike, root: str | os.PathLike) -> dict[str, Any]:
    """Path relative to the run dir, a sha256, and the record count of a JSONL file.

    A file's sha256 is of its content, read in chunks. A folder (a corpus of thousands of
    files, a trained model of many GB) gets the sha256 of its listing instead: each
    file's relative path, size and modification time. Reading it all on every status
    check would cost as much as the stage, and the listing changes whenever a file does.
    """
    path = Path(path)
    if path.is_dir():
        digest = hashlib.sha256()
        for child in sorted(p for p in path.rglob("*") if p.is_file()):
            st = child.stat()
            digest.update(f"{child.relative_to(path)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return {"path": _rel(path, root), "sha256": digest.hexdigest(), "hashed": "listing"}
    sha256, lines = file_digest(path)
    info: dict[str, Any] = {"path": _rel(path, root), "sha256": sha256}
    # Newlines in compressed bytes mean nothing, so only plain JSONL gets a count.
    if path.suffix == ".jsonl":
        info["records"] = lines
    return info


def input_info(path: str | os.PathLike, root: str | os.PathLike) -> dict[str, Any]:
    """:func:`file_info` plus a file's size and modification time, so that a later check
    re-reads only an input whose size or time changed (a 50 GB WARC is not hashed again
    on every ``humpback run``)."""
    info = file_info(path, root)
    if Path(path).is_file():
        st = Path(path).stat()
        info.update(size=st.st_size, mtime_ns=st.st_mtime_ns)
    return info


def same_input(recorded: dict[str, Any], path: str | os.PathLike, root: str | os.PathLike) -> bool:
    """Whether ``path`` still holds what ``recorded`` (an :func:`input_info`) describes."""
    path = Path(path)
    if not path.exists():
        return False
    if path.is_file():
        st = path.stat()
        if (recorded.get("size"), recorded.get("mtime_ns")) == (st.st_size, st.st_mtime_ns):
            return True
    return file_info(path, root)["sha256"] == recorded.get("sha256")


def _rel(path: Path, root: str | os.PathLike) -> str:
    try:
        return str(path.resolve().relative_to(Path(root).resolve()))
    except ValueError:
        return str(path.resolve())


class Manifest:
    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / MANIFEST_NAME
        if self.path.exists():
            self.data = json.loads(self.path.read_text(encoding="utf-8"))
        else:
            self.data = {
                "version": 1,
                "run_id": uuid.uuid4().hex[:12],
                "created_at": now_iso(),
                "config": {},
                "stages": {},
            }

    def save(self) -> None:
        self.data["updated_at"] = now_iso()
        write_json_atomic(self.path, self.data)

    def stage(self, name: str) -> dict[str, Any]:
        return self.data["stages"].setdefault(name, {"status": "pending"})

    def start(self, name: str, **fields: Any) -> None:
        entry = self.stage(name)
        entry.update(status="running", started_at=now_iso(), finished_at=None, **fields)
        entry.pop("error", None)
        self.save()

    def finish(
        self,
        name: str,
        *,
        inputs: list[str | os.PathLike] = (),  # type: ignore[assignment]
        outputs: list[str | os.PathLike] = (),  # type: ignore[assignment]
        stats: dict[str, Any] | None = None,
        status: str = "done",
        **fields: Any,
    ) -> None:
        entry = self.stage(name)
        started = entry.get("started_at")
        finished = now_iso()
        elapsed = None
        if started:
            elapsed = (
                dt.datetime.fromisoformat(finished) - dt.datetime.fromisoformat(started)
            ).total_seconds()
        entry.update(
            status=status,
            finished_at=finished,
            elapsed_s=elapsed,
            inputs=[input_info(p, self.run_dir) for p in inputs if Path(p).exists()],
            outputs=[file_info(p, self.run_dir) for p in outputs if Path(p).exists()],
            stats=stats or {},
            **fields,
        )
        self.save()

    def fail(self, name: str, error: str, status: str = "failed") -> None:
        entry = self.stage(name)
        entry.update(status=status, error=error, finished_at=now_iso())
        self.save()

    def inside(self, recorded: str) -> Path | None:
        """The run-directory path a manifest entry names, or None when it points outside
        (``../``, an absolute path elsewhere, a link out): such an entry is never read."""
        root = self.run_dir.resolve()
        path = (self.run_dir / recorded).resolve()
        return path if path.is_relative_to(root) else None

    def is_done(self, name: str) -> bool:
        """Done, and every output still on disk, inside the run directory, with the hash
        recorded."""
        entry = self.data["stages"].get(name) or {}
        if entry.get("status") != "done":
            return False
        for out in entry.get("outputs", []):
            path = self.inside(str(out.get("path", "")))
            if path is None or not path.exists():
                return False
            if file_info(path, self.run_dir)["sha256"] != out.get("sha256"):
                return False
        return True

    def stale_reason(
        self, name: str, inputs: list[str | os.PathLike], settings_sha256: str
    ) -> str | None:
        """Why stage ``name`` must run again, or None when it is done with the same
        inputs (paths and contents), the same settings and its outputs as recorded."""
        entry = self.data["stages"].get(name) or {}
        if entry.get("status") != "done":
            return "not done"
        if not self.is_done(name):
            return "outputs changed"
        if entry.get("settings_sha256") != settings_sha256:
            return "settings changed"
        recorded = {i.get("path"): i for i in entry.get("inputs", [])}
        current = {_rel(Path(p), self.run_dir): Path(p) for p in inputs if Path(p).exists()}
        if set(recorded) != set(current):
            return "inputs changed"
        for rel, path in current.items():
            if not same_input(recorded[rel], path, self.run_dir):
                return f"input changed: {rel}"
        return None
