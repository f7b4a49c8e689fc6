"""The audit on batches in GPU memory: the same shuffles and scores as on the host."""

import numpy as np
import torch

from gpupre.audit import permutation_importance, permuted, weight_scores
from tests.audit.test_importance import _batch


def test_permuted_and_weight_scores_on_the_gpu_equal_the_host():
    host = _batch()
    device = host.to("cuda")
    perm = torch.randperm(host.num_rows)
    for name in ("d1", "s0", "w"):
        a, b = permuted(host, name, perm), permuted(device, name, perm.cuda())
        torch.testing.assert_close(b.sparse.values.cpu(), a.sparse.values)
        torch.testing.assert_close(b.dense.cpu(), a.dense)
    weight = torch.randn(4, 3)
    table = torch.randn(10, 2)
    want = weight_scores([host], weight, lambda name, ids: table[ids])
    got = weight_scores([device], weight.cuda(), lambda name, ids: table.cuda()[ids])
    assert got.keys() == want.keys() and all(np.isclose(got[k], want[k], rtol=1e-5) for k in want)


def test_permutation_importance_on_the_gpu_equals_the_host():
    host = _batch()
    model = lambda b: 2 * b.dense[1] - b.dense[0]  # noqa: E731
    _, a = permutation_importance(model, [host], repeats=3, progress=False)
    _, b = permutation_importance(model, [host.to("cuda")], repeats=3, progress=False)
    assert all(np.allclose(a[f], b[f], rtol=1e-5, atol=1e-7) for f in a)
