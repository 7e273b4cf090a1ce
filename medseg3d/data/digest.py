"""Content digests of dataset files, so a cache keyed by a case changes when a file's content does.

``file_digest`` is the SHA-256 of a file's bytes. Hashing every file before every training would cost a full
read of the dataset, so digests are remembered in a small JSON memo (``file_digests.json`` in the cache
folder) keyed by the file's absolute path, size, modification time, inode change time and inode number: an
unchanged file is not read again. The inode change time (``st_ctime_ns`` on Linux and macOS) is set by the
system on every write and cannot be set back by ``os.utime``, so a file edited in place keeping its size and
its modification time is still hashed again. Files replaced by a rename get a new inode number. A file that
changed within the last second when it was hashed is not remembered (a second write within the same clock
tick could leave all its time stamps as they were).

``case_digest`` combines the digests of a case's image and label files; put it into each case dict
(:func:`add_digests`) and MONAI's ``PersistentDataset``, whose cache key hashes the whole item, recomputes a
case whose files changed.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable

from ..runtime import cache_root

MEMO_NAME = "file_digests.json"
RACY_NS = 1_000_000_000  # files changed less than this before being hashed are hashed again next time
_CHUNK = 1 << 20


def default_cache_dir() -> Path:
    """``$MEDSEG3D_CACHE`` or ``~/.cache/medseg3d`` (the default of ``data.cache_dir``)."""
    return cache_root()


def sha256_file(path: str | Path) -> str:
    """SHA-256 (hex) of a file's content."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


class FileMemo:
    """Facts computed from files (anything JSON can hold), remembered across runs in ``cache_dir/name``, each
    valid while its file's size, modification and change times and inode are those it was computed from.

    Use as a context manager (or call :meth:`save`) so new entries are written back once, atomically, merged
    with what other processes wrote meanwhile; a memo that cannot be read or written is simply not used (the
    facts are then computed every time). ``computed`` counts the files actually read."""

    def __init__(self, cache_dir: str | Path | None = None, name: str = MEMO_NAME):
        self.path = Path(cache_dir if cache_dir is not None else default_cache_dir()) / name
        self.entries: dict[str, list] = {}
        self.computed = 0
        self._dirty = False
        try:
            loaded = json.loads(self.path.read_text())
            if isinstance(loaded, dict):
                self.entries = loaded
        except (OSError, ValueError):
            pass

    @staticmethod
    def stamp(path: str | Path) -> list[int]:
        st = os.stat(path)
        return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]

    def get(self, path: str | Path, compute: Callable[[str], Any], tag: str = "") -> Any:
        """``compute(path)``, or its remembered value when the file is unchanged since (``tag`` keeps apart
        different facts about one file)."""
        path = os.path.abspath(path)
        key = f"{tag}:{path}" if tag else path
        stamp = self.stamp(path)
        entry = self.entries.get(key)
        if isinstance(entry, list) and len(entry) == 2 and entry[0] == stamp:
            return entry[1]
        value = compute(path)
        self.computed += 1
        # Remembered only if the file did not change while it was read, and its last change is older than
        # RACY_NS: a write within the same clock tick as the read could leave every time stamp unchanged.
        recent = time.time_ns() - max(stamp[1], stamp[2]) < RACY_NS
        if not recent and self.stamp(path) == stamp:
            self.entries[key] = [stamp, value]
            self._dirty = True
        return value

    def save(self) -> None:
        """Write the memo (merged with what other processes wrote meanwhile) through a temporary file."""
        if not self._dirty:
            return
        try:
            merged = json.loads(self.path.read_text()) if self.path.is_file() else {}
            if not isinstance(merged, dict):
                merged = {}
        except (OSError, ValueError):
            merged = {}
        merged.update(self.entries)
        tmp = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=self.path.parent)
            with os.fdopen(fd, "w") as f:
                json.dump(merged, f)
            os.replace(tmp, self.path)
            self._dirty = False
        except OSError:
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.save()


class DigestMemo(FileMemo):
    """File digests remembered in ``cache_dir/file_digests.json`` (:class:`FileMemo`); ``hashed`` counts the
    files actually read."""

    def __init__(self, cache_dir: str | Path | None = None):
        super().__init__(cache_dir, MEMO_NAME)

    @property
    def hashed(self) -> int:
        return self.computed

    def file_digest(self, path: str | Path) -> str:
        """SHA-256 of ``path``'s content; read again only when its size, times or inode changed."""
        return self.get(path, sha256_file)

    def case_digest(self, case: dict) -> str:
        """One digest of a case's image files (in channel order) and label file."""
        parts = {"image": [self.file_digest(f) for f in case["image"]],
                 "label": self.file_digest(case["label"]) if case.get("label") else None}
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def file_digest(path: str | Path, cache_dir: str | Path | None = None) -> str:
    """SHA-256 (hex) of a file's content, remembered in ``cache_dir`` (default: :func:`default_cache_dir`)."""
    with DigestMemo(cache_dir) as memo:
        return memo.file_digest(path)


def case_digest(case: dict, cache_dir: str | Path | None = None) -> str:
    """One digest of a case dict's files (``image`` list and ``label``)."""
    with DigestMemo(cache_dir) as memo:
        return memo.case_digest(case)


def add_digests(cases: Iterable[dict], cache_dir: str | Path | None = None) -> list[dict]:
    """Copies of the case dicts with a ``digest`` key (:func:`case_digest`), the memo read and written once."""
    with DigestMemo(cache_dir) as memo:
        return [{**c, "digest": memo.case_digest(c)} for c in cases]
