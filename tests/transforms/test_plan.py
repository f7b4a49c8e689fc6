"""Plan structure: what runs on the host, how many launches a batch costs, devices, bad batches."""

import logging
import sys

import numpy as np
import pytest
import torch

import gpupre as gp
from gpupre.schema import Feature
from gpupre.transforms.plan import S_COPY, S_SORT, S_TRUNCATE
from gpupre.transforms.reference import sigrid_hash

from .helpers import assert_same, make_batch, rows_of

A = [[1, 2, 3], [4], [], [5, 6]]
B = [[7, 8], [9, 10, 11], [12], []]


def _batch():
    scores = [[0.1, 0.3, 0.2], [0.5, 0.4], [], [0.9]]
    scored = {"w": ([[1, 2, 3], [4, 5], [], [6]], scores)}
    return make_batch({"x": [1.0, np.nan, 3.0, 4.0]}, {"a": A, "b": B}, scored)


def _compiled(ops, batch):
    """(cpu plan with a host stage, its output), after checking it against the reference executor."""
    pipe = gp.Pipeline(ops)
    plan = pipe.compile(batch.schema, "cpu", host_stage=True)
    out, expected = plan.run(batch), pipe.compile(batch.schema, "reference").run(batch)
    assert_same(out, expected)
    return plan, out


# -- the host stage --------------------------------------------------------------------------------
def test_truncate_and_sort_in_place_on_input_lists_run_on_the_host():
    batch = _batch()
    plan, out = _compiled([gp.Truncate("a", 1), gp.SortByScore("w", top_k=1)], batch)
    keys = [f.name for f in batch.schema.sparse]
    assert plan.host is not None
    assert plan.host.kind[keys.index("a")] == S_TRUNCATE
    assert plan.host.kind[keys.index("w")] == S_SORT
    assert plan.host.kind[keys.index("b")] == S_COPY
    assert plan.launches == 0  # nothing is left for the device
    assert rows_of(out, "a") == [[1], [4], [], [5]]
    assert rows_of(out, "w") == [[2], [4], [], [6]]


def test_a_cpu_plan_fuses_the_host_ops_into_its_levels_by_default():
    batch = _batch()
    pipe = gp.Pipeline([gp.Truncate("a", 1), gp.Hash("a", 10)])
    plan = pipe.compile(batch.schema, "cpu")
    assert plan.host is None
    assert plan.levels[0].kind[0] == S_TRUNCATE and plan.levels[0].maps[0, 2, 0] != 0  # hash fused
    assert_same(plan.run(batch), pipe.compile(batch.schema, "reference").run(batch))


def test_truncate_of_a_cross_output_stays_on_the_device_in_a_new_level():
    batch = _batch()
    cross = [gp.Cross("a", "b", 100, out="c")]
    alone, _ = _compiled(cross, batch)
    plan, out = _compiled(cross + [gp.Truncate("c", 1)], batch)
    assert plan.host is None
    assert len(plan.levels) == len(alone.levels) + 1
    assert plan.launches == alone.launches + 3
    assert [len(r) for r in rows_of(out, "c")] == [1, 1, 0, 0]


def test_truncate_after_a_cross_read_the_feature_leaves_the_cross_whole():
    batch = _batch()
    plan, out = _compiled([gp.Cross("a", "b", 100, out="c"), gp.Truncate("a", 1)], batch)
    assert plan.host is None
    assert [len(r) for r in rows_of(out, "c")] == [len(ra) * len(rb) for ra, rb in zip(A, B)]
    assert rows_of(out, "a") == [[1], [4], [], [5]]


def test_truncate_of_a_key_shared_with_another_output_leaves_that_output_whole():
    batch = _batch()
    plan, out = _compiled([gp.Hash("a", 10, out="h"), gp.Truncate("a", 1)], batch)
    assert plan.host is None
    assert rows_of(out, "h") == [[sigrid_hash(v, 0, 10) for v in row] for row in A]
    assert rows_of(out, "a") == [[1], [4], [], [5]]


def test_truncate_into_a_new_output_leaves_its_input_whole():
    batch = _batch()
    plan, out = _compiled([gp.Truncate("a", 1, out="t"), gp.SortByScore("w", top_k=1, out="top")], batch)
    assert plan.host is None
    assert rows_of(out, "a") == A and rows_of(out, "t") == [[1], [4], [], [5]]
    assert rows_of(out, "w") == rows_of(batch, "w") and rows_of(out, "top") == [[2], [4], [], [6]]


def test_truncate_of_a_hashed_copy_does_not_truncate_its_source():
    batch = _batch()
    plan, out = _compiled([gp.Hash("a", 10, out="h"), gp.Truncate("h", 1)], batch)
    assert plan.host is None
    assert rows_of(out, "a") == A
    assert rows_of(out, "h") == [[sigrid_hash(row[0], 0, 10)] if row else [] for row in A]


# -- launches --------------------------------------------------------------------------------------
def _criteo_like(num_dense, num_sparse):
    dense = [f"I{i}" for i in range(num_dense)]
    sparse = [f"C{i}" for i in range(num_sparse)]
    schema = gp.Schema(
        tuple(Feature(n, "dense") for n in dense) + tuple(Feature(n, "sparse") for n in sparse)
    )
    ops = [gp.FillMissing(dense, 0.0), gp.Log1p(dense)] + [gp.Normalize(n, 1.0, 2.0) for n in dense]
    ops += [gp.Hash(sparse, 1000), gp.Cross("C0", "C1", 1000, out="X0"), gp.Cross("C2", "C3", 1000, out="X1")]
    ops += [gp.Cross("I0", "C4", 1000, out="X2")]
    return gp.Pipeline(ops).compile(schema, "cpu")


def test_launches_do_not_grow_with_the_number_of_features():
    plans = [_criteo_like(d, s) for d, s in ((13, 26), (100, 100), (500, 500))]
    assert len(plans[-1].output_schema) == 1003
    launches = {plan.launches for plan in plans}
    assert len(launches) == 1 and 0 < launches.pop() <= 6
    assert f"{plans[0].launches} launches per batch" in plans[0].describe()


def test_an_empty_pipeline_costs_no_launch():
    plan = gp.Pipeline([]).compile(_batch().schema, "cpu")
    assert plan.launches == 0
    assert plan.host is None and plan.derived is None
    assert plan.dense.identity and all(level.identity for level in plan.levels)
    assert "0 launches per batch" in plan.describe()


# -- devices ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("device", ["cuda", "cuda:0"])
def test_cuda_without_a_gpu_is_backend_unavailable(device, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(gp.BackendUnavailable, match="no CUDA GPU is visible"):
        gp.Pipeline([]).compile(_batch().schema, device)


def test_cuda_without_cupy_names_the_install_command(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setitem(sys.modules, "cupy", None)  # import cupy raises ImportError
    with pytest.raises(gp.BackendUnavailable, match=r"pip install 'gpupre\[gpu\]'"):
        gp.Pipeline([]).compile(_batch().schema, "cuda")


def test_auto_falls_back_to_the_cpu_without_a_gpu_and_says_so(monkeypatch, caplog):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with caplog.at_level(logging.INFO, logger="gpupre"):
        plan = gp.Pipeline([gp.Hash("a", 10)]).compile(_batch().schema, "auto")
    assert plan.device == "cpu" and plan.executor.name == "cpu"
    assert "device='auto' chose 'cpu'" in caplog.text


def test_more_than_four_hash_or_modulo_in_a_row_on_one_feature_is_a_config_error():
    batch = _batch()
    four = [gp.Hash("a", 100), gp.Modulo("a", 50), gp.Hash("a", 10), gp.Modulo("a", 7)]
    _compiled(four, batch)
    with pytest.raises(gp.ConfigError, match="more than 4 Hash/Modulo in a row on one feature"):
        gp.Pipeline([*four, gp.Hash("a", 3)]).compile(batch.schema, "cpu")


def test_an_unknown_device_is_a_config_error():
    with pytest.raises(gp.ConfigError, match="'tpu'"):
        gp.compile(gp.Pipeline([]), _batch().schema, "tpu")


# -- running ---------------------------------------------------------------------------------------
def test_an_empty_pipeline_returns_the_batch_unchanged(device):
    batch = _batch()
    out = gp.Pipeline([]).compile(batch.schema, device).run(batch)
    assert_same(out, batch, rtol=0)
    assert out.num_rows == batch.num_rows
    if device == "cpu":  # the identity passes are skipped, not run as copies
        assert np.shares_memory(out.dense, batch.dense)
        assert np.shares_memory(out.sparse.values, batch.sparse.values)


def test_a_batch_with_other_keys_is_a_data_error(device):
    plan = gp.Pipeline([gp.Hash("a", 10)]).compile(_batch().schema, device)
    other = make_batch({"y": [1.0]}, {"a": [[1]], "b": [[2]]}, {"w": ([[3]], [[0.5]])})
    with pytest.raises(gp.DataError, match="compile the pipeline for this batch's schema"):
        plan.run(other)


def test_lengths_that_do_not_sum_to_the_values_are_a_data_error(device):
    batch = _batch()
    plan = gp.Pipeline([gp.Hash("a", 10)]).compile(batch.schema, device)
    kjt = batch.sparse
    sparse = gp.KeyedJagged(kjt.keys, kjt.lengths, kjt.values[:-1], kjt.weights[:-1])
    corrupt = gp.Batch(batch.num_rows, batch.dense_keys, batch.dense, sparse, schema=batch.schema)
    with pytest.raises(gp.DataError, match="lengths sum to"):
        plan.run(corrupt)

