"""Datasets on a real S3-compatible server (moto, on loopback) with injected latency."""

import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.fs as pafs
import pytest

import gpupre as gp
from gpupre.storage import CachedFileSystem, CountingFileSystem, LocalObjectStore, Workload, reorder

LATENCY_MS = 20


@pytest.fixture(scope="module")
def store(synth_dir):
    with LocalObjectStore(latency_ms=LATENCY_MS) as store:
        store.create_bucket("data")
        pafs.copy_files(synth_dir, "data/parts", destination_filesystem=store.filesystem())
        yield store


def test_a_dataset_on_the_object_store_reads_like_the_local_one(store, synth_dir):
    remote = gp.Dataset("data/parts", features=["dense_001", "sparse_002"], filesystem=store.filesystem())
    local = gp.Dataset(synth_dir, features=["dense_001", "sparse_002"])
    assert remote.num_rows == local.num_rows and len(remote.units()) == len(local.units())
    for a, b in zip(remote.units(), local.units()):
        assert remote.read_arrow(a).equals(local.read_arrow(b))
    rows = sum(b.num_rows for b in gp.DataLoader(remote, batch_size=100, device="cpu", num_workers=2))
    assert rows == local.num_rows


def test_each_request_waits_for_the_injected_latency(store):
    fs = store.filesystem()
    [info] = [i for i in fs.get_file_info(pafs.FileSelector("data/parts")) if i.is_file][:1]
    with fs.open_input_file(info.path) as f:
        start = time.perf_counter()
        for offset in range(0, 5 * 100, 100):
            f.read_at(10, offset)
        elapsed = time.perf_counter() - start
    assert elapsed >= 5 * LATENCY_MS / 1e3


def test_reorder_writes_to_the_object_store_and_the_cache_spares_a_second_job(store, tmp_path):
    fs = store.filesystem()
    source = gp.Dataset("data/parts", filesystem=fs)
    workload = Workload().add("job", ["dense_001", "sparse_002", "label"])
    out = reorder(source, "data/reordered", workload, progress=False, filesystem=fs)
    assert out.num_rows == source.num_rows and out.paths[0].startswith("data/reordered/")
    remote = CountingFileSystem(fs)
    cache = CachedFileSystem(remote, tmp_path / "cache", 1 << 30)
    options = pa.CacheOptions.from_network_metrics(LATENCY_MS, 100)
    fetched = []
    for _ in range(2):
        remote.reset()
        ds = gp.Dataset("data/reordered", features=["dense_001", "sparse_002"], filesystem=cache, cache_options=options)
        tables = [ds.read_arrow(u) for u in ds.units()]
        fetched.append(remote.bytes_read)
    assert fetched[0] > 0 and fetched[1] == 0
    assert tables[0].equals(source.read_arrow(source.units()[0]).select(tables[0].column_names))


def test_measured_cache_options_read_through_gaps_that_cost_less_than_a_request(store):
    fs = store.filesystem()
    path = gp.Dataset("data/parts", filesystem=fs).paths[0]
    options = gp.storage.measured_cache_options(fs, path, probes=3)
    assert options.hole_size_limit > pa.CacheOptions().hole_size_limit  # 20 ms at loopback speed: far more than 8 KiB
    assert options.lazy is False


def test_filesystem_options_override_the_defaults(store):
    fs = store.filesystem(region="eu-west-1", request_timeout=5)
    assert fs.region == "eu-west-1"
    assert any(i.is_file for i in fs.get_file_info(pafs.FileSelector("data/parts")))


def test_a_second_start_keeps_the_running_server_and_stop_ends_it():
    store = LocalObjectStore()
    try:
        store.start()
        first, endpoint = store._process, store.endpoint
        assert store.start() is store and store._process is first and store.endpoint == endpoint
    finally:
        store.stop()
    assert not _running(first.pid)


@pytest.mark.parametrize("name", ["b", "x" * 64])
def test_a_bucket_name_the_store_refuses_is_a_config_error_naming_it(store, name):
    with pytest.raises(gp.ConfigError, match=f"bucket '{name}' cannot be created .* 3 to 63 lowercase"):
        store.create_bucket(name)
    store.create_bucket("data")  # an existing bucket: nothing happens


def test_a_store_that_is_not_running_says_so():
    with pytest.raises(gp.BackendUnavailable, match="start"):
        LocalObjectStore().filesystem()


def test_the_server_stops_when_the_process_that_started_it_is_killed():
    script = (
        "import time, gpupre as gp\n"
        "store = gp.storage.LocalObjectStore().start()\n"
        "print(store._process.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        child = int(parent.stdout.readline())
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and _running(child):
        time.sleep(0.1)
    assert not _running(child)


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False


@pytest.mark.parametrize(
    ("kw", "words"),
    [({"latency_ms": -5}, "latency_ms=-5 must be a number >= 0"), ({"latency_ms": "5"}, "latency_ms='5'"),
     ({"bandwidth_mib_s": 0}, "bandwidth_mib_s=0"), ({"start_timeout_s": float("nan")}, "start_timeout_s=nan")],
)  # fmt: skip
def test_bad_arguments_are_config_errors_before_anything_starts(kw, words):
    with pytest.raises(gp.ConfigError, match=words):
        LocalObjectStore(**kw)
