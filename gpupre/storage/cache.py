"""The SSD cache tier: byte ranges of remote files kept on local disk, shared by the jobs of a machine.

`CachedFileSystem(remote, directory, capacity_bytes)` is a `pyarrow.fs` filesystem. Every range
read through it (the coalesced column chunks of a projection) is stored as one file under
`directory` and indexed in a SQLite table of extents::

    extents(key, start, stop, file, bytes, used)    key: the remote file's path, size and mtime

A read is served from the extents that cover it, and only the gaps go to the remote store, so a
second job that reads the hot features of a dataset fetches (almost) nothing. When the cache holds
more than `capacity_bytes`, the least recently used extents are dropped. Several processes may
share one directory: the index is a WAL-mode SQLite database, range files are written under a
temporary name and renamed, and a range evicted while another process reads it is read again
from the remote store. A remote file that changes size or modification time gets a new key (an
object store's mtime has one-second resolution: rewrite a dataset under a new path, not in place).
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import time
import uuid
import warnings

import pyarrow as pa
import pyarrow.fs as pafs

from ..errors import ConfigError
from .iostats import DelegatingHandler

__all__ = ["CachedFileSystem"]


class _CacheHandler(DelegatingHandler):
    counters = ("cached_bytes", "remote_bytes", "remote_requests")
    per_process = ("_db",)  # a SQLite connection serves one process

    def __init__(self, base: pafs.FileSystem, directory: str, capacity_bytes: int):
        super().__init__(base)
        self.directory, self.capacity_bytes = directory, capacity_bytes

    def get_type_name(self):
        return "cached+" + self.base.type_name

    def open_input_file(self, path):
        info = self.base.get_file_info(path)
        if info.type != pafs.FileType.File:
            return self.base.open_input_file(path)  # raises the remote store's own error
        stamp = info.mtime_ns if info.mtime_ns is not None else ""
        key = hashlib.sha1(f"{self.base.type_name}\0{path}\0{info.size}\0{stamp}".encode()).hexdigest()
        return pa.PythonFile(_CachedFile(self, path, key, info.size), mode="r")

    # -- the index ----------------------------------------------------------------------------
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            os.makedirs(os.path.join(self.directory, "ranges"), exist_ok=True)
            db = sqlite3.connect(os.path.join(self.directory, "index.sqlite"), timeout=60,
                                 isolation_level=None, check_same_thread=False)  # fmt: skip
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("CREATE TABLE IF NOT EXISTS extents (key TEXT, start INTEGER, stop INTEGER, "
                       "file TEXT PRIMARY KEY, bytes INTEGER, used REAL)")  # fmt: skip
            db.execute("CREATE INDEX IF NOT EXISTS by_key ON extents (key, start)")
            self._db = db
        return self._db

    def read(self, remote, key: str, start: int, stop: int) -> bytes:
        """Bytes [start, stop) of a remote file: cached extents where they exist, the rest fetched."""
        with self.lock:
            rows = self.db().execute(
                "SELECT start, stop, file FROM extents WHERE key = ? AND stop > ? AND start < ? ORDER BY start",
                (key, start, stop),
            ).fetchall()
        pieces, used, position = [], [], start
        for first, last, name in rows:
            if last <= position:
                continue
            if first > position:
                pieces.append(self._fetch(remote, key, position, min(first, stop)))
                position = min(first, stop)
            if position >= stop:
                break
            end = min(last, stop)
            data = _read_range(os.path.join(self.directory, "ranges", name), position - first, end - position)
            if data is None:  # evicted by another process since the lookup
                data = self._fetch(remote, key, position, end)
            else:
                used.append(name)
                with self.lock:
                    self.cached_bytes += len(data)
            pieces.append(data)
            position = end
        if position < stop:
            pieces.append(self._fetch(remote, key, position, stop))
        if used:
            with self.lock:
                self.db().executemany("UPDATE extents SET used = ? WHERE file = ?", [(time.time(), n) for n in used])
        return b"".join(pieces)

    def _fetch(self, remote, key: str, start: int, stop: int) -> bytes:
        data = remote().read_at(stop - start, start)
        with self.lock:
            self.remote_bytes += len(data)
            self.remote_requests += 1
        if len(data) == stop - start and 0 < len(data) <= self.capacity_bytes:
            try:
                self._store(key, start, data)
            except (OSError, sqlite3.Error) as e:  # a full or broken cache disk costs speed, never data
                warnings.warn(f"gpupre cache {self.directory}: range not stored ({e})", RuntimeWarning, stacklevel=2)
        return data

    def _store(self, key: str, start: int, data: bytes) -> None:
        name = f"{key[:2]}/{uuid.uuid4().hex}.bin"
        path = os.path.join(self.directory, "ranges", name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path + ".tmp", "wb") as f:
            f.write(data)
        os.replace(path + ".tmp", path)
        with self.lock:
            db = self.db()
            db.execute("BEGIN IMMEDIATE")  # one writer at a time across processes: insert and evict together
            try:
                db.execute("INSERT INTO extents VALUES (?, ?, ?, ?, ?, ?)",
                           (key, start, start + len(data), name, len(data), time.time()))  # fmt: skip
                total = db.execute("SELECT COALESCE(SUM(bytes), 0) FROM extents").fetchone()[0]
                victims = []
                for file, size in db.execute("SELECT file, bytes FROM extents ORDER BY used"):
                    if total <= self.capacity_bytes:
                        break
                    victims.append(file)
                    total -= size
                db.executemany("DELETE FROM extents WHERE file = ?", [(v,) for v in victims])
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        for victim in victims:
            try:
                os.remove(os.path.join(self.directory, "ranges", victim))
            except FileNotFoundError:
                pass


class _CachedFile:
    """The file-object side of a cached remote file; the remote file opens on the first miss."""

    def __init__(self, handler: _CacheHandler, path: str, key: str, size: int):
        self.handler, self.path, self.key, self._size = handler, path, key, size
        self.position, self.closed, self._remote = 0, False, None

    def _open_remote(self):
        if self._remote is None:
            self._remote = self.handler.base.open_input_file(self.path)
        return self._remote

    def read(self, nbytes=-1):
        stop = self._size if nbytes is None or nbytes < 0 else min(self._size, self.position + nbytes)
        data = self.handler.read(self._open_remote, self.key, self.position, stop) if stop > self.position else b""
        self.position += len(data)
        return data

    def seek(self, offset, whence=0):
        self.position = {0: offset, 1: self.position + offset, 2: self._size + offset}[whence]
        return self.position

    def tell(self):
        return self.position

    def size(self):
        return self._size

    def readable(self):
        return True

    def seekable(self):
        return True

    def close(self):
        self.closed = True
        if self._remote is not None:
            self._remote.close()


def _read_range(path: str, offset: int, length: int) -> bytes | None:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read(length)
    except FileNotFoundError:
        return None
    return data if len(data) == length else None


class CachedFileSystem(pafs.PyFileSystem):
    """Wraps a remote `pyarrow.fs` filesystem with a local cache of the byte ranges read through it.

    Args:
        remote: the filesystem of the datasets (an S3FileSystem, ...).
        directory: local directory of the cache (on an SSD); jobs on one machine may share it.
        capacity_bytes: the most bytes kept; least recently used ranges are evicted beyond it.

    `cached_bytes`, `remote_bytes` and `remote_requests` count this process's reads.
    """

    def __init__(self, remote: pafs.FileSystem, directory, capacity_bytes: int):
        if not (isinstance(capacity_bytes, int) and capacity_bytes > 0):
            raise ConfigError(f"{capacity_bytes=} must be a positive number of bytes")
        super().__init__(_CacheHandler(remote, os.path.abspath(os.fspath(directory)), capacity_bytes))

    @property
    def cached_bytes(self) -> int:
        return self.handler.cached_bytes

    @property
    def remote_bytes(self) -> int:
        return self.handler.remote_bytes

    @property
    def remote_requests(self) -> int:
        return self.handler.remote_requests

    def usage(self) -> tuple[int, int]:
        """(ranges, bytes) held in the cache now, by every process that shares it."""
        with self.handler.lock:
            return tuple(self.handler.db().execute("SELECT COUNT(*), COALESCE(SUM(bytes), 0) FROM extents").fetchone())
