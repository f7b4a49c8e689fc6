"""Writers of joined training data: flattened Parquet, partitioned by the hour the request was served.

`DedupWriter` writes the de-duplicated layout, one row per request::

    request_id, time               the request (scalars)
    <user feature>                 user and context features, once per request (flattened)
    item_id                        list<int64>            one element per logged impression
    <item feature>                 list<float32> (dense) or list<list<int64>> (sparse), per impression
    <label>                        list<float32>          per impression

`TabularWriter` (the baseline) writes one row per impression, user features repeated on each.
Both store the schema (with feature groups) in the file's metadata, so `gp.Dataset` reads either.

Files land in `<path>/hour=YYYY-MM-DDTHH/part-<commit time>-<random>.parquet`, each written under
a `.tmp` name (which `gp.Dataset` does not read) and synced to disk, then committed, then renamed
into place. A ledger (`<path>/_ledger.sqlite`) records every committed file and the requests in it,
in one transaction: a replayed request is recognized and not written twice. When the writer opens
again, a file left by a process that died before its ledger commit is removed (its requests are
not in the ledger, so replaying their events writes them once), and one that died between commit
and rename is renamed into place; files not named as the writer names its own are left alone, and
files under `hour=*/` without a ledger are an error, not a crash's leftovers. The ledger also
keeps the dataset's type of request id (int or str), so a writer opened again refuses the other
type (str "1" and int 1 would be one request in the ledger and two types in the files), and its
layout (the writer's class), features and labels, so a writer opened again with others is a
ConfigError (its files would make a dataset `gp.Dataset` refuses).
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import glob
import json
import os
import re
import sqlite3
import time
import uuid
import warnings
from typing import NamedTuple

import numpy as np
import pyarrow as pa

from .._checks import ensure_instance
from .._sqlite import connect
from ..batch import offsets_of, one_array
from ..errors import ConfigError, DataError
from ..schema import DEDUP_METADATA_KEY, METADATA_KEY, REQUEST_GROUPS, Feature, Schema
from ..storage.write import write_table
from .codec import FeatureCodec, ensure_schemas

__all__ = ["DedupWriter", "JoinedRequest", "TabularWriter"]

EXTRAS = ("request_id", "time", "item_id")
HOUR_FORMAT = "%Y-%m-%dT%H"
PART_TMP = re.compile(r"part-\d{20}-[0-9a-f]{8}\.parquet\.tmp")  # a file _commit has not renamed into place


class JoinedRequest(NamedTuple):
    """One request's joined impressions, as the `LabelJoiner` hands them to a writer."""

    request_id: object  # int or str
    time: float  # when the request was served, seconds since the epoch
    user: bytes | None  # FeatureCodec bytes of the user (and context) features
    item_ids: np.ndarray  # int64 [n], the impressions
    items: list  # FeatureCodec bytes of each impression's item features
    labels: np.ndarray  # float32 [n, L]


class _HourlyWriter:
    """Buffers joined requests per hour and commits them as Parquet files with a ledger.

    Args:
        path: the output directory.
        item_schema, user_schema: the loggers' schemas (user_schema None: no user features).
        labels: the label names, in the order of each event's labels.
        requests_per_file: an hour's buffer is committed as a file when it holds this many
            requests (and on `flush()`/`close()`).
        row_group_rows: rows per row group (requests for the de-dup layout).

    `request_id_type` is the dataset's type of request id (int or str; None before the first
    request), kept in the ledger.
    """

    def __init__(self, path, item_schema: Schema, user_schema: Schema | None = None, labels=("click",),
                 requests_per_file: int = 20_000, row_group_rows: int = 4096):  # fmt: skip
        ensure_instance(path, (str, os.PathLike), f"{type(self).__name__} path", "the output directory's path")
        ensure_schemas(type(self).__name__, item_schema, user_schema)
        for name, value in (("requests_per_file", requests_per_file), ("row_group_rows", row_group_rows)):
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{type(self).__name__} {name}={value!r} must be a positive integer")
        try:
            self.labels = (labels,) if isinstance(labels, str) else tuple(labels)
        except TypeError:  # not a name nor names: refused below
            self.labels = ()
        if not self.labels or not all(isinstance(name, str) for name in self.labels):
            raise ConfigError(f"{type(self).__name__} needs at least one label name, and names are strings: "
                              f"got labels={labels!r}")  # fmt: skip
        self.path = os.path.abspath(os.fspath(path))
        self.requests_per_file, self.row_group_rows = requests_per_file, row_group_rows
        self.items_codec = FeatureCodec(item_schema)
        self.user_codec = None if user_schema is None else FeatureCodec(user_schema)
        user = [] if user_schema is None else [Feature(f.name, f.kind, f.group if f.group in REQUEST_GROUPS else "user")
                                               for f in user_schema]  # fmt: skip
        self.schema = Schema(tuple(user) + tuple(Feature(f.name, f.kind, "item") for f in item_schema), self.labels,
                             EXTRAS)  # fmt: skip
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise ConfigError(f"{type(self).__name__} path {self.path!r} is a file; pass a directory, new or one it wrote")
        try:
            os.makedirs(self.path, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"{type(self).__name__} path {self.path!r} cannot be made a directory ({e}); pass another") from e
        self._lock = _lock_path(self.path, type(self).__name__)
        ledger = os.path.join(self.path, "_ledger.sqlite")
        data = sorted(glob.glob(os.path.join(self.path, "hour=*", "*")))
        if data and not os.path.exists(ledger):  # without it, committed files look like a crash's leftovers
            self._lock.close()
            raise ConfigError(
                f"{type(self).__name__} path {self.path!r} holds {len(data)} files under hour=*/ (e.g. {data[0]}) but "
                "no _ledger.sqlite, the ledger that records which files are committed; nothing was removed: "
                "restore the ledger, or write to a new directory"
            )
        try:
            self._ledger = connect(ledger)
            self._ledger.execute("CREATE TABLE IF NOT EXISTS files (name TEXT PRIMARY KEY)")
            self._ledger.execute("CREATE TABLE IF NOT EXISTS requests (id TEXT PRIMARY KEY, time REAL)")
            self._ledger.execute("CREATE INDEX IF NOT EXISTS requests_time ON requests (time)")
            self._ledger.execute("CREATE TABLE IF NOT EXISTS dataset (key TEXT PRIMARY KEY, value TEXT)")
            stored = dict(self._ledger.execute("SELECT key, value FROM dataset"))
        except sqlite3.Error as e:
            self._lock.close()
            raise DataError(
                f"{ledger}: the ledger of committed files cannot be opened ({e}); it is corrupt or not a ledger: "
                "restore it, or write to a new path"
            ) from e
        problem = self._layout_problem(stored)
        if problem:
            self._ledger.close()
            self._lock.close()
            raise ConfigError(f"{self.path} holds another dataset than this {type(self).__name__} writes: {problem}; "
                              "open the writer the dataset was written with, or write to a new directory")  # fmt: skip
        self._pending: dict[str, dict] = {}  # hour -> {request id: JoinedRequest}
        self.request_id_type = {"int": int, "str": str, None: None}[stored.get("request_id_type")]
        self.stats = {"files": 0, "requests": 0, "rows": 0, "bytes": 0, "already_written": 0,
                      "removed_uncommitted": self._recover(data)}  # fmt: skip

    def _layout_problem(self, stored: dict) -> str:
        """How the dataset the ledger describes differs from what this writer writes ("" if it does not)."""
        problems = []
        if stored.get("layout", type(self).__name__) != type(self).__name__:
            problems.append(f"it was written by a {stored['layout']}")
        theirs = Schema.from_json(stored["schema"]) if "schema" in stored else self.schema
        if theirs.labels != self.schema.labels:
            problems.append(f"its labels are {list(theirs.labels)}, this writer's {list(self.schema.labels)}")
        if theirs.features != self.schema.features:
            there, here = _differing(theirs, self.schema), _differing(self.schema, theirs)
            problems.append(f"its features differ: the dataset has {there or 'no others'}, this writer {here or 'no others'}"
                            if there or here else "its features are in another order")  # fmt: skip
        return "; ".join(problems)

    def _recover(self, found: list[str]) -> int:
        """Rename committed files left under their .tmp name; of the files `found` under hour=*/,
        remove the .tmp files of this writer's naming never committed (a crash before the commit),
        with a warning. Other files are left alone: they are not a writer's leftovers."""
        committed = {name for (name,) in self._ledger.execute("SELECT name FROM files")}
        for name in committed:
            final = os.path.join(self.path, name)
            if not os.path.exists(final) and os.path.exists(final + ".tmp"):
                os.replace(final + ".tmp", final)
        unknown = [f for f in found if os.path.relpath(f, self.path).removesuffix(".tmp") not in committed]
        leftovers = [f for f in unknown if PART_TMP.fullmatch(os.path.basename(f))]
        for found in leftovers:
            os.remove(found)
        if leftovers:
            warnings.warn(
                f"{self.path}: removed {len(leftovers)} uncommitted files (.tmp) left by a writer that stopped before "
                "committing them; their requests are not in the ledger, so replaying their events writes them once",
                stacklevel=3,
            )
        foreign = [f for f in unknown if f.endswith(".parquet")]
        if foreign:
            warnings.warn(
                f"{self.path}: {len(foreign)} Parquet files under hour=*/ are not in the ledger, so no writer wrote "
                f"them (e.g. {foreign[0]}); gp.Dataset({self.path!r}) reads them as training data: move them out "
                "if they are not",
                stacklevel=3,
            )
        return len(leftovers)

    def _open_ledger(self) -> sqlite3.Connection:
        if self._ledger is None:
            raise ConfigError(f"this {type(self).__name__} of {self.path!r} is closed; open a new one on the path")
        return self._ledger

    def contains(self, request_id) -> bool:
        """Whether the request is already written (or buffered to be): its events are replays."""
        return bool(self._held([str(request_id)]))

    def write(self, requests) -> None:
        """Buffer joined requests; an hour whose buffer is full is committed.

        A request the writer already holds (committed, or buffered by this or an earlier call) is
        a replay: it is skipped, counted in `stats["already_written"]`, and the first one stays.

        Raises:
            ConfigError: the writer is closed.
            DataError: request ids of both types (integers and strings) in one dataset, or a
                request that is not a well-formed `JoinedRequest`; nothing of the call is buffered.
        """
        self._open_ledger()
        requests = list(requests)
        hours = [self._hour(request) for request in requests]  # every request checked before any is buffered
        kinds = {str if isinstance(r.request_id, str) else int for r in requests} | {self.request_id_type} - {None}
        if len(kinds) > 1:  # checked before any is buffered: a batch is taken whole or not at all
            raise DataError(
                f"request ids of both types (integers and strings) for {self.path}"
                f"{'' if self.request_id_type is None else f', whose are {self.request_id_type.__name__}s'}; "
                "use one type of request id for a dataset"
            )
        if kinds:
            self.request_id_type = kinds.pop()
        keys = [str(request.request_id) for request in requests]
        held = self._held(keys)
        for request, hour, key in zip(requests, hours, keys):  # all buffered before any commit, which may fail
            if key in held:  # written twice, its rows would be in the dataset twice
                self.stats["already_written"] += 1
                continue
            held.add(key)
            self._pending.setdefault(hour, {})[key] = request
        for hour in dict.fromkeys(hours):
            if len(self._pending.get(hour, ())) >= self.requests_per_file:
                self._commit(hour)

    def _held(self, keys: list[str]) -> set[str]:
        """Those of the request `keys` that are committed or buffered."""
        held = {key for key in keys if any(key in pending for pending in self._pending.values())}
        ledger, keys = self._open_ledger(), list(set(keys) - held)
        for start in range(0, len(keys), 500):  # SQLite's limit on bound parameters
            chunk = keys[start : start + 500]
            query = f"SELECT id FROM requests WHERE id IN ({','.join('?' * len(chunk))})"
            held.update(key for (key,) in ledger.execute(query, chunk))
        return held

    def _hour(self, r) -> str:
        """The hour `r` is filed under, once it is a JoinedRequest this writer can write.

        Raises:
            DataError: it is not; the message names the request and what is wrong.
        """

        def bad(problem: str) -> DataError:
            return DataError(f"{self.path}: request {getattr(r, 'request_id', r)!r} cannot be written: {problem}")

        if not isinstance(r, JoinedRequest):
            raise bad(f"expected a JoinedRequest, got {type(r).__name__}")
        n = len(r.item_ids)
        labels = np.asarray(r.labels)
        if not all(isinstance(row, bytes) for row in r.items):
            raise bad("item rows must be bytes (FeatureCodec rows)")
        if len(r.items) != n or labels.shape != (n, len(self.labels)):
            raise bad(f"{n} item ids, {len(r.items)} item rows and labels of shape {labels.shape}; expected "
                      f"[{n}, {len(self.labels)}] labels ({list(self.labels)}) and a row per item")  # fmt: skip
        try:
            hour = hour_of(r.time)
        except (TypeError, ValueError, OverflowError, OSError):
            raise bad(f"time {r.time!r} is not a Unix time in seconds of the years 1-9999") from None
        problem = next(filter(None, map(self.items_codec.check, r.items)), "")
        if not problem and self.user_codec is not None:
            problem = self.user_codec.check(r.user) if isinstance(r.user, bytes) else "no user features"
        if problem:
            raise bad(f"logged features of {problem}")
        return hour

    def flush(self) -> None:
        """Commit every buffered request."""
        for hour in list(self._pending):
            self._commit(hour)

    def commit_before(self, before: float) -> None:
        """Commit the hours that ended by `before` (no request of theirs can come any more)."""
        for hour in [h for h in self._pending if _hour_end(h) <= before]:
            self._commit(hour)

    def forget_before(self, before: float) -> None:
        """Drop ledger entries of requests served before `before` (their features have expired,
        so no replay can join them again)."""
        with self._open_ledger() as ledger:
            ledger.execute("DELETE FROM requests WHERE time < ?", (before,))

    def _commit(self, hour: str) -> None:
        ledger = self._open_ledger()
        requests = list(self._pending[hour].values())
        directory = os.path.join(self.path, f"hour={hour}")
        os.makedirs(directory, exist_ok=True)
        final = os.path.join(directory, f"part-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet")  # in commit order
        tmp = final + ".tmp"
        try:
            rows = self._write_file(requests, tmp)
            _fsync(tmp)  # the data is on disk before the ledger says it is there
        except BaseException:  # the requests stay buffered for the next commit; its part file goes (a full
            # disk would fill up with one per retry)
            with contextlib.suppress(OSError):
                os.remove(tmp)
            raise
        with ledger:  # the commit makes the file count; readers see it once renamed, next
            ledger.execute("INSERT INTO files VALUES (?)", (os.path.relpath(final, self.path),))
            ledger.executemany("INSERT OR IGNORE INTO requests VALUES (?, ?)",
                               [(str(r.request_id), float(r.time)) for r in requests])  # fmt: skip
            ledger.executemany("INSERT OR IGNORE INTO dataset VALUES (?, ?)", [
                ("request_id_type", self.request_id_type.__name__), ("layout", type(self).__name__),
                ("schema", self.schema.to_json())])  # fmt: skip
        # Only now, and now already: a failure before the commit keeps the requests buffered; a
        # failed rename after it is finished by _recover, and a retry must not write them again.
        del self._pending[hour]
        os.replace(tmp, final)
        _fsync(directory)
        self.stats["files"] += 1
        self.stats["requests"] += len(requests)
        self.stats["rows"] += rows
        self.stats["bytes"] += os.path.getsize(final)

    def _decode(self, requests):
        """(user batch [R] or None, item batch [N], counts [R], item ids [N], labels [L, N])."""
        counts = np.array([len(r.item_ids) for r in requests], np.int64)
        items = self.items_codec.decode([row for r in requests for row in r.items])
        users = None if self.user_codec is None else self.user_codec.decode([r.user for r in requests])
        item_ids = np.concatenate([np.asarray(r.item_ids, np.int64) for r in requests])
        labels = np.concatenate([np.asarray(r.labels, np.float32).reshape(-1, len(self.labels)) for r in requests]).T
        return users, items, counts, item_ids, labels

    def _write_file(self, requests, path) -> int:
        raise NotImplementedError

    def close(self) -> None:
        """Commit what is buffered and close the ledger."""
        if self._ledger is None:
            return
        try:
            self.flush()
        finally:  # a failed commit keeps its requests buffered, but the ledger is closed all the same
            self._ledger.close()
            self._ledger = None
            self._lock.close()  # the path is free for another writer

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _differing(a: Schema, b: Schema) -> str:
    """The features of `a` that `b` lacks or has with another kind or group, in words."""
    return ", ".join(f"{f.name} ({f.kind}, {f.group})" for f in a.features if f.name not in b or b[f.name] != f)


def _lock_path(path: str, writer: str):
    """An open file holding `path`'s writer lock: one writer per path, as a second one's start-up
    would take the files the first is writing for files left by a crash, and remove them.

    Raises:
        ConfigError: another writer (of this process or another) has the path open.
    """
    lock = open(os.path.join(path, "_writer.lock"), "a")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.close()
        raise ConfigError(
            f"{writer} path {path!r} is open in another writer (of this process or another); one writer "
            "per path: close that one first, or give each writer its own path"
        ) from None
    return lock


class TabularWriter(_HourlyWriter):
    """One row per impression: user features repeated on every row (the baseline layout)."""

    def _write_file(self, requests, path) -> int:
        users, items, counts, item_ids, labels = self._decode(requests)
        owner = np.repeat(np.arange(len(requests)), counts)
        columns = {} if users is None else _columns(users.take(owner).to_arrow())
        columns.update(_columns(items.to_arrow()))
        columns.update({name: pa.array(labels[i]) for i, name in enumerate(self.labels)})
        columns["request_id"] = pa.array([requests[r].request_id for r in owner])
        columns["time"] = pa.array(np.array([r.time for r in requests], np.float64)[owner])
        columns["item_id"] = pa.array(item_ids)
        write_table(pa.table(columns), path, self.schema, row_group_rows=self.row_group_rows)
        return len(item_ids)


class DedupWriter(_HourlyWriter):
    """One row per request: user features once, item features and labels as per-impression lists."""

    def _write_file(self, requests, path) -> int:
        import pyarrow.parquet as pq

        users, items, counts, item_ids, labels = self._decode(requests)
        offsets = pa.array(offsets_of(counts, np.int32))
        columns = {} if users is None else _columns(users.to_arrow())
        columns.update({name: pa.ListArray.from_arrays(offsets, col) for name, col in _columns(items.to_arrow()).items()})
        columns.update({name: pa.ListArray.from_arrays(offsets, pa.array(labels[i])) for i, name in enumerate(self.labels)})
        columns["request_id"] = pa.array([r.request_id for r in requests])
        columns["time"] = pa.array(np.array([r.time for r in requests], np.float64))
        columns["item_id"] = pa.ListArray.from_arrays(offsets, pa.array(item_ids))
        table = pa.table(columns)
        starts = range(0, len(requests), self.row_group_rows)
        impressions = [int(counts[s : s + self.row_group_rows].sum()) for s in starts]
        metadata = {METADATA_KEY: self.schema.to_json().encode(),
                    DEDUP_METADATA_KEY: json.dumps({"item_extras": ["item_id"], "impressions": impressions}).encode()}  # fmt: skip
        table = table.replace_schema_metadata(metadata)
        with pq.ParquetWriter(path, table.schema, compression="zstd") as writer:
            for s in starts:
                part = table.slice(s, self.row_group_rows)
                writer.write_table(part, row_group_size=part.num_rows)
        return len(item_ids)


def _columns(table: pa.Table) -> dict:
    return {name: one_array(table.column(name)) for name in table.column_names}


def hour_of(at: float) -> str:
    """The partition (an hour, UTC) of a Unix time in seconds."""
    return datetime.datetime.fromtimestamp(float(at), datetime.timezone.utc).strftime(HOUR_FORMAT)


def _hour_end(hour: str) -> float:
    start = datetime.datetime.strptime(hour, HOUR_FORMAT).replace(tzinfo=datetime.timezone.utc)
    return start.timestamp() + 3600.0


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
