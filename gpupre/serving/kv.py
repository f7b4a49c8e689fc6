"""Key-value stores with a time to live, where the serving side keeps logged features until labels come.

`KVStore` is the interface: `put_many` (one batched write, every key with the same TTL),
`get_many`, `delete`, `purge_expired`, `close`. Keys are str or bytes, values bytes.

- `SqliteKV`: the embedded default. One table (key, value, expiry) in WAL mode; each `put_many` is
  one transaction. Durability: with `synchronous="NORMAL"` (default) a killed process loses
  nothing that `put_many` returned for; a power cut may lose the last transactions. "FULL" syncs
  every transaction.
- `RedisKV`: redis-py, pipelined (`SET key value PX ttl` for every key in one round trip, `MGET`).
  While Redis is unreachable, writes are appended to a local spill file and replayed, in order,
  once it answers again: nothing logged is lost. Processes that share a spill file (the default
  one of a server: host, port and database) take turns on it through a file lock.
"""

from __future__ import annotations

import abc
import contextlib
import fcntl
import hashlib
import math
import os
import sqlite3
import struct
import threading
import time
import warnings

from .._checks import ensure_integer, is_real
from ..errors import BackendUnavailable, ConfigError, DataError

__all__ = ["KVStore", "RedisKV", "SqliteKV"]


class KVStore(abc.ABC):
    """A key-value store whose entries expire `ttl_s` seconds after they are written.

    `stats` counts operations, keys and bytes written and read (keys plus values).
    """

    def __init__(self):
        self.stats = {"put_ops": 0, "keys_written": 0, "bytes_written": 0, "get_ops": 0, "keys_read": 0,
                      "bytes_read": 0, "deleted": 0, "purged": 0}  # fmt: skip

    @abc.abstractmethod
    def put_many(self, items, ttl_s: float) -> None:
        """Write `items` ({key: value} or (key, value) pairs) in one batch, each expiring after ttl_s."""

    @abc.abstractmethod
    def get_many(self, keys) -> list[bytes | None]:
        """The values of `keys`, in order; None for a key that is absent or expired."""

    @abc.abstractmethod
    def delete(self, keys) -> int:
        """Remove `keys`; returns how many were present."""

    @abc.abstractmethod
    def purge_expired(self) -> int:
        """Drop expired entries now; returns how many (stores that expire by themselves return 0)."""

    @abc.abstractmethod
    def close(self) -> None: ...

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _count_put(self, pairs: list[tuple[bytes, bytes]]) -> None:
        self.stats["put_ops"] += 1
        self.stats["keys_written"] += len(pairs)
        self.stats["bytes_written"] += sum(len(k) + len(v) for k, v in pairs)

    def _count_get(self, keys: list[bytes], values: list) -> None:
        self.stats["get_ops"] += 1
        self.stats["keys_read"] += len(keys)
        self.stats["bytes_read"] += sum(len(v) for v in values if v is not None)


def _pairs(items) -> list[tuple[bytes, bytes]]:
    try:
        pairs = list(items.items() if isinstance(items, dict) else items)
    except TypeError as e:
        raise ConfigError(f"put_many items must be a dict or (key, value) pairs, got {items!r}") from e
    out = []
    for pair in pairs:
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise ConfigError(f"put_many item {pair!r} must be a (key, value) pair; pass a dict or a list of pairs")
        key, value = pair
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise ConfigError(f"KV value for key {key!r} must be bytes, got {type(value).__name__}; serialize it first")
        out.append((_key(key), bytes(value)))
    return out


def _keys(keys, what: str) -> list[bytes]:
    if isinstance(keys, (str, bytes, bytearray)) or not hasattr(keys, "__iter__"):
        raise ConfigError(f"{what} takes an iterable of keys, got {keys!r}; wrap a single key in a list")
    return [_key(k) for k in keys]


def _key(key) -> bytes:
    if isinstance(key, str):
        return key.encode()
    if isinstance(key, (bytes, bytearray)):
        return bytes(key)
    raise ConfigError(f"KV key {key!r} must be str or bytes, got {type(key).__name__}")


def _ttl(ttl_s) -> float:
    """ttl_s as a float, the same check for every store: Redis keys expire after a number of milliseconds."""
    if not is_real(ttl_s) or not 0 < ttl_s < math.inf:
        raise ConfigError(f"ttl_s={ttl_s!r} must be a positive, finite number of seconds")
    return float(ttl_s)


class SqliteKV(KVStore):
    """The embedded store: SQLite in WAL mode, a transaction per batch, safe across threads.

    Args:
        path: the database file (":memory:" for a private in-memory store).
        synchronous: SQLite's durability setting, "NORMAL" (default) or "FULL" (see the module).
        clock: seconds since the epoch (time.time); tests pass a fake clock.
    """

    def __init__(self, path: str = ":memory:", synchronous: str = "NORMAL", clock=time.time):
        super().__init__()
        if synchronous not in ("NORMAL", "FULL"):
            raise ConfigError(f"synchronous={synchronous!r} must be 'NORMAL' or 'FULL'")
        if not isinstance(path, (str, os.PathLike)):
            raise ConfigError(f"SqliteKV path={path!r} must be a file path (or ':memory:')")
        self.path, self.clock = path, clock
        try:
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={synchronous}")
            self._db.execute("CREATE TABLE IF NOT EXISTS kv (key BLOB PRIMARY KEY, value BLOB NOT NULL, expires REAL NOT NULL)")
            self._db.execute("CREATE INDEX IF NOT EXISTS kv_expires ON kv (expires)")
        except sqlite3.Error as e:
            raise DataError(f"{path}: cannot open the SQLite KV store ({e}); check the path and its permissions") from e
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def _using(self, what: str):
        """The connection, under the lock; a failed `what` is rolled back and raised as a DataError,
        so the store stays usable (no transaction is left open)."""
        with self._lock:
            if self._db is None:
                raise ConfigError(f"SqliteKV {self.path!r} is closed; {what} needs an open store: create a new SqliteKV")
            try:
                yield self._db
            except sqlite3.Error as e:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise DataError(
                    f"SqliteKV {self.path!r}: {what} failed and was rolled back ({e}); nothing of it was written. "
                    "If the database is locked, another connection held the write lock too long: retry"
                ) from e

    def put_many(self, items, ttl_s: float) -> None:
        pairs, expires = _pairs(items), self.clock() + _ttl(ttl_s)
        with self._using("put_many") as db:
            db.execute("BEGIN")
            db.executemany("INSERT OR REPLACE INTO kv VALUES (?, ?, ?)", [(k, v, expires) for k, v in pairs])
            db.execute("COMMIT")
        self._count_put(pairs)

    def get_many(self, keys) -> list[bytes | None]:
        keys = _keys(keys, "get_many")
        found = {}
        now = self.clock()
        with self._using("get_many") as db:
            for start in range(0, len(keys), 500):  # SQLite's limit on bound parameters
                chunk = keys[start : start + 500]
                marks = ",".join("?" * len(chunk))
                query = f"SELECT key, value FROM kv WHERE key IN ({marks}) AND expires > ?"
                found.update(db.execute(query, (*chunk, now)).fetchall())
        values = [found.get(k) for k in keys]
        self._count_get(keys, values)
        return values

    def delete(self, keys) -> int:
        keys = [(k,) for k in _keys(keys, "delete")]
        with self._using("delete") as db:
            before = db.total_changes
            db.execute("BEGIN")
            db.executemany("DELETE FROM kv WHERE key = ?", keys)
            db.execute("COMMIT")
            deleted = db.total_changes - before
        self.stats["deleted"] += deleted
        return deleted

    def purge_expired(self) -> int:
        with self._using("purge_expired") as db:
            purged = db.execute("DELETE FROM kv WHERE expires <= ?", (self.clock(),)).rowcount
        self.stats["purged"] += purged
        return purged

    def __len__(self) -> int:
        with self._using("len") as db:
            return db.execute("SELECT COUNT(*) FROM kv WHERE expires > ?", (self.clock(),)).fetchone()[0]

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None


class RedisKV(KVStore):
    """Redis through redis-py: pipelined writes with `PX` expiry, `MGET` reads.

    Args:
        url: a redis:// URL (default: localhost, port 6379).
        spill_path: the local file that writes go to while Redis is unreachable (default: a file
            in the working directory named after the URL's host, port and database); replayed on
            reconnect, by whichever process sharing it gets there first.
        retries, backoff_s: attempts per operation (at least 1) before a write spills (reads
            raise), and the wait before the second (doubling after).
    """

    def __init__(self, url: str = "redis://127.0.0.1:6379/0", spill_path: str | None = None, retries: int = 3,
                 backoff_s: float = 0.05):  # fmt: skip
        super().__init__()
        try:
            import redis
        except ImportError as e:
            raise BackendUnavailable(f"RedisKV needs redis-py ({e}); install it with `pip install 'gpupre[redis]'`") from e
        self._redis = redis
        if not (is_real(backoff_s) and backoff_s >= 0):
            raise ConfigError(f"RedisKV backoff_s={backoff_s!r} must be a number of seconds >= 0")
        self.url, self.retries, self.backoff_s = url, ensure_integer(retries, "RedisKV retries"), float(backoff_s)
        try:
            self.client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=2)
        except ValueError as e:
            raise ConfigError(f"RedisKV url={url!r} is not a Redis URL ({e}); pass one like 'redis://host:6379/0'") from e
        kw = self.client.connection_pool.connection_kwargs
        server = f"{kw.get('host', kw.get('path'))}:{kw.get('port', 6379)}/{kw.get('db', 0)}"
        name = f"gpupre-redis-{kw.get('port', 6379)}-{hashlib.sha1(server.encode()).hexdigest()[:8]}.spill"
        self.spill_path = os.path.abspath(os.fspath(spill_path or name))
        if not os.path.isdir(os.path.dirname(self.spill_path)):
            raise ConfigError(f"RedisKV spill_path={self.spill_path!r}: its directory does not exist; create it or pass another")
        self.stats.update({"spilled": 0, "replayed": 0})
        self._lock = threading.Lock()
        self._closed = False

    @contextlib.contextmanager
    def _locked(self):
        """This store's lock; a closed store refuses."""
        with self._lock:
            if self._closed:
                raise ConfigError(f"RedisKV {self.url} is closed; create a new RedisKV")
            yield

    @contextlib.contextmanager
    def _spill_file(self):
        """The spill file's lock across processes, taken only to append to or replay the file."""
        try:
            with open(self.spill_path + ".lock", "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                yield
        except OSError as e:
            raise BackendUnavailable(
                f"RedisKV {self.url}: the spill file {self.spill_path} cannot be used ({e}) while Redis is "
                "unreachable; free the disk or pass another spill_path"
            ) from e

    def _retry(self, fn):
        for attempt in range(self.retries):
            try:
                return fn()
            except (self._redis.ConnectionError, self._redis.TimeoutError):
                if attempt == self.retries - 1:
                    raise
                time.sleep(self.backoff_s * 2**attempt)

    def _answer(self, fn, what: str):
        """`fn()` retried; Redis still down is a BackendUnavailable that names the URL (reads cannot spill)."""
        try:
            return self._retry(fn)
        except (self._redis.ConnectionError, self._redis.TimeoutError) as e:
            raise BackendUnavailable(
                f"Redis at {self.url} did not answer {what} after {self.retries} attempts ({e}); start it or check the URL"
            ) from e

    def _write(self, pairs, ttl_ms: int) -> None:
        pipe = self.client.pipeline(transaction=False)
        for k, v in pairs:
            pipe.set(k, v, px=ttl_ms)
        pipe.execute()

    def put_many(self, items, ttl_s: float) -> None:
        pairs, ttl_s = _pairs(items), _ttl(ttl_s)
        ttl_ms = max(1, int(ttl_s * 1000))
        with self._locked():
            try:
                self._replay()
                self._retry(lambda: self._write(pairs, ttl_ms))
            except (self._redis.ConnectionError, self._redis.TimeoutError):
                self._spill(pairs, ttl_ms)
        self._count_put(pairs)

    def _spill(self, pairs, ttl_ms: int) -> None:
        """Append a batch: [count, expiry in ms since the epoch] then (key length, value length, key, value)*."""
        expires_ms = int(time.time() * 1000) + ttl_ms
        parts = [struct.pack("<IQ", len(pairs), expires_ms)]
        for k, v in pairs:
            parts += [struct.pack("<II", len(k), len(v)), k, v]
        with self._spill_file(), open(self.spill_path, "ab") as f:
            f.write(b"".join(parts))
            f.flush()
            os.fsync(f.fileno())
        self.stats["spilled"] += len(pairs)

    def _replay(self) -> None:
        """Write the spilled batches to Redis (with their remaining TTL), then drop the file.

        A last batch cut short (a process killed while spilling it) is dropped with a warning:
        its `put_many` never returned, and a cut value must not reach Redis.
        """
        if not os.path.exists(self.spill_path):  # the usual case: no lock, no file touched
            return
        with self._spill_file():  # no other process appends while this one replays and removes
            if os.path.exists(self.spill_path):
                self._replay_locked()

    def _replay_locked(self) -> None:
        with open(self.spill_path, "rb") as f:
            data = f.read()
        batches, cut = _spilled_batches(data)
        now_ms, replayed = int(time.time() * 1000), 0
        for expires_ms, pairs in batches:
            if expires_ms > now_ms:  # expired entries would be gone from Redis too
                self._retry(lambda: self._write(pairs, expires_ms - now_ms))
                replayed += len(pairs)
        if cut:
            warnings.warn(f"{self.spill_path}: dropped the last {cut} bytes, a spilled batch cut short (a process "
                          "killed while writing it); the batches before it were replayed", stacklevel=4)  # fmt: skip
        os.remove(self.spill_path)
        self.stats["replayed"] += replayed

    def flush_spill(self) -> bool:
        """Replay the spill file now; True when nothing is left spilled."""
        with self._locked():
            try:
                self._replay()
            except (self._redis.ConnectionError, self._redis.TimeoutError):
                return False
        return True

    def get_many(self, keys) -> list[bytes | None]:
        keys = _keys(keys, "get_many")
        with self._locked():
            self._try_replay()  # reads see what was spilled
            values = self._answer(lambda: self.client.mget(keys), "get_many") if keys else []
        self._count_get(keys, values)
        return values

    def delete(self, keys) -> int:
        keys = _keys(keys, "delete")
        with self._locked():
            self._try_replay()  # a spilled key deleted now must not come back with a later replay
            deleted = self._answer(lambda: self.client.delete(*keys), "delete") if keys else 0
        self.stats["deleted"] += deleted
        return deleted

    def _try_replay(self) -> None:
        try:
            self._replay()
        except (self._redis.ConnectionError, self._redis.TimeoutError):
            pass

    def purge_expired(self) -> int:
        return 0  # Redis expires keys itself

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self.client.close()


def _spilled_batches(data: bytes) -> tuple[list, int]:
    """([(expiry in ms, [(key, value)])] of the whole batches in spill file bytes, bytes left after them).

    Every length is checked against what is left, so a batch cut short is left over, never read.
    """
    batches, at = [], 0
    while len(data) - at >= 12:
        count, expires_ms = struct.unpack_from("<IQ", data, at)
        end, pairs = at + 12, []
        for _ in range(count):
            if len(data) - end < 8:
                return batches, len(data) - at
            kl, vl = struct.unpack_from("<II", data, end)
            if len(data) - end - 8 < kl + vl:
                return batches, len(data) - at
            pairs.append((data[end + 8 : end + 8 + kl], data[end + 8 + kl : end + 8 + kl + vl]))
            end += 8 + kl + vl
        batches.append((expires_ms, pairs))
        at = end
    return batches, len(data) - at
