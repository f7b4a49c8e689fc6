"""Dataset: files and directories, units, projection (values and bytes), inference, bad input."""

import os
import pickle
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from parquet_data import corrupt_row_group

import gpupre as gp
from gpupre.storage import CountingFileSystem

INT64 = pa.list_(pa.int64())


def test_directory_and_list_of_paths_give_the_same_units(synth_dir, tmp_path):
    (tmp_path / "copy").mkdir()
    for name in sorted(os.listdir(synth_dir)):
        shutil.copy(os.path.join(synth_dir, name), tmp_path / "copy" / name)
    # ignored: not Parquet, or hidden / marker files
    (tmp_path / "copy" / "_SUCCESS").write_text("")
    (tmp_path / "copy" / "notes.txt").write_text("not parquet")
    shutil.copy(os.path.join(synth_dir, "part-00000.parquet"), tmp_path / "copy" / ".hidden.parquet")
    for hidden in ("_temporary/0", ".ipynb_checkpoints"):  # a job's uncommitted output, a notebook's copies
        (tmp_path / "copy" / hidden).mkdir(parents=True)
        shutil.copy(os.path.join(synth_dir, "part-00000.parquet"), tmp_path / "copy" / hidden / "part-00000.parquet")

    by_dir = gp.Dataset(tmp_path / "copy")
    files = [tmp_path / "copy" / f"part-0000{i}.parquet" for i in range(3)]
    by_list = gp.Dataset(files)
    assert by_dir.paths == by_list.paths == [str(f) for f in files]
    assert by_dir.units() == by_list.units()
    assert [(os.path.basename(u.path), u.row_group) for u in by_dir.units()][:5] == [
        ("part-00000.parquet", 0),
        ("part-00000.parquet", 1),
        ("part-00000.parquet", 2),
        ("part-00000.parquet", 3),
        ("part-00001.parquet", 0),
    ]
    assert sum(u.num_rows for u in by_dir.units()) == by_dir.num_rows == 600


def test_read_gives_the_stored_values(synth_file):
    ds = gp.Dataset(synth_file, passthrough=("row_id",))
    table = pq.read_table(synth_file)
    unit = ds.units()[1]
    b = ds.read(unit)
    rows = slice(200, 400)
    assert b.num_rows == 200
    np.testing.assert_array_equal(b.extras["row_id"], np.arange(200, 400))
    for i, name in enumerate(b.dense_keys):
        np.testing.assert_array_equal(b.dense[i], table.column(name)[rows].to_numpy(zero_copy_only=False))
    for name in ("sparse_007", "scored_001"):
        lists = table.column(name)[rows].to_pylist()
        lengths, values, weights = b.sparse.feature(name)
        assert lengths.tolist() == [len(x) for x in lists]
        assert values.tolist() == [v for x in lists for v in x]
    scores = [s for x in table.column("scored_001.score")[rows].to_pylist() for s in x]
    np.testing.assert_array_equal(b.sparse.feature("scored_001")[2], np.array(scores, np.float32))
    np.testing.assert_array_equal(b.labels, table.column("label")[rows])


def test_projection_reads_only_the_projected_features(synth_file):
    ds = gp.Dataset(synth_file, features=["sparse_005", "dense_003", "scored_000"])
    assert ds.schema.names == ("sparse_005", "dense_003", "scored_000")
    assert ds.columns == ["sparse_005", "dense_003", "scored_000", "scored_000.score", "label"]
    assert len(ds.full_schema) == 16
    table = ds.read_arrow(ds.units()[0])
    assert table.column_names == ds.columns
    b = ds.read(ds.units()[0])
    assert b.dense_keys == ("dense_003",) and b.dense.shape == (1, 200)
    assert b.sparse.keys == ("sparse_005", "scored_000") and b.sparse.weights is not None
    assert b.extras == {}


def test_label_override_and_no_label(synth_file):
    ds = gp.Dataset(synth_file, features="dense_000", label=())
    assert ds.schema.labels == () and ds.read(ds.units()[0]).labels is None
    ds = gp.Dataset(synth_file, features="dense_000", label="row_id")
    np.testing.assert_array_equal(ds.read(ds.units()[0]).labels, np.arange(200, dtype=np.float32))


def test_projection_reads_fewer_bytes(tmp_path):
    spec = gp.storage.SynthSpec(
        rows=2000, num_dense=10, num_sparse=10, num_scored=2, num_planted=2, row_group_rows=1000
    )
    path = str(tmp_path / "s.parquet")
    gp.storage.synthesize(path, spec, progress=False)

    def bytes_to_read_all(features):
        fs = CountingFileSystem()
        ds = gp.Dataset(path, features=features, filesystem=fs)
        fs.reset()
        for unit in ds.units():
            ds.read(unit)
        return fs.bytes_read

    everything, one = bytes_to_read_all(None), bytes_to_read_all(["sparse_003"])  # an id-list feature
    assert 0 < one < everything / 3


def test_plain_parquet_is_read_by_inference(tmp_path):
    table = pa.table(
        {
            "price": pa.array([1.5, None, 3.0], pa.float64()),
            "user": pa.array([5, None, 7], pa.int32()),
            "history": pa.array([[1, 2], [], None], pa.list_(pa.int32())),
            "terms": pa.array([[9], [8, 7], []], INT64),
            "terms.score": pa.array([[0.5], [0.25, 0.125], []], pa.list_(pa.float64())),
            "label": pa.array([1, 0, 1], pa.int64()),
        }
    )
    pq.write_table(table, tmp_path / "plain.parquet")
    ds = gp.Dataset(tmp_path / "plain.parquet")
    assert [(f.name, f.kind) for f in ds.schema] == [
        ("price", "dense"),
        ("user", "sparse"),
        ("history", "sparse"),
        ("terms", "scored"),
    ]
    b = ds.read(ds.units()[0])
    np.testing.assert_array_equal(b.dense, [[1.5, np.nan, 3.0]])
    assert b.sparse.lengths.tolist() == [1, 0, 1, 2, 0, 0, 1, 2, 0]
    assert b.sparse.values.tolist() == [5, 7, 1, 2, 9, 8, 7]
    assert b.sparse.weights.tolist() == [1, 1, 1, 1, 0.5, 0.25, 0.125]
    np.testing.assert_array_equal(b.labels, [1, 0, 1])


def test_plain_parquet_projection_skips_unsupported_columns(tmp_path):
    table = pa.table({"price": [1.0, 2.0], "city": ["a", "b"], "label": [0.0, 1.0]})
    pq.write_table(table, tmp_path / "plain.parquet")
    ds = gp.Dataset(tmp_path / "plain.parquet", features=["price"], passthrough="city")
    b = ds.read(ds.units()[0])
    assert b.extras["city"].to_pylist() == ["a", "b"]
    np.testing.assert_array_equal(b.dense, [[1.0, 2.0]])


def test_label_override_on_a_plain_file(tmp_path):
    pq.write_table(pa.table({"clk": [0.0, 1.0], "price": [1.0, 2.0]}), tmp_path / "plain.parquet")
    ds = gp.Dataset(tmp_path / "plain.parquet", label="clk")
    assert ds.schema.names == ("price",) and ds.schema.labels == ("clk",)
    for kw, role in (({"label": "price"}, "a label"), ({"passthrough": "price"}, "a pass-through column")):
        with pytest.raises(gp.SchemaError, match=rf"'price' is asked for as a feature and as {role}"):
            gp.Dataset(tmp_path / "plain.parquet", features=["price"], **kw)


@pytest.mark.parametrize("write", [pq.write_table, gp.storage.write_table], ids=["plain", "gpupre schema"])
def test_every_feature_leaves_out_the_label_and_pass_through_columns_named(tmp_path, write):
    table = pa.table({"clk": pa.array([0.0, 1.0], pa.float32()), "price": pa.array([1.0, 2.0], pa.float32()),
                      "row_id": [7, 8], "label": [0, 1]})  # fmt: skip
    write(table, tmp_path / "t.parquet")
    ds = gp.Dataset(tmp_path / "t.parquet", label="clk", passthrough="row_id")
    assert ds.schema.names[0] == "price" and not {"clk", "row_id"} & set(ds.schema.names)
    assert ds.schema.labels == ("clk",) and ds.schema.extras == ("row_id",)
    batch = ds.read(ds.units()[0])
    np.testing.assert_array_equal(batch.labels, [0.0, 1.0])
    np.testing.assert_array_equal(batch.extras["row_id"], [7, 8])
    with pytest.raises(gp.SchemaError, match=r"t\.parquet: column 'label' is the file's label .* pass label=\(\)"):
        gp.Dataset(tmp_path / "t.parquet", passthrough="label")
    assert gp.Dataset(tmp_path / "t.parquet", passthrough="label", label=()).schema.extras == ("label",)


# -- bad input --------------------------------------------------------------------------------------
def test_a_path_that_does_not_exist(tmp_path):
    with pytest.raises(gp.DataError, match=r"nowhere\.parquet does not exist"):
        gp.Dataset(tmp_path / "nowhere.parquet")


def test_a_directory_without_parquet(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(gp.DataError, match=rf"{tmp_path} holds no Parquet files"):
        gp.Dataset(tmp_path)


def test_an_empty_list_of_paths():
    with pytest.raises(gp.DataError, match="empty list"):
        gp.Dataset([])


@pytest.mark.parametrize("twice", ["listed twice", "listed and in a listed directory"])
def test_a_file_in_the_dataset_twice_is_a_config_error_not_rows_read_twice(synth_dir, twice):
    first = os.path.join(synth_dir, "part-00000.parquet")
    paths = [first, first] if twice == "listed twice" else [synth_dir, os.path.relpath(first)]
    with pytest.raises(gp.ConfigError, match=rf"{first} is in the dataset twice .* list each file once"):
        gp.Dataset(paths)


def test_a_truncated_file(synth_file, tmp_path):
    data = open(synth_file, "rb").read()
    (tmp_path / "cut.parquet").write_bytes(data[: len(data) // 2])
    with pytest.raises(gp.DataError, match=r"cut\.parquet is not a readable Parquet file"):
        gp.Dataset([synth_file, tmp_path / "cut.parquet"])


def test_a_text_file(tmp_path):
    (tmp_path / "data.parquet").write_text("label,price\n1,2.0\n")
    with pytest.raises(gp.DataError, match=r"data\.parquet is not a readable Parquet file"):
        gp.Dataset(tmp_path / "data.parquet")


def test_a_corrupt_row_group_names_the_file_and_row_group(synth_file, tmp_path):
    corrupt_row_group(synth_file, tmp_path / "bad.parquet", 1)
    ds = gp.Dataset(tmp_path / "bad.parquet")
    assert ds.read(ds.units()[0]).num_rows == 200
    with pytest.raises(gp.DataError, match=r"bad\.parquet row group 1: cannot be read"):
        ds.read(ds.units()[1])


def test_files_that_disagree_on_a_projected_column(tmp_path):
    pq.write_table(pa.table({"x": [1.0, 2.0], "y": [1.0, 2.0]}), tmp_path / "a.parquet")
    pq.write_table(pa.table({"x": pa.array([[1], [2]], INT64), "y": [3.0, 4.0]}), tmp_path / "b.parquet")
    with pytest.raises(
        gp.SchemaError, match=r"b\.parquet: column 'x' has type list<.*but .*a\.parquet has double"
    ):
        gp.Dataset(tmp_path)
    # not projected, the disagreement does not matter
    assert gp.Dataset(tmp_path, features=["y"]).num_rows == 4


def test_a_file_missing_a_projected_column(tmp_path):
    pq.write_table(pa.table({"x": [1.0], "y": [1.0]}), tmp_path / "a.parquet")
    pq.write_table(pa.table({"y": [2.0]}), tmp_path / "b.parquet")
    with pytest.raises(gp.SchemaError, match=r"b\.parquet: column 'x' is missing"):
        gp.Dataset(tmp_path)


def test_an_unknown_projected_feature_suggests_close_names(synth_file):
    with pytest.raises(gp.SchemaError, match=r"'dense_0003' does not exist.*did you mean 'dense_003'"):
        gp.Dataset(synth_file, features=["dense_001", "dense_0003"])


def test_an_unknown_projected_feature_of_a_plain_file_suggests_close_names(tmp_path):
    pq.write_table(pa.table({"price": [1.0], "brand": [3]}), tmp_path / "plain.parquet")
    with pytest.raises(gp.SchemaError, match=r"plain\.parquet.*'pirce' does not exist.*did you mean 'price'"):
        gp.Dataset(tmp_path / "plain.parquet", features=["pirce"])


@pytest.mark.parametrize("root", ["", "/"])
def test_a_dataset_of_its_filesystems_root_skips_hidden_directories(synth_file, tmp_path, root):
    import pyarrow.fs as pafs

    for directory in ("data", "_temporary/0"):
        (tmp_path / directory).mkdir(parents=True)
        shutil.copy(synth_file, tmp_path / directory / "part-0.parquet")
    ds = gp.Dataset(root, filesystem=pafs.SubTreeFileSystem(str(tmp_path), pafs.LocalFileSystem()))
    assert ds.paths == ["data/part-0.parquet"]


def test_names_given_as_a_generator_or_numpy_array_are_the_projection(synth_file):
    wanted = ["sparse_001", "dense_000"]
    for given in ((name for name in wanted), np.array(wanted)):
        ds = gp.Dataset(synth_file, features=given, label=(n for n in ["label"]), passthrough=np.array(["row_id"]))
        assert ds.schema.names == tuple(wanted) and ds.schema.labels == ("label",) and ds.schema.extras == ("row_id",)
        assert ds.read(ds.units()[0]).dense_keys == ("dense_000",)
    assert gp.Dataset(synth_file, passthrough=None).schema.extras == ()


@pytest.mark.parametrize("kw", [{"label": "label", "passthrough": "label"}, {"label": ["label", "label"]},
                                {"passthrough": ["row_id", "row_id"]}])  # fmt: skip
def test_a_column_named_twice_as_label_or_pass_through_is_refused_naming_it(synth_file, kw):
    name = "label" if "label" in kw else "row_id"
    with pytest.raises(gp.SchemaError, match=rf"column '{name}' is named twice in label=.*name each column once"):
        gp.Dataset(synth_file, **kw)


def test_with_columns_takes_names_given_as_a_generator_and_refuses_names_that_are_not_strings(synth_file):
    ds = gp.Dataset(synth_file, features=["dense_000", "dense_001"])
    moved = ds.with_columns(label=(n for n in ["dense_001"]), passthrough=(n for n in ["row_id"]))
    assert moved.schema.names == ("dense_000",) and moved.schema.labels == ("dense_001",)
    assert moved.schema.extras == ("row_id",)
    with pytest.raises(gp.ConfigError, match=r"label=1 must be a column name"):
        ds.with_columns(label=1)
    with pytest.raises(gp.ConfigError, match=r"passthrough=5 must be a column name"):
        ds.with_columns(passthrough=5)


@pytest.mark.parametrize(
    ("kw", "words"),
    [({"features": 3}, r"features=3 must be a column name or a list of them"),
     ({"features": ["dense_000", 3]}, r"features holds 3, which is no column name"),
     ({"label": 1}, r"label=1 must be a column name"),
     ({"passthrough": [None]}, r"passthrough holds None, which is no column name")],
)  # fmt: skip
def test_column_names_that_are_not_strings_are_config_errors(synth_file, kw, words):
    with pytest.raises(gp.ConfigError, match=words):
        gp.Dataset(synth_file, **kw)


@pytest.mark.parametrize("path", [None, 5, [5], ["x.parquet", None]])
def test_a_path_that_is_not_a_path_is_a_config_error(path):
    with pytest.raises(gp.ConfigError, match=r"is not a path; pass a file, a directory or a list of files"):
        gp.Dataset(path)


def test_reading_a_unit_of_another_dataset_is_a_config_error(synth_file, synth_dir):
    ds, other = gp.Dataset(synth_file), gp.Dataset(synth_dir)
    foreign = other.units()[0]
    beyond = gp.reader.WorkUnit(synth_file, 7, 200)  # the file has row groups 0 to 2
    for unit in (foreign, beyond, "part-00000.parquet row group 0"):
        for read in (ds.read, ds.read_arrow, lambda u: next(ds.read_slabs(u, 10))):
            with pytest.raises(gp.ConfigError, match=r"is not a work unit of this dataset .* units\(\) gives"):
                read(unit)
    assert ds.read(gp.Dataset(synth_file, features=["dense_000"]).units()[1]).num_rows == 200  # an equal unit reads


def test_a_list_of_strings_names_the_file_and_feature(tmp_path):
    pq.write_table(pa.table({"x": [1.0], "tags": [["a", "b"]]}), tmp_path / "tags.parquet")
    with pytest.raises(gp.SchemaError, match=r"tags\.parquet: column 'tags' has type list<"):
        gp.Dataset(tmp_path / "tags.parquet")
    assert gp.Dataset(tmp_path / "tags.parquet", features=["x"]).num_rows == 1


def test_zero_row_row_groups_and_files_are_read_as_nothing(tmp_path):
    table = pa.table({"x": pa.array([1.0, 2.0], pa.float32())})
    path = tmp_path / "empty_group.parquet"
    with pq.ParquetWriter(path, table.schema) as writer:
        writer.write_table(table.slice(0, 0))
        writer.write_table(table)
    md = pq.ParquetFile(path).metadata
    assert [md.row_group(i).num_rows for i in range(md.num_row_groups)] == [0, 2]
    pq.write_table(table.slice(0, 0), tmp_path / "empty.parquet")  # one empty row group
    ds = gp.Dataset(tmp_path)
    assert ds.num_rows == 2 and [(u.path, u.row_group) for u in ds.units()] == [(str(path), 1)]
    assert ds.read(ds.units()[0]).dense.tolist() == [[1.0, 2.0]]


def test_a_null_id_inside_a_list_names_the_file_and_row_group(tmp_path):
    table = pa.table({"ids": pa.array([[1], [2]] * 3 + [[3, None]], INT64)})
    pq.write_table(table, tmp_path / "nulls.parquet", row_group_size=4)
    ds = gp.Dataset(tmp_path / "nulls.parquet")
    ds.read(ds.units()[0])
    with pytest.raises(gp.DataError, match=r"nulls\.parquet row group 1: sparse feature 'ids' holds 1 null"):
        ds.read(ds.units()[1])


def test_a_scored_feature_with_ids_and_scores_of_different_lengths(tmp_path):
    table = pa.table(
        {
            "sc": pa.array([[1], [2, 3], [4]], INT64),
            "sc.score": pa.array([[0.5], [0.5, 0.5], [0.5, 0.5]], pa.list_(pa.float32())),
        }
    )
    arrow_schema = gp.Schema((gp.Feature("sc", "scored"),)).to_arrow({})  # as write_table stores it; it refuses the table
    pq.write_table(pa.Table.from_arrays(table.columns, schema=arrow_schema), tmp_path / "scored.parquet")
    ds = gp.Dataset(tmp_path / "scored.parquet")
    with pytest.raises(
        gp.DataError, match=r"scored\.parquet row group 0: scored feature 'sc' row 2 has 1 ids but 2"
    ):
        ds.read(ds.units()[0])


def test_bytes_per_column(synth_file):
    sizes = gp.Dataset(synth_file).bytes_per_column()
    assert set(sizes) == set(pq.read_schema(synth_file).names)
    md = pq.ParquetFile(synth_file).metadata
    total = sum(
        md.row_group(g).column(c).total_compressed_size
        for g in range(md.num_row_groups)
        for c in range(md.num_columns)
    )
    assert sum(c for c, _ in sizes.values()) == total
    assert sizes["sparse_007"][0] > sizes["sparse_000"][0]  # a long-list feature against a one-id one


def test_a_pickled_dataset_leaves_the_footers_behind_and_reads_the_same(tmp_path):
    """Loader workers and Ray readers get a pickled copy: the files' footers (statistics of every
    column chunk) are read again only where needed, so a copy's size does not grow with the row groups."""
    sizes, datasets = [], []
    for groups in (2, 20):
        spec = gp.storage.SynthSpec(rows=groups * 50, num_dense=50, num_sparse=50, num_scored=0, row_group_rows=50)
        gp.storage.synthesize(str(tmp_path / f"{groups}.parquet"), spec, progress=False)
        datasets.append(gp.Dataset(str(tmp_path / f"{groups}.parquet")))
        sizes.append(len(pickle.dumps(datasets[-1])))
    assert (sizes[1] - sizes[0]) / 18 < 200, sizes  # a footer holds some 10 KB a row group here
    ds = datasets[1]
    copy = pickle.loads(pickle.dumps(ds))
    assert copy.bytes_per_column() == ds.bytes_per_column()
    for unit in (ds.units()[0], ds.units()[-1]):
        assert copy.read(unit).to_arrow().equals(ds.read(unit).to_arrow())


def test_read_slabs_records_a_unit_whose_reader_stops_at_its_last_row(synth_file, tmp_path):
    log = gp.storage.AccessLog(tmp_path / "access.sqlite")
    ds = gp.Dataset(synth_file, features=["dense_000"], access_log=log)
    for unit in ds.units():
        slabs = ds.read_slabs(unit, unit.num_rows)
        assert next(slabs).num_rows == unit.num_rows  # every row taken; the generator is never resumed
    [(_, rows)] = log.workload().jobs.values()
    assert rows == ds.num_rows


@pytest.mark.parametrize("rows", [0, -1, 1.5, True, None])
def test_read_slabs_of_a_bad_number_of_rows_is_a_config_error_not_a_corrupt_file(synth_file, rows):
    ds = gp.Dataset(synth_file, features=["dense_000"])
    with pytest.raises(gp.ConfigError, match=rf"read_slabs rows={rows!r} must be an integer >= 1"):
        next(ds.read_slabs(ds.units()[0], rows))


def test_a_column_missing_from_the_first_file_is_a_schema_error_naming_both(tmp_path):
    with_y = pa.table({"x": pa.array([1.0, 2.0], pa.float32()), "y": pa.array([[1], [2, 3]]), "label": [0.0, 1.0]})
    without_y = pa.table({"x": pa.array([3.0], pa.float32()), "label": [1.0]})
    gp.storage.write_table(without_y, tmp_path / "a.parquet")
    gp.storage.write_table(with_y, tmp_path / "b.parquet")
    for features in (None, ["x", "y"]):
        with pytest.raises(gp.SchemaError, match=r"a\.parquet: column 'y' is missing but .*b\.parquet has it"):
            gp.Dataset(tmp_path, features=features)
    assert gp.Dataset(tmp_path, features=["x"]).num_rows == 3  # projected out, it does not matter


def test_scores_that_only_a_later_file_has_are_a_schema_error_not_dropped(tmp_path):
    ids = pa.array([[1], [2, 3]])
    gp.storage.write_table(pa.table({"y": ids, "label": [0.0, 1.0]}), tmp_path / "a.parquet")
    scored = pa.table({"y": ids, "y.score": pa.array([[0.5], [0.25, 1.0]], pa.list_(pa.float32())), "label": [1.0, 0.0]})
    gp.storage.write_table(scored, tmp_path / "b.parquet")
    with pytest.raises(gp.SchemaError, match=r"a\.parquet: column 'y\.score' is missing but .*b\.parquet has it"):
        gp.Dataset(tmp_path, features=["y"])
    assert gp.Dataset(tmp_path, features=[], passthrough="y").num_rows == 4  # a pass-through column has no scores


@pytest.mark.parametrize(
    ("kw", "error", "words"),
    [({"filesystem": "s3"}, gp.ConfigError, "filesystem='s3' is not a pyarrow.fs.FileSystem"),
     ({"path": "s3://bucket/x?bogus=1"}, gp.ConfigError, "s3://bucket/x\\?bogus=1 is not a URI pyarrow can open")],
)  # fmt: skip
def test_a_filesystem_or_uri_that_cannot_be_used_is_a_config_error(synth_file, kw, error, words):
    with pytest.raises(error, match=words):
        gp.Dataset(**{"path": synth_file, **kw})


def test_a_passthrough_column_with_nulls_anywhere_is_arrow_in_every_batch(tmp_path):
    path = str(tmp_path / "ids.parquet")
    ids = pa.array([None if i == 10 else i for i in range(40)], pa.int64())
    pq.write_table(pa.table({"x": np.arange(40, dtype=np.float32), "row_id": ids, "t": np.arange(40)}), path, row_group_size=10)
    ds = gp.Dataset(path, features=["x"], passthrough=["row_id", "t"])
    batches = [ds.read(u) for u in ds.units()]
    assert all(isinstance(b.extras["row_id"], pa.Array) for b in batches)  # the null is in the second only
    assert all(isinstance(b.extras["t"], np.ndarray) for b in batches)


def test_a_passthrough_column_without_statistics_is_numpy_unless_it_holds_nulls(tmp_path):
    for nulls in (False, True):
        path = str(tmp_path / f"nostats-{nulls}.parquet")
        ids = pa.array([None if nulls and i == 30 else i for i in range(40)], pa.int64())
        pq.write_table(pa.table({"x": np.arange(40, dtype=np.float32), "row_id": ids}), path, row_group_size=10,
                       write_statistics=False)  # fmt: skip
        ds = gp.Dataset(path, features=["x"], passthrough=["row_id"])
        kinds = {type(ds.read(u).extras["row_id"]) for u in ds.units()}
        assert kinds == ({pa.Int64Array} if nulls else {np.ndarray})


@pytest.mark.parametrize("expand", ["no", 0, None])
def test_expand_that_is_not_a_bool_is_a_config_error(synth_file, expand):
    with pytest.raises(gp.ConfigError, match="expand=.* must be True or False"):  # "no" had meant True
        gp.Dataset(synth_file, expand=expand)


@pytest.mark.parametrize("dtype", [pa.float64(), pa.int64(), pa.bool_()])
def test_a_null_label_reads_as_nan(tmp_path, dtype):
    label = pa.array([1, None, 0], pa.int64()).cast(dtype)
    pq.write_table(pa.table({"x": pa.array([1.0, 2.0, 3.0], pa.float32()), "label": label}), tmp_path / "x.parquet")
    ds = gp.Dataset(tmp_path / "x.parquet")
    np.testing.assert_array_equal(ds.read(ds.units()[0]).labels, [1.0, np.nan, 0.0])


def test_a_feature_named_twice_is_a_config_error_naming_it(synth_file):
    name = gp.Dataset(synth_file).schema.names[0]
    with pytest.raises(gp.ConfigError, match=f"features= names '{name}' twice; name each feature once"):
        gp.Dataset(synth_file, features=[name, name])
