"""CUDA executor benchmark: the fused plan against per-feature PyTorch, CUDA graphs and numba.

Pipeline per configuration (D dense, S sparse, N rows; data made on the GPU, 10% of dense missing):
every dense feature FillMissing(0) -> Log1p -> Normalize, the first D/4 also Bucketize (16
boundaries) into a new id feature; every sparse feature (one id per row, Criteo's categoricals)
Hash(1M); 3 crosses of sparse pairs, Hash(100k).

Contenders, side by side on the same device-resident batch, checked to agree first:
- gpupre: the compiled plan (device stage only; its launches are counted and reported);
- eager: the same ops as per-feature PyTorch code, as a user would write it (sigrid_hash from int64
  tensor ops), stacking the dense outputs at the end;
- graph: that eager code captured once in a CUDA graph and replayed (no launch overhead);
- numba: the same plan on the host's cores (from a host batch), at 4k and 64k rows.
GPU times are CUDA-event medians after warm-up; numba's are wall-clock medians. Separately, the
dense kernel alone at 256k rows: achieved GB/s (bytes read + written) against a device-to-device copy
of the same bytes, both timed by CUPTI on the device alone; and plan.run of the same dense-only plan,
which adds the host's work per batch (allocations, the launch), by CUDA events.
"""

from __future__ import annotations

import functools
import statistics
import time

import numpy as np

import gpupre as gp
from gpupre.schema import Feature

from .common import describe_machine, markdown_table, measure, save, targets_table

DENSE = (13, 100, 500)
SPARSE = (26, 200)
ROWS = (4_096, 65_536, 262_144)
NUMBA_ROWS = (4_096, 65_536)
MUL = 0x9DDFEA08EB382D69 - 2**64  # folly's constant as an int64
BOUNDARIES = [float(b) for b in np.linspace(-2.0, 2.0, 16)]


# -- the pipeline and its data ----------------------------------------------------------------------
def make(num_dense: int, num_sparse: int, n: int, seed: int = 0, device: str = "cuda"):
    """(pipeline, schema, device batch) for one configuration."""
    import torch

    dense = [f"I{i}" for i in range(num_dense)]
    sparse = [f"C{i}" for i in range(num_sparse)]
    schema = gp.Schema(tuple(Feature(d, "dense") for d in dense) + tuple(Feature(s, "sparse") for s in sparse))
    ops = [gp.FillMissing(dense, 0.0), gp.Log1p(dense)] + [gp.Normalize(d, 1.0, 2.0) for d in dense]
    ops += [gp.Bucketize(d, BOUNDARIES, out=f"{d}_b") for d in dense[: num_dense // 4]]
    if sparse:
        ops += [gp.Hash(sparse, 1_000_000)]
        ops += [gp.Cross(sparse[2 * i], sparse[2 * i + 1], 100_000, out=f"X{i}") for i in range(3)]
    g = torch.Generator(device).manual_seed(seed)
    x = torch.randn(num_dense, n, device=device, generator=g).mul_(2).exp_()
    x[torch.rand(num_dense, n, device=device, generator=g) < 0.1] = float("nan")
    values = torch.randint(0, 2**62, (num_sparse * n,), device=device, generator=g)
    lengths = torch.ones(num_sparse * n, dtype=torch.int32, device=device)
    batch = gp.Batch(n, tuple(dense), x, gp.KeyedJagged(tuple(sparse), lengths, values), schema=schema)
    return gp.Pipeline(ops), schema, batch


def _srl(x, k: int):
    """Logical right shift of int64 tensors (uint64 semantics)."""
    return (x >> k) & ((1 << (64 - k)) - 1)


def torch_hash_128_to_64(upper, lower):
    a = (lower ^ upper) * MUL
    a = a ^ _srl(a, 47)
    b = (upper ^ a) * MUL
    b = b ^ _srl(b, 47)
    return b * MUL


def torch_sigrid_hash(x, salt: int, num_buckets: int):
    key = ~x + (x << 21)
    key = key ^ _srl(key, 24)
    key = key + (key << 3) + (key << 8)
    key = key ^ _srl(key, 14)
    key = key + (key << 2) + (key << 4)
    key = key ^ _srl(key, 28)
    key = key + (key << 31)
    return torch_hash_128_to_64(key.new_full((), salt), key).remainder(num_buckets)


def eager(batch: gp.Batch, pipe: gp.Pipeline):
    """The pipeline as per-feature PyTorch code: (dense [D', N], {name: ids [N]})."""
    import torch

    n = batch.num_rows
    boundaries = _boundaries(batch.dense.device)
    dense, ids = [], {}
    bucketized = {op.features[0] for op in pipe.ops if isinstance(op, gp.Bucketize)}
    for j, name in enumerate(batch.dense_keys):
        x = batch.dense[j]
        x = torch.where(torch.isnan(x), 0.0, x)
        x = torch.log1p(torch.clamp_min(x, 0.0))
        x = (x - 1.0) / 2.0
        dense.append(x)
        if name in bucketized:
            ids[f"{name}_b"] = torch.bucketize(x, boundaries)
    for i, name in enumerate(batch.sparse.keys):
        ids[name] = torch_sigrid_hash(batch.sparse.values[i * n : (i + 1) * n], 0, 1_000_000)
    for op in pipe.ops:  # crosses of the hashed ids, as in the pipeline
        if isinstance(op, gp.Cross):
            for (a, b), out in op.applications():
                ids[out] = torch_sigrid_hash(torch_hash_128_to_64(ids[a], ids[b]), op.salt, op.num_buckets)
    return torch.stack(dense), ids


@functools.cache
def _boundaries(device):
    import torch

    return torch.tensor(BOUNDARIES, device=device)


def check_same(out: gp.Batch, reference) -> None:
    """Dense within 1e-5; ids equal (bucket ids where the bucketized values agree to the bit:
    torch's log1p may differ from gpupre's in the last bit)."""
    dense, ids = reference
    ours = out.dense[: len(dense)].cpu().numpy()
    theirs = dense.cpu().numpy()
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)
    n = out.num_rows
    for i, name in enumerate(out.sparse.keys):
        got = out.sparse.values[i * n : (i + 1) * n].cpu().numpy()  # one id per row in every feature here
        expected = ids[name].cpu().numpy()
        if name.endswith("_b"):
            j = out.dense_keys.index(name[:-2])
            same = ours[j].view(np.int32) == theirs[j].view(np.int32)
            assert same.mean() > 0.75, f"{name}: the values before Bucketize differ in {1 - same.mean():.1%} of rows"
            got, expected = got[same], expected[same]
        np.testing.assert_array_equal(got, expected, err_msg=name)


# -- timing ----------------------------------------------------------------------------------------
def gpu_time(fn, repeats: int = 30, warmup: int = 5, inner: int = 1) -> float:
    """Median seconds per call of `fn` over `repeats` CUDA-event timings of `inner` calls each."""
    import torch

    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(inner):
            fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3 / inner)
    return statistics.median(times)


def capture(fn):
    """`fn` captured in a CUDA graph: (replay, outputs of the capture)."""
    import torch

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    return graph.replay, out


def device_time(fn, repeats: int = 30, warmup: int = 5) -> float:
    """Median seconds of the one GPU operation (kernel or copy) that each call of `fn` issues, as
    CUPTI records it: the device's time alone, without the host's time between calls."""
    import torch
    from torch.autograd import DeviceType

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(repeats):
            fn()
        torch.cuda.synchronize()
    spans = [e.time_range.elapsed_us() for e in prof.events() if e.device_type == DeviceType.CUDA]
    if len(spans) != repeats:
        raise RuntimeError(f"expected one GPU operation per call, the profiler saw {len(spans)} in {repeats} calls")
    return statistics.median(spans) / 1e6


def dense_bandwidth(num_dense: int, n: int) -> dict:
    """The dense kernel against a device-to-device copy of the same bytes, both timed on the device
    alone; and plan.run, which adds the host's work per batch (timed with CUDA events)."""
    import torch

    pipe, schema, batch = make(num_dense, 0, n)
    dense_only = gp.Pipeline([op for op in pipe.ops if not isinstance(op, gp.Bucketize)])
    plan = dense_only.compile(schema, "cuda")
    no_log = gp.Pipeline([op for op in dense_only.ops if not isinstance(op, gp.Log1p)]).compile(schema, "cuda")
    nbytes = 2 * batch.dense.numel() * 4  # read once, written once
    kernel_s = device_time(lambda: plan.run(batch))
    no_log_s = device_time(lambda: no_log.run(batch))
    plan_s = gpu_time(lambda: plan.run(batch), repeats=15, inner=20)
    src = batch.dense.clone()
    dst = torch.empty_like(src)
    copy_s = device_time(lambda: dst.copy_(src))
    return {
        "dense_features": num_dense,
        "rows": n,
        "bytes": nbytes,
        "dense_kernel_gb_per_s": nbytes / kernel_s / 1e9,
        "without_log1p_gb_per_s": nbytes / no_log_s / 1e9,
        "plan_run_gb_per_s": nbytes / plan_s / 1e9,
        "copy_gb_per_s": nbytes / copy_s / 1e9,
        "fraction_of_copy": copy_s / kernel_s,
        "fraction_without_log1p": copy_s / no_log_s,
        "plan_run_fraction_of_copy": copy_s / plan_s,
    }


# -- the benchmark ---------------------------------------------------------------------------------
def run(save_results: bool = True, rows=ROWS, dense=DENSE, sparse=SPARSE) -> dict:
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("the cuda benchmark needs a CUDA GPU")
    results, targets, bandwidth = [], [], []
    for num_dense in dense:
        bandwidth.append(dense_bandwidth(num_dense, max(rows)))
        print(bandwidth[-1], flush=True)
    for num_dense in dense:
        for num_sparse in sparse:
            for n in rows:
                pipe, schema, batch = make(num_dense, num_sparse, n)
                start = time.perf_counter()
                plan = pipe.compile(schema, "cuda")
                out = plan.run(batch)
                torch.cuda.synchronize()
                first = time.perf_counter() - start
                check_same(out, eager(batch, pipe))
                replay, graph_out = capture(lambda: eager(batch, pipe))
                replay()
                check_same(out, graph_out)
                row = {
                    "dense": num_dense, "sparse": num_sparse, "rows": n, "launches": plan.launches,
                    "gpupre_s": gpu_time(lambda: plan.run(batch)),
                    "gpupre_first_s": first,
                    "eager_s": gpu_time(lambda: eager(batch, pipe), repeats=10),
                    "graph_s": gpu_time(replay),
                }  # fmt: skip
                if n in NUMBA_ROWS:
                    host = batch.map_arrays(lambda t: t.cpu().numpy())
                    cpu_plan = pipe.compile(schema, "cpu")
                    t = measure(lambda: cpu_plan.run(host), repeats=5)
                    row["numba_s"], row["numba_first_s"] = t["median_s"], t["first_s"]
                for contender in ("eager", "graph", "numba"):
                    if f"{contender}_s" in row:
                        row[f"vs_{contender}"] = row[f"{contender}_s"] / row["gpupre_s"]
                row["rows_per_s"] = n / row["gpupre_s"]
                results.append(row)
                print(_line(row), flush=True)
                torch.cuda.empty_cache()
    for r in results:
        cell = f"{r['dense']} dense + {r['sparse']} sparse, {r['rows']:,} rows"
        if r["dense"] == max(dense) and r["rows"] == min(rows):
            targets.append(_target(f"{cell}: gpupre vs per-feature eager", r["vs_eager"], 20.0))
            targets.append(_target(f"{cell}: gpupre vs per-feature CUDA graph", r["vs_graph"], 2.0))
        if r["rows"] == 65_536 and "vs_numba" in r:
            targets.append(_target(f"{cell}: gpupre vs numba on {_threads()} threads", r["vs_numba"], 50.0))
    for b in bandwidth:
        targets.append(_target(f"dense kernel, {b['dense_features']} features x {b['rows']:,} rows: fraction of copy bandwidth", b["fraction_of_copy"], 0.6))
    result = {
        "config": {"rows": list(rows), "dense": list(dense), "sparse": list(sparse), "numba_threads": _threads()},
        "results": results,
        "bandwidth": bandwidth,
        "targets": targets,
    }
    if save_results:
        result["path"] = save("cuda", result)
    return result


def _target(name, value, goal):
    return {"name": name, "value": value, "goal": goal, "met": value >= goal}


def _threads() -> int:
    import numba

    return numba.get_num_threads()


def _line(r) -> str:
    numba = f" numba {r['numba_s'] * 1e3:.2f} ms ({r['vs_numba']:.0f}x)" if "numba_s" in r else ""
    return (
        f"{r['dense']:>3} dense {r['sparse']:>3} sparse {r['rows']:>7,} rows: gpupre {r['gpupre_s'] * 1e3:.3f} ms "
        f"({r['launches']} launches), eager {r['eager_s'] * 1e3:.2f} ms ({r['vs_eager']:.1f}x), "
        f"graph {r['graph_s'] * 1e3:.3f} ms ({r['vs_graph']:.1f}x){numba}"
    )


def report(result: dict) -> str:
    columns = [
        ("dense", "dense"), ("sparse", "sparse"), ("rows", "rows"), ("launches", "launches"),
        ("gpupre_s", "gpupre s"), ("eager_s", "eager s"), ("graph_s", "graph s"), ("numba_s", "numba s"),
        ("vs_eager", "x eager"), ("vs_graph", "x graph"), ("vs_numba", "x numba"), ("rows_per_s", "gpupre rows/s"),
    ]  # fmt: skip
    bw = [
        ("dense_features", "dense"), ("rows", "rows"), ("dense_kernel_gb_per_s", "dense kernel GB/s"),
        ("copy_gb_per_s", "copy GB/s"), ("fraction_of_copy", "fraction"),
        ("without_log1p_gb_per_s", "without Log1p GB/s"), ("fraction_without_log1p", "fraction without Log1p"),
        ("plan_run_gb_per_s", "plan.run GB/s"), ("plan_run_fraction_of_copy", "plan.run fraction"),
    ]  # fmt: skip
    gpu = (result.get("machine") or describe_machine())["gpu"]  # printed right after a run: this machine
    head = f"cuda executor on {gpu}: CUDA-event medians; numba on {result['config']['numba_threads']} threads"
    return "\n\n".join([head, markdown_table(result["results"], columns), markdown_table(result["bandwidth"], bw),
                        targets_table(result["targets"])])  # fmt: skip


def main(argv=None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m bench cuda", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="13 and 500 dense, 26 sparse, 4k and 64k rows; not saved")
    args = parser.parse_args(argv)
    if args.quick:
        result = run(save_results=False, rows=(4_096, 65_536), dense=(13, 500), sparse=(26,))
        result["machine"] = {}
    else:
        result = run()
    print(report(result))
    if "path" in result:
        print(f"\nsaved {result['path']}")
