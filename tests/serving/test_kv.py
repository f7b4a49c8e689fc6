"""KV stores: batched puts with a TTL, gets, deletes, expiry; Redis restarts lose nothing."""

import os
import re
import socket
import sqlite3
import struct
import time
import warnings

import numpy as np
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
    store.put_many({"short": b"s", "other": b"o"}, ttl_s=1)
    assert store.get_many(["short"]) == [b"s"]  # a pause of a second on a loaded machine is rare
    time.sleep(1.5)
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


def test_every_store_refuses_an_infinite_ttl_as_redis_must(store):
    for ttl_s in (float("inf"), 1e16):
        with pytest.raises(gp.ConfigError, match=re.escape(f"ttl_s={ttl_s!r} must be a positive, finite number of seconds, at")):
            store.put_many({"a": b"1"}, ttl_s=ttl_s)


def test_numpy_ttls_are_seconds_too(store):
    store.put_many({"a": b"1"}, ttl_s=np.int64(60))
    store.put_many({"b": b"2"}, ttl_s=np.float32(60))
    assert store.get_many(["a", "b"]) == [b"1", b"2"]


def test_a_locked_sqlite_write_is_rolled_back_and_the_store_stays_usable(tmp_path):
    path = str(tmp_path / "kv.sqlite")
    store = SqliteKV(path)
    store.put_many({"kept": b"1"}, ttl_s=60)
    store._db.execute("PRAGMA busy_timeout = 50")  # not the default 5 s
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process in a long write holds the lock
    with pytest.raises(gp.DataError, match="put_many failed and was rolled back .*database is locked"):
        store.put_many({"a": b"1"}, ttl_s=60)
    with pytest.raises(gp.DataError, match="delete failed and was rolled back"):
        store.delete(["kept"])
    other.execute("COMMIT")
    store.put_many({"a": b"1"}, ttl_s=60)  # no transaction was left open
    assert store.delete(["kept"]) == 1 and store.get_many(["a", "kept"]) == [b"1", None]
    other.close(), store.close()


def test_a_closed_sqlite_store_and_bad_items_are_config_errors(tmp_path):
    store = SqliteKV(str(tmp_path / "kv.sqlite"))
    for bad in (5, [("a", b"1", 3)], ["ab"]):
        with pytest.raises(gp.ConfigError, match="put_many item"):
            store.put_many(bad, ttl_s=60)
    store.close()
    store.close()
    for use in (lambda: store.put_many({"a": b"1"}, 60), lambda: store.get_many(["a"]), lambda: store.delete(["a"]),
                lambda: store.purge_expired(), lambda: len(store)):  # fmt: skip
        with pytest.raises(gp.ConfigError, match="is closed"):
            use()


def _unused_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"redis://127.0.0.1:{s.getsockname()[1]}/0"


def test_redis_bad_arguments_and_an_unreachable_server_are_clear_errors(tmp_path):
    pytest.importorskip("redis")
    with pytest.raises(gp.ConfigError, match="url='not-a-url' is not a Redis URL"):
        RedisKV("not-a-url")
    url = _unused_url()
    store = RedisKV(url, spill_path=str(tmp_path / "spill"), retries=1)
    with pytest.raises(gp.ConfigError, match="ttl_s=inf must be a positive, finite number"):
        store.put_many({"a": b"1"}, ttl_s=float("inf"))
    for use, what in ((lambda: store.get_many(["a"]), "get_many"), (lambda: store.delete(["a"]), "delete")):
        with pytest.raises(gp.BackendUnavailable, match=f"Redis at {url} did not answer {what}"):
            use()


@pytest.mark.parametrize("where", ["inside-a-value", "inside-a-header", "a-damaged-byte"])
def test_a_spill_file_cut_short_replays_whole_batches_only(redis_server, tmp_path, where):
    spill = tmp_path / "spill"
    down = RedisKV(_unused_url(), spill_path=str(spill), retries=1)
    down.put_many({"whole": b"v1"}, ttl_s=600)
    first = spill.stat().st_size
    down.put_many({"after": b"v3", "cut": b"v2" * 100}, ttl_s=600)
    data = spill.read_bytes()
    if where == "a-damaged-byte":  # a torn write: the length is whole, a byte of the value is not
        spill.write_bytes(data[:-50] + b"X" + data[-49:])
    else:  # killed while appending
        spill.write_bytes(data[: len(data) - 50 if where == "inside-a-value" else first + 11])
    store = RedisKV(redis_server.url, spill_path=str(spill))
    with pytest.warns(UserWarning, match="dropped the last .* bytes, a spilled batch cut short"):
        store.put_many({"new": b"x"}, ttl_s=60)
    assert store.get_many(["whole", "cut", "after", "new"]) == [b"v1", None, None, b"x"]
    assert not spill.exists() and store.stats["replayed"] == 1


def test_keys_must_be_an_iterable_of_keys_not_one_key(store):
    store.put_many({"abc": b"1", "a": b"2"}, ttl_s=60)
    for use in (store.get_many, store.delete):
        for bad in ("abc", b"abc", 5, None):
            with pytest.raises(gp.ConfigError, match="iterable of keys"):
                use(bad)
    assert store.get_many(["abc", "a"]) == [b"1", b"2"]


def test_a_deleted_key_does_not_come_back_from_the_spill_file(redis_server, tmp_path):
    store = RedisKV(redis_server.url, spill_path=str(tmp_path / "spill"), retries=1)
    redis_server.stop()
    store.put_many({"k": b"secret"}, ttl_s=60)
    redis_server.start()
    assert store.delete(["k"]) == 1 and store.get_many(["k"]) == [None]


def test_redis_arguments_spill_files_and_a_closed_store(tmp_path):
    pytest.importorskip("redis")
    for kw, words in (({"retries": 0}, "retries=0"), ({"retries": "3"}, "retries='3'"), ({"backoff_s": -1}, "backoff_s=-1"),
                      ({"backoff_s": float("inf")}, "backoff_s=inf must be a finite number"),
                      ({"spill_path": str(tmp_path / "no" / "spill")}, "directory does not exist")):  # fmt: skip
        with pytest.raises(gp.ConfigError, match=words):
            RedisKV(_unused_url(), **kw)
    a, b = RedisKV("redis://127.0.0.1:7000/0"), RedisKV("redis://10.0.0.2:7000/0")
    assert a.spill_path != b.spill_path  # two servers on one port do not share a spill file
    store = RedisKV(_unused_url(), spill_path=str(tmp_path / "spill"), retries=1)
    store.close()
    with pytest.raises(gp.ConfigError, match="is closed"):
        store.put_many({"a": b"1"}, ttl_s=1)
    with pytest.raises(gp.ConfigError, match="must be a file path"):
        SqliteKV(None)


@pytest.mark.parametrize("next_writer", ["the-same-store", "another-store"])
def test_a_batch_cut_short_never_hides_the_batches_spilled_after_it(redis_server, tmp_path, next_writer):
    spill, down = tmp_path / "spill", _unused_url()
    one, two = (RedisKV(down, spill_path=str(spill), retries=1) for _ in range(2))
    one.put_many({"a": b"1"}, ttl_s=600)
    two.put_many({"b": b"2"}, ttl_s=600)  # two processes take turns on one spill file
    whole = spill.stat().st_size
    one.put_many({"cut": b"3" * 100}, ttl_s=600)
    os.truncate(spill, whole + 30)  # cut while appending
    writer = one if next_writer == "the-same-store" else two
    with pytest.warns(UserWarning, match="dropped the last 30 bytes, a spilled batch cut short .* before appending"):
        writer.put_many({"after": b"4", "after-2": b"5"}, ttl_s=600)  # it returned: it must reach Redis
    one.put_many({"later": b"6"}, ttl_s=600)
    store = RedisKV(redis_server.url, spill_path=str(spill))
    assert store.get_many(["a", "b", "cut", "after", "after-2", "later"]) == [b"1", b"2", None, b"4", b"5", b"6"]
    assert sorted(store.client.keys("*")) == [b"a", b"after", b"after-2", b"b", b"later"]  # nothing of the cut one


def _bare_batch(pairs, expires_ms: int) -> bytes:
    """A batch as spill files held it before they had frames."""
    return struct.pack("<IQ", len(pairs), expires_ms) + b"".join(struct.pack("<II", len(k), len(v)) + k + v for k, v in pairs)


def test_a_spill_file_from_before_the_frames_is_replayed_and_appended_to(redis_server, tmp_path):
    spill, later = tmp_path / "spill", int(time.time() * 1000) + 600_000
    spill.write_bytes(_bare_batch([(b"old", b"1"), (b"old-2", b"2")], later))
    assert RedisKV(redis_server.url, spill_path=str(spill)).get_many(["old", "old-2"]) == [b"1", b"2"]
    cut = _bare_batch([(b"cut", b"4" * 50)], later)[:-10]
    spill.write_bytes(_bare_batch([(b"old-3", b"3")], later) + cut)
    with pytest.warns(UserWarning, match=f"dropped the last {len(cut)} bytes, a spilled batch cut short"):
        RedisKV(_unused_url(), spill_path=str(spill), retries=1).put_many({"new": b"5"}, ttl_s=600)
    store = RedisKV(redis_server.url, spill_path=str(spill))
    assert store.get_many(["old-3", "cut", "new"]) == [b"3", None, b"5"] and not spill.exists()


def test_close_replays_what_redis_takes_now_and_names_what_it_does_not(redis_server, tmp_path):
    spill = tmp_path / "spill"
    store = RedisKV(redis_server.url, spill_path=str(spill), retries=1)
    redis_server.stop()
    store.put_many({"k": b"v"}, ttl_s=600)  # spilled
    redis_server.start()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        store.close()
    assert not spill.exists()
    assert RedisKV(redis_server.url, spill_path=str(tmp_path / "other")).get_many(["k"]) == [b"v"]
    down = RedisKV(_unused_url(), spill_path=str(spill), retries=1)
    down.put_many({"a": b"1"}, ttl_s=600)
    down.put_many({"b": b"2"}, ttl_s=600)
    words = f"closed with 2 spilled batch\\(es\\) of writes that Redis did not take still in {re.escape(str(spill))}"
    with pytest.warns(UserWarning, match=words):
        down.close()
    down.close()
    assert RedisKV(redis_server.url, spill_path=str(spill)).get_many(["a", "b"]) == [b"1", b"2"]


def test_a_write_redis_refuses_is_spilled_with_a_warning_and_replayed_when_it_takes_writes(redis_server, tmp_path):
    import redis

    admin = redis.Redis.from_url(redis_server.url)
    store = RedisKV(redis_server.url, spill_path=str(tmp_path / "spill"), retries=2, backoff_s=0.01)
    store.put_many({"before": b"0"}, ttl_s=600)
    admin.config_set("maxmemory", 1)  # full, and the policy evicts nothing
    with pytest.warns(UserWarning, match=r"refused a write \(OutOfMemoryError: .*\); it and .* spilled to .* raise its maxm"):
        store.put_many({"full": b"1"}, ttl_s=600)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once while Redis keeps refusing
        store.put_many({"full-2": b"1"}, ttl_s=600)
    assert store.get_many(["before", "full"]) == [b"0", None] and store.stats["spilled"] == 2  # reads still work
    admin.config_set("maxmemory", 0)
    assert store.get_many(["full"]) == [b"1"]
    admin.replicaof("127.0.0.1", _unused_url().split(":")[2].split("/")[0])  # a failover made it a replica
    with pytest.warns(UserWarning, match=r"ReadOnlyError: .* point the URL at the primary"):
        store.put_many({"replica": b"2"}, ttl_s=600)
    with pytest.raises(gp.BackendUnavailable, match=r"refused delete after 2 attempts \(ReadOnlyError: .*primary"):
        store.delete(["before"])
    admin.replicaof("NO", "ONE")
    assert store.get_many(["replica", "before"]) == [b"2", b"0"]


def test_wrong_credentials_and_permissions_are_config_errors_at_once(redis_server, tmp_path):
    import redis

    admin = redis.Redis.from_url(redis_server.url)
    admin.acl_setuser("reader", enabled=True, passwords=["+pw"], keys=["*"], commands=["+mget", "+del"])
    admin.config_set("requirepass", "secret")
    server, spill = f"127.0.0.1:{redis_server.port}/0", tmp_path / "spill"
    for url in (f"redis://{server}", f"redis://:wrong@{server}"):
        store = RedisKV(url, spill_path=str(spill), backoff_s=10)  # a retry would take 10 s
        with pytest.raises(gp.ConfigError, match=r"refused put_many \(AuthenticationError: .*pass the right user and"):
            store.put_many({"a": b"1"}, ttl_s=600)
        with pytest.raises(gp.ConfigError, match="refused get_many .*pass the right user and password in the URL") as e:
            store.get_many(["a"])
        assert "wrong" not in str(e.value) and store.stats["spilled"] == 0 and not spill.exists()
    store = RedisKV(f"redis://reader:pw@{server}", spill_path=str(spill))
    with pytest.raises(gp.ConfigError, match="NoPermissionError: .*grant the URL's user the SET, MGET and DEL commands"):
        store.put_many({"a": b"1"}, ttl_s=600)
    assert store.get_many(["a"]) == [None] and not spill.exists()



@pytest.mark.parametrize("error, fix", [
    ("AuthenticationError", "pass the right user and password in the URL"),
    ("AuthorizationError", "pass the right user and password in the URL"),
    ("AuthenticationWrongNumberOfArgsError", "pass the right user and password in the URL"),
    ("NoPermissionError", "grant the URL's user the SET, MGET and DEL commands"),
    ("AskError", "the server is a Redis Cluster node .* point the URL at a standalone one"),
])  # fmt: skip
def test_each_misconfiguration_is_a_config_error_at_once_with_its_fix(tmp_path, error, fix):
    redis = pytest.importorskip("redis")
    store = RedisKV(_unused_url(), spill_path=str(tmp_path / "spill"), backoff_s=10)  # a retry would take 10 s
    calls = []

    def mget(*keys):
        calls.append(keys)
        raise getattr(redis.exceptions, error)("3999 127.0.0.1:6381")  # AskError parses the slot and node

    store.client.mget = mget
    with pytest.raises(gp.ConfigError, match=rf"refused get_many \({error}: .*\); {fix}"):
        store.get_many(["a"])
    assert len(calls) == 1  # not retried


def test_sqlite_put_many_purges_expired_rows_itself_now_and_then(tmp_path):
    clock, path = Clock(), str(tmp_path / "kv.sqlite")
    store = SqliteKV(path, clock=clock)  # purges at most once a minute
    rows = sqlite3.connect(path)

    def held():
        return rows.execute("SELECT COUNT(*) FROM kv").fetchone()[0]

    for hour in range(50):  # a long run: the table holds one TTL of writes, not all of them
        store.put_many({f"{hour}/{k}": b"x" for k in range(100)}, ttl_s=10)
        clock.now += 3600
    assert held() == 100 and store.stats["purged"] == 4_900
    store.put_many({f"burst/{k}": b"x" for k in range(25_000)}, ttl_s=10)
    clock.now += 30  # expired, but within a minute of the last purge (the burst's put_many purged the hour before)
    store.put_many({"a": b"1"}, ttl_s=1000)
    assert held() == 25_001
    clock.now += 60  # a backlog goes 10,000 rows a put_many
    for left in (15_001, 5_001, 1, 1):
        store.put_many({"a": b"1"}, ttl_s=1000)
        assert held() == left
    assert store.get_many(["a", "burst/1"]) == [b"1", None] and store.purge_expired() == 0
    with pytest.raises(gp.ConfigError, match="purge_every_s=-1 must be a finite number of seconds >= 0"):
        SqliteKV(purge_every_s=-1)
    rows.close(), store.close()


def test_a_write_redis_rejects_is_a_data_error_and_a_rejected_spilled_batch_stops_no_other(redis_server, tmp_path):
    import redis

    spill = tmp_path / "spill"
    store = RedisKV(redis_server.url, spill_path=str(spill), retries=1)
    redis_server.stop()
    store.put_many({"bad": b"1"}, ttl_s=600)
    store.put_many({"good": b"2"}, ttl_s=600)
    redis_server.start()
    write = store._write

    def rejecting(pairs, ttl_ms):  # a command Redis rejects whenever it is sent (no real SET is rejected so)
        if any(k.startswith(b"bad") for k, _ in pairs):
            raise redis.ResponseError("ERR rejected")
        write(pairs, ttl_ms)

    store._write = rejecting
    with pytest.warns(UserWarning, match=r"dropped a spilled batch of 1 keys that Redis at .* rejects \(ResponseError"):
        assert store.get_many(["bad", "good"]) == [None, b"2"]
    with pytest.raises(gp.DataError, match=r"rejected put_many \(ResponseError: ERR rejected\); it was not spilled"):
        store.put_many({"bad-2": b"3"}, ttl_s=600)
    assert not spill.exists() and store.stats["spilled"] == 2


def test_a_key_deleted_while_redis_refuses_writes_does_not_come_back_with_the_spill(redis_server, tmp_path):
    import redis

    admin = redis.Redis.from_url(redis_server.url)
    store = RedisKV(redis_server.url, spill_path=str(tmp_path / "spill"), retries=1, backoff_s=0.01)
    store.put_many({"k": b"old"}, ttl_s=600)
    admin.config_set("maxmemory", 1)  # writes are refused (and spilled); deletes still work
    with pytest.warns(UserWarning, match="OutOfMemoryError"):
        store.put_many({"k": b"new", "other": b"1"}, ttl_s=600)
    assert store.delete(["k"]) == 1
    admin.config_set("maxmemory", 0)
    assert store.get_many(["k", "other"]) == [None, b"1"]  # the replay brought back the other key only


def test_busy_and_misconf_refusals_inside_a_pipeline_are_spilled_not_rejected(redis_server, tmp_path):
    import redis

    store = RedisKV(redis_server.url, spill_path=str(tmp_path / "spill"), retries=1, backoff_s=0.01)
    for code in ("BUSY Redis is busy running a script", "MISCONF Redis is configured to save RDB snapshots"):
        refusal = redis.exceptions.ResponseError(f"Command # 1 (SET k v) of pipeline caused error: {code}")
        assert store._passing(refusal)
    assert not store._passing(redis.exceptions.ResponseError("Command # 1 (SET k v) of pipeline caused error: ERR syntax"))


def test_a_password_in_the_url_query_is_not_shown(tmp_path):
    store = RedisKV(_unused_url() + "?password=secret&health_check_interval=1", spill_path=str(tmp_path / "spill"),
                    retries=1, backoff_s=0.01)  # fmt: skip
    with pytest.raises(gp.BackendUnavailable) as e:
        store.get_many(["a"])
    assert "secret" not in str(e.value) and "password=***" in str(e.value)


def test_a_database_number_the_server_lacks_is_an_error_that_points_to_the_url(redis_server, tmp_path):
    url = redis_server.url.rsplit("/", 1)[0] + "/99"  # the server has 16 databases
    store = RedisKV(url, spill_path=str(tmp_path / "spill"), retries=1)
    uses = {"put_many": lambda: store.put_many({"a": b"1"}, ttl_s=60), "get_many": lambda: store.get_many(["a"])}
    for what, use in uses.items():
        with pytest.raises(gp.ConfigError, match=rf"refused {what} \(ResponseError: DB index is out of range\).* the database "
                                               r"number at the end of the URL .* must be below") as raised:  # fmt: skip
            use()
        assert "ttl_s" not in str(raised.value)
    assert store.stats["spilled"] == 0
