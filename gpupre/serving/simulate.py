"""`simulate`: serving traffic that drives the loggers and the label joiner, leaving a training dataset.

Each request ranks `items` items out of a catalog for one user. The user sees the head and then
whole pages, with a scroll depth drawn from `scroll` (default: a geometric number of pages that
stops after the head with probability 0.7, so most users see under 10% of the list); each seen
item gets a label event (a click with a probability that depends on the user's and the item's
features, so a model can learn it). Some events come twice, some after the TTL. The simulation
runs on its own clock, in time order: rankings, pagination signals, then label events as they
arrive, joined in batches.
"""

from __future__ import annotations

import contextlib
import heapq
import operator
import os
import time

import numpy as np
from tqdm.auto import tqdm

from ..batch import Batch, KeyedJagged
from .._checks import ensure_path, is_integer, is_real
from ..errors import ConfigError
from ..schema import Feature, Schema
from .join import LabelJoiner
from .kv import KVStore, SqliteKV
from .loggers import EagerLogger, LazyLogger
from .writers import DedupWriter, TabularWriter

__all__ = ["default_scroll", "simulate", "synthetic_features"]

START = 1_767_225_600.0  # 2026-01-01T00:00:00Z
LAST = 253_402_300_799.0  # 9999-12-31T23:59:59Z, the last time the writers file under an hour
ITEM_FEATURES, USER_FEATURES = (8, 4, 4), (4, 6, 16)  # (dense, id lists, mean ids per list)
PAGINATION_DELAY_S, JOIN_EVERY_S = 2.0, 60.0  # label events are joined a minute at a time


def default_scroll(rng: np.random.Generator, head: int, page: int, size: int) -> np.ndarray:
    """Items seen: the head, then a geometric number of whole pages (P(no page) = 0.7)."""
    return head + page * (rng.geometric(0.7, size) - 1)


def simulate(path, requests: int = 2000, items: int = 100, catalog: int = 5000, head: int = 6, page: int = 9,
             scroll=default_scroll, logger: str = "lazy", layout: str = "dedup", store: KVStore | None = None,
             ttl_s: float = 3600.0, window_s: float = 600.0, duration_s: float = 7200.0, duplicate_rate: float = 0.02,
             late_rate: float = 0.01, seed: int = 0, progress: bool = True) -> dict:  # fmt: skip
    """Simulate `requests` requests and write their joined training data under `path`.

    Args:
        path: output directory, new or empty (hourly Parquet partitions that `gp.Dataset(path)` reads).
        items: ranked items per request; catalog: distinct items they are drawn from.
        head, page: the lazy logger's head and page sizes (the first screen, then pages).
        scroll: f(rng, head, page, size) -> items each of `size` users sees.
        logger: "lazy" or "eager"; layout: "dedup" (DedupWriter) or "tabular" (TabularWriter).
        store: the KV store (default: an SQLite file under path on the simulation's clock; a
            store with its own clock, such as Redis, sees all TTLs in real time).
        ttl_s, window_s: the features' TTL and how long a request waits for labels.
        duration_s: the requests are spread evenly over this time.
        duplicate_rate, late_rate: the share of label events sent twice, and sent after the TTL.

    Returns:
        What was measured: requests, impressions, events, the stats of the logger, KV store,
        joiner and writer, the peak requests buffered by the logger and the joiner, seconds.

    Raises:
        ConfigError: a bad argument, or `path` is a file or a directory that is not empty.
    """
    if logger not in ("lazy", "eager") or layout not in ("dedup", "tabular"):
        raise ConfigError(f"simulate logger={logger!r} must be 'lazy' or 'eager', layout={layout!r} 'dedup' or 'tabular'")
    counts = (requests, items, catalog)
    if not (all(is_integer(n) for n in counts) and requests > 0 and 0 < items <= catalog):
        raise ConfigError(
            f"simulate needs integers requests={requests!r} > 0 and 0 < items={items!r} <= catalog={catalog!r}"
        )
    requests, items, catalog = map(operator.index, counts)
    if not (is_real(duration_s) and 0 <= duration_s <= LAST - START):  # every request filed under an hour
        raise ConfigError(f"simulate duration_s={duration_s!r} must be a number of seconds in [0, {LAST - START:.0f}] "
                          "(the requests start on 2026-01-01 and must be served before the year 10000)")  # fmt: skip
    ensure_path(path, "simulate path", "the path of a new or empty directory")
    if not (is_integer(seed) and seed >= 0):
        raise ConfigError(f"simulate seed={seed!r} must be an integer >= 0")
    if not callable(scroll):
        raise ConfigError(f"simulate scroll={scroll!r} must be a function f(rng, head, page, size) -> items each of "
                          "`size` users sees, like default_scroll")  # fmt: skip
    for name, rate in (("duplicate_rate", duplicate_rate), ("late_rate", late_rate)):
        if not (is_real(rate) and 0 <= rate <= 1):
            raise ConfigError(f"simulate {name}={rate!r} must be a share of the label events, in [0, 1]")
    rng = np.random.default_rng(seed)
    catalog_batch = synthetic_features(catalog, *ITEM_FEATURES, "item", rng)
    users = synthetic_features(requests, *USER_FEATURES, "user", rng)
    item_weights, user_weights = rng.normal(0, 1.5, ITEM_FEATURES[0]), rng.normal(0, 1.5, USER_FEATURES[0])
    seen = np.asarray(scroll(rng, head, page, requests))
    if seen.shape != (requests,) or seen.dtype.kind not in "iu":
        raise ConfigError(f"simulate scroll returned {seen.dtype} of shape {seen.shape}; it must return "
                          f"{requests} integers (the items each user sees), like default_scroll")  # fmt: skip
    seen = np.clip(seen, 1, items)
    _check_new_directory(path)
    now = [START]
    clock = lambda: now[0]  # noqa: E731 - the simulation's time, shared by the store and the joiner
    os.makedirs(path, exist_ok=True)
    with contextlib.ExitStack() as cleanup:  # what was opened is closed, however the run ends
        if store is None:
            store = SqliteKV(os.path.join(path, "_kv.sqlite"), clock=clock)
            cleanup.callback(store.close)
        cls = LazyLogger if logger == "lazy" else EagerLogger
        extra = {"head": head, "page": page, "max_items": items, "clock": clock} if logger == "lazy" else {}
        log = cls(store, catalog_batch.schema, users.schema, ttl_s=ttl_s, **extra)
        cleanup.callback(log.close)
        writer = (DedupWriter if layout == "dedup" else TabularWriter)(path, catalog_batch.schema, users.schema, ("click",))
        cleanup.callback(writer.close)
        joiner = LabelJoiner(store, writer, ttl_s=ttl_s, window_s=window_s, clock=clock)
        served = START + np.arange(requests) * (duration_s / requests)
        events, pending, pending_since, peak = [], [], 0.0, {"logger": 0, "joiner": 0}
        started = time.perf_counter()
        bar = tqdm(total=requests, desc="simulating requests", unit="req", disable=not progress)
        order = 0  # ties keep the order they were pushed in
        for r in range(requests):
            heapq.heappush(events, (served[r], order, "rank", r))
            order += 1
            while events and (r == requests - 1 or events[0][0] <= served[min(r + 1, requests - 1)]):
                at, _, kind, payload = heapq.heappop(events)
                if pending and at - pending_since > JOIN_EVERY_S:  # join before the clock moves on
                    log.flush()  # simulated time runs far ahead of the logger's thread: let its pages land
                    joiner.add(pending)
                    pending = []
                now[0] = max(now[0], at)
                if kind == "rank":
                    ranked = rng.choice(catalog, items, replace=False)
                    features = catalog_batch.take(ranked)
                    log.log_ranking(payload, ranked, features, users.take([payload]))
                    if seen[payload] > head and logger == "lazy":
                        heapq.heappush(events, (at + PAGINATION_DELAY_S, order, "page", payload))
                        order += 1
                    for label_event, arrival in _labels(payload, ranked, features, users, seen[payload], head, at, item_weights,
                                                        user_weights, ttl_s, duplicate_rate, late_rate, rng):  # fmt: skip
                        heapq.heappush(events, (arrival, order, "label", label_event))
                        order += 1
                    bar.update(1)
                elif kind == "page":
                    log.on_paginate(payload, int(seen[payload]))
                else:
                    pending_since = at if not pending else pending_since
                    pending.append(payload)
                peak["logger"] = max(peak["logger"], log.stats.get("pending", 0))
                peak["joiner"] = max(peak["joiner"], joiner.open_requests)
        bar.close()
        log.flush()
        joiner.add(pending)
        joiner.close()
        log.close()
        report = {"path": os.path.abspath(path), "requests": requests, "ranked_items": requests * items,
                  "items_seen": int(seen.sum()), "logger": dict(log.stats), "kv": dict(store.stats),
                  "joiner": dict(joiner.stats), "writer": dict(writer.stats), "peak_buffered_requests": peak,
                  "seconds": time.perf_counter() - started}  # fmt: skip
        return report


def _check_new_directory(path) -> None:
    """Refuse a path that holds anything: a second run's clock starts again at START, so the
    ledger would have forgotten the first run's requests (older than ttl_s + window_s) and
    write them again.

    Raises:
        ConfigError: `path` is a file or a directory that is not empty.
    """
    if os.path.isdir(path) and not os.listdir(path):
        return
    if os.path.exists(path):
        what = "a directory that is not empty (an earlier run's dataset?)" if os.path.isdir(path) else "a file"
        raise ConfigError(
            f"simulate path {os.fspath(path)!r} is {what}; a run would write its requests next to what is there "
            "(and an earlier run's again): pass a new or empty directory"
        )


def _labels(request, ranked, features: Batch, users: Batch, seen: int, head: int, served: float, item_weights,
            user_weights, ttl_s, duplicate_rate, late_rate, rng):  # fmt: skip
    """[(event, arrival time)] for the seen items of one request: a click label each; an item
    beyond the head is seen (and labelled) only after the user scrolled to it."""
    logit = (item_weights @ (features.dense[:, :seen] - 0.5) + user_weights @ (users.dense[:, request] - 0.5)
             - 0.15 * np.arange(seen) - 1.0)  # fmt: skip
    clicks = rng.random(seen) < 1 / (1 + np.exp(-logit))
    out = []
    for i in range(seen):
        delay = rng.exponential(30.0) + (PAGINATION_DELAY_S if i >= head else 0.0)
        if rng.random() < late_rate:
            delay += ttl_s
        event = (request, int(ranked[i]), [float(clicks[i])], served)
        out.append((event, served + delay))
        if rng.random() < duplicate_rate:
            out.append((event, served + delay + rng.uniform(0, 60)))
    return out


def synthetic_features(rows: int, dense: int, lists: int, mean: int, prefix: str, rng) -> Batch:
    """`rows` rows of synthetic features: uniform dense values, Poisson-length id lists."""
    lengths = rng.poisson(mean, (lists, rows)).astype(np.int32)
    keys = tuple(f"{prefix}_list_{k}" for k in range(lists))
    sparse = KeyedJagged(keys, lengths.ravel(), rng.integers(0, 1 << 40, int(lengths.sum())))
    schema = Schema(tuple(Feature(f"{prefix}_dense_{d}", "dense", prefix) for d in range(dense))
                    + tuple(Feature(k, "sparse", prefix) for k in keys))  # fmt: skip
    names = tuple(f.name for f in schema.dense)
    return Batch(rows, names, rng.random((dense, rows), dtype=np.float32), sparse, schema=schema)
