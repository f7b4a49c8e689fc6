"""Building small batches and comparing results, for the transforms tests."""

import numpy as np

import gpupre as gp
from gpupre.schema import DENSE, SCORED, SPARSE, Feature

EXECUTORS = ["reference", "cpu"]  # the CUDA executor joins in tests/gpu/


def make_batch(dense=None, sparse=None, scored=None, num_rows=None):
    """A host Batch from {name: [values]} / {name: [[ids], ...]} / {name: ([[ids]], [[scores]])}."""
    dense, sparse, scored = dense or {}, sparse or {}, scored or {}
    if num_rows is None:
        sizes = [len(v) for v in dense.values()] + [len(v) for v in sparse.values()]
        sizes += [len(v[0]) for v in scored.values()]
        num_rows = sizes[0] if sizes else 0
    features = [Feature(k, DENSE) for k in dense] + [Feature(k, SPARSE) for k in sparse]
    features += [Feature(k, SCORED) for k in scored]
    schema = gp.Schema(tuple(features))
    dense_matrix = np.array([np.asarray(v, np.float32) for v in dense.values()], np.float32).reshape(len(dense), num_rows)
    lengths, values, weights = [], [], []
    for rows in sparse.values():
        lengths += [len(r) for r in rows]
        values += [v for r in rows for v in r]
        weights += [1.0] * sum(len(r) for r in rows)
    for rows, scores in scored.values():
        lengths += [len(r) for r in rows]
        values += [v for r in rows for v in r]
        weights += [s for r in scores for s in r]
    kjt = gp.KeyedJagged(
        tuple(sparse) + tuple(scored),
        np.array(lengths, np.int32),
        np.array(values, np.int64),
        np.array(weights, np.float32) if scored else None,
    )
    return gp.Batch(num_rows, tuple(dense), dense_matrix, kjt, schema=schema)


def rows_of(batch, name):
    """A sparse feature of a batch as Python lists per row."""
    lengths, values, _ = batch.sparse.feature(name)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    return [values[offsets[r] : offsets[r + 1]].tolist() for r in range(len(lengths))]


def dense_of(batch, name):
    return batch.dense[batch.dense_keys.index(name)]


def run(ops, batch, device):
    return to_host(gp.Pipeline(ops).compile(batch.schema, device).run(batch))


def to_host(batch):
    """A batch with numpy arrays, wherever its arrays are."""
    return batch.map_arrays(lambda x: x.cpu().numpy() if hasattr(x, "cpu") else x)


def assert_same(a, b, rtol=1e-6):
    """Identical ids and weights, floats within rtol, same keys and kinds."""
    a, b = to_host(a), to_host(b)
    assert a.dense_keys == b.dense_keys
    assert a.sparse.keys == b.sparse.keys
    assert a.schema == b.schema
    np.testing.assert_allclose(np.asarray(a.dense), np.asarray(b.dense), rtol=rtol, atol=0, equal_nan=True)
    np.testing.assert_array_equal(a.sparse.lengths, b.sparse.lengths)
    np.testing.assert_array_equal(a.sparse.values, b.sparse.values)
    assert (a.sparse.weights is None) == (b.sparse.weights is None)
    if a.sparse.weights is not None:
        np.testing.assert_array_equal(a.sparse.weights, b.sparse.weights)


def assert_same_by_name(a, b, rtol=1e-6):
    """The same features with the same values, whatever their order in each batch."""
    a, b = to_host(a), to_host(b)
    assert sorted(a.dense_keys) == sorted(b.dense_keys) and sorted(a.sparse.keys) == sorted(b.sparse.keys)
    for name in a.dense_keys:
        np.testing.assert_allclose(dense_of(a, name), dense_of(b, name), rtol=rtol, atol=0, equal_nan=True)
    for name in a.sparse.keys:
        (la, va, wa), (lb, vb, wb) = a.sparse.feature(name), b.sparse.feature(name)
        np.testing.assert_array_equal(la, lb)
        np.testing.assert_array_equal(va, vb)
        if wa is not None and wb is not None:
            np.testing.assert_array_equal(wa, wb)
