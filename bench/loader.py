"""Loader benchmark: gp.DataLoader against the loaders a user would otherwise write, same data and pipeline.

Data: the transforms benchmark's Criteo-like dataset (13 dense, 26 single-id and 5 list features,
65,540 rows), written in row groups of 8,190 rows: 9 work units, so that both workers read.
Pipeline: fill, log1p, normalize (dense); hash (all sparse); truncate to 20 (lists). Every contender
uses 2 worker processes (Ray: 2 CPUs), runs the pipeline with the same per-feature numpy code
(bench.transforms' numpy contender, checked there against the plan) unless it is gpupre, and
delivers torch tensors of batch_size rows with their labels and row ids on the CPU:
- gpupre: gp.DataLoader(dataset, batch_size, pipeline, device="cpu", num_workers=2);
- torch map-style: torch.utils.data.DataLoader over a map-style dataset whose __getitem__ reads a
  row with pyarrow (the row group it is in decoded once and kept), and a collate_fn that builds an
  Arrow table of the rows and transforms it, as a user would write it;
- torchdata StatefulDataLoader: the same dataset and collate_fn (it adds resumable state);
- torch iterable: torch's DataLoader over an IterableDataset whose workers read their row groups in
  batches (batch_size=None): a stronger baseline than most users write, with no resume, no ranks and
  batches that end at row-group boundaries;
- Ray Data: read_parquet (projected) + map_batches (the pipeline on pyarrow batches) +
  iter_torch_batches, on a local Ray instance with 2 CPUs;
- Merlin: NVTabular's workflow for the ops it has (no hash of list columns) feeding Merlin's torch
  dataloader, on the CPU, in its own environment (bench/nvtabular_contender.py, loader mode; it
  drops the 4-row tail batch, which Merlin's CPU path cannot form).
Rebatching: the DLRM-style model of the demo trains on batches of 16,384 rows gathered from slabs of
1,024 rows, against training on the 1,024-row slabs themselves (the same worker memory cap,
read_batch_size=1,024, without client-side rebatching); rows/s of the training loop.
Transfer (with a GPU): a batch's staging buffer, pinned, copied in one transfer, against one copy
per pinned tensor and against a plain pinned copy of as many bytes (CUDA events, median).
With --device cuda (results: loader-gpu.json) every contender delivers its batches on the GPU:
gp.DataLoader runs its device stage there; the baselines pin their batches and the consumer copies
each tensor (non_blocking); the rebatching comparison trains on the GPU.
Each loader runs one epoch to start its workers, then the median of `repeats` epochs.
"""

from __future__ import annotations

import bisect
import statistics
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import Dataset, IterableDataset

import gpupre as gp

from .common import markdown_table, save, targets_table
from .transforms import dataset as transforms_dataset
from .transforms import numpy_per_feature

BATCH_SIZES = (4_096, 16_384)
ROW_GROUP_ROWS = 8_190  # whole requests of 10 items
WORKERS = 2
REBATCH = {"batch_size": 16_384, "read_batch_size": 1_024, "steps": 24}
GOALS = {"torch_map": 10.0, "ray": 2.0}


def pipeline(ds: gp.Dataset) -> gp.Pipeline:
    dense = [f.name for f in ds.schema.dense]
    sparse = [f.name for f in ds.schema.sparse]
    lists = [name for name in sparse if name.startswith("sparse") and ds.schema[name].kind == "sparse"]
    return gp.Pipeline([gp.FillMissing(dense, 0.0), gp.Log1p(dense), gp.Normalize(dense),
                        gp.Truncate(lists, 20), gp.Hash(sparse, 100_000)])  # fmt: skip


def transform(table: pa.Table, ops) -> dict:
    """The pipeline as per-feature numpy code, then the untouched columns (labels, ids) as numpy."""
    out = numpy_per_feature(table, ops)
    for name in table.column_names:
        if name not in out:
            column = table.column(name).combine_chunks()
            out[name] = column if pa.types.is_list(column.type) else column.to_numpy(zero_copy_only=False)
    return out


def to_tensors(out: dict) -> dict:
    """The columns as tensors: dense [N]; lists as (values, offsets)."""
    batch = {}
    for name, v in out.items():
        if isinstance(v, np.ndarray):
            batch[name] = torch.as_tensor(v)
        else:
            batch[name] = (torch.as_tensor(v.flatten().to_numpy()), torch.as_tensor(v.offsets.to_numpy()))
    return batch


# -- the contenders' datasets ------------------------------------------------------------------
class ArrowRows(Dataset):
    """Map-style: row i of the file, read with pyarrow; the row group holding it is kept decoded."""

    def __init__(self, path: str, columns: list[str]):
        self.path, self.columns = path, columns
        metadata = pq.read_metadata(path)
        sizes = [metadata.row_group(g).num_rows for g in range(metadata.num_row_groups)]
        self.starts = list(np.cumsum([0] + sizes))
        self._file, self._group, self._table = None, -1, None

    def __len__(self) -> int:
        return self.starts[-1]

    def __getitem__(self, i: int) -> dict:
        group = bisect.bisect_right(self.starts, i) - 1
        if group != self._group:
            self._file = self._file or pq.ParquetFile(self.path)
            self._group, self._table = group, self._file.read_row_group(group, columns=self.columns)
        return self._table.slice(i - self.starts[group], 1).to_pylist()[0]


class Collate:
    """collate_fn: the rows as one Arrow table, transformed per feature, as tensors."""

    def __init__(self, schema: pa.Schema, ops):
        self.schema, self.ops = schema, ops

    def __call__(self, rows: list[dict]) -> dict:
        return to_tensors(transform(pa.Table.from_pylist(rows, schema=self.schema), self.ops))


class ArrowBatches(IterableDataset):
    """Iterable: this worker's row groups, read in batches and transformed per feature."""

    def __init__(self, path: str, columns: list[str], ops, batch_size: int):
        self.path, self.columns, self.ops, self.batch_size = path, columns, ops, batch_size

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        f = pq.ParquetFile(self.path)
        groups = list(range(f.num_row_groups))[worker::workers]
        for part in f.iter_batches(batch_size=self.batch_size, row_groups=groups, columns=self.columns):
            yield to_tensors(transform(pa.Table.from_batches([part]), self.ops))


def _ray_loader(path: str, columns: list[str], ops, batch_size: int, device: str = "cpu"):
    import logging

    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=WORKERS, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    ray.data.DataContext.get_current().enable_progress_bars = False

    def transformed(table: pa.Table) -> pa.Table:
        out = transform(table, ops)
        return pa.table({name: out[name] for name in table.column_names})

    class Collate(ray.data.collate_fn.ArrowBatchCollateFn):  # lists as (values, offsets) tensors
        def __call__(self, table: pa.Table) -> dict:
            return to_tensors({name: table.column(name).combine_chunks() if pa.types.is_list(table.schema.field(name).type)
                               else table.column(name).to_numpy() for name in table.column_names})  # fmt: skip

    data = ray.data.read_parquet(path, columns=columns).map_batches(transformed, batch_format="pyarrow", batch_size=batch_size)
    where = {} if device == "cpu" else {"device": device}
    return lambda: data.iter_torch_batches(batch_size=batch_size, collate_fn=Collate(), **where)


# -- measuring ---------------------------------------------------------------------------------
def _epochs(make_iter, repeats: int) -> dict:
    times, rows, first = [], 0, 0.0
    for epoch in range(repeats + 1):
        start = time.perf_counter()
        rows = sum(_rows(b) for b in make_iter())
        if torch.cuda.is_available():
            torch.cuda.synchronize()  # batches delivered on a GPU have arrived
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


def contenders(ds: gp.Dataset, pipe: gp.Pipeline, size: int, device: str = "cpu") -> dict:
    """{name: () -> (make an epoch's iterator, close)} for one batch size, batches delivered on `device`.

    On a GPU the baselines pin their batches (pin_memory=True) and the consumer copies each tensor
    with non_blocking=True, as a user would write it; gp.DataLoader runs its device stage there."""
    path, columns = ds.paths[0], ds.columns
    arrow_schema = pq.read_schema(path)
    collate = Collate(pa.schema([arrow_schema.field(c) for c in columns]), pipe.ops)
    pin = device != "cpu"
    kw = {"batch_size": size, "num_workers": WORKERS, "collate_fn": collate, "persistent_workers": True, "pin_memory": pin}

    def moved(loader):
        if not pin:
            return lambda: loader, lambda: None
        return lambda: ({k: _to(v, device) for k, v in b.items()} for b in loader), lambda: None

    def ours():
        loader = gp.DataLoader(ds, size, pipe, device=device, num_workers=WORKERS, read_batch_size=min(size, 8192))
        return lambda: loader, loader.close

    def stateful():
        from torchdata.stateful_dataloader import StatefulDataLoader

        return moved(StatefulDataLoader(ArrowRows(path, columns), **kw))

    return {
        "gpupre": ours,
        "torch_map": lambda: moved(torch.utils.data.DataLoader(ArrowRows(path, columns), **kw)),
        "stateful": stateful,
        "torch_iterable": lambda: moved(torch.utils.data.DataLoader(ArrowBatches(path, columns, pipe.ops, size), batch_size=None,
                                                                    num_workers=WORKERS, persistent_workers=True,
                                                                    pin_memory=pin)),  # fmt: skip
        "ray": lambda: (_ray_loader(path, columns, pipe.ops, size, device), lambda: None),
    }


def _to(value, device: str):
    if isinstance(value, (tuple, list)):  # (values, offsets); pin_memory makes the tuple a list
        return tuple(t.to(device, non_blocking=True) for t in value)
    return value.to(device, non_blocking=True)


def _merlin(ds: gp.Dataset, pipe: gp.Pipeline, repeats: int) -> dict:
    """Merlin's dataloader behind NVTabular's workflow, run in the NVTabular venv."""
    from . import _nvtabular

    spec = {"parquet": ds.paths[0], "ops": [op.to_dict() for op in pipe.ops],
            "loader": {"columns": ds.columns, "label": ds.schema.labels[0], "batch_sizes": list(BATCH_SIZES),
                       "repeats": repeats}}  # fmt: skip
    return _nvtabular.measure(spec, timeout=1800)


def rebatching(ds: gp.Dataset, pipe: gp.Pipeline, device: str = "cpu") -> dict:
    """Training rows/s with batches rebatched from small slabs against the small slabs themselves."""
    from .dlrm import DLRM, train

    out = {}
    cap = REBATCH["read_batch_size"]
    for name, size in (("rebatched", REBATCH["batch_size"]), ("slabs", cap)):
        # drop_last: an epoch's short tail would count as a whole training step of a few rows
        loader = gp.DataLoader(ds, size, pipe, device=device, num_workers=WORKERS, read_batch_size=cap, drop_last=True)
        torch.manual_seed(0)
        model = DLRM(len(ds.schema.dense), [f.name for f in pipe.output_schema(ds.schema).sparse], 100_000).to(device)
        rows = REBATCH["steps"] * REBATCH["batch_size"]
        train(loader, model, steps=max(1, 8 * REBATCH["batch_size"] // size))  # warm up workers and kernels
        result = train(loader, model, steps=rows // size)
        loader.close()
        out[name] = {"batch_size": size, "read_batch_size": cap, "rows": result["rows"], "rows_per_s": result["rows_per_s"]}
    out["ratio"] = out["rebatched"]["rows_per_s"] / out["slabs"]["rows_per_s"]
    return out


def transfer(ds: gp.Dataset, pipe: gp.Pipeline) -> list[dict]:
    """GPU only: one batch host to device as the loader sends it (the staging buffer, pinned, one
    copy) against a copy per tensor (pinned tensors) and a plain pinned copy of the same bytes."""
    from gpupre.loader._slabs import stage
    from gpupre.loader._worker import read_unit

    from .cuda import gpu_time

    host = (pipe.compile(ds.schema, "cpu"), False)  # the plan's host stage, as workers run it before the transfer
    slabs = [b for unit in ds.units() for b, _ in read_unit(ds, host, (0, unit, 0, None, (0, 0)), 1_024)]
    rows = []
    for size in BATCH_SIZES:
        pieces, left = [], size
        for slab in slabs:
            take = min(left, slab.num_rows)
            pieces.append((slab, 0, take))
            left -= take
            if not left:
                break
        staged = stage(pieces, ds.schema, pin=True)
        b = staged.batch()
        tensors = [t.clone().pin_memory() for t in (b.dense, b.sparse.lengths, b.sparse.values, b.labels, *b.extras.values())
                   if isinstance(t, torch.Tensor)]  # fmt: skip
        plain = torch.empty(staged.buffer.numel(), dtype=torch.uint8).pin_memory()
        nbytes = staged.buffer.numel()
        packed_s = gpu_time(lambda: staged.buffer.to("cuda", non_blocking=True))
        per_tensor_s = gpu_time(lambda: [t.to("cuda", non_blocking=True) for t in tensors])
        plain_s = gpu_time(lambda: plain.to("cuda", non_blocking=True))
        rows.append({"batch_size": size, "bytes": nbytes, "packed_gb_s": nbytes / packed_s / 1e9,
                     "per_tensor_gb_s": nbytes / per_tensor_s / 1e9, "pinned_copy_gb_s": nbytes / plain_s / 1e9,
                     "packed_vs_per_tensor": per_tensor_s / packed_s, "packed_of_copy": plain_s / packed_s})  # fmt: skip
    return rows


def run(repeats: int = 3, save_results: bool = True, progress: bool = True, names=None, device: str = "cpu") -> dict:
    names = None if not names else {"gpupre", *names}  # the others are measured against gpupre
    ds, _ = transforms_dataset("criteo", progress, ROW_GROUP_ROWS)
    pipe = pipeline(ds).fit(ds, progress=progress)
    results, targets = [], []
    merlin = _merlin(ds, pipe, repeats) if (not names or "merlin" in names) and device == "cpu" else None
    for size in BATCH_SIZES:
        row = {"batch_size": size}
        for m in (merlin or {}).get("loader_results", ()):
            if m["batch_size"] == size:
                row["merlin_rows_per_s"], row["merlin_first_epoch_s"] = m["rows_per_s"], m["first_epoch_s"]
        for name, start in contenders(ds, pipe, size, device).items():
            if names and name not in names:
                continue
            make, close = start()
            m = _epochs(make, repeats)
            close()
            row["rows"] = m["rows"]
            row[f"{name}_rows_per_s"] = m["rows"] / m["epoch_s"]
            row[f"{name}_first_epoch_s"] = m["first_epoch_s"]
        results.append(row)
        for name in ("torch_map", "stateful", "torch_iterable", "ray", "merlin"):
            if f"{name}_rows_per_s" in row and "gpupre_rows_per_s" in row:
                value = row["gpupre_rows_per_s"] / row[f"{name}_rows_per_s"]
                goal = GOALS.get(name)
                targets.append({"name": f"{size:,} rows/batch: gp.DataLoader vs {LABELS[name]}", "value": value,
                                "goal": goal, "met": None if goal is None else value >= goal})  # fmt: skip
    rebatch = rebatching(ds, pipe, device) if not names or "rebatching" in names else None
    if rebatch:
        targets.append({"name": "training rows/s: rebatched 16,384-row batches vs 1,024-row slabs", "value": rebatch["ratio"],
                        "goal": 1.4, "met": rebatch["ratio"] >= 1.4})  # fmt: skip
    moved = transfer(ds, pipe) if torch.cuda.is_available() and (not names or "transfer" in names) else None
    for row in moved or ():
        targets.append({"name": f"{row['batch_size']:,} rows: packed transfer of pinned-copy bandwidth",
                        "value": row["packed_of_copy"], "goal": 0.85, "met": row["packed_of_copy"] >= 0.85})  # fmt: skip
    result = {"config": {"device": device, "repeats": repeats, "workers": WORKERS, "batch_sizes": list(BATCH_SIZES),
                         "rebatching": REBATCH, "contenders": sorted(names) if names else None},
              "results": results, "rebatching": rebatch, "transfer": moved, "targets": targets,
              "merlin": None if merlin is None else {k: v for k, v in merlin.items() if k != "loader_results"}}  # fmt: skip
    if save_results:
        result["path"] = save("loader", result, filename="loader" if device == "cpu" else "loader-gpu")
    return result


LABELS = {"gpupre": "gp.DataLoader", "torch_map": "torch DataLoader (map-style rows)",
          "stateful": "torchdata StatefulDataLoader", "torch_iterable": "torch DataLoader (iterable batches)",
          "ray": "Ray Data", "merlin": "Merlin dataloader"}  # fmt: skip


def report(result: dict) -> str:
    columns = [("batch_size", "rows/batch")] + [(f"{n}_rows_per_s", f"{label} rows/s") for n, label in LABELS.items()]
    first = [("batch_size", "rows/batch")] + [(f"{n}_first_epoch_s", f"{label}") for n, label in LABELS.items()]
    cfg = result["config"]
    text = [f"loader: median of {cfg['repeats']} epochs, {cfg['workers']} workers each, batches on {cfg.get('device', 'cpu')}",
            markdown_table(result["results"], columns), "first epoch (s, includes starting workers):",
            markdown_table(result["results"], first)]  # fmt: skip
    if result.get("rebatching"):
        r = result["rebatching"]
        text.append(markdown_table([r["rebatched"], r["slabs"]], [("batch_size", "batch rows"), ("read_batch_size", "slab rows"),
                                                                  ("rows_per_s", "training rows/s")]))  # fmt: skip
    if result.get("transfer"):
        text.append(markdown_table(result["transfer"], [("batch_size", "rows"), ("bytes", "bytes"), ("packed_gb_s", "packed GB/s"),
                                                        ("per_tensor_gb_s", "per-tensor GB/s"),
                                                        ("pinned_copy_gb_s", "pinned copy GB/s")]))  # fmt: skip
    merlin = result.get("merlin") or {}
    if merlin.get("error"):
        text.append(f"Merlin dataloader not measured: {merlin['error']}")
    for skipped in merlin.get("skipped", ()):
        text.append(f"Merlin's workflow leaves out {skipped['op']} of {len(skipped['features'])} features: {skipped['reason']}")
    text.append(targets_table(result["targets"]))
    return "\n\n".join(text)


def main(argv=None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m bench loader", description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", nargs="*", help=f"contenders to run: {', '.join(LABELS)}, rebatching, transfer")
    parser.add_argument("--device", default="cpu", help="where batches are delivered: cpu, or cuda (results: loader-gpu.json)")
    parser.add_argument("--save", action="store_true", help="save the results also when --only picks contenders")
    args = parser.parse_args(argv)
    result = run(repeats=args.repeats, names=args.only, save_results=args.save or not args.only, device=args.device)
    print(report(result))
    if "path" in result:
        print(f"\nsaved {result['path']}")
