"""`audit`: rank a model's features by importance next to what they cost; `prune`: drop the weak ones.

A model's features are the pipeline's outputs; what they cost is what storing and reading their
stored sources costs. The report traces each feature back through the pipeline to the stored
features it is computed from, so that pruning can stop reading (and storing) exactly those.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, replace
from itertools import islice

import numpy as np

from .._checks import is_integer, is_real
from .._jsonfile import JsonFile, ensure_output_path
from ..batch import Batch
from ..errors import BackendUnavailable, ConfigError, SchemaError
from ..schema import unknown_message
from ..reader import Dataset
from ..transforms.pipeline import Pipeline, skip_materialized
from .importance import check_importance_args, permutation_importance, weight_scores

__all__ = ["AuditReport", "FeatureScore", "Pruned", "audit", "prune"]

Z95 = 1.959964  # the normal quantile of a two-sided 95% interval
PLOT_FORMATS = (".png", ".pdf", ".svg")


@dataclass(frozen=True)
class FeatureScore:
    """One model feature: importance (mean worsening of the metric when it is shuffled) with a
    95% interval over the shuffles, the weight-based score, and its stored sources' cost."""

    name: str
    importance: float
    low: float
    high: float
    weight: float | None
    sources: tuple[str, ...]
    stored_bytes: int  # compressed bytes of its sources' columns in the whole dataset
    bytes_per_row: float  # what reading them costs per row


@dataclass
class AuditReport(JsonFile):
    """Features ranked by importance (most important first), with their costs.

    `metric` is the loss the importance is measured in ("logloss": its rise; "auc": its fall)
    and `baseline` its value on the held-out rows, unshuffled.
    """

    features: list[FeatureScore]
    metric: str
    baseline: float
    repeats: int
    rows: int
    dataset_bytes: int = 0  # compressed bytes of every feature of the dataset (not labels, extras)
    source_bytes: dict[str, int] = field(default_factory=dict)  # per stored feature the features come from
    notes: list[str] = field(default_factory=list)

    def __getitem__(self, name: str) -> FeatureScore:
        """The score of feature `name`.

        Raises:
            SchemaError: no feature of the report has that name.
        """
        for f in self.features:
            if f.name == name:
                return f
        raise SchemaError(unknown_message("audited feature", name, self.names))

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.features]

    def to_markdown(self) -> str:
        lines = [
            f"{self.metric} on {self.rows:,} held-out rows: {self.baseline:.5f}; importance = its worsening when a "
            f"feature is shuffled (mean of {self.repeats}, 95% interval)",
            "",
            "| rank | feature | importance | 95% interval | weight score | stored bytes | bytes/row | sources |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for i, f in enumerate(self.features, 1):
            weight = "-" if f.weight is None else f"{f.weight:.4g}"
            lines.append(
                f"| {i} | {f.name} | {f.importance:.3g} | [{f.low:.3g}, {f.high:.3g}] | {weight} | "
                f"{f.stored_bytes:,} | {f.bytes_per_row:.2f} | {', '.join(f.sources)} |"
            )
        return "\n".join(lines + [""] + self.notes)

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "features": [asdict(f) for f in self.features]}, indent=1)

    @classmethod
    def _from_json(cls, text: str) -> AuditReport:
        data = json.loads(text)
        features = [FeatureScore(**{**f, "sources": tuple(f["sources"])}) for f in data.pop("features")]
        return cls(features=features, **data)

    def plot(self, path, top: int | None = 40) -> None:
        """A plot of importance with its interval per feature (bars), and bytes per row (dots), in
        the format `path`'s extension names (one of PLOT_FORMATS).

        Raises:
            ConfigError: the directory of `path` does not exist, or its extension is not a plot format.
            BackendUnavailable: matplotlib is not installed.
        """
        check_plot_path(path, "plot")
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError as e:
            raise BackendUnavailable("the audit plot needs matplotlib: pip install 'gpupre[audit]'") from e
        shown = self.features[:top] if top else self.features
        y = np.arange(len(shown))[::-1]
        fig, left = plt.subplots(figsize=(9, 1.5 + 0.28 * len(shown)))
        mean = np.array([f.importance for f in shown])
        err = np.array([[f.importance - f.low for f in shown], [f.high - f.importance for f in shown]])
        left.barh(y, mean, xerr=err, color="tab:blue", alpha=0.8, label=f"importance ({self.metric})")
        left.set_yticks(y, [f.name for f in shown], fontsize=8)
        left.axvline(0, color="black", linewidth=0.8)
        left.set_xlabel(f"worsening of {self.metric} when shuffled (95% interval)")
        right = left.twiny()
        right.plot([f.bytes_per_row for f in shown], y, "o", color="tab:red", markersize=4, label="bytes/row read")
        right.set_xlabel("stored bytes per row of the feature's sources", color="tab:red")
        left.set_title(f"feature audit: {len(self.features)} features, {self.rows:,} held-out rows", fontsize=10)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)


def check_plot_path(path, what: str) -> None:
    """A ConfigError unless `path` can be written and ends in one of PLOT_FORMATS; `what` names it."""
    ensure_output_path(path, what)
    extension = os.path.splitext(os.fspath(path))[1]
    if extension.lower() not in PLOT_FORMATS:
        found = f"ends in {extension}" if extension else "has no extension"
        raise ConfigError(
            f"the {what} path {path} {found}; a plot is written in the format its extension names: end it in "
            f"one of {', '.join(PLOT_FORMATS)}"
        )


def check_pipeline(pipeline) -> None:
    """A ConfigError unless `pipeline` is a gp.Pipeline or None."""
    if pipeline is not None and not isinstance(pipeline, Pipeline):
        raise ConfigError(
            f"pipeline must be a gp.Pipeline or None, got {type(pipeline).__name__}; load a saved one with "
            "gp.Pipeline.load(path)"
        )


def sources_of(pipeline: Pipeline | None, schema) -> dict[str, tuple[str, ...]]:
    """{feature after the pipeline: the stored features it is computed from}."""
    sources = {name: (name,) for name in schema.names}
    ops = skip_materialized(pipeline.ops, schema)[0] if pipeline is not None else ()  # stored outputs: read
    for op in ops:
        for inputs, out in op.applications():
            made = set()
            for name in inputs:
                made.update(sources.get(name, (name,)))
            sources[out] = tuple(sorted(made))
    return sources


def audit(model, batches, dataset: Dataset | None = None, pipeline: Pipeline | None = None, repeats: int = 5,
          metric: str = "logloss", max_batches: int | None = None, dense_weight=None, embedding=None, seed: int = 0,
          progress: bool = True) -> AuditReport:  # fmt: skip
    """Rank the features a trained model takes by permutation importance, next to their costs.

    Args:
        model: `model(batch)` -> one logit per row (a torch module or any callable); run in eval
            mode and without gradients.
        batches: held-out batches with labels: a `gp.DataLoader` over held-out data, or a list.
            They are kept in memory for the `repeats` x features passes.
        dataset: the dataset whose bytes per column give the costs: usually the training data (any
            dataset that stores the batches' features).
        pipeline: the pipeline that made the model's features from the stored ones.
        repeats: shuffles per feature (at least 2); the interval is mean +- 1.96 standard errors.
        metric: "logloss" (importance: how much the loss rises) or "auc" (how much it falls).
        max_batches: use only the first batches.
        dense_weight, embedding: for the weight-based score (see `weight_scores`).

    Raises:
        ConfigError: no batches, batches without labels, labels outside [0, 1] or all one class, an
            unknown metric, repeats < 2, or another argument of the wrong type or out of range;
            arguments are checked before any batch is read.
        DataError: the model gives NaN logits, or a label is NaN.
    """
    check_importance_args(model, repeats, metric, seed)
    if max_batches is not None and not (is_integer(max_batches) and max_batches >= 1):
        raise ConfigError(f"{max_batches=} must be None (every batch) or an integer >= 1")
    if dataset is not None and not isinstance(dataset, Dataset):
        raise ConfigError(
            f"dataset must be a gp.Dataset (its bytes per column give the costs) or None; got "
            f"{type(dataset).__name__} {dataset!r}: wrap a path in gp.Dataset(path)"
        )
    check_pipeline(pipeline)
    if not hasattr(batches, "__iter__"):
        raise ConfigError(
            f"batches must be a gp.DataLoader over held-out data or a list of gp.Batch, got {type(batches).__name__}"
        )
    held_out = [_ready(b) for b in islice(batches, max_batches)]
    if not held_out:
        raise ConfigError("audit needs at least one held-out batch; the loader or list gave none")
    if any(b.labels is None for b in held_out):
        raise ConfigError("audit needs labelled batches: build the held-out loader with its label column")
    weights = weight_scores(held_out, dense_weight, embedding)  # before the shuffles: it checks its arguments
    base, drops = permutation_importance(model, held_out, repeats=repeats, metric=metric, seed=seed, progress=progress)
    if math.isnan(base):  # the logits are not NaN and the labels are two classes (permutation_importance checked)
        raise ConfigError(
            f"the {metric} of the held-out rows is NaN: the model gives infinite logits; bound them (a sigmoid's "
            "input, not its output)"
        )
    schema = dataset.schema if dataset is not None else (pipeline.input_schema if pipeline is not None else None)
    sizes = dataset.bytes_per_column() if dataset is not None else {}
    rows = dataset.num_rows if dataset is not None else 0
    sources = sources_of(pipeline, schema) if schema is not None else {}
    cost = {} if schema is None else {f.name: sum(sizes.get(c, (0, 0))[0] for c in f.columns) for f in schema}
    scores = []
    for name, values in drops.items():
        mean = float(values.mean())
        half = Z95 * float(values.std(ddof=1)) / math.sqrt(len(values))
        mine = sources.get(name, (name,))
        stored = sum(cost.get(s, 0) for s in mine)
        scores.append(FeatureScore(name, mean, mean - half, mean + half, weights.get(name), mine, stored,
                                   stored / rows if rows else 0.0))  # fmt: skip
    scores.sort(key=lambda f: (-f.importance, f.name))
    notes = []
    if dataset is None:
        notes.append("no dataset given: storage costs are not known")
    used = {s for f in scores for s in f.sources}
    return AuditReport(scores, metric, base, repeats, sum(b.num_rows for b in held_out), sum(cost.values()),
                       {s: cost.get(s, 0) for s in sorted(used)}, notes)  # fmt: skip


@dataclass(frozen=True)
class Pruned:
    """What `prune` keeps: the model features, the stored features to read, and the pipeline.

    A dropped feature that a kept one is computed from (a cross's inputs, a bucket's source) is
    still read, and the pipeline passes it through to the batch like every feature it reads.
    """

    features: list[str]  # model features kept
    dropped: list[str]  # model features dropped
    read: list[str]  # stored features a dataset must project (for gp.Dataset(features=...))
    pipeline: Pipeline | None
    stored_bytes: int  # of the features read

    def dataset(self, dataset: Dataset) -> Dataset:
        """`dataset` projected to what the kept features need."""
        return dataset.with_columns(features=self.read)


def check_prune_args(threshold, budget_bytes) -> None:
    """A ConfigError unless exactly one of threshold (a number, not NaN) and budget_bytes (>= 0) is given."""
    if (threshold is None) == (budget_bytes is None):
        raise ConfigError("prune takes either threshold= (an importance) or budget_bytes= (stored bytes), not both")
    if threshold is not None and not (is_real(threshold) and not math.isnan(threshold)):
        raise ConfigError(f"{threshold=} must be a number (an importance, such as 0.0)")
    if budget_bytes is not None and not (is_integer(budget_bytes) and budget_bytes >= 0):
        raise ConfigError(f"{budget_bytes=} must be a number of bytes >= 0")


def prune(report: AuditReport, pipeline: Pipeline | None = None, threshold: float | None = None,
          budget_bytes: int | None = None, keep=()) -> Pruned:  # fmt: skip
    """Drop the features that do not pay for themselves.

    Args:
        report: from `audit`.
        pipeline: the pipeline the report's features came from; the result holds only the ops
            the kept features need.
        threshold: keep the features whose interval's lower end is above it (0: those shown to
            help at all).
        budget_bytes: or keep the most important features while their sources' stored bytes
            fit the budget (a source shared by kept features counts once); needs a report with
            storage costs (audited with dataset=).
        keep: a feature name or names kept whatever their score; with budget_bytes, their
            sources are charged to the budget first.

    Raises:
        ConfigError: neither or both of threshold and budget_bytes, a pipeline that is not a
            gp.Pipeline; `keep` is not names, or names unknown features; budget_bytes with a report
            without storage costs, or below what `keep` alone reads.
    """
    check_prune_args(threshold, budget_bytes)
    if not isinstance(report, AuditReport):
        raise ConfigError(f"report must be the AuditReport audit() gave, got {type(report).__name__}")
    check_pipeline(pipeline)
    keep = _names(keep)
    unknown = sorted(set(keep) - set(report.names))
    if unknown:
        raise ConfigError(f"keep names features {unknown} that the report does not have")
    if budget_bytes is not None and not report.dataset_bytes:
        raise ConfigError(
            "the report has no storage costs (the audit ran without dataset=), so budget_bytes cannot choose; "
            "audit with dataset=gp.Dataset(...) to prune by budget, or prune by threshold="
        )

    def stored(sources) -> int:
        return sum(report.source_bytes.get(s, 0) for s in sources)

    chosen = set(keep)
    read = {s for f in report.features if f.name in chosen for s in f.sources}
    if budget_bytes is not None and stored(read) > budget_bytes:
        raise ConfigError(
            f"keep={list(keep)} alone reads {stored(read):,} stored bytes, over {budget_bytes=}; raise the budget "
            "or keep fewer features"
        )
    for f in report.features:
        if f.name in chosen:
            continue
        if threshold is not None:
            ok = f.low > threshold
        else:
            ok = stored(read | set(f.sources)) <= budget_bytes
        if ok:
            chosen.add(f.name)
            read.update(f.sources)
    kept = [n for n in report.names if n in chosen]
    new, read_list = None, sorted(read)
    if pipeline is not None:
        new = Pipeline(_needed_ops(pipeline, set(kept)))
        schema = pipeline.input_schema
        if schema is not None:  # the pipeline's input: the projection of what the kept features need
            written = {out for op in new.ops for _, out in op.applications()}
            raw = [n for n in kept if n in schema.names and n not in written]  # read and taken as they are
            read_list = new.features_to_read(schema, keep=raw)
            new.input_schema = schema.select(read_list)
    return Pruned(kept, [n for n in report.names if n not in chosen], read_list, new, int(stored(read_list)))


def _names(keep) -> tuple[str, ...]:
    """`keep` as a tuple of feature names.

    Raises:
        ConfigError: it is neither a name nor an iterable of names.
    """
    if isinstance(keep, str):
        return (keep,)
    names = tuple(keep) if hasattr(keep, "__iter__") else None
    if names is None or not all(isinstance(n, str) for n in names):
        raise ConfigError(f"keep={keep!r} must be a feature name or a list of names, such as keep=['price']")
    return names


def _needed_ops(pipeline: Pipeline, outputs: set[str]) -> list:
    """The ops (restricted to the applications needed) that make `outputs`, in pipeline order."""
    needed, kept = set(outputs), []
    for op in reversed(pipeline.ops):
        apps = [(inputs, out) for inputs, out in op.applications() if out in needed]
        for inputs, out in apps:
            needed.discard(out)
            needed.update(inputs)
        if not apps:
            continue
        if op.arity == 2 or len(apps) == len(op.applications()):
            kept.append(op)
        else:
            features = tuple(inputs[0] for inputs, _ in apps)
            kept.append(replace(op, features=features, out=tuple(out for _, out in apps) if op.out else None))
    return kept[::-1]


def _ready(batch) -> Batch:
    if not isinstance(batch, Batch):
        raise ConfigError(f"audit takes gp.Batch objects (from gp.DataLoader), got {type(batch).__name__}")
    if batch.requests is not None:
        batch = batch.expand()
    import torch

    return batch if isinstance(batch.dense, torch.Tensor) else batch.to_torch()
