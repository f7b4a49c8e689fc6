"""Transforms benchmark: the fused numba plan against per-feature code.

Pipelines, fitted on synthetic data:
- criteo: 13 dense (fill, log1p, normalize, and a 16-bucket bucketize into a new feature),
  26 single-id sparse (hash), 5 id lists (truncate to 20, hash), 3 crosses;
- wide: 500 features: 200 dense (fill, log1p, normalize; 50 also bucketized), 250 sparse (hash; lists
  truncated to 20), 50 scored (top 10 by score), 10 crosses.
Contenders, each starting from the same in-memory Arrow batch:
- gpupre: `Batch.from_arrow` + the compiled plan on the numba executor (all cores);
- numpy: per-feature numpy/pyarrow code as a user would write it (vectorized per feature, the same
  results, checked);
- nvtabular: NVTabular 23.8's CPU workflow for the ops it has, in its own environment
  (bench/envs/nvtabular.txt); it has no hash for list columns, no top-k by score, and its
  hashes differ, so its times are for less work than gpupre's.
- dense only: the dense ops (fill, log1p, normalize) of the same pipeline, by gpupre's plan, by
  numpy, and written as a DALI CPU pipeline of its arithmetic and math ops (one sample per
  feature; NaN filled through a bit mask, as DALI has no select), the same results checked.
Steady state: the contenders take 3 turns each, a block of back-to-back calls per turn after an
untimed one, and each reports its median over all its calls (and the range of the ratio over the
turns). The first call is timed apart, in a fresh process: compiling the numba kernels (an empty
cache), and loading them from numba's cache.
"""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

import gpupre as gp
from gpupre.storage import SynthSpec, synthesize

from .common import alternate, markdown_table, measure, save, targets_table

DATA_DIR = os.path.join(os.path.dirname(__file__), "data")
BATCH_SIZES = (4_096, 65_536)
ROWS = 65_540  # whole requests of 10 items, at least the largest batch
NVTABULAR_TIMEOUT_S = 900


# -- data and pipelines ------------------------------------------------------------------------
def dataset(kind: str, progress: bool, row_group_rows: int = ROWS) -> tuple[gp.Dataset, pa.Table]:
    """The synthetic dataset of a pipeline kind, projected, and its ROWS rows in memory.

    row_group_rows: one row group (one work unit) by default; the loader benchmarks take smaller
    ones, so that every worker has units to read."""
    if kind == "criteo":
        spec = SynthSpec(rows=ROWS, num_dense=13, num_sparse=40, num_scored=0, list_fraction=0.2,
                         mean_list_length=20, max_list_length=1000, row_group_rows=row_group_rows, num_planted=4)  # fmt: skip
    else:
        spec = SynthSpec(rows=ROWS, row_group_rows=row_group_rows, max_list_length=1000)
    groups = "" if row_group_rows == ROWS else f"-g{row_group_rows}"
    path = os.path.join(DATA_DIR, f"transforms-{kind}-{ROWS}{groups}.parquet")
    if not os.path.exists(path):
        synthesize(path + ".tmp", spec, progress=progress)
        os.replace(path + ".tmp", path)
    full = gp.Dataset(path)
    table = _read_all(full)
    singles, lists = _split_sparse(full.schema, table)
    if kind == "criteo":
        features = [f.name for f in full.schema.dense] + singles[:26] + lists[:5]
        ds = gp.Dataset(path, features=features)
    else:
        ds = full
    return ds, _read_all(ds)


def _read_all(ds: gp.Dataset) -> pa.Table:
    return pa.concat_tables([ds.read_arrow(unit) for unit in ds.units()])


def _split_sparse(schema, table):
    singles, lists = [], []
    for f in schema.sparse:
        if f.kind == "sparse":
            longest = pc.max(pc.list_value_length(table.column(f.name))).as_py() or 0
            (lists if longest > 1 else singles).append(f.name)
    return singles, lists


def pipeline(kind: str, schema: gp.Schema, table: pa.Table) -> gp.Pipeline:
    dense = [f.name for f in schema.dense]
    singles, lists = _split_sparse(schema, table)
    scored = [f.name for f in schema.sparse if f.kind == "scored"]
    bucketized = dense if kind == "criteo" else dense[:50]
    ops = [gp.FillMissing(dense, 0.0), gp.Log1p(dense), gp.Normalize(dense)]
    ops += [gp.Bucketize.fit(d, 16, out=f"{d}_bucket") for d in bucketized]
    ops += [gp.Hash(singles, 100_000)]
    ops += [gp.Truncate(lists, 20), gp.Hash(lists, 100_000)]
    if scored:
        ops.append(gp.SortByScore(scored, top_k=10))
    crosses = 3 if kind == "criteo" else 10
    ops += [gp.Cross(singles[2 * i], singles[2 * i + 1], 100_000, out=f"cross_{i}") for i in range(crosses)]
    return gp.Pipeline(ops)


# -- the per-feature numpy contender -------------------------------------------------------------
def numpy_sigrid_hash(values: np.ndarray, salt: int, num_buckets: int) -> np.ndarray:
    """TorchArrow's sigrid_hash over an int64 array with numpy uint64 arithmetic."""
    key = values.astype(np.int64).view(np.uint64)
    key = ~key + (key << 21)
    key ^= key >> 24
    key = key + (key << 3) + (key << 8)
    key ^= key >> 14
    key = key + (key << 2) + (key << 4)
    key ^= key >> 28
    key = key + (key << 31)
    hashed = numpy_hash_128_to_64(np.full_like(key, np.uint64(salt & (2**64 - 1))), key)
    return hashed.view(np.int64) % num_buckets


def numpy_hash_128_to_64(upper: np.ndarray, lower: np.ndarray) -> np.ndarray:
    mul = np.uint64(0x9DDFEA08EB382D69)
    a = (lower ^ upper) * mul
    a ^= a >> 47
    b = (upper ^ a) * mul
    b ^= b >> 47
    return b * mul


def numpy_per_feature(table: pa.Table, ops) -> dict:
    """The pipeline as per-feature numpy code: a loop over ops and their features."""
    out: dict = {}

    def column(name):
        return out[name] if name in out else table.column(name).combine_chunks()

    with np.errstate(over="ignore", invalid="ignore"):
        for op in ops:
            for (name, *other), target in op.applications():
                x = column(name)
                if isinstance(op, gp.FillMissing):
                    x = np.nan_to_num(np.asarray(x, np.float32), nan=np.float32(op.value), posinf=np.inf, neginf=-np.inf)
                elif isinstance(op, gp.Log1p):
                    x = np.log1p(np.maximum(x, np.float32(0)))
                elif isinstance(op, gp.Normalize):
                    x = (x - np.float32(op.mean)) / np.float32(op.std)
                elif isinstance(op, gp.Bucketize):
                    out[target + "#source"] = name
                    x = np.searchsorted(np.float32(op.boundaries), x, side="right" if op.right else "left")
                elif isinstance(op, gp.Hash):
                    x = pa.ListArray.from_arrays(x.offsets, numpy_sigrid_hash(x.flatten().to_numpy(), op.salt, op.num_buckets))
                elif isinstance(op, gp.Truncate):
                    x = pc.list_slice(x, 0, op.max_len)
                elif isinstance(op, gp.SortByScore):
                    x = _top_k(x, table.column(name + ".score").combine_chunks(), op.top_k)
                elif isinstance(op, gp.Cross):
                    x = _cross_singles(x, column(other[0]), op)
                out[target] = x
    return out


def _top_k(ids: pa.ListArray, scores: pa.ListArray, k: int) -> pa.ListArray:
    lengths = pc.list_value_length(ids).to_numpy()
    rows = np.repeat(np.arange(len(ids)), lengths)
    s = scores.flatten().to_numpy()
    order = np.lexsort((np.arange(len(s)), np.where(np.isnan(s), np.inf, -s), rows))
    starts = np.concatenate([[0], np.cumsum(lengths)])
    rank = np.arange(len(s)) - starts[rows[order]]
    keep = order[rank < k]
    new_lengths = np.minimum(lengths, k)
    return pa.ListArray.from_arrays(pa.array(np.concatenate([[0], np.cumsum(new_lengths)]).astype(np.int32)), ids.flatten().to_numpy()[keep])


def _cross_singles(a: pa.ListArray, b: pa.ListArray, op) -> pa.ListArray:
    la, lb = pc.list_value_length(a).to_numpy(), pc.list_value_length(b).to_numpy()
    va = np.zeros(len(a), np.int64)
    vb = np.zeros(len(b), np.int64)
    va[la > 0], vb[lb > 0] = a.flatten().to_numpy(), b.flatten().to_numpy()
    both = (la > 0) & (lb > 0)
    ids = numpy_hash_128_to_64(va[both].view(np.uint64), vb[both].view(np.uint64)).view(np.int64)
    offsets = np.concatenate([[0], np.cumsum(both)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), numpy_sigrid_hash(ids, op.salt, op.num_buckets))


def check_same(batch: gp.Batch, baseline: dict) -> None:
    """The numpy contender computes what the plan computes (floats within 1e-5 relative)."""
    for j, name in enumerate(batch.dense_keys):
        if name in baseline:
            np.testing.assert_allclose(batch.dense[j], baseline[name], rtol=1e-5, atol=1e-6, equal_nan=True)
    for name in batch.sparse.keys:
        if name in baseline and isinstance(baseline[name], pa.Array):
            _, values, _ = batch.sparse.feature(name)
            np.testing.assert_array_equal(values, baseline[name].flatten().to_numpy())
        elif name in baseline:  # Bucketize: one id per row, equal where the bucketized values are
            source = batch.dense[batch.dense_keys.index(baseline[name + "#source"])]
            same = source.view(np.int32) == np.asarray(baseline[baseline[name + "#source"]], np.float32).view(np.int32)
            assert same.mean() > 0.75, f"{name}: the values before Bucketize differ in {1 - same.mean():.1%} of rows"
            np.testing.assert_array_equal(batch.sparse.feature(name)[1][same], baseline[name][same])


# -- the benchmark ---------------------------------------------------------------------------------
def run(repeats: int = 5, nvtabular: bool = True, kinds=("criteo", "wide"), progress: bool = True, save_results=True,
        filename: str | None = None) -> dict:  # fmt: skip
    results, targets, skipped, errors = [], [], {}, {}
    for kind in kinds:
        ds, table = dataset(kind, progress)
        pipe = pipeline(kind, ds.schema, table).fit(ds, progress=progress)
        plan = pipe.compile(ds.schema, "cpu")
        nvt = _nvtabular(ds, pipe, repeats) if nvtabular else None
        if nvt and "error" in nvt:
            errors[kind] = nvt["error"]
            targets += [{"name": f"{kind} {size:,} rows: gpupre vs nvtabular", "value": None, "goal": 3.0, "met": None,
                         "note": "NVTabular did not finish"} for size in BATCH_SIZES]  # fmt: skip
            nvt = None
        if nvt:
            skipped[kind] = nvt["skipped"]
        for size in BATCH_SIZES:
            part = table.slice(0, size)
            check_same(plan.run(gp.Batch.from_arrow(part, ds.schema)), numpy_per_feature(part, pipe.ops))
            row = {"pipeline": kind, "features": len(ds.schema), "batch_size": size, "launches": plan.launches}
            if size == BATCH_SIZES[0]:
                row.update(_first_calls(ds, pipe, size))
            batch = gp.Batch.from_arrow(part, ds.schema)
            times = alternate({
                "gpupre": lambda: plan.run(gp.Batch.from_arrow(part, ds.schema)),
                "numpy": lambda: numpy_per_feature(part, pipe.ops),
                # the gpupre time in its two parts: the gather into the batch layout, then the plan
                "from_arrow": lambda: gp.Batch.from_arrow(part, ds.schema),
                "plan": lambda: plan.run(batch),
            }, repeats)  # fmt: skip
            for name in ("gpupre", "numpy"):
                row[f"{name}_rows_per_s"] = size / times[name]["median_s"]
            row["gpupre_from_arrow_ms"] = 1e3 * times["from_arrow"]["median_s"]
            row["gpupre_plan_ms"] = 1e3 * times["plan"]["median_s"]
            turns = [n / g for g, n in zip(times["gpupre"]["block_medians_s"], times["numpy"]["block_medians_s"])]
            row["numpy_over_gpupre_per_turn"] = [min(turns), max(turns)]
            if nvt:
                match = next(r for r in nvt["results"] if r["batch_size"] == size)
                row["nvtabular_rows_per_s"] = match["rows_per_s"]
                row["nvtabular_first_s"] = match["first_s"]
            row.update(_dense_only(ds.schema, pipe, part, repeats))
            results.append(row)
            for contender, goal in (("numpy", 5.0), ("nvtabular", 3.0)):
                if f"{contender}_rows_per_s" in row:
                    value = row["gpupre_rows_per_s"] / row[f"{contender}_rows_per_s"]
                    targets.append({"name": f"{kind} {size:,} rows: gpupre vs {contender}", "value": value, "goal": goal, "met": value >= goal})
    result = {
        "config": {"repeats": repeats, "batch_sizes": list(BATCH_SIZES), "numba_threads": _threads(),
                   "numba_threading_layer": _threading_layer()},
        "results": results,
        "targets": targets,
        "nvtabular_skipped": skipped,
        "nvtabular_errors": errors,
    }
    if save_results:
        result["path"] = save("transforms", result, filename=filename)
    return result


# -- the first call ------------------------------------------------------------------------------
_FIRST_CALL = """
import json, sys, time
import pyarrow as pa
import gpupre as gp
spec = json.loads(sys.argv[1])
ds = gp.Dataset(spec["path"], features=spec["features"])
table = pa.concat_tables([ds.read_arrow(unit) for unit in ds.units()]).slice(0, spec["rows"])
plan = gp.Pipeline.from_json(spec["pipeline"]).compile(ds.schema, "cpu")
start = time.perf_counter()
plan.run(gp.Batch.from_arrow(table, ds.schema))
print(time.perf_counter() - start)
"""


def _first_calls(ds: gp.Dataset, pipe: gp.Pipeline, rows: int) -> dict:
    """Seconds of the first `Batch.from_arrow` + plan run of a fresh process: compiling the numba
    kernels (an empty cache), and loading them from numba's cache (as every later run does)."""
    import json
    import subprocess
    import sys
    import tempfile

    spec = json.dumps({"path": ds.paths[0], "features": list(ds.schema.names), "rows": rows, "pipeline": pipe.to_json()})
    out = {}
    with tempfile.TemporaryDirectory() as empty:
        for name, extra in (("gpupre_first_call_compiling_s", {"NUMBA_CACHE_DIR": empty}), ("gpupre_first_call_cached_s", {})):
            done = subprocess.run([sys.executable, "-c", _FIRST_CALL, spec], env={**os.environ, **extra},
                                  capture_output=True, text=True, check=True)  # fmt: skip
            out[name] = float(done.stdout.split()[-1])
    return out


# -- dense only: gpupre, numpy and DALI ------------------------------------------------------------
def _dense_only(schema: gp.Schema, pipe: gp.Pipeline, part: pa.Table, repeats: int) -> dict:
    """Rows/s of the pipeline's fill, log1p and normalize ops alone, per contender (DALI if installed)."""
    ops = [op for op in pipe.ops if isinstance(op, (gp.FillMissing, gp.Log1p, gp.Normalize))]
    names = [f.name for f in schema.dense]
    schema = schema.select(names)  # every contender reads the dense columns only
    dense = gp.Pipeline(ops).compile(schema, "cpu")
    fill = {n: op.value for op in ops if isinstance(op, gp.FillMissing) for n in op.features}
    stats = {op.features[0]: (op.mean, op.std) for op in ops if isinstance(op, gp.Normalize)}  # fitted: one each
    ours = dense.run(gp.Batch.from_arrow(part, schema)).dense
    contenders = {
        "gpupre": lambda: dense.run(gp.Batch.from_arrow(part, schema)),
        "numpy": lambda: numpy_per_feature(part, ops),
    }
    try:
        dali = _DaliDense(names, fill, stats)
        np.testing.assert_allclose(dali(part), ours, rtol=1e-3, atol=1e-4)  # log(1 + x), not log1p: close
        contenders["dali"] = lambda: dali(part)
    except ImportError:
        pass
    row = {}
    for name, fn in contenders.items():
        t = measure(fn, repeats)
        row[f"dense_{name}_rows_per_s"] = part.num_rows / t["median_s"]
    return row


class _DaliDense:
    """fill -> log1p -> normalize as a DALI CPU pipeline: one sample per dense feature."""

    def __init__(self, names, fill, stats):
        import nvidia.dali.fn as fn
        import nvidia.dali.math as dmath
        import nvidia.dali.types as types
        from nvidia.dali import pipeline_def

        self.names = names
        self.fill = np.array([fill.get(n, 0.0) for n in names], np.float32)
        self.mean = np.array([stats[n][0] for n in names], np.float32)
        self.std = np.array([stats[n][1] or 1.0 for n in names], np.float32)

        @pipeline_def(batch_size=len(names), num_threads=_threads(), device_id=None, prefetch_queue_depth=1)
        def graph():
            x = fn.external_source(name="x", dtype=types.FLOAT, ndim=1)
            fill, mean, std = (fn.external_source(name=k, dtype=types.FLOAT, ndim=0) for k in ("fill", "mean", "std"))
            bits = fn.reinterpret(x, dtype=types.INT32)
            nan = fn.cast((bits & 0x7FFFFFFF) > 0x7F800000, dtype=types.INT32)
            number = fn.reinterpret(bits & (nan - 1), dtype=types.FLOAT)  # NaN -> 0.0
            filled = number + fn.cast(nan, dtype=types.FLOAT) * fill
            return (dmath.log(1.0 + dmath.max(filled, 0.0)) - mean) / std

        self.pipe = graph()
        self.pipe.build()

    def __call__(self, table: pa.Table) -> np.ndarray:
        columns = [table.column(n).combine_chunks().to_numpy(zero_copy_only=False).astype(np.float32) for n in self.names]
        self.pipe.feed_input("x", columns)
        for name in ("fill", "mean", "std"):
            self.pipe.feed_input(name, list(getattr(self, name)))
        (out,) = self.pipe.run()
        return np.stack([np.asarray(t) for t in out])


def _threads() -> int:
    import numba

    return numba.get_num_threads()


def _threading_layer() -> str:
    """The layer numba's parallel loops ran on (tbb, omp or workqueue), once a parallel kernel has run."""
    import numba

    try:
        return numba.threading_layer()
    except ValueError:  # no parallel kernel has run yet
        return "not started"


def _nvtabular(ds: gp.Dataset, pipe: gp.Pipeline, repeats: int):
    from . import _nvtabular

    spec = {
        "parquet": ds.paths[0],
        "batch_sizes": list(BATCH_SIZES),
        "repeats": repeats,
        "ops": [op.to_dict() for op in pipe.ops],
    }
    return _nvtabular.measure(spec, timeout=NVTABULAR_TIMEOUT_S)


def report(result: dict) -> str:
    columns = [
        ("pipeline", "pipeline"),
        ("features", "features"),
        ("batch_size", "rows"),
        ("launches", "launches"),
        ("gpupre_rows_per_s", "gpupre rows/s"),
        ("gpupre_first_call_compiling_s", "gpupre first call s, compiling"),
        ("gpupre_first_call_cached_s", "gpupre first call s, numba cache"),
        ("gpupre_from_arrow_ms", "of which from_arrow ms"),
        ("gpupre_plan_ms", "of which plan ms"),
        ("numpy_rows_per_s", "numpy per-feature rows/s"),
        ("numpy_over_gpupre_per_turn", "numpy / gpupre time, per turn"),
        ("nvtabular_rows_per_s", "NVTabular CPU rows/s"),
        ("nvtabular_first_s", "NVTabular first call s"),
        ("dense_gpupre_rows_per_s", "dense only: gpupre rows/s"),
        ("dense_numpy_rows_per_s", "dense only: numpy rows/s"),
        ("dense_dali_rows_per_s", "dense only: DALI CPU rows/s"),
    ]
    cfg = result["config"]
    head = (f"transforms: median of {cfg['repeats']}, numba on {cfg['numba_threads']} threads"
            f" ({cfg.get('numba_threading_layer', 'layer not recorded')})")
    text = [head, markdown_table(result["results"], columns), targets_table(result["targets"])]
    for kind, error in result.get("nvtabular_errors", {}).items():
        text.append(f"NVTabular ({kind}): {error}")
    for kind, ops in result.get("nvtabular_skipped", {}).items():
        if ops:
            text.append(f"NVTabular skipped ({kind}): " + "; ".join(f"{s['op']} {len(s['features'])} features ({s['reason']})" for s in ops))
    return "\n\n".join(text)


def main(argv=None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m bench transforms", description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-nvtabular", action="store_true", help="skip the NVTabular contender")
    parser.add_argument("--out", default=None, help="results file name (default: transforms)")
    args = parser.parse_args(argv)
    result = run(repeats=args.repeats, nvtabular=not args.no_nvtabular, filename=args.out)
    print(report(result))
    print(f"\nsaved {result['path']}")
