"""De-dup and tabular writers: the same rows in both layouts, hourly files, a ledger that commits them."""

import glob
import os
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
from dedup_data import joined_requests
from transforms.helpers import assert_same

import gpupre as gp
from gpupre.serving import DedupWriter, TabularWriter

EXTRAS = ("request_id", "item_id", "time")


def whole(path, **kw):
    """Every row of a dataset as one plain host batch, ordered by item id."""
    ds = gp.Dataset(path, passthrough=EXTRAS, **kw)
    batch = gp.Batch.concat([ds.read(u).expand() for u in ds.units()])
    return batch.take(np.argsort(batch.extras["item_id"], kind="stable"))


def test_dedup_and_tabular_hold_the_same_rows(dedup_tables):
    dedup, tabular = whole(dedup_tables[0]), whole(dedup_tables[1])
    _, _, requests = joined_requests()
    assert dedup.num_rows == sum(len(r.item_ids) for r in requests)
    assert_same(dedup, tabular, rtol=0)
    for name in EXTRAS:
        assert np.array_equal(dedup.extras[name], tabular.extras[name])
    assert np.array_equal(dedup.labels, tabular.labels)
    expected = np.concatenate([r.labels for r in requests]).T
    assert np.array_equal(dedup.labels, expected)  # item ids are in request order already
    assert np.isnan(dedup.dense[dedup.dense_keys.index("item_dense_0")]).any()


def test_one_row_per_request_and_hourly_partitions(dedup_tables):
    dedup, tabular = dedup_tables
    hours = sorted(os.path.basename(d) for d in glob.glob(os.path.join(dedup, "hour=*")))
    assert hours == ["hour=2026-01-01T00", "hour=2026-01-01T01"]
    rows = sum(pq.ParquetFile(f).metadata.num_rows for f in glob.glob(os.path.join(dedup, "hour=*", "*.parquet")))
    assert rows == 60
    smaller = sum(os.path.getsize(f) for f in glob.glob(os.path.join(dedup, "hour=*", "*.parquet")))
    larger = sum(os.path.getsize(f) for f in glob.glob(os.path.join(tabular, "hour=*", "*.parquet")))
    assert smaller < larger


def test_committed_requests_are_remembered_and_uncommitted_files_removed(tmp_path):
    item_schema, user_schema, requests = joined_requests(10)
    with DedupWriter(tmp_path, item_schema, user_schema, ("click", "like")) as writer:
        writer.write(requests[:6])
        assert writer.contains(3) and not writer.contains(7)  # buffered counts as written
    hour = tmp_path / "hour=2026-01-01T00"
    strays = [hour / f"part-{99 + i:020d}-0123abcd.parquet.tmp" for i in range(2)]  # files whose commit never happened
    for stray in strays:
        stray.write_bytes(b"partial")
    foreign = [hour / "part-00099.parquet", hour / "notes.txt", hour / "part-00100.parquet.tmp"]  # not the writer's
    for path in foreign:
        path.write_bytes(b"the user's")
    with pytest.warns(UserWarning) as warned:
        writer = DedupWriter(tmp_path, item_schema, user_schema, ("click", "like"))
    said = [str(w.message) for w in warned]
    assert any("removed 2 uncommitted files" in m for m in said)
    assert any("1 Parquet files under hour=*/ are not in the ledger" in m and "part-00099.parquet" in m for m in said)
    assert writer.stats["removed_uncommitted"] == 2 and not any(stray.exists() for stray in strays)
    assert all(path.read_bytes() == b"the user's" for path in foreign)
    for path in foreign:
        path.unlink()
    assert writer.contains(5) and not writer.contains(6)
    writer.write(requests[6:])
    writer.close()
    assert sorted(set(whole(str(tmp_path)).extras["request_id"].tolist())) == list(range(10))


@pytest.mark.parametrize("cls", [DedupWriter, TabularWriter])
def test_a_request_written_again_is_a_replay_and_keeps_its_first_rows(tmp_path, cls):
    item_schema, user_schema, requests = joined_requests(3)
    shorter = requests[2]._replace(item_ids=requests[2].item_ids[:1], items=requests[2].items[:1],
                                   labels=requests[2].labels[:1])  # fmt: skip
    with cls(tmp_path, item_schema, user_schema, ("click", "like")) as first:
        first.write(requests[:2])
        first.flush()
        first.write(requests[:1])  # committed already
        first.write([requests[2], shorter])  # twice in one call
        first.write([shorter])  # buffered already
    with cls(tmp_path, item_schema, user_schema, ("click", "like")) as second:  # the ledger remembers
        second.write(requests)
    ids, counts = np.unique(whole(str(tmp_path)).extras["request_id"], return_counts=True)
    assert ids.tolist() == [0, 1, 2] and counts.tolist() == [len(r.item_ids) for r in requests]
    assert first.stats["already_written"] == second.stats["already_written"] == 3


def test_the_ledger_forgets_requests_whose_features_expired(tmp_path):
    item_schema, user_schema, requests = joined_requests(4)
    with TabularWriter(tmp_path, item_schema, user_schema, ("click", "like")) as writer:
        writer.write(requests)
        writer.flush()
        writer.forget_before(requests[2].time)
        assert [writer.contains(r) for r in range(4)] == [False, False, True, True]


def test_bad_arguments_are_config_errors(tmp_path):
    item_schema, user_schema, _ = joined_requests(1)
    for kw in ({"labels": ()}, {"labels": (1, 2)}, {"labels": None}, {"requests_per_file": 0}, {"row_group_rows": -1}):
        try:
            DedupWriter(tmp_path, item_schema, user_schema, **kw)
        except gp.ConfigError as e:
            assert "DedupWriter" in str(e) or "label" in str(e)
        else:
            raise AssertionError(f"{kw} was accepted")


def test_a_failed_write_keeps_its_requests_and_mixed_id_types_are_refused(tmp_path, monkeypatch):
    item_schema, user_schema, requests = joined_requests(3)
    writer = DedupWriter(tmp_path, item_schema, user_schema, ("click", "like"))
    writer.write(requests)
    def write_file(requests, path):  # the disk fills up halfway through the file
        with open(path, "wb") as f:
            f.write(b"PAR1 half a file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(writer, "_write_file", write_file)
    for attempt in range(3):
        with pytest.raises(OSError):
            writer.flush()
    assert writer.contains(1)
    assert not list(tmp_path.glob("hour=*/*.tmp"))  # no part file left per attempt
    monkeypatch.undo()
    writer.flush()
    assert writer.stats["requests"] == 3
    with pytest.raises(gp.DataError, match="both types .* whose are ints"):
        writer.write([requests[0]._replace(request_id="7")])
    writer.close()


def test_a_malformed_request_is_refused_with_the_rest_of_its_call(tmp_path):
    item_schema, user_schema, requests = joined_requests(3)
    writer = DedupWriter(tmp_path, item_schema, user_schema, ("click", "like"))
    bad = [requests[1]._replace(labels=requests[1].labels[:, :1]), requests[1]._replace(items=[b"x"] * len(requests[1].items)),
           requests[1]._replace(user=None), "not a request"]  # fmt: skip
    for wrong in bad:
        with pytest.raises(gp.DataError, match="cannot be written"):
            writer.write([requests[0], wrong])
        assert not writer.contains(requests[0].request_id)  # all or nothing
    with pytest.raises(gp.DataError, match="both types"):
        writer.write([requests[0], requests[1]._replace(request_id="x")])
    assert not writer.contains(requests[0].request_id)
    writer.close()


def test_a_file_is_invisible_until_committed_and_renamed_into_place_after_a_crash(tmp_path, monkeypatch):
    item_schema, user_schema, requests = joined_requests(3)
    writer = DedupWriter(tmp_path, item_schema, user_schema, ("click", "like"))
    writer.write(requests)
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(OSError("killed")))
    with pytest.raises(OSError, match="killed"):
        writer.flush()  # the ledger commit happened, the rename did not
    monkeypatch.undo()
    writer._lock.close()  # the process dies: its lock on the path goes with it
    with pytest.raises(gp.DataError, match="holds no Parquet files"):
        gp.Dataset(str(tmp_path))  # readers see nothing uncommitted or half-placed
    reopened = DedupWriter(tmp_path, item_schema, user_schema, ("click", "like"))
    committed = [r for r in requests if reopened.contains(r.request_id)]  # the first hour's file
    assert reopened.stats["removed_uncommitted"] == 0 and 0 < len(committed) < len(requests)
    assert whole(str(tmp_path)).num_rows == sum(len(r.item_ids) for r in committed)
    reopened.close()
    writer.close()  # the rest; the committed hour is not written a second time
    assert sorted(whole(str(tmp_path)).extras["item_id"]) == sorted(i for r in requests for i in r.item_ids)


def test_hours_are_committed_once_they_are_over(tmp_path):
    item_schema, user_schema, requests = joined_requests(60)  # over two hours
    with TabularWriter(tmp_path, item_schema, user_schema, ("click", "like")) as writer:
        writer.write(requests)
        writer.commit_before(requests[0].time + 3600)  # the first hour has ended
        assert writer.stats["files"] == 1 and writer.stats["requests"] == 30


def test_a_reopened_writer_refuses_the_other_request_id_type(tmp_path):
    item_schema, user_schema, requests = joined_requests(2)
    with DedupWriter(tmp_path, item_schema, user_schema, ("click", "like")) as writer:
        writer.write(requests)
    writer = DedupWriter(tmp_path, item_schema, user_schema, ("click", "like"))  # the type is in the ledger
    with pytest.raises(gp.DataError, match="both types .* whose are ints"):
        writer.write([requests[1]._replace(request_id="1")])
    writer.close()


def test_a_closed_writer_and_a_file_for_a_path_are_config_errors(tmp_path):
    item_schema, user_schema, requests = joined_requests(2)
    writer = DedupWriter(tmp_path / "out", item_schema, user_schema, ("click", "like"))
    writer.close()
    writer.close()
    for use in (lambda: writer.write(requests), lambda: writer.contains(1), lambda: writer.forget_before(0.0)):
        with pytest.raises(gp.ConfigError, match="DedupWriter of .* is closed"):
            use()
    with pytest.raises(gp.ConfigError, match="is a file; pass a directory"):
        TabularWriter(tmp_path / "out" / "_ledger.sqlite", item_schema, user_schema)


def test_a_path_that_cannot_be_a_directory_and_a_corrupt_ledger_are_clear_errors(tmp_path):
    item_schema, user_schema, _ = joined_requests(1)
    (tmp_path / "file").write_text("x")
    with pytest.raises(gp.ConfigError, match="cannot be made a directory"):
        DedupWriter(tmp_path / "file" / "out", item_schema, user_schema, ("click", "like"))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "_ledger.sqlite").write_bytes(b"not a database" * 100)
    with pytest.raises(gp.DataError, match="ledger of committed files cannot be opened"):
        DedupWriter(tmp_path / "out", item_schema, user_schema, ("click", "like"))


def test_one_writer_per_path(tmp_path):
    item_schema, user_schema, requests = joined_requests(2)
    first = DedupWriter(tmp_path, item_schema, user_schema, ("click", "like"))
    first.write(requests[:1])
    for cls in (DedupWriter, TabularWriter):  # its start-up would remove the first one's files in flight
        with pytest.raises(gp.ConfigError, match="open in another writer"):
            cls(tmp_path, item_schema, user_schema, ("click", "like"))
    first.close()
    with DedupWriter(tmp_path, item_schema, user_schema, ("click", "like")) as second:
        second.write(requests[1:])
    assert whole(str(tmp_path)).num_rows == sum(len(r.item_ids) for r in requests)


def test_a_missing_ledger_with_data_under_the_path_is_an_error_and_nothing_is_removed(tmp_path):
    item_schema, user_schema, requests = joined_requests(4)
    with DedupWriter(tmp_path, item_schema, user_schema, ("click", "like")) as writer:
        writer.write(requests)
    (tmp_path / "hour=2026-01-01T00" / "part-00000000000000000001-0123abcd.parquet.tmp").write_bytes(b"partial")
    files = {p: p.read_bytes() for p in tmp_path.glob("hour=*/*")}
    os.remove(tmp_path / "_ledger.sqlite")
    with pytest.raises(gp.ConfigError, match="holds 3 files under hour=.* no _ledger.sqlite.* restore the ledger, or "
                                             "write to a new directory"):  # fmt: skip
        TabularWriter(tmp_path, item_schema, user_schema, ("click", "like"))
    assert {p: p.read_bytes() for p in tmp_path.glob("hour=*/*")} == files
    assert not (tmp_path / "_ledger.sqlite").exists()
    for hour in tmp_path.glob("hour=*"):
        shutil.rmtree(hour)
    with DedupWriter(tmp_path, item_schema, user_schema, ("click", "like")) as writer:  # the path's lock was freed
        writer.write(requests)


def test_a_reopened_writer_refuses_another_layout_labels_or_schema(tmp_path):
    item_schema, user_schema, requests = joined_requests(2)
    with DedupWriter(tmp_path, item_schema, user_schema, ("click", "like")) as writer:
        writer.write(requests)
    files = sorted(tmp_path.glob("hour=*/*"))
    other_items = gp.Schema(item_schema.features[1:] + (gp.Feature("extra", "dense", "item"),))
    for make, words in [
        (lambda: TabularWriter(tmp_path, item_schema, user_schema, ("click", "like")), "it was written by a DedupWriter"),
        (lambda: DedupWriter(tmp_path, item_schema, user_schema, ("click",)),
         r"its labels are \['click', 'like'\], this writer's \['click'\]"),
        (lambda: DedupWriter(tmp_path, other_items, user_schema, ("click", "like")),
         rf"features differ: the dataset has {item_schema.features[0].name} \(dense, item\), this writer extra"),
        (lambda: DedupWriter(tmp_path, item_schema, None, ("click", "like")), r"features differ: the dataset has user_"),
    ]:  # fmt: skip
        with pytest.raises(gp.ConfigError, match=f"holds another dataset than this .*{words}.*write to a new directory"):
            make()
    assert sorted(tmp_path.glob("hour=*/*")) == files
    with DedupWriter(tmp_path, item_schema, user_schema, ("click", "like")) as writer:  # its own: the lock was freed
        writer.write(joined_requests(4)[2][2:])
    assert whole(str(tmp_path)).num_rows == sum(len(r.item_ids) for r in joined_requests(4)[2])
