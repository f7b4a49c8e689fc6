"""Eager and lazy logging: what is written when, and that it decodes to the ranked rows."""

import numpy as np
import pytest
from serving.helpers import lazily_logged
from transforms.helpers import assert_same, make_batch

import gpupre as gp
from gpupre.serving import EagerLogger, FeatureCodec, LazyLogger, SqliteKV, item_key, user_key


def ranked(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    items = make_batch({"price": rng.random(n).tolist()}, {"cat": [[int(c)] for c in rng.integers(0, 50, n)],
                       "tags": [rng.integers(0, 1000, rng.integers(0, 4)).tolist() for _ in range(n)]})  # fmt: skip
    return np.arange(100, 100 + n), items


USER = make_batch({"age": [31.0]}, {"history": [[5, 6, 7]]})


def logged(store, request, item_ids, items):
    """The rows of `items` whose features are in the store, decoded, and their indices."""
    values = store.get_many([item_key(request, i) for i in item_ids])
    at = [r for r, v in enumerate(values) if v is not None]
    decoded = FeatureCodec(items.schema).decode([values[r] for r in at]) if at else None
    return at, decoded


def test_eager_logs_every_item_and_the_user_once():
    store = SqliteKV()
    logger = EagerLogger(store, ranked(1)[1].schema, USER.schema)
    item_ids, items = ranked(20)
    logger.log_ranking("r1", item_ids, items, USER)
    at, decoded = logged(store, "r1", item_ids, items)
    assert at == list(range(20))
    assert_same(decoded, items, rtol=0)
    assert_same(FeatureCodec(USER.schema).decode(store.get_many([user_key("r1")])), USER, rtol=0)
    assert logger.stats["items_logged"] == 20 and store.stats["put_ops"] == 1
    user_bytes = len(user_key("r1")) + len(FeatureCodec(USER.schema).encode(USER)[0])
    assert logger.stats["user_bytes_logged"] == user_bytes
    assert logger.stats["bytes_logged"] == store.stats["bytes_written"] > user_bytes
    assert 0 < logger.stats["user_serialize_s"] <= logger.stats["serialize_s"]


def test_lazy_logs_the_head_then_whole_pages_on_pagination():
    store = SqliteKV()
    logger = LazyLogger(store, ranked(1)[1].schema, USER.schema, head=6, page=9)
    item_ids, items = ranked(40)
    logger.log_ranking("r1", item_ids, items, USER)
    assert logged(store, "r1", item_ids, items)[0] == list(range(6))
    assert store.get_many([user_key("r1")])[0] is not None
    logger.on_paginate("r1", seen_upto=7)  # item 6 is on the first page after the head: 6..14
    logger.flush()
    at, decoded = logged(store, "r1", item_ids, items)
    assert at == list(range(15))
    assert_same(decoded, items.take(np.arange(15)), rtol=0)
    logger.on_paginate("r1", seen_upto=12)  # already logged: nothing more
    logger.on_paginate("r1", seen_upto=1_000)  # to the end of the list
    logger.close()
    assert logged(store, "r1", item_ids, items)[0] == list(range(40))
    assert logger.stats["paginations"] == 2 and logger.stats["pending"] == 0


def test_lazy_writes_far_less_than_eager_when_users_stop_early():
    item_ids, items = ranked(100)
    eager_store, lazy_store = SqliteKV(), SqliteKV()
    eager, lazy = EagerLogger(eager_store, items.schema), LazyLogger(lazy_store, items.schema)
    for r in range(20):
        eager.log_ranking(r, item_ids, items)
        lazy.log_ranking(r, item_ids, items)
        if r % 4 == 0:
            lazy.on_paginate(r, seen_upto=8)
    lazy.close()
    assert lazy_store.stats["bytes_written"] < 0.15 * eager_store.stats["bytes_written"]
    assert lazy.stats["items_logged"] == 20 * 6 + 5 * 9


def test_the_buffer_is_bounded_and_unknown_requests_are_counted():
    logger = LazyLogger(SqliteKV(), ranked(1)[1].schema, max_pending=3, max_items=30)
    item_ids, items = ranked(50)
    for r in range(5):
        logger.log_ranking(r, item_ids, items)
    assert logger.stats["pending"] == 3 and logger.stats["evicted"] == 2
    logger.on_paginate(0, seen_upto=20)  # evicted
    logger.on_paginate("never-ranked", seen_upto=20)
    assert logger.stats["unknown_requests"] == 2
    logger.on_paginate(4, seen_upto=1_000)
    logger.close()
    assert logger.stats["items_logged"] == 5 * 6 + 24  # max_items: 30 of the 50 ranked


def test_a_repeated_signal_for_a_complete_request_is_counted_apart_from_unknown_ones():
    item_ids, items = ranked(15)
    logger = LazyLogger(SqliteKV(), items.schema, head=6, page=9, max_pending=2)
    logger.log_ranking(1, item_ids, items)
    logger.on_paginate(1, seen_upto=15)  # logs the rest: the request is complete
    logger.on_paginate(1, seen_upto=15)  # the client repeats the signal
    logger.log_ranking(2, item_ids[:4], items.take(np.arange(4)))  # fits in the head
    logger.on_paginate(2, seen_upto=4)
    assert (logger.stats["already_complete"], logger.stats["unknown_requests"]) == (2, 0)
    for r in (3, 4):  # only the last max_pending complete requests are remembered
        logger.log_ranking(r, item_ids[:4], items.take(np.arange(4)))
    logger.on_paginate(1, seen_upto=15)
    logger.log_ranking(2, item_ids, items)  # ranked again, longer: pending, not complete
    logger.on_paginate(2, seen_upto=15)
    logger.close()
    assert (logger.stats["already_complete"], logger.stats["unknown_requests"]) == (2, 1)
    assert logger.stats["items_logged"] == 15 + 4 + 2 * 4 + 15


def test_the_page_queue_is_bounded_and_on_paginate_waits_for_room_dropping_nothing():
    import threading

    writing, go = threading.Event(), threading.Event()

    class Slow(SqliteKV):
        def put_many(self, items, ttl_s):
            if threading.current_thread().name == "gpupre-lazy-logger":
                writing.set()
                go.wait(10)
            super().put_many(items, ttl_s)

    item_ids, items = ranked(30)
    store = Slow()
    logger = LazyLogger(store, items.schema, head=6, page=9, max_queued_pages=2)
    for r in range(6):
        logger.log_ranking(r, item_ids, items)
    done = []

    def paginate():
        for r in range(6):
            logger.on_paginate(r, seen_upto=30)
            done.append(r)

    pager = threading.Thread(target=paginate, daemon=True)
    pager.start()
    assert writing.wait(10)
    for _ in range(1000):
        if len(done) >= 2:
            break
        pager.join(0.01)
    pager.join(0.2)  # room for 2 pages not written yet (the one being written is one): the third waits
    assert pager.is_alive() and len(done) == 2
    go.set()
    pager.join(10)
    logger.close()
    assert len(done) == 6 and logger.stats["queue_full_waits"] >= 1
    assert all(logged(store, r, item_ids, items)[0] == list(range(30)) for r in range(6))


def test_failed_page_writes_free_their_room_in_the_queue():
    import threading

    class Failing(SqliteKV):
        def put_many(self, items, ttl_s):
            if threading.current_thread().name == "gpupre-lazy-logger":
                raise OSError("disk full")
            super().put_many(items, ttl_s)

    item_ids, items = ranked(20)
    logger = LazyLogger(Failing(), items.schema, head=6, page=9, max_queued_pages=1)
    failures = []

    def paginate():
        for r in range(3):
            logger.log_ranking(r, item_ids, items)
            logger.on_paginate(r, seen_upto=20)
            with pytest.raises(gp.DataError, match="disk full") as raised:
                logger.flush()
            failures.append(raised.value)
        logger.close()

    pager = threading.Thread(target=paginate, daemon=True)
    pager.start()
    pager.join(10)
    assert not pager.is_alive() and len(failures) == 3
    assert (logger.stats["failed_pages"], logger.stats["items_not_logged"]) == (3, 3 * 14)


def test_a_batch_of_other_features_is_refused_at_ranking_even_with_no_head():
    item_ids, items = ranked(15)
    other = make_batch({"size": [1.0] * 15}, {"cat": [[1]] * 15})
    store = SqliteKV()
    logger = LazyLogger(store, items.schema, head=0, page=9)
    with pytest.raises(gp.DataError, match=r"request 7: items: features \['size', 'cat'\] do not match"):
        logger.log_ranking(7, item_ids, other)
    logger.on_paginate(7, seen_upto=15)  # never buffered
    logger.log_ranking(8, item_ids, items)  # a later, valid request is not failed by it
    logger.on_paginate(8, seen_upto=15)
    logger.close()
    assert logged(store, 8, item_ids, items)[0] == list(range(15)) and len(store) == 15
    assert (logger.stats["unknown_requests"], logger.stats["failed_pages"]) == (1, 0)


def test_a_failed_page_write_is_raised_on_the_callers_thread():
    import threading

    asked = threading.Event()

    class Failing(SqliteKV):
        def put_many(self, items, ttl_s):
            if any(k.startswith("i/bad") and not k.endswith(("/100", "/101", "/102", "/103", "/104", "/105")) for k, _ in items):
                asked.wait(10)  # both pages are queued before the first fails
                raise OSError("disk full")
            super().put_many(items, ttl_s)

    logger = LazyLogger(Failing(), ranked(1)[1].schema)
    item_ids, items = ranked(20)
    logger.log_ranking("bad", item_ids, items)
    logger.log_ranking("bad2", item_ids, items)
    logger.on_paginate("bad", seen_upto=10)
    logger.on_paginate("bad2", seen_upto=20)  # its pages fail too: counted, though one error is raised
    asked.set()
    with pytest.raises(gp.DataError, match=r"disk full \(2 pages, 23 items not logged"):
        logger.flush()
    assert (logger.stats["failed_pages"], logger.stats["items_not_logged"]) == (2, 23)
    logger.close()


def test_a_request_expires_from_the_buffer_on_pagination_and_a_rerank_is_the_newest():
    clock = [0.0]
    item_ids, items = ranked(30)
    logger = LazyLogger(SqliteKV(clock=lambda: clock[0]), items.schema, ttl_s=60, clock=lambda: clock[0])
    logger.log_ranking(1, item_ids, items)
    logger.log_ranking(2, item_ids, items)
    clock[0] = 50.0
    logger.log_ranking(1, item_ids, items)  # ranked again: now newer than 2
    clock[0] = 100.0
    logger.log_ranking(3, item_ids, items)  # 2 is past its TTL and goes; 1 stays
    assert logger.stats["expired"] == 1 and logger.stats["pending"] == 2
    clock[0] = 200.0
    logger.on_paginate(1, seen_upto=30)  # its labels could no longer join: not logged
    logger.close()
    assert logger.stats["expired"] == 2 and logger.stats["items_logged"] == 4 * 6


def test_lazy_logging_from_torch_tensors_writes_the_same_bytes():
    item_ids, items = ranked(30)
    numpy, torch = lazily_logged(item_ids, (items, items.to_torch()), items.schema, seen_upto=20)
    assert numpy == torch


def test_mismatched_ids_and_rows_are_data_errors():
    item_ids, items = ranked(5)
    logger = EagerLogger(SqliteKV(), items.schema)
    with pytest.raises(gp.DataError, match="4 item ids for 5 rows"):
        logger.log_ranking("r", item_ids[:4], items)
    with pytest.raises(gp.DataError, match="user features"):
        logger.log_ranking("r", item_ids, items, USER)
    with pytest.raises(gp.ConfigError, match="page=0"):
        LazyLogger(SqliteKV(), items.schema, page=0)
    with pytest.raises(gp.DataError, match="repeat"):
        logger.log_ranking("r", [1, 2, 1, 3, 4], items)
    with pytest.raises(gp.DataError, match="items must be a gp.Batch"):
        logger.log_ranking("r", item_ids, items.dense)
    for ttl in (-1, "3600", None, float("nan")):
        with pytest.raises(gp.ConfigError, match="ttl_s"):
            LazyLogger(SqliteKV(), items.schema, ttl_s=ttl)


@pytest.mark.parametrize("case", ["short lengths", "few values", "negative length", "short dense"])
def test_a_batch_whose_arrays_disagree_is_a_data_error_not_a_crash(case):
    n = 5
    dense, lengths, values = np.ones((1, n), np.float32), np.ones(n, np.int32), np.arange(n, dtype=np.int64)
    if case == "short lengths":
        lengths = lengths[:2]
    elif case == "few values":
        values = values[:2]
    elif case == "negative length":
        lengths[0] = -1
    else:
        dense = dense[:, :2]
    schema = gp.Schema((gp.Feature("price", "dense"), gp.Feature("cat", "sparse")))
    batch = gp.Batch(n, ("price",), dense, gp.KeyedJagged(("cat",), lengths, values), schema=schema)
    with pytest.raises(gp.DataError, match="build the Batch|do not describe"):
        EagerLogger(SqliteKV(), schema).log_ranking(1, np.arange(n), batch)


@pytest.mark.parametrize("cls", [EagerLogger, LazyLogger])
def test_a_closed_logger_refuses_more_requests(cls):
    item_ids, items = ranked(20)
    logger = cls(SqliteKV(), items.schema)
    logger.close()
    with pytest.raises(gp.ConfigError, match=f"this {cls.__name__} is closed"):
        logger.log_ranking("r", item_ids, items)
    if cls is LazyLogger:
        with pytest.raises(gp.ConfigError, match="is closed"):
            logger.on_paginate("r", seen_upto=10)
    logger.flush()  # nothing was queued: returns at once


def test_request_ids_are_int64_integers_or_strings():
    item_ids, items = ranked(3)
    store = SqliteKV()
    logger = EagerLogger(store, items.schema)
    for bad in (2**63, -(2**63) - 1, True, 1.5, None):
        with pytest.raises(gp.DataError, match=r"request_id .* must be an integer in int64 range or a string"):
            logger.log_ranking(bad, item_ids, items)
    logger.log_ranking(np.int64(7), item_ids, items)
    logger.log_ranking(2**63 - 1, item_ids, items)
    assert None not in store.get_many([item_key(7, 100), item_key(2**63 - 1, 102)])
    assert logger.stats["requests"] == 2


def test_item_ids_must_be_integers_so_label_events_find_them():
    item_ids, items = ranked(3)
    store = SqliteKV()
    logger = EagerLogger(store, items.schema)
    for bad in (item_ids.astype(np.float64), item_ids.astype(str), np.array([True, False, True]),
                np.array([1, 2, 2**63], np.uint64), [100, 101, 2**64]):  # fmt: skip
        with pytest.raises(gp.DataError, match="item ids must be integers in int64 range"):
            logger.log_ranking("r", bad, items)
    assert len(store) == 0
    logger.log_ranking("r", item_ids.astype(np.uint16), items)
    logger.log_ranking("s", [100, 101, 102], items)
    assert None not in store.get_many([item_key(r, i) for r in "rs" for i in (100, 101, 102)])


def test_on_paginate_needs_an_integer_seen_upto():
    item_ids, items = ranked(30)
    store = SqliteKV()
    logger = LazyLogger(store, items.schema, head=6, page=9)
    logger.log_ranking("r", item_ids, items)
    for bad in ("x", float("nan"), float("inf"), 7.0, True):
        with pytest.raises(gp.ConfigError, match="seen_upto=.* must be an integer"):
            logger.on_paginate("r", bad)
    logger.on_paginate("r", np.int64(7))
    logger.close()
    assert logged(store, "r", item_ids, items)[0] == list(range(15))


def test_bytes_are_counted_only_once_the_store_took_them():
    class Down(SqliteKV):
        def put_many(self, items, ttl_s):
            raise gp.BackendUnavailable("the store is down")

    logger = EagerLogger(Down(), ranked(1)[1].schema, USER.schema)
    with pytest.raises(gp.BackendUnavailable):
        logger.log_ranking("r1", *ranked(5), USER)
    assert (logger.stats["bytes_logged"], logger.stats["user_bytes_logged"], logger.stats["items_logged"]) == (0, 0, 0)
