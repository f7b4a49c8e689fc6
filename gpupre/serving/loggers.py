"""Loggers: at ranking time, the features of ranked items go to a KV store until their labels come.

`EagerLogger` (the baseline) serializes and writes every ranked item. `LazyLogger` writes only the
head of the list (what the first screen shows) at ranking time and keeps the rest, unserialized, in
a bounded in-process buffer; a pagination signal (`on_paginate`) writes the pages the user reached,
on a background thread, so the ranking path waits for nothing but the head.

Keys: `u/<request>` holds the user (and context) features, once per request; `i/<request>/<item>`
one item's features. Values are `FeatureCodec` bytes.
"""

from __future__ import annotations

import collections
import operator
import queue
import threading
import time

import numpy as np

from ..batch import Batch
from .._checks import ensure_clock, ensure_instance, is_integer
from ..errors import ConfigError, DataError
from ..schema import Schema
from .codec import FeatureCodec, encode_rows, ensure_schemas
from .kv import KVStore, _ttl

__all__ = ["EagerLogger", "LazyLogger", "item_key", "user_key"]

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def user_key(request_id) -> str:
    return f"u/{request_id}"


def item_key(request_id, item_id) -> str:
    return f"i/{request_id}/{item_id}"


def _ensure_request_id(request_id) -> int | str:
    """`request_id` as a plain int (any integer type) or a plain str (`np.str_` too), as the
    writers store it: the joiner tells a dataset's kind of id by its type.

    Raises:
        DataError: neither an integer in int64 range nor a string.
    """
    if isinstance(request_id, str):
        return str(request_id)
    if is_integer(request_id):
        if INT64_MIN <= request_id <= INT64_MAX:
            return operator.index(request_id)
    raise DataError(
        f"request_id {request_id!r} ({type(request_id).__name__}) must be an integer in int64 range or a string; "
        "pass the id the label events will carry, as an int or a str"
    )


def _ensure_item_id(item_id) -> int:
    """`item_id` as an int.

    Raises:
        DataError: not an integer in int64 range.
    """
    if is_integer(item_id) and INT64_MIN <= item_id <= INT64_MAX:
        return operator.index(item_id)
    raise DataError(f"item_id {item_id!r} ({type(item_id).__name__}) must be an integer in int64 range")


def _ensure_item_ids(item_ids) -> np.ndarray:
    """`item_ids` as int64 [n]: integer arrays (and lists of ints) only, since a float or str id
    would give keys (`i/1/11.0`) that no label event looks up.

    Raises:
        DataError: not one-dimensional, not integers, or outside int64.
    """
    ids = np.asarray(item_ids)
    if ids.ndim != 1:
        raise DataError(f"item ids must be one-dimensional, got shape {ids.shape}; pass one id per ranked row")
    if ids.size and (ids.dtype.kind not in "iu" or (ids.dtype.kind == "u" and ids.max() > INT64_MAX)):
        raise DataError(
            f"item ids must be integers in int64 range, got {ids.dtype} ids {ids[:3].tolist()}...; "
            "pass integer ids (e.g. ids.astype(np.int64)) so the label events' item ids find their features"
        )
    return ids.astype(np.int64, copy=False)


class EagerLogger:
    """Logs the features of every ranked item (and the user's, once) at ranking time.

    Args:
        store: where the features go.
        item_schema: the features of an item (rows of `items` in `log_ranking`).
        user_schema: the features of the user and context (one row), or None.
        ttl_s: how long logged features wait for their labels.
    """

    def __init__(self, store: KVStore, item_schema: Schema, user_schema: Schema | None = None, ttl_s: float = 3600.0):
        name = type(self).__name__
        ensure_instance(store, KVStore, f"{name} store", "a KVStore (SqliteKV or RedisKV) for the features")
        ensure_schemas(name, item_schema, user_schema)
        self.store, self.ttl_s = store, _ttl(ttl_s)
        self.items_codec = FeatureCodec(item_schema)
        self.user_codec = None if user_schema is None else FeatureCodec(user_schema)
        self.stats = {"requests": 0, "items_logged": 0, "serialize_s": 0.0, "write_s": 0.0, "bytes_logged": 0,
                      "user_serialize_s": 0.0, "user_bytes_logged": 0}  # fmt: skip
        self._closed = False

    def log_ranking(self, request_id, item_ids, items: Batch, user: Batch | None = None) -> None:
        """Log a ranked list: `item_ids` [n] (integers) in rank order, `items` their features (n rows).

        Raises:
            ConfigError: the logger is closed.
            DataError: a request id that is not an int64 integer or a str, item ids that are not
                integers or do not match the rows, user features that do not match the schema.
        """
        request_id, item_ids = self._check(request_id, item_ids, items, user)
        self.stats["requests"] += 1
        self._write(request_id, item_ids, items, np.arange(len(item_ids)), user)

    def _check_open(self) -> None:
        if self._closed:
            raise ConfigError(f"this {type(self).__name__} is closed; create a new logger to log more requests")

    def _check(self, request_id, item_ids, items: Batch, user: Batch | None):
        """(request id, item ids int64 [n]) once the ranked list is valid."""
        self._check_open()
        request_id, item_ids = _ensure_request_id(request_id), _ensure_item_ids(item_ids)
        for name, value in (("items", items), ("user", user)):
            if not isinstance(value, Batch) and (value is not None or name == "items"):
                raise DataError(f"request {request_id}: {name} must be a gp.Batch of features, got {type(value).__name__}")
        ordered = np.sort(item_ids)
        if (ordered[1:] == ordered[:-1]).any():
            raise DataError(
                f"request {request_id}: item ids {item_ids[:10].tolist()}... repeat; each ranked item is logged under "
                "its id, so a repeated one would overwrite the other's features: rank each item once"
            )
        if len(item_ids) != items.num_rows:
            raise DataError(
                f"request {request_id}: {len(item_ids)} item ids for {items.num_rows} rows of item features; "
                "pass one id per ranked row"
            )
        if (user is None) != (self.user_codec is None) or (user is not None and user.num_rows != 1):
            raise DataError(
                f"request {request_id}: user features must be one row when the logger has a user schema "
                "and absent otherwise"
            )
        # Checked here, not only when encoded: a lazy logger encodes most rows later, on its
        # background thread, where a wrong batch would fail a page and be raised on another call.
        for name, codec, batch in (("items", self.items_codec, items), ("user", self.user_codec, user)):
            if batch is not None:
                try:
                    codec.check_batch(batch)
                except DataError as e:
                    raise DataError(f"request {request_id}: {name}: {e}") from None
        return request_id, item_ids

    def _write(self, request_id, item_ids, items: Batch, rows, user: Batch | None) -> None:
        cpu = time.thread_time()  # this thread's CPU: pages are written on another thread
        pairs = []
        if user is not None:
            pairs.append((user_key(request_id), encode_rows(self.user_codec, user, [0])[0]))
            self.stats["user_serialize_s"] += time.thread_time() - cpu
        if len(rows):
            encoded = encode_rows(self.items_codec, items, rows)
            prefix = item_key(request_id, "")  # Python ints (tolist) format 3x faster than numpy's
            pairs += [(prefix + str(i), v) for i, v in zip(item_ids[rows].tolist(), encoded)]
        self.stats["serialize_s"] += time.thread_time() - cpu
        wall = time.perf_counter()
        if pairs:
            self.store.put_many(pairs, self.ttl_s)
        self.stats["write_s"] += time.perf_counter() - wall
        self.stats["items_logged"] += len(rows)
        self.stats["bytes_logged"] += sum(len(k) + len(v) for k, v in pairs)
        if user is not None:
            self.stats["user_bytes_logged"] += len(pairs[0][0]) + len(pairs[0][1])

    def flush(self) -> None:
        """Nothing is pending: eager logging writes at ranking time."""

    def close(self) -> None:
        self.flush()
        self._closed = True


class LazyLogger(EagerLogger):
    """Logs the head of a ranked list at once and later pages when the user paginates.

    Args:
        store, item_schema, user_schema, ttl_s: as `EagerLogger`.
        head: items logged at ranking time (the first screen).
        page: items per further page; `on_paginate(request, seen_upto)` logs whole pages up to
            the one holding item `seen_upto - 1`.
        max_items: ranked items kept per request (the rest could never be shown).
        max_pending: requests kept in the buffer; the oldest is dropped beyond it (counted in
            `stats["evicted"]`).
        max_queued_pages: pages asked for by `on_paginate` and not yet written (default
            `max_pending`); while that many wait, `on_paginate` waits for the background thread
            to write one (counted in `stats["queue_full_waits"]`): nothing asked for is dropped.
        clock: the time now, in seconds; a request is dropped from the buffer `ttl_s` after it
            was ranked (its labels could no longer join), counted in `stats["expired"]`.

    Memory stays bounded under any load: the buffer holds at most `max_pending` requests and the
    queue at most `max_queued_pages` pages, each holding its request's `items` batch.

    The buffer keeps the `items` batch of each request, not a copy (which the ranking path would
    pay for every request): leave its arrays unchanged until the request is paginated to its
    end, dropped, or expired. A page whose write fails is counted in `stats["failed_pages"]` and
    `stats["items_not_logged"]`, and the first failure is raised on the caller's next call.

    A pagination signal for a request not in the buffer is counted in `stats["already_complete"]`
    when the request is one of the last `max_pending` logged to their end (paginated to the end,
    or no longer than the head), and in `stats["unknown_requests"]` otherwise: never ranked,
    evicted, expired, or completed longer ago.
    """

    def __init__(self, store: KVStore, item_schema: Schema, user_schema: Schema | None = None, ttl_s: float = 3600.0,
                 head: int = 6, page: int = 9, max_items: int = 100, max_pending: int = 10_000,
                 max_queued_pages: int | None = None, clock=time.time):  # fmt: skip
        super().__init__(store, item_schema, user_schema, ttl_s)
        if max_queued_pages is None:
            max_queued_pages = max_pending
        limits = {"head": head, "page": page, "max_items": max_items, "max_pending": max_pending,
                  "max_queued_pages": max_queued_pages}  # fmt: skip
        for name, value in limits.items():
            if not is_integer(value) or value < (0 if name == "head" else 1):
                raise ConfigError(f"LazyLogger {name}={value!r} must be a positive integer")
        self.head, self.page, self.max_items, self.max_pending, self.max_queued_pages = map(
            operator.index, (head, page, max_items, max_pending, max_queued_pages)
        )
        self.clock = ensure_clock(clock, "LazyLogger clock")
        self._pending = collections.OrderedDict()  # request -> [item ids, items, rows logged so far, ranked at]
        self._complete = collections.OrderedDict()  # request -> None: the last max_pending logged to their end
        self._lock = threading.Lock()
        # A queued page holds a slot until it is written; the queue itself has no bound, so a put
        # (made under the lock) never waits.
        self._slots = threading.BoundedSemaphore(self.max_queued_pages)
        self._queue: queue.Queue = queue.Queue()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="gpupre-lazy-logger", daemon=True)
        self._thread.start()
        self.stats.update({"paginations": 0, "unknown_requests": 0, "already_complete": 0, "evicted": 0,
                           "expired": 0, "pending": 0, "failed_pages": 0, "items_not_logged": 0,
                           "queue_full_waits": 0})  # fmt: skip

    def log_ranking(self, request_id, item_ids, items: Batch, user: Batch | None = None) -> None:
        """Log the user and the head now; keep the rest of the list for `on_paginate`.

        Raises:
            ConfigError: the logger is closed.
            DataError: as `EagerLogger.log_ranking` (the whole batch is checked against the schema
                now, though most of its rows are encoded later), or a page write failed since
                the last call.
        """
        self._raise_background_error()
        request_id, item_ids = self._check(request_id, item_ids, items, user)
        item_ids = item_ids[: self.max_items]
        head = min(self.head, len(item_ids))
        self.stats["requests"] += 1
        self._write(request_id, item_ids, items, np.arange(head), user)
        now = self.clock()
        with self._lock:
            if head == len(item_ids):
                self._pending.pop(request_id, None)  # ranked again, shorter
                self._completed(request_id)
            else:
                self._complete.pop(request_id, None)  # ranked again
                self._pending[request_id] = [item_ids, items, head, now]
                self._pending.move_to_end(request_id)  # ranked again: the newest
                while len(self._pending) > self.max_pending:
                    self._pending.popitem(last=False)
                    self.stats["evicted"] += 1
            while self._pending and now - next(iter(self._pending.values()))[3] > self.ttl_s:
                self._pending.popitem(last=False)
                self.stats["expired"] += 1
            self.stats["pending"] = len(self._pending)

    def _completed(self, request_id) -> None:
        """Remember `request_id` as logged to its end (the lock is held)."""
        self._complete[request_id] = None
        self._complete.move_to_end(request_id)
        if len(self._complete) > self.max_pending:
            self._complete.popitem(last=False)

    def on_paginate(self, request_id, seen_upto: int) -> None:
        """The user reached item `seen_upto - 1`: log the pages up to it (asynchronously).

        Waits while `max_queued_pages` pages are queued (the store is slower than pagination).

        Raises:
            ConfigError: the logger is closed, or `seen_upto` is not an integer.
            DataError: a request id that is not an int64 integer or a str, or a page write
                failed since the last call.
        """
        self._check_open()
        if not is_integer(seen_upto):
            raise ConfigError(f"on_paginate seen_upto={seen_upto!r} must be an integer: how many items the user reached")
        self._raise_background_error()
        request_id = _ensure_request_id(request_id)
        # The slot is taken before the lock: the background thread (on a failed write) and close()
        # take the lock, so waiting for room while holding it could wait forever.
        waited = not self._slots.acquire(blocking=False)
        if waited:
            self._slots.acquire()
        queued = False
        try:
            with self._lock:
                self.stats["queue_full_waits"] += waited
                self._check_open()  # under the lock: a page asked for is queued before close's stop
                queued = self._paginate(request_id, operator.index(seen_upto))
        finally:
            if not queued:
                self._slots.release()

    def _paginate(self, request_id, seen_upto: int) -> bool:
        """Queue the pages of `request_id` up to item `seen_upto - 1` not logged yet (the lock and
        a slot are held); whether a page was queued."""
        entry = self._pending.get(request_id)
        if entry is not None and self.clock() - entry[3] > self.ttl_s:  # its labels could no longer join
            del self._pending[request_id]
            self.stats["expired"] += 1
            self.stats["pending"] = len(self._pending)
            entry = None
        if entry is None:
            self.stats["already_complete" if request_id in self._complete else "unknown_requests"] += 1
            return False
        item_ids, items, logged, _ = entry
        pages = -(-(max(seen_upto, 0) - self.head) // self.page)
        upto = min(len(item_ids), self.head + max(pages, 0) * self.page)
        if upto <= logged:
            return False
        entry[2] = upto
        if upto == len(item_ids):
            del self._pending[request_id]
            self._completed(request_id)
            self.stats["pending"] = len(self._pending)
        self.stats["paginations"] += 1
        self._queue.put((request_id, item_ids, items, np.arange(logged, upto)))
        return True

    def _run(self) -> None:
        while True:
            task = self._queue.get()
            try:
                if task is None:
                    return
                self._write(task[0], task[1], task[2], task[3], None)
            except BaseException as e:  # noqa: BLE001 - the first is re-raised on the caller's thread
                with self._lock:
                    self.stats["failed_pages"] += 1
                    self.stats["items_not_logged"] += len(task[3])
                    self._error = self._error or e
            finally:
                if task is not None:  # written or failed, its slot is free
                    self._slots.release()
                self._queue.task_done()

    def _raise_background_error(self) -> None:
        if self._error is None:
            return
        with self._lock:  # taken and cleared at once, so a failure set meanwhile is not lost
            error, self._error = self._error, None
        if error is not None:
            raise DataError(
                f"lazy logging of a page failed: {type(error).__name__}: {error} ({self.stats['failed_pages']} pages, "
                f"{self.stats['items_not_logged']} items not logged so far: stats['failed_pages'], stats['items_not_logged'])"
            ) from error

    def flush(self) -> None:
        """Wait until every page asked for is written."""
        self._queue.join()
        self._raise_background_error()

    def close(self) -> None:
        """Write what is queued and stop the background thread."""
        with self._lock:  # no page is queued after the stop
            if not self._closed:
                self._closed = True
                self._queue.put(None)
        self._thread.join()
        self._raise_background_error()
