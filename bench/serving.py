"""Serving benchmark: eager against lazy logging of ranked lists into the SQLite KV store.

Requests rank 100 items; a user sees the head (6 items) and then whole pages of 9 with a
geometric number of pages (P(no further page) = 0.7, so most users see under 10% of the list).
Item features: 20 dense, 10 id lists (mean 5 ids); user features: 10 dense, 20 id lists (mean 20).
Both loggers see the same requests and scrolls. Measured: bytes and operations written to the KV
store, serialization CPU seconds (gather + encode, ranking time and pages), and the latency that
`log_ranking` adds to the ranking path (p50/p99 over requests); and the bytes and CPU of the
ranked items' features alone, which is what lazy logging changes (both write the user's row).
With --device cuda the ranked items' and the user's features are CUDA tensors, as a ranking model
holds them: the loggers gather the rows they log on the GPU and copy only those to the host
(results: serving-gpu.json).
"""

from __future__ import annotations

import os
import tempfile
import time

import numpy as np

from gpupre.serving import EagerLogger, FeatureCodec, LazyLogger, SqliteKV
from gpupre.serving.codec import encode_rows
from gpupre.serving.simulate import synthetic_features

from .common import markdown_table, save, targets_table

REQUESTS, ITEMS, HEAD, PAGE, P_STOP = 2000, 100, 6, 9, 0.7


def run(save_results: bool = True, device: str = "cpu") -> dict:
    rng = np.random.default_rng(0)
    requests = [(synthetic_features(ITEMS, 20, 10, 5, "item", rng), synthetic_features(1, 10, 20, 20, "user", rng)) for _ in range(20)]
    if device != "cpu":
        requests = [(items.to(device), user.to(device)) for items, user in requests]
    scrolls = HEAD + PAGE * rng.geometric(P_STOP, REQUESTS) - PAGE  # items seen: head, then whole pages
    out = {}
    for batch in requests[0]:  # the encoder is compiled (or loaded from numba's cache) before timing
        encode_rows(FeatureCodec(batch.schema), batch, [0])
    with tempfile.TemporaryDirectory() as tmp:
        for name, cls in (("eager", EagerLogger), ("lazy", LazyLogger)):
            store = SqliteKV(os.path.join(tmp, f"{name}.sqlite"))
            items0, user0 = requests[0]
            logger = cls(store, items0.schema, user0.schema)
            latencies = []
            for r in range(REQUESTS):
                items, user = requests[r % len(requests)]
                t = time.perf_counter()
                logger.log_ranking(r, np.arange(ITEMS), items, user)
                latencies.append(time.perf_counter() - t)
                if name == "lazy":
                    logger.on_paginate(r, int(scrolls[r]))
            logger.close()
            out[name] = {"logger": name, "requests": REQUESTS, "items_logged": logger.stats["items_logged"],
                         "kv_bytes": store.stats["bytes_written"], "kv_keys": store.stats["keys_written"],
                         "kv_put_ops": store.stats["put_ops"], "serialize_s": logger.stats["serialize_s"],
                         "item_bytes": logger.stats["bytes_logged"] - logger.stats["user_bytes_logged"],
                         "item_serialize_s": logger.stats["serialize_s"] - logger.stats["user_serialize_s"],
                         "p50_ms": 1e3 * float(np.percentile(latencies, 50)),
                         "p99_ms": 1e3 * float(np.percentile(latencies, 99))}  # fmt: skip
            store.close()
    eager, lazy = out["eager"], out["lazy"]
    bytes_cut = 1 - lazy["kv_bytes"] / eager["kv_bytes"]
    cpu_cut = 1 - lazy["serialize_s"] / eager["serialize_s"]
    targets = [
        {"name": "lazy logging: fewer bytes written than eager", "value": bytes_cut, "goal": 0.9, "met": bytes_cut >= 0.9},
        {"name": "lazy logging: less serialization CPU than eager", "value": cpu_cut, "goal": 0.9, "met": cpu_cut >= 0.9},
    ]
    # What laziness changes: the ranked items' share (both loggers write the user's row once a request)
    item_cuts = {"item_bytes_cut": 1 - lazy["item_bytes"] / eager["item_bytes"],
                 "item_serialize_cut": 1 - lazy["item_serialize_s"] / eager["item_serialize_s"]}  # fmt: skip
    result = {"config": {"device": device, "requests": REQUESTS, "items": ITEMS, "head": HEAD, "page": PAGE, "p_stop": P_STOP,
                         "mean_items_seen": float(np.minimum(scrolls, ITEMS).mean())},
              "results": [eager, lazy], "item_features": item_cuts, "targets": targets}  # fmt: skip
    if save_results:
        result["path"] = save("serving", result, filename="serving" if device == "cpu" else "serving-gpu")
    return result


def report(result: dict) -> str:
    columns = [("logger", "logger"), ("items_logged", "items logged"), ("kv_bytes", "KV bytes"), ("kv_keys", "KV keys"),
               ("kv_put_ops", "KV writes"), ("serialize_s", "serialization s"), ("p50_ms", "ranking p50 ms"),
               ("p99_ms", "ranking p99 ms"), ("item_bytes", "item bytes"), ("item_serialize_s", "item serialization s")]  # fmt: skip
    cfg = result["config"]
    head = (f"serving ({cfg.get('device', 'cpu')}): {cfg['requests']} requests of {cfg['items']} ranked items, head {cfg['head']}, pages of "
            f"{cfg['page']}, {cfg['mean_items_seen']:.1f} items seen on average; SQLite KV")  # fmt: skip
    items = result.get("item_features")
    note = "" if items is None else (f"the ranked items' features alone (the user's row is written by both): "
                                     f"{items['item_bytes_cut']:.1%} fewer bytes, {items['item_serialize_cut']:.1%} less serialization CPU")  # fmt: skip
    return "\n\n".join([head, markdown_table(result["results"], columns), note, targets_table(result["targets"])])


def main(argv=None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m bench serving", description=__doc__)
    parser.add_argument("--device", default="cpu", help="where the ranked features live: cpu or cuda")
    result = run(device=parser.parse_args(argv).device)
    print(report(result))
    print(f"\nsaved {result['path']}")
