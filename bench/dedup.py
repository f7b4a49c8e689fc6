"""De-dup benchmark: tabular against de-duplicated storage of the same impressions.

For 1 to 100 impressions per request, the same joined requests (user features: those of
`gp.serving.simulate`, long id-list histories; item features: fewer, shorter lists) are written
by `TabularWriter` (one row per impression) and `DedupWriter` (one row per request). Measured:
bytes on disk, and training epochs through `gp.DataLoader` (a normalize-and-hash pipeline,
CPU): bytes read from disk and bytes staged (what crosses PCIe to a GPU) per epoch, rows/s
(median of 3 epochs after a warm-up one). The
tabular rows are also rewritten in random order, to show what the order of a tabular table does
to its size; the target is judged against the request-grouped one, the stronger baseline.
"""

from __future__ import annotations

import os
import tempfile
import time

import numpy as np

import gpupre as gp
from gpupre.serving import DedupWriter, FeatureCodec, JoinedRequest, TabularWriter
from gpupre.serving.simulate import ITEM_FEATURES, USER_FEATURES, synthetic_features

from .common import markdown_table, save, targets_table

IMPRESSIONS, PER_REQUEST, BATCH, EPOCHS = 60_000, (1, 5, 15, 50, 100), 4096, 3
RECD_RATIO = 3.71  # RecD's reported end-to-end gain, for reference next to ours


def requests_of(per_request: int, rng) -> tuple:
    count = IMPRESSIONS // per_request
    items, users = synthetic_features(count * per_request, *ITEM_FEATURES, "item", rng), synthetic_features(count, *USER_FEATURES, "user", rng)
    item_bytes, user_bytes = FeatureCodec(items.schema).encode(items), FeatureCodec(users.schema).encode(users)
    labels = (rng.random((count * per_request, 1)) < 0.1).astype(np.float32)
    out = [JoinedRequest(r, 1_767_225_600.0 + r * 0.01, user_bytes[r], np.arange(per_request, dtype=np.int64) + r * per_request,
                         item_bytes[r * per_request : (r + 1) * per_request], labels[r * per_request : (r + 1) * per_request])
           for r in range(count)]  # fmt: skip
    return items.schema, users.schema, out


def shuffled_size(tabular: str, out: str, rng) -> int:
    """Bytes of the tabular rows rewritten in random order (impressions of a request apart, as in
    a table written in label-arrival order), with the same writer settings."""
    import pyarrow.parquet as pq

    ds = gp.Dataset(tabular)
    table = pq.read_table(ds.paths)
    gp.storage.write_table(table.take(rng.permutation(table.num_rows)), out, ds.full_schema, row_group_rows=16_384)
    return os.path.getsize(out)


def epoch(path: str) -> dict:
    ds = gp.Dataset(path)
    dense = [f.name for f in ds.schema.dense]
    lists = [f.name for f in ds.schema.sparse]
    pipe = gp.Pipeline([gp.FillMissing(dense), gp.Normalize(dense), gp.Hash(lists, 100_000)]).fit(ds, progress=False)
    loader = gp.DataLoader(ds, batch_size=BATCH, pipeline=pipe, device="cpu", num_workers=2, read_batch_size=BATCH)
    list(loader)  # warm: workers started, numba compiled
    speeds = []
    for _ in range(EPOCHS):
        start = time.perf_counter()
        rows = sum(b.num_rows for b in loader)
        speeds.append(rows / (time.perf_counter() - start))
    stats = loader.stats()  # totals over the warm-up and the timed epochs, which read alike
    loader.close()
    return {"rows": rows, "rows_per_s": float(np.median(speeds)), "bytes_read": stats["bytes_read"] // (EPOCHS + 1),
            "bytes_staged": stats["bytes_staged"] // (EPOCHS + 1)}  # fmt: skip


def run(per_request=PER_REQUEST, save_results: bool = True) -> dict:
    rng = np.random.default_rng(0)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for k in per_request:
            item_schema, user_schema, requests = requests_of(k, rng)
            row = {"items_per_request": k, "requests": len(requests)}
            for name, cls in (("tabular", TabularWriter), ("dedup", DedupWriter)):
                path = os.path.join(tmp, f"{name}-{k}")
                with cls(path, item_schema, user_schema, requests_per_file=len(requests),
                         row_group_rows=max(1, 16_384 // (k if name == "dedup" else 1))) as writer:  # fmt: skip
                    writer.write(requests)
                measured = epoch(path)
                row[f"{name}_disk"] = writer.stats["bytes"]
                row.update({f"{name}_{key}": value for key, value in measured.items() if key != "rows"})
            row["shuffled_disk"] = shuffled_size(os.path.join(tmp, f"tabular-{k}"), os.path.join(tmp, f"shuffled-{k}.parquet"), rng)
            row["disk_cut"] = 1 - row["dedup_disk"] / row["tabular_disk"]
            row["shuffled_disk_cut"] = 1 - row["dedup_disk"] / row["shuffled_disk"]
            row["read_cut"] = 1 - row["dedup_bytes_read"] / row["tabular_bytes_read"]
            row["staged_cut"] = 1 - row["dedup_bytes_staged"] / row["tabular_bytes_staged"]
            row["speedup"] = row["dedup_rows_per_s"] / row["tabular_rows_per_s"]
            results.append(row)
            print(f"{k} items per request: disk -{row['disk_cut']:.0%}, staged -{row['staged_cut']:.0%}, {row['speedup']:.2f}x rows/s")
    at15 = next((r for r in results if r["items_per_request"] == 15), None)
    targets = []
    if at15 is not None:
        targets.append({"name": "de-dup: smaller on disk than tabular at 15 items per request", "value": at15["disk_cut"],
                        "goal": 0.4, "met": at15["disk_cut"] >= 0.4})  # fmt: skip
    result = {"config": {"impressions": IMPRESSIONS, "batch_size": BATCH, "epochs": EPOCHS, "recd_ratio": RECD_RATIO,
                         "user_features": USER_FEATURES, "item_features": ITEM_FEATURES},
              "results": results, "targets": targets}  # fmt: skip
    if save_results:
        result["path"] = save("dedup", result)
    return result


def report(result: dict) -> str:
    columns = [("items_per_request", "items/request"), ("tabular_disk", "tabular bytes"), ("dedup_disk", "de-dup bytes"),
               ("disk_cut", "disk saved"), ("shuffled_disk_cut", "disk saved vs shuffled tabular"), ("read_cut", "read saved"), ("staged_cut", "transfer saved"),
               ("tabular_rows_per_s", "tabular rows/s"), ("dedup_rows_per_s", "de-dup rows/s"), ("speedup", "rows/s ratio")]  # fmt: skip
    cfg = result["config"]
    head = (f"de-dup: {cfg['impressions']:,} impressions per layout; user features (dense, lists, mean ids) "
            f"{tuple(cfg['user_features'])}, item features {tuple(cfg['item_features'])}; RecD reports "
            f"{cfg['recd_ratio']}x end to end")  # fmt: skip
    return "\n\n".join([head, markdown_table(result["results"], columns), targets_table(result["targets"])])


def main(argv=None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m bench dedup", description=__doc__)
    parser.add_argument("--per-request", type=int, nargs="+", default=list(PER_REQUEST))
    args = parser.parse_args(argv)
    result = run(tuple(args.per_request))
    print(report(result))
    print(f"\nsaved {result['path']}")
