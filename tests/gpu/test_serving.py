"""The serving side's GPU gather: only the logged rows leave the GPU, as the same bytes as on the CPU."""

import numpy as np
from serving.helpers import lazily_logged
from transforms.helpers import make_batch

from gpupre.serving import FeatureCodec, gather_rows


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
    cpu, gpu = lazily_logged(np.arange(100), (items, items.to("cuda")), items.schema, seen_upto=30)
    assert cpu == gpu
    assert sum(v is not None for v in cpu) == 33
