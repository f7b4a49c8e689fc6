"""KV stores: batched puts with a TTL, gets, deletes, expiry; Redis restarts lose nothing."""

import pytest

import gpupre as gp
from gpupre.serving import RedisKV, SqliteKV


class Clock:
    def __init__(self):
        self.now = 1_000.0

    def __call__(self):
        return self.now


@pytest.fixture(params=["sqlite", "redis"])
def store(request, tmp_path):
    if request.param == "sqlite":
        s = SqliteKV(str(tmp_path / "kv.sqlite"))
    else:
        server = request.getfixturevalue("redis_server")
        s = RedisKV(server.url, spill_path=str(tmp_path / "spill"))
    yield s
    s.close()


def test_put_many_then_get_many_in_order_with_none_for_absent_keys(store):
    store.put_many({"a": b"1", b"b": b"\x00\xff"}, ttl_s=60)
    store.put_many([("c", b"")], ttl_s=60)
    assert store.get_many(["b", "zz", "a", "c"]) == [b"\x00\xff", None, b"1", b""]
    assert store.stats["keys_written"] == 3 and store.stats["put_ops"] == 2
    assert store.stats["bytes_written"] == len("a1bc") + 2


def test_a_put_replaces_and_delete_counts_what_was_there(store):
    store.put_many({"a": b"1"}, ttl_s=60)
    store.put_many({"a": b"2"}, ttl_s=60)
    assert store.get_many(["a"]) == [b"2"]
    assert store.delete(["a", "missing"]) == 1
    assert store.get_many(["a"]) == [None]


def test_many_keys_in_one_batch(store):
    store.put_many({f"k{i}": i.to_bytes(4, "little") for i in range(2_000)}, ttl_s=60)
    values = store.get_many([f"k{i}" for i in range(2_000)])
    assert [int.from_bytes(v, "little") for v in values] == list(range(2_000))


def test_sqlite_entries_expire_after_their_ttl_and_purge_removes_them(tmp_path):
    clock = Clock()
    store = SqliteKV(str(tmp_path / "kv.sqlite"), clock=clock)
    store.put_many({"short": b"s"}, ttl_s=10)
    store.put_many({"long": b"l"}, ttl_s=100)
    clock.now += 50
    assert store.get_many(["short", "long"]) == [None, b"l"]
    assert store.purge_expired() == 1 and len(store) == 1
    store.close()


def test_redis_entries_expire_after_their_ttl(redis_server, tmp_path):
    import time

    store = RedisKV(redis_server.url, spill_path=str(tmp_path / "spill"))
    store.put_many({"short": b"s", "other": b"o"}, ttl_s=0.2)
    assert store.get_many(["short"]) == [b"s"]
    time.sleep(0.4)
    assert store.get_many(["short", "other"]) == [None, None]


def test_sqlite_keeps_what_was_committed_across_reopening(tmp_path):
    path = str(tmp_path / "kv.sqlite")
    first = SqliteKV(path)
    first.put_many({"a": b"1"}, ttl_s=60)
    second = SqliteKV(path)  # another process would see the same
    assert second.get_many(["a"]) == [b"1"]
    first.close(), second.close()


def test_redis_restarted_mid_stream_loses_nothing(redis_server, tmp_path):
    store = RedisKV(redis_server.url, spill_path=str(tmp_path / "spill"), retries=2, backoff_s=0.01)
    store.put_many({"before": b"1"}, ttl_s=60)
    redis_server.stop()  # the data it held is gone with it (no persistence): only later writes count
    store.put_many({"during-1": b"2"}, ttl_s=60)
    store.put_many({"during-2": b"3"}, ttl_s=60)
    assert store.stats["spilled"] == 2 and (tmp_path / "spill").exists()
    redis_server.start()
    assert store.get_many(["during-1", "during-2"]) == [b"2", b"3"]
    assert store.stats["replayed"] == 2 and not (tmp_path / "spill").exists()


def test_a_new_store_replays_what_an_earlier_one_spilled(redis_server, tmp_path):
    spill = str(tmp_path / "spill")
    redis_server.stop()
    RedisKV(redis_server.url, spill_path=spill, retries=1).put_many({"k": b"v"}, ttl_s=60)
    redis_server.start()
    assert RedisKV(redis_server.url, spill_path=spill).get_many(["k"]) == [b"v"]


@pytest.mark.parametrize("bad,words", [({"a": "text"}, "must be bytes"), ({1: b"x"}, "must be str or bytes")])
def test_bad_keys_and_values_are_config_errors(tmp_path, bad, words):
    with pytest.raises(gp.ConfigError, match=words):
        SqliteKV(str(tmp_path / "kv.sqlite")).put_many(bad, ttl_s=1)
    with pytest.raises(gp.ConfigError, match="ttl_s"):
        SqliteKV().put_many({"a": b"1"}, ttl_s=0)
