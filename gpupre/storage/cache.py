"""The SSD cache tier: byte ranges of remote files kept on local disk, shared by the jobs of a machine.

`CachedFileSystem(remote, directory, capacity_bytes)` is a `pyarrow.fs` filesystem. Every range
read through it (the coalesced column chunks of a projection) is stored as one file under
`directory` and indexed in a SQLite table of extents::

    extents(key, start, stop, file, bytes, used)    key: the remote file's path, size and mtime

A read is served from the extents that cover it, and only the gaps go to the remote store (gaps
close together in one request), so a second job that reads the hot features of a dataset fetches
(almost) nothing. When the cache holds more than `capacity_bytes`, the least recently used
extents are dropped. Several processes may share one directory: the index is a WAL-mode SQLite
database, range files are written under a temporary name and renamed, a gap that two processes
missed at once is kept once, a range evicted while another process reads it is read again from
the remote store, and files a killed process left behind are swept away. A remote file that
changes size or modification time gets a new key (an object store's mtime has one-second
resolution: rewrite a dataset under a new path, not in place).
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

from .._checks import ensure_path, is_integer
from .._sqlite import connect
from ..errors import ConfigError, DataError
from .iostats import DelegatingHandler, HandlerFileSystem

__all__ = ["CachedFileSystem"]

_TOUCH_S = 1.0  # an extent's last-use time is written again only when older than this
_SWEEP_S = 3600.0  # how often, and after how long, files that no extent names are removed


class _CacheHandler(DelegatingHandler):
    counters = ("cached_bytes", "remote_bytes", "remote_requests")
    per_process = ("_db",)  # a SQLite connection serves one process

    def __init__(self, base: pafs.FileSystem, directory: str, capacity_bytes: int, hole_size_limit: int):
        super().__init__(base)
        self.directory, self.capacity_bytes, self.hole_size_limit = directory, capacity_bytes, hole_size_limit

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
            db = connect(os.path.join(self.directory, "index.sqlite"), isolation_level=None, check_same_thread=False)
            db.execute("CREATE TABLE IF NOT EXISTS extents (key TEXT, start INTEGER, stop INTEGER, "
                       "file TEXT PRIMARY KEY, bytes INTEGER, used REAL)")  # fmt: skip
            db.execute("CREATE INDEX IF NOT EXISTS by_key ON extents (key, start)")
            db.execute("CREATE INDEX IF NOT EXISTS by_used ON extents (used)")
            self._db = db
            self._sweep()
        return self._db

    def read(self, remote, key: str, start: int, stop: int) -> bytes:
        """Bytes [start, stop) of a remote file: cached extents where they exist, the rest fetched.

        Gaps separated by cached runs shorter than `hole_size_limit` are fetched as one range
        (one request costs more than re-reading a small piece); only the gaps are stored.
        """
        try:
            with self.lock:
                rows = self.db().execute(
                    "SELECT start, stop, file, used FROM extents WHERE key = ? AND stop > ? AND start < ? ORDER BY start",
                    (key, start, stop),
                ).fetchall()
        except (OSError, sqlite3.Error) as e:  # a broken index costs speed, never data: read past it
            self._broken(e)
            return self._fetch(remote, key, start, stop, [])
        segments, position, now = [], start, time.time()  # (start, stop, extent file, its start) or a gap
        stale = []  # extents used, whose last-use time is worth a write
        for first, last, name, used in rows:
            if last <= position:
                continue
            if first > position:
                segments.append((position, min(first, stop), None, None))
                position = min(first, stop)
            if position >= stop:
                break
            segments.append((position, min(last, stop), name, first))
            position = min(last, stop)
            if now - used > _TOUCH_S:
                stale.append(name)
        if position < stop:
            segments.append((position, stop, None, None))
        pieces, i = [], 0
        while i < len(segments):
            a, b, name, first = segments[i]
            if name is not None:
                data = _read_range(os.path.join(self.directory, "ranges", name), a - first, b - a)
                if data is None:  # evicted by another process since the lookup, or the file was lost
                    self._forget(name)
                    data = self._fetch(remote, key, a, b, [(a, b)])
                else:
                    with self.lock:
                        self.cached_bytes += len(data)
                pieces.append(data)
                i += 1
                continue
            j = i  # the gap i, and the gaps after it across short cached runs, in one request
            while True:
                k = j + 1  # past the cached pieces after gap j (adjacent extents make a run of several)
                while k < len(segments) and segments[k][2] is not None:
                    k += 1
                if k == len(segments) or segments[k][0] - segments[j][1] >= self.hole_size_limit:
                    break
                j = k
            gaps = [(g[0], g[1]) for g in segments[i : j + 1] if g[2] is None]
            pieces.append(self._fetch(remote, key, a, segments[j][1], gaps))
            i = j + 1
        if stale:
            try:
                with self.lock:
                    db = self.db()
                    db.execute("BEGIN")
                    db.executemany("UPDATE extents SET used = ? WHERE file = ?", [(now, n) for n in stale])
                    db.execute("COMMIT")
            except (OSError, sqlite3.Error) as e:
                self._broken(e)
        return b"".join(pieces)

    def _forget(self, name: str) -> None:
        """Drop the extent of the range file `name`, which is gone: storing the range again would
        otherwise find the range held and keep the file missing."""
        try:
            with self.lock:
                self.db().execute("DELETE FROM extents WHERE file = ?", (name,))
        except (OSError, sqlite3.Error) as e:
            self._broken(e)

    def _broken(self, error) -> None:
        warnings.warn(f"gpupre cache {self.directory}: {error}; reading from the remote store (remove the "
                      "directory to start a new cache)", RuntimeWarning, stacklevel=3)  # fmt: skip

    def _fetch(self, remote, key: str, start: int, stop: int, gaps) -> bytes:
        """One remote request for [start, stop); the `gaps` in it are stored in the cache."""
        data = remote().read_at(stop - start, start)
        with self.lock:
            self.remote_bytes += len(data)
            self.remote_requests += 1
        if len(data) == stop - start:
            ranges = [(a, data[a - start : b - start]) for a, b in gaps if 0 < b - a <= self.capacity_bytes]
            try:
                if ranges:
                    self._store(key, ranges)
            except (OSError, sqlite3.Error) as e:  # a full or broken cache disk costs speed, never data
                warnings.warn(f"gpupre cache {self.directory}: range not stored ({e})", RuntimeWarning, stacklevel=2)
        return data

    def _store(self, key: str, ranges) -> None:
        """Keep (start, bytes) ranges of `key`, unless another process stored them first; then evict."""
        names = []
        for _, data in ranges:
            name = f"{key[:2]}/{uuid.uuid4().hex}.bin"
            path = os.path.join(self.directory, "ranges", name)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path + ".tmp", "wb") as f:
                f.write(data)
            os.replace(path + ".tmp", path)
            names.append(name)
        with self.lock:
            db = self.db()
            victims, evicted, now = [], [], time.time()
            db.execute("BEGIN IMMEDIATE")  # one writer at a time across processes: insert and evict together
            try:
                for name, (start, data) in zip(names, ranges):
                    stop = start + len(data)
                    held = "SELECT 1 FROM extents WHERE key = ? AND start <= ? AND stop >= ? LIMIT 1"
                    if db.execute(held, (key, start, stop)).fetchone():
                        victims.append(name)  # a concurrent miss of the same gap stored it already
                    else:
                        row = (key, start, stop, name, len(data), now)
                        db.execute("INSERT INTO extents VALUES (?, ?, ?, ?, ?, ?)", row)
                total = db.execute("SELECT COALESCE(SUM(bytes), 0) FROM extents").fetchone()[0]
                for file, size in db.execute("SELECT file, bytes FROM extents ORDER BY used"):
                    if total <= self.capacity_bytes:
                        break
                    evicted.append(file)
                    total -= size
                db.executemany("DELETE FROM extents WHERE file = ?", [(v,) for v in evicted])
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                victims = names
                raise
            finally:
                for victim in victims:
                    _remove(os.path.join(self.directory, "ranges", victim))
        for victim in evicted:
            _remove(os.path.join(self.directory, "ranges", victim))

    def _sweep(self) -> None:
        """Remove range files no extent names (left by a process killed between write and insert).

        Runs at most once per `_SWEEP_S` per cache directory; files younger than that may belong
        to a write in progress and are left alone.
        """
        marker = os.path.join(self.directory, "swept")
        now = time.time()
        try:
            if now - os.path.getmtime(marker) < _SWEEP_S:
                return
        except FileNotFoundError:
            pass
        with open(marker, "a"):
            os.utime(marker)
        known = {row[0] for row in self._db.execute("SELECT file FROM extents")}
        root = os.path.join(self.directory, "ranges")
        for folder, _, files in os.walk(root):
            for file in files:
                path = os.path.join(folder, file)
                name = os.path.relpath(path, root)
                try:
                    if name not in known and now - os.path.getmtime(path) > _SWEEP_S:
                        os.remove(path)
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


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def _read_range(path: str, offset: int, length: int) -> bytes | None:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read(length)
    except FileNotFoundError:
        return None
    return data if len(data) == length else None


class CachedFileSystem(HandlerFileSystem):
    """Wraps a remote `pyarrow.fs` filesystem with a local cache of the byte ranges read through it.

    Args:
        remote: the filesystem of the datasets (an S3FileSystem, ...).
        directory: local directory of the cache (on an SSD); jobs on one machine may share it.
        capacity_bytes: the most bytes kept; least recently used ranges are evicted beyond it.
        hole_size_limit: a read whose missing parts are separated by cached pieces shorter than
            this fetches them in one request (pyarrow's `CacheOptions.hole_size_limit` for the
            same store is a good value: the bytes one request's latency is worth).

    `cached_bytes`, `remote_bytes` and `remote_requests` count this process's reads.

    Raises:
        ConfigError: `remote` is not a pyarrow filesystem, `directory` is no path, or it (or a parent)
            is a file, or a size is out of range.
    """

    def __init__(self, remote: pafs.FileSystem, directory, capacity_bytes: int, hole_size_limit: int = 1 << 20):
        if not (is_integer(capacity_bytes) and capacity_bytes > 0):
            raise ConfigError(f"{capacity_bytes=} must be a positive number of bytes")
        if not (is_integer(hole_size_limit) and hole_size_limit >= 0):
            raise ConfigError(f"{hole_size_limit=} must be a number of bytes >= 0")
        capacity_bytes, hole_size_limit = int(capacity_bytes), int(hole_size_limit)
        directory = os.path.abspath(ensure_path(directory, "cache directory", "the path of a directory on a local SSD"))
        existing = directory
        while not os.path.exists(existing):
            existing = os.path.dirname(existing)
        if not os.path.isdir(existing):
            raise ConfigError(
                f"cache directory {directory}: {existing} is a file, not a directory; pass the path of a "
                "directory (it is made if missing) on a local SSD"
            )
        super().__init__(_CacheHandler(remote, directory, capacity_bytes, hole_size_limit))

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
        """(ranges, bytes) held in the cache now, by every process that shares it.

        Raises:
            DataError: the cache's index cannot be read (reads go past it to the remote store).
        """
        try:
            with self.handler.lock:
                return tuple(self.handler.db().execute("SELECT COUNT(*), COALESCE(SUM(bytes), 0) FROM extents").fetchone())
        except (OSError, sqlite3.Error) as e:
            raise DataError(f"gpupre cache {self.handler.directory}: its index cannot be read ({e}); remove the directory") from e
