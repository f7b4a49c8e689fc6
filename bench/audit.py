"""Audit benchmark: what pruning by the feature audit saves in reading, and what it costs in AUC.

Data: synthetic, 40 dense and 60 sparse features (30% of them id lists), 8 of them planted (the
label depends on them), one row per request, 150,000 rows in three files: one to train on, one to audit on
(validation), one to measure AUC on (test). Pipeline: fill, log1p, normalize (dense); truncate to
20 (lists); hash to 2,000 buckets (sparse). Model: the demo's DLRM-style model.

The model is trained on every feature (100 steps of 1,024 rows: two epochs), audited on 10,000
rows of the validation file (permutation importance, 5 shuffles), and pruned at several thresholds on the lower end of each feature's interval. For
each threshold a fresh model (same seed, same steps) is trained on the pruned features only, and
measured: test AUC, the stored bytes of the features it reads, and the loader over the training
file with that projection and pipeline (bytes read per epoch, rows/s: median of 3 epochs after a
warm-up one, 2 workers).
"""

from __future__ import annotations

import os
import time

import torch

import gpupre as gp
from gpupre.audit import audit, auc, prune
from gpupre.storage import CountingFileSystem, SynthSpec, synthesize
from gpupre.storage.synth import planted_features

from .common import markdown_table, repeats_main, save, targets_table
from .dlrm import DLRM, train
from .loader import _epochs
from .transforms import DATA_DIR

SPEC = SynthSpec(rows=150_000, num_dense=40, num_sparse=60, num_scored=0, num_planted=8, list_fraction=0.3,
                 mean_list_length=10, max_list_length=200, vocab_size=2_000, items_per_request=1,
                 row_group_rows=10_000, num_files=3, seed=5)  # fmt: skip
BUCKETS, BATCH, STEPS, WORKERS = 2_000, 1_024, 100, 2
AUDIT_ROWS = 10_000  # of the validation file: 5 shuffles x 100 features = 500 passes of the model over them
THRESHOLDS = (None, 0.0, 0.0005, 0.002, 0.005)  # None: every feature


def data(progress: bool):
    path = os.path.join(DATA_DIR, "audit-synth")
    if not os.path.exists(path):
        synthesize(path + ".tmp", SPEC, progress=progress)
        os.replace(path + ".tmp", path)
    return [gp.Dataset(p) for p in gp.Dataset(path).paths]


def pipeline(ds: gp.Dataset) -> gp.Pipeline:
    dense = [f.name for f in ds.schema.dense]
    sparse = [f.name for f in ds.schema.sparse]
    return gp.Pipeline([gp.FillMissing(dense, 0.0), gp.Log1p(dense), gp.Normalize(dense), gp.Truncate(sparse, 20),
                        gp.Hash(sparse, BUCKETS)])  # fmt: skip


def trained(ds: gp.Dataset, pipe: gp.Pipeline) -> DLRM:
    torch.manual_seed(0)
    schema = pipe.output_schema(ds.schema)
    model = DLRM(len(schema.dense), [f.name for f in schema.sparse], BUCKETS, dim=8)
    train(gp.DataLoader(ds, BATCH, pipe, device="cpu", num_workers=WORKERS, shuffle=True), model, steps=STEPS)
    return model


def test_auc(model: DLRM, ds: gp.Dataset, pipe: gp.Pipeline) -> float:
    model.eval()
    with torch.no_grad():
        pairs = [(model(b), b.labels) for b in gp.DataLoader(ds, 8_192, pipe, device="cpu", num_workers=0)]
    return auc(torch.cat([p for p, _ in pairs]).numpy(), torch.cat([y for _, y in pairs]).numpy())


def reading(ds: gp.Dataset, pipe: gp.Pipeline, repeats: int) -> dict:
    """Bytes read per epoch and rows/s of the loader over `ds` with `pipe`."""
    fs = CountingFileSystem()
    counted = gp.Dataset(ds.paths, features=list(ds.schema.names), filesystem=fs, label=ds.schema.labels)
    loader = gp.DataLoader(counted, BATCH, pipe, device="cpu", num_workers=WORKERS)
    epochs = _epochs(lambda: loader, repeats)
    loader.close()
    bytes_read = loader.stats()["bytes_read"] // (repeats + 1)  # counted over every epoch
    return {"rows": epochs["rows"], "rows_per_s": epochs["rows"] / epochs["epoch_s"], "bytes_read": bytes_read}


def run(repeats: int = 3, save_results: bool = True, progress: bool = True) -> dict:
    train_ds, validation, test = data(progress)
    full = pipeline(train_ds).fit(train_ds, progress=progress)
    model = trained(train_ds, full)
    held_out = list(gp.DataLoader(validation, AUDIT_ROWS, full, device="cpu", num_workers=0))[:1]
    start = time.perf_counter()
    report = audit(model, held_out, dataset=train_ds, pipeline=full, repeats=5, progress=progress)
    audit_s = time.perf_counter() - start
    planted = set(planted_features(SPEC))
    top = set(report.names[: len(planted)])
    rows = []
    for threshold in THRESHOLDS:
        if threshold is None:
            names, pipe, ds, stored = report.names, full, train_ds, report.dataset_bytes
        else:
            pruned = prune(report, full, threshold=threshold)
            names, pipe, ds, stored = pruned.features, pruned.pipeline, pruned.dataset(train_ds), pruned.stored_bytes
        if not names:
            continue
        score = test_auc(trained(ds, pipe), gp.Dataset(test.paths, features=list(ds.schema.names), label="label"), pipe)
        row = {"threshold": "all features" if threshold is None else threshold, "features": len(names),
               "planted_kept": len(planted & set(names)), "stored_bytes": stored, "test_auc": score,
               **reading(ds, pipe, repeats)}  # fmt: skip
        rows.append(row)
        if progress:
            print(f"threshold {row['threshold']}: {row['features']} features, AUC {score:.4f}, "
                  f"{row['bytes_read']:,} bytes read, {row['rows_per_s']:,.0f} rows/s")  # fmt: skip
    base = rows[0]
    for row in rows:
        row["bytes_read_ratio"] = row["bytes_read"] / base["bytes_read"]
        row["speedup"] = row["rows_per_s"] / base["rows_per_s"]
        row["auc_change"] = row["test_auc"] - base["test_auc"]
    targets = [{"name": f"audit: planted features in the top {len(planted)} (precision = recall)",
                "value": len(top & planted) / len(planted), "goal": None, "met": None}]  # fmt: skip
    result = {"config": {"spec": SPEC.__dict__, "steps": STEPS, "batch_size": BATCH, "workers": WORKERS,
                         "repeats": repeats, "audit_repeats": 5},
              "audit": {"seconds": audit_s, "rows": report.rows, "baseline_logloss": report.baseline,
                        "top": report.names[:12], "planted": sorted(planted)},
              "results": rows, "targets": targets}  # fmt: skip
    if save_results:
        result["path"] = save("audit", result)
    return result


def report(result: dict) -> str:
    a = result["audit"]
    spec = result["config"]["spec"]
    text = [f"audit of {spec['num_dense'] + spec['num_sparse']} features on {a['rows']:,} validation rows in "
            f"{a['seconds']:.1f}s; top: {', '.join(a['top'])}; planted: {', '.join(a['planted'])}",
            markdown_table(result["results"], [("threshold", "threshold (interval low >)"), ("features", "features kept"),
                                               ("planted_kept", "planted kept"), ("stored_bytes", "stored bytes"),
                                               ("bytes_read", "bytes read/epoch"), ("bytes_read_ratio", "of all"),
                                               ("rows_per_s", "loader rows/s"), ("speedup", "speedup"),
                                               ("test_auc", "test AUC"), ("auc_change", "AUC change")]),
            targets_table(result["targets"])]  # fmt: skip
    return "\n\n".join(text)


def main(argv=None) -> None:
    repeats_main("audit", __doc__, run, report, argv)
