"""Feature bytes: rows round-trip exactly; gathering from torch tensors gives the same bytes."""

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transforms.helpers import assert_same, make_batch, rows_of

import gpupre as gp
from gpupre.serving import FeatureCodec, encode_rows, gather_rows

IDS = st.integers(-(2**63), 2**63 - 1)


@st.composite
def item_batches(draw):
    n = draw(st.integers(0, 6))
    rows = st.lists(st.lists(IDS, max_size=5), min_size=n, max_size=n)
    floats = st.lists(st.floats(width=32, allow_nan=True), min_size=n, max_size=n)
    scored_ids = draw(rows)
    scores = [[draw(st.floats(width=32)) for _ in r] for r in scored_ids]
    return make_batch({"x": draw(floats), "y": draw(floats)}, {"a": draw(rows), "b": draw(rows)}, {"s": (scored_ids, scores)},
                      num_rows=n)  # fmt: skip


@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow])
@given(item_batches())
def test_rows_round_trip_exactly(batch):
    codec = FeatureCodec(batch.schema)
    encoded = codec.encode(batch)
    assert len(encoded) == batch.num_rows
    assert_same(codec.decode(encoded), batch, rtol=0)


def test_a_row_is_its_values_and_nothing_else():
    batch = make_batch({"x": [1.0]}, {"a": [[7, 8]], "b": [[]]})
    (row,) = FeatureCodec(batch.schema).encode(batch)
    assert row == np.float32(1).tobytes() + np.array([2, 0], np.uint32).tobytes() + np.array([7, 8], np.int64).tobytes()


def test_gathering_from_torch_tensors_gives_the_same_bytes_as_numpy():
    batch = make_batch({"x": [1.0, 2.0, 3.0, 4.0]}, {"a": [[1], [2, 3], [], [4, 5, 6]]}, {"s": ([[9], [], [8, 7], [6]],
                       [[0.5], [], [0.25, 0.75], [1.0]])})  # fmt: skip
    codec, rows = FeatureCodec(batch.schema), [3, 0, 2]
    from_numpy = codec.encode(gather_rows(batch, rows))
    from_torch = codec.encode(gather_rows(batch.to_torch(), rows))
    assert from_numpy == from_torch
    assert rows_of(codec.decode(from_numpy), "a") == [[4, 5, 6], [1], []]


@pytest.mark.parametrize("to_torch", [False, True])
def test_gather_rows_checks_its_rows_as_take_does(to_torch):
    batch = make_batch({"x": [1.0, 2.0, 3.0]}, {"a": [[1], [2, 3], []]})
    batch = batch.to_torch() if to_torch else batch
    with pytest.raises(gp.ConfigError, match="rows must be integers, got bool"):  # not rows 1, 0, 1
        gather_rows(batch, np.array([True, False, True]))
    for rows in ([0, 3], torch.tensor([3]), torch.tensor([-1])):
        with pytest.raises(gp.ConfigError, match=r"take: row (3|-1) is outside the batch of 3 rows"):
            gather_rows(batch, rows)
    assert rows_of(gather_rows(batch, torch.tensor([1, 2])), "a") == [[2, 3], []]


def test_corrupt_bytes_and_other_features_are_data_errors():
    batch = make_batch({"x": [1.0]}, {"a": [[7, 8]]})
    codec = FeatureCodec(batch.schema)
    (row,) = codec.encode(batch)
    with pytest.raises(gp.DataError, match="logged row 0 has 23 bytes, not what its 2 ids need"):
        codec.decode([row[:-1]])
    with pytest.raises(gp.DataError, match="logged row 1 has 28 bytes, not what its 2 ids need"):
        codec.decode([row, row + bytes(4)])  # whole words, but one too many
    with pytest.raises(gp.DataError, match="logged row 2 has 4 bytes, fewer than the 8 of a row's header"):
        codec.decode([row, row, row[:4]])
    with pytest.raises(gp.DataError, match="do not match the logger's schema"):
        codec.encode(make_batch({"z": [1.0]}, {"a": [[7]]}))


@pytest.mark.parametrize("to_torch", [False, True])
def test_bad_rows_to_log_are_config_errors_on_numpy_and_torch_alike(to_torch):
    batch = make_batch({"x": [1.0]}, {"a": [[7, 8]]})
    codec = FeatureCodec(batch.schema)
    batch = batch.to_torch() if to_torch else batch
    outside = r"row 1 (to log )?is outside the batch of 1 rows; pass rows in \[0, 1\)"
    for rows, words in (([0, 1], outside), ([-1], "row -1 (to log )?is outside the batch"),
                        ([False], r"must be integers, got bool; .*np.flatnonzero\(mask\)"),  # not row 0
                        ([0.0], "must be integers, got float")):  # fmt: skip
        with pytest.raises(gp.ConfigError, match=words):
            encode_rows(codec, batch, rows)


def test_rows_in_any_order_are_the_rows_encoded_one_at_a_time():
    batch = make_batch({"x": [1.0, 2.0, 3.0]}, {"a": [[1], [], [4, 5, 6]]}, {"s": ([[9], [8, 7], []], [[0.5], [0.25, 0.75], []])})
    codec = FeatureCodec(batch.schema)
    singles = [codec.encode(batch, [r])[0] for r in range(3)]
    assert codec.encode(batch, np.array([2, 0, 2, 1])) == [singles[2], singles[0], singles[2], singles[1]]
    assert codec.encode(batch, []) == []


SCORED = make_batch({"x": [1.0]}, scored={"a": ([[7]], [[0.5]])})
PLAIN = make_batch({"x": [1.0]}, {"a": [[7]]})


@pytest.mark.parametrize("schema,batch,words", [
    (SCORED.schema, PLAIN, r"scored features \['a'\] but the batch has no scores"),  # not a made-up NaN score
    (PLAIN.schema, SCORED, "has no scored feature, so they would be dropped"),
], ids=["no-scores", "scores-dropped"])  # fmt: skip
def test_scores_are_neither_made_up_nor_dropped(schema, batch, words):
    with pytest.raises(gp.DataError, match=words):
        FeatureCodec(schema).encode(batch)


def test_a_schema_with_an_image_feature_is_refused_not_dropped():
    schema = gp.Schema((gp.Feature("price", "dense"), gp.Feature("thumb", "image")))
    with pytest.raises(gp.SchemaError, match="image feature 'thumb'"):
        FeatureCodec(schema)
