"""write_table / TableWriter: canonical flattened types, exact row groups, round trips."""

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import gpupre as gp
from gpupre.schema import METADATA_KEY

F = gp.Feature
INT64 = pa.list_(pa.int64())


def source_table(n=7):
    """Every kind in loose input types: float64 dense with nulls, int32 scalar ids, list<int32>, scored."""
    rng = np.random.default_rng(0)
    price = [None if i % 3 == 1 else float(i) * 1.25 for i in range(n)]
    user = [None if i % 4 == 2 else int(v) for i, v in enumerate(rng.integers(0, 2**31 - 1, n))]
    history = [None if i == 0 else [int(v) for v in rng.integers(-5, 5, i % 4)] for i in range(n)]
    terms = [[int(v) for v in rng.integers(0, 2**40, i % 3)] for i in range(n)]
    return pa.table(
        {
            "price": pa.array(price, pa.float64()),
            "user": pa.array(user, pa.int32()),
            "history": pa.array(history, pa.list_(pa.int32())),
            "terms": pa.array(terms, INT64),
            "terms.score": pa.array([[j / 8 for j in range(len(t))] for t in terms], pa.list_(pa.float64())),
            "label": pa.array([i % 2 for i in range(n)], pa.int64()),
            "row_id": pa.array([f"r{i}" for i in range(n)]),
        }
    )


SCHEMA = gp.Schema(
    (F("price", "dense", "item"), F("user", "sparse", "user"), F("history", "sparse"), F("terms", "scored")),
    labels=("label",),
    extras=("row_id",),
)


def test_round_trip_through_dataset(tmp_path):
    table = source_table()
    path = tmp_path / "t.parquet"
    gp.storage.write_table(table, path, SCHEMA, row_group_rows=4)
    ds = gp.Dataset(path, passthrough="row_id")
    assert ds.schema == SCHEMA
    batches = [ds.read(u) for u in ds.units()]
    assert [b.num_rows for b in batches] == [4, 3]

    rows = table.to_pylist()
    dense = np.concatenate([b.dense[0] for b in batches])
    np.testing.assert_array_equal(dense, [np.nan if r["price"] is None else r["price"] for r in rows])
    labels = np.concatenate([b.labels for b in batches])
    np.testing.assert_array_equal(labels, [r["label"] for r in rows])
    assert sum((b.extras["row_id"].to_pylist() for b in batches), []) == [r["row_id"] for r in rows]

    for b, chunk in zip(batches, (rows[:4], rows[4:]), strict=True):
        as_lists = {
            "user": [[] if r["user"] is None else [r["user"]] for r in chunk],  # a scalar id is a list of one
            "history": [r["history"] or [] for r in chunk],
            "terms": [r["terms"] for r in chunk],
        }
        # key-major: all rows of user, then of history, then of terms
        assert b.sparse.keys == ("user", "history", "terms")
        assert b.sparse.lengths.tolist() == [len(x) for k in b.sparse.keys for x in as_lists[k]]
        assert b.sparse.values.tolist() == [v for k in b.sparse.keys for x in as_lists[k] for v in x]
        expected_weights = [1.0] * sum(len(x) for x in as_lists["user"] + as_lists["history"])
        expected_weights += [s for r in chunk for s in r["terms.score"]]
        assert b.sparse.weights.tolist() == expected_weights


def test_stored_types_are_canonical(tmp_path):
    path = tmp_path / "t.parquet"
    gp.storage.write_table(source_table(), path, SCHEMA)
    stored = pq.read_table(path)
    types = {f.name: f.type for f in stored.schema}
    assert types == {
        "price": pa.float32(),
        "user": INT64,
        "history": INT64,
        "terms": INT64,
        "terms.score": pa.list_(pa.float32()),
        "label": pa.float32(),
        "row_id": pa.string(),
    }
    assert gp.Schema.from_json(stored.schema.metadata[METADATA_KEY]) == SCHEMA
    # an integer scalar column becomes one-id lists, null -> empty list
    expected = [[] if v is None else [v] for v in source_table().column("user").to_pylist()]
    assert stored.column("user").to_pylist() == expected


def test_row_groups_have_exactly_row_group_rows(tmp_path):
    table = pa.table({"x": pa.array(np.arange(650, dtype=np.float32))})
    gp.storage.write_table(table, tmp_path / "t.parquet", row_group_rows=200)
    md = pq.ParquetFile(tmp_path / "t.parquet").metadata
    assert [md.row_group(i).num_rows for i in range(md.num_row_groups)] == [200, 200, 200, 50]


def test_streaming_writes_equal_one_write(tmp_path):
    table = source_table(50)
    gp.storage.write_table(table, tmp_path / "one.parquet", SCHEMA, row_group_rows=16)
    with gp.storage.TableWriter(
        tmp_path / "many.parquet", SCHEMA, {"row_id": pa.string()}, row_group_rows=16
    ) as writer:
        for lo in range(0, 50, 7):
            writer.write(table.slice(lo, 7))
    assert writer.rows_written == 50
    one, many = pq.ParquetFile(tmp_path / "one.parquet"), pq.ParquetFile(tmp_path / "many.parquet")
    sizes = [[f.metadata.row_group(i).num_rows for i in range(f.num_row_groups)] for f in (one, many)]
    assert sizes == [[16, 16, 16, 2]] * 2
    assert many.read().equals(one.read(), check_metadata=True)


def test_schema_is_inferred_when_not_given(tmp_path):
    table = pa.table({"x": pa.array([1.0, 2.0]), "y": pa.array([3, 4]), "label": pa.array([0.0, 1.0])})
    schema = gp.storage.write_table(table, tmp_path / "t.parquet")
    assert [(f.name, f.kind) for f in schema] == [("x", "dense"), ("y", "sparse")]
    assert schema.labels == ("label",)
    stored = pq.read_table(tmp_path / "t.parquet")
    assert gp.Schema.from_json(stored.schema.metadata[METADATA_KEY]) == schema
    assert stored.column("y").to_pylist() == [[3], [4]]


def test_empty_table_writes_a_file_with_no_units(tmp_path):
    table = source_table().slice(0, 0)
    gp.storage.write_table(table, tmp_path / "t.parquet", SCHEMA)
    ds = gp.Dataset(tmp_path / "t.parquet")
    assert ds.units() == [] and ds.num_rows == 0
    assert ds.schema.names == SCHEMA.names


def test_a_column_that_cannot_take_its_kind_is_a_schema_error(tmp_path):
    table = pa.table({"city": pa.array(["paris", "rome"])})
    with pytest.raises(gp.SchemaError, match=r"column 'city' of type string cannot be stored as float"):
        gp.storage.write_table(table, tmp_path / "t.parquet", gp.Schema((F("city", "dense"),)))


def test_a_column_missing_from_the_table_is_a_schema_error(tmp_path):
    with pytest.raises(
        gp.SchemaError, match=r"column 'terms\.score' named by the schema is not in the table"
    ):
        gp.storage.write_table(source_table().drop_columns(["terms.score"]), tmp_path / "t.parquet", SCHEMA)


@pytest.mark.parametrize(
    ("column", "value", "words"),
    [
        ("history", pa.array([[1, None]] * 7, pa.list_(pa.int32())), "'history' holds 7 null ids inside its lists"),
        ("terms.score", pa.array([[0.5, None]] * 7, pa.list_(pa.float64())), "'terms.score' holds 7 null scores"),
        ("terms.score", pa.array([[0.5]] * 7, pa.list_(pa.float64())), "'terms' row 0 has 0 ids but 1 scores"),
    ],
)
def test_lists_the_reader_would_refuse_are_a_data_error_and_no_file(tmp_path, column, value, words):
    """Null ids or scores inside lists, or a scored row with more scores than ids: the file was
    written, and every reading of it failed."""
    table = source_table().set_column(source_table().schema.get_field_index(column), column, value)
    with pytest.raises(gp.DataError, match=words):
        gp.storage.write_table(table, tmp_path / "t.parquet", SCHEMA)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("rows", [0, -1, 2.5])
def test_row_group_rows_must_be_a_positive_integer(tmp_path, rows):
    with pytest.raises(gp.ConfigError, match="row_group_rows"):
        gp.storage.write_table(source_table(), tmp_path / "t.parquet", SCHEMA, row_group_rows=rows)


def test_a_table_that_is_not_an_arrow_table_is_a_config_error(tmp_path):
    with pytest.raises(gp.ConfigError, match=r"table must be a pyarrow Table, got dict; wrap columns"):
        gp.storage.write_table({"a": [1.0]}, tmp_path / "t.parquet")


def test_an_unknown_compression_is_a_config_error_listing_the_codecs(tmp_path):
    with pytest.raises(gp.ConfigError, match=r"compression='bogus' is not a Parquet codec; pass one of none"):
        gp.storage.write_table(source_table(), tmp_path / "t.parquet", SCHEMA, compression="bogus")
    assert not (tmp_path / "t.parquet").exists()
    gp.storage.write_table(source_table(), tmp_path / "t.parquet", SCHEMA, compression="SNAPPY")
    assert pq.ParquetFile(tmp_path / "t.parquet").metadata.row_group(0).column(0).compression == "SNAPPY"


def test_a_directory_as_the_path_is_a_config_error(tmp_path):
    with pytest.raises(gp.ConfigError, match=r"is a directory; pass the path of a Parquet file to write"):
        gp.storage.write_table(source_table(), tmp_path, SCHEMA)


def test_a_writer_that_fails_leaves_no_file_and_keeps_the_old_one(tmp_path):
    path = tmp_path / "t.parquet"
    gp.storage.write_table(source_table(3), path, SCHEMA)
    before = path.read_bytes()
    with pytest.raises(gp.SchemaError):
        with gp.storage.TableWriter(path, SCHEMA, {"row_id": pa.string()}, row_group_rows=2) as writer:
            writer.write(source_table(7))  # three row groups reach the file
            writer.write(source_table(7).drop_columns(["price"]))
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.parquet"]


def test_the_file_appears_only_when_the_writer_closes(tmp_path):
    path = tmp_path / "t.parquet"
    writer = gp.storage.TableWriter(path, SCHEMA, {"row_id": pa.string()}, row_group_rows=2)
    writer.write(source_table(7))
    assert not path.exists()
    assert all(p.name.startswith(".") for p in tmp_path.iterdir())  # hidden: gp.Dataset skips it
    writer.close()
    assert pq.read_table(path).num_rows == 7
    writer.abort()  # after close: nothing to undo
    assert path.exists()


def test_uint64_ids_above_2_63_are_a_schema_error_saying_how_to_keep_them(tmp_path):
    table = pa.table({"ids": pa.array([2**63 + 5], pa.uint64())})
    with pytest.raises(gp.SchemaError, match=r"'ids' of type uint64 cannot be stored .*safe=False"):
        gp.storage.write_table(table, tmp_path / "x.parquet")


def test_a_table_read_from_a_gpupre_file_and_changed_needs_its_schema(tmp_path):
    gp.storage.write_table(pa.table({"a": pa.array([1.0, 2.0]), "label": pa.array([0.0, 1.0])}), tmp_path / "t.parquet")
    table = pq.read_table(tmp_path / "t.parquet")
    for changed, words in ((table.append_column("b", pa.array([3.0, 4.0])), r"added \['b'\]"), (table.drop(["a"]), r"dropped \['a'\]")):
        with pytest.raises(gp.SchemaError, match=words):
            gp.storage.write_table(changed, tmp_path / "u.parquet")
    assert gp.storage.write_table(table, tmp_path / "u.parquet").names == ("a",)  # unchanged: its schema


@pytest.mark.parametrize("path", ["", None, "afile/sub/out.parquet"])
def test_a_path_that_cannot_be_written_is_a_config_error(tmp_path, monkeypatch, path):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(gp.ConfigError):
        gp.storage.write_table(pa.table({"a": pa.array([1.0])}), path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_an_extra_column_named_by_the_schema_but_missing_is_a_schema_error(tmp_path):
    table = source_table().drop_columns(["row_id"])
    with pytest.raises(gp.SchemaError, match=r"column 'row_id' named by the schema is not in the table"):
        gp.storage.write_table(table, tmp_path / "t.parquet", SCHEMA)
    assert list(tmp_path.iterdir()) == []


def test_an_extra_column_of_another_type_than_the_writer_was_made_for_is_a_schema_error(tmp_path):
    """extra_types default to int64; a string row_id is refused on write, naming the fix, and no file is left."""
    path = tmp_path / "t.parquet"
    with pytest.raises(gp.SchemaError, match=r"column 'row_id' has type string, but the writer was made for int64.*extra_types"):
        with gp.storage.TableWriter(path, SCHEMA) as writer:
            writer.write(source_table())
    assert list(tmp_path.iterdir()) == []


def test_a_writer_whose_last_row_group_fails_on_close_leaves_no_file(tmp_path, monkeypatch):
    def full_disk(self, table, **options):
        raise OSError(28, "No space left on device")

    path = tmp_path / "t.parquet"
    writer = gp.storage.TableWriter(path, SCHEMA, {"row_id": pa.string()}, row_group_rows=100)
    writer.write(source_table(7))  # buffered: written by close()
    monkeypatch.setattr(gp.storage.write.HiddenParquetWriter, "write_table", full_disk)
    with pytest.raises(OSError, match="No space left"):
        writer.close()
    assert list(tmp_path.iterdir()) == []


def test_table_writer_write_of_something_else_than_a_table_is_a_config_error(tmp_path):
    with gp.storage.TableWriter(tmp_path / "t.parquet", SCHEMA, {"row_id": pa.string()}) as writer:
        with pytest.raises(gp.ConfigError, match=r"TableWriter.write takes a pyarrow Table, got dict"):
            writer.write({"price": [1.0]})
        writer.write(source_table())
    assert pq.read_table(tmp_path / "t.parquet").num_rows == 7
