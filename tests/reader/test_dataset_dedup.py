"""Reading de-dup tables: one row per impression, user features once per request."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import gpupre as gp

EXTRAS = ("request_id", "item_id")


def test_units_count_impressions_and_batches_carry_their_requests(dedup_tables):
    dedup, tabular = gp.Dataset(dedup_tables[0], passthrough=EXTRAS), gp.Dataset(dedup_tables[1], passthrough=EXTRAS)
    assert dedup.dedup and not tabular.dedup
    assert dedup.num_rows == tabular.num_rows and sum(u.num_rows for u in dedup.units()) == dedup.num_rows
    b = dedup.read(dedup.units()[0])
    assert b.requests.num_rows < b.num_rows and np.all(np.diff(b.inverse) >= 0)
    assert b.dense_keys == ("item_dense_0", "item_dense_1", "item_dense_2")
    assert b.requests.dense_keys == ("user_dense_0", "user_dense_1")
    assert list(b.extras) == ["item_id"] and list(b.requests.extras) == ["request_id"]
    assert b.labels.shape == (2, b.num_rows)
    assert dedup.schema.names[:5] == ("user_dense_0", "user_dense_1", "user_list_0", "user_list_1", "user_list_2")


def test_a_label_or_a_feature_passed_through_keeps_its_level(dedup_tables):
    extras = (*EXTRAS, "like", "item_dense_1", "user_dense_0")  # a second label, an item and a user feature
    dedup, tabular = (gp.Dataset(path, label="click", passthrough=extras) for path in dedup_tables)
    b = dedup.read(dedup.units()[0])
    assert list(b.extras) == ["item_id", "like", "item_dense_1"] and list(b.requests.extras) == ["request_id", "user_dense_0"]
    a = gp.Batch.concat([dedup.read(u).expand() for u in dedup.units()])
    b = gp.Batch.concat([tabular.read(u) for u in tabular.units()])
    a, b = (x.take(np.argsort(np.asarray(x.extras["item_id"]), kind="stable")) for x in (a, b))
    for name in extras:
        assert np.array_equal(np.asarray(a.extras[name]), np.asarray(b.extras[name]), equal_nan=True), name


def test_projection_and_expand_read_the_same_rows_as_tabular(dedup_tables):
    names = ["item_list_1", "user_dense_1", "item_dense_0"]
    dedup = gp.Dataset(dedup_tables[0], features=names, passthrough=EXTRAS, expand=True)
    tabular = gp.Dataset(dedup_tables[1], features=["user_dense_1", "item_list_1", "item_dense_0"], passthrough=EXTRAS)
    assert dedup.schema.names == ("user_dense_1", "item_list_1", "item_dense_0")  # request features first
    a = gp.Batch.concat([dedup.read(u) for u in dedup.units()])
    b = gp.Batch.concat([tabular.read(u) for u in tabular.units()])
    a, b = (x.take(np.argsort(x.extras["item_id"], kind="stable")) for x in (a, b))
    assert a.requests is None and a.dense_keys == b.dense_keys
    assert np.array_equal(a.dense, b.dense, equal_nan=True)
    assert np.array_equal(a.sparse.values, b.sparse.values) and np.array_equal(a.labels, b.labels)


def test_slabs_hold_whole_requests_of_about_the_rows_asked_for(dedup_tables):
    ds = gp.Dataset(dedup_tables[0], passthrough=EXTRAS)
    unit = ds.units()[0]
    slabs = list(ds.read_slabs(unit, 20))
    assert len(slabs) > 1 and sum(s.num_rows for s in slabs) == unit.num_rows
    whole = ds.read(unit)
    assert np.array_equal(np.concatenate([s.extras["item_id"] for s in slabs]), whole.extras["item_id"])


def test_per_impression_lists_of_different_lengths_are_a_data_error(dedup_tables, tmp_path):
    source = gp.Dataset(dedup_tables[0]).paths[0]
    table = pq.read_table(source)
    labels = table.column("click").combine_chunks()
    broken = pa.ListArray.from_arrays(pa.array([0] + [1] * (len(table) - 1) + [2], pa.int32()),
                                      pa.array([0.0, 1.0], pa.float32()))  # fmt: skip
    assert len(broken) == len(labels)
    table = table.set_column(table.column_names.index("click"), "click", broken)
    pq.write_table(table, tmp_path / "bad.parquet", row_group_size=8)  # the row groups the metadata counts
    ds = gp.Dataset(tmp_path / "bad.parquet")
    with pytest.raises(gp.DataError, match="'click' has 1 elements in request row 0"):
        ds.read(ds.units()[0])
    pq.write_table(table, tmp_path / "regrouped.parquet", row_group_size=len(table))
    with pytest.raises(gp.DataError, match="de-dup metadata does not give the impressions of its 1 row groups"):
        gp.Dataset(tmp_path / "regrouped.parquet")
