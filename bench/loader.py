"""Loader benchmark: gp.DataLoader against torch's DataLoader on the same data and pipeline.

Data: the transforms benchmark's Criteo-like dataset (13 dense, 26 single-id and 5 list features,
65,540 rows in row groups of 8,192). Pipeline: fill, log1p, normalize (dense); hash (all sparse);
truncate to 20 (lists). Both loaders use 2 worker processes and deliver torch tensors of
batch_size rows, on the CPU:
- gpupre: gp.DataLoader(dataset, batch_size, pipeline, device="cpu", num_workers=2);
- torch: torch.utils.data.DataLoader over an IterableDataset whose workers read their share of row
  groups with pyarrow (the same projection) in batches and apply the pipeline as per-feature numpy
  code (bench.transforms' numpy contender), yielding a dict of tensors per batch (batch_size=None;
  lists as values and offsets). Its batches end at row-group boundaries (so they are at most
  batch_size rows), and it has no resume, no ranks and no fixed order across workers.
Each loader runs one epoch to start its workers, then the median of `repeats` epochs.
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import IterableDataset

import gpupre as gp

from .common import markdown_table, save, targets_table
from .transforms import dataset as transforms_dataset
from .transforms import numpy_per_feature

BATCH_SIZES = (4_096, 16_384)


def pipeline(ds: gp.Dataset) -> gp.Pipeline:
    dense = [f.name for f in ds.schema.dense]
    sparse = [f.name for f in ds.schema.sparse]
    lists = [name for name in sparse if name.startswith("sparse") and ds.schema[name].kind == "sparse"]
    return gp.Pipeline([gp.FillMissing(dense, 0.0), gp.Log1p(dense), gp.Normalize(dense),
                        gp.Truncate(lists, 20), gp.Hash(sparse, 100_000)])  # fmt: skip


class ArrowBatches(IterableDataset):
    """The torch contender's dataset: this worker's row groups, read and transformed per feature."""

    def __init__(self, path: str, columns: list[str], ops, batch_size: int):
        self.path, self.columns, self.ops, self.batch_size = path, columns, ops, batch_size

    def __iter__(self):
        import torch

        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        f = pq.ParquetFile(self.path)
        groups = list(range(f.num_row_groups))[worker::workers]
        for part in f.iter_batches(batch_size=self.batch_size, row_groups=groups, columns=self.columns):
            out = numpy_per_feature(pa.Table.from_batches([part]), self.ops)
            batch = {}
            for name, v in out.items():  # dense [N]; lists as (values, offsets)
                if isinstance(v, np.ndarray):
                    batch[name] = torch.as_tensor(v)
                else:
                    batch[name] = (torch.as_tensor(v.flatten().to_numpy()), torch.as_tensor(v.offsets.to_numpy()))
            yield batch


def _epochs(make_iter, repeats: int) -> dict:
    times, rows = [], 0
    for epoch in range(repeats + 1):
        start = time.perf_counter()
        rows = sum(_rows(b) for b in make_iter())
        if epoch:
            times.append(time.perf_counter() - start)
        else:
            first = time.perf_counter() - start
    return {"rows": rows, "first_epoch_s": first, "epoch_s": statistics.median(times)}


def _rows(batch) -> int:
    if isinstance(batch, gp.Batch):
        return batch.num_rows
    first = next(iter(batch.values()))
    return len(first) if isinstance(first, torch.Tensor) else len(first[1]) - 1


def run(repeats: int = 3, save_results: bool = True, progress: bool = True) -> dict:
    import torch

    ds, _ = transforms_dataset("criteo", progress)
    pipe = pipeline(ds).fit(ds, progress=progress)
    results, targets = [], []
    for size in BATCH_SIZES:
        loader = gp.DataLoader(ds, size, pipe, device="cpu", num_workers=2, read_batch_size=min(size, 8192))
        ours = _epochs(lambda: loader, repeats)
        loader.close()
        theirs_ds = ArrowBatches(ds.paths[0], ds.columns, pipe.ops, size)
        theirs_loader = torch.utils.data.DataLoader(theirs_ds, batch_size=None, num_workers=2, persistent_workers=True)
        theirs = _epochs(lambda: theirs_loader, repeats)
        row = {"batch_size": size, "rows": ours["rows"],
               "gpupre_rows_per_s": ours["rows"] / ours["epoch_s"], "gpupre_first_epoch_s": ours["first_epoch_s"],
               "torch_rows_per_s": theirs["rows"] / theirs["epoch_s"], "torch_first_epoch_s": theirs["first_epoch_s"]}  # fmt: skip
        row["ratio"] = row["gpupre_rows_per_s"] / row["torch_rows_per_s"]
        results.append(row)
        targets.append({"name": f"{size:,} rows/batch: gp.DataLoader vs torch DataLoader", "value": row["ratio"],
                        "goal": None, "met": None})  # fmt: skip
    result = {"config": {"repeats": repeats, "workers": 2, "batch_sizes": list(BATCH_SIZES)}, "results": results, "targets": targets}
    if save_results:
        result["path"] = save("loader", result)
    return result


def report(result: dict) -> str:
    columns = [("batch_size", "rows/batch"), ("rows", "rows/epoch"), ("gpupre_rows_per_s", "gp.DataLoader rows/s"),
               ("gpupre_first_epoch_s", "gp first epoch s"), ("torch_rows_per_s", "torch DataLoader rows/s"),
               ("torch_first_epoch_s", "torch first epoch s"), ("ratio", "ratio")]  # fmt: skip
    return "\n\n".join([f"loader: median of {result['config']['repeats']} epochs, 2 workers each, CPU",
                        markdown_table(result["results"], columns), targets_table(result["targets"])])  # fmt: skip


def main(argv=None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m bench loader", description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    result = run(repeats=args.repeats)
    print(report(result))
    print(f"\nsaved {result['path']}")
