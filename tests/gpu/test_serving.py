"""The serving side's GPU gather: only the logged rows leave the GPU, as the same bytes as on the CPU."""

import numpy as np
from transforms.helpers import make_batch

from gpupre.serving import FeatureCodec, LazyLogger, SqliteKV, gather_rows, item_key


def _items(n: int):
    rng = np.random.default_rng(0)
    return make_batch({"p": rng.random(n).tolist()}, {"a": [rng.integers(0, 99, rng.integers(0, 5)).tolist() for _ in range(n)]},
                      {"s": ([[1, 2]] * n, [[0.5, 0.25]] * n)})  # fmt: skip


def test_gather_from_cuda_tensors_gives_the_bytes_of_numpy():
    items = _items(500)
    rows = [499, 3, 0, 250]
    codec = FeatureCodec(items.schema)
    on_gpu = gather_rows(items.to("cuda"), rows)
    assert isinstance(on_gpu.dense, np.ndarray) and on_gpu.num_rows == 4
    assert codec.encode(on_gpu) == codec.encode(gather_rows(items, rows))


def test_lazy_logging_of_gpu_features_equals_the_cpu_path():
    items = _items(100)
    ids = np.arange(100)
    stores = [SqliteKV(), SqliteKV()]
    for store, batch in zip(stores, (items, items.to("cuda"))):
        logger = LazyLogger(store, items.schema)
        logger.log_ranking("r", ids, batch)
        logger.on_paginate("r", seen_upto=30)
        logger.close()
    keys = [item_key("r", i) for i in ids]
    assert stores[0].get_many(keys) == stores[1].get_many(keys)
    assert sum(v is not None for v in stores[0].get_many(keys)) == 33
