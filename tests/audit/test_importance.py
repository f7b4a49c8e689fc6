"""Permutation importance: shuffling one feature, the metrics, and the weight-based scores."""

import dataclasses
import itertools

import numpy as np
import pytest
import torch

import gpupre as gp
from gpupre.audit import auc, permutation_importance, permuted, weight_scores


def _batch():
    rng = np.random.default_rng(0)
    n = 50
    dense = {f"d{i}": rng.normal(size=n).tolist() for i in range(3)}
    sparse = {f"s{i}": [rng.integers(0, 9, rng.integers(0, 5)).tolist() for _ in range(n)] for i in range(3)}
    scored = {"w": ([[1, 2]] * n, [[0.5, 0.25]] * n)}
    from tests.transforms.helpers import make_batch

    batch = make_batch(dense, sparse, scored)
    batch.labels = (rng.random(n) < 0.5).astype(np.float32)
    return batch.to_torch()


@pytest.mark.parametrize("name", ["d1", "s0", "s1", "s2", "w"])
def test_a_permuted_feature_is_that_feature_of_the_rows_taken_in_order(name):
    batch = _batch()
    perm = torch.randperm(batch.num_rows, generator=torch.Generator().manual_seed(1))
    got, taken = permuted(batch, name, perm), batch.take(perm)
    for key in batch.dense_keys:
        want = taken if key == name else batch
        torch.testing.assert_close(got.dense[got.dense_keys.index(key)], want.dense[want.dense_keys.index(key)])
    for key in batch.sparse.keys:
        want = taken if key == name else batch
        for a, b in zip(got.sparse.feature(key), want.sparse.feature(key)):
            torch.testing.assert_close(a, b)
    torch.testing.assert_close(got.labels, batch.labels)  # labels stay with their rows


def test_auc_counts_pairs_ranked_right_and_ties_as_half():
    rng = np.random.default_rng(2)
    scores, labels = rng.integers(0, 5, 60).astype(float), rng.random(60) < 0.4
    pairs = [(s, t) for (s, a), (t, b) in itertools.product(zip(scores, labels), repeat=2) if a and not b]
    want = sum(1.0 if s > t else 0.5 if s == t else 0.0 for s, t in pairs) / len(pairs)
    assert auc(scores, labels) == pytest.approx(want)
    assert np.isnan(auc([1.0, 2.0], [1, 1]))


def test_a_feature_the_model_ignores_has_no_importance_and_one_it_uses_has_some():
    batch = _batch()

    def model(b):  # only d1 and the ids of s2 matter
        _, values, _ = b.sparse.feature("s2")
        return 3 * b.dense[1] + torch.zeros(b.num_rows).index_add_(
            0, torch.repeat_interleave(torch.arange(b.num_rows), b.sparse.feature("s2")[0].long()), values.float()
        ) / 4

    batch.labels = (model(batch) > 0).float()
    base, drops = permutation_importance(model, [batch], repeats=4, progress=False)
    assert all(np.all(drops[f] == 0) for f in ("d0", "d2", "s0", "s1", "w"))
    assert drops["d1"].mean() > 0.1 and drops["s2"].mean() > 0.1
    _, by_auc = permutation_importance(model, [batch], repeats=4, metric="auc", progress=False)
    assert by_auc["d1"].mean() > 0 and np.all(by_auc["d0"] == 0)


def test_bad_arguments_are_config_errors():
    batch = _batch()
    with pytest.raises(gp.ConfigError, match="metric='mse'"):
        permutation_importance(lambda b: b.dense[0], [batch], metric="mse")
    with pytest.raises(gp.ConfigError, match="repeats=1"):
        permutation_importance(lambda b: b.dense[0], [batch], repeats=1)
    with pytest.raises(gp.ConfigError, match=r"\['nope'\]"):
        permutation_importance(lambda b: b.dense[0], [batch], features=["nope"])
    with pytest.raises(gp.ConfigError, match="dense_weight has shape"):
        weight_scores([batch], dense_weight=torch.ones(4, 7))
    with pytest.raises(gp.ConfigError, match=r"dense_weight must be a tensor or array \[out, 3\].*got str 'abc'"):
        weight_scores([batch], dense_weight="abc")
    with pytest.raises(gp.ConfigError, match="embedding must be callable"):
        weight_scores([batch], embedding=5)
    with pytest.raises(gp.ConfigError, match="model must be callable.*got int 5"):
        permutation_importance(5, [batch])
    with pytest.raises(gp.ConfigError, match="seed='x' must be an integer >= 0"):
        permutation_importance(lambda b: b.dense[0], [batch], seed="x")
    _, drops = permutation_importance(lambda b: b.dense[0], [batch], repeats=np.int64(2), seed=np.int64(3), progress=False)
    assert len(drops["d0"]) == 2


def test_weight_scores_are_column_norms_and_mean_embedding_row_norms():
    batch = _batch()
    weight = torch.tensor([[3.0, 0.0, 1.0], [4.0, 0.0, 0.0]])
    table = torch.arange(10, dtype=torch.float32).unsqueeze(1).repeat(1, 2)  # row i = [i, i]
    scores = weight_scores([batch], weight, lambda name, ids: table[ids])
    assert scores["d0"] == pytest.approx(5.0) and scores["d1"] == 0.0 and scores["d2"] == pytest.approx(1.0)
    _, ids, _ = batch.sparse.feature("s1")
    assert scores["s1"] == pytest.approx(float(ids.float().mean()) * 2**0.5)


def test_the_planted_features_rank_above_the_noise(trained):
    base, drops = permutation_importance(trained.model, trained.held_out_batches(), repeats=5, progress=False)
    ranked = sorted(drops, key=lambda f: -drops[f].mean())
    inputs = [f for f in ranked if not f.endswith("_bucket")]  # the bucket id derives from dense_000
    top = set(inputs[: len(trained.planted)])
    precision = len(top & trained.planted) / len(top)
    recall = len(top & trained.planted) / len(trained.planted)
    print(f"planted {sorted(trained.planted)}; top {inputs[:6]}; precision {precision:.2f}, recall {recall:.2f}")
    assert precision >= 0.75 and recall >= 0.75
    strongest_noise = max(drops[f].mean() for f in inputs if f not in trained.planted)
    assert sum(drops[f].mean() > 2 * strongest_noise for f in trained.planted) >= 3


def test_nan_scores_and_several_labels_and_unknown_features_are_refused_not_guessed():
    assert np.isnan(auc([np.nan, 1.0, 2.0, 0.0], [1, 0, 1, 0]))
    batch = _batch()
    two = __import__("dataclasses").replace(batch, labels=torch.stack([batch.labels, batch.labels]))
    with pytest.raises(gp.ConfigError, match="2 labels per row"):
        permutation_importance(lambda b: b.dense[0], [two])
    with pytest.raises(gp.ConfigError, match="one logit per row"):
        permutation_importance(lambda b: b.dense[0][:3], [batch])
    with pytest.raises(gp.ConfigError, match="'nope' is not a feature"):
        permuted(batch, "nope", torch.arange(batch.num_rows))


@pytest.mark.parametrize("metric", ["logloss", "auc"])
def test_labels_of_one_value_or_outside_0_1_are_refused_before_any_shuffle(metric):
    batch, calls = _batch(), []

    def model(b):
        calls.append(1)
        return b.dense[0]

    one_class = dataclasses.replace(batch, labels=torch.ones(batch.num_rows))
    with pytest.raises(gp.ConfigError, match="all 50 held-out labels are 1: with one outcome"):
        gp.audit.audit(model, [one_class], metric=metric, progress=False)
    ratings = dataclasses.replace(batch, labels=torch.arange(batch.num_rows) % 5 + 1.0)  # 1..5 stars
    with pytest.raises(gp.ConfigError, match=r"40 of 50 held-out labels are outside \[0, 1\], such as 2; the audit scores"):
        permutation_importance(model, [ratings], metric=metric, progress=False)
    assert not calls


def test_auc_refuses_labels_all_on_one_side_of_a_half_which_logloss_scores():
    soft = dataclasses.replace(_batch(), labels=torch.linspace(0.6, 1.0, 50))
    with pytest.raises(gp.ConfigError, match=r"all one class for AUC .* or metric='logloss'"):
        permutation_importance(lambda b: b.dense[0], [soft], metric="auc", progress=False)
    base, _ = permutation_importance(lambda b: b.dense[0], [soft], repeats=2, progress=False)
    assert np.isfinite(base)


def test_nan_logits_and_nan_labels_are_named_not_blamed_on_one_class():
    batch = _batch()
    with pytest.raises(gp.DataError, match="NaN logits for 50 of 50 held-out rows"):
        gp.audit.audit(lambda b: torch.full((b.num_rows,), float("nan")), [batch], progress=False)
    labels = batch.labels.clone()
    labels[3] = float("nan")
    unlabelled = __import__("dataclasses").replace(batch, labels=labels)
    with pytest.raises(gp.DataError, match="1 of 50 held-out labels are NaN"):
        permutation_importance(lambda b: b.dense[0], [unlabelled], progress=False)
