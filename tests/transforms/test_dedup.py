"""DedupPlan: request features transformed once per request give what whole rows give."""

import numpy as np
import pytest
from transforms.helpers import EXECUTORS, assert_same_by_name, to_host

import gpupre as gp

USER_DENSE, ITEM_DENSE = ["user_dense_0", "user_dense_1"], ["item_dense_0", "item_dense_1", "item_dense_2"]


def pipeline(ds):
    return gp.Pipeline([
        gp.FillMissing(ITEM_DENSE + USER_DENSE, 0.0), gp.Log1p(USER_DENSE + ITEM_DENSE), gp.Normalize(ITEM_DENSE + USER_DENSE),
        gp.Bucketize.fit("user_dense_0", 4, out="user_bucket"), gp.Hash(["user_list_0", "item_list_1"], 1000),
        gp.Cross("user_list_1", "user_list_2", 500, out="user_cross"), gp.Intersect("item_list_0", "item_list_1", out="both"),
        gp.Truncate(["user_list_2"], 3),
    ]).fit(ds, progress=False)  # fmt: skip


@pytest.mark.parametrize("device", EXECUTORS)
def test_dedup_plan_equals_the_plan_on_expanded_rows(dedup_tables, device):
    ds = gp.Dataset(dedup_tables[0])
    pipe = pipeline(ds)
    dedup_plan = pipe.compile(ds.schema, device, dedup=True)
    whole_plan = pipe.compile(ds.schema, device)
    for unit in ds.units()[:3]:
        batch = ds.read(unit)
        out = to_host(dedup_plan.run(batch))
        assert out.requests.num_rows == batch.requests.num_rows  # request features ran once per request
        assert "user_cross" in out.requests.sparse.keys and "both" in out.sparse.keys
        assert_same_by_name(out.expand(), to_host(whole_plan.run(batch.expand())))
    assert sorted(dedup_plan.output_schema.names) == sorted(whole_plan.output_schema.names)
    assert dedup_plan.launches == dedup_plan.requests.launches + dedup_plan.items.launches


def test_a_plain_plan_given_a_dedup_batch_says_to_compile_with_dedup(dedup_tables):
    ds = gp.Dataset(dedup_tables[0])
    plan = gp.Pipeline([gp.Hash(["user_list_0"], 10)]).compile(ds.schema, "reference")
    with pytest.raises(gp.DataError, match=r"the batch is de-duplicated .* compile the pipeline with dedup=True"):
        plan.run(ds.read(ds.units()[0]))


def test_eager_pipeline_on_a_dedup_batch_uses_the_dedup_plan(dedup_tables):
    ds = gp.Dataset(dedup_tables[0])
    pipe = pipeline(ds)
    batch = ds.read(ds.units()[1])
    out = pipe(batch)
    assert out.requests is not None
    assert_same_by_name(out.expand(), pipe(batch.expand()))


def test_an_op_mixing_request_and_item_features_asks_for_expanded_reading(dedup_tables):
    ds = gp.Dataset(dedup_tables[0])
    pipe = gp.Pipeline([gp.Cross("user_list_0", "item_list_0", 100, out="x")])
    with pytest.raises(gp.ConfigError, match=r"request features \['user_list_0'\] and item features \['item_list_0'\].*expand=True"):
        pipe.compile(ds.schema, "cpu", dedup=True)
    expanded = gp.Dataset(dedup_tables[0], expand=True)
    assert not expanded.dedup and pipe(expanded.read(expanded.units()[0])).sparse.keys[-1] == "x"


@pytest.mark.parametrize("device", EXECUTORS)
def test_expanded_outputs_come_in_the_plain_plans_order(dedup_tables, device):
    # an item output made before a request output: a plain plan appends them in op order
    ds = gp.Dataset(dedup_tables[0])
    pipe = gp.Pipeline([
        gp.Log1p("item_dense_0", out="item_log"), gp.Hash("item_list_0", 10, out="item_hash"),
        gp.Log1p("user_dense_0", out="user_log"), gp.Hash("user_list_0", 10, out="user_hash"),
    ])  # fmt: skip
    batch = ds.read(ds.units()[0])
    out = to_host(pipe.compile(ds.schema, device, dedup=True).run(batch)).expand()
    whole = to_host(pipe.compile(ds.schema, device).run(batch.expand()))
    expected = pipe.output_schema(ds.schema)
    assert out.dense_keys == whole.dense_keys == tuple(f.name for f in expected.dense)
    assert out.sparse.keys == whole.sparse.keys == tuple(f.name for f in expected.sparse)
    assert out.dense_keys.index("item_log") < out.dense_keys.index("user_log")
    assert_same_by_name(out, whole)
    np.testing.assert_array_equal(out.dense, whole.dense)  # by position too: a model reads dense.T


def test_an_output_name_taken_on_the_other_side_names_the_op(dedup_tables):
    ds = gp.Dataset(dedup_tables[0])
    pipe = gp.Pipeline([gp.Hash("item_list_0", 10, out="user_list_0")])
    with pytest.raises(gp.ConfigError, match=r"Hash.*out=.user_list_0. names a feature that the schema has"):
        pipe.compile(ds.schema, "cpu", dedup=True)
