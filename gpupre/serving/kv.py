"""Key-value stores with a time to live, where the serving side keeps logged features until labels come.

`KVStore` is the interface: `put_many` (one batched write, every key with the same TTL),
`get_many`, `delete`, `purge_expired`, `close`. Keys are str or bytes, values bytes.

- `SqliteKV`: the embedded default. One table (key, value, expiry) in WAL mode; each `put_many` is
  one transaction. Durability: with `synchronous="NORMAL"` (default) a killed process loses
  nothing that `put_many` returned for; a power cut may lose the last transactions. "FULL" syncs
  every transaction. `put_many` deletes expired rows now and then (see `SqliteKV`).
- `RedisKV`: redis-py, pipelined (`SET key value PX ttl` for every key in one round trip, `MGET`).
  While Redis is unreachable or refuses writes (out of memory, a read-only replica), writes are
  appended to a local spill file and replayed, in order, once it takes them again: nothing logged
  is lost. Processes that share a spill file (the default one of a server: host, port and
  database) take turns on it through a file lock. Every Redis error reaches the caller as a
  `GpupreError`.
"""

from __future__ import annotations

import abc
import contextlib
import hashlib
import math
import os
import re
import sqlite3
import threading
import time
import urllib.parse
import warnings

from .._checks import ensure_clock, ensure_instance, ensure_integer, ensure_path, is_real
from .._sqlite import connect
from ..errors import BackendUnavailable, ConfigError, DataError, GpupreError
from ._spill import SpillFile

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
    """ttl_s as a float, the same check for every store: Redis keys expire after a number of milliseconds,
    and their expiry in milliseconds since the epoch must fit in 63 bits."""
    if not is_real(ttl_s) or not 0 < ttl_s <= 1e15:
        raise ConfigError(f"ttl_s={ttl_s!r} must be a positive, finite number of seconds, at most 1e15")
    return float(ttl_s)


# expired rows that one put_many deletes at most, so that a backlog is cleared a batch at a time
_PURGE_BATCH = 10_000
_PURGE_SOME = "DELETE FROM kv WHERE rowid IN (SELECT rowid FROM kv WHERE expires <= ? LIMIT ?)"


class SqliteKV(KVStore):
    """The embedded store: SQLite in WAL mode, a transaction per batch, safe across threads.

    Expired rows are deleted by `put_many` itself, in its transaction: at most once per
    `purge_every_s` seconds of `clock`, at most 10,000 rows at a time (a full batch makes the next
    `put_many` purge again), so the table holds about one TTL and one interval of writes however
    long it runs. `purge_expired()` deletes every expired row now.

    Args:
        path: the database file (":memory:" for a private in-memory store).
        synchronous: SQLite's durability setting, "NORMAL" (default) or "FULL" (see the module).
        clock: seconds since the epoch (time.time); tests pass a fake clock.
        purge_every_s: the least time between two purges by `put_many`.
    """

    def __init__(self, path: str = ":memory:", synchronous: str = "NORMAL", clock=time.time,
                 purge_every_s: float = 60.0):  # fmt: skip
        super().__init__()
        if not (is_real(purge_every_s) and 0 <= purge_every_s < math.inf):
            raise ConfigError(f"SqliteKV purge_every_s={purge_every_s!r} must be a finite number of seconds >= 0")
        if synchronous not in ("NORMAL", "FULL"):
            raise ConfigError(f"synchronous={synchronous!r} must be 'NORMAL' or 'FULL'")
        ensure_path(path, "SqliteKV path", "a file path (or ':memory:')")
        self.path, self.clock, self.purge_every_s = path, ensure_clock(clock, "SqliteKV clock"), float(purge_every_s)
        self._next_purge = -math.inf
        try:
            self._db = connect(path, check_same_thread=False, isolation_level=None)
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
        pairs, ttl_s, now = _pairs(items), _ttl(ttl_s), self.clock()
        purging, purged = now >= self._next_purge, 0
        with self._using("put_many") as db:
            db.execute("BEGIN")
            db.executemany("INSERT OR REPLACE INTO kv VALUES (?, ?, ?)", [(k, v, now + ttl_s) for k, v in pairs])
            if purging:
                purged = db.execute(_PURGE_SOME, (now, _PURGE_BATCH)).rowcount
            db.execute("COMMIT")
            if purging:  # after the commit: a rolled back purge is tried again next time
                self._next_purge = now if purged == _PURGE_BATCH else now + self.purge_every_s
        self.stats["purged"] += purged
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

    A write Redis cannot take, because it does not answer or refuses it (out of memory, a read-only
    replica), is appended to a local spill file (`_spill.py` draws its layout) and replayed before
    the next operation that reaches Redis; a refused write also warns. Wrong credentials or missing
    permissions are a ConfigError at once: no retry fixes them. `close()` tries one last replay and
    warns, naming the file, if writes are still spilled: the next RedisKV on that file replays them.

    Args:
        url: a redis:// URL (default: localhost, port 6379).
        spill_path: the local file that writes go to while Redis does not take them (default: a file
            in the working directory named after the URL's host, port and database); replayed on
            reconnect, by whichever process sharing it gets there first.
        retries, backoff_s: attempts per operation (at least 1) before a write spills (reads
            raise), and the wait before the second (doubling after).
    """

    def __init__(self, url: str = "redis://127.0.0.1:6379/0", spill_path: str | None = None, retries: int = 3,
                 backoff_s: float = 0.05):  # fmt: skip
        super().__init__()
        ensure_instance(url, str, "RedisKV url", "a Redis URL such as 'redis://host:6379/0'")
        try:
            import redis
        except ImportError as e:
            raise BackendUnavailable(f"RedisKV needs redis-py ({e}); install it with `pip install 'gpupre[redis]'`") from e
        self._redis = redis
        if not (is_real(backoff_s) and 0 <= backoff_s < math.inf):  # an infinite wait would fail, not spill
            raise ConfigError(f"RedisKV backoff_s={backoff_s!r} must be a finite number of seconds >= 0")
        self.url, self.retries, self.backoff_s = url, ensure_integer(retries, "RedisKV retries"), float(backoff_s)
        self._shown_url = _without_password(url)
        try:
            self.client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=2)
        except ValueError as e:
            raise ConfigError(
                f"RedisKV url={self._shown_url!r} is not a Redis URL ({e}); pass one like 'redis://host:6379/0'"
            ) from e
        kw = self.client.connection_pool.connection_kwargs
        server = f"{kw.get('host', kw.get('path'))}:{kw.get('port', 6379)}/{kw.get('db', 0)}"
        name = f"gpupre-redis-{kw.get('port', 6379)}-{hashlib.sha1(server.encode()).hexdigest()[:8]}.spill"
        self.spill_path = os.path.abspath(os.fspath(spill_path or name))
        if not os.path.isdir(os.path.dirname(self.spill_path)):
            raise ConfigError(f"RedisKV spill_path={self.spill_path!r}: its directory does not exist; create it or pass another")
        self._spill_file = SpillFile(self.spill_path)
        errors = redis.exceptions
        self._unreachable = (errors.ConnectionError, errors.TimeoutError)
        self._fixes = _redis_fixes(redis)
        self._misconfigured = tuple(kind for kinds, misconfigured, _ in self._fixes if misconfigured
                                    for kind in kinds)  # fmt: skip
        self._refusals = (errors.OutOfMemoryError, errors.ReadOnlyError, errors.TryAgainError, errors.ClusterDownError)
        self.stats.update({"spilled": 0, "replayed": 0})
        self._lock = threading.Lock()
        self._closed = False
        self._refusing = False  # a refused write was warned about and Redis has taken none since

    @contextlib.contextmanager
    def _locked(self):
        """This store's lock; a closed store refuses."""
        with self._lock:
            if self._closed:
                raise ConfigError(f"RedisKV {self._shown_url} is closed; create a new RedisKV")
            yield

    @contextlib.contextmanager
    def _spill_lock(self):
        """The spill file's lock across processes, taken only to append to or replay the file."""
        try:
            with self._spill_file.lock():
                yield
        except OSError as e:
            raise BackendUnavailable(
                f"RedisKV {self._shown_url}: the spill file {self.spill_path} cannot be used ({e}) while Redis does "
                "not take writes; free the disk or pass another spill_path"
            ) from e

    def _passing(self, e) -> bool:
        """Whether waiting can fix `e`: Redis unreachable, or refusing writes for now (full, a replica, busy)."""
        # a pipeline's error reads "Command # 1 (SET ...) of pipeline caused error: BUSY ..."
        return isinstance(e, self._unreachable + self._refusals) or bool(_PASSING.search(str(e)))

    def _fix(self, e) -> str:
        """How to fix a Redis error that retrying does not: a misconfiguration, or a refusal that lasts."""
        if _BAD_DB in str(e):  # the SELECT of the URL's database, on connecting
            return ("the database number at the end of the URL (redis://host:port/db) must be below the server's "
                    "`databases` setting (16 by default): pass one that is")  # fmt: skip
        fixes = (fix for kinds, _, fix in self._fixes if isinstance(e, kinds))
        return next(fixes, "see the Redis server's log for why")

    def _retry(self, fn, what: str):
        """`fn()`, tried `retries` times while Redis fails in a way that passes; a misconfiguration is a ConfigError."""
        for attempt in range(self.retries):
            try:
                return fn()
            except self._redis.RedisError as e:
                if isinstance(e, self._misconfigured) or _BAD_DB in str(e):
                    raise ConfigError(f"Redis at {self._shown_url} refused {what} ({type(e).__name__}: {e}); "
                                      f"{self._fix(e)}") from e  # fmt: skip
                if attempt == self.retries - 1 or not self._passing(e):
                    raise
                time.sleep(self.backoff_s * 2**attempt)

    def _answer(self, fn, what: str):
        """`fn()` retried; a Redis that still fails is a BackendUnavailable that names the URL (reads cannot spill)."""
        try:
            return self._retry(fn, what)
        except self._unreachable as e:
            raise BackendUnavailable(f"Redis at {self._shown_url} did not answer {what} after {self.retries} attempts "
                                     f"({e}); start it or check the URL") from e  # fmt: skip
        except self._redis.RedisError as e:
            if not self._passing(e):
                raise DataError(f"Redis at {self._shown_url} rejected {what} ({type(e).__name__}: {e}); "
                                "see the Redis server's log for why") from e  # fmt: skip
            raise BackendUnavailable(f"Redis at {self._shown_url} refused {what} after {self.retries} attempts "
                                     f"({type(e).__name__}: {e}); {self._fix(e)}") from e  # fmt: skip

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
                self._retry(lambda: self._write(pairs, ttl_ms), "put_many")
                self._refusing = False
            except self._redis.RedisError as e:
                if not self._passing(e):  # a command Redis rejects: not spilled, every replay would be rejected
                    raise DataError(f"Redis at {self._shown_url} rejected put_many ({type(e).__name__}: {e}); it was not "
                                    "spilled, and keys before the rejected one may be written: check ttl_s and the "
                                    "sizes of the keys and values") from e  # fmt: skip
                self._spill(pairs, ttl_ms)  # refused for now, not lost: SETs replayed later overwrite any that landed
                if not isinstance(e, self._unreachable) and not self._refusing:
                    self._refusing = True
                    warnings.warn(f"Redis at {self._shown_url} refused a write ({type(e).__name__}: {e}); it and the "
                                  f"writes Redis refuses after it (not warned about again until it takes one) are "
                                  f"spilled to {self.spill_path} and replayed once Redis takes writes: "
                                  f"{self._fix(e)}", stacklevel=2)  # fmt: skip
        self._count_put(pairs)

    def _spill(self, pairs, ttl_ms: int) -> None:
        with self._spill_lock():
            dropped = self._spill_file.append(pairs, int(time.time() * 1000) + ttl_ms)
        if dropped:
            warnings.warn(f"{self.spill_path}: dropped the last {dropped} bytes, a spilled batch cut short (a process "
                          "killed while writing it), before appending; the batches before it are kept", stacklevel=3)  # fmt: skip
        self.stats["spilled"] += len(pairs)

    def _replay(self) -> None:
        """Write the spilled batches to Redis (with their remaining TTL), then drop the file.

        A last batch cut short (a process killed while spilling it) is dropped with a warning:
        its `put_many` never returned, and a cut value must not reach Redis.
        """
        if not os.path.exists(self.spill_path):  # the usual case: no lock, no file touched
            return
        with self._spill_lock():  # no other process appends while this one replays and removes
            if os.path.exists(self.spill_path):
                self._replay_locked()

    def _replay_locked(self) -> None:
        batches, cut = self._spill_file.read()
        now_ms, replayed = int(time.time() * 1000), 0
        for expires_ms, pairs in batches:
            if expires_ms <= now_ms:  # expired entries would be gone from Redis too
                continue
            try:
                self._retry(lambda: self._write(pairs, expires_ms - now_ms), "the replay of the spill file")
            except self._redis.RedisError as e:
                if self._passing(e):
                    raise
                # kept, it would stop the batches after it on every replay (put_many raises for such a batch)
                warnings.warn(f"{self.spill_path}: dropped a spilled batch of {len(pairs)} keys that Redis at "
                              f"{self._shown_url} rejects ({type(e).__name__}: {e})", stacklevel=4)  # fmt: skip
                continue
            replayed += len(pairs)
        if cut:
            warnings.warn(f"{self.spill_path}: dropped the last {cut} bytes, a spilled batch cut short (a process "
                          "killed while writing it); the batches before it were replayed", stacklevel=4)  # fmt: skip
        self._spill_file.remove()
        self.stats["replayed"] += replayed
        self._refusing = False

    def flush_spill(self) -> bool:
        """Replay the spill file now; True when nothing is left spilled."""
        with self._locked():
            try:
                self._replay()
            except self._redis.RedisError:
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
            self._try_replay()
            if os.path.exists(self.spill_path):  # still spilled: a key deleted now must not come back with its replay
                with self._spill_lock():
                    self._spill_file.drop_keys(set(keys))
            deleted = self._answer(lambda: self.client.delete(*keys), "delete") if keys else 0
        self.stats["deleted"] += deleted
        return deleted

    def _try_replay(self) -> None:
        try:
            self._replay()
        except self._redis.RedisError:
            pass

    def purge_expired(self) -> int:
        return 0  # Redis expires keys itself

    def close(self) -> None:
        """Replay the spill file if Redis takes it now, then close; writes still spilled are named in a warning."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._replay()
            except (self._redis.RedisError, GpupreError):  # a ConfigError was raised to the write already
                pass
            finally:
                self.client.close()
            try:
                left = len(self._spill_file.read()[0])
            except OSError:
                left = "some"
        if left:
            warnings.warn(f"RedisKV {self._shown_url} closed with {left} spilled batch(es) of writes that Redis did not "
                          f"take still in {self.spill_path}; a RedisKV with spill_path={self.spill_path!r} replays them "
                          "once Redis takes writes (until then readers do not find them)", stacklevel=2)  # fmt: skip


_BAD_DB = "DB index is out of range"  # Redis's answer to the SELECT of a database number it lacks
_PASSING = re.compile(r"(?:^|error: )(?:MISCONF|BUSY|NOREPLICAS)\b")  # refusals that pass, by their error code


def _redis_fixes(redis) -> tuple:
    """(redis-py errors, whether they are a misconfiguration, how to fix them) for the Redis errors
    that retrying does not fix: a misconfiguration is a ConfigError at once, a refusal is retried
    and spilled but lasts until someone acts."""
    errors = redis.exceptions
    return (
        ((errors.NoPermissionError,), True, "grant the URL's user the SET, MGET and DEL commands (Redis ACL) or use another user"),
        ((errors.AskError,), True, "the server is a Redis Cluster node and RedisKV talks to one server: point the URL at a standalone one"),
        # AuthenticationError is a ConnectionError in redis-py, but waiting does not fix a password
        ((errors.AuthenticationError, errors.AuthorizationError, errors.AuthenticationWrongNumberOfArgsError), True,
         "pass the right user and password in the URL (redis://user:password@host:port/db)"),
        ((errors.OutOfMemoryError,), False, "Redis is full: raise its maxmemory, or let it evict (maxmemory-policy volatile-ttl)"),
        ((errors.ReadOnlyError,), False, "the server is a read-only replica: point the URL at the primary"),
    )  # fmt: skip


def _without_password(url) -> str:
    """The URL as shown in messages: a password in it (user:password@, or ?password=) is replaced by ***."""
    try:
        parts = urllib.parse.urlsplit(url)
        if parts.password is not None:
            parts = parts._replace(netloc=f"{parts.username or ''}:***@{parts.netloc.rpartition('@')[2]}")
        query = [(k, "***" if k == "password" else v) for k, v in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)]
        return parts._replace(query=urllib.parse.urlencode(query, safe="*")).geturl()
    except (TypeError, ValueError, AttributeError):
        return url
