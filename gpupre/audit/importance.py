"""Feature importance of a trained model over held-out batches: permutation and weight-based.

Permutation importance is model-agnostic: one feature's values are shuffled across the rows of
each held-out batch (its whole list, for sparse features), and the model's loss is measured
again. A feature the model relies on makes the loss rise; a useless one leaves it unchanged.
Each feature is shuffled `repeats` times with different permutations, which gives the spread of
its importance. Weight-based scores read the trained parameters instead: the norm of a dense
feature's column in the first layer, and the mean norm of the embedding rows a sparse feature's
held-out ids look up.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import torch
from tqdm.auto import tqdm

from ..batch import Batch, _jagged_take
from .._checks import ensure_integer, is_integer
from ..errors import ConfigError, DataError, GpupreError

__all__ = ["METRICS", "auc", "permutation_importance", "permuted", "weight_scores"]


def _logloss(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float(torch.nn.functional.binary_cross_entropy_with_logits(logits.double(), labels.double()))


def auc(scores, labels) -> float:
    """Area under the ROC curve (ties count half), from the ranks of the scores."""
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels) > 0.5
    if np.isnan(scores).any():
        return math.nan
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if positives == 0 or negatives == 0:
        return math.nan
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    ends = np.r_[starts[1:], len(scores)]
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)  # mean rank of each tie group
    return float((ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives))


# metric name -> (function of logits and labels, sign: +1 when a larger value is worse)
METRICS = {
    "logloss": (_logloss, 1.0),
    "auc": (lambda logits, labels: auc(logits.float().cpu().numpy(), labels.float().cpu().numpy()), -1.0),
}


def permuted(batch: Batch, name: str, perm: torch.Tensor) -> Batch:
    """`batch` with feature `name` moved between rows: row i gets row perm[i]'s value (or list)."""
    if name not in batch.dense_keys and name not in batch.sparse.keys:
        raise ConfigError(f"{name!r} is not a feature of the batch (it has {list(batch.dense_keys + batch.sparse.keys)})")
    if name in batch.dense_keys:
        j = batch.dense_keys.index(name)
        dense = batch.dense.clone()
        dense[j] = batch.dense[j][perm]
        return replace(batch, dense=dense)
    sparse = batch.sparse
    k, n = sparse.keys.index(name), batch.num_rows
    start = int(sparse.lengths[: k * n].long().sum())
    new, index = _jagged_take(sparse.lengths[k * n : (k + 1) * n], 1, n, perm)
    index, total = index + start, len(index)
    out_lengths = sparse.lengths.clone()
    out_lengths[k * n : (k + 1) * n] = new
    values = sparse.values.clone()
    values[start : start + total] = sparse.values[index]
    weights = sparse.weights
    if weights is not None:
        weights = weights.clone()
        weights[start : start + total] = sparse.weights[index]
    return replace(batch, sparse=replace(sparse, lengths=out_lengths, values=values, weights=weights))


def _evaluate(model, batches, labels, metric) -> float:
    with torch.no_grad():
        logits = [_logits(_call(model, b), labels.device) for b in batches]
    if any(len(x) != b.num_rows for x, b in zip(logits, batches)):
        raise ConfigError("model(batch) must give one logit per row of the batch")
    logits = torch.cat(logits)
    bad = int(torch.isnan(logits).sum())
    if bad:
        raise DataError(
            f"model(batch) gave NaN logits for {bad} of {len(logits)} held-out rows; find where the model "
            "makes them (a NaN input feature? fill it: gp.FillMissing) before auditing it"
        )
    return metric(logits, labels)


def _call(model, batch):
    """model(batch), with a model's failure a ConfigError naming the batch's features (the usual
    cause: other features than it was trained on), chained to the model's own error."""
    try:
        return model(batch)
    except GpupreError:
        raise
    except Exception as e:
        raise ConfigError(
            f"model(batch) raised {type(e).__name__}: {e}; the batch had dense features {list(batch.dense_keys)} "
            f"and sparse features {list(batch.sparse.keys)}: if the model was trained on others, give it those "
            "features and that pipeline (features= and pipeline=; on the command line --features and --pipeline)"
        ) from e


def _logits(output, device) -> torch.Tensor:
    """A model's output (a tensor, or an array) as a flat float tensor on `device`."""
    try:
        return torch.as_tensor(output, device=device).reshape(-1).float()
    except (TypeError, ValueError, RuntimeError) as e:
        raise ConfigError(
            f"model(batch) must give one logit per row as a tensor or array, got {type(output).__name__} "
            f"({e})"
        ) from e


def check_importance_args(model, repeats, metric, seed) -> None:
    """A ConfigError unless `model` is callable, `repeats` an integer >= 2, `metric` one of METRICS
    and `seed` an integer >= 0."""
    if not callable(model):
        raise ConfigError(
            f"model must be callable, model(batch) -> one logit per row (a torch module or a function); got "
            f"{type(model).__name__} {model!r:.60}"
        )
    if metric not in METRICS:
        raise ConfigError(f"metric={metric!r} must be one of {sorted(METRICS)}")
    if not is_integer(repeats) or repeats < 2:
        raise ConfigError(f"repeats={repeats!r} must be an integer >= 2 (the spread needs two permutations)")
    ensure_integer(seed, "seed", 0)


def _check_labels(labels: torch.Tensor, metric: str) -> None:
    """A ConfigError unless the labels are outcomes in [0, 1], not all one (for AUC: on both sides of 0.5)."""
    outside = labels[(labels < 0) | (labels > 1)]
    if len(outside):
        raise ConfigError(
            f"{len(outside)} of {len(labels)} held-out labels are outside [0, 1], such as {float(outside[0]):g}; the "
            f"audit scores a binary label in [0, 1] (a click, a purchase) with {metric}: turn the label into one "
            "before auditing (a rating r: r >= 4)"
        )
    values = torch.unique(labels)
    if len(values) == 1:  # every shuffle then leaves the loss as it was, up to rounding
        raise ConfigError(
            f"all {len(labels)} held-out labels are {float(values[0]):g}: with one outcome no feature can show "
            "importance; audit on more held-out rows, with both outcomes"
        )
    positive = labels > 0.5
    if metric == "auc" and (bool(positive.all()) or not bool(positive.any())):
        raise ConfigError(
            "the held-out labels are all one class for AUC (all on one side of 0.5), so it is not defined; use more "
            "held-out rows, or metric='logloss', which scores labels in [0, 1] as they are"
        )


def permutation_importance(model, batches: list[Batch], features=None, repeats: int = 5, metric: str = "logloss",
                           seed: int = 0, progress: bool = True) -> tuple[float, dict[str, np.ndarray]]:  # fmt: skip
    """(the metric on `batches`, {feature: its worsening under each of `repeats` permutations}).

    `model(batch)` gives one logit per row; `batches` hold labels, a binary outcome in [0, 1] of
    both classes. Features default to every dense and sparse key of the batches.

    Raises:
        ConfigError: an argument of the wrong type or out of range (see `check_importance_args`),
            labels outside [0, 1] or all one class, or features the batches do not have.
        DataError: a label is NaN, or the model gives NaN logits.
    """
    check_importance_args(model, repeats, metric, seed)
    fn, sign = METRICS[metric]
    if any(b.labels.ndim != 1 for b in batches):
        raise ConfigError(
            f"the batches hold {batches[0].labels.shape[0]} labels per row; the audit scores one: build the "
            "held-out loader with label= naming the one the model predicts"
        )
    labels = torch.cat([b.labels.float() for b in batches])
    if torch.isnan(labels).any():
        raise DataError(
            f"{int(torch.isnan(labels).sum())} of {len(labels)} held-out labels are NaN; drop those rows "
            "from the held-out data"
        )
    _check_labels(labels, metric)
    keys = list(batches[0].dense_keys) + list(batches[0].sparse.keys)
    features = keys if features is None else list(features)
    unknown = [f for f in features if f not in keys]
    if unknown:
        raise ConfigError(f"features {unknown} are not in the batches (they hold {keys})")
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    try:
        base = _evaluate(model, batches, labels, fn)
        generator = torch.Generator().manual_seed(int(seed))
        drops = {f: np.empty(repeats) for f in features}
        bar = tqdm(total=len(features) * repeats, desc="permutation importance", unit="shuffle", disable=not progress)
        for r in range(repeats):
            perms = [torch.randperm(b.num_rows, generator=generator).to(_device(b)) for b in batches]
            for f in features:
                shuffled = [permuted(b, f, p) for b, p in zip(batches, perms)]
                drops[f][r] = sign * (_evaluate(model, shuffled, labels, fn) - base)
                bar.update()
        bar.close()
    finally:
        if was_training:
            model.train()
    return base, drops


def weight_scores(batches: list[Batch], dense_weight=None, embedding=None) -> dict[str, float]:
    """{feature: score} from trained parameters.

    Args:
        dense_weight: the first layer's weight over the dense features, [out, D] in the order of
            `batch.dense_keys`; a feature's score is the L2 norm of its column.
        embedding: `embedding(feature, ids) -> rows [len(ids), dim]`, the rows the model looks up
            for a sparse feature's ids; a feature's score is the mean L2 norm of the rows its
            held-out ids look up (0 when it has none).

    Raises:
        ConfigError: dense_weight is not a tensor or array [out, D], or embedding is not callable.
    """
    scores: dict[str, float] = {}
    first = batches[0]
    if embedding is not None and not callable(embedding):
        raise ConfigError(
            f"embedding must be callable, embedding(feature, ids) -> rows [len(ids), dim]; got {type(embedding).__name__}"
        )
    if dense_weight is not None:
        try:
            weight = torch.as_tensor(dense_weight).detach().float()
        except (TypeError, ValueError, RuntimeError) as e:
            raise ConfigError(
                f"dense_weight must be a tensor or array [out, {len(first.dense_keys)}] (the first layer's weight), "
                f"got {type(dense_weight).__name__} {dense_weight!r:.40}"
            ) from e
        if weight.ndim != 2 or weight.shape[1] != len(first.dense_keys):
            raise ConfigError(
                f"dense_weight has shape {tuple(weight.shape)}; expected [out, {len(first.dense_keys)}] "
                "(one column per dense feature of the batches)"
            )
        scores.update(zip(first.dense_keys, weight.norm(dim=0).tolist()))
    if embedding is not None:
        with torch.no_grad():
            for name in first.sparse.keys:
                total, count = 0.0, 0
                for b in batches:
                    _, ids, _ = b.sparse.feature(name)
                    if len(ids):
                        total += float(torch.as_tensor(embedding(name, ids)).float().norm(dim=1).sum())
                        count += len(ids)
                scores[name] = total / count if count else 0.0
    return scores


def _device(batch: Batch):
    return batch.dense.device if isinstance(batch.dense, torch.Tensor) else "cpu"
