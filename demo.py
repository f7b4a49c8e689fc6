"""The whole gpupre path on embedded defaults, printing what it measured (`make demo`).

Steps: simulate serving traffic (lazy logging into the SQLite KV store, the label join, de-dup
tables by the hour) and train on what it wrote; generate a synthetic recommendation dataset; import Criteo-format text; flatten a legacy
map-layout table and check it against the flat one; put a dataset on a local S3 server, reorder
its features for the jobs that read it and cache it on local disk; read with projection; fit a Criteo pipeline
and apply its compiled plan; decode and crop thumbnails with DALI beside the ids; run the reader and transforms benchmarks (results of `make bench`
are the ones kept in bench/results; the demo's quick runs are printed only).
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import replace

import numpy as np

import gpupre as gp
from bench import images as images_bench
from bench import reader as reader_bench
from bench import transforms as transforms_bench
from gpupre.cli import inspect_text
from gpupre.storage.synth import planted_features

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "demo-data")


def section(title: str) -> None:
    print(f"\n== {title} " + "=" * max(0, 72 - len(title)))


def main() -> None:
    os.makedirs(OUT, exist_ok=True)
    spec = gp.storage.SynthSpec(rows=20_000, num_dense=40, num_sparse=50, num_scored=10, row_group_rows=5_000)

    section("0. serving: lazy logging, label join, de-dup tables; then training on them")
    serving_to_training()

    section("1. synthetic data: flattened layout")
    start = time.perf_counter()
    flat_path = os.path.join(OUT, "synth.parquet")
    gp.storage.synthesize(flat_path, spec, progress=False)
    print(f"generated in {time.perf_counter() - start:.1f}s")
    print("\n".join(inspect_text(flat_path).splitlines()[:8]) + "\n...")

    section("2. Criteo-format text -> flattened dataset")
    text = os.path.join(OUT, "criteo.txt")
    gp.storage.write_criteo_text(text, rows=5_000, seed=1)
    start = time.perf_counter()
    criteo = os.path.join(OUT, "criteo.parquet")
    gp.storage.import_criteo(text, criteo, progress=False)
    print(f"imported {os.path.getsize(text):,} bytes of text in {time.perf_counter() - start:.2f}s")
    ds = gp.Dataset(criteo, features=["I1", "I2", "C1", "C2"])
    batch = ds.read(ds.units()[0])
    print(f"projection {list(ds.schema.names)} -> {batch}")
    print(f"dense [F, N] = {batch.dense.shape}, first ids of C1: {batch.sparse.feature('C1')[1][:3].tolist()}")

    section("3. legacy map layout -> flattened")
    map_path = os.path.join(OUT, "synth-map.parquet")
    gp.storage.synthesize(map_path, spec, layout="map", progress=False)
    start = time.perf_counter()
    flattened = os.path.join(OUT, "synth-flattened.parquet")
    gp.storage.flatten(map_path, flattened, progress=False)
    print(f"flattened {spec.rows:,} rows in {time.perf_counter() - start:.2f}s")
    a, b = gp.Dataset(flat_path), gp.Dataset(flattened)
    same = all(_equal(a.read(u), b.read(v)) for u, v in zip(a.units(), b.units()))
    print(f"flattened map table equals the directly written flat table: {same}")
    if not same:
        raise SystemExit("demo: flattening changed the data")

    section("4. storage layout: an object store, feature reordering, the SSD cache")
    storage_layout(flat_path)

    section("5. a fitted Criteo pipeline, compiled and applied")
    ds = gp.Dataset(criteo)
    dense = [f"I{i}" for i in range(1, 14)]
    sparse = [f"C{i}" for i in range(1, 27)]
    pipe = gp.Pipeline(
        [gp.FillMissing(dense, 0.0), gp.Log1p(dense), gp.Normalize(dense)]
        + [gp.Bucketize.fit(d, 16, out=f"{d}_bucket") for d in dense]
        + [gp.Hash(sparse, 100_000), gp.Cross("C1", "C2", 100_000, out="C1_x_C2")]
    )
    start = time.perf_counter()
    pipe = pipe.fit(ds, progress=False)
    print(f"fitted in {time.perf_counter() - start:.2f}s: {pipe.ops[2]}")
    plan = pipe.compile(ds.schema, "auto")  # the CUDA executor where a GPU is, else numba
    print(plan.describe())
    out = plan.run(ds.read(ds.units()[0]))
    out = out.map_arrays(lambda x: x.cpu().numpy() if hasattr(x, "cpu") else x)  # for printing
    kinds = {}
    for f in plan.output_schema:
        kinds.setdefault(f.kind, []).append(f.name)
    for kind, names in kinds.items():
        print(f"  {kind:<6} {len(names):>3}: {', '.join(names[:6])}{', ...' if len(names) > 6 else ''}")
    print(f"-> {out}")
    print(f"   I1 normalized: {np.round(out.dense[0, :4], 3).tolist()}, C1 hashed: {out.sparse.feature('C1')[1][:3].tolist()}")

    section("6. training a small DLRM-style model through gp.DataLoader, and auditing its features")
    held_out = os.path.join(OUT, "synth-held-out.parquet")
    gp.storage.synthesize(held_out, replace(spec, rows=spec.rows + spec.row_group_rows), progress=False)
    train_dlrm(flat_path, held_out=held_out, planted=planted_features(spec))

    section("7. the reader tier on Ray: readers as actors, one killed mid-epoch")
    ray_tier(flat_path)

    section("8. content features: thumbnails decoded and cropped by DALI, in the same batches as the ids")
    content_features()

    section("9. reader benchmark: projection vs map layout (500 features)")
    result = reader_bench.run(rows=16_380, repeats=3, progress=False, save_results=False)
    print(reader_bench.report(result))

    section("10. transforms benchmark (Criteo-like; `make bench` adds 500 features and NVTabular)")
    result = transforms_bench.run(repeats=3, nvtabular=False, kinds=("criteo",), progress=False, save_results=False)
    print(transforms_bench.report(result))


def serving_to_training() -> None:
    """Simulated traffic logged lazily and joined into de-dup tables (eager/tabular alongside), then trained on."""
    import shutil

    import torch

    from bench.dlrm import DLRM, train

    shutil.rmtree(os.path.join(OUT, "serving-warm-up"), ignore_errors=True)  # simulate takes a new directory
    gp.serving.simulate(os.path.join(OUT, "serving-warm-up"), requests=5, progress=False)  # compiles the encoder
    reports = {}
    for logger, layout in (("eager", "tabular"), ("lazy", "dedup")):
        path = os.path.join(OUT, f"serving-{logger}-{layout}")
        shutil.rmtree(path, ignore_errors=True)
        reports[logger] = r = gp.serving.simulate(path, requests=2000, logger=logger, layout=layout, progress=False)
        print(f"{logger:>5} logging, {layout:<7} tables: {r['requests']} requests, {r['items_seen']} items seen of "
              f"{r['ranked_items']} ranked; KV {r['kv']['bytes_written']:,} bytes in {r['kv']['put_ops']} writes, "
              f"{r['logger']['serialize_s']:.2f}s serializing; {r['writer']['bytes']:,} bytes of Parquet in "
              f"{r['writer']['files']} hourly files ({r['seconds']:.1f}s)")  # fmt: skip
    lazy, eager = reports["lazy"], reports["eager"]
    print(f"lazy logging wrote {1 - lazy['kv']['bytes_written'] / eager['kv']['bytes_written']:.0%} fewer KV bytes; "
          f"de-dup tables are {1 - lazy['writer']['bytes'] / eager['writer']['bytes']:.0%} smaller than tabular")
    j = lazy["joiner"]
    print(f"label join: {j['events']} events, {j['joined']} joined, {j['duplicates']} duplicates merged, "
          f"{j['late']} after the TTL (reported in _rejected.jsonl), {j['unknown']} without features")  # fmt: skip

    ds = gp.Dataset(lazy["path"])
    dense = [f.name for f in ds.schema.dense]
    lists = [f.name for f in ds.schema.sparse]
    pipe = gp.Pipeline([gp.Normalize(dense), gp.Hash(lists, 20_000)]).fit(ds, progress=False)
    loader = gp.DataLoader(ds, batch_size=256, pipeline=pipe, device="auto", shuffle=True, num_workers=2, read_batch_size=1024)
    torch.manual_seed(0)
    model = DLRM(len(dense), lists, 20_000).to(loader.device)
    result = train(loader, model, 300, lr=0.02)
    loader.close()
    losses, stats = result["losses"], loader.stats()
    print(f"{ds}: batches of 256 impressions carry {stats['bytes_staged'] / max(stats['batches'], 1):,.0f} bytes "
          f"(user features once per request)")  # fmt: skip
    print(f"300 steps: loss first 50 {np.mean(losses[:50]):.4f} -> last 50 {np.mean(losses[-50:]):.4f}, "
          f"{result['rows_per_s']:,.0f} rows/s")


def storage_layout(flat_path: str, latency_ms: float = 10.0) -> None:
    """Three jobs read a dataset on a local S3 server; reorder it for them; a second run hits the cache."""
    import pyarrow.fs as pafs

    with gp.storage.LocalObjectStore(latency_ms=latency_ms) as store, tempfile.TemporaryDirectory() as tmp:
        fs = store.filesystem()
        store.create_bucket("demo")
        pafs.copy_files(flat_path, "demo/original/part-0.parquet", destination_filesystem=fs)
        original = gp.Dataset("demo/original", filesystem=fs)
        names = list(original.schema.names)
        jobs = {"ctr": names[0::4], "cvr": list(dict.fromkeys(names[1::4] + names[0:8])), "explore": names[2::7]}
        options = gp.storage.measured_cache_options(fs, original.paths[0])  # gaps cheaper than a request merge
        log = gp.storage.AccessLog(os.path.join(tmp, "access.sqlite"))

        def read(path, features, filesystem, access_log=None):
            counting = gp.storage.CountingFileSystem(filesystem)
            ds = gp.Dataset(path, features=features, filesystem=counting, cache_options=options, access_log=access_log)
            counting.reset()
            start = time.perf_counter()
            for unit in ds.units():
                ds.read_arrow(unit)
            return counting.bytes_read, counting.read_requests, time.perf_counter() - start

        before = {job: read("demo/original", features, fs, log) for job, features in jobs.items()}
        start = time.perf_counter()
        gp.storage.reorder(original, "demo/reordered", log.workload(),
                           options.hole_size_limit, filesystem=fs, progress=False)  # fmt: skip
        print(f"reordered for the recorded workload in {time.perf_counter() - start:.2f}s "
              f"({latency_ms:g} ms a request; gaps up to {options.hole_size_limit >> 10} KiB are read through)")  # fmt: skip
        for job, features in jobs.items():
            (b0, r0, t0), (b1, r1, t1) = before[job], read("demo/reordered", features, fs)
            print(f"  {job:<8} {len(features):>3} features: {b0:>11,} -> {b1:>11,} bytes ({1 - b1 / b0:.0%} fewer), "
                  f"{r0} -> {r1} requests, {t0:.2f} -> {t1:.2f} s")  # fmt: skip
        remote = gp.storage.CountingFileSystem(fs)
        cached = gp.storage.CachedFileSystem(remote, os.path.join(tmp, "cache"), capacity_bytes=1 << 30)
        fetched = []
        for _ in range(2):
            remote.reset()
            read("demo/reordered", jobs["ctr"], cached)
            fetched.append(remote.bytes_read)
        print(f"SSD cache: the first ctr job fetched {fetched[0]:,} bytes from the store, the second {fetched[1]:,}")


def train_dlrm(path: str, steps: int = 400, held_out: str | None = None, planted=()) -> None:
    """A fitted pipeline, the loader's workers and rebatching, a model that learns, and its feature audit."""
    import torch

    from bench.dlrm import DLRM, train

    ds = gp.Dataset(path)
    dense = [f.name for f in ds.schema.dense]
    lists = [f.name for f in ds.schema.sparse]
    scored = [f.name for f in ds.schema.sparse if f.kind == "scored"]
    pipe = gp.Pipeline([gp.FillMissing(dense, 0.0), gp.Log1p(dense), gp.Normalize(dense),
                        gp.SortByScore(scored, top_k=5), gp.Truncate(lists, 20), gp.Hash(lists, 20_000)])  # fmt: skip
    pipe = pipe.fit(ds, progress=False)
    loader = gp.DataLoader(ds, batch_size=256, pipeline=pipe, device="auto", shuffle=True, num_workers=2,
                           read_batch_size=1024)  # fmt: skip
    torch.manual_seed(0)
    model = DLRM(len(dense), lists, 20_000).to(loader.device)
    result = train(loader, model, steps)
    loader.close()
    losses = result["losses"]
    stats = loader.stats()
    print(f"{steps} steps of 256 rows on {loader.device} ({len(lists)} embedding bags, {len(dense)} dense features)")
    print(f"loss: first 50 steps {np.mean(losses[:50]):.4f} -> last 50 steps {np.mean(losses[-50:]):.4f}")
    print(f"training throughput {result['rows_per_s']:,.0f} rows/s; the loader's last epoch: "
          f"{stats['rows_per_s']:,.0f} rows/s, waited {stats['wait_s']:.2f}s, read {stats['bytes_read']:,} bytes")  # fmt: skip

    from gpupre.audit import audit, prune

    if held_out is None:
        return
    more = gp.Dataset(held_out)  # the same distribution, and one more row group: rows the model never saw
    batch = pipe.compile(more.schema, "cpu").run(more.read(more.units()[-1]).rows(0, 2_500)).to(loader.device)
    start = time.perf_counter()
    report = audit(model, [batch], dataset=ds, pipeline=pipe, repeats=3, progress=False)
    top = ", ".join(f"{f.name} {f.importance:+.4f}" for f in report.features[:6])
    print(f"feature audit ({len(report.features)} features, 3 shuffles each, on {batch.num_rows:,} held-out rows) "
          f"in {time.perf_counter() - start:.1f}s: {top}")  # fmt: skip
    if planted:
        found = set(report.names[: len(planted)]) & set(planted)
        print(f"planted features (the label depends on them) in its top {len(planted)}: {len(found)} of {len(planted)}")
    pruned = prune(report, pipe, threshold=0.0)
    print(f"pruned to the features shown to help: {len(pruned.features)} of {len(report.features)}, reading "
          f"{pruned.stored_bytes:,} of {report.dataset_bytes:,} stored bytes")  # fmt: skip


def ray_tier(path: str) -> None:
    """The loader fed by Ray actors on a local cluster; every row once although a reader dies."""
    try:
        import ray
    except ImportError:
        print("Ray is not installed (pip install 'gpupre[ray]'): skipped")
        return
    import logging

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    try:
        ds = gp.Dataset(path, passthrough="row_id")
        readers = gp.distributed.RayReaders(ds, num_readers=2, min_readers=1, max_readers=2, num_cpus=1)
        loader = gp.DataLoader(readers, batch_size=2048, device="cpu", read_batch_size=1024)
        start = time.perf_counter()
        ids = []
        for step, batch in enumerate(loader):
            ids.extend(np.asarray(batch.extras["row_id"]).tolist())
            if step == 1:
                ray.kill(readers.readers()[0])  # a reader dies with units in flight
        seconds = time.perf_counter() - start
        stats = loader.stats()["readers"]
        print(f"{len(ids):,} rows ({len(set(ids)):,} distinct, of {ds.num_rows:,}) in {seconds:.2f}s from 2 Ray readers, "
              f"one killed after the second batch: {stats['replaced']} replaced, {stats['readers']} running")  # fmt: skip
        loader.close()
    finally:
        ray.shutdown()


def content_features(images: int = 512) -> None:
    """A thumbnail column (encoded JPEGs) through the loader: random crop, flip, normalize with DALI."""
    try:
        path = images_bench.dataset(images, OUT)
        pipe = images_bench.pipeline()
        pipe.compile(gp.Dataset(path).schema)  # BackendUnavailable without DALI
    except (ImportError, gp.BackendUnavailable) as e:
        print(f"skipped: {e}")
        return
    ds = gp.Dataset(path, passthrough="row_id")
    crops = []
    for run in range(2):
        loader = gp.DataLoader(ds, batch_size=128, pipeline=pipe, device="cpu", num_workers=2, read_batch_size=64,
                               shuffle=True, seed=run)  # fmt: skip
        start, seen = time.perf_counter(), {}
        for batch in loader:
            seen.update(zip(np.asarray(batch.extras["row_id"]).tolist(), np.asarray(batch.images["thumb"])))
        seconds = time.perf_counter() - start
        loader.close()
        crops.append(seen)
        print(f"epoch with seed {run}: {len(seen):,} thumbnails as {tuple(batch.images['thumb'].shape[1:])} "
              f"{batch.images['thumb'].dtype} in {seconds:.2f}s ({len(seen) / seconds:,.0f} images/s, 2 workers, "
              "worker start and DALI's build included)")  # fmt: skip
    again = gp.DataLoader(ds, batch_size=100, pipeline=pipe, device="cpu", num_workers=0, shuffle=True, seed=1)
    same = all(np.array_equal(crops[1][i], c) for b in again for i, c in zip(np.asarray(b.extras["row_id"]).tolist(), np.asarray(b.images["thumb"])))
    changed = sum(not np.array_equal(crops[0][i], crops[1][i]) for i in crops[0])
    print(f"seed 1 again, other batch size and no workers: every row's crop the same: {same}; "
          f"crops that differ between seeds 0 and 1: {changed:,} of {len(crops[0]):,}")


def _equal(x: gp.Batch, y: gp.Batch) -> bool:
    return (
        x.dense_keys == y.dense_keys
        and np.array_equal(x.dense, y.dense, equal_nan=True)
        and np.array_equal(x.sparse.lengths, y.sparse.lengths)
        and np.array_equal(x.sparse.values, y.sparse.values)
        and np.array_equal(x.labels, y.labels)
    )


if __name__ == "__main__":
    main()
