"""DataLoader: every row once per epoch, rebatching, the plan, exact resume, ranks, bad units."""

import dataclasses
import glob
import os
import pickle
import re
import subprocess
import sys
import threading
import time

import numpy as np
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
import torch
from resume import check_resume, epoch_ids, interrupted

import gpupre as gp
from gpupre.storage.iostats import DelegatingHandler


@pytest.fixture(scope="module")
def ds(synth_dir):
    return gp.Dataset(synth_dir, passthrough="row_id")  # 600 rows in 12 units of 50


def _loader(ds, **kw):
    kw = {"batch_size": 64, "device": "cpu", "num_workers": 0, "read_batch_size": 20, **kw}
    return gp.DataLoader(ds, **kw)


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("shuffle", [False, True])
def test_every_row_once_per_epoch_in_batches_of_batch_size(ds, workers, shuffle):
    loader = _loader(ds, num_workers=workers, shuffle=shuffle)
    batches = list(loader)
    loader.close()
    assert [b.num_rows for b in batches] == [64] * 9 + [24] and len(loader) == 10
    ids = epoch_ids(batches)
    assert sorted(ids) == list(range(600))
    assert (ids == sorted(ids)) != shuffle  # shuffled means out of order


def test_drop_last_and_the_next_epoch_reshuffles(ds):
    loader = _loader(ds, shuffle=True, drop_last=True)
    first, second = epoch_ids(list(loader)), epoch_ids(list(loader))
    assert len(first) == len(second) == 576 and first != second
    assert loader.state_dict()["epoch"] == 2


def test_batches_are_torch_and_equal_the_plan_on_the_whole_data(ds):
    dense = [f.name for f in ds.schema.dense]
    sparse = [f.name for f in ds.schema.sparse if f.kind == "sparse"]
    scored = [f.name for f in ds.schema.sparse if f.kind == "scored"]
    pipe = gp.Pipeline([gp.FillMissing(dense, 0.0), gp.Log1p(dense), gp.Hash(sparse, 1000),
                        gp.Truncate(sparse[:3], 2), gp.SortByScore(scored, top_k=2)])  # fmt: skip
    pipe = pipe.fit(ds, progress=False)
    loader = _loader(ds, pipeline=pipe, num_workers=2)
    assert loader.plan.host is not None  # Truncate and SortByScore run in the workers
    batches = list(loader)
    loader.close()
    assert isinstance(batches[0].dense, torch.Tensor) and batches[0].dense.T.shape == (64, len(dense))
    got = gp.Batch.concat([b.map_arrays(lambda t: t.numpy()) for b in batches])
    whole = gp.Batch.concat([ds.read(u) for u in ds.units()])
    expected = pipe.compile(ds.schema, "reference").run(whole)
    np.testing.assert_allclose(got.dense, expected.dense, rtol=1e-6)
    for name in expected.sparse.keys:
        for part in (0, 1):
            np.testing.assert_array_equal(got.sparse.feature(name)[part], expected.sparse.feature(name)[part])
    np.testing.assert_array_equal(got.labels, whole.labels)


@pytest.mark.parametrize("workers,shuffle,midpoint", [(0, False, 3), (2, True, 4), (2, True, 1)])
def test_resume_delivers_every_row_once(ds, workers, shuffle, midpoint):
    check_resume(lambda: _loader(ds, num_workers=workers, shuffle=shuffle, seed=7), midpoint)


def test_a_state_from_another_loader_is_refused(ds):
    state = _loader(ds, seed=1, shuffle=True).state_dict()
    with pytest.raises(gp.ConfigError, match="seed=1 differs"):
        _loader(ds, seed=2, shuffle=True).load_state_dict(state)


def test_ranks_are_disjoint_and_take_the_same_number_of_steps(ds):
    ranks = np.arange(3)  # numpy integers, as from a launcher's array, are integers too
    loaders = [_loader(ds, rank=r, world_size=ranks.size, batch_size=32, shuffle=True) for r in ranks]
    epochs = [list(loader) for loader in loaders]
    assert len({len(e) for e in epochs}) == 1 == len({len(loader) for loader in loaders})
    ids = [set(epoch_ids(e)) for e in epochs]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    assert sum(map(len, ids)) + sum(loader.stats()["rows_left_for_balance"] for loader in loaders) == 600


@pytest.fixture
def ds_with_a_bad_unit(synth_dir, tmp_path):
    """The synthetic files plus one whose second row group's bytes are overwritten."""
    import glob
    import shutil

    for p in sorted(glob.glob(f"{synth_dir}/**/*.parquet", recursive=True)):
        shutil.copy(p, tmp_path / p.split("/")[-1])
    bad = sorted(tmp_path.glob("*.parquet"))[0]
    meta = pq.ParquetFile(bad).metadata.row_group(1).column(0)
    data = bytearray(bad.read_bytes())
    start = meta.data_page_offset
    data[start : start + 64] = b"\xff" * 64
    bad.write_bytes(bytes(data))
    return gp.Dataset(str(tmp_path), passthrough="row_id"), f"{bad} row group 1"


@pytest.mark.parametrize("workers", [0, 2])
def test_a_bad_unit_raises_naming_it_or_is_skipped_and_listed(ds_with_a_bad_unit, workers):
    ds, unit = ds_with_a_bad_unit
    with pytest.raises(gp.DataError, match=unit) as info:
        list(_loader(ds, num_workers=workers))
    message = str(info.value)  # one line, the unit named once; a worker's traceback is chained
    assert message.count(unit) == 1 and "Traceback" not in message and "cannot be read" in message
    if workers:
        assert "Traceback (most recent call last)" in str(info.value.__cause__)
    else:
        assert isinstance(info.value.__context__, gp.DataError)  # the reader's own, with its traceback
    loader = _loader(ds, num_workers=workers, on_bad_unit="skip")
    ids = epoch_ids(list(loader))
    loader.close()
    assert len(ids) == 550 and len(set(ids)) == 550
    (skipped,) = loader.stats()["skipped_units"]
    assert skipped.startswith(f"{unit}: ") and skipped.count(unit) == 1


def _ranks_with_a_bad_unit(ds, **kw):
    return [_loader(ds, rank=r, world_size=3, batch_size=32, on_bad_unit="skip", **kw) for r in range(3)]


@pytest.mark.parametrize("workers", [0, 2])
def test_a_rank_that_skips_a_unit_repeats_rows_to_take_as_many_steps_as_the_others(ds_with_a_bad_unit, workers):
    ds, unit = ds_with_a_bad_unit  # 12 units of 50 rows, 4 per rank; one rank has 150 readable rows
    loaders = _ranks_with_a_bad_unit(ds, num_workers=workers)
    epochs = [list(loader) for loader in loaders]
    for loader in loaders:
        loader.close()
    assert [len(e) for e in epochs] == [len(loaders[0])] * 3 == [7] * 3
    (bad,) = [r for r, loader in enumerate(loaders) if loader.stats()["skipped_units"]]
    ids = epoch_ids(epochs[bad])
    assert len(ids) == 200 and len(set(ids)) == 150
    assert loaders[bad].stats()["rows_repeated"] == 50 and ids[150:] == ids[:50]  # from the start of its share
    assert all(loaders[r].stats()["rows_repeated"] == 0 for r in range(3) if r != bad)


@pytest.mark.parametrize(("workers", "midpoint"), [(0, 2), (2, 5), (0, 6)])
def test_resume_of_a_padded_rank_delivers_the_same_rows(ds_with_a_bad_unit, workers, midpoint):
    ds, _ = ds_with_a_bad_unit
    bad = next(r for r, loader in enumerate(_ranks_with_a_bad_unit(ds)) if list(loader) and loader.stats()["skipped_units"])

    def make():
        return _ranks_with_a_bad_unit(ds, num_workers=workers, shuffle=True, seed=3)[bad]

    whole, head, rest, steps_after = interrupted(make, midpoint)
    assert midpoint + steps_after == 7
    assert sorted(head + rest) == sorted(whole)  # with the same rows repeated


def test_a_worker_that_dies_outside_a_unit_is_an_error_not_a_hang(ds):
    loader = _loader(ds, num_workers=2, read_batch_size=10, batch_size=16, prefetch=1)
    it = iter(loader)
    next(it)
    deadline = time.monotonic() + 60  # the two units dispatched are read; then the workers wait
    while any(loader._current[2 * i + 1] >= 0 for i in range(2)) and time.monotonic() < deadline:
        time.sleep(0.05)
    for process in loader._workers:
        process.kill()
    with pytest.raises(gp.DataError, match="died .*(between units|before reading anything)"):
        list(it)


UNGUARDED_SCRIPT = """
import sys
import gpupre as gp
loader = gp.DataLoader(gp.Dataset(sys.argv[1]), batch_size=64, num_workers=2, device="cpu")
print(next(iter(loader)).num_rows)
"""


def test_a_script_without_its_main_guard_is_an_error_naming_it_not_a_hang(tmp_path):
    """A spawned worker runs the script first, which fails in it; with the dataset (here more than a
    pipe's 64 KB pickled) in the process arguments, the worker's start waited for ever on it."""
    path = str(tmp_path / "wide.parquet")
    spec = gp.storage.SynthSpec(rows=200, num_dense=1_000, num_sparse=10, num_scored=0, row_group_rows=100)
    gp.storage.synthesize(path, spec, progress=False)
    assert len(pickle.dumps(gp.Dataset(path))) > 2**16
    (tmp_path / "train.py").write_text(UNGUARDED_SCRIPT)
    root = os.path.dirname(os.path.dirname(gp.__file__))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, str(tmp_path / "train.py"), path], capture_output=True, text=True,
                          timeout=180, env=env, cwd=tmp_path)  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    assert "gpupre.errors.DataError: loader worker" in done.stderr and "if __name__ == '__main__':" in done.stderr


class _CrashingDataset(gp.Dataset):
    """Its reading process exits in one unit (the first file's row group 1) after `after` slabs,
    as a crash in a decoder would: no Python error, and the messages it queued last may be lost.
    With `once` (a path), it crashes only the first time and leaves that file as the mark."""

    def __init__(self, path, after=0, once=None, pause=0.5):
        super().__init__(path, passthrough="row_id")
        self.bad, self.after, self.once, self.pause = self.units()[1], after, once, pause

    def read_slabs(self, unit, read_batch_size):
        slabs = super().read_slabs(unit, read_batch_size)
        if unit != self.bad or (self.once and os.path.exists(self.once)):
            return slabs
        return self._crash(slabs)

    def _crash(self, slabs):
        slabs = iter(slabs)
        for _ in range(self.after):
            yield next(slabs)
        if self.once:
            open(self.once, "w").close()
        if self.after:
            time.sleep(self.pause)  # the slabs sent reach the loader
        os._exit(3)


def test_a_unit_that_kills_its_worker_every_time_raises_naming_it(synth_dir):
    ds = _CrashingDataset(synth_dir)
    assert ds.bad.row_group == 1
    named = rf"^{re.escape(str(ds.bad))}: its worker died 3 times .*exit code 3"
    with pytest.raises(gp.DataError, match=named):
        list(_loader(ds, num_workers=1))


# with one worker, the units before it are done when it crashes: its first slab goes out at once
@pytest.mark.parametrize("after,workers", [(0, 2), (1, 1)])
def test_a_unit_that_kills_its_worker_every_time_is_skipped_and_the_others_delivered_once(ds, synth_dir, after,
                                                                                           workers):  # fmt: skip
    crashing = _CrashingDataset(synth_dir, after=after)
    loader = _loader(crashing, num_workers=workers, on_bad_unit="skip", shuffle=True)
    ids = epoch_ids(list(loader))
    loader.close()
    bad = set(epoch_ids([ds.read(crashing.bad)]))
    assert len(ids) == len(set(ids)) and set(ids) - bad == set(range(600)) - bad
    assert len(set(ids) & bad) == 20 * after  # rows delivered before the first crash, not again
    (skipped,) = loader.stats()["skipped_units"]
    assert skipped.startswith(f"{crashing.bad}: its worker died 3 times") and "exit code 3" in skipped


def test_a_worker_that_dies_in_a_unit_an_earlier_loop_read_ahead_is_replaced(synth_dir, tmp_path):
    crashing = _CrashingDataset(synth_dir, after=1, once=str(tmp_path / "crashed"), pause=3.0)
    loader = _loader(crashing, num_workers=1, batch_size=16)
    it = iter(loader)
    head = [next(it)]  # unit 0's rows; unit 1 is read ahead and its worker exits 3 s after a slab
    time.sleep(1.0)  # the worker is in unit 1, past its first slab
    del it  # the loop is left while the worker is still alive, so the next one keeps it
    ids = epoch_ids(head + list(loader))
    loader.close()
    assert sorted(ids) == list(range(600))


def test_resume_in_a_unit_that_kills_its_worker_neither_repeats_nor_loses_rows(synth_dir):
    crashing = _CrashingDataset(synth_dir, after=1)
    # the state is taken in the crashing unit's first slab (rows 50-69), the only slab of it delivered
    a, b = check_resume(lambda: _loader(crashing, num_workers=2, on_bad_unit="skip", batch_size=16), 4)
    assert len(a) + len(b) == 570


def test_a_unit_that_kills_its_worker_once_is_read_again_and_every_row_delivered_once(ds, synth_dir,
                                                                                       tmp_path):  # fmt: skip
    crashing = _CrashingDataset(synth_dir, after=1, once=str(tmp_path / "crashed"))
    loader = _loader(crashing, num_workers=2, shuffle=True)
    ids = epoch_ids(list(loader))
    loader.close()
    assert os.path.exists(tmp_path / "crashed") and not loader.stats()["skipped_units"]
    assert ids == epoch_ids(list(_loader(ds, shuffle=True)))  # every row once, in the same order


def _segments(loader) -> list:
    """The shared-memory segments of the loader's slabs that are still named."""
    return glob.glob(f"/dev/shm/{loader._shm_prefix}*")


class _ExitWhenSent:
    """A column that ends its process when its message is pickled (in the queue's sending thread)."""

    def __reduce__(self):
        os._exit(3)


class _DyingWithASlabInTransit(_CrashingDataset):
    """Its worker dies sending the crashing unit's second slab, once: the segment was made, and its
    message never goes out."""

    def _crash(self, slabs):
        slabs = iter(slabs)
        yield next(slabs)
        open(self.once, "w").close()
        batch = next(slabs)
        yield dataclasses.replace(batch, extras={**batch.extras, "exit": _ExitWhenSent()})


@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="lists the shared-memory segments in /dev/shm")
def test_a_worker_that_dies_with_a_slab_in_transit_leaves_no_shared_memory(ds, synth_dir, tmp_path):
    crashing = _DyingWithASlabInTransit(synth_dir, once=str(tmp_path / "crashed"))
    loader = _loader(crashing, num_workers=1)
    ids = epoch_ids(list(loader))
    assert os.path.exists(tmp_path / "crashed") and ids == epoch_ids(list(_loader(ds)))
    assert _segments(loader) == []  # unlinked when the workers were replaced, not only at close
    loader.close()
    assert _segments(loader) == []


class _SlowFirstUnit(_CrashingDataset):
    """Its first unit takes `slow` seconds, so that its other workers read ahead meanwhile."""

    def __init__(self, path, slow, **kw):
        super().__init__(path, **kw)
        self.slow = slow

    def read_slabs(self, unit, read_batch_size):
        if unit == self.units()[0]:
            time.sleep(self.slow)
        return super().read_slabs(unit, read_batch_size)


# slabs of 20 rows: the crashing unit's 50 rows are 3 slabs, then its worker exits
@pytest.mark.parametrize("workers,slow", [(1, 0.0), (2, 2.0)])  # the unit being delivered, or one read ahead
def test_a_worker_that_dies_after_its_units_last_slab_leaves_the_unit_whole(ds, synth_dir, workers, slow):
    crashing = _SlowFirstUnit(synth_dir, slow, after=3, pause=0.5)
    loader = _loader(crashing, num_workers=workers)
    ids = epoch_ids(list(loader))  # it would die again each time, and raise after the third
    loader.close()
    assert ids == epoch_ids(list(_loader(ds))) and not loader.stats()["skipped_units"]


class _StuckFirstUnit(gp.Dataset):
    """Reading its first unit hangs, as a read from a stalled store would."""

    def read_slabs(self, unit, read_batch_size):
        if unit == self.units()[0]:
            time.sleep(600)
        return super().read_slabs(unit, read_batch_size)


def test_a_worker_stuck_in_a_unit_past_the_timeout_stops_the_epoch_naming_it(synth_dir):
    stuck = _StuckFirstUnit(synth_dir)
    loader = _loader(stuck, num_workers=2, timeout=1.5)
    start = time.monotonic()
    named = rf"^no data came .* in 1\.5 s .*worker \d was reading {re.escape(str(stuck.units()[0]))}\b"
    with pytest.raises(gp.DataError, match=named):
        next(iter(loader))
    assert time.monotonic() - start < 60 and loader._workers == []  # the workers were stopped, not waited for


class _SlowSlabs(gp.Dataset):
    """Every slab takes 30 ms to read."""

    def read_slabs(self, unit, read_batch_size):
        for slab in super().read_slabs(unit, read_batch_size):
            time.sleep(0.03)
            yield slab


def test_the_timeout_does_not_count_the_slabs_a_resumed_unit_reads_to_skip(tmp_path):
    import pyarrow as pa

    table = pa.table({"x": pa.array(np.arange(2000), pa.float32()), "label": np.zeros(2000)})
    gp.storage.write_table(table, tmp_path / "one.parquet", row_group_rows=2000)
    ds = _SlowSlabs(tmp_path / "one.parquet")
    first = _loader(ds, batch_size=1900, num_workers=1)
    head = next(iter(first))
    state = first.state_dict()
    first.close()
    # the resumed worker reads 95 slabs (2.9 s) before it sends one: reading, not stuck
    resumed = _loader(ds, batch_size=1900, num_workers=1, timeout=1.5)
    resumed.load_state_dict(state)
    rest = list(resumed)
    resumed.close()
    assert sorted(np.concatenate([head.dense[0], *(b.dense[0] for b in rest)]).tolist()) == list(range(2000))


def test_stats_report_rows_bytes_and_stage_times(ds):
    loader = _loader(ds, num_workers=2)
    list(loader)
    stats = loader.stats()
    loader.close()
    assert stats["rows"] == 600 and stats["batches"] == 10 and stats["rows_per_s"] > 0
    assert stats["bytes_read"] > 0 and stats["read_s"] > 0 and stats["wait_s"] >= 0


@pytest.mark.parametrize(
    "kw,words",
    [({"batch_size": 0}, "batch_size=0"), ({"num_workers": -1}, "num_workers=-1"), ({"rank": 2, "world_size": 2}, "rank=2"),
     ({"on_bad_unit": "ignore"}, "on_bad_unit='ignore'"), ({"read_batch_size": 1.5}, "read_batch_size=1.5"),
     ({"read_batch_size": 0}, "read_batch_size=0"), ({"seed": "a"}, "seed='a'"), ({"device": "gpu"}, "device='gpu'"),
     ({"pipeline": [gp.Hash("x", 10)]}, "wrap the ops: gp.Pipeline"), ({"timeout": -1}, "timeout=-1"),
     ({"timeout": 5}, "timeout needs worker processes"), ({"shuffle": "false"}, "shuffle='false' must be True or False"),
     ({"drop_last": None}, "drop_last=None must be True or False")],
)  # fmt: skip
def test_bad_arguments_are_config_errors(ds, kw, words):
    with pytest.raises(gp.ConfigError, match=words.replace("[", r"\[")):
        _loader(ds, **kw)
    with pytest.raises(gp.ConfigError, match="takes the dict that state_dict"):
        _loader(ds).load_state_dict(None)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the error of a machine without a GPU")
def test_a_gpu_device_without_a_gpu_says_so_with_or_without_a_pipeline(ds):
    for pipeline in (None, gp.Pipeline([gp.Hash(ds.schema.sparse[0].name, 10)])):
        with pytest.raises(gp.BackendUnavailable, match="no CUDA GPU is visible.*device='cpu'"):
            _loader(ds, device="cuda", pipeline=pipeline)


def test_more_workers_than_units_in_the_share_is_warned(ds, caplog):
    _loader(ds, num_workers=2, rank=1, world_size=4)  # 3 units each: every worker has one
    assert "stay idle" not in caplog.text
    _loader(ds, num_workers=4, rank=1, world_size=6)  # 2 units for 4 workers
    assert "has 2 work units (row groups) for num_workers=4" in caplog.text and "row_group_rows" in caplog.text


def test_the_kernels_are_readied_before_the_workers_start(ds, monkeypatch):
    """On a machine's first run each worker would compile the numba kernels at once (91 s for 4
    workers on 2 cores); the client compiles them first and the workers load them."""
    from gpupre.transforms import cpu

    calls = []
    monkeypatch.setattr(cpu, "warm_up", lambda: calls.append(len(loader._workers)))
    loader = _loader(ds, num_workers=2, pipeline=gp.Pipeline([gp.Hash(ds.schema.sparse[0].name, 10)]))
    next(iter(loader))
    loader.close()
    assert calls == [0]
    list(_loader(ds, num_workers=0))  # no pipeline: no kernels to ready
    assert calls == [0]


def test_loaders_with_workers_are_closed_at_exit(ds):
    """Else multiprocessing's exit handler kills the workers with slabs unread, left in /dev/shm."""
    from gpupre.loader import dataloader

    loader = _loader(ds, num_workers=2)
    next(iter(loader))
    workers = list(loader._workers)
    dataloader._close_at_exit()  # what atexit runs
    assert workers and loader._workers == [] and not any(p.is_alive() for p in workers)


class _SessionHandler(DelegatingHandler):
    def __init__(self, base):
        super().__init__(base)
        self.session = threading.Lock()  # a store's client session, say: it does not pickle


def test_a_dataset_that_cannot_be_pickled_for_the_workers_is_a_config_error_not_a_hang(tmp_path):
    ds = gp.Dataset(_plain_file(tmp_path), filesystem=pafs.PyFileSystem(_SessionHandler(pafs.LocalFileSystem())))
    assert sum(b.num_rows for b in _loader(ds)) == 300  # read in this process, nothing is pickled
    loader = _loader(ds, num_workers=1)
    with pytest.raises(gp.ConfigError, match=r"cannot be \(TypeError: cannot pickle '_thread.lock'.*num_workers=0"):
        next(iter(loader))
    assert loader._workers == []


def test_a_dataset_is_required():
    with pytest.raises(gp.ConfigError, match="gp.Dataset"):
        gp.DataLoader("data.parquet", 10)


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_with_a_skipped_unit_neither_repeats_nor_loses_rows(ds_with_a_bad_unit, workers):
    ds, _ = ds_with_a_bad_unit
    a, b = check_resume(lambda: _loader(ds, num_workers=workers, on_bad_unit="skip", batch_size=16), 5)
    assert len(a) + len(b) == 550


def test_a_state_with_another_read_batch_size_is_refused(ds):
    state = _loader(ds, read_batch_size=20).state_dict()
    with pytest.raises(gp.ConfigError, match="read_batch_size=20 differs"):
        _loader(ds, read_batch_size=30).load_state_dict(state)


@pytest.mark.parametrize("kw", [{"batch_size": 16}, {"drop_last": True}, {"on_bad_unit": "skip"}])
def test_a_state_from_a_loader_that_batches_otherwise_is_refused(ds, kw):
    loader = _loader(ds)
    it = iter(loader)
    next(it)
    (key, value), state = next(iter(kw.items())), loader.state_dict()
    with pytest.raises(gp.ConfigError, match=f"{key}={state[key]!r} differs from this loader's {value!r}"):
        _loader(ds, **kw).load_state_dict(state)


def test_closing_during_an_iteration_ends_it_with_an_error_not_a_hang(ds):
    loader = _loader(ds, num_workers=2)
    it = iter(loader)
    delivered = next(it).num_rows
    loader.close()
    with pytest.raises(gp.ConfigError, match="closed during an iteration"):
        for batch in it:  # a slab already received may still make a batch before the error
            delivered += batch.num_rows
    assert len(epoch_ids(list(loader))) == 600 - delivered  # a new iteration goes on from the state


def test_more_ranks_than_units_is_a_config_error_not_empty_epochs(ds):
    loader = _loader(ds, rank=0, world_size=16)  # 12 units of 50 rows
    with pytest.raises(gp.ConfigError, match="4 of world_size=16 ranks get no rows"):
        list(loader)


def test_drop_last_with_a_rank_short_of_one_batch_is_a_config_error_not_empty_epochs(ds):
    loader = _loader(ds, rank=0, world_size=5, batch_size=120, drop_last=True)  # shares of 100 or 150 rows
    with pytest.raises(gp.ConfigError, match="3 of world_size=5 ranks get fewer than batch_size=120 rows of epoch 0"):
        list(loader)
    loader = _loader(ds, batch_size=10_000, drop_last=True)  # one rank, every row short of one batch
    with pytest.raises(gp.ConfigError, match="1 of world_size=1 ranks get fewer than batch_size=10000 rows"):
        list(loader)


@pytest.mark.parametrize("workers", [0, 2])
def test_drop_last_with_a_skipped_unit_delivers_only_whole_batches(ds_with_a_bad_unit, workers):
    ds, _ = ds_with_a_bad_unit
    loader = _loader(ds, num_workers=workers, on_bad_unit="skip", drop_last=True)
    sizes = [b.num_rows for b in loader]
    loader.close()
    assert sizes == [64] * 8  # 550 readable rows


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("read_batch_size", [20, 50])  # 50: the first's next batch is in a slab it holds
def test_a_second_iteration_stops_the_first(ds, workers, read_batch_size):
    loader = _loader(ds, num_workers=workers, read_batch_size=read_batch_size, batch_size=16)
    first = iter(loader)
    ids = epoch_ids([next(first)])
    second = iter(loader)
    ids += epoch_ids([next(second)])
    with pytest.raises(gp.ConfigError, match="a newer iteration"):
        for batch in first:
            ids += epoch_ids([batch])
    ids += epoch_ids(list(second))
    loader.close()
    assert sorted(ids) == list(range(600))  # nothing twice, nothing left out


@pytest.mark.parametrize("workers", [0, 2])
def test_load_state_dict_stops_a_loop_begun_before_it(ds, workers):
    loader = _loader(ds, num_workers=workers, batch_size=16, read_batch_size=50)
    start = loader.state_dict()
    loop = iter(loader)
    next(loop)
    loader.load_state_dict(start)
    with pytest.raises(gp.ConfigError, match="load_state_dict moved its cursor"):
        next(loop)
    assert sorted(epoch_ids(list(loader))) == list(range(600))
    loader.close()


def test_load_state_dict_of_the_cursor_where_the_loader_stands_leaves_its_loop_going(ds):
    loader = _loader(ds, batch_size=16)
    loop = iter(loader)
    ids = epoch_ids([next(loop)])
    loader.load_state_dict(loader.state_dict())  # a checkpoint's round trip, say
    ids += epoch_ids(list(loop))
    assert sorted(ids) == list(range(600))


def test_a_loop_left_at_its_last_batch_does_not_end_the_epoch_of_a_newer_one(ds):
    loader = _loader(ds)
    old = iter(loader)
    for _ in range(len(loader)):
        next(old)  # the epoch's last batch: the next loop starts epoch 1
    new = iter(loader)
    next(new)
    with pytest.raises(gp.ConfigError, match="a newer iteration"):
        next(old)
    assert loader.state_dict()["epoch"] == 1 and loader.state_dict()["steps"] == 1


def test_stopping_early_and_closing_leaves_no_shared_memory(ds):
    loader = _loader(ds, num_workers=2, read_batch_size=5, batch_size=8)
    for i, _ in enumerate(loader):
        if i == 3:
            break
    loader.close()
    assert _segments(loader) == []


def test_label_and_passthrough_arguments_choose_the_columns(synth_dir):
    plain = gp.Dataset(synth_dir, features=["dense_000"])
    loader = _loader(plain, label=(), passthrough=("row_id", "request_id"))
    batches = list(loader)
    assert all(b.labels is None for b in batches)
    assert sorted(epoch_ids(batches)) == list(range(600))
    assert set(batches[0].extras) == {"row_id", "request_id"}
    kept = list(_loader(gp.Dataset(synth_dir, features=["dense_000"], passthrough="row_id")))
    assert kept[0].labels is not None and set(kept[0].extras) == {"row_id"}  # None keeps the dataset's
    with pytest.raises(gp.SchemaError, match="no_such_column"):
        _loader(plain, passthrough="no_such_column")


def _memory_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads memory from /proc")
def test_memory_does_not_grow_with_the_dataset(tmp_path):
    """Resident memory at the end of the first epoch and of the fourth, with the same workers (idle
    then): the same, within a margin far below the ~80 MB that an epoch's rows take in memory, which
    memory kept per row would add three times. (The first epoch grows with one-off costs: the
    allocators' pools, code compiled on first use; a worker's peak varies by up to about 30 MB
    between epochs on a loaded machine.)"""
    spec = gp.storage.SynthSpec(rows=60_000, num_dense=20, num_sparse=20, num_scored=0, mean_list_length=20,
                                row_group_rows=1_000, num_planted=2)  # fmt: skip
    gp.storage.synthesize(str(tmp_path / "long.parquet"), spec, progress=False)
    ds = gp.Dataset(str(tmp_path / "long.parquet"))
    in_memory = sum(b.dense.nbytes + b.sparse.values.nbytes + b.sparse.lengths.nbytes for b in map(ds.read, ds.units()[:6]))
    assert in_memory * 10 > 60 * 2**20  # the whole epoch would be noticed
    loader = _loader(ds, batch_size=2_048, read_batch_size=512, num_workers=2)
    marks = []
    for _ in range(4):
        for step, batch in enumerate(loader):
            if step == len(loader) - 1:  # every unit read: the workers wait for the next epoch
                workers = {p.pid: _memory_kib(p.pid, "VmRSS") for p in loader._workers}
                marks.append((_memory_kib(os.getpid(), "VmRSS"), workers))
    loader.close()
    (client_a, workers_a), *_, (client_b, workers_b) = marks
    assert workers_a.keys() == workers_b.keys()  # the same processes
    assert client_b - client_a < 50 * 1024, f"client grew by {(client_b - client_a) // 1024} MB"
    assert max(workers_b[p] - workers_a[p] for p in workers_a) < 50 * 1024, f"workers {workers_a} -> {workers_b} KiB"


def test_a_loader_that_fails_validation_leaves_its_readers_to_the_corrected_call(ds):
    pytest.importorskip("ray", reason="the Ray tier needs the ray extra")
    readers = gp.distributed.RayReaders(ds, num_readers=1)  # starts no Ray cluster
    with pytest.raises(gp.ConfigError, match="batch_size=0") as failed:  # its traceback keeps the failed loader
        gp.DataLoader(readers, batch_size=0, device="cpu")
    loader = gp.DataLoader(readers, batch_size=64, device="cpu")
    assert readers.owner is loader and failed.value


def _plain_file(tmp_path, rows=300, row_group_size=100):
    """A plain Parquet file (no gpupre schema): every column but the label is inferred a feature."""
    import pyarrow as pa

    rng = np.random.default_rng(0)
    table = pa.table({
        "x": rng.normal(size=rows).astype(np.float32),
        "ids": pa.array([[i, i + 1] for i in range(rows)], pa.list_(pa.int64())),
        "row_id": np.arange(rows),
        "click": rng.integers(0, 2, rows).astype(np.float32),
    })  # fmt: skip
    path = str(tmp_path / "plain.parquet")
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


def test_label_and_passthrough_move_columns_out_of_an_inferred_projection(tmp_path):
    ds = gp.Dataset(_plain_file(tmp_path))
    assert "row_id" in ds.schema.names and "click" in ds.schema.names  # inferred as features
    loader = _loader(ds, label="click", passthrough="row_id")
    batches = list(loader)
    assert sorted(epoch_ids(batches)) == list(range(300))
    assert loader.dataset.schema.labels == ("click",) and set(loader.dataset.schema.names) == {"x", "ids"}


def test_a_label_that_is_not_a_number_is_refused_when_the_dataset_opens(tmp_path):
    with pytest.raises(gp.SchemaError, match="label 'ids' must be a number column"):
        gp.Dataset(_plain_file(tmp_path), features=["x"], label="ids")


def test_an_epoch_whose_last_batch_went_out_is_over_though_its_iterator_was_not_exhausted(ds):
    loader = _loader(ds)
    steps = len(loader)
    first = [b.num_rows for _, b in zip(range(steps), loader)]  # zip stops before the generator's end
    state = loader.state_dict()
    second = [b.num_rows for _, b in zip(range(steps), loader)]
    assert first == second and sum(first) == 600 and loader.state_dict()["epoch"] == 1
    resumed = _loader(ds)
    resumed.load_state_dict(state)
    assert sum(b.num_rows for b in resumed) == 600 and resumed.state_dict()["epoch"] == 2


@pytest.mark.parametrize("change, words", [
    ({"delivered": None}, "delivered=None"), ({"steps": -1}, "steps=-1"), ({"epoch": 1.5}, "epoch=1.5"),
    ({"steps": 11}, "more than epoch 0's 10 steps"), ({"delivered": 10**9}, "more than epoch 0's 600 rows"),
])  # fmt: skip
def test_a_state_with_a_bad_cursor_is_refused(ds, change, words):
    loader = _loader(ds)
    with pytest.raises(gp.ConfigError, match=words):
        loader.load_state_dict({**loader.state_dict(), **change})


def test_shuffled_unit_orders_differ_between_seeds_and_epochs(ds):
    orders = {(seed, epoch): _loader(ds, shuffle=True, seed=seed)._units(epoch, 0) for seed in (0, 1) for epoch in (0, 1)}
    assert orders[0, 1] != orders[1, 0] and orders[0, 0] != orders[0, 1]


@pytest.mark.parametrize("workers", [0, 2])
def test_a_file_changed_after_the_dataset_opened_is_an_error_not_other_rows(tmp_path, workers):
    path = _plain_file(tmp_path)
    loader = _loader(gp.Dataset(path, passthrough="row_id"), num_workers=workers)
    _plain_file(tmp_path, rows=500)  # rewritten in place: 5 row groups now
    with pytest.raises(gp.DataError, match="had 3 row groups of 300 rows when the Dataset was opened, and has 5 of 500"):
        list(loader)
    loader.close()


@pytest.mark.parametrize("workers", [0, 1])
def test_a_file_replaced_between_epochs_is_an_error_not_another_columns_values(tmp_path, workers):
    """Same row groups and byte layout, columns swapped: the footer a worker cached in epoch 0
    would read x from where y is now."""
    import pyarrow as pa

    path = str(tmp_path / "a.parquet")
    x, y = np.arange(100, dtype=np.float32), np.arange(100, dtype=np.float32) + 1000
    plain = {"row_group_size": 50, "write_statistics": False, "use_dictionary": False, "compression": "none"}
    pq.write_table(pa.table({"x": x, "y": y}), path, **plain)
    loader = _loader(gp.Dataset(path, features=["x"], label=()), batch_size=50, num_workers=workers)
    assert np.concatenate([b.dense[0].numpy() for b in loader]).tolist() == x.tolist()
    pq.write_table(pa.table({"y": y, "x": x + 5000}), path, **plain)
    os.utime(path, ns=(0, os.stat(path).st_mtime_ns + 1))  # a later time, where the clock is coarse
    with pytest.raises(gp.DataError, match="when this process first read it, and is .* now; it was changed"):
        list(loader)
    loader.close()
