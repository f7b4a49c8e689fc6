"""Storage benchmark: feature reordering and the SSD cache tier, on a real S3-compatible server.

A wide synthetic dataset (500 features in the order they were written: dense, then sparse, then
scored) is uploaded to `gp.storage.LocalObjectStore` (moto's S3 server on loopback, every request
held for the injected latency). A workload of six jobs reads it: a core of features every job
reads, plus features of their own. Every read goes through `pyarrow.fs.S3FileSystem` wrapped in
`gp.storage.CountingFileSystem`, so bytes and requests are what the store served.

- Reordering: each job reads all rows of its projection from the original and from the
  `gp.storage.reorder`ed dataset, with pyarrow's coalescing tuned for the store
  (`gp.storage.measured_cache_options`: `CacheOptions.from_network_metrics` on the measured time to
  first byte and bandwidth) and with
  pyarrow's default (ranges at most 8 KiB apart merge).
- Cache: a second job reads the reordered dataset after a first one, without and with a shared
  `gp.storage.CachedFileSystem`: once with the same projection (a re-run, a sweep) and once with
  another job's projection.
"""

from __future__ import annotations

import os
import tempfile
import time

import numpy as np
import pyarrow.fs as pafs

import gpupre as gp
from gpupre.storage import CachedFileSystem, CountingFileSystem, LocalObjectStore, SynthSpec, Workload

from .common import markdown_table, save, targets_table

SPEC = SynthSpec(rows=65_520, row_group_rows=8_190, num_files=8)
LATENCY_MS, REPEATS = 10.0, 3
JOBS = {"ranking": (0.25, 4), "ctr": (0.2, 3), "cvr": (0.15, 2), "watch-time": (0.3, 2), "ads": (0.1, 1), "explore": (0.2, 1)}


def workload(names: list[str], seed: int = 0) -> Workload:
    """A core of 25 features that every job reads, plus each job's own share of the rest."""
    rng = np.random.default_rng(seed)
    core = set(rng.choice(names, 25, replace=False))
    out = Workload()
    for job, (share, weight) in JOBS.items():
        own = {n for n in names if rng.random() < share}
        out.add(job, sorted(core | own) + ["label"], weight)
    return out


def read_job(path, columns, fs, cache_options) -> dict:
    """All rows of a projection: bytes and requests served by the store, median seconds."""
    counting = CountingFileSystem(fs)
    features = [c for c in columns if c != "label"]
    times = []
    for _ in range(REPEATS):
        ds = gp.Dataset(path, features=features, filesystem=counting, cache_options=cache_options)
        counting.reset()
        start = time.perf_counter()
        for unit in ds.units():
            ds.read_arrow(unit)
        times.append(time.perf_counter() - start)
    return {"bytes": counting.bytes_read, "requests": counting.read_requests, "seconds": float(np.median(times))}


def remote_bytes_of_second_job(path, first, second, fs, cache_dir, capacity, cache_options) -> int:
    remote = CountingFileSystem(fs)
    cached = CachedFileSystem(remote, cache_dir, capacity) if cache_dir else remote
    for columns in (first, second):
        ds = gp.Dataset(path, features=[c for c in columns if c != "label"], filesystem=cached, cache_options=cache_options)
        remote.reset()
        for unit in ds.units():
            ds.read_arrow(unit)
    return remote.bytes_read


def _unread_bytes(dataset, first, second) -> int:
    """Stored bytes of the columns `second` reads and `first` does not: what no cache can hold yet."""
    sizes = dataset.bytes_per_column()
    return sum(sizes[c][0] for c in set(second) - set(first) if c in sizes)


def run(save_results: bool = True) -> dict:
    with tempfile.TemporaryDirectory() as tmp, LocalObjectStore(latency_ms=LATENCY_MS) as store:
        local = os.path.join(tmp, "wide")
        gp.storage.synthesize(local, SPEC)
        fs = store.filesystem()
        store.create_bucket("data")
        pafs.copy_files(local, "data/original", destination_filesystem=fs)
        original = gp.Dataset("data/original", filesystem=fs)
        tuned = gp.storage.measured_cache_options(fs, original.paths[0])
        jobs = workload(list(original.full_schema.names))
        start = time.perf_counter()
        reordered = gp.storage.reorder(original, "data/reordered", jobs, tuned.hole_size_limit, filesystem=fs)
        reorder_s = time.perf_counter() - start
        rows = []
        for setting, options in (("tuned", tuned), ("default", None)):
            for job, (columns, weight) in jobs.jobs.items():
                before = read_job("data/original", columns, fs, options)
                after = read_job("data/reordered", columns, fs, options)
                rows.append({"setting": setting, "job": job, "weight": weight, "features": len(columns) - 1,
                             **{f"before_{k}": v for k, v in before.items()}, **{f"after_{k}": v for k, v in after.items()},
                             "bytes_cut": 1 - after["bytes"] / before["bytes"],
                             "requests_ratio": after["requests"] / before["requests"],
                             "speedup": before["seconds"] / after["seconds"]})  # fmt: skip
                r = rows[-1]
                print(f"{setting} {job}: bytes -{r['bytes_cut']:.0%}, requests x{r['requests_ratio']:.2f}, {r['speedup']:.2f}x")
        totals = {}
        for setting in ("tuned", "default"):
            mine = [r for r in rows if r["setting"] == setting]
            weighted = {k: sum(r["weight"] * r[k] for r in mine) for k in ("before_bytes", "after_bytes", "before_requests", "after_requests")}
            totals[setting] = {"bytes_cut": 1 - weighted["after_bytes"] / weighted["before_bytes"],
                               "requests_ratio": weighted["after_requests"] / weighted["before_requests"],
                               "worst_job_bytes_cut": min(r["bytes_cut"] for r in mine),
                               "most_requests_ratio": max(r["requests_ratio"] for r in mine)}  # fmt: skip
        stored = sum(b for b, _ in reordered.bytes_per_column().values())
        capacity = stored // 2
        cache_rows = []
        names = list(jobs.jobs)
        for case, (first, second) in (("same projection", (names[0], names[0])), ("another job", (names[0], names[1]))):
            a, b = jobs.jobs[first][0], jobs.jobs[second][0]
            without = remote_bytes_of_second_job("data/reordered", a, b, fs, None, capacity, tuned)
            cache_dir = os.path.join(tmp, f"cache-{len(cache_rows)}")
            with_cache = remote_bytes_of_second_job("data/reordered", a, b, fs, cache_dir, capacity, tuned)
            cache_rows.append({"case": case, "first": first, "second": second, "without_cache": without,
                               "with_cache": with_cache, "cut": 1 - with_cache / without,
                               "unread_by_first": _unread_bytes(reordered, a, b)})  # fmt: skip
            print(f"cache, {case}: second job fetches {with_cache:,} instead of {without:,} bytes (-{cache_rows[-1]['cut']:.0%})")
    tuned_total = totals["tuned"]
    targets = [
        {"name": "reordering: fewer bytes read (all jobs, weighted; tuned coalescing)", "value": tuned_total["bytes_cut"],
         "goal": 0.45, "met": tuned_total["bytes_cut"] >= 0.45},
        {"name": "reordering: no job needs more read requests", "value": tuned_total["most_requests_ratio"],
         "goal": 1.0, "met": tuned_total["most_requests_ratio"] <= 1.0},
        {"name": "cache: second job (same projection) fetches fewer remote bytes", "value": cache_rows[0]["cut"], "goal": 0.9,
         "met": cache_rows[0]["cut"] >= 0.9},
    ]  # fmt: skip
    result = {"config": {"spec": SPEC.__dict__, "latency_ms": LATENCY_MS, "hole_size_limit": tuned.hole_size_limit, "range_size_limit": tuned.range_size_limit,
                         "reorder_s": reorder_s, "stored_bytes": stored, "cache_capacity": capacity, "repeats": REPEATS},
              "reorder": rows, "totals": totals, "cache": cache_rows, "targets": targets}  # fmt: skip
    if save_results:
        result["path"] = save("storage", result)
    return result


def report(result: dict) -> str:
    cfg = result["config"]
    head = (f"storage: {cfg['spec']['rows']:,} rows x 500 features in {cfg['spec']['num_files']} files on a local S3 server "
            f"({cfg['latency_ms']:g} ms injected per request); tuned coalescing "
            f"(gp.storage.measured_cache_options: time to first byte x bandwidth) merges gaps up to {cfg['hole_size_limit'] / 2**20:.1f} MiB, "
            f"default up to 8 KiB; seconds are medians of {cfg['repeats']} reads")  # fmt: skip
    columns = [("setting", "coalescing"), ("job", "job"), ("weight", "weight"), ("features", "features"),
               ("before_bytes", "bytes before"), ("after_bytes", "bytes after"), ("bytes_cut", "bytes saved"),
               ("before_requests", "requests before"), ("after_requests", "requests after"),
               ("before_seconds", "s before"), ("after_seconds", "s after"), ("speedup", "speedup")]  # fmt: skip
    totals = [{"setting": k, **v} for k, v in result["totals"].items()]
    total_columns = [("setting", "coalescing"), ("bytes_cut", "bytes saved (weighted)"), ("requests_ratio", "requests after/before (weighted)"),
                     ("worst_job_bytes_cut", "least saved by a job"), ("most_requests_ratio", "most requests after/before")]  # fmt: skip
    cache_columns = [("case", "second job"), ("first", "first job"), ("second", "its projection"),
                     ("without_cache", "remote bytes, no cache"), ("with_cache", "remote bytes, cache"), ("cut", "saved"),
                     ("unread_by_first", "bytes of its features the first job did not read")]  # fmt: skip
    return "\n\n".join([head, markdown_table(result["reorder"], columns), markdown_table(totals, total_columns),
                        f"cache capacity {cfg['cache_capacity']:,} bytes (half the dataset)",
                        markdown_table(result["cache"], cache_columns), targets_table(result["targets"])])  # fmt: skip


def main(argv=None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m bench storage", description=__doc__)
    parser.parse_args(argv)
    result = run()
    print(report(result))
    print(f"\nsaved {result['path']}")
