"""The reference executor: plain numpy and Python, one op at a time. It is the test oracle.

Written to be obviously correct, not fast: list ops loop over rows in Python, and the hash
functions use Python integers masked to 64 bits.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..batch import Batch
from ..schema import SCORED
from . import ops as O
from ._log1p import log1p32_array
from .pipeline import output_schema
from .plan import MAX_ROW_IDS, cross_too_long, output_batch

__all__ = ["ReferenceExecutor", "sigrid_hash", "twang_mix64", "hash_128_to_64"]

MASK = (1 << 64) - 1


def twang_mix64(key: int) -> int:
    key &= MASK
    key = (~key + (key << 21)) & MASK
    key ^= key >> 24
    key = (key + (key << 3) + (key << 8)) & MASK
    key ^= key >> 14
    key = (key + (key << 2) + (key << 4)) & MASK
    key ^= key >> 28
    return (key + (key << 31)) & MASK


def hash_128_to_64(upper: int, lower: int) -> int:
    mul = 0x9DDFEA08EB382D69
    a = ((lower ^ upper) & MASK) * mul & MASK
    a ^= a >> 47
    b = ((upper & MASK) ^ a) * mul & MASK
    b ^= b >> 47
    return b * mul & MASK


def as_int64(x: int) -> int:
    x &= MASK
    return x - (1 << 64) if x >= 1 << 63 else x


def sigrid_hash(x: int, salt: int, num_buckets: int) -> int:
    if num_buckets == 1:
        return 0
    return as_int64(hash_128_to_64(salt, twang_mix64(x))) % num_buckets


def float_to_id(x: float) -> int:
    if x >= 2.0**63:
        return 2**63 - 1
    if x <= -(2.0**63):
        return -(2**63)
    return int(x)


class _Lists:
    """One list feature as Python lists per row (and scores, or None)."""

    def __init__(self, rows, scores=None):
        self.rows, self.scores = rows, scores


class ReferenceExecutor:
    """Applies a pipeline's ops one by one to a host batch."""

    name = "reference"

    def launches(self, plan) -> int:
        from .plan import stage_launches

        return stage_launches(plan)

    def run(self, plan, batch: Batch, host_stage: bool = True) -> Batch:
        # one op at a time; a host stage run already is harmless again (Truncate, SortByScore). The
        # plan's ops leave out image ops; its output schema has their outputs, for the image stage.
        return replace(run_ops(plan.pipeline.ops, plan.input_schema, batch), schema=plan.output_schema)


def run_ops(ops, schema, batch: Batch) -> Batch:
    state = {}
    for j, name in enumerate(batch.dense_keys):
        state[name] = np.asarray(batch.dense[j], np.float32).copy()
    for name in batch.sparse.keys:
        lengths, values, weights = batch.sparse.feature(name)
        starts = np.concatenate([[0], np.cumsum(lengths)])
        rows = [values[starts[r] : starts[r + 1]].tolist() for r in range(len(lengths))]
        scored = schema[name].kind == SCORED
        scores = [weights[starts[r] : starts[r + 1]].tolist() for r in range(len(lengths))] if scored else None
        state[name] = _Lists(rows, scores)
    with np.errstate(over="ignore", invalid="ignore"):  # inf and NaN are results like any other
        for op in ops:
            for inputs, out in op.applications():
                state[out] = _apply(op, [state[n] for n in inputs], batch.num_rows)
    return _assemble(output_schema(ops, schema), state, batch)


def _apply(op, args, n):
    x = args[0]
    f32 = np.float32
    if isinstance(op, O.FillMissing):
        return np.where(np.isnan(x), f32(op.value), x).astype(f32)
    if isinstance(op, O.Log1p):
        # comparisons, not np.maximum, as the kernels do: -0.0 stays -0.0
        return log1p32_array(np.where(x < f32(0), f32(0), x))  # the float32 log1p every executor computes
    if isinstance(op, O.Clamp):
        x = np.where(x < f32(op.lo), f32(op.lo), x)
        return np.where(x > f32(op.hi), f32(op.hi), x).astype(f32)
    if isinstance(op, O.Normalize):
        centered = x - f32(op.mean)
        return centered if f32(op.std) == 0 else (centered / f32(op.std)).astype(f32)
    if isinstance(op, O.MinMax):
        lo, hi = f32(op.min), f32(op.max)
        if hi == lo:
            return np.where(np.isnan(x), f32(np.nan), f32(0))
        return ((x - lo) / (hi - lo)).astype(f32)
    if isinstance(op, O.Bucketize):
        b = np.asarray(op.boundaries, f32)
        ids = np.searchsorted(b, x, side="right" if op.right else "left")
        ids[np.isnan(x)] = len(b) + 1
        return _Lists([[int(i)] for i in ids])
    if isinstance(op, (O.Hash, O.Modulo)):
        lists = _as_lists(x)
        fn = (lambda v: sigrid_hash(v, op.salt, op.num_buckets)) if isinstance(op, O.Hash) else (lambda v: v % op.n)
        return _Lists([[fn(v) for v in row] for row in lists.rows], lists.scores)
    if isinstance(op, O.Truncate):
        k = op.max_len

        def cut(row):
            return row[:k] if op.keep == "first" else row[max(len(row) - k, 0) :]

        return _Lists([cut(r) for r in x.rows], [cut(s) for s in x.scores] if x.scores is not None else None)
    if isinstance(op, O.SortByScore):
        rows, scores = [], []
        for ids, sc in zip(x.rows, x.scores):
            order = sorted(range(len(ids)), key=lambda i: (np.isnan(sc[i]), -sc[i] if op.descending else sc[i]))
            order = order if op.top_k is None else order[: op.top_k]
            rows.append([ids[i] for i in order])
            scores.append([sc[i] for i in order])
        return _Lists(rows, scores)
    if isinstance(op, O.NGram):
        out = []
        for ids in x.rows:
            grams = []
            for i in range(len(ids) - op.n + 1):
                h = ids[i] & MASK
                for v in ids[i + 1 : i + op.n]:
                    h = hash_128_to_64(h, v & MASK)
                grams.append(sigrid_hash(as_int64(h), op.salt, op.num_buckets))
            out.append(grams)
        return _Lists(out)
    a, b = _as_lists(args[0]), _as_lists(args[1])
    if isinstance(op, O.Cross):
        longest = max((len(ra) * len(rb) for ra, rb in zip(a.rows, b.rows)), default=0)
        if longest > MAX_ROW_IDS:
            raise cross_too_long(longest, op.out[0])
        return _Lists(
            [
                [sigrid_hash(as_int64(hash_128_to_64(u & MASK, v & MASK)), op.salt, op.num_buckets) for u in ra for v in rb]
                for ra, rb in zip(a.rows, b.rows)
            ]
        )
    if isinstance(op, O.Intersect):
        rows = []
        for ra, rb in zip(a.rows, b.rows):
            in_b, seen, row = set(rb), set(), []
            for v in ra:
                if v in in_b and v not in seen:
                    seen.add(v)
                    row.append(v)
            rows.append(row)
        return _Lists(rows)
    if isinstance(op, O.Union):
        return _Lists([list(dict.fromkeys(ra + rb)) for ra, rb in zip(a.rows, b.rows)])
    if isinstance(op, O.OverlapCount):
        return np.array([sum(v in set(rb) for v in ra) for ra, rb in zip(a.rows, b.rows)], np.float32)
    raise NotImplementedError(type(op).__name__)


def _as_lists(x) -> _Lists:
    if isinstance(x, _Lists):
        return x
    return _Lists([[] if np.isnan(v) else [float_to_id(float(v))] for v in x])


def _assemble(schema, state, batch: Batch) -> Batch:
    n = batch.num_rows
    dense = np.stack([state[f.name] for f in schema.dense]) if schema.dense else np.empty((0, n), np.float32)
    lengths, values, weights = [], [], []
    any_scored = any(f.kind == SCORED for f in schema.sparse)
    for f in schema.sparse:
        lists = state[f.name]
        lengths.append(np.array([len(r) for r in lists.rows], np.int32))
        values.append(np.array([v for r in lists.rows for v in r], np.int64))
        if any_scored:
            w = [v for r in lists.scores for v in r] if f.kind == SCORED else [1.0] * len(values[-1])
            weights.append(np.array(w, np.float32))
    cat = lambda parts, dt: np.concatenate(parts).astype(dt) if parts else np.empty(0, dt)  # noqa: E731
    return output_batch(schema, batch, dense, cat(lengths, np.int32), cat(values, np.int64), cat(weights, np.float32))



