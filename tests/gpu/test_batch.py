"""Batch on a CUDA GPU: concat keeps the arrays on the device, as the host concat lays them out."""

from transforms.helpers import assert_same, make_batch

from gpupre import Batch


def test_concat_of_cuda_batches_stays_on_the_gpu_and_equals_the_host_concat():
    b = make_batch({"x": [1.0, 2.0, 3.0]}, {"a": [[1], [2, 3], []]}, {"s": ([[9], [], [8, 7]], [[0.5], [], [0.25, 0.75]])})
    parts = [b.rows(1, 3), b.rows(0, 0), b.take([2, 0])]
    on_gpu = Batch.concat([p.to("cuda") for p in parts])
    assert on_gpu.dense.is_cuda and on_gpu.sparse.lengths.is_cuda and on_gpu.sparse.values.is_cuda
    assert on_gpu.sparse.weights.is_cuda and on_gpu.num_rows == 4
    assert_same(on_gpu, Batch.concat(parts), rtol=0)
