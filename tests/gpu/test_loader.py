"""The loader on a GPU: one pinned transfer per batch, the device stage there, the CPU's results."""

import numpy as np
import pytest
import torch
from resume import check_resume, epoch_ids

import gpupre as gp


@pytest.fixture(scope="module")
def ds(synth_dir):
    return gp.Dataset(synth_dir, passthrough="row_id")  # 600 rows in 12 units of 50


@pytest.fixture(scope="module")
def pipe(ds):
    dense = [f.name for f in ds.schema.dense]
    sparse = [f.name for f in ds.schema.sparse if f.kind == "sparse"]
    scored = [f.name for f in ds.schema.sparse if f.kind == "scored"]
    ops = [gp.FillMissing(dense, 0.0), gp.Log1p(dense), gp.Normalize(dense), gp.Bucketize.fit(dense[0], 8, out="b0"),
           gp.Truncate(sparse[:3], 2), gp.Hash(sparse, 1000), gp.SortByScore(scored, top_k=2)]  # fmt: skip
    return gp.Pipeline(ops).fit(ds, progress=False)


def _loader(ds, pipe, device, **kw):
    kw = {"batch_size": 64, "num_workers": 2, "read_batch_size": 20, "shuffle": True, "seed": 3, **kw}
    return gp.DataLoader(ds, pipeline=pipe, device=device, **kw)


def test_gpu_batches_equal_the_cpu_batches(ds, pipe):
    on_gpu, on_cpu = _loader(ds, pipe, "cuda"), _loader(ds, pipe, "cpu")
    gpu, cpu = list(on_gpu), list(on_cpu)
    on_gpu.close(), on_cpu.close()
    assert [b.num_rows for b in gpu] == [b.num_rows for b in cpu]
    for g, c in zip(gpu, cpu):
        assert g.dense.is_cuda and g.sparse.values.is_cuda and g.labels.is_cuda
        torch.testing.assert_close(g.dense.cpu(), c.dense, rtol=1e-6, atol=0, equal_nan=True)
        for a, b in [(g.sparse.lengths, c.sparse.lengths), (g.sparse.values, c.sparse.values),
                     (g.sparse.weights, c.sparse.weights), (g.labels, c.labels), (g.extras["row_id"], c.extras["row_id"])]:  # fmt: skip
            assert torch.equal(a.cpu(), b)


def test_one_host_to_device_copy_per_batch(ds, pipe):
    from torch.profiler import ProfilerActivity, profile

    loader = _loader(ds, pipe, "cuda", num_workers=0)
    list(loader)  # compile and upload the plan first
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        batches = list(loader)
        torch.cuda.synchronize()
    copies = [e for e in prof.events() if "memcpy" in e.name.lower() and "htod" in e.name.lower()]
    assert len(copies) == len(batches), [e.name for e in copies]


def test_resume_on_the_gpu_delivers_every_row_once(ds, pipe):
    check_resume(lambda: _loader(ds, pipe, "cuda"), midpoint=4)


def test_a_consumer_stream_sees_finished_batches(ds, pipe):
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        sums = [int(b.sparse.values.sum()) for b in _loader(ds, pipe, "cuda", num_workers=0, prefetch=4)]
    expected = [int(b.sparse.values.sum()) for b in _loader(ds, pipe, "cpu", num_workers=0)]
    assert sums == expected
    assert sorted(epoch_ids(list(_loader(ds, pipe, "cuda", num_workers=0)))) == list(range(600))


def test_dedup_batches_on_the_gpu_equal_the_cpu_ones_and_expand_there(dedup_tables):
    from transforms.helpers import assert_same_by_name

    ds = gp.Dataset(dedup_tables[0], passthrough=("item_id",))
    users, items = ["user_dense_0", "user_dense_1"], ["item_dense_0"]
    pipe = gp.Pipeline([gp.FillMissing(users + items), gp.Normalize(users + items),
                        gp.Hash(["user_list_0", "item_list_1"], 97)]).fit(ds, progress=False)  # fmt: skip
    on_gpu, on_cpu = _loader(ds, pipe, "cuda", batch_size=32), _loader(ds, pipe, "cpu", batch_size=32)
    gpu, cpu = list(on_gpu), list(on_cpu)
    on_gpu.close(), on_cpu.close()
    assert [b.num_rows for b in gpu] == [b.num_rows for b in cpu]
    for g, c in zip(gpu, cpu):
        assert g.requests.dense.is_cuda and g.inverse.is_cuda
        assert torch.equal(g.inverse.cpu(), c.inverse)
        expanded = g.expand()
        assert expanded.dense.is_cuda and expanded.num_rows == g.num_rows
        assert_same_by_name(expanded, c.expand())
