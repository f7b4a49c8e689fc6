"""NVTabular CPU workflow as a baseline contender in the transforms benchmark.

Runs inside bench/.venv-nvtabular (see bench/_nvtabular.py), never in the main venv: it never
imports gpupre (torch only for Merlin's torch dataloader, below).

    python bench/nvtabular_contender.py SPEC.json

SPEC.json: {"parquet": path, "batch_sizes": [...], "repeats": n, "ops": [gpupre op dicts]}, and
optionally "scalar_dtype": "float64" (default) or "Int64" for the scalar id columns below.
Prints one JSON object: {"nvtabular_version", "results": [{"batch_size", "first_s", "median_s",
"rows_per_s"}], "fit_s", "skipped": [{"op", "features", "reason"}]}.

Untimed preparation: the file is read whole; list<int64> columns whose lists all hold at most one
id become scalar id columns, null when empty (NVTabular's categorical layout). By default they are
float64 with NaN, which is what NVTabular's own parquet reader (merlin.io) makes of a nullable int64
column; pandas' nullable Int64 is exact but hashes about 20x slower in pandas. Each batch is the first
batch_size rows (rows repeated when the file is shorter). The workflow is fitted once (fit_s).
Timed: `Workflow.transform(DataFrame)`, which runs NVTabular's LocalExecutor on one in-memory
pandas DataFrame, the same call `Workflow.transform(Dataset)` makes per dask partition.

With "loader": {"columns": [...], "label": name, "batch_sizes": [...], "repeats": n} in the spec it
measures Merlin's dataloader instead, as the Merlin stack is used end to end: the projected columns
are written once (untimed, scalar ids prepared as above) to a Parquet file in row groups of 8,192
rows; each timed epoch is `merlin.io.Dataset(file, cpu=True)` -> `Workflow.transform` (lazy, per
partition) -> `merlin.dataloader.torch.Loader(batch_size, drop_last=True)`, iterated to the end
(torch tensors, the label tagged as the target). drop_last is needed: Merlin 23.08's CPU path fails
on a batch whose list column holds only empty lists (`pull_apart_list` indexes leaves[0]), which the
4-row tail batch here is. Result: {"loader_results": [{"batch_size", "rows", "first_epoch_s",
"epoch_s", "rows_per_s"}], "skipped", ...}.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np
import nvtabular as nvt
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from merlin.dag import ColumnSelector
from merlin.io import Dataset

SCORE_SUFFIX = ".score"
DENSE, SCALAR, LIST = "dense", "scalar", "list"
NO_LIST_HASH = "NVTabular's CPU hashing (pandas hash_pandas_object) cannot hash list columns"


def load(path: str, scalar_dtype: str = "float64") -> tuple[pd.DataFrame, dict[str, str]]:
    """The file as a pandas DataFrame, and each column's kind (dense, scalar id or list)."""
    if scalar_dtype not in ("float64", "Int64"):
        raise SystemExit(f"scalar_dtype must be 'float64' or 'Int64', got {scalar_dtype!r}")
    table = pq.read_table(path)
    columns, kinds = {}, {}
    for name, col in zip(table.column_names, table.columns):
        col = col.combine_chunks()
        if not pa.types.is_list(col.type) and not pa.types.is_large_list(col.type):
            columns[name], kinds[name] = col.to_pandas(), DENSE
            continue
        lengths = pc.fill_null(pc.list_value_length(col), 0).to_numpy(zero_copy_only=False)
        if lengths.size and lengths.max() > 1:
            columns[name], kinds[name] = col.to_pandas(), LIST
            continue
        present = lengths == 1
        values = np.zeros(len(col), dtype=np.int64)
        values[present] = pc.list_flatten(col).to_numpy(zero_copy_only=False)
        if scalar_dtype == "Int64":
            columns[name] = pd.arrays.IntegerArray(values, ~present)
        else:
            columns[name] = np.where(present, values, np.nan)
        kinds[name] = SCALAR
    return pd.DataFrame(columns), kinds


def batch(df: pd.DataFrame, size: int) -> pd.DataFrame:
    """The first `size` rows, repeating rows when the frame is shorter."""
    rows = np.arange(size) % len(df) if len(df) < size else slice(0, size)
    return df.iloc[rows].reset_index(drop=True)


class Builder:
    """Turns gpupre ops into one NVTabular graph.

    Features whose ops so far are the same op applications share a node, so one NVTabular op call
    covers a whole feature group (as a hand-written NVTabular workflow would); a later op on part
    of a group splits it. Features no op touches are not in the output.

    The mapping times comparable work, not identical results: HashBucket/HashedCross use pandas'
    hash (no salt; HashedCross XORs the two hashes), Bucketize is np.digitize (x == boundary goes
    up, unlike torch.bucketize(right=False)), LogOp is log(1 + x) without clamping at 0.
    """

    def __init__(self, kinds: dict[str, str]):
        self.kinds = dict(kinds)
        self.groups: list[list] = []  # [node, [column names]]
        self.skipped: list[dict] = []
        self.fixed_stats: list[tuple] = []  # (stat op, column, {attribute: value}) set after fit

    def _group(self, name):
        return next((g for g in self.groups if name in g[1]), None)

    def select(self, names: list[str], remove: bool):
        """A node giving the current version of `names`; `remove` takes them out of their groups."""
        parts, raw = [], [n for n in names if self._group(n) is None]
        if raw:
            parts.append(nvt.WorkflowNode(ColumnSelector(raw)))
        for group in {id(g): g for g in map(self._group, names) if g is not None}.values():
            node, cols = group
            mine = [c for c in cols if c in names]
            rest = [c for c in cols if c not in names]
            parts.append(node if not rest else node[mine])
            if remove and rest:
                group[:] = [node[rest], rest]
            elif remove:
                self.groups.remove(group)
        out = parts[0]
        for part in parts[1:]:
            out = out + part
        return out

    def apply(self, names: list[str], outs: list[str], op, kind: str | None = None) -> None:
        """Apply NVTabular `op` to `names`, writing `outs` (in place when they are the same)."""
        inplace = list(outs) == list(names)
        node = self.select(names, remove=inplace) >> op
        if not inplace:
            node = node >> nvt.ops.Rename(f=dict(zip(names, outs)).__getitem__)
        for old, new in zip(names, outs):
            self.kinds[new] = kind or self.kinds[old]
        self.groups.append([node, list(outs)])

    def skip(self, spec: dict, features: list[str], reason: str) -> None:
        self.skipped.append({"op": spec["op"], "features": list(features), "reason": reason})

    def add(self, spec: dict) -> None:
        """Map one gpupre op dict onto NVTabular ops (or record it as skipped)."""
        name, feats = spec["op"], list(spec["features"])
        outs = list(spec.get("out") or feats)
        if name == "Cross":
            self.cross(spec, feats, outs[0])
            return
        if name == "Truncate":
            self.truncate(spec, feats, outs)
            return
        if name in ("Hash", "Bucketize") and any(self.kinds[f] == LIST for f in feats):
            lists = [f for f in feats if self.kinds[f] == LIST]
            self.skip(spec, lists, NO_LIST_HASH if name == "Hash" else "Bucketize of a list column")
            pairs = [(f, o) for f, o in zip(feats, outs) if f not in lists]
            if not pairs:
                return
            feats, outs = map(list, zip(*pairs))
        if name == "FillMissing":
            self.apply(feats, outs, nvt.ops.FillMissing(fill_val=spec.get("value", 0.0)))
        elif name == "Log1p":
            self.apply(feats, outs, nvt.ops.LogOp())
        elif name == "Clamp":
            lo, hi = spec.get("lo", -np.inf), spec.get("hi", np.inf)
            self.apply(
                feats, outs, nvt.ops.Clip(lo if np.isfinite(lo) else None, hi if np.isfinite(hi) else None)
            )
        elif name == "Normalize":
            op = nvt.ops.Normalize(out_dtype=np.float32)
            if spec.get("mean") is not None:
                self.fixed_stats += [(op, f, {"means": spec["mean"], "stds": spec["std"]}) for f in feats]
            self.apply(feats, outs, op)
        elif name == "MinMax":
            op = nvt.ops.NormalizeMinMax(out_dtype=np.float32)
            if spec.get("min") is not None:
                self.fixed_stats += [(op, f, {"mins": spec["min"], "maxs": spec["max"]}) for f in feats]
            self.apply(feats, outs, op)
        elif name == "Bucketize" and spec.get("boundaries"):
            self.apply(feats, outs, nvt.ops.Bucketize(list(spec["boundaries"])), SCALAR)
        elif name == "Bucketize":
            self.skip(spec, feats, "NVTabular Bucketize needs explicit boundaries (no quantile fit)")
        elif name == "Hash":
            self.apply(feats, outs, nvt.ops.HashBucket(int(spec["num_buckets"])), SCALAR)
        else:
            self.skip(spec, feats, "no NVTabular equivalent")

    def truncate(self, spec: dict, feats: list[str], outs: list[str]) -> None:
        scalars = [f for f in feats if self.kinds[f] != LIST]
        if scalars:
            self.skip(spec, scalars, "column holds at most one id per row: nothing to slice")
        pairs = [(f, o) for f, o in zip(feats, outs) if f not in scalars]
        pairs += [(f + SCORE_SUFFIX, o + SCORE_SUFFIX) for f, o in pairs if f + SCORE_SUFFIX in self.kinds]
        if not pairs:
            return
        n = int(spec["max_len"])
        op = nvt.ops.ListSlice(-n) if spec.get("keep") == "last" and n > 0 else nvt.ops.ListSlice(0, n)
        self.apply([f for f, _ in pairs], [o for _, o in pairs], op)

    def cross(self, spec: dict, feats: list[str], out: str) -> None:
        if any(self.kinds[f] == LIST for f in feats):
            self.skip(spec, feats, NO_LIST_HASH)
            return
        node = self.select(feats, remove=False) >> nvt.ops.HashedCross(int(spec["num_buckets"]))
        self.groups.append([node >> nvt.ops.Rename(name=out), [out]])
        self.kinds[out] = SCALAR

    def workflow(self) -> nvt.Workflow:
        if not self.groups:
            raise SystemExit("no op of the spec maps onto NVTabular")
        out = self.groups[0][0]
        for node, _ in self.groups[1:]:
            out = out + node
        return nvt.Workflow(out)


def timed(workflow: nvt.Workflow, data: pd.DataFrame) -> float:
    """Seconds one in-memory transform takes."""
    start = time.perf_counter()
    workflow.transform(data)
    return time.perf_counter() - start


def loader_epochs(workflow: nvt.Workflow, path: str, spec: dict) -> list[dict]:
    """Rows/s of Merlin's torch dataloader over the workflow's output, per batch size."""
    from merlin.dataloader.torch import Loader

    results = []
    for size in spec["batch_sizes"]:
        times, rows = [], 0
        for _ in range(int(spec["repeats"]) + 1):  # the first epoch warms up
            start = time.perf_counter()
            data = workflow.transform(Dataset(path, cpu=True))
            rows = sum(len(labels) for _, labels in Loader(data, batch_size=int(size), drop_last=True))
            times.append(time.perf_counter() - start)
        epoch_s = statistics.median(times[1:])
        results.append({"batch_size": int(size), "rows": rows, "first_epoch_s": times[0], "epoch_s": epoch_s,
                        "rows_per_s": rows / epoch_s})  # fmt: skip
    return results


def main(spec_path: str) -> dict:
    """Prepare, fit and time the workflow the spec describes; the result printed as JSON."""
    with open(spec_path) as f:
        spec = json.load(f)
    df, kinds = load(spec["parquet"], spec.get("scalar_dtype", "float64"))
    loader = spec.get("loader")
    if loader:
        df, kinds = df[loader["columns"]], {c: kinds[c] for c in loader["columns"]}
    builder = Builder(kinds)
    for op in spec["ops"]:
        builder.add(op)
    workflow = builder.workflow()
    if loader:
        from merlin.schema import Tags

        label = [loader["label"]] >> nvt.ops.AddTags([Tags.TARGET])
        workflow = nvt.Workflow(workflow.output_node + label)
        path = os.path.join(tempfile.mkdtemp(prefix="merlin-loader-"), "data.parquet")
        df.to_parquet(path, row_group_size=8192)
        data = Dataset(path, cpu=True)
    else:
        data = Dataset(df, cpu=True)
    start = time.perf_counter()
    workflow.fit(data)
    fit_s = time.perf_counter() - start
    for op, col, stats in builder.fixed_stats:
        for attr, value in stats.items():
            getattr(op, attr)[col] = float(value)
    if loader:
        results = loader_epochs(workflow, path, loader)
        shutil.rmtree(os.path.dirname(path))
        return {"nvtabular_version": nvt.__version__, "loader_results": results, "fit_s": fit_s,
                "skipped": builder.skipped}  # fmt: skip
    results = []
    for size in spec["batch_sizes"]:
        data = batch(df, int(size))
        first = timed(workflow, data)
        median = statistics.median(timed(workflow, data) for _ in range(int(spec.get("repeats", 5))))
        results.append(
            {"batch_size": int(size), "first_s": first, "median_s": median, "rows_per_s": size / median}
        )
    return {
        "nvtabular_version": nvt.__version__,
        "results": results,
        "fit_s": fit_s,
        "skipped": builder.skipped,
    }


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    with contextlib.redirect_stdout(sys.stderr):
        result = main(sys.argv[1])
    print(json.dumps(result))
