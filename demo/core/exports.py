"""Export files (CSV, JSON) written for a visitor to download. No Gradio.

They go into one private folder per process: made by ``tempfile.mkdtemp`` (a name nobody can
predict, readable by this user only), checked before every write to still be that (a real folder,
ours, closed to others), never following a link. Exports older than ``keep_s`` are deleted at the
next write, and the folder is capped in bytes: the oldest exports go first.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import stat
import tempfile
import threading
import time
from pathlib import Path

from demo.core.errors import ExplorerError


def csv_text(rows) -> str:
    """Rows (the first one the header) as CSV text: the one way the app writes a CSV."""
    buf = io.StringIO()
    csv.writer(buf).writerows(rows)
    return buf.getvalue()

EXPORT_KEEP_S = 15 * 60
EXPORT_MAX_BYTES = 256 * 2**20


class ExportError(ExplorerError):
    """The export folder is not safe to write to, or an export is too large."""


class ExportFolder:
    """Where exports are written. ``root``: a folder to use (tests); by default a private temporary
    folder made on first use."""

    def __init__(self, root: Path | None = None, keep_s: float = EXPORT_KEEP_S, max_bytes: int = EXPORT_MAX_BYTES):
        self._root = Path(root) if root is not None else None
        self.keep_s, self.max_bytes = keep_s, max_bytes
        self._lock = threading.Lock()

    @property
    def root(self) -> Path:
        if self._root is None:
            self._root = Path(tempfile.mkdtemp(prefix="gpt-explorer-exports-"))
        self._check(self._root)
        return self._root

    @staticmethod
    def _check(root: Path) -> None:
        try:
            st = os.lstat(root)
        except OSError as exc:
            raise ExportError("the export folder is missing: exports are unavailable") from exc
        if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
            raise ExportError("the export folder is not a plain folder (a link?): exports are refused")
        if st.st_uid != os.getuid() or st.st_mode & 0o077:
            raise ExportError("the export folder is not private to this app: exports are refused")

    def write(self, stem: str, files: dict[str, str]) -> list[str]:
        """Write one export (``{suffix: text}``, e.g. ``{"csv": …, "json": …}``) into a fresh folder of
        its own; returns the paths. Old exports are deleted first, then the oldest until this fits."""
        data = {suffix: text.encode("utf-8") for suffix, text in files.items()}
        size = sum(len(b) for b in data.values())
        if size > self.max_bytes:
            raise ExportError(f"this export would take {size / 2**20:,.0f} MB, over the "
                              f"{self.max_bytes / 2**20:,.0f} MB this server allows: choose a smaller view")
        with self._lock:
            root = self.root
            self._clean(root, room=size)
            target = Path(tempfile.mkdtemp(dir=root))
            paths = []
            for suffix, blob in data.items():
                path = target / f"{stem}.{suffix}"
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
                with os.fdopen(fd, "wb") as fh:
                    fh.write(blob)
                paths.append(str(path))
            return paths

    def _clean(self, root: Path, room: int) -> None:
        """Delete exports older than ``keep_s``, anything that is not an export folder (links are
        removed, never followed), then the oldest exports until ``room`` more bytes fit."""
        now, kept = time.time(), []
        with os.scandir(root) as entries:
            for entry in entries:
                try:
                    if not entry.is_dir(follow_symlinks=False):
                        os.unlink(entry.path)
                        continue
                    age = now - entry.stat(follow_symlinks=False).st_mtime
                    if age > self.keep_s:
                        shutil.rmtree(entry.path)
                        continue
                    kept.append((entry.stat(follow_symlinks=False).st_mtime, entry.path, _size(entry.path)))
                except OSError:
                    continue
        total = sum(size for _, _, size in kept)
        for _, path, size in sorted(kept):
            if total + room <= self.max_bytes:
                break
            shutil.rmtree(path, ignore_errors=True)
            total -= size

    def clear(self) -> None:
        if self._root is not None and self._root.is_dir() and not self._root.is_symlink():
            shutil.rmtree(self._root, ignore_errors=True)


def _size(folder: str) -> int:
    total = 0
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.is_file(follow_symlinks=False):
                total += entry.stat(follow_symlinks=False).st_size
    return total
