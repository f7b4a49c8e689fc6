"""Slabs and the staging buffer: every array of a batch gathered into one buffer, rows intact."""

import glob
import os
import pickle
import secrets

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gpupre as gp
from gpupre.loader._slabs import Slab, stage, to_shared, unlink_all

F = gp.Feature


def batch(rows: int, seed: int, arrow_extra: bool = False) -> gp.Batch:
    """rows rows of 2 dense, 2 sparse and 1 scored feature, 2 labels, a numeric and a string extra."""
    rng = np.random.default_rng(seed)
    lists = lambda: [rng.integers(-(2**62), 2**62, rng.integers(0, 4)).tolist() for _ in range(rows)]  # noqa: E731
    scored = lists()
    rid = pa.array(rng.integers(0, 1000, rows)) if not arrow_extra else pa.array([None] * rows, pa.int64())
    table = pa.table({
        "d0": pa.array(rng.normal(size=rows), pa.float32()), "d1": pa.array(rng.normal(size=rows), pa.float32()),
        "a": pa.array(lists(), pa.list_(pa.int64())), "b": pa.array(lists(), pa.list_(pa.int64())),
        "s": pa.array(scored, pa.list_(pa.int64())),
        "s.score": pa.array([rng.random(len(r)).tolist() for r in scored], pa.list_(pa.float32())),
        "y0": pa.array(rng.random(rows), pa.float32()), "y1": pa.array(rng.random(rows), pa.float32()),
        "rid": rid, "name": pa.array([f"r{i}" for i in range(rows)], pa.string()),
    })  # fmt: skip
    schema = gp.Schema((F("d0", "dense"), F("a", "sparse"), F("d1", "dense"), F("b", "sparse"), F("s", "scored")),
                       labels=("y0", "y1"), extras=("rid", "name"))  # fmt: skip
    return gp.Batch.from_arrow(table, schema)


def expected(parts, pieces) -> gp.Batch:
    return gp.Batch.concat([b.rows(start, stop) for b, (_, start, stop) in zip(parts, pieces)])


def assert_equal_batches(got: gp.Batch, want: gp.Batch) -> None:
    got = got.map_arrays(lambda t: t.numpy() if isinstance(t, torch.Tensor) else t)
    assert got.num_rows == want.num_rows and got.dense_keys == want.dense_keys and got.sparse.keys == want.sparse.keys
    for a, b in [(got.dense, want.dense), (got.sparse.lengths, want.sparse.lengths), (got.sparse.values, want.sparse.values),
                 (got.sparse.weights, want.sparse.weights), (got.labels, want.labels)]:  # fmt: skip
        assert (a is None) == (b is None)
        if a is not None:
            np.testing.assert_array_equal(a, b)
            assert a.dtype == b.dtype
    for name, column in want.extras.items():
        other = got.extras[name]
        assert (other.to_pylist() if isinstance(other, pa.Array) else list(other)) == (
            column.to_pylist() if isinstance(column, pa.Array) else list(column))


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, 7), st.integers(0, 7), st.integers(0, 7)), min_size=1, max_size=4))
def test_staged_rows_equal_the_concatenated_rows(spec):
    parts = [batch(rows, seed) for seed, (rows, _, _) in enumerate(spec)]
    pieces = [(b, min(x, y, b.num_rows), min(max(x, y), b.num_rows)) for b, (_, x, y) in zip(parts, spec)]
    staged = stage(pieces, parts[0].schema)
    assert_equal_batches(staged.batch(), expected(parts, pieces))


def test_one_buffer_holds_every_array_of_the_batch():
    parts = [batch(5, 0), batch(6, 1)]
    staged = stage([(parts[0], 1, 5), (parts[1], 0, 6)], parts[0].schema)
    b = staged.batch()
    lo, hi = staged.buffer.data_ptr(), staged.buffer.data_ptr() + staged.buffer.numel()
    arrays = [b.dense, b.sparse.lengths, b.sparse.values, b.sparse.weights, b.labels, b.extras["rid"]]
    assert all(isinstance(t, torch.Tensor) and lo <= t.data_ptr() < hi for t in arrays)
    assert b.dense.T.shape == (10, 2) and b.labels.shape == (2, 10)


def test_slabs_in_shared_memory_stage_like_host_batches():
    parts = [batch(9, 3), batch(4, 4)]
    slabs = [Slab(to_shared(b), b.schema) for b in parts]
    try:
        pieces = [(slabs[0], 2, 9), (slabs[1], 0, 3)]
        assert_equal_batches(stage(pieces, parts[0].schema).batch(), expected(parts, pieces))
    finally:
        for s in slabs:
            s.release()


@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="lists the shared-memory segments in /dev/shm")
def test_a_slab_is_unnamed_once_mapped_and_the_names_left_with_a_prefix_are_unlinked():
    """A name is a slab in transit: mapped, it goes (its rows stay); unmapped, unlink_all removes it."""
    prefix = f"gpupre_test_{secrets.token_hex(4)}_"  # not left by an earlier run
    parts = [batch(5, 0), batch(4, 1)]
    descriptions = [to_shared(b, f"{prefix}{i}") for i, b in enumerate(parts)]
    slab = Slab(descriptions[0], parts[0].schema)
    try:
        assert sorted(glob.glob(f"/dev/shm/{prefix}*")) == [f"/dev/shm/{prefix}1"]
        assert_equal_batches(slab.batch, parts[0])
    finally:
        slab.release()
    unlink_all(prefix)
    assert glob.glob(f"/dev/shm/{prefix}*") == []


def test_a_numeric_extra_with_nulls_in_one_slab_stays_arrow():
    parts = [batch(3, 0), batch(3, 1, arrow_extra=True)]
    pieces = [(parts[0], 0, 3), (parts[1], 0, 3)]
    got = stage(pieces, parts[0].schema).batch()
    assert isinstance(got.extras["rid"], pa.Array) and got.extras["rid"].null_count == 3
    assert got.extras["rid"].to_pylist()[:3] == parts[0].extras["rid"].tolist()


def test_images_and_row_keys_travel_through_shared_memory_and_staging():
    """Encoded images stay host Arrow bytes (not in the transfer buffer); pixels and keys join it."""
    rng = np.random.default_rng(5)
    parts = []
    for rows in (6, 5):
        b = batch(rows, rows)
        encoded = pa.array([rng.bytes(int(n)) for n in rng.integers(1, 50, rows)], pa.binary())
        pixels = rng.integers(0, 256, (rows, 3, 2, 3), dtype=np.uint8)
        b.images = {"raw": encoded.slice(0), "pixels": pixels}
        b.row_keys = rng.integers(-(2**63), 2**63 - 1, rows, dtype=np.int64)
        parts.append(b)
    slabs = [Slab(to_shared(b), b.schema) for b in parts]
    try:
        pieces = [(slabs[0], 1, 6), (slabs[1], 0, 4)]
        staged = stage(pieces, parts[0].schema)
        got, want = staged.batch(), expected(parts, pieces)
        assert got.images["raw"].to_pylist() == want.images["raw"].to_pylist()
        np.testing.assert_array_equal(got.images["pixels"].numpy(), want.images["pixels"])
        np.testing.assert_array_equal(got.row_keys.numpy(), want.row_keys)
        lo, hi = staged.buffer.data_ptr(), staged.buffer.data_ptr() + staged.buffer.numel()
        assert all(lo <= t.data_ptr() < hi for t in (got.images["pixels"], got.row_keys))
    finally:
        for slab in slabs:
            slab.release()


class _FailingDataset(gp.Dataset):
    """Its second unit fails with a long message, as an error naming many columns would."""

    def read_slabs(self, unit, rows):
        if unit.row_group == 1:
            raise ValueError("é" * 5_000)
        yield from super().read_slabs(unit, rows)


def test_every_worker_message_fits_in_one_atomic_pipe_write(tmp_path):
    """A worker killed while writing a message longer than PIPE_BUF leaves half of it in the pipe,
    and the client's next read waits for the rest for ever: a wide schema's keys, string extras
    and long errors travel in the segment (or clipped), and the slabs still hold every row."""
    import select
    import types
    from multiprocessing.reduction import ForkingPickler
    from queue import Queue

    import numba

    from gpupre.loader._worker import NOT_STARTED
    from gpupre.loader._worker import main as worker_main

    rows = 600
    columns = {f"a_rather_long_feature_name_{i:03d}": pa.array(np.arange(rows) + i, pa.int64()) for i in range(300)}
    columns["request"] = pa.array([f"request-{i:010d}" for i in range(rows)])
    pq.write_table(pa.table(columns), tmp_path / "wide.parquet", row_group_size=rows // 2)
    ds = _FailingDataset(tmp_path / "wide.parquet", passthrough="request")
    setup, tasks, results = Queue(), Queue(), Queue()
    setup.put(pickle.dumps((ds, None)))  # as the loader sends it: pickled once for every worker
    for index, unit in enumerate(ds.units()):
        tasks.put(((0, index), unit, 0, None, (0, 0)))
    tasks.put(None)
    prefix = f"gpupre_test_{secrets.token_hex(4)}_"  # not left by an earlier run
    worker_main(setup, rows, tasks, results, 0, numba.get_num_threads(), types.SimpleNamespace(value=0),
                [0, NOT_STARTED], progress := [0], prefix)  # fmt: skip
    messages = [results.get() for _ in range(results.qsize())]
    assert [m[0] for m in messages] == ["slab", "done", "error"]
    assert progress == [1]  # the slab read, counted for the loader's timeout
    assert max(len(ForkingPickler.dumps(m)) + 4 for m in messages) <= select.PIPE_BUF  # with the length header
    slab = Slab(messages[0][3], ds.schema)
    try:
        want = ds.read(ds.units()[0])
        assert_equal_batches(slab.batch, want)
        assert slab.batch.extras["request"].to_pylist()[-1] == f"request-{rows // 2 - 1:010d}"
    finally:
        slab.release()
    assert messages[2][2].startswith("ValueError: éé") and messages[2][2].endswith("é")
    unlink_all(prefix)
