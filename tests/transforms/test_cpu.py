"""The numba executor equals the oracle on random jagged batches and random pipelines."""

import os
import subprocess
import sys

import numba
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gpupre as gp
from gpupre.transforms.cpu import BLOCK, MIN_BLOCK, block_rows

from .helpers import assert_same, make_batch

INT64 = st.one_of(
    st.integers(0, 20),  # small ids, so that intersections and unions overlap
    st.integers(-(2**63), 2**63 - 1),
    st.sampled_from([-(2**63), 2**63 - 1, -1, 0]),
)
FLOATS = st.one_of(
    st.floats(-1e6, 1e6, width=32),
    st.sampled_from([float("nan"), float("inf"), float("-inf"), 0.0, -0.0, 3e38, -3e38, 1e-30]),
)


@st.composite
def jagged_batches(draw, min_rows=0, max_rows=12):
    n = draw(st.integers(min_rows, max_rows))
    lists = lambda: st.lists(st.lists(INT64, max_size=draw(st.sampled_from([0, 3, 8, 40]))), min_size=n, max_size=n)  # noqa: E731
    dense = {f"d{i}": draw(st.lists(FLOATS, min_size=n, max_size=n)) for i in range(draw(st.integers(0, 3)))}
    sparse = {f"s{i}": draw(lists()) for i in range(draw(st.integers(1, 3)))}
    scored = {}
    for i in range(draw(st.integers(0, 2))):
        rows = draw(lists())
        scores = [[draw(FLOATS) for _ in row] for row in rows]
        scored[f"w{i}"] = (rows, scores)
    return make_batch(dense, sparse, scored, num_rows=n)


def random_ops(draw, batch):
    kinds = {f.name: f.kind for f in batch.schema}
    ops = []
    for step in range(draw(st.integers(1, 8))):
        dense = [k for k, v in kinds.items() if v == "dense"]
        lists = [k for k, v in kinds.items() if v != "dense"]
        scored = [k for k, v in kinds.items() if v == "scored"]
        choices = ["hash", "modulo", "truncate", "ngram", "cross", "intersect", "union", "overlap"]
        choices += ["fill", "log", "clamp", "normalize", "minmax", "bucketize", "hashdense"] if dense else []
        choices += ["sort"] if scored else []
        what = draw(st.sampled_from(choices))
        out = draw(st.sampled_from([None, f"o{step}"]))
        pick = lambda names: draw(st.sampled_from(names))  # noqa: E731
        if what in ("fill", "log", "clamp", "normalize", "minmax", "bucketize", "hashdense"):
            name = pick(dense)
            op = {
                "fill": lambda: gp.FillMissing(name, draw(st.floats(-5, 5)), out=out),
                "log": lambda: gp.Log1p(name, out=out),
                "clamp": lambda: gp.Clamp(name, -10.0, draw(st.floats(-10, 1e6)), out=out),
                "normalize": lambda: gp.Normalize(name, draw(st.floats(-100, 100)), draw(st.sampled_from([0.0, 0.5, 3.0])), out=out),
                "minmax": lambda: gp.MinMax(name, -1.0, draw(st.sampled_from([-1.0, 2.0, 1e5])), out=out),
                "bucketize": lambda: gp.Bucketize(name, sorted(draw(st.lists(st.floats(-100, 100, width=32), min_size=1, max_size=5))), right=draw(st.booleans()), out=out),
                "hashdense": lambda: gp.Hash(name, draw(st.integers(1, 50)), out=out),
            }[what]()
        elif what in ("hash", "modulo", "truncate", "ngram", "sort"):
            name = pick(scored if what == "sort" else lists)
            op = {
                "hash": lambda: gp.Hash(name, draw(st.integers(1, 1000)), salt=draw(st.integers(-5, 5)), out=out),
                "modulo": lambda: gp.Modulo(name, draw(st.integers(1, 1000)), out=out),
                "truncate": lambda: gp.Truncate(name, draw(st.integers(0, 5)), keep=draw(st.sampled_from(["first", "last"])), out=out),
                "ngram": lambda: gp.NGram(name, draw(st.integers(1, 3)), draw(st.integers(1, 100)), out=out),
                "sort": lambda: gp.SortByScore(name, draw(st.booleans()), draw(st.sampled_from([None, 0, 2])), out=out),
            }[what]()
        else:
            a = pick(lists + (dense if what == "cross" else []))
            b = pick(lists + (dense if what == "cross" else []))
            out = f"o{step}"
            op = {
                "cross": lambda: gp.Cross(a, b, draw(st.integers(1, 500)), out=out),
                "intersect": lambda: gp.Intersect(a, b, out=out),
                "union": lambda: gp.Union(a, b, out=out),
                "overlap": lambda: gp.OverlapCount(a, b, out=out),
            }[what]()
        try:
            kinds = {f.name: f.kind for f in gp.Pipeline([*ops, op]).output_schema(batch.schema)}
        except gp.ConfigError as e:  # ids from an OverlapCount output are refused by name
            assert "OverlapCount" in str(e)
            continue
        ops.append(op)
    return ops


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.data())
def test_numba_executor_equals_oracle(data):
    batch = data.draw(jagged_batches())
    ops = random_ops(data.draw, batch)
    pipe = gp.Pipeline(ops)
    try:
        plan = pipe.compile(batch.schema, "cpu")
    except gp.ConfigError as e:  # combinations the plan refuses must be refused by name
        assert "OverlapCount" in str(e) or "Hash/Modulo" in str(e)
        return
    expected = pipe.compile(batch.schema, "reference").run(batch)
    assert_same(plan.run(batch), expected)


def test_fused_plan_over_many_features_equals_op_by_op():
    rng = np.random.default_rng(0)
    n = 64
    dense = {f"d{i}": np.where(rng.random(n) < 0.2, np.nan, rng.lognormal(0, 2, n)).tolist() for i in range(60)}
    lists = lambda: [rng.integers(0, 50, rng.integers(0, 12)).tolist() for _ in range(n)]  # noqa: E731
    sparse = {f"s{i}": lists() for i in range(40)}
    scored = {f"w{i}": (rows, [rng.random(len(r)).tolist() for r in rows]) for i, rows in ((i, lists()) for i in range(10))}
    batch = make_batch(dense, sparse, scored)
    ops = [gp.FillMissing(list(dense), 0.0), gp.Log1p(list(dense)[:40])]
    ops += [gp.Normalize(k, 1.0, 2.0) for k in list(dense)[:30]]
    ops += [gp.Bucketize(k, [0.5, 1.0, 2.0]) for k in list(dense)[30:45]]
    ops += [gp.Hash(list(sparse)[:30], 1000), gp.Truncate(list(sparse)[30:], 4), gp.SortByScore(list(scored), top_k=3)]
    ops += [gp.Cross(f"s{i}", f"s{i + 1}", 777, out=f"x{i}") for i in range(0, 10, 2)]
    ops += [gp.NGram("s5", 2, 100, out="ng"), gp.OverlapCount("s1", "s2", out="ov"), gp.Normalize("ov", 1.0, 2.0)]
    pipe = gp.Pipeline(ops)
    plan = pipe.compile(batch.schema, "cpu")
    assert len(batch.schema) == 110
    assert_same(plan.run(batch), pipe.compile(batch.schema, "reference").run(batch))
    assert plan.launches <= 6


def test_batches_of_other_sizes_one_after_another_and_from_several_threads_equal_the_oracle():
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(1)

    def batch(n):
        lists = lambda: [rng.integers(0, 99, rng.integers(0, 30)).tolist() for _ in range(n)]  # noqa: E731
        dense = {f"d{i}": rng.normal(0, 3, n).tolist() for i in range(4)}
        return make_batch(dense, {f"s{i}": lists() for i in range(3)})

    batches = [batch(n) for n in (500, 7, 0, 300, 500)]
    ops = [gp.Bucketize(f"d{i}", [-1.0, 0.0, 1.0], out=f"b{i}") for i in range(4)]
    ops += [gp.Hash(["s0", "b0", "b1"], 50), gp.Truncate("s1", 5), gp.Cross("s2", "b2", 77, out="x")]
    pipe = gp.Pipeline(ops)
    plan, oracle = pipe.compile(batches[0].schema, "cpu"), pipe.compile(batches[0].schema, "reference")
    expected = [oracle.run(b) for b in batches]
    for b, want in zip(batches, expected):
        assert_same(plan.run(b), want)
    with ThreadPoolExecutor(4) as pool:
        for got, want in zip(pool.map(plan.run, batches * 4), expected * 4):
            assert_same(got, want)


def test_threads_take_turns_on_numbas_workqueue_layer():
    """Where neither OpenMP nor TBB is installed numba runs on its workqueue layer, which aborts
    the process when two threads launch parallel kernels at once."""
    test = f"{__file__}::test_batches_of_other_sizes_one_after_another_and_from_several_threads_equal_the_oracle"
    code = (f"import numba, pytest, sys; rc = pytest.main(['-q', '-p', 'no:cacheprovider', {test!r}]); "
            "print('layer:', numba.threading_layer()); sys.exit(rc)")  # fmt: skip
    env = dict(os.environ, NUMBA_THREADING_LAYER="workqueue")
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0 and "layer: workqueue" in run.stdout, run.stdout[-3000:] + run.stderr[-3000:]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork only")
def test_a_child_forked_while_a_thread_launches_kernels_can_launch_its_own():
    from gpupre.transforms import cpu

    with cpu._turns:  # as a thread of the parent would hold it
        pid = os.fork()
        if pid == 0:
            os._exit(0 if cpu._turns.acquire(blocking=False) else 1)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


@pytest.mark.parametrize("units, blocks, threads", [(47, 32, 2), (47, 32, 16), (5, 3, 2), (3, 2, 16), (4, 1, 1), (2, 7, 3), (3, 37, 16)])
@pytest.mark.parametrize("rows", [BLOCK, MIN_BLOCK])
def test_the_schedule_covers_every_tile_once_and_shares_every_unit_among_threads(units, blocks, threads, rows):
    """numba splits a prange into one contiguous part per thread: each part gets rows of every
    unit, so that heavy units (long lists) do not all fall to one thread."""
    from gpupre.transforms.cpu import _schedule, _tile

    n = blocks * rows - 5
    tiles, ranges, per = _schedule(units, n, rows, threads)
    order = [_tile(t, units, n, rows, ranges, per) for t in range(tiles)]
    real = [(u, b) for u, b, lo, hi in order if lo < hi]
    assert sorted(real) == [(u, b) for u in range(units) for b in range(blocks)]
    assert all((lo, hi) == (b * rows, min(n, (b + 1) * rows)) for _, b, lo, hi in order if lo < hi)
    if blocks >= threads:
        for part in np.array_split(np.arange(tiles), threads):
            counts = np.bincount([order[t][0] for t in part if order[t][2] < order[t][3]], minlength=units)
            assert counts.min() >= blocks // threads and counts.max() <= -(-blocks // threads)


@pytest.mark.parametrize("n, threads", [(BLOCK, 2), (2 * BLOCK + 3, 1), (2 * BLOCK + 3, 2), (3 * MIN_BLOCK - 7, 2)])
def test_batches_of_several_tiles_of_rows_equal_the_oracle(n, threads):
    """Offsets run on from tile to tile, and ids made by the dense pass feed every kind of op."""
    if threads > numba.config.NUMBA_NUM_THREADS:
        pytest.skip(f"numba has {numba.config.NUMBA_NUM_THREADS} threads")
    previous = numba.get_num_threads()
    numba.set_num_threads(threads)
    try:
        _several_tiles(n)
    finally:
        numba.set_num_threads(previous)


@pytest.mark.parametrize("n, threads", [(4096, 16), (1024, 2), (100, 4), (0, 2), (BLOCK * 40, 16), (BLOCK * 3, 2)])
def test_small_batches_are_cut_into_a_block_for_every_thread(n, threads):
    """A batch of fewer than `threads` blocks of BLOCK rows gets smaller blocks, so that every
    thread has rows of every feature to work on; large batches keep BLOCK."""
    rows = block_rows(n, threads)
    assert MIN_BLOCK <= rows <= BLOCK and rows % 64 == 0
    assert -(-n // rows) >= threads or rows == MIN_BLOCK
    assert rows == BLOCK or -(-n // BLOCK) < threads


def _several_tiles(n):
    rng = np.random.default_rng(n)
    lists = lambda: [rng.integers(0, 30, rng.integers(0, 9)).tolist() for _ in range(n)]  # noqa: E731
    dense = {f"d{i}": np.where(rng.random(n) < 0.1, np.nan, rng.normal(0, 3, n)).tolist() for i in range(3)}
    scored = {"w": (rows, [rng.random(len(r)).tolist() for r in rows]) for rows in [lists()]}
    batch = make_batch(dense, {f"s{i}": lists() for i in range(4)}, scored)
    ops = [gp.Bucketize(f"d{i}", [-1.0, 0.0, 1.0], out=f"b{i}") for i in range(2)] + [gp.Hash("d2", 7, out="h")]
    ops += [gp.Hash(["s0", "b0"], 50), gp.Truncate(["s1", "b1"], 3, keep="last"), gp.SortByScore("w", top_k=2)]
    ops += [gp.Cross("s2", "b1", 77, out="x"), gp.Cross("s3", "s2", 77, out="y"), gp.NGram("s3", 2, 100, out="g")]
    ops += [gp.Intersect("s2", "h", out="i"), gp.Union("b0", "s3", out="u"), gp.OverlapCount("s0", "s1", out="o")]
    # one level, so that the dense pass's ids, with none where d2 is NaN, feed the row-by-row ops
    gaps = [gp.Hash("d2", 7, out="h"), gp.Cross("h", "s3", 77, out="z"), gp.Cross("s1", "h", 77, out="y")]
    for pipe in (gp.Pipeline(ops), gp.Pipeline(gaps)):
        assert_same(pipe.compile(batch.schema, "cpu").run(batch), pipe.compile(batch.schema, "reference").run(batch))


def test_warm_up_compiles_the_only_kernels_any_batch_runs():
    """numba compiles a kernel anew (half a minute) for each layout and read-only flag of its
    arguments: batches whose arrays are views of Arrow's read-only buffers (a single feature of
    a kind), or strided (rows cut from a batch), still run what warm_up compiled."""
    import pyarrow as pa

    from gpupre.transforms import cpu

    cpu.warm_up()
    kernels = (cpu._dense_pass, cpu._tile_offsets, cpu._level_lengths, cpu._level_values)
    compiled = [list(k.signatures) for k in kernels]
    assert all(len(s) == 1 for s in compiled)
    table = pa.table({"d0": pa.array([0.5, 2.0, -1.0], pa.float32()), "d1": pa.array([1.0, 2.0, 3.0], pa.float32()),
                      "s0": pa.array([[1, 2], [], [3]], pa.list_(pa.int64()))})  # fmt: skip
    one_of_each = gp.Schema((gp.Feature("d0", "dense"), gp.Feature("s0", "sparse")))
    strided = make_batch({"d0": [0.5, 2.0, -1.0], "d1": [1.0, 2.0, 3.0]}, {"s0": [[1, 2], [], [3]]}).rows(1, 3)
    batches = [gp.Batch.from_arrow(table, one_of_each), strided]
    assert not batches[0].sparse.values.flags.writeable and not batches[1].dense.flags.c_contiguous
    for batch in batches:
        pipe = gp.Pipeline([gp.Bucketize("d0", [0.0, 1.0], out="b"), gp.Hash(["s0", "b"], 10)])
        assert_same(pipe.compile(batch.schema, "cpu").run(batch), pipe.compile(batch.schema, "reference").run(batch))
    assert [list(k.signatures) for k in kernels] == compiled
