"""`Pipeline`: an ordered list of ops, fitted in a streaming pass, saved as JSON."""

from __future__ import annotations

import json
import math

import numpy as np
from tqdm.auto import tqdm

from .._checks import ensure_instance, ensure_integer
from .._jsonfile import JsonFile
from ..batch import Batch
from ..errors import ConfigError, SchemaError
from ..reader import Dataset
from ..schema import DENSE, IMAGE, Feature, Schema, unknown_message
from .images import IMAGE_OPS
from .ops import Bucketize, MinMax, Normalize, Op, OverlapCount, op_from_dict, per_feature, with_params

__all__ = ["Pipeline", "output_schema", "provenance", "skip_materialized"]


def output_schema(ops, schema: Schema) -> Schema:
    """The schema after `ops`: in-place outputs keep their position, new outputs are appended.

    Raises:
        SchemaError: an op names a feature that does not exist at that point.
        ConfigError: an op is given a feature of a kind it does not take, or its out= names a
            feature that exists (other than its input, or a stored derived feature to recompute),
            or it makes ids from an OverlapCount output (the plan counts after every list op).
    """
    features = list(schema.features)
    position = {f.name: i for i, f in enumerate(features)}
    written = set()
    counted: dict[str, Op] = {}  # features whose values an OverlapCount computes: its op
    for op in ops:
        for inputs, out in op.applications():
            kinds = []
            for name in inputs:
                if name not in position:
                    raise SchemaError(unknown_message(f"{op}: input feature", name, list(position)))
                kind = features[position[name]].kind
                if kind not in op.accepts:
                    raise ConfigError(
                        f"{op}: feature {name!r} is {kind}, but {type(op).__name__} takes "
                        f"{' or '.join(op.accepts)} features; apply it to another feature or convert "
                        "this one first"
                    )
                kinds.append(kind)
            made = Feature(out, op.output_kind(tuple(kinds)), features[position[inputs[0]]].group)
            source = next((name for name in inputs if name in counted), None)
            if source is not None and made.kind != DENSE:
                (a, b), count = counted[source].features, counted[source].out[0]
                raise ConfigError(
                    f"{op}: its input {source!r} comes from {counted[source]}, a count the plan computes after "
                    f"every list op, so no op can make ids from it; use {source!r} as a dense feature, or store "
                    f"the count with gp.materialize(dataset, [gp.OverlapCount({a!r}, {b!r}, out={count!r})], path) "
                    "and run the pipeline on the dataset it returns"
                )
            if out in position and out not in inputs and features[position[out]].derived is None:
                who = "an earlier op writes" if out in written else "the schema has"
                raise ConfigError(
                    f"{op}: out={out!r} names a feature that {who} already, which it would overwrite; "
                    f"give the output a new name, or leave out= unset to transform {inputs[0]!r} in place"
                )
            written.add(out)
            if source is not None or isinstance(op, OverlapCount):
                counted[out] = counted[source] if source is not None else op
            else:
                counted.pop(out, None)
            if out in position:
                features[position[out]] = made
            else:
                position[out] = len(features)
                features.append(made)
    return Schema(tuple(features), schema.labels, schema.extras)


def provenance(ops) -> list[tuple[Op, str]]:
    """Each application of `ops` as a single-application op, with its provenance.

    The provenance is the canonical JSON of the op and, in pipeline order, every earlier
    application it depends on (through the features they write). `gp.materialize` stores
    it as `Feature.derived`; `skip_materialized` compares it.
    """
    singles = [single for op in ops for single in per_feature(op)]
    made_by: dict[str, frozenset[int]] = {}
    result = []
    for i, op in enumerate(singles):
        ((inputs, out),) = op.applications()
        chain = frozenset({i}).union(*(made_by.get(name, ()) for name in inputs))
        made_by[out] = chain
        ops_json = [singles[j].to_dict() for j in sorted(chain)]
        result.append((op, json.dumps(ops_json, sort_keys=True, separators=(",", ":"))))
    return result


def skip_materialized(ops, schema: Schema) -> tuple[list[Op], list[str]]:
    """(the single-application ops of `ops` left to run on `schema`, the outputs read instead).

    An application is skipped when `schema` stores its output with `derived` equal to its
    provenance and no earlier op has written that name; a derived feature of the same name with
    other provenance is computed and overwritten (`output_schema` refuses to overwrite a stored
    feature that is not derived).
    """
    run, read, written = [], [], set()
    for op, chain in provenance(ops):
        out = op.applications()[0][1]
        if out not in written and out in schema and schema[out].derived == chain:
            read.append(out)
        else:
            run.append(op)
        written.add(out)
    return run, read


class Pipeline(JsonFile):
    """An ordered list of ops.

    `fit(dataset)` computes the statistics that ops need in a streaming pass and returns a fitted
    pipeline; `compile(schema, device)` makes a `Plan`; `pipeline(batch)` runs eagerly on the host.
    """

    def __init__(self, ops, input_schema: Schema | None = None):
        if isinstance(ops, Op) or not hasattr(ops, "__iter__"):
            raise ConfigError(f"Pipeline takes a list of ops, got {ops!r}; wrap a single op: gp.Pipeline([op])")
        ops = list(ops)
        for op in ops:
            if not isinstance(op, Op):
                raise ConfigError(f"Pipeline takes ops (gp.Hash(...), ...), got {op!r}")
        self.ops: tuple[Op, ...] = tuple(ops)
        self.input_schema = input_schema
        self._plans: dict = {}

    @property
    def fitted(self) -> bool:
        return all(op.fitted for op in self.ops)

    def output_schema(self, schema: Schema | None = None) -> Schema:
        """The schema of this pipeline's batches (materialized outputs in `schema` pass through)."""
        schema = self._schema(schema)
        return output_schema(skip_materialized(self.ops, schema)[0], schema)

    def features_to_read(self, schema: Schema | None = None, keep=()) -> list[str]:
        """The features of `schema` that a dataset must project to run this pipeline, in `schema`'s order.

        Outputs that `schema` stores already (written by `gp.materialize`) are read
        instead of computed, so the features only they need are left out:
        `gp.Dataset(path, features=pipeline.features_to_read(gp.Dataset(path).schema))`.

        Args:
            keep: features to read as well (those the model takes untransformed).

        Raises:
            SchemaError: a feature the pipeline needs, or one in `keep`, is not in `schema`.
        """
        schema = self._schema(schema)
        ops, read = skip_materialized(self.ops, schema)
        needed, written = set(read), set()
        for op in ops:
            ((inputs, out),) = op.applications()
            needed.update(name for name in inputs if name not in written)
            written.add(out)
        output_schema(ops, schema)  # names a missing input, with close matches
        needed.update(schema.select(keep).names)
        return [name for name in schema.names if name in needed]

    def _schema(self, schema):
        schema = self.input_schema if schema is None else schema  # an empty Schema is falsy
        if schema is None:
            raise ConfigError("this pipeline has no input schema yet; pass one or fit it on a dataset first")
        return ensure_instance(schema, Schema, "schema", "a gp.Schema, such as dataset.schema or batch.schema")

    # -- fitting ------------------------------------------------------------------------------
    def fit(self, dataset, max_rows: int | None = None, sample_size: int = 200_000, seed: int = 0, progress=True):
        """A fitted copy: Normalize mean/std (float64), MinMax min/max, Bucketize boundaries.

        One streaming pass over `dataset` (at most max_rows rows) fits every op whose input does
        not depend on another unfitted op; a chain of dependent unfitted ops takes one pass each.
        Bucketize boundaries are equal-frequency quantiles of a uniform sample of sample_size values
        (exact when the data are smaller), cut between distinct values (`equal_frequency`).
        """
        ensure_instance(dataset, Dataset, "fit dataset", "a gp.Dataset: gp.Dataset(path, features=...)")
        if max_rows is not None:
            ensure_integer(max_rows, "fit max_rows")
        ensure_integer(sample_size, "fit sample_size")
        ensure_integer(seed, "fit seed", 0)
        schema = dataset.schema
        self.output_schema(schema)  # validate before reading anything
        if schema.images:  # no fitted op reads an image: leave their bytes unread
            dataset = dataset.with_columns(features=[f.name for f in schema if f.kind != IMAGE])
        ops = [single for op in self.ops for single in _per_feature(op)]
        rng = np.random.default_rng(seed)
        while not all(op.fitted for op in ops):
            first = next(i for i, op in enumerate(ops) if not op.fitted)
            targets = _independent_unfitted(ops, first)
            stats = {i: _Stats(sample_size if isinstance(ops[i], Bucketize) else 0) for i in targets}
            # image ops never feed a fitted op: the prefix leaves them out rather than decode every image
            before = [op for op in ops[:first] if not isinstance(op, IMAGE_OPS)]
            prefix = Pipeline(before, schema) if before else None
            rows = 0
            bar = tqdm(total=max_rows or dataset.num_rows, desc=f"fitting {ops[first]}", unit="rows", disable=not progress)
            for unit in dataset.units():
                batch = dataset.read(unit).expand()  # statistics per row, as training sees them
                if prefix is not None:
                    batch = prefix(batch)
                dense = {k: batch.dense[j] for j, k in enumerate(batch.dense_keys)}
                take = batch.num_rows if max_rows is None else min(batch.num_rows, max_rows - rows)
                for i, s in stats.items():
                    s.add(dense[ops[i].features[0]][:take], rng)
                rows += take
                bar.update(take)
                if max_rows is not None and rows >= max_rows:
                    break
            bar.close()
            for i in targets:
                ops[i] = _fitted(ops[i], stats[i])
        return Pipeline(ops, schema)

    # -- running ------------------------------------------------------------------------------
    def compile(self, schema: Schema | None = None, device: str = "cpu", host_stage: bool | None = None,
                dedup: bool = False):  # fmt: skip
        """The `Plan` of this pipeline for `schema` (default: the one it was fitted on).

        dedup: a `DedupPlan` for de-duplicated batches (request features once per request).
        """
        if dedup:
            from .dedup import DedupPlan

            return DedupPlan(self, self._schema(schema), device, host_stage)
        from .plan import compile

        return compile(self, self._schema(schema), device, host_stage)

    def __call__(self, batch: Batch) -> Batch:
        """Run eagerly on a host batch with the CPU executor (plans are cached per schema)."""
        ensure_instance(batch, Batch, "batch", "a gp.Batch, such as dataset.read(unit)")
        schema = batch.schema if batch.schema is not None else self._schema(None)
        key = (schema, batch.requests is not None)
        if key not in self._plans:
            self._plans[key] = self.compile(schema, "cpu", dedup=key[1])
        return self._plans[key].run(batch)

    # -- persistence --------------------------------------------------------------------------
    def to_json(self) -> str:
        """Strict JSON: infinite and NaN parameters (Clamp's default bounds) are the strings "inf",
        "-inf" and "nan"."""
        return json.dumps(
            {
                "ops": [_json_op(op.to_dict(), _encode) for op in self.ops],
                "input_schema": None if self.input_schema is None else json.loads(self.input_schema.to_json()),
            },
            indent=1,
            allow_nan=False,
        )

    @classmethod
    def _from_json(cls, text: str) -> Pipeline:
        data = json.loads(text)  # also reads the bare Infinity that files written before held
        schema = data.get("input_schema")
        ops = [op_from_dict(_json_op(d, _decode)) for d in data["ops"]]
        return cls(ops, None if schema is None else Schema.from_json(json.dumps(schema)))

    def __eq__(self, other):
        return isinstance(other, Pipeline) and self.ops == other.ops

    def __repr__(self) -> str:
        return "Pipeline([\n" + "".join(f"  {op},\n" for op in self.ops) + "])"


_NON_FINITE = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}


def _json_op(data, convert):
    """A saved op's dict with `convert` applied to its parameters (names are left as they are)."""
    if not isinstance(data, dict):
        return data  # op_from_dict names what is wrong
    return {k: v if k in ("op", "features", "out") else convert(v) for k, v in data.items()}


def _encode(value):
    if isinstance(value, list):
        return [_encode(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # "inf", "-inf" or "nan"
    return value


def _decode(value):
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return _NON_FINITE.get(value, value) if isinstance(value, str) else value


def _independent_unfitted(ops, first: int) -> list[int]:
    """Unfitted ops whose inputs no op from `first` on has written before them."""
    written: set[str] = set()
    targets = []
    for i in range(first, len(ops)):
        op = ops[i]
        if not op.fitted and not written.intersection(op.features):
            targets.append(i)
        for _, out in op.applications():
            written.add(out)
    return targets


class _Stats:
    """Streaming moments (float64, Chan's merge), min/max and a uniform sample, ignoring NaN;
    infinite values are counted."""

    def __init__(self, sample_size: int):
        self.count, self.mean, self.m2, self.infinite = 0, 0.0, 0.0, 0
        self.min, self.max = math.inf, -math.inf
        self.sample_size = sample_size
        self.sample = np.empty(0, np.float32)
        self.keys = np.empty(0)

    def add(self, x: np.ndarray, rng) -> None:
        x = np.asarray(x)[~np.isnan(x)]
        if not len(x):
            return
        self.infinite += int(np.isinf(x).sum())  # then the moments are not finite (inf - inf), nor used
        x64 = x.astype(np.float64)
        with np.errstate(invalid="ignore"):
            n, mean = len(x64), float(x64.mean())
            m2 = float(((x64 - mean) ** 2).sum())
        total = self.count + n
        delta = mean - self.mean
        self.mean += delta * n / total
        self.m2 += m2 + delta**2 * self.count * n / total
        self.count = total
        self.min, self.max = min(self.min, float(x64.min())), max(self.max, float(x64.max()))
        if self.sample_size:  # keep the sample_size values with the smallest random keys
            keys = np.concatenate([self.keys, rng.random(n)])
            values = np.concatenate([self.sample, x])
            if len(values) > self.sample_size:
                keep = np.argpartition(keys, self.sample_size)[: self.sample_size]
                keys, values = keys[keep], values[keep]
            self.keys, self.sample = keys, values


def _per_feature(op: Op) -> list[Op]:
    """An unfitted op over several features as one op per feature (each gets its own statistics)."""
    return [op] if op.fitted else per_feature(op)


def _fitted(op: Op, s: _Stats) -> Op:
    if s.count == 0:
        raise ConfigError(
            f"cannot fit {op}: feature {op.features[0]!r} has no non-missing values in the data read; "
            "give the parameters explicitly or fit on more rows"
        )
    if s.infinite and isinstance(op, (Normalize, MinMax)):
        raise ConfigError(
            f"cannot fit {op}: feature {op.features[0]!r} holds {s.infinite} infinite values in the data read, "
            f"so its {'mean and std' if isinstance(op, Normalize) else 'range'} are not finite; put a "
            f"gp.Clamp({op.features[0]!r}, lo, hi) before it, or give the parameters explicitly"
        )
    if isinstance(op, Normalize):
        return with_params(op, mean=s.mean, std=math.sqrt(s.m2 / s.count))
    if isinstance(op, MinMax):
        return with_params(op, min=s.min, max=s.max)
    if isinstance(op, Bucketize):
        return with_params(op, boundaries=equal_frequency(np.sort(s.sample), op.num_buckets, op.right))
    raise ConfigError(f"{op} has nothing to fit")


def equal_frequency(values: np.ndarray, buckets: int, right: bool = False) -> tuple[float, ...]:
    """Increasing boundaries that cut sorted, non-empty `values` into at most `buckets` buckets
    of torch.bucketize as equal in count as ties allow.

    Without ties they are the inverted-CDF quantiles i/buckets. A cut falls only between distinct
    values, at the edge of the tied run nearest its target; when a run moves a cut, the values
    after it are split evenly over the buckets left. So no bucket is empty, and fewer boundaries
    come when there are fewer distinct values. right=False: a boundary is the last value below
    its cut (x <= b goes below); right=True: the first value above it (x < b goes below).
    """
    n, cuts = len(values), []
    start, parts, j = 0, buckets, 0  # the targets split values[start:] into `parts` buckets
    while len(cuts) < buckets - 1:
        j += 1
        previous = cuts[-1] if cuts else 0
        target = max(start + -(-(n - start) * j // parts), previous + 1)  # more buckets than values: one each
        low = int(np.searchsorted(values, values[target - 1], "left"))
        high = int(np.searchsorted(values, values[target - 1], "right"))
        if high < n and (high - target <= target - low or low <= previous):
            cut = high
        elif low > previous:
            cut = low
        else:
            break  # the last run of ties reaches back to the previous cut: nothing left to split
        cuts.append(cut)
        if cut != target:
            start, parts, j = cut, buckets - len(cuts), 0
    if not cuts:  # one distinct value
        return (float(values[0]),)
    return tuple(float(values[c if right else c - 1]) for c in cuts)

