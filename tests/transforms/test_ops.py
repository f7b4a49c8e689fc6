"""Golden vectors for every op, on every executor, and construction-time validation."""

import math
from dataclasses import replace
from fractions import Fraction

import numpy as np
import pytest
import torch

import gpupre as gp

from .helpers import dense_of, make_batch, rows_of, run
from gpupre.transforms.reference import hash_128_to_64, sigrid_hash

NAN = float("nan")


def test_fill_missing(device):
    out = run([gp.FillMissing("x", 5.0)], make_batch({"x": [NAN, 1.0, NAN]}), device)
    np.testing.assert_array_equal(dense_of(out, "x"), [5.0, 1.0, 5.0])


def test_log1p_clips_negatives_and_keeps_nan(device):
    out = run([gp.Log1p("x")], make_batch({"x": [-1.0, 0.0, math.e - 1, NAN]}), device)
    np.testing.assert_allclose(dense_of(out, "x"), [0.0, 0.0, 1.0, NAN], rtol=1e-6)


def test_clamp(device):
    out = run([gp.Clamp("x", 0.0, 10.0)], make_batch({"x": [-5.0, 5.0, 15.0, NAN, math.inf]}), device)
    np.testing.assert_array_equal(dense_of(out, "x"), [0.0, 5.0, 10.0, NAN, 10.0])


def test_normalize_and_zero_std(device):
    out = run([gp.Normalize("x", 2.0, 4.0), gp.Normalize("y", 1.0, 0.0)], make_batch({"x": [2.0, 6.0, -2.0], "y": [3.0, 1.0, NAN]}), device)
    np.testing.assert_array_equal(dense_of(out, "x"), [0.0, 1.0, -1.0])
    np.testing.assert_array_equal(dense_of(out, "y"), [2.0, 0.0, NAN])


def test_minmax_and_degenerate_range(device):
    out = run([gp.MinMax("x", 2.0, 6.0), gp.MinMax("y", 3.0, 3.0)], make_batch({"x": [2.0, 4.0, 6.0], "y": [3.0, 5.0, NAN]}), device)
    np.testing.assert_array_equal(dense_of(out, "x"), [0.0, 0.5, 1.0])
    np.testing.assert_array_equal(dense_of(out, "y"), [0.0, 0.0, NAN])


@pytest.mark.parametrize("right", [False, True])
def test_bucketize_matches_torch_and_puts_nan_last(device, right):
    x = [-1.0, 1.0, 1.5, 2.0, 2.0, 3.0, 4.0, -math.inf, math.inf, NAN]
    boundaries = [1.0, 2.0, 2.0, 3.0]
    out = run([gp.Bucketize("x", boundaries, right=right)], make_batch({"x": x}), device)
    expected = torch.bucketize(torch.tensor(x[:-1]), torch.tensor(boundaries), right=right).tolist()
    assert rows_of(out, "x") == [[e] for e in expected] + [[len(boundaries) + 1]]
    assert out.schema["x"].kind == "sparse"


@pytest.mark.parametrize("count", [1, 128, 129, 1000])
@pytest.mark.parametrize("right", [False, True])
def test_bucketize_many_boundaries_matches_torch(device, count, right):
    """Few boundaries are counted one by one, many are searched: both agree with torch."""
    rng = np.random.default_rng(count)
    boundaries = np.sort(rng.normal(size=count).round(1)).astype(np.float32)  # some repeated
    x = np.concatenate([rng.normal(size=5000), rng.normal(size=500).round(1), [-math.inf, math.inf, NAN]]).astype(np.float32)
    out = run([gp.Bucketize("x", boundaries.tolist(), right=right)], make_batch({"x": x.tolist()}), device)
    expected = torch.bucketize(torch.from_numpy(x[:-1]), torch.from_numpy(boundaries), right=right).tolist()
    assert rows_of(out, "x") == [[e] for e in expected] + [[count + 1]]


def test_hash_published_vectors(device):
    out = run([gp.Hash("c", num_buckets=100)], make_batch(sparse={"c": [[1, 2, 3], []]}), device)
    assert rows_of(out, "c") == [[60, 54, 54], []]


def test_hash_range_salt_and_one_bucket(device):
    ids = [[0, -1, 2**63 - 1, -(2**63), 12345]]
    batch = make_batch(sparse={"c": ids, "d": ids, "e": ids})
    out = run([gp.Hash("c", 7), gp.Hash("d", 7, salt=99), gp.Hash("e", 1)], batch, device)
    c, d = rows_of(out, "c")[0], rows_of(out, "d")[0]
    assert all(0 <= v < 7 for v in c + d)
    assert c == [sigrid_hash(v, 0, 7) for v in ids[0]]
    assert c != d
    assert rows_of(out, "e") == [[0] * 5]


def test_hash_of_dense_casts_and_missing_is_empty(device):
    out = run([gp.Hash("x", 100, out="h")], make_batch({"x": [1.9, NAN, -3.0]}), device)
    assert rows_of(out, "h") == [[60], [], [sigrid_hash(-3, 0, 100)]]
    assert out.dense_keys == ("x",)  # the input is kept when out= is given


def test_modulo_is_floor_mod(device):
    out = run([gp.Modulo("c", 7)], make_batch(sparse={"c": [[-1, 7, 15], [-(2**63)]]}), device)
    assert rows_of(out, "c") == [[6, 0, 1], [(-(2**63)) % 7]]


def test_truncate_first_last_and_zero(device):
    rows = [[1, 2, 3], [4], []]
    out = run(
        [gp.Truncate("a", 2), gp.Truncate("b", 2, keep="last"), gp.Truncate("c", 0)],
        make_batch(sparse={"a": rows, "b": rows, "c": rows}),
        device,
    )
    assert rows_of(out, "a") == [[1, 2], [4], []]
    assert rows_of(out, "b") == [[2, 3], [4], []]
    assert rows_of(out, "c") == [[], [], []]


def test_truncate_keeps_scores(device):
    batch = make_batch(scored={"s": ([[1, 2, 3]], [[0.1, 0.2, 0.3]])})
    out = run([gp.Truncate("s", 2, keep="last")], batch, device)
    assert rows_of(out, "s") == [[2, 3]]
    np.testing.assert_array_equal(out.sparse.feature("s")[2], np.float32([0.2, 0.3]))


def test_sort_by_score_stable_nan_last_top_k(device):
    scored = {k: ([[1, 2, 3, 4]], [[0.5, NAN, 0.9, 0.5]]) for k in ("d", "a", "t")}
    ops = [gp.SortByScore("d"), gp.SortByScore("a", descending=False), gp.SortByScore("t", top_k=2)]
    out = run(ops, make_batch(scored=scored), device)
    assert rows_of(out, "d") == [[3, 1, 4, 2]]
    assert rows_of(out, "a") == [[1, 4, 3, 2]]
    assert rows_of(out, "t") == [[3, 1]]
    np.testing.assert_array_equal(out.sparse.feature("t")[2], np.float32([0.9, 0.5]))


def test_ngram(device):
    out = run([gp.NGram("c", 2, 1000)], make_batch(sparse={"c": [[1, 2, 3], [7], []]}), device)
    expected = [sigrid_hash(_signed(hash_128_to_64(a, b)), 0, 1000) for a, b in ((1, 2), (2, 3))]
    assert rows_of(out, "c") == [expected, [], []]


def test_cross_every_pair_in_argument_order(device):
    batch = make_batch({"x": [5.0, NAN]}, sparse={"a": [[1, 2], [3]], "b": [[3], [4, 5]]})
    out = run([gp.Cross("a", "b", 1000, out="ab"), gp.Cross("b", "a", 1000, out="ba"), gp.Cross("a", "x", 50, out="ax")], batch, device)
    pair = lambda u, v, n: sigrid_hash(_signed(hash_128_to_64(u, v)), 0, n)  # noqa: E731
    assert rows_of(out, "ab") == [[pair(1, 3, 1000), pair(2, 3, 1000)], [pair(3, 4, 1000), pair(3, 5, 1000)]]
    assert rows_of(out, "ba")[0] == [pair(3, 1, 1000), pair(3, 2, 1000)]
    assert rows_of(out, "ab") != rows_of(out, "ba")
    assert rows_of(out, "ax") == [[pair(1, 5, 50), pair(2, 5, 50)], []]  # NaN counts as an empty list


def test_intersect_union_overlap(device):
    batch = make_batch(sparse={"a": [[1, 1, 2, 3], [], [5, 8]], "b": [[3, 1, 5], [1], [2, 3]]})
    ops = [gp.Intersect("a", "b", out="i"), gp.Union("a", "b", out="u"), gp.OverlapCount("a", "b", out="n")]
    out = run(ops, batch, device)
    assert rows_of(out, "i") == [[1, 3], [], []]
    assert rows_of(out, "u") == [[1, 2, 3, 5], [1], [5, 8, 2, 3]]
    np.testing.assert_array_equal(dense_of(out, "n"), [3.0, 0.0, 0.0])
    assert out.schema["n"].kind == "dense"


def test_empty_batch(device):
    batch = make_batch({"x": []}, sparse={"a": [], "b": []}, num_rows=0)
    out = run([gp.Log1p("x"), gp.Cross("a", "b", 10, out="c"), gp.Hash("a", 5)], batch, device)
    assert out.num_rows == 0 and out.sparse.keys == ("a", "b", "c") and len(out.sparse.values) == 0


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: gp.Bucketize("x", [2.0, 1.0]), "non-decreasing"),
        (lambda: gp.Bucketize("x", []), "non-empty"),
        (lambda: gp.Hash("c", num_buckets=0), "num_buckets=0"),
        (lambda: gp.Hash("c", num_buckets=-3), "num_buckets=-3"),
        (lambda: gp.Truncate("c", 3, keep="middle"), "keep='middle'"),
        (lambda: gp.Truncate("c", -1), "max_len=-1"),
        (lambda: gp.Clamp("x", 2.0, 1.0), "lo <= hi"),
        (lambda: gp.Modulo("c", 0), "n=0"),
        (lambda: gp.Normalize("x", mean=1.0), "both mean and std"),
        (lambda: gp.Cross("a", "b", 10), "out="),
        (lambda: gp.Hash(["a", "b"], 10, out=["x"]), "one output per feature"),
        (lambda: gp.NGram("c", 0, 10), "n=0"),
        (lambda: gp.Hash([], 10), "features"),
        (lambda: gp.Hash(5, 10), "features must be a feature name or a non-empty list of names, got 5"),
        (lambda: gp.Pipeline(gp.Hash("c", 10)), r"wrap a single op: gp.Pipeline\(\[op\]\)"),
        (lambda: gp.FillMissing("x", 10**400), "value=1000"),
        (lambda: gp.Clamp("x", "a", 1.0), "lo='a' must be a number"),
        (lambda: gp.Normalize("x", 1.0, "2"), "std='2' must be a number"),
        (lambda: gp.MinMax("x", 0, True), "max=True must be a number"),
        (lambda: gp.Bucketize("x", ("a",)), "must be a list of numbers"),
        (lambda: gp.Bucketize("x", 5), "must be a list of numbers"),
        (lambda: gp.Bucketize("x", (1.0,), right="yes"), "right='yes' must be True or False"),
        (lambda: gp.SortByScore("s", None), "descending=None must be True or False"),
        (lambda: gp.Hash("c", 2**63), "num_buckets=9223372036854775808 must be an integer >= 1"),
        (lambda: gp.Truncate("c", 2**64), "max_len="),
        (lambda: gp.Clamp("x", np.bool_(True)), "lo=True must be a number"),
        (lambda: gp.Hash("c", np.bool_(True)), "num_buckets=True must be an integer"),
        (lambda: gp.Hash("c", 10, salt=np.float64(1.0)), "salt=1.0 must be an int64"),
        (lambda: gp.Hash("c", np.uint64(2**63)), "num_buckets=9223372036854775808 must be an integer"),
        (lambda: gp.Clamp("x", np.float32("nan")), "lo <= hi, got lo=nan"),
        (lambda: gp.FillMissing("x", np.float64("nan")), r"value=nan must be a number \(not NaN\)"),
        (lambda: gp.Normalize("x", Fraction(1, 2), math.nan), "must be finite"),
        (lambda: gp.Normalize("x", Fraction(10**400), 1.0), "mean=Fraction.* must be a number"),
        (lambda: gp.Bucketize("x", "12"), "boundaries='12' must be a list of numbers"),
        (lambda: gp.Bucketize("x", [True, 2.0]), "must be a list of numbers"),
        (lambda: gp.Bucketize("x", ["0.5"]), "must be a list of numbers"),
        (lambda: gp.Bucketize("x", [10**400]), "must be a list of numbers"),
        (lambda: gp.Bucketize("x", [1.0], num_buckets="a"), "num_buckets='a' must be an integer >= 2"),
        (lambda: gp.Normalize("x", mean=1e39, std=1.0), r"mean=1e\+39 is beyond float32's range"),
        (lambda: gp.Normalize("x", mean=0.0, std=1e39), r"std=1e\+39 is beyond float32's range"),
        (lambda: gp.MinMax("x", -1e39, 1e39), r"min=-1e\+39 is beyond float32's range"),
        (lambda: gp.MinMax("x", 0.0, 1e39), r"max=1e\+39 is beyond float32's range"),
        (lambda: gp.MinMax("x", -3e38, 3e38),
         r"range max - min of min=-3e\+38, max=3e\+38 overflows float32.*gp.Clamp\('x', lo, hi\) or gp.Log1p\('x'\)"),
        (lambda: gp.FillMissing("x", -1e39), r"value=-1e\+39 is beyond float32's range"),
        (lambda: gp.Cross("a", num_buckets=10, out="o"), r"Cross takes exactly two features, got \('a',\)"),
        (lambda: gp.Intersect("a", out="o"), r"Intersect takes exactly two features, got \('a',\)"),
        (lambda: gp.Hash(["a", "b", "a"], 100), r"Hash: features \['a'\] are listed more than once"),
        (lambda: gp.Log1p(["x", "x"], out=["y", "z"]), r"Log1p: features \['x'\] are listed more than once"),
        (lambda: gp.Bucketize("x", [0.0, 1.0, 2.0], num_buckets=2),
         "3 boundaries make 4 buckets, more than num_buckets=2; pass num_buckets=4"),
    ],
)
def test_bad_parameters_raise_config_error(make, message):
    with pytest.raises(gp.ConfigError, match=message):
        make()


def test_parameters_at_the_edge_of_float32_are_taken_and_applied(device):
    top = float(np.finfo(np.float32).max)
    ops = [gp.Normalize("x", 0.0, top), gp.MinMax("y", -top / 2, top / 2), gp.FillMissing("z", -top)]
    out = run(ops, make_batch({"x": [-top, 0.0, top], "y": [-top / 2, 0.0, top / 2], "z": [NAN, 1.0, 2.0]}), device)
    np.testing.assert_array_equal(dense_of(out, "x"), [-1.0, 0.0, 1.0])
    np.testing.assert_array_equal(dense_of(out, "y"), [0.0, 0.5, 1.0])
    np.testing.assert_array_equal(dense_of(out, "z"), [-top, 1.0, 2.0])


def test_clamp_bounds_beyond_float32_are_no_bounds_as_they_were(device):
    """1e300 or sys.float_info.max, a common way to write 'no upper bound', clamps nothing."""
    top = float(np.finfo(np.float32).max)
    batch = make_batch({"x": [-top, -1.0, NAN, 2.0, top]})
    out = run([gp.Clamp("x", -1.0, 1e300)], batch, device)
    np.testing.assert_array_equal(dense_of(out, "x"), [-1.0, -1.0, NAN, 2.0, top])
    np.testing.assert_array_equal(dense_of(run([gp.Clamp("x", lo=-1e39, hi=-1e39)], batch, device), "x"),
                                  [-np.inf, -np.inf, NAN, -np.inf, -np.inf])  # fmt: skip


def test_ops_round_trip_through_dicts():
    from gpupre.transforms.ops import op_from_dict

    ops = [
        gp.Bucketize(["x", "y"], [1.0, 2.0], right=True, out=["bx", "by"]),
        gp.Cross("a", "b", 10, salt=3, out="ab"),
        gp.Intersect("a", "b", out="i"),
        gp.SortByScore("s", top_k=3),
        gp.Normalize("x", 1.5, 2.5),
    ]
    assert [op_from_dict(op.to_dict()) for op in ops] == ops



@pytest.mark.parametrize(
    "data, words",
    [
        ({"op": "Hash", "num_buckets": 3}, "saved op Hash has no 'features'"),
        ({"op": "Hash", "features": ["c"], "num_buckets": 3, "bogus": 1},
         r"saved op Hash has unknown parameters \['bogus'\]; Hash takes \['features', 'out', 'num_buckets', 'salt'\]"),
        ({"op": "Cross", "features": "ab", "num_buckets": 3, "out": ["ab"]},  # not Cross('a', 'b')
         "saved op Cross: features='ab' must be a list of two feature names"),
        ({"op": "Cross", "features": 5, "num_buckets": 3, "out": ["ab"]}, "saved op Cross: features=5 must be a list"),
        ({"op": "Hash", "features": ["c"], "num_buckets": "3"}, "Hash: num_buckets='3' must be an integer"),
        ({"op": "Truncate", "features": 7, "max_len": 3}, "Truncate: features must be a feature name"),
        ({"op": ["Hash"], "features": ["c"]}, r"unknown op \['Hash'\]"),
        (["Hash", "c"], r"a saved op must be a dict like Op.to_dict\(\) gives, got \['Hash', 'c'\]"),
    ],
    ids=["no-features", "unknown-parameter", "pair-as-a-string", "pair-not-a-list", "wrong-type", "features-a-number",
         "op-not-a-name", "not-a-dict"],
)  # fmt: skip
def test_a_saved_op_that_to_dict_did_not_write_is_a_config_error_naming_the_op(data, words):
    from gpupre.transforms.ops import op_from_dict

    with pytest.raises(gp.ConfigError, match=words):
        op_from_dict(data)


def _signed(x):
    return x - (1 << 64) if x >= 1 << 63 else x


@pytest.mark.parametrize("top_k", [None, 50, 5])
def test_sort_by_score_long_rows(device, top_k):
    rng = np.random.default_rng(1)
    scores = rng.integers(0, 20, 120).astype(np.float32)  # many ties
    scores[rng.random(120) < 0.1] = np.nan
    batch = make_batch(scored={"s": ([list(range(120)), [7]], [scores.tolist(), [1.0]])})
    out = run([gp.SortByScore("s", top_k=top_k)], batch, device)
    finite = [i for i in range(120) if not np.isnan(scores[i])]
    expected = sorted(finite, key=lambda i: -scores[i]) + [i for i in range(120) if np.isnan(scores[i])]
    assert rows_of(out, "s") == [expected[:top_k], [7]]


def test_numpy_numbers_are_taken_as_python_numbers_and_saved(tmp_path):
    ops = [gp.Normalize("x", np.float32(1), np.float64(2)), gp.Clamp("x", np.int64(0), np.int64(3)),
           gp.FillMissing("x", np.float32(1)), gp.Hash("c", np.int64(100), salt=np.int32(-3)),
           gp.Bucketize("x", np.array([0.5, 1.5], np.float32), right=np.bool_(True))]  # fmt: skip
    assert ops[0].mean == 1.0 and type(ops[0].mean) is float and type(ops[3].num_buckets) is int
    assert type(ops[4].right) is bool
    path = tmp_path / "p.json"
    gp.Pipeline(ops).save(path)
    assert gp.Pipeline.load(path).ops == tuple(ops)


def test_real_numbers_of_any_type_the_library_takes_elsewhere_are_taken_and_saved(tmp_path):
    ops = [gp.Clamp("x", np.float32(1.0), Fraction(7, 2)), gp.Hash("c", np.int64(100), salt=np.uint8(3)),
           gp.Bucketize("x", [np.float16(0.5), Fraction(3, 2), np.int32(2)], num_buckets=np.int64(4))]  # fmt: skip
    assert (ops[0].lo, ops[0].hi) == (1.0, 3.5) and type(ops[0].hi) is float
    assert (ops[1].num_buckets, ops[1].salt) == (100, 3) and type(ops[1].salt) is int
    assert ops[2].boundaries == (0.5, 1.5, 2.0) and type(ops[2].num_buckets) is int
    path = tmp_path / "p.json"
    gp.Pipeline(ops).save(path)
    assert gp.Pipeline.load(path).ops == tuple(ops)


def test_a_failed_save_leaves_the_file_as_it_was(tmp_path, monkeypatch):
    path = tmp_path / "p.json"
    gp.Pipeline([gp.Log1p("x")]).save(path)
    before = path.read_text()
    pipe = gp.Pipeline([gp.Hash("c", 10)])
    monkeypatch.setattr(type(pipe), "to_json", lambda self: (_ for _ in ()).throw(TypeError("not JSON")))
    with pytest.raises(TypeError):
        pipe.save(path)
    assert path.read_text() == before


def test_signed_zeros_agree_between_executors():
    """Log1p and Clamp compare, as the kernels do: the reference keeps -0.0 where they keep it."""
    batch = make_batch({"x": [-0.0, 0.0, -0.0], "y": [0.0, -0.0, 1.0]})
    ops = [gp.Log1p("x"), gp.Clamp("y", -1.0, -0.0)]
    ref, cpu = (run(ops, batch, device) for device in ("reference", "cpu"))
    assert ref.dense.view(np.int32).tolist() == cpu.dense.view(np.int32).tolist()


def test_a_cross_too_long_for_int32_lengths_is_a_data_error(device):
    ids = list(range(46_341))  # 46,341 ** 2 > 2**31 - 1
    batch = make_batch(sparse={"a": [ids], "b": [ids]})
    with pytest.raises(gp.DataError, match="more than 2\\*\\*31 - 1"):
        run([gp.Cross("a", "b", 10, out="c")], batch, device)


@pytest.mark.parametrize("device", ["reference", "cpu"])
def test_a_batch_whose_arrays_disagree_with_its_schema_is_a_data_error(device):
    good = make_batch({"x": [1.0, 2.0, 3.0]}, scored={"s": ([[1], [2, 3], []], [[0.5], [0.1, 0.2], []])})
    wrong = {
        "dense matrix": replace(good, dense=good.dense[:, :2]),
        "no scores": replace(good, sparse=gp.KeyedJagged(good.sparse.keys, good.sparse.lengths, good.sparse.values)),
        "scores": replace(good, sparse=gp.KeyedJagged(good.sparse.keys, good.sparse.lengths, good.sparse.values,
                                                      good.sparse.weights[:2])),  # fmt: skip
    }
    for words, batch in wrong.items():
        with pytest.raises(gp.DataError, match=words):
            run([gp.Log1p("x"), gp.SortByScore("s", top_k=1)], batch, device)
