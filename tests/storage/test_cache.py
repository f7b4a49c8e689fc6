"""The SSD cache tier: ranges served locally, only gaps fetched, a size cap, shared by processes."""

import multiprocessing as mp
import os
import pickle

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

import gpupre as gp
from gpupre.storage import CachedFileSystem, CountingFileSystem

FEATURES = ["dense_000", "dense_003", "sparse_001", "scored_000"]


def cached(tmp_path, capacity=1 << 30):
    remote = CountingFileSystem()  # local files stand in for the remote store; reads through it are counted
    return remote, CachedFileSystem(remote, tmp_path / "cache", capacity)


def read_all(path, fs, features=FEATURES):
    ds = gp.Dataset(path, features=features, filesystem=fs, cache_options=pa.CacheOptions(lazy=False))
    return [ds.read_arrow(u) for u in ds.units()]


def test_a_second_job_reads_nothing_remote_and_gets_the_same_data(synth_file, tmp_path):
    want = read_all(synth_file, pafs.LocalFileSystem())
    remote, fs = cached(tmp_path)
    assert all(a.equals(b) for a, b in zip(read_all(synth_file, fs), want))
    first = remote.bytes_read
    assert first > 0 and fs.remote_bytes == first
    remote.reset()
    assert all(a.equals(b) for a, b in zip(read_all(synth_file, fs), want))
    assert remote.bytes_read == 0 and remote.read_requests == 0
    assert fs.usage()[1] == first


@pytest.mark.parametrize(("hole", "requests", "fetched"), [(0, 3, 350), (50, 3, 350), (51, 2, 400), (101, 1, 500)])
def test_only_the_gaps_of_a_partly_cached_range_are_fetched(synth_file, tmp_path, hole, requests, fetched):
    remote = CountingFileSystem()
    fs = CachedFileSystem(remote, tmp_path / "cache", 1 << 30, hole_size_limit=hole)
    with fs.open_input_file(synth_file) as f:
        f.seek(100)
        f.read(50)
        f.seek(300)
        f.read(100)
    remote.reset()
    with fs.open_input_file(synth_file) as f, open(synth_file, "rb") as raw:
        f.seek(0)
        raw.seek(0)
        assert f.read(500) == raw.read(500)  # gaps 0-100, 150-300, 400-500 around 50 and 100 cached
    assert (remote.read_requests, remote.bytes_read) == (requests, fetched)
    assert fs.usage() == (5, 500)  # only the gaps were added, never the cached pieces again
    remote.reset()
    with fs.open_input_file(synth_file) as f:
        f.read(500)
    assert remote.read_requests == 0


def test_a_gap_that_another_process_stored_first_is_kept_once(synth_file, tmp_path):
    _, fs = cached(tmp_path)
    handler = fs.handler
    with fs.open_input_file(synth_file) as f:
        f.read(1000)
    (key,) = handler.db().execute("SELECT key FROM extents").fetchone()
    handler._store(key, [(10, b"x" * 100)])  # what a process that missed the same gap at once does
    assert fs.usage() == (1, 1000)
    assert sum(len(files) for _, _, files in os.walk(tmp_path / "cache" / "ranges")) == 1


def test_files_a_killed_process_left_behind_are_swept(synth_file, tmp_path):
    _, fs = cached(tmp_path)
    with fs.open_input_file(synth_file) as f:
        f.read(100)
    folder = next(root for root, _, files in os.walk(tmp_path / "cache" / "ranges") if files)
    old, young = os.path.join(folder, "orphan.bin"), os.path.join(folder, "writing.bin.tmp")
    for path in (old, young):
        with open(path, "wb") as f:
            f.write(b"x")
    os.utime(old, (1, 1))
    os.utime(tmp_path / "cache" / "swept", (1, 1))  # the last sweep was long ago
    _, again = cached(tmp_path)
    with again.open_input_file(synth_file) as f:
        assert len(f.read(100)) == 100
    assert not os.path.exists(old) and os.path.exists(young)  # a write in progress is left alone
    assert again.usage() == (1, 100)


def test_the_cache_stays_under_its_capacity_and_evicts_the_least_recently_used(synth_file, tmp_path):
    size = os.path.getsize(synth_file)  # three row groups of about a third each
    remote, fs = cached(tmp_path, capacity=size // 2)
    want = read_all(synth_file, pafs.LocalFileSystem(), None)
    assert all(a.equals(b) for a, b in zip(read_all(synth_file, fs, None), want))
    ranges, held = fs.usage()
    assert 0 < held <= size // 2
    on_disk = sum(len(files) for _, _, files in os.walk(tmp_path / "cache" / "ranges"))
    assert on_disk == ranges
    ds = gp.Dataset(synth_file, filesystem=fs)
    first, *_, last = ds.units()
    remote.reset()
    ds.read_arrow(last)
    assert remote.bytes_read == 0  # the most recent range stayed
    ds.read_arrow(first)
    assert remote.bytes_read > 0  # the oldest went


def test_a_range_evicted_by_another_process_is_fetched_again(synth_file, tmp_path):
    remote, fs = cached(tmp_path)
    want = read_all(synth_file, pafs.LocalFileSystem())
    read_all(synth_file, fs)
    for root, _, files in os.walk(tmp_path / "cache" / "ranges"):
        for name in files:
            os.remove(os.path.join(root, name))
    remote.reset()
    assert all(a.equals(b) for a, b in zip(read_all(synth_file, fs), want))
    assert remote.bytes_read > 0
    stored = fs.usage()  # the ranges fetched again are stored again, in the place of the lost ones
    assert stored[1] == sum(os.path.getsize(os.path.join(r, n)) for r, _, f in os.walk(tmp_path / "cache" / "ranges") for n in f)
    remote.reset()
    assert all(a.equals(b) for a, b in zip(read_all(synth_file, fs), want))
    assert remote.read_requests == 0


def test_a_changed_remote_file_is_never_served_stale(tmp_path):
    path = str(tmp_path / "t.parquet")
    pq.write_table(pa.table({"x": pa.array([1.0, 2.0], pa.float32())}), path)
    _, fs = cached(tmp_path)
    assert read_all(path, fs, ["x"])[0].column("x").to_pylist() == [1.0, 2.0]
    pq.write_table(pa.table({"x": pa.array([7.0, 8.0, 9.0], pa.float32())}), path)
    os.utime(path, ns=(1, 1))  # a new mtime even on coarse clocks
    assert read_all(path, fs, ["x"])[0].column("x").to_pylist() == [7.0, 8.0, 9.0]


def test_capacity_must_be_a_positive_integer_of_any_kind(tmp_path):
    for bad in (0, True, 1.5):
        with pytest.raises(gp.ConfigError, match="capacity_bytes"):
            CachedFileSystem(pafs.LocalFileSystem(), tmp_path, bad)
    assert CachedFileSystem(pafs.LocalFileSystem(), tmp_path, np.int64(1 << 20)).handler.capacity_bytes == 1 << 20


def _job(path, directory, capacity, features, queue):
    fs = CachedFileSystem(pafs.LocalFileSystem(), directory, capacity)
    for _ in range(3):
        tables = read_all(path, fs, features)
    queue.put([t.to_pydict() for t in tables])


@pytest.mark.parametrize("capacity", [1 << 30, 20_000])
def test_concurrent_jobs_share_one_cache_safely(synth_file, tmp_path, capacity):
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    projections = [FEATURES, FEATURES[1:] + ["sparse_005"], None]
    jobs = [ctx.Process(target=_job, args=(synth_file, str(tmp_path / "cache"), capacity, p, queue)) for p in projections]
    for job in jobs:
        job.start()
    results = [queue.get(timeout=120) for _ in jobs]
    for job in jobs:
        job.join(timeout=60)
        assert job.exitcode == 0
    wanted = [[t.to_pydict() for t in read_all(synth_file, pafs.LocalFileSystem(), p)] for p in projections]
    assert sorted(map(repr, results)) == sorted(map(repr, wanted))
    assert CachedFileSystem(pafs.LocalFileSystem(), tmp_path / "cache", capacity).usage()[1] <= capacity


def test_the_loader_workers_read_through_the_cache(synth_file, tmp_path):
    remote, fs = cached(tmp_path)
    copy = pickle.loads(pickle.dumps(fs))
    assert isinstance(copy, CachedFileSystem) and copy.remote_bytes == 0 and copy.usage() == fs.usage()
    ds = gp.Dataset(synth_file, features=FEATURES, filesystem=fs)
    rows = [sum(b.num_rows for b in gp.DataLoader(ds, batch_size=128, device="cpu", num_workers=2)) for _ in range(2)]
    assert rows == [ds.num_rows] * 2
    remote.reset()
    read_all(synth_file, fs)
    assert remote.bytes_read == 0  # the workers' reads landed in the cache


def test_a_gap_before_abutting_cached_extents_fetches_only_the_gap(tmp_path):
    data = os.urandom(200_000)
    (tmp_path / "remote.bin").write_bytes(data)
    remote = CountingFileSystem()
    fs = CachedFileSystem(remote, tmp_path / "cache", 1 << 30, hole_size_limit=1000)
    with fs.open_input_file(str(tmp_path / "remote.bin")) as f:
        f.read_at(100, 1000)  # a short extent, [1000, 1100)
        f.read_at(100_000, 1100)  # a long one right after it, [1100, 101100)
        remote.reset()
        assert f.read_at(100_200, 900) == data[900:101_100]  # the gap [900, 1000), then both extents
    assert (remote.read_requests, remote.bytes_read) == (1, 100)


def test_a_cache_directory_that_is_a_file_is_a_config_error_naming_it(tmp_path):
    (tmp_path / "afile").write_text("x")
    for directory in (tmp_path / "afile", tmp_path / "afile" / "cache"):
        with pytest.raises(gp.ConfigError, match=r"afile is a file, not a directory"):
            CachedFileSystem(pafs.LocalFileSystem(), directory, 1 << 30)
    with pytest.raises(gp.ConfigError, match="must be a pyarrow.fs.FileSystem, got str"):
        CachedFileSystem("s3", tmp_path / "cache", 1 << 30)
    with pytest.raises(gp.ConfigError, match="cache directory=None must be the path of a directory"):
        CachedFileSystem(pafs.LocalFileSystem(), None, 1 << 30)


def test_a_broken_index_costs_speed_not_data(synth_file, tmp_path):
    expected = read_all(synth_file, pafs.LocalFileSystem())
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "index.sqlite").write_bytes(b"not a database" * 100)
    fs = CachedFileSystem(pafs.LocalFileSystem(), str(tmp_path / "cache"), capacity_bytes=1 << 30)
    with pytest.warns(RuntimeWarning, match="reading from the remote store"):
        assert all(got.equals(want) for got, want in zip(read_all(synth_file, fs), expected))
    with pytest.raises(gp.DataError, match="index cannot be read"):
        fs.usage()
