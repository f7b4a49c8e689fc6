"""Ray reader tier benchmark: the same loader fed by Ray actors, by its own worker processes, and
Ray Data doing the same work.

Data and pipeline: the loader benchmark's (the Criteo-like dataset, 65,540 rows in 9 row groups;
fill, log1p, normalize, truncate, hash). On this machine every contender gets 2 CPUs: 2 loader
workers, 2 Ray readers on a local Ray instance of 2 CPUs, Ray Data on the same instance. Rows/s:
median of `repeats` epochs after a warm-up epoch (which starts the workers or actors). The object
store's cost per slab: a unit's slabs (as the readers return them) put into Ray's object store and
taken back, median of 20, per slab and per MB.
"""

from __future__ import annotations

import statistics
import time

import ray

import gpupre as gp

from .common import markdown_table, repeats_main, save, targets_table
from .loader import ROW_GROUP_ROWS, WORKERS, _epochs, _ray_loader, pipeline
from .transforms import dataset as transforms_dataset

BATCH_SIZE, READ_BATCH_SIZE = 16_384, 8_192


def object_store_cost(ds: gp.Dataset, plan) -> dict:
    """Seconds to put one unit's slabs into the object store and get them back."""
    from gpupre.loader._worker import read_unit

    slabs = [b for b, _ in read_unit(ds, (plan, True), (0, ds.units()[0], 0, None, (0, 0)), READ_BATCH_SIZE)]
    nbytes = sum(b.dense.nbytes + b.sparse.values.nbytes + b.sparse.lengths.nbytes for b in slabs)
    times = []
    for _ in range(21):
        start = time.perf_counter()
        ray.get(ray.put(slabs))
        times.append(time.perf_counter() - start)
    median = statistics.median(times[1:])
    return {"slabs": len(slabs), "bytes": nbytes, "seconds": median, "per_slab_ms": 1e3 * median / len(slabs),
            "ms_per_mb": 1e3 * median / (nbytes / 1e6)}  # fmt: skip


def run(repeats: int = 3, save_results: bool = True, progress: bool = True) -> dict:
    ds, _ = transforms_dataset("criteo", progress, ROW_GROUP_ROWS)
    pipe = pipeline(ds).fit(ds, progress=progress)
    if not ray.is_initialized():
        ray.init(num_cpus=WORKERS, include_dashboard=False, log_to_driver=False)
    readers = gp.distributed.RayReaders(ds, num_readers=WORKERS)
    contenders = {
        "ray_tier": gp.DataLoader(readers, BATCH_SIZE, pipe, device="cpu", read_batch_size=READ_BATCH_SIZE),
        "workers": gp.DataLoader(ds, BATCH_SIZE, pipe, device="cpu", num_workers=WORKERS, read_batch_size=READ_BATCH_SIZE),
    }  # fmt: skip
    row = {"batch_size": BATCH_SIZE}
    for name, loader in contenders.items():
        m = _epochs(lambda loader=loader: loader, repeats)
        loader.close()
        row["rows"], row[f"{name}_rows_per_s"], row[f"{name}_first_epoch_s"] = m["rows"], m["rows"] / m["epoch_s"], m["first_epoch_s"]
    m = _epochs(_ray_loader(ds.paths[0], ds.columns, pipe.ops, BATCH_SIZE), repeats)
    row["ray_data_rows_per_s"], row["ray_data_first_epoch_s"] = m["rows"] / m["epoch_s"], m["first_epoch_s"]
    cost = object_store_cost(ds, pipe.compile(ds.schema, "cpu", True))
    targets = [
        {"name": "Ray tier vs on-box workers (rows/s)", "value": row["ray_tier_rows_per_s"] / row["workers_rows_per_s"],
         "goal": None, "met": None},
        {"name": "Ray tier vs Ray Data (rows/s)", "value": row["ray_tier_rows_per_s"] / row["ray_data_rows_per_s"],
         "goal": None, "met": None},
    ]  # fmt: skip
    result = {"config": {"repeats": repeats, "cpus": WORKERS, "batch_size": BATCH_SIZE, "read_batch_size": READ_BATCH_SIZE},
              "results": [row], "object_store": cost, "targets": targets}  # fmt: skip
    if save_results:
        result["path"] = save("distributed", result)
    return result


def report(result: dict) -> str:
    columns = [("batch_size", "rows/batch"), ("ray_tier_rows_per_s", "gp.DataLoader + RayReaders rows/s"),
               ("workers_rows_per_s", "gp.DataLoader, worker processes rows/s"),
               ("ray_data_rows_per_s", "Ray Data rows/s")]  # fmt: skip
    c = result["object_store"]
    return "\n\n".join([
        f"{result['config']['cpus']} CPUs per contender, median of {result['config']['repeats']} epochs",
        markdown_table(result["results"], columns),
        f"object store: a unit of {c['slabs']} slabs ({c['bytes']:,} bytes) put and taken back in "
        f"{1e3 * c['seconds']:.2f} ms: {c['per_slab_ms']:.2f} ms per slab, {c['ms_per_mb']:.3f} ms per MB",
        targets_table(result["targets"]),
    ])  # fmt: skip


def main(argv=None) -> None:
    repeats_main("distributed", __doc__, run, report, argv)
