"""Feature reordering: the column order for a workload, the rewrite, and what a job then reads."""

import sqlite3
import threading

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from parquet_data import corrupt_row_group

import gpupre as gp
from gpupre.storage import AccessLog, CountingFileSystem, Workload, column_order, reorder

SPEC = gp.storage.SynthSpec(rows=2000, num_dense=16, num_sparse=16, num_scored=2, num_planted=2, row_group_rows=1000)
HOLE = 64 << 10  # a request costs as much as reading 64 KiB: several columns of this data


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("wide") / "data.parquet")
    gp.storage.synthesize(path, SPEC, progress=False)
    return path


def jobs(names):
    """Three jobs over features written in an order unrelated to them (every third, ...)."""
    return (
        Workload()
        .add("ctr", names[0::3] + ["label"], weight=3)
        .add("cvr", names[1::3] + names[0:4] + ["label"], weight=2)
        .add("explore", names[2::5], weight=1)
    )


def runs(order, columns):
    """How many contiguous runs `columns` form in `order`."""
    inside = np.isin(order, list(columns))
    return int(inside[0]) + int(np.sum(inside[1:] & ~inside[:-1]))


def test_column_order_makes_each_job_contiguous_and_keeps_scores_with_their_ids():
    sizes = {f"f{i}": 100 for i in range(12)} | {"s": 100, "s.score": 50, "cold": 1000}
    workload = Workload().add("a", [f"f{i}" for i in range(0, 12, 2)] + ["s"]).add("b", [f"f{i}" for i in range(1, 12, 2)])
    order = column_order(sizes, workload, request_bytes=10)
    assert sorted(order) == sorted(sizes)
    assert order[-1] == "cold"  # read by nobody
    assert order.index("s.score") == order.index("s") + 1
    for columns, _ in workload.jobs.values():
        assert runs(order, columns) == 1


def test_column_order_favours_the_heavier_job_when_jobs_overlap():
    sizes = {c: 100 for c in "abcdef"}
    workload = Workload().add("heavy", ["a", "c", "e"], weight=10).add("light", ["b", "c", "d", "f"], weight=1)
    order = column_order(sizes, workload, request_bytes=1)
    assert runs(order, "ace") == 1


def test_workload_round_trips_and_rejects_bad_jobs():
    workload = Workload().add("a", ["x", "y"], 2.5)
    assert Workload.from_json(workload.to_json()) == workload
    with pytest.raises(gp.ConfigError, match="weight"):
        Workload().add("a", ["x"], weight=0)
    with pytest.raises(gp.ConfigError, match="no columns"):
        Workload().add("a", [])
    with pytest.raises(gp.ConfigError, match="'nope'"):
        column_order({"x": 1}, Workload().add("a", ["nope"]))


def test_reorder_keeps_rows_row_groups_and_schema(wide, tmp_path):
    source = gp.Dataset(wide)
    out = reorder(source, tmp_path / "re", jobs(list(source.schema.names)), HOLE, progress=False)
    assert out.schema == source.schema and out.num_rows == source.num_rows
    assert [u.num_rows for u in out.units()] == [u.num_rows for u in source.units()]
    order = pq.read_schema(out.paths[0]).names
    assert order != pq.read_schema(wide).names
    for a, b in zip(source.units(), out.units()):
        assert source.read_arrow(a).equals(out.read_arrow(b).select(source.columns))
    with pytest.raises(gp.ConfigError, match="not empty"):
        reorder(source, tmp_path / "re", jobs(list(source.schema.names)), progress=False)


def test_reorder_of_a_corrupt_row_group_is_a_data_error_naming_it(wide, tmp_path):
    (tmp_path / "src").mkdir()
    corrupt_row_group(wide, tmp_path / "src" / "data.parquet", 1)
    source = gp.Dataset(str(tmp_path / "src"))
    with pytest.raises(gp.DataError, match=r"data.parquet row group 1 cannot be read"):
        reorder(source, tmp_path / "re", jobs(list(source.schema.names)), HOLE, progress=False)


def test_reorder_keeps_each_columns_codec_and_dictionary_encoding(tmp_path):
    table = pa.table({"a": pa.array([[1, 2], [3]] * 50, pa.list_(pa.int64())), "b": np.arange(100.0), "c": [7] * 100})
    pq.write_table(table, tmp_path / "t.parquet", compression={"a.list.element": "zstd", "b": "snappy", "c": "none"},
                   use_dictionary=["a.list.element", "c"])  # fmt: skip

    def chunks(path):
        md = pq.ParquetFile(path).metadata
        return {c.path_in_schema: (c.compression, "RLE_DICTIONARY" in c.encodings)
                for c in (md.row_group(0).column(i) for i in range(md.num_columns))}  # fmt: skip

    out = reorder(tmp_path / "t.parquet", tmp_path / "re", Workload().add("j", ["c", "a"]), progress=False)
    assert pq.read_schema(out.paths[0]).names[:2] != ["a", "b"]
    assert chunks(out.paths[0]) == chunks(tmp_path / "t.parquet")


def test_a_failed_reorder_leaves_its_output_empty(wide, tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    for name in ("a.parquet", "b.parquet"):
        pq.write_table(pq.read_table(wide), source / name)
    dataset = gp.Dataset(source)
    with open(source / "b.parquet", "r+b") as f:  # the second file's pages go bad after it was listed
        f.seek(4)
        f.write(b"\0" * 20_000)
    with pytest.raises(gp.DataError, match="b.parquet"):
        reorder(dataset, tmp_path / "re", jobs(list(dataset.schema.names)), progress=False)
    assert list((tmp_path / "re").iterdir()) == []


def read_all(path, columns, cache_options):
    fs = CountingFileSystem()
    ds = gp.Dataset(path, features=[c for c in columns if c != "label"], filesystem=fs, cache_options=cache_options)
    fs.reset()
    tables = [ds.read_arrow(u) for u in ds.units()]
    return fs.read_requests, fs.bytes_read, tables


def test_a_reordered_projection_reads_fewer_bytes_in_no_more_requests(wide, tmp_path):
    names = list(gp.Dataset(wide).schema.names)
    workload = jobs(names)
    out = reorder(wide, tmp_path / "re", workload, HOLE, progress=False)
    merge = pa.CacheOptions(hole_size_limit=HOLE, range_size_limit=64 << 20)
    for columns, _ in workload.jobs.values():
        before_requests, before_bytes, before = read_all(wide, columns, merge)
        after_requests, after_bytes, after = read_all(out.paths[0], columns, merge)
        assert after_bytes < 0.8 * before_bytes and after_requests <= before_requests
        assert all(a.equals(b.select(a.column_names)) for a, b in zip(before, after))


def test_near_exact_merging_reads_no_more_bytes_in_fewer_requests_after_reordering(wide, tmp_path):
    names = list(gp.Dataset(wide).schema.names)
    workload = jobs(names)
    out = reorder(wide, tmp_path / "re", workload, HOLE, progress=False)
    columns = workload.jobs["ctr"][0]
    before_requests, before_bytes, _ = read_all(wide, columns, None)
    after_requests, after_bytes, _ = read_all(out.paths[0], columns, None)
    assert after_requests < before_requests / 2
    assert after_bytes <= before_bytes


def test_access_log_records_what_the_loader_workers_read(wide, tmp_path):
    log = AccessLog(tmp_path / "access.sqlite")
    ds = gp.Dataset(wide, features=["dense_000", "sparse_003"], access_log=log)
    for _ in gp.DataLoader(ds, batch_size=256, device="cpu", num_workers=2):
        pass
    workload = log.workload()
    [(columns, rows)] = workload.jobs.values()
    assert set(columns) == set(ds.columns) and rows == ds.num_rows
    out = reorder(wide, tmp_path / "re", workload, HOLE, progress=False)
    assert runs(pq.read_schema(out.paths[0]).names, ds.columns) == 1


def test_an_access_log_opened_while_another_process_makes_the_file_waits_for_it(tmp_path):
    """Two loader workers opening a new access log at once: the one switching the file to WAL
    holds a lock that SQLite reported to the other at once as "database is locked"."""
    other = sqlite3.connect(tmp_path / "access.sqlite", isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    threading.Timer(0.5, other.execute, ["COMMIT"]).start()
    log = AccessLog(tmp_path / "access.sqlite")
    log.record(["a"], 5)
    assert log.workload().jobs == {"projection-0": (("a",), 5)}
    other.close()


def test_reorder_of_a_dedup_table_still_reads_de_duplicated(dedup_tables, tmp_path):
    source = gp.Dataset(dedup_tables[0])
    workload = Workload().add("job", source.columns[::2])
    out = reorder(source, tmp_path / "re", workload, HOLE, progress=False)
    assert out.dedup and out.num_rows == source.num_rows
    for a, b in zip(source.units(), out.units()):
        x, y = source.read(a), out.read(b)
        np.testing.assert_array_equal(x.inverse, y.inverse)
        assert x.expand().to_arrow().equals(y.expand().to_arrow())


def test_reorder_of_plain_parquet_keeps_the_feature_order(tmp_path):
    rng = np.random.default_rng(0)
    table = pa.table({"a": rng.random(100), "b": rng.random(100), "c": rng.integers(0, 9, 100), "d": rng.random(100),
                      "label": rng.random(100)})  # fmt: skip
    pq.write_table(table, tmp_path / "x.parquet")  # by another writer: no gpupre schema in its metadata
    source = gp.Dataset(tmp_path / "x.parquet")
    out = reorder(source, tmp_path / "re", Workload().add("j", ["d", "a"]).add("k", ["c"]), progress=False)
    assert pq.read_schema(out.paths[0]).names[:2] in (["d", "a"], ["a", "d"])  # the file's order did change
    assert out.schema == source.schema
    before, after = source.read(source.units()[0]), out.read(out.units()[0])
    assert after.dense_keys == before.dense_keys == ("a", "b", "d")
    np.testing.assert_array_equal(after.dense, before.dense)


def test_reorder_of_files_with_different_columns_keeps_each_files_columns(tmp_path):
    two = {"a": pa.array([1.0, 2.0], pa.float32()), "b": pa.array([3.0, 4.0], pa.float32()), "label": [1.0, 0.0]}
    (tmp_path / "src").mkdir()
    pq.write_table(pa.table(two), tmp_path / "src" / "p0.parquet")
    pq.write_table(pa.table({**two, "c": pa.array([5.0, 6.0], pa.float32())}), tmp_path / "src" / "p1.parquet")
    source = gp.Dataset(tmp_path / "src", features=["a", "b"])  # only the first two are in every file
    out = reorder(source, tmp_path / "re", Workload().add("j", ["b"]), progress=False)
    assert out.schema == source.schema
    for name in ("p0.parquet", "p1.parquet"):
        before, after = pq.read_table(tmp_path / "src" / name), pq.read_table(tmp_path / "re" / name)
        assert after.column_names[0] == "b" and after.select(before.column_names).equals(before)


def test_reorder_refuses_two_files_that_would_be_rewritten_under_one_name(tmp_path):
    names = ["x", "x.parquet"]  # a file listed twice the Dataset itself refuses
    for name in names:
        pq.write_table(pa.table({"a": pa.array([1.0, 2.0], pa.float32())}), tmp_path / name)
    source = gp.Dataset([str(tmp_path / n) for n in names])
    with pytest.raises(gp.ConfigError, match=r"would both be rewritten as x\.parquet"):
        reorder(source, tmp_path / "re", Workload().add("j", ["a"]), progress=False)
    assert not (tmp_path / "re").exists()


@pytest.mark.parametrize(
    ("call", "error", "words"),
    [(lambda d, p: reorder(d, p / "afile", Workload().add("j", ["x"]), progress=False), gp.ConfigError, "afile is a file"),
     (lambda d, p: reorder(d, p / "o", {"j": ["x"]}, progress=False), gp.ConfigError, "must be a gp.storage.Workload, got dict"),
     (lambda d, p: reorder(d, p / "o", Workload().add("j", ["x"]), "1MB", progress=False), gp.ConfigError, "request_bytes='1MB'"),
     (lambda d, p: reorder(d, p / "o", Workload(), progress=False), gp.ConfigError, "workload has no jobs"),
     (lambda d, p: Workload.from_json("{not json"), gp.DataError, "not a Workload's JSON"),
     (lambda d, p: Workload().add("j", None), gp.ConfigError, "reads no columns"),
     (lambda d, p: Workload().add("j", 5), gp.ConfigError, "reads 5; give it a column name or a list of names"),
     (lambda d, p: Workload().add("j", ["x"], True), gp.ConfigError, "weight=True"),
     (lambda d, p: Workload().add("j", ["x"], float("inf")), gp.ConfigError, "weight=inf"),
     (lambda d, p: gp.storage.measured_cache_options(pa.fs.LocalFileSystem(), str(p / "nope.parquet")), gp.DataError,
      "nope.parquet: cannot be read"),
     (lambda d, p: gp.storage.measured_cache_options("local", d.paths[0]), gp.ConfigError, "got str"),
     (lambda d, p: AccessLog(p), gp.ConfigError, "is a directory; pass the path of a SQLite file"),
     (lambda d, p: AccessLog(None), gp.ConfigError, "path=None must be the path of a SQLite file"),
     (lambda d, p: AccessLog(p / "afile" / "log.sqlite").workload(), gp.DataError, "cannot open the access log")],
)  # fmt: skip
def test_bad_arguments_are_gpupre_errors_naming_them(tmp_path, call, error, words):
    pq.write_table(pa.table({"x": [1.0, 2.0]}), tmp_path / "x.parquet")
    (tmp_path / "afile").write_text("x")
    with pytest.raises(error, match=words):
        call(gp.Dataset(tmp_path / "x.parquet"), tmp_path)


def test_arguments_of_the_layout_tools_are_checked(tmp_path):
    from gpupre.storage import Workload, measured_cache_options

    assert Workload().add("j", ["a"], np.int64(5)).jobs["j"][1] == 5.0  # numpy numbers are numbers
    with pytest.raises(gp.ConfigError, match="weight"):
        Workload().add("j", ["a"], "5")
    with pytest.raises(gp.ConfigError, match="probes=0"):
        measured_cache_options(pafs.LocalFileSystem(), str(tmp_path / "x"), probes=0)


def test_reorder_into_the_source_directory_is_refused_as_it_would_be_read_twice(wide, tmp_path):
    source = tmp_path / "data"
    source.mkdir()
    (source / "data.parquet").write_bytes(open(wide, "rb").read())
    ds = gp.Dataset(str(source))
    with pytest.raises(gp.ConfigError, match="inside .*data, a directory of the source dataset"):
        reorder(ds, source / "reordered", jobs(list(ds.schema.names)), progress=False)
    assert gp.Dataset(str(source)).num_rows == ds.num_rows  # nothing was written there
    reorder(gp.Dataset(str(source / "data.parquet")), source / "beside", jobs(list(ds.schema.names)), progress=False)
