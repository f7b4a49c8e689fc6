"""The serving side's GPU gather: only the logged rows leave the GPU, as the same bytes as on the CPU."""

import numpy as np
import pytest
import torch
from serving.helpers import lazily_logged
from transforms.helpers import make_batch

import gpupre as gp
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


def test_rows_outside_a_cuda_batch_are_refused_before_the_gpu_indexes_with_them():
    items = _items(50)
    on_gpu = items.to("cuda")
    for rows in ([0, 50], torch.tensor([0, 50], device="cuda"), torch.tensor([-1], device="cuda")):
        with pytest.raises(gp.ConfigError, match="is outside the batch of 50 rows"):
            gather_rows(on_gpu, rows)
        with pytest.raises(gp.ConfigError, match="is outside the batch of 50 rows"):
            on_gpu.take(rows)
    # no device-side assert happened: the CUDA context still works
    taken = on_gpu.take(torch.tensor([49, 0], device="cuda"))
    assert taken.dense.device.type == "cuda" and taken.dense.cpu().numpy().tolist() == items.take([49, 0]).dense.tolist()
    assert gather_rows(on_gpu, torch.tensor([49], device="cuda")).num_rows == 1


def test_a_host_batch_takes_rows_given_as_a_cuda_tensor():
    items = _items(50)
    rows = torch.tensor([49, 0], device="cuda")
    assert items.take(rows).dense.tolist() == items.take([49, 0]).dense.tolist()
    assert gather_rows(items, rows).num_rows == 2
    with pytest.raises(gp.ConfigError, match="is outside the batch of 50 rows"):
        items.take(torch.tensor([50], device="cuda"))


def test_lazy_logging_of_gpu_features_equals_the_cpu_path():
    items = _items(100)
    cpu, gpu = lazily_logged(np.arange(100), (items, items.to("cuda")), items.schema, seen_upto=30)
    assert cpu == gpu
    assert sum(v is not None for v in cpu) == 33
