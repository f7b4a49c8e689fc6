"""`LabelJoiner`: label events joined with the features frozen at ranking time.

A label event is `(request_id, item_id, labels, time)`: `labels` one float per label name (or one
float), `time` when the request was served (seconds since the epoch). The joiner looks up the
logged features (`u/<request>`, `i/<request>/<item>`) in the KV store, keeps a request open while
its labels may still come (`window_s` from its serving time), then hands it to a writer. Features
not found when an event comes are looked up once more when its request is written: a lazy
logger's page may still be on its way to the store when the user's click is.

Nothing is dropped silently. Events that cannot be joined are counted by reason in `stats` and
appended, with the reason, to `<writer path>/_rejected.jsonl`:
    late        the event came more than `ttl_s` after its request was served: its features
                have expired
    unknown     no features although they should still be there, when the event came nor when
                its request was written: a request that was never ranked, an item that was
                never logged (not ranked, or not paginated to), or features a store lost
    malformed   not a (request, item, labels, time) tuple of the right types and sizes
    corrupt     the logged bytes do not decode with the logger's schema
    closed_early  an event, within its window, of a request written before its window ended
                (`max_open` was reached): its labels could not be added (a replay of an
                event already joined is listed too, as it cannot be told apart)
Replays are idempotent: an event of a request already written is counted (`already_written`: a
replay, or a label that came after `window_s`) and skipped; a second event of an open (request, item) merges its labels by maximum (an impression
event then a click event give click = 1; the same event twice changes nothing).
"""

from __future__ import annotations

import collections
import collections.abc
import heapq
import itertools
import json
import math
import os
import time as _time

import numpy as np

from .._checks import ensure_clock, ensure_instance, is_real
from ..errors import BackendUnavailable, ConfigError, DataError
from .kv import KVStore
from .loggers import _ensure_item_id, _ensure_request_id, item_key, user_key
from .writers import JoinedRequest, _HourlyWriter, hour_of

__all__ = ["LabelJoiner"]

REASONS = ("late", "unknown", "malformed", "corrupt", "closed_early")


class LabelJoiner:
    """Joins label events with logged features and writes them through a `DedupWriter` or `TabularWriter`.

    Args:
        store: the KV store the loggers wrote to.
        writer: where joined requests go (its `labels` name the event's labels, in order).
        ttl_s: the loggers' TTL (how late an event may come and still find its features).
        window_s: how long a request stays open for more labels, from its serving time.
        clock: the time now, in seconds (a simulation passes its own).
        max_open: requests held open at most; beyond it the oldest is written early (counted in
            `stats["requests_closed_early"]`), so memory stays bounded under any load; its events
            that come later within its window are rejected as `closed_early` (for the last
            `max_open` requests closed early; older ones count as `already_written`). It also
            bounds the events held open whose features were not found yet (beyond it, such an
            event is `unknown` at once).
    """

    def __init__(self, store: KVStore, writer, ttl_s: float = 3600.0, window_s: float = 600.0, clock=_time.time,
                 max_open: int = 100_000):  # fmt: skip
        ensure_instance(store, KVStore, "LabelJoiner store", "the KVStore (SqliteKV or RedisKV) the loggers wrote to")
        ensure_instance(writer, _HourlyWriter, "LabelJoiner writer", "a DedupWriter or TabularWriter")
        if not (is_real(ttl_s) and ttl_s > 0 and is_real(window_s) and window_s >= 0):
            raise ConfigError(f"LabelJoiner ttl_s={ttl_s!r} must be > 0 and window_s={window_s!r} >= 0")
        if not isinstance(max_open, int) or max_open < 1:
            raise ConfigError(f"LabelJoiner max_open={max_open!r} must be a positive integer")
        self.store, self.writer, self.ttl_s, self.window_s = store, writer, float(ttl_s), float(window_s)
        self.clock, self.max_open = ensure_clock(clock, "LabelJoiner clock"), max_open
        self._id_type = writer.request_id_type  # int or str: the dataset's, or the first valid event's
        self.num_labels = len(writer.labels)
        self.needs_user = writer.user_codec is not None
        # request -> [time, user bytes, {item: [bytes, labels, time]}]; bytes None: not found yet, looked up
        # again when the request is written
        self._open: collections.OrderedDict = collections.OrderedDict()
        self._waiting = 0  # items in _open whose bytes were not found yet
        self._rejects_path = os.path.join(writer.path, "_rejected.jsonl")
        self._rejects_unchecked = True  # whether the file may end in a line cut short
        # requests written early whose window is still open: request -> served, and a heap of (served, order, request)
        self._closed_early, self._closed_early_heap, self._closed_order = {}, [], itertools.count()
        self.stats = {"events": 0, "joined": 0, "duplicates": 0, "already_written": 0, "requests_closed_early": 0,
                      "requests_written": 0, **{reason: 0 for reason in REASONS}}  # fmt: skip
        self._closed = False

    def add(self, events) -> None:
        """Join a batch of events (one KV round trip for all of them), then write what is due.

        Raises:
            ConfigError: the joiner is closed, or `events` is not an iterable of events.
            BackendUnavailable: the store failed: on the events' look-up, no count changed and the
                batch can be given again; on the due requests' second look-up, the events were
                taken (the message says not to give them again) and those requests stay open.
        """
        self._check_open()
        if not isinstance(events, collections.abc.Iterable) or isinstance(events, (str, bytes)):
            raise ConfigError(
                f"LabelJoiner.add needs an iterable of (request_id, item_id, labels, time) events, got {events!r}"
            )
        now = self.clock()
        fresh, rejected, written = [], [], {}  # written: request -> already written? (one lookup each)
        counted = dict(self.stats)  # restored if the store fails: the caller retries the whole batch
        try:
            self._add(events, now, fresh, rejected, written)
        except BaseException:
            self.stats.update(counted)
            raise
        self._reject(rejected, now)
        try:
            self._write_due(now)
        except BackendUnavailable as e:
            taken = self.stats["events"] - counted["events"]
            if not taken:
                raise
            raise BackendUnavailable(
                f"{e} (when the due requests' missing features were looked up again); the {taken} events of this call "
                "were taken, so do not give them again (they would count as duplicates): the due requests stay open "
                "and a later add, flush or close writes them"
            ) from e

    def _add(self, events, now: float, fresh: list, rejected: list, written: dict) -> None:
        for event in events:
            self.stats["events"] += 1
            parsed = self._parse(event)
            if isinstance(parsed, str):
                rejected.append(("malformed", event, parsed))
                continue
            request, item, labels, served = parsed
            if now - served >= self.ttl_s:  # whether or not its request was written: reported as late (the
                # store drops features at ttl_s)
                rejected.append(("late", (request, item, labels.tolist(), served), "came after the features' TTL"))
                continue
            entry = self._open.get(request)
            if entry is None and request not in written:
                written[request] = self.writer.contains(request)
            if entry is not None and item in entry[2]:
                np.maximum(entry[2][item][1], labels, out=entry[2][item][1])
                self.stats["duplicates"] += 1
            elif entry is None and written[request]:
                if request in self._closed_early and now - self._closed_early[request] < self.window_s:
                    rejected.append(("closed_early", (request, item, labels.tolist(), served),
                                     "its request was written before its window ended (max_open reached)"))  # fmt: skip
                else:
                    self.stats["already_written"] += 1
            else:
                fresh.append(parsed)
        self._join(fresh, rejected)

    def _parse(self, event):
        """(request, item, labels float32 [L], time), or why the event is malformed."""
        try:
            request, item, labels, served = event
        except (TypeError, ValueError):
            return f"expected (request_id, item_id, labels, time), got {type(event).__name__}"
        try:
            request, item = _ensure_request_id(request), _ensure_item_id(item)
        except DataError as e:
            return str(e)
        try:
            with np.errstate(over="ignore"):  # too large for a float32: inf, refused below
                labels = np.asarray(labels, np.float32).reshape(-1)
            served = float(served)
        except (TypeError, ValueError, OverflowError):
            return f"labels {labels!r} or time {served!r} are not numbers (or too large for one)"
        if len(labels) != self.num_labels or not np.isfinite(labels).all():
            return f"labels {labels.tolist()} must be {self.num_labels} finite numbers ({list(self.writer.labels)})"
        if not math.isfinite(served):
            return f"time {served!r} is not finite"
        try:
            hour_of(served)  # the writer's partition of it
        except (OverflowError, ValueError, OSError):
            return f"time {served!r} is not a Unix time in seconds of the years 1-9999 (milliseconds?)"
        if self._id_type not in (None, type(request)):
            return self._id_type_problem(request)
        return request, item, labels, served

    def _id_type_problem(self, request) -> str:
        return f"request_id {request!r} is a {type(request).__name__} but the dataset's are {self._id_type.__name__}s"

    def _join(self, fresh, rejected: list) -> None:
        if not fresh:
            return
        new_requests = list(dict.fromkeys(r for r, *_ in fresh if r not in self._open)) if self.needs_user else []
        keys = [item_key(r, i) for r, i, _, _ in fresh] + [user_key(r) for r in new_requests]
        values = self.store.get_many(keys)
        users = dict(zip(new_requests, values[len(fresh) :]))
        for (request, item, labels, served), value in zip(fresh, values):
            event = (request, item, labels.tolist(), served)
            entry = self._open.get(request)
            if entry is None and self._id_type not in (None, type(request)):  # a batch of both kinds
                rejected.append(("malformed", event, self._id_type_problem(request)))
                continue
            user = entry[1] if entry is not None else users.get(request)
            if value is None and self._waiting >= self.max_open:
                rejected.append(("unknown", event, "no features were logged for it"))
                continue
            problem = self._check_bytes(value, user if entry is None else None)
            if problem:
                rejected.append(("corrupt", event, problem))
                continue
            if entry is None:
                entry = self._open[request] = [served, user, {}]
            elif item in entry[2]:  # twice in this batch
                np.maximum(entry[2][item][1], labels, out=entry[2][item][1])
                self.stats["duplicates"] += 1
                continue
            entry[0] = min(entry[0], served)
            entry[2][item] = [value, labels.copy(), served]
            self._waiting += value is None

    def _check_bytes(self, item: bytes | None, user: bytes | None) -> str:
        problem = self.writer.items_codec.check(item) if item is not None else ""
        if not problem and user is not None:
            problem = self.writer.user_codec.check(user)
        return f"logged features of {problem}" if problem else ""

    def _reject(self, rejected: list, now: float) -> None:
        if not rejected:
            return
        lines = []
        for reason, event, why in rejected:
            self.stats[reason] += 1
            lines.append(json.dumps({"reason": reason, "why": why, "event": _jsonable(event), "seen_at": now}) + "\n")
        with open(self._rejects_path, "a+b") as f:
            if self._rejects_unchecked:  # a line cut short (a process killed while writing it) is ended first,
                # so that the next line is not appended to it
                self._rejects_unchecked = False
                end = f.seek(0, os.SEEK_END)
                if end and (f.seek(end - 1), f.read(1))[1] != b"\n":
                    f.write(b"\n")
            f.write("".join(lines).encode())

    def _write_due(self, now: float) -> None:
        due = [r for r, entry in self._open.items() if now - entry[0] >= self.window_s]
        excess = len(self._open) - len(due) - self.max_open
        early = []
        if excess > 0:  # the oldest still in their window
            ready = set(due)
            oldest = itertools.islice((r for r in self._open if r not in ready), excess)
            early = [(r, self._open[r][0]) for r in oldest]
        self._write(due + [r for r, _ in early], now)
        for r, served in early:
            self._closed_early[r] = served
            heapq.heappush(self._closed_early_heap, (served, next(self._closed_order), r))
        self.stats["requests_closed_early"] += len(early)
        heap = self._closed_early_heap  # the earliest served first; at most max_open kept, whatever the clocks
        while heap and (now - heap[0][0] >= self.window_s or len(heap) > self.max_open):
            served, _, request = heapq.heappop(heap)  # its window is over: later events are after it anyway
            if self._closed_early.get(request) == served:
                del self._closed_early[request]
        self.writer.commit_before(now - self.window_s)  # hours whose requests are all written

    def _write(self, requests, now: float) -> None:
        """Hand `requests` to the writer, once the features not found before are looked up again
        (one KV round trip; a store that fails changes nothing, and the requests stay open)."""
        rejected = []
        self._look_up_again(requests, rejected)
        joined = []
        for request in requests:
            served, user, items = self._open[request]
            if self._id_type not in (None, type(request)):
                self._reject_open(request, list(items), "malformed", self._id_type_problem(request), rejected)
            unknown = [i for i, v in items.items() if v[0] is None or (self.needs_user and user is None)]
            self._reject_open(request, unknown, "unknown", "no features were logged for it", rejected)
            if items:
                self._id_type = type(request)  # only a request written fixes the dataset's kind of id
                labels = np.stack([v[1] for v in items.values()])
                joined.append(JoinedRequest(request, served, user, np.fromiter(items, np.int64, len(items)),
                                            [v[0] for v in items.values()], labels))  # fmt: skip
        for request in requests:  # removed only once every one is built; the writer keeps them from here
            del self._open[request]
        self._reject(rejected, now)
        if joined:
            try:
                self.writer.write(joined)
            except BaseException:  # a commit that failed keeps them buffered: written by a later one, counted now
                joined = [j for j in joined if self.writer.contains(j.request_id)]
                raise
            finally:
                self.stats["joined"] += sum(len(j.item_ids) for j in joined)
                self.stats["requests_written"] += len(joined)
            self.writer.forget_before(self.clock() - self.ttl_s - self.window_s)

    def _look_up_again(self, requests, rejected: list) -> None:
        """Fill in the features of `requests` not found when their events came, where the store
        has them now; corrupt ones go to `rejected`."""
        missing = [(r, item) for r in requests for item, v in self._open[r][2].items() if v[0] is None]
        users = [r for r in requests if self.needs_user and self._open[r][1] is None]
        if not (missing or users):
            return
        values = self.store.get_many([item_key(r, i) for r, i in missing] + [user_key(r) for r in users])
        self._waiting -= len(missing)
        for r, user in zip(users, values[len(missing) :]):  # what came now is checked as at add
            self._open[r][1] = user
            problem = self._check_bytes(None, user)
            if problem:
                self._reject_open(r, list(self._open[r][2]), "corrupt", problem, rejected)
        for (r, item), value in zip(missing, values):
            if item in self._open[r][2]:  # not rejected with its request's user
                problem = self._check_bytes(value, None)
                if problem:
                    self._reject_open(r, [item], "corrupt", problem, rejected)
                else:
                    self._open[r][2][item][0] = value

    def _reject_open(self, request, items, reason: str, why: str, rejected: list) -> None:
        """Move `items` of an open request to `rejected`."""
        for item in items:
            labels, at = self._open[request][2].pop(item)[1:]
            rejected.append((reason, (request, item, labels.tolist(), at), why))

    def flush(self) -> None:
        """Write every open request now, and commit the writer's files."""
        self._check_open()
        self._write(list(self._open), self.clock())
        self.writer.flush()

    def close(self) -> None:
        """Flush and close the writer."""
        if not self._closed:
            self.flush()
            self.writer.close()
            self._closed = True

    def _check_open(self) -> None:
        if self._closed:
            raise ConfigError("this LabelJoiner is closed (its writer too); create a new writer and joiner for more events")

    @property
    def open_requests(self) -> int:
        return len(self._open)

    def report(self) -> str:
        """What was joined, and what was not and why (the rejected events are in `_rejected.jsonl`)."""
        s = self.stats
        lines = [f"{s['events']} label events: {s['joined']} joined, {s['duplicates']} duplicates merged, "
                 f"{s['already_written']} events of requests already written skipped; {s['requests_written']} requests written"]  # fmt: skip
        problems = {reason: s[reason] for reason in REASONS if s[reason]}
        if problems:
            lines.append(f"not joined: {problems} (listed in {self._rejects_path})")
        return "\n".join(lines)


def _jsonable(event):
    try:
        json.dumps(event)
        return event
    except (TypeError, ValueError):
        return repr(event)
