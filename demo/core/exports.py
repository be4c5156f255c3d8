"""Export files (CSV, JSON) written for a visitor to download. No Gradio.

They go into one private folder per process: made by ``tempfile.mkdtemp`` (a name nobody can
predict, readable by this user only), checked before every write to still be that (a real folder,
ours, closed to others), never following a link. Exports older than ``keep_s`` are deleted at the
next write, and the folder is capped twice: in bytes (``max_bytes``) and by the disk's free space
(``min_free_bytes`` always stay free); the oldest exports go first, and an export that still does not
fit is refused with a sentence. A write that fails part-way leaves nothing behind. The page serves
the files from this folder itself (``demo.ui.page`` declares it a static path), so each export is
written once: no copy goes into Gradio's own file cache. The folder goes when the process exits, and
a process that starts removes the folders that no running process holds (a crash or a kill leaves its
folder behind), so restarts do not add up on the disk: each process holds a lock (``flock``) on a file
in its folder for as long as it lives, which the system releases when it ends, whatever its process
id or namespace.
"""

from __future__ import annotations

import atexit
import contextlib
import csv
import fcntl
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

PREFIX = "gpt-explorer-exports-"  # then the process's id: gpt-explorer-exports-<pid>-<random>
HOLDER = ".held"  # the file of a folder whose lock its process holds while it lives
EXPORT_KEEP_S = 15 * 60
EXPORT_MAX_BYTES = 256 * 2**20
EXPORT_MIN_FREE_BYTES = 1 * 2**30  # exports never take the disk's last GB (the app, its logs and models need it)


class ExportError(ExplorerError):
    """The export folder is not safe to write to, or an export is too large."""


class ExportFolder:
    """Where exports are written. ``root``: a folder to use (tests); by default a private temporary
    folder made on first use."""

    def __init__(self, root: Path | None = None, keep_s: float = EXPORT_KEEP_S, max_bytes: int = EXPORT_MAX_BYTES,
                 min_free_bytes: int = EXPORT_MIN_FREE_BYTES):
        self._root = Path(root) if root is not None else None
        self.keep_s, self.max_bytes, self.min_free_bytes = keep_s, max_bytes, min_free_bytes
        self._lock = threading.Lock()
        self._held: int | None = None  # the open lock file of the folder this object made

    @property
    def root(self) -> Path:
        if self._root is None:
            remove_orphans(Path(tempfile.gettempdir()))
            # made under a name remove_orphans passes over, and named an export folder only once its lock is
            # held: another process starting meanwhile cannot take it for a dead one's
            made = Path(tempfile.mkdtemp(prefix=f".{PREFIX}new-"))
            self._held = os.open(made / HOLDER, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0),
                                 0o600)
            fcntl.flock(self._held, fcntl.LOCK_EX)  # kept until the process ends: the folder is in use
            root = made.with_name(f"{PREFIX}{os.getpid()}-{made.name.rsplit('-', 1)[-1]}")
            os.rename(made, root)
            self._root = root
            atexit.register(self._clear_at_exit, os.getpid())
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
            free = shutil.disk_usage(root).free
            if free - size < self.min_free_bytes:
                raise ExportError(f"the server's disk is nearly full ({free / 2**20:,.0f} MB free; exports leave "
                                  f"{self.min_free_bytes / 2**20:,.0f} MB): try again later")
            target = Path(tempfile.mkdtemp(dir=root))
            paths = []
            try:
                for suffix, blob in data.items():
                    path = target / f"{stem}.{suffix}"
                    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
                    with os.fdopen(os.open(path, flags, 0o600), "wb") as fh:
                        fh.write(blob)
                    paths.append(str(path))
            except OSError as exc:  # a full disk, a quota: nothing half-written stays
                shutil.rmtree(target, ignore_errors=True)
                raise ExportError(f"the export could not be written ({exc.strerror or type(exc).__name__}): "
                                  "try again later") from exc
            return paths

    def _clean(self, root: Path, room: int) -> None:
        """Delete exports older than ``keep_s``, anything that is not an export folder (links are
        removed, never followed), then the oldest exports until ``room`` more bytes fit, in the cap and
        in the disk's free space."""
        now, kept = time.time(), []
        with os.scandir(root) as entries:
            for entry in entries:
                try:
                    if not entry.is_dir(follow_symlinks=False):
                        if entry.name != HOLDER:
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
        short = max(0, self.min_free_bytes + room - shutil.disk_usage(root).free)  # bytes the disk lacks
        for _, path, size in sorted(kept):
            if total + room <= self.max_bytes and short <= 0:
                break
            shutil.rmtree(path, ignore_errors=True)
            total -= size
            short -= size

    def _clear_at_exit(self, pid: int) -> None:
        if os.getpid() == pid:  # not in a forked child (a ZeroGPU worker): the folder is its parent's
            self.clear()

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


def _unheld(folder: str) -> bool:
    """Whether no process holds ``folder``'s lock: its process has ended. A folder without the file (being
    made, or left by an older release) counts as held."""
    try:
        fd = os.open(os.path.join(folder, HOLDER), os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # another process holds it
        return False
    finally:
        os.close(fd)
    return True


def remove_orphans(base: Path) -> list[str]:
    """Remove the export folders in ``base`` that no running process holds; the names removed. A held
    folder, another user's, a link, or a name not of this form stays."""
    removed = []
    with contextlib.suppress(OSError), os.scandir(base) as entries:
        for entry in entries:
            if not entry.name.startswith(PREFIX):
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and _unheld(entry.path):
                shutil.rmtree(entry.path, ignore_errors=True)
                removed.append(entry.name)
    return removed
