"""The CUDA executor equals the numba executor: every op, random pipelines on random jagged
batches, long lists and extreme values; outputs are poisoned first so unwritten elements show.
Also: launches per batch, device-resident input, and errors."""

import inspect

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transforms import test_ops, test_plan
from transforms.helpers import assert_same, make_batch, to_host
from transforms.test_cpu import jagged_batches, random_ops

import gpupre as gp
from gpupre.transforms import cuda

# every op test and plan test written against `device` runs here on "cuda" too
for _module in (test_ops, test_plan):
    for _name, _fn in vars(_module).items():
        if _name.startswith("test_") and "device" in inspect.signature(_fn).parameters:
            globals()[_name] = _fn


@pytest.fixture
def device():
    return "cuda"


@pytest.fixture(autouse=True)
def poison(monkeypatch):
    monkeypatch.setattr(cuda, "POISON", True)


def both(ops, batch):
    """(cuda result, numba result) of a pipeline on a host batch."""
    pipe = gp.Pipeline(ops)
    return pipe.compile(batch.schema, "cuda").run(batch), pipe.compile(batch.schema, "cpu").run(batch)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.data())
def test_cuda_executor_equals_numba(data):
    batch = data.draw(jagged_batches())
    ops = random_ops(data.draw, batch)
    try:
        gp.Pipeline(ops).compile(batch.schema, "cpu")
    except gp.ConfigError:
        return
    out, expected = both(ops, batch)
    assert out.sparse.values.is_cuda
    assert_same(out, expected)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.data())
def test_cuda_executor_equals_numba_over_several_blocks(data):
    # 255-600 rows: sparse tiles of 256 rows, so work spans 2-3 blocks per app and offsets run across them
    batch = data.draw(jagged_batches(255, 600))
    ops = random_ops(data.draw, batch)
    try:
        gp.Pipeline(ops).compile(batch.schema, "cpu")
    except gp.ConfigError:
        return
    assert_same(*both(ops, batch))


def _long_batch(rng, length=10_000, rows=5):
    """Rows of up to `length` ids (one of each length class), with repeats, extremes and NaN scores."""
    sizes = [0, 1, 37, length, length // 2][:rows]
    lists = lambda: [rng.integers(-50, 50, s).tolist() for s in sizes]  # noqa: E731
    a = lists()
    a[1] = [-(2**63)] if a[1] else a[1]
    a[2][:3] = [2**63 - 1, -(2**63), 0]
    scores = [np.where(rng.random(s) < 0.1, np.nan, rng.integers(0, 20, s)).tolist() for s in sizes]
    x = [np.nan, np.inf, -np.inf, 3e38, -1.5][:rows]
    return make_batch({"x": x}, {"a": a, "b": lists()}, {"w": (lists(), scores)})


@pytest.mark.parametrize(
    "ops",
    [
        [gp.Hash("a", 1000, salt=3), gp.Modulo("b", 97)],
        [gp.Truncate("a", 5000), gp.Truncate("b", 3, keep="last")],
        [gp.SortByScore("w", top_k=None)],
        [gp.SortByScore("w", descending=False, top_k=7)],
        [gp.NGram("a", 3, 10_000)],
        [gp.Cross("a", "x", 100, out="ax"), gp.Cross("x", "b", 100, out="xb")],
        [gp.Intersect("a", "b", out="i"), gp.Union("a", "b", out="u"), gp.OverlapCount("a", "b", out="o")],
        [gp.Hash("a", 50), gp.Intersect("a", "b", out="i"), gp.Truncate("i", 4), gp.Hash("i", 7)],
        [gp.FillMissing("x", 1.0), gp.Log1p("x"), gp.Bucketize("x", [0.0, 1.0, 40.0], out="xb"), gp.Hash("x", 5, out="xh")],
    ],
    ids=["hash", "truncate", "sort", "sort-top-k", "ngram", "cross", "sets", "sets-after-maps", "dense"],
)
def test_lists_of_10000_ids(ops):
    out, expected = both(ops, _long_batch(np.random.default_rng(len(ops))))
    assert_same(out, expected)


def test_a_fused_plan_over_many_features_equals_numba():
    rng = np.random.default_rng(1)
    n = 3000  # not a multiple of 4: the dense pass's scalar tail runs too
    dense = {f"d{i}": np.where(rng.random(n) < 0.2, np.nan, rng.lognormal(0, 2, n)).tolist() for i in range(120)}
    lists = lambda: [rng.integers(0, 50, rng.integers(0, 12)).tolist() for _ in range(n)]  # noqa: E731
    sparse = {f"s{i}": lists() for i in range(60)}
    scored = {f"w{i}": (rows, [rng.random(len(r)).tolist() for r in rows]) for i, rows in ((i, lists()) for i in range(10))}
    batch = make_batch(dense, sparse, scored)
    ops = [gp.FillMissing(list(dense), 0.0), gp.Log1p(list(dense)[:80])]
    ops += [gp.Normalize(k, 1.0, 2.0) for k in list(dense)[:60]]
    ops += [gp.Bucketize(k, [0.5, 1.0, 2.0], out=f"{k}_b") for k in list(dense)[60:90]]
    ops += [gp.Hash(list(sparse)[:40], 1000), gp.Truncate(list(sparse)[40:], 4), gp.SortByScore(list(scored), top_k=3)]
    ops += [gp.Cross(f"s{i}", f"s{i + 1}", 777, out=f"x{i}") for i in range(0, 20, 2)]
    ops += [gp.NGram("s5", 2, 100, out="ng"), gp.OverlapCount("s1", "s2", out="ov"), gp.Normalize("ov", 1.0, 2.0)]
    out, expected = both(ops, batch)
    assert_same(out, expected)


def _criteo_like(num_dense, num_sparse):
    dense = [f"I{i}" for i in range(num_dense)]
    sparse = [f"C{i}" for i in range(num_sparse)]
    ops = [gp.FillMissing(dense, 0.0), gp.Log1p(dense)] + [gp.Normalize(d, 1.0, 2.0) for d in dense]
    ops += [gp.Bucketize(d, [0.0, 0.5, 1.0], out=f"{d}_b") for d in dense[:5]]
    ops += [gp.Hash(sparse, 1000), gp.Truncate(sparse[:3], 4)]
    ops += [gp.Cross(sparse[2 * i], sparse[2 * i + 1], 1000, out=f"X{i}") for i in range(3)]
    rng = np.random.default_rng(0)
    n = 4096
    batch = make_batch(
        {d: rng.normal(0, 1, n).tolist() for d in dense},
        {s: [rng.integers(0, 100, rng.integers(0, 4)).tolist() for _ in range(n)] for s in sparse},
    )
    return gp.Pipeline(ops), batch


def _kernels_of(fn):
    """Names of the CUDA kernels that `fn()` launches (copies and memsets not counted)."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    names = [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    return [n for n in names if not n.lower().startswith(("memcpy", "memset"))]


@pytest.mark.parametrize("num_dense,num_sparse", [(13, 26), (100, 100), (500, 200)])
def test_launches_per_batch_are_counted_and_do_not_grow_with_features(num_dense, num_sparse, monkeypatch):
    monkeypatch.setattr(cuda, "POISON", False)
    pipe, batch = _criteo_like(num_dense, num_sparse)
    plan = pipe.compile(batch.schema, "cuda")
    assert plan.host is not None  # Truncate: on the CPU, before the transfer
    plan.run(batch)  # compile and upload first
    kernels = _kernels_of(lambda: plan.run(batch))
    assert len(kernels) == plan.launches, kernels
    assert plan.launches <= 6
    assert sum("dense_pass" in k for k in kernels) == 1


def test_a_batch_already_on_the_gpu_runs_its_host_stage_there():
    batch = _long_batch(np.random.default_rng(5))
    ops = [gp.Truncate("a", 3), gp.SortByScore("w", top_k=2), gp.Hash("a", 100)]
    plan = gp.Pipeline(ops).compile(batch.schema, "cuda")
    assert plan.host is not None
    assert_same(plan.run(batch.to("cuda")), gp.Pipeline(ops).compile(batch.schema, "cpu").run(batch))


def test_negative_lengths_on_the_gpu_are_a_data_error():
    batch = make_batch(sparse={"a": [[1, 2], [3]]})
    kjt = batch.sparse
    bad = gp.Batch(2, (), batch.dense, gp.KeyedJagged(kjt.keys, np.array([3, -1], np.int32), kjt.values), schema=batch.schema)
    plan = gp.Pipeline([gp.Hash("a", 10)]).compile(batch.schema, "cuda")
    with pytest.raises(gp.DataError, match="row 1 has length -1"):
        plan.run(bad.to("cuda"))
    assert_same(plan.run(batch.to("cuda")), gp.Pipeline([gp.Hash("a", 10)]).compile(batch.schema, "cpu").run(batch))


def test_lengths_that_do_not_sum_to_the_values_on_the_gpu_are_a_data_error():
    batch = make_batch(sparse={"a": [[1, 2], [3]]})
    kjt = batch.sparse
    bad = gp.Batch(2, (), batch.dense, gp.KeyedJagged(kjt.keys, np.array([2, 2], np.int32), kjt.values), schema=batch.schema)
    with pytest.raises(gp.DataError, match="lengths sum to 4 but there are 3 values"):
        gp.Pipeline([gp.Hash("a", 10)]).compile(batch.schema, "cuda").run(bad.to("cuda"))


def test_a_device_that_is_not_there_is_backend_unavailable():
    with pytest.raises(gp.BackendUnavailable, match="CUDA devices are visible"):
        gp.Pipeline([]).compile(make_batch({"x": [1.0]}).schema, f"cuda:{torch.cuda.device_count()}")


def test_auto_chooses_the_gpu():
    batch = make_batch({"x": [1.0, 2.0]})
    plan = gp.Pipeline([gp.Log1p("x")]).compile(batch.schema, "auto")
    assert plan.device == "cuda"
    assert to_host(plan.run(batch)).dense.shape == (1, 2)


def test_results_are_on_the_current_stream_and_need_no_sync_to_read():
    pipe, batch = _criteo_like(13, 26)
    plan = pipe.compile(batch.schema, "cuda")
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        out = plan.run(batch.to("cuda"))
        host = to_host(out)  # .cpu() on the same stream orders after the kernels
    assert_same(host, pipe.compile(batch.schema, "cpu").run(batch))


def test_subnormal_floats_are_kept_as_on_the_cpu():
    tiny = [1e-45, -1e-45, 1e-39, -3e-39, 0.0, -0.0, 1.0]
    batch = make_batch({"x": tiny, "y": tiny, "z": tiny}, scored={"w": ([[1, 2, 3, 4]] * 7, [[0.0, -1e-45, 1e-45, -0.0]] * 7)})
    ops = [gp.Log1p("x"), gp.Normalize("y", 0.0, 1.0), gp.MinMax("z", -1e-39, 1e-39)]
    ops += [gp.Bucketize("y", [-1e-45, 0.0, 1e-45], out="yb"), gp.SortByScore("w", descending=False)]
    out, expected = both(ops, batch)
    assert_same(out, expected, rtol=0)


def test_a_dedup_plan_leaves_every_array_on_the_gpu_and_expands_in_the_plain_order(dedup_tables):
    ds = gp.Dataset(dedup_tables[0])
    pipe = gp.Pipeline([gp.Log1p("item_dense_0", out="item_log"), gp.Hash("user_list_0", 10, out="user_hash")])
    batch = ds.read(ds.units()[0])
    out = pipe.compile(ds.schema, "cuda", dedup=True).run(batch)
    assert out.inverse.is_cuda and out.dense.is_cuda and out.requests.sparse.values.is_cuda
    assert_same(out.expand(), pipe.compile(ds.schema, "cpu").run(batch.expand()))
