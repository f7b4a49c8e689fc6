"""materialize: stored derived features, read by plans instead of computed."""

import json
import os
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from parquet_data import corrupt_row_group
from transforms.helpers import rows_of, to_host

import gpupre as gp
import gpupre.transforms.derived as derived_module
from gpupre.transforms.plan import S_CROSS, S_NGRAM

EXTRAS = ("request_id", "row_id")


def full_pipeline(cross_buckets=1000):
    """Cheap dense ops, expensive list ops (materialized below), and an in-place Truncate."""
    return gp.Pipeline(
        [
            gp.FillMissing("dense_000", out="dense_000_filled"),
            gp.Normalize("dense_000_filled", out="dense_000_norm"),
            gp.Cross("sparse_000", "sparse_001", num_buckets=cross_buckets, out="cross"),
            gp.Hash("cross", num_buckets=97, out="cross_small"),
            gp.NGram("sparse_002", n=2, num_buckets=1000, out="bigrams"),
            gp.Hash("scored_000", num_buckets=100, out="scored_hashed"),
            gp.OverlapCount("sparse_003", "sparse_004", out="overlap"),
            gp.Truncate("sparse_005", max_len=3),
        ]
    )


STORED = ("cross", "bigrams", "scored_hashed", "overlap")  # the outputs materialized


@pytest.fixture(scope="module")
def source(synth_dir):
    return gp.Dataset(synth_dir, passthrough=EXTRAS)


@pytest.fixture(scope="module")
def fitted(source):
    return full_pipeline().fit(source, progress=False)


@pytest.fixture(scope="module")
def materialized(tmp_path_factory, source, fitted):
    ops = [op for op in fitted.ops if op.out and op.out[0] in STORED]
    return gp.materialize(source, ops, tmp_path_factory.mktemp("derived") / "out", progress=False)


def columns(batch, names):
    """The named features of a batch (with score columns) as an Arrow table, for exact comparison."""
    table = to_host(batch).to_arrow()
    return table.select([c for name in names for c in batch.schema[name].columns])


def test_keeps_every_column_and_row_group_and_adds_the_derived_ones(source, materialized):
    stored = gp.Dataset(materialized.paths, passthrough=EXTRAS)
    assert len(materialized.paths) == len(source.paths)
    assert [u.num_rows for u in stored.units()] == [u.num_rows for u in source.units()]
    assert stored.schema.names == source.schema.names + STORED
    assert stored.schema.labels == source.schema.labels
    for f in source.schema:
        assert stored.schema[f.name] == f and f.derived is None
    for name in STORED:
        assert json.loads(stored.schema[name].derived)[-1]["out"] == [name]
    assert stored.schema["scored_hashed"].kind == "scored" and stored.schema["overlap"].kind == "dense"
    for a, b in zip(source.units(), stored.units(), strict=True):
        original, copy = source.read_arrow(a), stored.read_arrow(b)
        assert copy.select(original.column_names).equals(original)


def test_derived_columns_equal_the_pipeline_output(source, fitted, materialized):
    for a, b in zip(source.units(), materialized.units(), strict=True):
        expected = columns(fitted(source.read(a)), STORED)
        assert columns(materialized.read(b), STORED).equals(expected)


def test_plan_reads_materialized_columns_instead_of_their_sources(source, fitted, materialized):
    features = fitted.features_to_read(materialized.schema)
    assert features == ["dense_000", "sparse_005", *STORED]
    projected = gp.Dataset(materialized.paths, features=features)
    plan = fitted.compile(projected.schema, "cpu")
    assert plan.materialized == STORED
    assert [type(op).__name__ for op in plan.pipeline.ops] == ["FillMissing", "Normalize", "Hash", "Truncate"]
    assert not any(np.isin(level.kind, [S_CROSS, S_NGRAM]).any() for level in plan.levels)
    assert "read, not computed" in plan.describe()
    full_plan = fitted.compile(source.schema, "cpu")
    assert any((level.kind == S_CROSS).any() for level in full_plan.levels)

    names = [f.name for f in plan.output_schema]
    assert set(names) == {*features, "dense_000_filled", "dense_000_norm", "cross_small"}
    for device in ("cpu", "reference"):
        device_plan = fitted.compile(projected.schema, device)
        for a, b in zip(source.units(), projected.units(), strict=True):
            got = columns(device_plan.run(projected.read(b)), names)
            assert got.equals(columns(full_plan.run(source.read(a)), names))


def test_a_materialized_overlap_count_can_be_bucketized(tmp_path):
    lists = pa.list_(pa.int64())
    table = pa.table({"a": pa.array([[1, 2, 3], [4, 5], [6]], lists), "b": pa.array([[1, 3], [5], [7]], lists)})
    gp.storage.write_table(table, tmp_path / "in.parquet")
    source = gp.Dataset(tmp_path / "in.parquet")
    count = gp.OverlapCount("a", "b", out="n")
    pipe = gp.Pipeline([count, gp.Bucketize("n", [0.5, 1.5], out="n_bucket")])
    with pytest.raises(gp.ConfigError, match="gp.materialize"):
        pipe.output_schema(source.schema)
    stored = gp.materialize(source, [count], tmp_path / "out", progress=False)
    batch = stored.read(stored.units()[0])
    for device in ("cpu", "reference"):
        assert rows_of(pipe.compile(stored.schema, device).run(batch), "n_bucket") == [[2], [1], [0]]


def test_dataloader_over_the_materialized_dataset(source, fitted, materialized):
    projected = gp.Dataset(materialized.paths, features=fitted.features_to_read(materialized.schema))

    def rows(dataset):
        loader = gp.DataLoader(dataset, 64, pipeline=fitted, device="cpu", num_workers=0)
        batches = [columns(b, ["cross_small", "overlap", "dense_000_norm", "bigrams"]) for b in loader]
        return pa.concat_tables(batches), loader.plan

    got, plan = rows(projected)
    expected, _ = rows(source)
    assert plan.materialized == STORED
    assert got.num_rows == source.num_rows and got.equals(expected)


def test_other_provenance_is_computed_not_read(source, fitted, materialized):
    other = full_pipeline(cross_buckets=999).fit(source, progress=False)
    assert "sparse_000" in other.features_to_read(materialized.schema)
    stored = gp.Dataset(materialized.paths)
    plan = other.compile(stored.schema, "cpu")
    assert "cross" not in plan.materialized and "bigrams" in plan.materialized
    full_plan = other.compile(source.schema, "cpu")
    for a, b in zip(source.units(), stored.units(), strict=True):
        got = columns(plan.run(stored.read(b)), ["cross", "cross_small"])
        assert got.equals(columns(full_plan.run(source.read(a)), ["cross", "cross_small"]))
        assert not got.select(["cross"]).equals(columns(stored.read(b), ["cross"]))
    without_sources = gp.Dataset(materialized.paths, features=fitted.features_to_read(materialized.schema))
    with pytest.raises(gp.SchemaError, match="sparse_000"):
        other.compile(without_sources.schema)


def test_an_earlier_op_on_an_input_changes_the_provenance(source, fitted, materialized):
    cross = next(op for op in fitted.ops if isinstance(op, gp.Cross))
    truncated = gp.Pipeline([gp.Truncate("sparse_000", max_len=1), cross])
    stored = gp.Dataset(materialized.paths)
    plan = truncated.compile(stored.schema, "cpu")
    assert plan.materialized == ()
    for a, b in zip(source.units(), stored.units(), strict=True):
        expected = columns(truncated(source.read(a)), ["cross"])
        assert columns(plan.run(stored.read(b)), ["cross"]).equals(expected)


def test_features_to_read_keeps_requested_features_and_names_unknown_ones(fitted, materialized):
    features = fitted.features_to_read(materialized.schema, keep=["sparse_007", "cross"])
    assert features == ["dense_000", "sparse_005", "sparse_007", *STORED]
    with pytest.raises(gp.SchemaError, match="sparse_07"):
        fitted.features_to_read(materialized.schema, keep=["sparse_07"])


@pytest.mark.parametrize(
    "ops, error, match",
    [
        ([gp.Hash("sparse_000", num_buckets=10)], gp.ConfigError, "in place; give it out="),
        ([gp.Normalize("dense_000", out="n")], gp.ConfigError, "pipeline.fit"),
        ([gp.Hash("sparse_000", num_buckets=10, out="sparse_001")], gp.ConfigError, "the schema has already"),
        ([gp.Hash("sparse_000", num_buckets=10, out="h"), gp.Modulo("sparse_001", n=3, out="h")],
         gp.ConfigError, "an earlier op writes"),
        ([gp.Hash("row_id", num_buckets=10, out="h")], gp.SchemaError, "'row_id' does not exist"),
    ],
)  # fmt: skip
def test_bad_ops_are_rejected(tmp_path, source, ops, error, match):
    with pytest.raises(error, match=match):
        gp.materialize(source, ops, tmp_path / "out", progress=False)
    assert not os.path.exists(tmp_path / "out")


def test_refuses_a_non_empty_directory_and_de_dup_tables(tmp_path, source, dedup_tables):
    ops = [gp.Hash("sparse_000", num_buckets=10, out="h")]
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "other.parquet").write_bytes(b"x")
    with pytest.raises(gp.ConfigError, match="not an empty directory"):
        gp.materialize(source, ops, tmp_path / "full", progress=False)
    (tmp_path / "empty").mkdir()
    assert gp.materialize(source, ops, tmp_path / "empty", progress=False).num_rows == source.num_rows
    with pytest.raises(gp.ConfigError, match="de-dup"):
        gp.materialize(gp.Dataset(dedup_tables[0]), ops, tmp_path / "dedup", progress=False)


def test_a_failure_leaves_no_file_behind(tmp_path, source, monkeypatch):
    calls = []

    class FailingBatch(gp.Batch):
        @classmethod
        def from_arrow(cls, *args, **kwargs):
            calls.append(1)
            if len(calls) == 6:  # in the second file
                raise gp.DataError("boom")
            return gp.Batch.from_arrow(*args, **kwargs)

    monkeypatch.setattr(derived_module, "Batch", FailingBatch)
    with pytest.raises(gp.DataError, match="boom"):
        gp.materialize(source, [gp.Hash("sparse_000", num_buckets=10, out="h")], tmp_path / "out",
                               progress=False)  # fmt: skip
    assert os.listdir(tmp_path / "out") == []


def test_a_corrupt_row_group_is_a_data_error_naming_it_and_leaves_no_file_behind(tmp_path, synth_dir):
    (tmp_path / "in").mkdir()
    for name in sorted(os.listdir(synth_dir)):
        corrupt_row_group(os.path.join(synth_dir, name), tmp_path / "in" / name, 2)
    source = gp.Dataset(tmp_path / "in", passthrough=EXTRAS)
    with pytest.raises(gp.DataError, match=r"part-00000\.parquet row group 2 cannot be read"):
        gp.materialize(source, [gp.Hash("sparse_000", num_buckets=10, out="h")], tmp_path / "out", progress=False)
    assert os.listdir(tmp_path / "out") == []


def test_a_file_removed_after_the_dataset_listed_it_is_a_data_error(tmp_path, synth_dir):
    shutil.copytree(synth_dir, tmp_path / "in")
    source = gp.Dataset(tmp_path / "in", passthrough=EXTRAS)
    os.remove(tmp_path / "in" / "part-00001.parquet")
    with pytest.raises(gp.DataError, match=r"part-00001\.parquet cannot be opened .*open the dataset again"):
        gp.materialize(source, [gp.Hash("sparse_000", num_buckets=10, out="h")], tmp_path / "out", progress=False)
    assert os.listdir(tmp_path / "out") == []


def test_row_group_rows_rechunks(tmp_path, source):
    ops = [gp.Hash("sparse_000", num_buckets=10, out="h")]
    out = gp.materialize(source, ops, tmp_path / "out", row_group_rows=120, progress=False)
    assert [u.num_rows for u in out.units()] == [120, 80] * 3
    with pytest.raises(gp.ConfigError, match="row_group_rows"):
        gp.materialize(source, ops, tmp_path / "other", row_group_rows=0, progress=False)


def test_plain_parquet_keeps_columns_that_are_no_feature(tmp_path):
    table = pa.table(
        {
            "price": pa.array([1.5, None, 3.0], pa.float64()),
            "history": pa.array([[1, 2, 3], [], [4, 5]], pa.list_(pa.int32())),
            "name": ["a", "b", "c"],
            "label": pa.array([0, 1, 0], pa.int64()),
        }
    )
    pq.write_table(table, tmp_path / "plain.parquet")
    source = gp.Dataset(tmp_path / "plain.parquet", features=["price", "history"])
    ops = [gp.NGram("history", n=2, num_buckets=50, out="pairs")]
    out = gp.materialize(source, ops, tmp_path / "out", progress=False)
    stored = gp.Dataset(out.paths, passthrough="name")
    assert stored.schema.names == ("price", "history", "pairs") and stored.schema.labels == ("label",)
    batch = stored.read(stored.units()[0])
    assert batch.extras["name"].to_pylist() == ["a", "b", "c"]
    np.testing.assert_array_equal(batch.labels, [0, 1, 0])
    lengths, _, _ = batch.sparse.feature("pairs")
    np.testing.assert_array_equal(lengths, [2, 0, 1])


def test_materializing_into_the_source_directory_is_refused(tmp_path, source, fitted):
    shutil.copytree(source.directories[0], tmp_path / "data")
    ops = [op for op in fitted.ops if op.out and op.out[0] == "cross"]
    with pytest.raises(gp.ConfigError, match="a directory of the source dataset"):
        gp.materialize(gp.Dataset(str(tmp_path / "data")), ops, tmp_path / "data" / "derived", progress=False)
    assert not (tmp_path / "data" / "derived").exists()
    (tmp_path / "link").symlink_to(tmp_path / "data")  # the same directory, reached through a link
    with pytest.raises(gp.ConfigError, match="a directory of the source dataset"):
        gp.materialize(gp.Dataset(str(tmp_path / "data")), ops, tmp_path / "link" / "derived", progress=False)
    assert not (tmp_path / "data" / "derived").exists()
