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
from typing import Iterable

MEMO_NAME = "file_digests.json"
RACY_NS = 1_000_000_000  # files changed less than this before being hashed are hashed again next time
_CHUNK = 1 << 20


def default_cache_dir() -> Path:
    """``$MEDSEG3D_CACHE`` or ``~/.cache/medseg3d`` (the default of ``data.cache_dir``)."""
    return Path(os.environ.get("MEDSEG3D_CACHE", Path.home() / ".cache" / "medseg3d"))


def sha256_file(path: str | Path) -> str:
    """SHA-256 (hex) of a file's content."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


class DigestMemo:
    """File digests remembered across runs in ``cache_dir/file_digests.json``.

    Use as a context manager (or call :meth:`save`) so new digests are written back once, atomically; a memo
    that cannot be read or written is simply not used (digests are then computed every time). ``hashed``
    counts the files actually read, for callers and tests that want to know."""

    def __init__(self, cache_dir: str | Path | None = None):
        self.path = Path(cache_dir if cache_dir is not None else default_cache_dir()) / MEMO_NAME
        self.entries: dict[str, list] = {}
        self.hashed = 0
        self._dirty = False
        try:
            loaded = json.loads(self.path.read_text())
            if isinstance(loaded, dict):
                self.entries = loaded
        except (OSError, ValueError):
            pass

    @staticmethod
    def _stamp(st: os.stat_result) -> list[int]:
        return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]

    def file_digest(self, path: str | Path) -> str:
        """SHA-256 of ``path``'s content; read again only when its size, times or inode changed."""
        key = os.path.abspath(path)
        stamp = self._stamp(os.stat(key))
        entry = self.entries.get(key)
        if isinstance(entry, list) and len(entry) == 2 and entry[0] == stamp:
            return entry[1]
        digest = sha256_file(key)
        self.hashed += 1
        # Remembered only if the file did not change while it was read, and its last change is older than
        # RACY_NS: a write within the same clock tick as the hash could leave every time stamp unchanged.
        recent = time.time_ns() - max(stamp[1], stamp[2]) < RACY_NS
        if not recent and self._stamp(os.stat(key)) == stamp:
            self.entries[key] = [stamp, digest]
            self._dirty = True
        return digest

    def case_digest(self, case: dict) -> str:
        """One digest of a case's image files (in channel order) and label file."""
        parts = {"image": [self.file_digest(f) for f in case["image"]],
                 "label": self.file_digest(case["label"]) if case.get("label") else None}
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()

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

    def __enter__(self) -> "DigestMemo":
        return self

    def __exit__(self, *exc) -> None:
        self.save()


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
