"""LabelJoiner: joins what was logged, merges duplicates, reports what it could not join, writes once."""

import json
import threading

import numpy as np
import pytest

import gpupre as gp
from gpupre.serving import DedupWriter, EagerLogger, LabelJoiner, LazyLogger, SqliteKV, TabularWriter, item_key
from gpupre.serving.simulate import synthetic_features

T0 = 1_767_225_600.0


class Clock:
    def __init__(self):
        self.now = T0

    def __call__(self):
        return self.now


@pytest.fixture
def served(tmp_path):
    """A store with two logged requests of 10 items each, a joiner writing de-dup tables."""
    clock = Clock()
    rng = np.random.default_rng(1)
    items, user = synthetic_features(10, 3, 2, 3, "item", rng), synthetic_features(1, 2, 2, 5, "user", rng)
    store = SqliteKV(clock=clock)
    logger = EagerLogger(store, items.schema, user.schema, ttl_s=100)
    for r in (1, 2):
        logger.log_ranking(r, np.arange(10) + 10 * r, items, user)
    writer = DedupWriter(tmp_path / "out", items.schema, user.schema, ("click",))
    joiner = LabelJoiner(store, writer, ttl_s=100, window_s=10, clock=clock)
    return clock, store, items, user, joiner


def rows(joiner):
    ds = gp.Dataset(joiner.writer.path, passthrough=("request_id", "item_id"))
    return gp.Batch.concat([ds.read(u).expand() for u in ds.units()])


def rejected(joiner):
    with open(joiner._rejects_path) as f:
        return [json.loads(line) for line in f]


def test_events_join_the_logged_features(served):
    clock, _, items, user, joiner = served
    joiner.add([(1, 10 + i, [float(i % 2)], T0) for i in (0, 3, 4)] + [(2, 25, 1.0, T0)])
    joiner.close()
    out = rows(joiner)
    assert out.extras["request_id"].tolist() == [1, 1, 1, 2]
    assert out.extras["item_id"].tolist() == [10, 13, 14, 25]
    assert out.labels.tolist() == [0, 1, 0, 1]
    expected = items.take([0, 3, 4, 5])
    got = out.take(np.arange(4))
    assert np.array_equal(got.dense[2:], expected.dense)  # the two user dense features come first
    assert np.array_equal(got.dense[:2], np.repeat(user.dense, 4, axis=1))
    assert joiner.stats["joined"] == 4 and joiner.stats["requests_written"] == 2


def test_duplicates_merge_by_maximum_and_replays_are_skipped(served):
    clock, _, _, _, joiner = served
    event = (1, 11, [0.0], T0)
    joiner.add([event, event, (1, 11, [1.0], T0)])
    joiner.add([event])
    assert joiner.stats["duplicates"] == 3 and joiner.open_requests == 1
    joiner.flush()
    joiner.add([event, (1, 12, [1.0], T0)])  # the whole request is written: replays change nothing
    joiner.close()
    assert joiner.stats["already_written"] == 2
    out = rows(joiner)
    assert out.num_rows == 1 and out.labels.tolist() == [1.0]


def test_late_unknown_malformed_and_corrupt_events_are_counted_and_kept(served):
    clock, store, _, _, joiner = served
    store.put_many({item_key(2, 21): b"\x00\x01"}, ttl_s=100)
    clock.now = T0 + 50
    joiner.add([
        (1, 10, [1.0], T0 - 60),  # served 110 s ago, TTL 100 s
        (9, 10, [1.0], T0),  # a request that was never ranked
        (1, 99, [1.0], T0),  # an item that was never logged
        (1, 10, [1.0, 0.0], T0),  # two labels for one label name
        (1, "x", [1.0], T0),
        "junk",
        (2, 21, [1.0], T0),  # corrupt bytes in the store
        (2, 20, [1.0], T0),
    ])  # fmt: skip
    joiner.close()
    s = joiner.stats
    assert (s["late"], s["unknown"], s["malformed"], s["corrupt"], s["joined"]) == (1, 2, 3, 1, 1)
    reasons = [r["reason"] for r in rejected(joiner)]
    assert sorted(reasons) == sorted(["late", "unknown", "unknown", "malformed", "malformed", "malformed", "corrupt"])
    assert "not joined" in joiner.report() and "_rejected.jsonl" in joiner.report()


def test_a_rejected_line_cut_short_by_a_killed_joiner_does_not_swallow_the_next_joiners_lines(served):
    clock, store, _, _, joiner = served
    with open(joiner._rejects_path, "w") as f:
        f.write('{"reason": "late", "why": "came af')  # the process was killed while writing this line
    joiner.add([(1, 99, [1.0], T0 - 200), "junk"])
    joiner.add(["more junk"])
    joiner.close()
    with open(joiner._rejects_path) as f:
        lines = f.read().splitlines()
    assert lines[0] == '{"reason": "late", "why": "came af'
    assert [json.loads(line)["reason"] for line in lines[1:]] == ["late", "malformed", "malformed"]


def test_requests_wait_for_their_window_and_memory_is_bounded(tmp_path, served):
    clock, store, items, user, joiner = served
    joiner.add([(1, 10, [0.0], T0)])
    assert joiner.open_requests == 1
    clock.now = T0 + 11  # the window of 10 s has passed: written on the next add
    joiner.add([(2, 20, [0.0], T0 + 5)])
    assert joiner.stats["requests_written"] == 1 and joiner.open_requests == 1
    small = LabelJoiner(store, TabularWriter(tmp_path / "t", items.schema, user.schema), ttl_s=100, window_s=60,
                        clock=clock, max_open=1)  # fmt: skip
    small.add([(1, 10, [0.0], T0 + 5), (2, 20, [0.0], T0 + 5)])
    assert small.open_requests == 1 and small.stats["requests_closed_early"] == 1
    small.close()


def test_labels_of_a_request_closed_early_are_reported_not_skipped_as_replays(tmp_path, served):
    clock, store, items, user, _ = served
    joiner = LabelJoiner(store, DedupWriter(tmp_path / "early", items.schema, user.schema, ("click",)), ttl_s=100,
                         window_s=50, clock=clock, max_open=1)  # fmt: skip
    joiner.add([(1, 10, [0.0], T0)])
    joiner.add([(2, 20, [0.0], T0)])  # request 1 is written early, its window still open
    assert joiner.stats["requests_closed_early"] == 1
    clock.now = T0 + 5
    joiner.add([(1, 10, [1.0], T0), (1, 11, [1.0], T0)])  # a click and another item, inside the window
    assert joiner.stats["closed_early"] == 2 and joiner.stats["already_written"] == 0
    assert [r["reason"] for r in rejected(joiner)] == ["closed_early", "closed_early"]
    clock.now = T0 + 60  # the window is over: what comes now is after it, as for any request
    joiner.add([(1, 12, [1.0], T0)])
    assert joiner.stats["closed_early"] == 2 and joiner.stats["already_written"] == 1
    joiner.close()


def test_an_event_ttl_s_after_its_request_is_late(served):
    clock, _, _, _, joiner = served
    clock.now = T0 + 100  # the store dropped the features at ttl_s
    joiner.add([(1, 10, [1.0], T0)])
    assert joiner.stats["late"] == 1 and joiner.stats["unknown"] == 0
    joiner.close()


def test_a_batch_the_store_failed_on_is_counted_once_when_retried(served):
    clock, store, _, _, joiner = served
    joiner.add([(1, 10, [0.0], T0)])
    read = store.get_many
    store.get_many = lambda keys: (_ for _ in ()).throw(gp.BackendUnavailable("the store is down"))
    batch = [(1, 10, [1.0], T0), (1, 11, [0.0], T0)]
    with pytest.raises(gp.BackendUnavailable):
        joiner.add(batch)
    store.get_many = read
    joiner.add(batch)
    joiner.close()
    assert (joiner.stats["events"], joiner.stats["duplicates"], joiner.stats["joined"]) == (3, 1, 2)


def test_features_not_found_yet_are_looked_up_again_when_the_request_is_written(served):
    clock, store, items, user, joiner = served
    keys = [item_key(1, 10), item_key(1, 11), "u/2"]
    logged = dict(zip(keys, store.get_many(keys)))
    store.delete(list(logged))  # a page (and a user row) still on its way to the store when the labels come
    joiner.add([(1, 10, [1.0], T0), (1, 11, [0.0], T0), (1, 12, [1.0], T0), (2, 20, [1.0], T0)])
    assert joiner.open_requests == 2 and joiner.stats["unknown"] == 0
    store.put_many(logged, ttl_s=100)  # the page lands within the window
    clock.now = T0 + 10
    joiner.add([])
    assert (joiner.stats["joined"], joiner.stats["unknown"], joiner.stats["requests_written"]) == (4, 0, 2)
    joiner.close()
    out = rows(joiner)
    assert out.extras["item_id"].tolist() == [10, 11, 12, 20] and out.labels.tolist() == [1, 0, 1, 1]
    assert np.array_equal(out.dense[2:], items.take([0, 1, 2, 0]).dense)


def test_a_store_that_fails_when_requests_are_written_keeps_them_open(served):
    clock, store, _, _, joiner = served
    store.delete([item_key(1, 11)])
    joiner.add([(1, 10, [1.0], T0), (1, 11, [1.0], T0)])  # 11 waits for its features
    read = store.get_many
    store.get_many = lambda keys: (_ for _ in ()).throw(gp.BackendUnavailable("the store is down"))
    clock.now = T0 + 10
    with pytest.raises(gp.BackendUnavailable):
        joiner.add([])
    assert joiner.open_requests == 1 and joiner.stats["requests_written"] == 0
    store.get_many = read
    joiner.close()  # 11 is still missing: unknown; 10 is written
    assert (joiner.stats["joined"], joiner.stats["unknown"], joiner.stats["requests_written"]) == (1, 1, 1)


def test_requests_whose_commit_failed_are_counted_as_written_once_a_later_commit_writes_them(served):
    clock, store, _, _, joiner = served
    writer = joiner.writer
    writer.requests_per_file = 1
    write_file = writer._write_file
    writer._write_file = lambda *a: (_ for _ in ()).throw(OSError(28, "No space left on device"))
    joiner.add([(1, 10, [1.0], T0), (1, 11, [0.0], T0)])
    clock.now = T0 + 10
    with pytest.raises(OSError, match="No space left"):
        joiner.add([(2, 20, [1.0], T0)])  # request 1 is due: taken by the writer, its commit fails
    writer._write_file = write_file
    clock.now = T0 + 20
    joiner.add([(1, 12, [1.0], T0)])  # a replay: request 1 is the writer's now
    joiner.close()
    assert rows(joiner).num_rows == 3
    s = joiner.stats
    assert (s["joined"], s["requests_written"], s["already_written"]) == (3, 2, 1)
    assert s["events"] == s["joined"] + s["duplicates"] + s["already_written"]


def test_events_waiting_for_features_are_bounded_by_max_open(tmp_path, served):
    clock, store, items, user, _ = served
    joiner = LabelJoiner(store, DedupWriter(tmp_path / "w", items.schema, user.schema, ("click",)), ttl_s=100,
                         window_s=50, clock=clock, max_open=2)  # fmt: skip
    joiner.add([(1, 90 + i, [1.0], T0) for i in range(5)])  # never logged: two wait, the rest are unknown now
    assert joiner.stats["unknown"] == 3 and joiner.open_requests == 1
    joiner.close()
    assert joiner.stats["unknown"] == 5 and joiner.stats["requests_written"] == 0


def test_lazy_logging_finds_the_features_of_every_item_paginated_to(tmp_path):
    clock = Clock()
    rng = np.random.default_rng(2)
    items, user = synthetic_features(100, 2, 2, 3, "item", rng), synthetic_features(1, 1, 1, 3, "user", rng)
    store = SqliteKV(clock=clock)
    logger = LazyLogger(store, items.schema, user.schema, head=6, page=9, clock=clock)
    writer = DedupWriter(tmp_path, items.schema, user.schema)
    joiner = LabelJoiner(store, writer, clock=clock)
    seen = {r: int(s) for r, s in enumerate(rng.integers(1, 40, 30))}
    for r in seen:
        logger.log_ranking(r, np.arange(100), items, user)
        logger.on_paginate(r, seen[r])
    logger.close()
    joiner.add([(r, i, [1.0], T0) for r, s in seen.items() for i in range(s)])
    joiner.close()
    assert joiner.stats["joined"] == sum(seen.values()) and joiner.stats["unknown"] == 0
    ds = gp.Dataset(tmp_path, features=list(items.schema.names), passthrough=("item_id",))
    out = gp.Batch.concat([ds.read(u).expand() for u in ds.units()])
    expected = items.take(out.extras["item_id"])  # every row holds its item's features
    assert np.array_equal(out.dense, expected.dense)
    assert np.array_equal(out.sparse.lengths, expected.sparse.lengths)
    assert np.array_equal(out.sparse.values, expected.sparse.values)


def test_a_click_that_comes_before_its_lazy_page_is_written_is_joined(tmp_path):
    clock, rng = Clock(), np.random.default_rng(3)
    items, user = synthetic_features(30, 2, 2, 3, "item", rng), synthetic_features(1, 1, 1, 3, "user", rng)
    store, landed = SqliteKV(clock=clock), threading.Event()
    put = store.put_many

    def put_many(values, ttl_s):  # pages (the logger's thread) wait for `landed`; the head does not
        if threading.current_thread() is not threading.main_thread():
            landed.wait(10)
        put(values, ttl_s)

    store.put_many = put_many
    logger = LazyLogger(store, items.schema, user.schema, head=6, page=9, clock=clock)
    joiner = LabelJoiner(store, DedupWriter(tmp_path, items.schema, user.schema), window_s=60, clock=clock)
    logger.log_ranking(1, np.arange(30), items, user)
    logger.on_paginate(1, 12)  # items 6..14 are queued, not yet in the store
    joiner.add([(1, 3, [1.0], T0), (1, 11, [1.0], T0)])  # the click on item 11 comes first
    landed.set()
    logger.flush()
    clock.now = T0 + 60
    joiner.add([])
    logger.close()
    joiner.close()
    assert (joiner.stats["joined"], joiner.stats["unknown"]) == (2, 0)


def test_bad_arguments_are_config_errors(served):
    _, store, _, _, joiner = served
    for kw in ({"ttl_s": 0}, {"window_s": -1}, {"max_open": 0}):
        with pytest.raises(gp.ConfigError, match="LabelJoiner"):
            LabelJoiner(store, joiner.writer, **kw)


@pytest.mark.parametrize("request_id,item_id", [(2**63, 10), (1, 2**63)], ids=["request-id", "item-id"])
def test_ids_outside_int64_are_malformed_and_the_rest_is_written(served, request_id, item_id):
    _, store, _, _, joiner = served
    user, item = store.get_many(["u/1", item_key(1, 10)])
    store.put_many({f"u/{request_id}": user, item_key(request_id, item_id): item}, ttl_s=100)  # as if logged
    joiner.add([(request_id, item_id, [1.0], T0), (1, 10, [1.0], T0), (2, 20, [0.0], T0)])
    joiner.close()
    assert joiner.stats["malformed"] == 1 and joiner.stats["requests_written"] == 2
    assert "int64" in rejected(joiner)[0]["why"]
    out = rows(joiner)
    assert out.extras["request_id"].tolist() == [1, 2] and out.extras["item_id"].tolist() == [10, 20]


def test_a_malformed_event_does_not_fix_the_request_id_type(served):
    _, _, _, _, joiner = served
    joiner.add([("oops", "not-an-item", [1.0], T0)])
    joiner.add([(1, 10, [1.0], T0), (np.int64(2), np.int64(20), [0.0], T0)])
    joiner.close()
    assert (joiner.stats["malformed"], joiner.stats["joined"]) == (1, 2)
    assert rows(joiner).extras["request_id"].tolist() == [1, 2]


def test_an_event_never_joined_does_not_fix_the_request_id_type(served):
    _, _, _, _, joiner = served
    joiner.add([("never-logged", 10, [1.0], T0)])  # valid, but unknown
    joiner.add([(1, 10, [1.0], T0), (2, 20, [0.0], T0)])
    joiner.close()
    assert (joiner.stats["unknown"], joiner.stats["joined"], joiner.stats["malformed"]) == (1, 2, 0)


def test_times_in_milliseconds_and_numbers_too_large_are_malformed_and_the_rest_is_written(served):
    _, _, _, _, joiner = served
    joiner.add([(1, 10, [1.0], T0 * 1000), (1, 11, [10**40], T0), (1, 12, [1.0], 10**400), (2, 20, [0.0], T0)])
    joiner.close()
    assert (joiner.stats["malformed"], joiner.stats["requests_written"]) == (3, 1)
    assert "milliseconds?" in rejected(joiner)[0]["why"] and "too large" in rejected(joiner)[2]["why"]
    assert rows(joiner).extras["item_id"].tolist() == [20]


def test_a_reopened_dataset_keeps_its_request_id_type(served):
    _, store, items, user, joiner = served
    joiner.add([(1, 10, [1.0], T0)])
    joiner.close()
    writer = DedupWriter(joiner.writer.path, items.schema, user.schema, ("click",))
    again = LabelJoiner(store, writer, ttl_s=100, window_s=10, clock=joiner.clock)
    again.add([("1", 10, [1.0], T0), (2, 20, [1.0], T0)])  # str "1" would pass for int 1 in the ledger
    again.close()
    assert (again.stats["malformed"], again.stats["already_written"], again.stats["joined"]) == (1, 0, 1)
    assert "is a str but the dataset's are ints" in rejected(again)[-1]["why"]


def test_a_closed_joiner_and_events_that_are_not_a_list_are_config_errors(served):
    _, _, _, _, joiner = served
    with pytest.raises(gp.ConfigError, match="iterable of"):
        joiner.add(None)
    joiner.close()
    joiner.close()  # twice is fine
    with pytest.raises(gp.ConfigError, match="LabelJoiner is closed"):
        joiner.add([(1, 10, [1.0], T0)])
    with pytest.raises(gp.ConfigError, match="DedupWriter .* is closed"):
        joiner.writer.write([])


def test_requests_closed_early_are_forgotten_after_their_window_whatever_a_clock_said(tmp_path, served):
    clock, store, items, user, _ = served
    joiner = LabelJoiner(store, DedupWriter(tmp_path / "skew", items.schema, user.schema, ("click",)), ttl_s=100,
                         window_s=50, clock=clock, max_open=1)  # fmt: skip
    joiner.add([(1, 10, [0.0], T0 + 40)])  # served "in the future" by a skewed clock
    joiner.add([(2, 20, [0.0], T0)])  # request 1 is written early
    clock.now = T0 + 60  # request 2's window is over, not request 1's
    joiner.add([])
    assert list(joiner._closed_early) == [1]
    logger = EagerLogger(store, items.schema, user.schema, ttl_s=100)
    for r in range(3, 10):  # more requests closed early than max_open: the earliest served are forgotten
        logger.log_ranking(r, np.arange(10) + 10 * r, items, user)
        joiner.add([(r, 10 * r, [0.0], T0 + 60)])
    assert joiner.stats["requests_closed_early"] == 7 and len(joiner._closed_early) == 1
    joiner.close()


@pytest.mark.parametrize("logged, labelled", [(str, np.str_), (np.str_, str)])
def test_numpy_string_request_ids_join_as_strings(tmp_path, logged, labelled):
    """Ids from a numpy array or pandas `.values` are `np.str_`: the same ids as plain strings."""
    clock = Clock()
    rng = np.random.default_rng(1)
    items = synthetic_features(10, 3, 2, 3, "item", rng)
    store = SqliteKV(clock=clock)
    logger = EagerLogger(store, items.schema, ttl_s=100)
    for r in ("req-a", "req-b"):
        logger.log_ranking(logged(r), np.arange(10), items)
    joiner = LabelJoiner(store, DedupWriter(tmp_path, items.schema), ttl_s=100, window_s=0, clock=clock)
    joiner.add([(logged("req-a"), 3, [1.0], T0)])  # written: it fixes the dataset's kind of id
    joiner.add([(labelled("req-b"), 3, [1.0], T0)])
    joiner.close()
    assert joiner.stats["joined"] == 2 and joiner.stats["malformed"] == 0
    assert sorted(rows(joiner).extras["request_id"].tolist()) == ["req-a", "req-b"]


@pytest.mark.parametrize("make, words", [
    (lambda p, s: gp.serving.RedisKV(None), r"RedisKV url=None \(NoneType\) .*; pass a Redis URL"),
    (lambda p, s: gp.serving.RedisKV(42), r"RedisKV url=42 \(int\) is of the wrong type; pass a Redis URL"),
    (lambda p, s: EagerLogger(None, s), r"EagerLogger store=None \(NoneType\) .*; pass a KVStore"),
    (lambda p, s: LazyLogger("features.sqlite", s), r"LazyLogger store='features.sqlite' \(str\) .*; pass a KVStore"),
    (lambda p, s: EagerLogger(SqliteKV(), ["price"]), r"item_schema=\['price'\] \(list\) .*; pass a gp.Schema"),
    (lambda p, s: EagerLogger(SqliteKV(), s, "user"), r"EagerLogger user_schema='user' \(str\) .* or None"),
    (lambda p, s: DedupWriter(p, None), r"DedupWriter item_schema=None \(NoneType\) .*; pass a gp.Schema"),
    (lambda p, s: DedupWriter(None, s), r"DedupWriter path=None \(NoneType\) .*; pass the output directory's path"),
    (lambda p, s: TabularWriter(p, s, ("age",)), r"TabularWriter user_schema=\('age',\) \(tuple\) .*; pass a gp.Schema"),
    (lambda p, s: LabelJoiner(SqliteKV(), None), r"LabelJoiner writer=None \(NoneType\) .*; pass a DedupWriter or"),
    (lambda p, s: LabelJoiner(None, DedupWriter(p, s)), r"LabelJoiner store=None \(NoneType\) .*; pass the KVStore"),
    (lambda p, s: SqliteKV(clock=None), r"SqliteKV clock=None \(NoneType\) must be a function that returns the time"),
    (lambda p, s: LazyLogger(SqliteKV(), s, clock=T0), r"LazyLogger clock=1767225600.0 \(float\) must be a function"),
    (lambda p, s: LabelJoiner(SqliteKV(), DedupWriter(p, s), clock="now"), r"LabelJoiner clock='now' \(str\) must be"),
], ids=["redis-none", "redis-int", "logger-store", "logger-path", "item-schema-list", "user-schema-str",
        "writer-schema", "writer-path", "writer-user-schema", "joiner-writer", "joiner-store", "store-clock",
        "logger-clock", "joiner-clock"])  # fmt: skip
def test_arguments_of_the_wrong_type_are_config_errors_naming_them(tmp_path, make, words):
    pytest.importorskip("redis")
    schema = gp.Schema((gp.Feature("price", "dense", "item"),))
    with pytest.raises(gp.ConfigError, match=words):
        make(tmp_path / "out", schema)


def test_a_store_that_fails_after_the_events_were_taken_says_not_to_give_them_again(served):
    clock, store, _, _, joiner = served
    store.delete([item_key(1, 11)])
    joiner.add([(1, 11, [1.0], T0)])  # waits for its features: looked up again when its request is due
    read, calls = store.get_many, []

    def first_only(keys):  # the events' look-up answers, the due requests' second one fails
        calls.append(keys)
        if len(calls) > 1:
            raise gp.BackendUnavailable("the store is down")
        return read(keys)

    store.get_many = first_only
    clock.now = T0 + 10
    with pytest.raises(gp.BackendUnavailable, match="the 1 events of this call were taken, so do not give them again"):
        joiner.add([(1, 10, [1.0], T0)])
    store.get_many = read
    joiner.close()
    assert (joiner.stats["events"], joiner.stats["joined"], joiner.stats["duplicates"]) == (2, 1, 0)
