"""Batch and KeyedJagged: layout, zero-copy views, torch conversion, and malformed input."""

from dataclasses import replace

import numpy as np
import pyarrow as pa
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gpupre as gp
from gpupre import Batch

F = gp.Feature
INT64 = pa.list_(pa.int64())
FLOAT32 = pa.list_(pa.float32())


def mixed_table():
    """3 rows: two dense (one with a null), a sparse list, a scalar id column, a scored list."""
    return pa.table(
        {
            "d0": pa.array([1.5, None, 3.0], pa.float32()),
            "d1": pa.array([10.0, 20.0, 30.0], pa.float64()),
            "ids": pa.array([[1, 2], [], None], INT64),
            "one": pa.array([7, None, 9], pa.int32()),
            "sc": pa.array([[5], [6, 7], []], INT64),
            "sc.score": pa.array([[0.5], [0.25, 0.75], []], FLOAT32),
            "label": pa.array([1, 0, 1], pa.int8()),
            "rid": pa.array([100, 101, 102], pa.int64()),
            "name": pa.array(["a", "b", None]),
        }
    )


MIXED = gp.Schema(
    (F("d0", "dense"), F("ids", "sparse"), F("d1", "dense"), F("one", "sparse"), F("sc", "scored")),
    labels=("label",),
    extras=("rid", "name"),
)


def test_layout_of_a_mixed_batch():
    b = Batch.from_arrow(mixed_table(), MIXED)
    assert b.num_rows == 3 and b.dense_keys == ("d0", "d1")
    assert b.dense.dtype == np.float32 and b.dense.shape == (2, 3)
    np.testing.assert_array_equal(b.dense, [[1.5, np.nan, 3.0], [10.0, 20.0, 30.0]])
    assert b.sparse.keys == ("ids", "one", "sc")
    assert b.sparse.lengths.dtype == np.int32 and b.sparse.values.dtype == np.int64
    # key-major: all rows of "ids", then of "one" (null -> empty), then of "sc"
    np.testing.assert_array_equal(b.sparse.lengths, [2, 0, 0, 1, 0, 1, 1, 2, 0])
    np.testing.assert_array_equal(b.sparse.values, [1, 2, 7, 9, 5, 6, 7])
    assert b.sparse.weights.dtype == np.float32
    np.testing.assert_array_equal(b.sparse.weights, [1, 1, 1, 1, 0.5, 0.25, 0.75])
    assert b.labels.dtype == np.float32
    np.testing.assert_array_equal(b.labels, [1, 0, 1])
    np.testing.assert_array_equal(b.extras["rid"], [100, 101, 102])
    assert b.extras["name"].to_pylist() == ["a", "b", None]  # non-numeric extras stay Arrow
    assert b.inverse is None


def test_weights_are_none_without_a_scored_feature():
    b = Batch.from_arrow(mixed_table(), MIXED.select(["ids", "one"]))
    assert b.sparse.weights is None
    assert b.dense.shape == (0, 3)


def test_several_labels_stack_to_l_by_n():
    table = mixed_table().append_column("label2", pa.array([0.5, 0.5, 0.0]))
    b = Batch.from_arrow(table, gp.Schema((F("d1", "dense"),), labels=("label", "label2")))
    assert b.labels.shape == (2, 3)
    np.testing.assert_array_equal(b.labels[1], [0.5, 0.5, 0.0])


def test_keyed_jagged_feature_returns_the_slices_of_one_key():
    sparse = Batch.from_arrow(mixed_table(), MIXED).sparse
    lengths, values, weights = sparse.feature("sc")
    np.testing.assert_array_equal(lengths, [1, 2, 0])
    np.testing.assert_array_equal(values, [5, 6, 7])
    np.testing.assert_array_equal(weights, [0.5, 0.25, 0.75])
    lengths, values, weights = sparse.feature("one")
    np.testing.assert_array_equal(lengths, [1, 0, 1])
    np.testing.assert_array_equal(values, [7, 9])
    np.testing.assert_array_equal(weights, [1, 1])
    unweighted = gp.KeyedJagged(("a", "b"), np.array([1, 0, 2, 1]), np.array([4, 5, 6, 7]))
    assert unweighted.feature("b")[2] is None
    np.testing.assert_array_equal(unweighted.feature("b")[1], [5, 6, 7])


def test_null_list_is_empty_whatever_its_offsets_say():
    # row 1 is null but its offsets span two values; they must not leak into the batch
    arr = pa.ListArray.from_arrays(
        pa.array([0, 2, 4, 5], pa.int32()),
        pa.array([1, 2, 3, 4, 5], pa.int64()),
        mask=pa.array([False, True, False]),
    )
    b = Batch.from_arrow(pa.table({"a": arr}), gp.Schema((F("a", "sparse"),)))
    np.testing.assert_array_equal(b.sparse.lengths, [2, 0, 1])
    np.testing.assert_array_equal(b.sparse.values, [1, 2, 5])


def test_chunked_and_sliced_columns_read_like_contiguous_ones():
    table = mixed_table()
    expected = Batch.from_arrow(table.slice(1, 2), MIXED)
    chunked = pa.concat_tables([table.slice(1, 1), table.slice(2, 1)])
    assert chunked.column("ids").num_chunks == 2
    got = Batch.from_arrow(chunked, MIXED)
    np.testing.assert_array_equal(got.dense, expected.dense)
    np.testing.assert_array_equal(got.sparse.lengths, [0, 0, 0, 1, 2, 0])
    np.testing.assert_array_equal(got.sparse.values, expected.sparse.values)
    np.testing.assert_array_equal(got.sparse.values, [9, 6, 7])


# -- zero copy ------------------------------------------------------------------------------------
def single_kind_batch():
    return pa.record_batch(
        {
            "d": pa.array(np.arange(6, dtype=np.float32)),
            "a": pa.array([[1, 2], [3], [], [4, 5, 6], [7], [8]], INT64),
        }
    )


def arrow_values(arr: pa.Array, dtype) -> np.ndarray:
    """The whole data buffer of a primitive Arrow array, as numpy."""
    return np.frombuffer(arr.buffers()[1], dtype)


def test_single_feature_kinds_are_views_of_arrow_buffers():
    rb = single_kind_batch()
    b = Batch.from_arrow(rb, gp.Schema((F("d", "dense"), F("a", "sparse"))))
    assert np.shares_memory(b.dense, arrow_values(rb.column("d"), np.float32))
    assert np.shares_memory(b.sparse.values, arrow_values(rb.column("a").values, np.int64))


def test_single_feature_kinds_of_a_table_are_views_of_arrow_buffers():
    table = pa.Table.from_batches([single_kind_batch()])
    b = Batch.from_arrow(table, gp.Schema((F("d", "dense"), F("a", "sparse"))))
    assert np.shares_memory(b.dense, arrow_values(table.column("d").chunk(0), np.float32))
    assert np.shares_memory(b.sparse.values, arrow_values(table.column("a").chunk(0).values, np.int64))


def test_several_features_are_gathered_into_one_contiguous_array():
    table = mixed_table()
    b = Batch.from_arrow(table, MIXED)
    assert b.dense.flags.c_contiguous and b.sparse.values.flags.c_contiguous
    assert not np.shares_memory(b.dense, arrow_values(table.column("d0").chunk(0), np.float32))


# -- torch ----------------------------------------------------------------------------------------
def test_to_torch_shares_memory_and_keeps_dtypes():
    b = Batch.from_arrow(mixed_table(), MIXED)
    t = b.to_torch()
    pairs = [
        (b.dense, t.dense, torch.float32),
        (b.sparse.lengths, t.sparse.lengths, torch.int32),
        (b.sparse.values, t.sparse.values, torch.int64),
        (b.sparse.weights, t.sparse.weights, torch.float32),
        (b.labels, t.labels, torch.float32),
        (b.extras["rid"], t.extras["rid"], torch.int64),
    ]
    for array, tensor, dtype in pairs:
        assert isinstance(tensor, torch.Tensor) and tensor.dtype == dtype
        assert tensor.data_ptr() == array.ctypes.data
        assert np.shares_memory(tensor.numpy(), array)
    assert t.extras["name"] is b.extras["name"]
    assert t.sparse.keys == b.sparse.keys and t.num_rows == 3


def test_to_torch_of_a_zero_copy_arrow_view():
    rb = single_kind_batch()
    t = Batch.from_arrow(rb, gp.Schema((F("d", "dense"), F("a", "sparse")))).to_torch()
    assert np.shares_memory(t.dense.numpy(), arrow_values(rb.column("d"), np.float32))
    assert np.shares_memory(t.sparse.values.numpy(), arrow_values(rb.column("a").values, np.int64))


def test_to_cpu_gives_equal_tensors():
    b = Batch.from_arrow(mixed_table(), MIXED)
    t = b.to("cpu")
    assert t.dense.device.type == "cpu"
    torch.testing.assert_close(t.dense, torch.tensor(b.dense), equal_nan=True)
    assert t.sparse.values.tolist() == b.sparse.values.tolist()
    assert t.sparse.weights.tolist() == b.sparse.weights.tolist()
    assert t.labels.tolist() == b.labels.tolist()


@pytest.mark.skipif(torch.cuda.is_available(), reason="the error of a machine without a GPU")
def test_pinning_without_a_gpu_says_so():
    with pytest.raises(gp.BackendUnavailable, match="pin_memory needs a CUDA GPU"):
        Batch.from_arrow(mixed_table(), MIXED).pin_memory()


def test_map_arrays_applies_to_every_array_and_nothing_else():
    b = Batch.from_arrow(mixed_table(), MIXED)
    b.inverse = np.array([0, 0, 1], np.int32)
    seen = []

    def double(x):
        seen.append(x)
        return x * 2

    out = b.map_arrays(double)
    expected = [
        b.dense,
        b.sparse.lengths,
        b.sparse.values,
        b.sparse.weights,
        b.labels,
        b.extras["rid"],
        b.inverse,
    ]
    assert sorted(map(id, seen)) == sorted(map(id, expected))
    np.testing.assert_array_equal(out.sparse.values, b.sparse.values * 2)
    np.testing.assert_array_equal(out.inverse, [0, 0, 2])
    assert out.extras["name"] is b.extras["name"]
    assert out.sparse.keys == b.sparse.keys and out.dense_keys == b.dense_keys
    assert b.sparse.values[0] == 1  # the original batch is unchanged


# -- malformed input ------------------------------------------------------------------------------
def test_missing_column_is_a_schema_error_naming_it():
    with pytest.raises(gp.SchemaError, match=r"f\.parquet row group 2: column 'nope' is missing"):
        Batch.from_arrow(mixed_table(), gp.Schema((F("nope", "dense"),)), source="f.parquet row group 2")


def test_list_of_strings_is_a_schema_error_naming_the_feature():
    table = pa.table({"tags": pa.array([["x"], ["y", "z"]])})
    with pytest.raises(gp.SchemaError, match=r"src: sparse feature 'tags'.*list<"):
        Batch.from_arrow(table, gp.Schema((F("tags", "sparse"),)), source="src")


def test_string_dense_column_is_a_schema_error():
    table = pa.table({"city": pa.array(["x", "y"])})
    with pytest.raises(gp.SchemaError, match="'city' must be a number column"):
        Batch.from_arrow(table, gp.Schema((F("city", "dense"),)))


def test_null_id_inside_a_list_is_a_data_error():
    table = pa.table({"ids": pa.array([[1], [2, None]], INT64)})
    with pytest.raises(gp.DataError, match=r"src: sparse feature 'ids' holds 1 null ids"):
        Batch.from_arrow(table, gp.Schema((F("ids", "sparse"),)), source="src")


def test_scored_feature_with_fewer_scores_than_ids_names_the_row():
    table = pa.table(
        {"sc": pa.array([[1], [2, 3], [4]], INT64), "sc.score": pa.array([[0.1], [0.2], [0.4]], FLOAT32)}
    )
    with pytest.raises(gp.DataError, match=r"src: scored feature 'sc' row 1 has 2 ids but 1 scores"):
        Batch.from_arrow(table, gp.Schema((F("sc", "scored"),)), source="src")


def test_null_score_inside_a_list_is_a_data_error():
    table = pa.table({"sc": pa.array([[1], [2, 3]], INT64), "sc.score": pa.array([[0.1], [0.2, None]], FLOAT32)})
    with pytest.raises(gp.DataError, match=r"src: score column 'sc.score' holds 1 null scores"):
        Batch.from_arrow(table, gp.Schema((F("sc", "scored"),)), source="src")


@pytest.mark.parametrize("to_torch", [False, True])
def test_take_refuses_masks_and_rows_outside_the_batch(to_torch):
    batch = Batch.from_arrow(mixed_table(), MIXED)
    batch = batch.to_torch() if to_torch else batch
    mask = np.array([True, False, True])
    with pytest.raises(gp.ConfigError, match="rows must be integers, got (torch.)?bool"):
        batch.take(torch.from_numpy(mask) if to_torch else mask)
    assert batch.take(np.flatnonzero(mask)).num_rows == 2 and batch.take([]).num_rows == 0
    with pytest.raises(gp.ConfigError, match="rows must be integers, got (torch.)?float"):
        batch.take(torch.tensor([0.0, 1.0]) if to_torch else np.array([0.0, 1.0]))
    with pytest.raises(gp.ConfigError, match="rows must be integers, got float"):
        batch.take([0.0, 1.0])
    # checked before any indexing: on a GPU a row outside would be a device-side assert
    for rows in ([0, 3], np.array([0, 3]), torch.tensor([[0], [3]], dtype=torch.int32)):
        with pytest.raises(gp.ConfigError, match=r"take: row 3 is outside the batch of 3 rows; pass rows in \[0, 3\)"):
            batch.take(rows)
    for rows in ([-1], torch.tensor([2, -1])):  # torch would take -1 as the last row
        with pytest.raises(gp.ConfigError, match="row -1 is outside"):
            batch.take(rows)
    with pytest.raises(gp.ConfigError, match="outside the batch"):
        batch.rows(2, 5)
    assert batch.take(torch.tensor([2, 0], dtype=torch.int32)).num_rows == 2


# -- hypothesis: jagged shapes against a plain-Python construction --------------------------------
IDS = st.one_of(st.integers(-(2**63), 2**63 - 1), st.sampled_from([-(2**63), 2**63 - 1, 0, -1]))
ROW = st.one_of(
    st.none(),
    st.lists(IDS, max_size=3),
    st.lists(IDS, min_size=100, max_size=130),  # a long list
)


@st.composite
def jagged_tables(draw):
    num_rows = draw(st.integers(0, 6))
    kinds = draw(st.lists(st.sampled_from(["sparse", "scored", "scalar"]), min_size=1, max_size=3))
    columns, features, per_feature = {}, [], []
    for i, kind in enumerate(kinds):
        name = f"f{i}"
        if kind == "scalar":
            rows = draw(st.lists(st.one_of(st.none(), IDS), min_size=num_rows, max_size=num_rows))
            columns[name] = pa.array(rows, pa.int64())
            lists = [[] if r is None else [r] for r in rows]
        else:
            rows = draw(st.lists(ROW, min_size=num_rows, max_size=num_rows))
            columns[name] = pa.array(rows, INT64)
            lists = [r or [] for r in rows]
        scores = None
        if kind == "scored":  # score j of a row is j / 4 (exact in float32); a null list has null scores
            columns[name + ".score"] = pa.array(
                [None if r is None else [j / 4 for j in range(len(r))] for r in rows], FLOAT32
            )
            scores = [[j / 4 for j in range(len(r))] for r in lists]
        features.append(F(name, "scored" if kind == "scored" else "sparse"))
        per_feature.append((lists, scores))
    table = pa.table(columns)
    split = draw(st.integers(0, num_rows))  # several chunks, as a reader may produce
    table = pa.concat_tables([table.slice(0, split), table.slice(split)])
    return table, gp.Schema(tuple(features)), per_feature


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(jagged_tables())
def test_from_arrow_matches_a_plain_python_construction(case):
    table, schema, per_feature = case
    b = Batch.from_arrow(table, schema)
    any_scored = any(scores is not None for _, scores in per_feature)
    lengths = [len(r) for lists, _ in per_feature for r in lists]
    values = [v for lists, _ in per_feature for r in lists for v in r]
    weights = [
        w
        for lists, scores in per_feature
        for i, r in enumerate(lists)
        for w in (scores[i] if scores else [1.0] * len(r))
    ]
    assert b.num_rows == table.num_rows
    assert b.sparse.lengths.dtype == np.int32 and b.sparse.values.dtype == np.int64
    assert b.sparse.lengths.tolist() == lengths
    assert b.sparse.values.tolist() == values
    if any_scored:
        assert b.sparse.weights.dtype == np.float32 and b.sparse.weights.tolist() == weights
    else:
        assert b.sparse.weights is None
    for k, (lists, _) in enumerate(per_feature):
        ln, vals, _ = b.sparse.feature(f"f{k}")
        assert ln.tolist() == [len(r) for r in lists]
        assert vals.tolist() == [v for r in lists for v in r]


def test_take_rows_and_concat_keep_the_key_major_layout():
    from transforms.helpers import assert_same, make_batch, rows_of

    b = make_batch({"x": [1.0, 2.0, 3.0]}, {"a": [[1, 2], [], [3]]}, {"w": ([[7], [8, 9], []], [[0.1], [0.2, 0.3], []])})
    t = b.take([2, 0, 0])
    assert rows_of(t, "a") == [[3], [1, 2], [1, 2]] and rows_of(t, "w") == [[], [7], [7]]
    assert t.dense.tolist() == [[3.0, 1.0, 1.0]]
    np.testing.assert_allclose(t.sparse.weights, [1, 1, 1, 1, 1, 0.1, 0.1])
    assert_same(gp.Batch.concat([b.rows(0, 2), b.rows(2, 3), b.rows(3, 3)]), b, rtol=0)
    assert b.rows(1, 1).num_rows == 0


def test_concat_refuses_no_batches_and_batches_that_differ():
    from transforms.helpers import make_batch

    b = make_batch({"x": [1.0, 2.0]}, {"a": [[1], [2]], "b": [[3], []]})
    with pytest.raises(gp.ConfigError, match="got no batches"):
        Batch.concat([])
    swapped = make_batch({"x": [3.0]}, {"b": [[4]], "a": [[5]]})  # would file b's ids under a
    with pytest.raises(gp.ConfigError, match=r"batch 1 has sparse_keys=\('b', 'a'\) but batch 0 has sparse_keys=\('a', 'b'\)"):
        Batch.concat([b, swapped])
    with pytest.raises(gp.ConfigError, match="batch 2 has dense_keys=.*'y'"):
        Batch.concat([b, b, make_batch({"y": [1.0]}, {"a": [[1]], "b": [[2]]})])
    with pytest.raises(gp.ConfigError, match="batch 1 has num_labels=1 but batch 0 has num_labels=0"):
        Batch.concat([b, replace(b, labels=np.zeros(2, np.float32))])
    with pytest.raises(gp.ConfigError, match=r"batch 1 has extras=\['id'\] but batch 0 has extras=\[\]"):
        Batch.concat([b, replace(b, extras={"id": np.arange(2)})])
    assert Batch.concat([b]) is b and Batch.concat(iter([b, b])).num_rows == 4



def test_concat_of_torch_batches_gives_the_host_concat_on_their_device():
    from transforms.helpers import assert_same, make_batch

    b = make_batch({"x": [1.0, 2.0, 3.0]}, {"a": [[1], [2, 3], []]}, {"s": ([[9], [], [8, 7]], [[0.5], [], [0.25, 0.75]])})
    b = replace(b, labels=np.array([[0, 1, 0], [1, 1, 0]], np.float32), extras={"rid": np.arange(3) + 100},
                row_keys=np.arange(3) + 7)  # fmt: skip
    parts = [b.rows(1, 3), b.rows(0, 0), b.take([2, 0])]
    host = Batch.concat(parts)
    on_torch = Batch.concat([p.to_torch() for p in parts])
    arrays = [on_torch.dense, on_torch.sparse.lengths, on_torch.sparse.values, on_torch.sparse.weights,
              on_torch.labels, on_torch.extras["rid"], on_torch.row_keys]  # fmt: skip
    assert all(isinstance(x, torch.Tensor) for x in arrays)  # not moved to the host
    assert on_torch.sparse.lengths.dtype == torch.int32 and on_torch.num_rows == 4
    assert_same(on_torch, host, rtol=0)
    assert on_torch.labels.tolist() == host.labels.tolist() == [[1, 0, 0, 0], [1, 0, 0, 1]]
    assert on_torch.extras["rid"].tolist() == [101, 102, 102, 100] and on_torch.row_keys.tolist() == [8, 9, 9, 7]


def test_concat_refuses_batches_on_different_devices():
    from transforms.helpers import make_batch

    b = make_batch({"x": [1.0, 2.0]}, {"a": [[1], [2]]})
    with pytest.raises(gp.ConfigError, match=r"batch 1 has device='cpu' but batch 0 has device='host \(numpy\)'; "
                                             r"move them to one device first \(batch.to\(device\)\)"):  # fmt: skip
        Batch.concat([b, b.to_torch()])


def test_feature_of_an_unknown_key_is_a_schema_error_naming_it():
    sparse = Batch.from_arrow(mixed_table(), MIXED).sparse
    with pytest.raises(gp.SchemaError, match="sparse feature 'id' does not exist .*did you mean 'ids'"):
        sparse.feature("id")


def test_to_torchrec_is_a_real_keyed_jagged_tensor_over_the_same_memory():
    pytest.importorskip("torchrec", reason="make test installs torchrec 1.9.2 with fbgemm-gpu-cpu")
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor
    from transforms.helpers import make_batch

    b = make_batch({"x": [1.0, 2.0]}, {"a": [[1, 2], []], "b": [[3], [4, 5]]}, {"w": ([[6], [7, 8]], [[0.5], [0.25, 0.75]])})
    kjt = b.to_torchrec()
    assert isinstance(kjt, KeyedJaggedTensor) and kjt.keys() == ["a", "b", "w"]
    assert kjt["b"].values().tolist() == [3, 4, 5] and kjt["b"].lengths().tolist() == [1, 2]
    assert kjt["w"].weights().tolist() == [0.5, 0.25, 0.75] and kjt["a"].weights().tolist() == [1.0, 1.0]
    assert kjt.offsets().tolist() == [0, 2, 2, 3, 5, 6, 8]
    assert kjt.values().data_ptr() == torch.from_dlpack(b.sparse.values).data_ptr()  # no copy
    assert kjt.to_dict()["a"].values().tolist() == [1, 2]


def test_to_torchrec_strides_by_the_batch_rows_even_without_sparse_features():
    pytest.importorskip("torchrec", reason="make test installs torchrec 1.9.2 with fbgemm-gpu-cpu")
    from transforms.helpers import make_batch

    assert make_batch({"x": [1.0, 2.0, 3.0]}, {}).to_torchrec().stride() == 3  # torchrec would infer 0
    assert make_batch({"x": [1.0, 2.0]}, {"a": [[1, 2], []]}).to_torchrec().stride() == 2


# -- de-duplicated batches ----------------------------------------------------------------------
def _dedup_batch():
    """3 requests (user features) and 5 rows (item features): rows 0-1 request 0, 2 request 1, 3-4 request 2."""
    from transforms.helpers import make_batch

    users = make_batch({"age": [20.0, 30.0, 40.0]}, {"hist": [[1, 2], [3], []]})
    items = make_batch({"price": [1.0, 2.0, 3.0, 4.0, 5.0]}, {"cat": [[10], [11, 12], [], [13], [14]]},
                       {"tags": ([[5], [], [6, 7], [8], []], [[0.5], [], [0.25, 0.75], [1.0], []])})  # fmt: skip
    labels = np.array([0, 1, 0, 0, 1], np.float32)
    return replace(items, labels=labels, extras={"item_id": np.arange(5) + 100}, inverse=np.array([0, 0, 1, 2, 2], np.int32),
                   requests=replace(users, extras={"request_id": np.array([7, 8, 9])}))  # fmt: skip


def test_expand_gathers_request_features_onto_their_rows():
    from transforms.helpers import rows_of

    b = _dedup_batch()
    e = b.expand()
    assert e.num_rows == 5 and e.requests is None and e.inverse is None
    assert e.dense_keys == ("age", "price") and e.sparse.keys == ("hist", "cat", "tags")
    assert e.dense.tolist() == [[20, 20, 30, 40, 40], [1, 2, 3, 4, 5]]
    assert rows_of(e, "hist") == [[1, 2], [1, 2], [3], [], []]
    assert rows_of(e, "tags") == [[5], [], [6, 7], [8], []]
    np.testing.assert_array_equal(e.sparse.weights, [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0.5, 0.25, 0.75, 1.0])
    assert e.extras["request_id"].tolist() == [7, 7, 8, 9, 9] and e.labels.tolist() == [0, 1, 0, 0, 1]
    t = e.to_torch()
    assert gp.Batch.expand(t) is t


def test_expand_follows_the_schemas_order_on_numpy_and_torch():
    from transforms.helpers import assert_same, rows_of

    b = _dedup_batch()
    features = (F("price", "dense"), F("age", "dense"), F("cat", "sparse"), F("tags", "scored"), F("hist", "sparse"))
    b = replace(b, schema=gp.Schema(features))
    e = b.expand()
    assert e.dense_keys == ("price", "age") and e.sparse.keys == ("cat", "tags", "hist")
    assert e.dense.tolist() == [[1, 2, 3, 4, 5], [20, 20, 30, 40, 40]]
    assert rows_of(e, "hist") == [[1, 2], [1, 2], [3], [], []] and rows_of(e, "tags") == [[5], [], [6, 7], [8], []]
    np.testing.assert_array_equal(e.sparse.weights, [1, 1, 1, 1, 1, 0.5, 0.25, 0.75, 1.0, 1, 1, 1, 1, 1])
    assert_same(b.to_torch().expand(), e, rtol=0)


def test_to_torchrec_of_a_dedup_batch_asks_for_expand_rather_than_drop_request_features():
    with pytest.raises(gp.ConfigError, match=r"request features \['hist'\].*expand\(\).to_torchrec\(\)"):
        _dedup_batch().to_torchrec()


def test_take_and_concat_of_dedup_batches_keep_only_the_requests_in_use():
    from transforms.helpers import assert_same

    b = _dedup_batch()
    t = b.take([4, 2, 3])
    assert t.requests.extras["request_id"].tolist() == [9, 8] and t.inverse.tolist() == [0, 1, 0]
    assert_same(t.expand(), b.expand().take([4, 2, 3]), rtol=0)
    both = gp.Batch.concat([b.rows(0, 3), b.rows(3, 5)])
    assert both.requests.num_rows == 3 and both.inverse.tolist() == [0, 0, 1, 2, 2]
    assert_same(both.expand(), b.expand(), rtol=0)
    on_torch = b.to_torch().take(torch.tensor([4, 2, 3]))
    assert_same(on_torch.expand(), t.expand(), rtol=0)
    both_on_torch = gp.Batch.concat([b.rows(0, 3).to_torch(), b.rows(3, 5).to_torch()])
    assert isinstance(both_on_torch.inverse, torch.Tensor) and both_on_torch.inverse.dtype == torch.int32
    assert both_on_torch.inverse.tolist() == [0, 0, 1, 2, 2] and isinstance(both_on_torch.requests.dense, torch.Tensor)
    assert_same(both_on_torch.expand(), b.expand(), rtol=0)


def test_to_arrow_round_trips_through_from_arrow():
    from transforms.helpers import assert_same

    e = _dedup_batch().expand()
    e.dense[1, 2] = np.nan
    features = (F("age", "dense"), F("price", "dense"), F("hist", "sparse"), F("cat", "sparse"), F("tags", "scored"))
    e = replace(e, schema=gp.Schema(features, ("label",), ("request_id", "item_id")))
    table = e.to_arrow()
    assert table.column("price").null_count == 1 and table.column("tags.score").type == FLOAT32
    back = Batch.from_arrow(table, e.schema)
    assert_same(back, e, rtol=0)
    assert back.labels.tolist() == e.labels.tolist() and back.extras["item_id"].tolist() == list(range(100, 105))


def test_edge_cases_of_rows_inverse_and_arrow_extras():
    from transforms.helpers import make_batch

    b = replace(make_batch({"x": [1.0, 2.0]}, {"a": [[1], []]}), labels=np.ones(2, np.float32),
                inverse=np.array([0, 1], np.int32), extras={"s": pa.array(["p", "q"])})  # fmt: skip
    assert b.take([]).to_arrow().num_rows == 0  # no rows, with labels
    assert b.take([1, 0]).inverse.tolist() == [1, 0]  # an inverse without requests is a plain column
    assert Batch.concat([b, b]).inverse.tolist() == [0, 1, 0, 1]
    assert b.to_torch().take(torch.tensor([1])).extras["s"].to_pylist() == ["q"]  # Arrow extras of a torch batch


def test_images_follow_their_rows_through_take_concat_and_to_arrow():
    schema = gp.Schema((F("thumb", "image"), F("x", "dense")))
    table = pa.table({"thumb": pa.array([b"a", b"bb", b"ccc"], pa.binary()), "x": pa.array([0.0, 1.0, 2.0], pa.float32())})
    b = Batch.from_arrow(table, schema)
    assert isinstance(b.images["thumb"], pa.Array) and b.row_keys is None
    both = Batch.concat([b.take([2, 0]), b.rows(1, 2)])
    assert both.images["thumb"].to_pylist() == [b"ccc", b"a", b"bb"] and both.dense.tolist() == [[2.0, 0.0, 1.0]]
    assert both.to_arrow().column("thumb").to_pylist() == [b"ccc", b"a", b"bb"]
    pixels = replace(b, images={"thumb": np.arange(3 * 3 * 2 * 2, dtype=np.uint8).reshape(3, 3, 2, 2)},
                     row_keys=np.array([7, 8, 9]))  # fmt: skip
    taken = pixels.to_torch().take(torch.tensor([2, 1]))
    assert taken.images["thumb"].tolist() == pixels.images["thumb"][[2, 1]].tolist() and taken.row_keys.tolist() == [9, 8]
    stored = pixels.to_arrow().column("thumb").combine_chunks()
    assert stored.type.shape == [3, 2, 2] and (stored.to_numpy_ndarray() == pixels.images["thumb"]).all()


def test_concat_of_decoded_images_of_another_size_or_dtype_is_a_config_error():
    schema = gp.Schema((F("thumb", "image"),))
    b = Batch.from_arrow(pa.table({"thumb": pa.array([b"a", b"bb"], pa.binary())}), schema)
    pixels = replace(b, images={"thumb": np.full((2, 3, 4, 4), 200, np.uint8)})
    normalized = replace(b, images={"thumb": np.full((2, 3, 4, 4), 0.5, np.float32)})  # NormalizeImage's output
    with pytest.raises(gp.ConfigError, match=r"batch 1 has images=\[\('thumb', 'float32 \[3, 4, 4\]'\)\] but batch 0 has "
                                             r"images=\[\('thumb', 'uint8 \[3, 4, 4\]'\)\]"):  # fmt: skip
        Batch.concat([pixels, normalized])  # would mix 0..255 levels with normalized floats
    with pytest.raises(gp.ConfigError, match=r"'uint8 \[3, 2, 2\]'"):
        Batch.concat([pixels, replace(b, images={"thumb": np.zeros((2, 3, 2, 2), np.uint8)})])
    with pytest.raises(gp.ConfigError, match="'encoded'"):
        Batch.concat([pixels, b])
    assert Batch.concat([pixels, pixels.to_torch().take([1]).map_arrays(lambda t: t.numpy())]).images["thumb"].shape == (3, 3, 4, 4)
