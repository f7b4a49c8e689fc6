"""Pipeline: streaming fit on real files, JSON persistence, output schema, errors, eager runs."""

import json
import math
import re

import numpy as np
import pyarrow as pa
import pytest

import gpupre as gp
from gpupre.schema import Feature

from .helpers import assert_same, make_batch, rows_of

ROWS, ROW_GROUP = 4000, 1000


@pytest.fixture(scope="module")
def table_values():
    """Known columns: a log-normal with 20% missing, b normal, z all missing, s one id per row."""
    rng = np.random.default_rng(1)
    a = rng.lognormal(0.0, 1.0, ROWS).astype(np.float32)
    a[rng.random(ROWS) < 0.2] = np.nan
    b = rng.normal(5.0, 2.0, ROWS).astype(np.float32)
    return {"a": a, "b": b, "s": rng.integers(0, 100, ROWS)}


@pytest.fixture(scope="module")
def table_ds(tmp_path_factory, table_values):
    """table_values written as 4 row groups of 1000 rows."""
    v = table_values
    table = pa.table(
        {
            "a": pa.array(v["a"], from_pandas=True),  # NaN -> null (missing)
            "b": v["b"],
            "z": pa.nulls(ROWS, pa.float32()),
            "s": v["s"],
        }
    )
    path = tmp_path_factory.mktemp("pipeline") / "t.parquet"
    gp.storage.write_table(table, path, row_group_rows=ROW_GROUP)
    ds = gp.Dataset(path)
    assert len(ds.units()) == ROWS // ROW_GROUP
    return ds


def _after_fill_log(a):
    return np.log1p(np.maximum(np.where(np.isnan(a), np.float32(1.0), a), np.float32(0))).astype(np.float32)


def _moments(x):
    x = np.asarray(x, np.float64)
    x = x[~np.isnan(x)]
    return x.mean(), x.std(ddof=0)


# -- fitting ---------------------------------------------------------------------------------------
def test_fit_normalize_after_fill_and_log_and_minmax_match_numpy(table_ds, table_values):
    ops = [gp.FillMissing("a", 1.0), gp.Log1p("a"), gp.Normalize("a")]
    ops += [gp.MinMax("b"), gp.Normalize("b", out="nb")]
    fitted = gp.Pipeline(ops).fit(table_ds, progress=False)
    assert fitted.fitted and fitted.ops[:2] == tuple(ops[:2])
    norm_a, minmax_b, norm_b = fitted.ops[2:]
    mean, std = _moments(_after_fill_log(table_values["a"]))
    assert norm_a.mean == pytest.approx(mean, rel=1e-6) and norm_a.std == pytest.approx(std, rel=1e-6)
    b = table_values["b"]
    assert (minmax_b.min, minmax_b.max) == (float(b.min()), float(b.max()))
    # MinMax wrote b in place before Normalize(b): the second op sees values in [0, 1]
    mean, std = _moments((b - b.min()) / (b.max() - b.min()))
    assert norm_b.mean == pytest.approx(mean, rel=1e-5) and norm_b.std == pytest.approx(std, rel=1e-5)
    assert norm_b.out == ("nb",)


def test_fit_ignores_missing_values(table_ds, table_values):
    (norm,) = gp.Pipeline([gp.Normalize("a")]).fit(table_ds, progress=False).ops
    mean, std = _moments(table_values["a"])
    assert np.isnan(table_values["a"]).sum() > 500
    assert norm.mean == pytest.approx(mean, rel=1e-9) and norm.std == pytest.approx(std, rel=1e-9)


@pytest.mark.parametrize("sample_size, tolerance", [(200_000, 0.01), (1000, 0.06)])
def test_fit_bucketize_gives_equal_frequency_float32_boundaries(
    table_ds, table_values, sample_size, tolerance
):
    k = 5
    (op,) = gp.Pipeline([gp.Bucketize.fit("b", k)]).fit(table_ds, sample_size=sample_size, progress=False).ops
    boundaries = np.array(op.boundaries)
    assert len(boundaries) == k - 1
    assert np.all(np.diff(boundaries) >= 0)
    assert np.array_equal(boundaries.astype(np.float32).astype(np.float64), boundaries)
    counts = np.bincount(np.searchsorted(np.float32(boundaries), table_values["b"]), minlength=k)
    np.testing.assert_allclose(counts, ROWS / k, atol=tolerance * ROWS)


@pytest.mark.parametrize("right", [False, True])
def test_fit_bucketize_with_ties_cuts_between_distinct_values_and_leaves_no_bucket_empty(tmp_path, right):
    # 60% zeros, then 1, 2, 3: quantiles alone give boundaries (0, 0, 1), an empty bucket and 2, 3 merged;
    # and 1, 2, 3, 4 equally often split 2,000/2,000 whichever side a tie goes to
    heavy = np.repeat(np.float32([0, 1, 2, 3]), [2400, 800, 400, 400])
    even = np.repeat(np.float32([1, 2, 3, 4]), 1000)
    path = tmp_path / "ties.parquet"
    gp.storage.write_table(pa.table({"heavy": heavy, "even": even}), path)
    ops = [gp.Bucketize.fit("heavy", 4, right=right, out="h"), gp.Bucketize.fit("even", 2, right=right, out="e")]
    fitted = gp.Pipeline(ops).fit(gp.Dataset(path), progress=False)
    side = "right" if right else "left"
    for op, values, expected in zip(fitted.ops, (heavy, even), ([2400, 800, 400, 400], [2000, 2000])):
        assert np.all(np.diff(op.boundaries) > 0)
        counts = np.bincount(np.searchsorted(np.float32(op.boundaries), values, side=side), minlength=len(expected))
        assert counts.tolist() == expected


def test_equal_frequency_gives_fewer_boundaries_for_fewer_distinct_values():
    from gpupre.transforms.pipeline import equal_frequency

    assert equal_frequency(np.float32([5, 5, 5]), 4) == (5.0,)
    assert equal_frequency(np.float32([1, 2, 3]), 16) == (1.0, 2.0)
    assert equal_frequency(np.float32([1, 2, 3]), 16, right=True) == (2.0, 3.0)
    assert equal_frequency(np.float32([0] + [1] * 999), 2) == (0.0,)  # the cut before the long run


def test_fit_splits_a_multi_feature_op_into_one_op_per_feature(table_ds, table_values):
    fitted = gp.Pipeline([gp.Normalize(["a", "b"], out=["na", "nb"])]).fit(table_ds, progress=False)
    assert [(op.features, op.out) for op in fitted.ops] == [(("a",), ("na",)), (("b",), ("nb",))]
    for op, name in zip(fitted.ops, "ab"):
        mean, std = _moments(table_values[name])
        assert (op.mean, op.std) == (pytest.approx(mean, rel=1e-9), pytest.approx(std, rel=1e-9))
    assert fitted.ops[0].mean != pytest.approx(fitted.ops[1].mean, rel=0.1)


def test_fit_a_chain_fits_the_second_op_on_the_output_of_the_first(table_ds, table_values):
    fitted = gp.Pipeline([gp.Normalize("b"), gp.Bucketize.fit("b", 4)]).fit(table_ds, progress=False)
    norm, bucketize = fitted.ops
    normalized = (table_values["b"] - np.float32(norm.mean)) / np.float32(norm.std)
    expected = np.quantile(normalized.astype(np.float64), [0.25, 0.5, 0.75], method="inverted_cdf")
    np.testing.assert_allclose(bucketize.boundaries, expected, rtol=1e-5, atol=1e-6)
    assert abs(bucketize.boundaries[1]) < 0.1  # the median of normalized data, not of raw b (~5)


def test_fit_max_rows_uses_only_the_first_rows(table_ds, table_values):
    limit = 1500  # ends inside the second row group
    ops = [gp.MinMax("b", out="mb"), gp.Normalize("b")]
    minmax, norm = gp.Pipeline(ops).fit(table_ds, max_rows=limit, progress=False).ops
    head = table_values["b"][:limit]
    mean, std = _moments(head)
    assert (norm.mean, norm.std) == (pytest.approx(mean, rel=1e-9), pytest.approx(std, rel=1e-9))
    assert (minmax.min, minmax.max) == (float(head.min()), float(head.max()))
    assert _moments(table_values["b"])[0] != pytest.approx(mean, rel=1e-6)


def test_fit_an_all_missing_feature_raises_naming_it(table_ds):
    with pytest.raises(gp.ConfigError, match="'z'.*no non-missing values"):
        gp.Pipeline([gp.Normalize("b"), gp.Normalize("z")]).fit(table_ds, progress=False)



def test_fit_on_infinite_values_says_to_clamp_first(tmp_path):
    path = tmp_path / "inf.parquet"
    gp.storage.write_table(pa.table({"x": pa.array([1.0, np.inf, 2.0, -np.inf, 3.0], pa.float32())}), path)
    ds = gp.Dataset(path)
    for op in (gp.Normalize("x"), gp.MinMax("x")):
        with pytest.raises(gp.ConfigError, match=r"'x' holds 2 infinite values.*gp.Clamp\('x'"):
            gp.Pipeline([op]).fit(ds, progress=False)
    fitted = gp.Pipeline([gp.Clamp("x", -10.0, 10.0), gp.Normalize("x")]).fit(ds, progress=False)
    assert fitted.ops[1].mean == pytest.approx(np.mean([1, 10, 2, -10, 3]))

def test_fit_minmax_whose_range_overflows_float32_says_to_clamp_or_log_first(tmp_path):
    path = tmp_path / "wide.parquet"
    gp.storage.write_table(pa.table({"x": pa.array([-3e38, 1.0, 2.0, 3e38], pa.float32())}), path)
    ds = gp.Dataset(path)
    with pytest.raises(gp.ConfigError, match=r"MinMax\('x'\): the range .* overflows float32.*gp.Clamp\('x'"):
        gp.Pipeline([gp.MinMax("x")]).fit(ds, progress=False)
    fitted = gp.Pipeline([gp.Clamp("x", -1e38, 1e38), gp.MinMax("x")]).fit(ds, progress=False)
    out = fitted(ds.read(ds.units()[0]))
    np.testing.assert_allclose(out.dense[0], [0.0, 0.5, 0.5, 1.0], rtol=1e-6)

# -- persistence -----------------------------------------------------------------------------------
def _mixed_pipeline(table_ds):
    ops = [
        gp.FillMissing("a", 1.0),
        gp.Log1p("a"),
        gp.Normalize("a"),
        gp.Clamp("b", lo=0.0),  # hi stays +inf: JSON must carry infinities
        gp.Bucketize.fit("b", 8, right=True, out="bb"),
        gp.Hash("s", 50, salt=-7),
        gp.Truncate("s", 1, keep="last"),
        gp.Cross("s", "bb", 97, salt=3, out="x"),
        gp.OverlapCount("s", "bb", out="ov"),
    ]
    return gp.Pipeline(ops).fit(table_ds, progress=False)


def test_save_load_and_json_round_trip(table_ds, tmp_path):
    pipe = _mixed_pipeline(table_ds)
    pipe.save(tmp_path / "pipe.json")
    for loaded in (gp.Pipeline.load(tmp_path / "pipe.json"), gp.Pipeline.from_json(pipe.to_json())):
        assert loaded == pipe and loaded.ops == pipe.ops
        assert loaded.input_schema == pipe.input_schema == table_ds.schema
        batch = table_ds.read(table_ds.units()[2])
        assert_same(loaded(batch), pipe(batch), rtol=0)
    assert gp.Pipeline([gp.Log1p("a")]) != pipe


def _no_constants(name):
    raise ValueError(f"{name} is not strict JSON")


def test_saved_infinities_are_strict_json_and_files_with_bare_infinity_still_load(table_ds):
    pipe = gp.Pipeline([gp.Clamp("b", lo=0.0), gp.Bucketize("b", [-math.inf, 1.0, math.inf], out="bb"),
                        gp.FillMissing("a", -math.inf), gp.Truncate("s", 1, keep="last")], table_ds.schema)  # fmt: skip
    text = pipe.to_json()
    data = json.loads(text, parse_constant=_no_constants)
    assert data["ops"][0]["hi"] == "inf" and data["ops"][1]["boundaries"] == ["-inf", 1.0, "inf"]
    loaded = gp.Pipeline.from_json(text)
    assert loaded == pipe and loaded.input_schema == pipe.input_schema
    old = json.dumps({"ops": [op.to_dict() for op in pipe.ops], "input_schema": None})  # bare Infinity
    assert "Infinity" in old and gp.Pipeline.from_json(old) == pipe


def test_an_input_schema_of_labels_only_survives_a_round_trip():
    """A pipeline that feature pruning leaves with no feature still knows its input: the labels."""
    pipe = gp.Pipeline([], input_schema=gp.Schema((), labels=("label",)))
    loaded = gp.Pipeline.from_json(pipe.to_json())
    assert loaded.input_schema is not None and loaded.input_schema.labels == ("label",)
    assert gp.Pipeline.from_json(gp.Pipeline([]).to_json()).input_schema is None


# -- output schema ---------------------------------------------------------------------------------
SCHEMA = gp.Schema(
    (
        Feature("x", "dense", "user"),
        Feature("c", "sparse", "item"),
        Feature("w", "scored", "context"),
        Feature("y", "dense", "item"),
    ),
    ("label",),
    ("row_id",),
)


def test_output_schema_positions_kinds_and_groups():
    ops = [
        gp.Cross("w", "c", 10, out="wc"),
        gp.Bucketize("x", [1.0]),
        gp.Hash("y", 10, out="hy"),
        gp.Hash("w", 10, out="hw"),
        gp.OverlapCount("c", "w", out="ov"),
        gp.NGram("w", 2, 10, out="ng"),
        gp.Log1p("y"),
    ]
    out = gp.Pipeline(ops).output_schema(SCHEMA)
    assert [(f.name, f.kind, f.group) for f in out] == [
        ("x", "sparse", "user"),  # in place: same position, new kind
        ("c", "sparse", "item"),
        ("w", "scored", "context"),
        ("y", "dense", "item"),
        ("wc", "sparse", "context"),  # new outputs appended in op order, group of the first input
        ("hy", "sparse", "item"),
        ("hw", "scored", "context"),
        ("ov", "dense", "item"),
        ("ng", "sparse", "context"),
    ]
    assert (out.labels, out.extras) == (("label",), ("row_id",))
    assert gp.transforms.output_schema(ops, SCHEMA) == out


def test_output_schema_needs_a_schema():
    with pytest.raises(gp.ConfigError, match="no input schema"):
        gp.Pipeline([gp.Log1p("x")]).output_schema()


# -- errors ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "op, words",
    [(gp.Log1p("c"), ["Log1p", "'c'", "sparse"]), (gp.SortByScore("c"), ["SortByScore", "'c'", "scored"])],
)
def test_an_op_on_the_wrong_kind_raises_config_error(op, words):
    with pytest.raises(gp.ConfigError) as info:
        gp.Pipeline([op]).output_schema(SCHEMA)
    assert all(w in str(info.value) for w in words)


@pytest.mark.parametrize(
    "ops",
    [
        [gp.Hash("cc", 10)],
        [gp.Log1p("yy"), gp.Log1p("y", out="yy")],  # exists only after a later op
    ],
)
def test_an_unknown_input_raises_schema_error_with_a_hint(ops):
    with pytest.raises(gp.SchemaError, match=r"'(cc|yy)' does not exist.*did you mean '(c|y)'"):
        gp.Pipeline(ops).compile(SCHEMA)


@pytest.mark.parametrize(
    "ops, who",
    [
        ([gp.Log1p("x", out="y")], "the schema has"),
        ([gp.Cross("c", "w", 10, out="cw"), gp.Cross("w", "c", 10, out="cw")], "an earlier op writes"),
    ],
)  # fmt: skip
def test_an_output_never_overwrites_another_feature(ops, who):
    with pytest.raises(gp.ConfigError, match=rf"out='(y|cw)' names a feature that {who} already.*new name"):
        gp.Pipeline(ops).compile(SCHEMA)
    gp.Pipeline([gp.Log1p("x", out="x"), gp.Log1p("y")]).compile(SCHEMA)  # in place, by name or not


@pytest.mark.parametrize(
    "op",
    [gp.Bucketize("n", [0.5, 1.5], out="o"), gp.Hash("n", 10, out="o"), gp.Modulo("n", 10, out="o"),
     gp.Cross("c", "n", 10, out="o"), gp.Hash("m", 10, out="o")],
    ids=["Bucketize", "Hash", "Modulo", "Cross", "Hash-after-FillMissing"],
)  # fmt: skip
def test_ids_from_an_overlap_count_are_refused_when_checked_naming_both_ops(op):
    count = gp.OverlapCount("c", "w", out="n")
    pipe = gp.Pipeline([count, gp.FillMissing("n", 0.0, out="m"), gp.Log1p("m"), op])
    words = rf"{re.escape(str(op))}: its input '[nm]' comes from {re.escape(str(count))}.*gp.materialize"
    for check in (pipe.output_schema, pipe.compile):
        with pytest.raises(gp.ConfigError, match=words):
            check(SCHEMA)
    assert gp.Pipeline([count, gp.Normalize("n", 1.0, 2.0), gp.Bucketize("x", [1.0])]).compile(SCHEMA)


def test_compiling_an_unfitted_pipeline_says_to_fit():
    with pytest.raises(gp.ConfigError, match=r"unfitted.*Normalize.*fit\(dataset\)"):
        gp.Pipeline([gp.Log1p("x"), gp.Normalize("y")]).compile(SCHEMA)


def test_fit_validates_before_reading(table_ds):
    with pytest.raises(gp.SchemaError, match="'nope'"):
        gp.Pipeline([gp.Normalize("nope")]).fit(table_ds, progress=False)


@pytest.mark.parametrize("bad", ["hash", None, gp.Hash])
def test_pipeline_takes_only_ops(bad):
    with pytest.raises(gp.ConfigError, match="Pipeline takes ops"):
        gp.Pipeline([gp.Log1p("x"), bad])


# -- eager runs ------------------------------------------------------------------------------------
def test_eager_call_equals_the_reference_plan_and_caches_its_plan(synth_file, monkeypatch):
    ds = gp.Dataset(synth_file)
    dense = [f.name for f in ds.schema.dense]
    sparse = [f.name for f in ds.schema.sparse if f.kind == "sparse"]
    ops = [
        gp.FillMissing(dense, 0.0),
        gp.Log1p(dense),
        gp.Normalize(dense[0], 1.0, 2.0),
        gp.Bucketize(dense[1], [0.5, 1.0, 2.0]),
        gp.Hash(sparse, 1000),
        gp.Truncate("scored_000", 3),
        gp.SortByScore("scored_001", top_k=2),
        gp.Cross(sparse[0], dense[2], 500, out="x"),
        gp.OverlapCount(sparse[2], sparse[3], out="ov"),
    ]
    pipe = gp.Pipeline(ops)
    first, second = (ds.read(u) for u in ds.units()[:2])
    reference = pipe.compile(ds.schema, "reference")
    out = pipe(first)
    assert_same(out, reference.run(first))
    assert sum(len(r) for r in rows_of(out, "x")) > 0 and out.labels is first.labels
    assert len(pipe._plans) == 1
    monkeypatch.setattr(pipe, "compile", lambda *a, **k: pytest.fail("recompiled for the same schema"))
    assert_same(pipe(second), reference.run(second))
    assert len(pipe._plans) == 1


def test_eager_call_without_batch_schema_uses_the_input_schema():
    batch = make_batch({"x": [1.0, -1.0]}, sparse={"c": [[3], []]})
    schema = batch.schema
    batch.schema = None
    pipe = gp.Pipeline([gp.Log1p("x"), gp.Modulo("c", 2)], input_schema=schema)
    out = pipe(batch)
    assert rows_of(out, "c") == [[1], []]
    np.testing.assert_allclose(out.dense[0], [np.log(2.0), 0.0], rtol=1e-6)


@pytest.mark.parametrize(
    "text, words",
    [
        (None, ["cannot read the Pipeline file", "No such file"]),
        ("{not json", ["does not hold a saved Pipeline", "JSONDecodeError"]),
        ("[1, 2]", ["does not hold a saved Pipeline"]),
        ('{"ops": [{"op": "Hash", "features": ["c"], "num_buckets": 3, "bogus": 1}]}',
         ["saved op Hash has unknown parameters ['bogus']"]),
        ('{"ops": [{"op": "Hash", "num_buckets": 3}]}', ["saved op Hash has no 'features'"]),
        ('{"ops": [{"op": "Hash", "features": ["c"], "num_buckets": "a"}]}', ["Hash: num_buckets='a' must be"]),
    ],
)  # fmt: skip
def test_loading_a_file_that_is_no_saved_pipeline_names_the_file(tmp_path, text, words):
    path = tmp_path / "pipe.json"
    if text is not None:
        path.write_text(text)
    with pytest.raises(gp.DataError) as info:
        gp.Pipeline.load(path)
    assert all(w in str(info.value) for w in words + [str(path)])


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '{"ops": [{"op": "Cross", "features": ["a"], "num_buckets": 3}]}'])
def test_from_json_of_text_that_is_no_saved_pipeline_is_a_data_error(text):
    with pytest.raises(gp.DataError, match="the text does not hold a saved Pipeline"):
        gp.Pipeline.from_json(text)


def test_an_empty_schema_passed_is_used_not_replaced_by_the_fitted_one():
    pipe = gp.Pipeline([gp.Log1p("x")], input_schema=gp.Schema((gp.Feature("x", "dense"),)))
    with pytest.raises(gp.SchemaError, match="'x'"):
        pipe.output_schema(gp.Schema(()))


def test_saving_into_a_missing_directory_or_onto_a_directory_is_a_config_error(tmp_path):
    pipe = gp.Pipeline([gp.Hash("c", 3)])
    with pytest.raises(gp.ConfigError, match="its directory .*missing does not exist"):
        pipe.save(tmp_path / "missing" / "pipe.json")
    with pytest.raises(gp.ConfigError, match="is a directory; pass the path of a file in it"):
        pipe.save(tmp_path)
    pipe.save(tmp_path / "pipe.json")
    assert gp.Pipeline.load(tmp_path / "pipe.json") == pipe
    for call in (pipe.save, gp.Pipeline.load):
        with pytest.raises(gp.ConfigError, match="Pipeline path=None must be a str or os.PathLike"):
            call(None)


@pytest.mark.parametrize("kw, words", [({"max_rows": -5}, "max_rows=-5"), ({"max_rows": 1.5}, "max_rows=1.5"),
                                       ({"sample_size": 0}, "sample_size=0"), ({"seed": "a"}, "seed='a'")])  # fmt: skip
def test_fit_arguments_are_checked(table_ds, kw, words):
    with pytest.raises(gp.ConfigError, match=words):
        gp.Pipeline([gp.Normalize("b")]).fit(table_ds, progress=False, **kw)


def test_a_path_given_for_the_dataset_a_dataset_for_the_schema_or_a_table_for_the_batch_is_a_config_error(
    table_ds, tmp_path
):  # fmt: skip
    pipe = gp.Pipeline([gp.Normalize("b", 0.0, 1.0)])
    with pytest.raises(gp.ConfigError, match=r"fit dataset='.*' \(str\) is of the wrong type; pass a gp\.Dataset"):
        pipe.fit(str(tmp_path), progress=False)
    for call in (pipe.compile, pipe.output_schema, pipe.features_to_read):
        with pytest.raises(gp.ConfigError, match=r"schema=.* \(Dataset\) is of the wrong type; pass a gp\.Schema"):
            call(table_ds)
    with pytest.raises(gp.ConfigError, match=r"\(Dataset\) is of the wrong type; pass a gp\.Schema"):
        gp.transforms.compile(pipe, table_ds)
    table = table_ds.read_arrow(table_ds.units()[0])
    plan = pipe.compile(table_ds.schema, "reference")
    for run in (pipe, plan.run, pipe.compile(table_ds.schema, dedup=True).run):
        with pytest.raises(gp.ConfigError, match=r"batch=.* \(Table\) is of the wrong type; pass a gp\.Batch"):
            run(table)
