"""The numba executor: a `Plan`'s fused stages on the host's cores (the CPU fallback).

Each stage is one parallel loop over (program or app) x row, like the CUDA kernels it mirrors; the
prefix sum between the lengths and values passes of a sparse level is numpy's cumsum.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import prange

from ..batch import Batch, KeyedJagged
from ..errors import DataError
from ._hash import cross_id, float_to_id, hash_128_to_64, sigrid_hash
from .plan import (
    D_BUCKETIZE,
    D_CLAMP,
    D_FILL,
    D_HASH,
    D_LOG1P,
    D_MINMAX,
    D_MODULO,
    D_NORMALIZE,
    D_TO_ID,
    M_HASH,
    M_MODULO,
    S_COPY,
    S_CROSS,
    S_INTERSECT,
    S_NGRAM,
    S_OVERLAP,
    S_SORT,
    S_TRUNCATE,
    S_UNION,
    DenseProgram,
    Plan,
    SparseLevel,
)

__all__ = ["CpuExecutor"]


# -- dense ---------------------------------------------------------------------------------------
@numba.njit(cache=True)
def _bucket(v, boundaries, offset, count, right):
    if math.isnan(v):
        return np.int64(count + 1)
    lo, hi = 0, count  # count boundaries below v (right: <= v)
    while lo < hi:
        mid = (lo + hi) // 2
        b = boundaries[offset + mid]
        if b < v or (right and b == v):
            lo = mid + 1
        else:
            hi = mid
    return np.int64(lo)


@numba.njit(parallel=True, cache=True)
def _dense_pass(x, src, steps, fparams, iparams, boundaries, out_dense, out_id, dense_out, ids_out, ids_valid):
    n = x.shape[1]
    for p in prange(len(src)):
        column = src[p]
        for r in range(n):
            v = x[column, r]
            made = np.int64(0)
            valid = True
            for s in range(steps.shape[1]):
                code = steps[p, s]
                if code == 0:
                    break
                if code == D_FILL:
                    if math.isnan(v):
                        v = fparams[p, s, 0]
                elif code == D_LOG1P:
                    if v < 0:
                        v = np.float32(0)
                    v = np.float32(np.log1p(v))
                elif code == D_CLAMP:
                    if v < fparams[p, s, 0]:
                        v = fparams[p, s, 0]
                    if v > fparams[p, s, 1]:
                        v = fparams[p, s, 1]
                elif code == D_NORMALIZE:
                    v = np.float32(v - fparams[p, s, 0])
                    if fparams[p, s, 1] != 0:
                        v = np.float32(v / fparams[p, s, 1])
                elif code == D_MINMAX:
                    lo, hi = fparams[p, s, 0], fparams[p, s, 1]
                    if hi == lo:
                        v = v if math.isnan(v) else np.float32(0)
                    else:
                        v = np.float32(np.float32(v - lo) / np.float32(hi - lo))
                elif code == D_BUCKETIZE:
                    made = _bucket(v, boundaries, iparams[p, s, 0], iparams[p, s, 1], iparams[p, s, 2] != 0)
                elif math.isnan(v):  # Hash, Modulo, cast: a missing value is a missing id
                    valid = False
                elif code == D_HASH:
                    made = sigrid_hash(float_to_id(v), iparams[p, s, 1], iparams[p, s, 0])
                elif code == D_MODULO:
                    made = float_to_id(v) % iparams[p, s, 0]
                elif code == D_TO_ID:
                    made = float_to_id(v)
            if out_dense[p] >= 0:
                dense_out[out_dense[p], r] = v
            else:
                ids_out[out_id[p], r] = made
                ids_valid[out_id[p], r] = valid


# -- sparse --------------------------------------------------------------------------------------
@numba.njit(inline="always")
def _map(v, codes, params):
    for j in range(codes.shape[0]):
        code = codes[j]
        if code == M_HASH:
            v = sigrid_hash(v, params[j, 1], params[j, 0])
        elif code == M_MODULO:
            v = v % params[j, 0]
        else:
            break
    return v


@numba.njit(cache=True)
def _first_occurrences(values):
    """mask[i]: values[i] does not occur in values[:i]."""
    order = np.argsort(values, kind="mergesort")
    mask = np.zeros(len(values), np.bool_)
    for j in range(len(order)):
        if j == 0 or values[order[j]] != values[order[j - 1]]:
            mask[order[j]] = True
    return mask


@numba.njit(cache=True)
def _contains(sorted_values, v):
    i = np.searchsorted(sorted_values, v)
    return i < len(sorted_values) and sorted_values[i] == v


@numba.njit(cache=True)
def _set_op(kind, va, vb):
    """Intersect / Union result of one row, or OverlapCount as a one-element array."""
    sorted_b = np.sort(vb)
    if kind == S_OVERLAP:
        count = 0
        for v in va:
            if _contains(sorted_b, v):
                count += 1
        return np.array([count], np.int64)
    if kind == S_INTERSECT:
        first = _first_occurrences(va)
        out = np.empty(len(va), np.int64)
        m = 0
        for i in range(len(va)):
            if first[i] and _contains(sorted_b, va[i]):
                out[m] = va[i]
                m += 1
        return out[:m]
    both = np.concatenate((va, vb))
    return both[_first_occurrences(both)]


@numba.njit(cache=True)
def _row(values, start, length, codes, params):
    out = np.empty(length, np.int64)
    for j in range(length):
        out[j] = _map(values[start + j], codes, params)
    return out


@numba.njit(cache=True)
def _score_order(scores, descending):
    """Stable order by score, NaN last."""
    finite = np.empty(len(scores), np.int64)
    nans = np.empty(len(scores), np.int64)
    nf = nn = 0
    for i in range(len(scores)):
        if math.isnan(scores[i]):
            nans[nn] = i
            nn += 1
        else:
            finite[nf] = i
            nf += 1
    keys = scores[finite[:nf]]
    if descending:
        keys = -keys
    order = finite[:nf][np.argsort(keys, kind="mergesort")]
    return np.concatenate((order, nans[:nn]))


@numba.njit(parallel=True, cache=True)
def _level_lengths(kind, a, b, params, maps, map_params, out, n, in_lengths, in_offsets, in_values, out_lengths, derived):
    for t in prange(len(kind) * n):
        i, r = t // n, t % n
        k = kind[i]
        la = in_lengths[a[i] * n + r]
        if k == S_COPY:
            length = la
        elif k == S_TRUNCATE:
            length = min(la, params[i, 0])
        elif k == S_SORT:
            length = la if params[i, 1] < 0 else min(la, params[i, 1])
        elif k == S_NGRAM:
            length = max(la - params[i, 0] + 1, 0)
        else:
            lb = in_lengths[b[i] * n + r]
            if k == S_CROSS:
                length = la * lb
            else:
                va = _row(in_values, in_offsets[a[i] * n + r], la, maps[i, 0], map_params[i, 0])
                vb = _row(in_values, in_offsets[b[i] * n + r], lb, maps[i, 1], map_params[i, 1])
                result = _set_op(k, va, vb)
                if k == S_OVERLAP:
                    derived[out[i], r] = np.float32(result[0])
                    continue
                length = len(result)
        out_lengths[out[i] * n + r] = length


@numba.njit(parallel=True, cache=True)
def _level_values(
    kind, a, b, params, maps, map_params, weighted, out, n,
    in_lengths, in_offsets, in_values, in_weights, out_offsets, out_values, out_weights, has_out_weights,
):  # fmt: skip
    for t in prange(len(kind) * n):
        i, r = t // n, t % n
        k = kind[i]
        if k == S_OVERLAP:
            continue
        o = out_offsets[out[i] * n + r]
        length = out_offsets[out[i] * n + r + 1] - o
        la = in_lengths[a[i] * n + r]
        sa = in_offsets[a[i] * n + r]
        epilogue, epilogue_params = maps[i, 2], map_params[i, 2]
        if k == S_COPY or k == S_TRUNCATE or k == S_SORT:
            start = sa + la - length if k == S_TRUNCATE and params[i, 1] != 0 else sa  # keep="last"
            order = _score_order(in_weights[sa : sa + la], params[i, 0] != 0) if k == S_SORT else None
            for j in range(length):
                source = sa + order[j] if k == S_SORT else start + j
                v = _map(in_values[source], maps[i, 0], map_params[i, 0])
                out_values[o + j] = _map(v, epilogue, epilogue_params)
                if has_out_weights:
                    out_weights[o + j] = in_weights[source] if weighted[i] else np.float32(1)
            continue
        if k == S_NGRAM:
            ids = _row(in_values, sa, la, maps[i, 0], map_params[i, 0])
            width = params[i, 0]
            for j in range(length):
                h = np.uint64(ids[j])
                for m in range(1, width):
                    h = hash_128_to_64(h, np.uint64(ids[j + m]))
                v = sigrid_hash(np.int64(h), params[i, 2], params[i, 1])
                out_values[o + j] = _map(v, epilogue, epilogue_params)
        else:
            va = _row(in_values, sa, la, maps[i, 0], map_params[i, 0])
            lb = in_lengths[b[i] * n + r]
            vb = _row(in_values, in_offsets[b[i] * n + r], lb, maps[i, 1], map_params[i, 1])
            if k == S_CROSS:
                for x in range(la):
                    for y in range(lb):
                        v = sigrid_hash(cross_id(va[x], vb[y]), params[i, 1], params[i, 0])
                        out_values[o + x * lb + y] = _map(v, epilogue, epilogue_params)
            else:
                result = _set_op(k, va, vb)
                for j in range(length):
                    out_values[o + j] = _map(result[j], epilogue, epilogue_params)
        if has_out_weights:  # ids made by these ops carry no scores
            for j in range(length):
                out_weights[o + j] = np.float32(1)


def _offsets(lengths) -> np.ndarray:
    offsets = np.zeros(len(lengths) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return offsets


class CpuExecutor:
    """Runs a `Plan` with numba on the host's cores."""

    name = "cpu"

    def run(self, plan: Plan, batch: Batch) -> Batch:
        _check_batch(plan, batch)
        n = batch.num_rows
        sparse = batch.sparse
        lengths, values, weights = _host_arrays(sparse, n)
        if plan.host is not None:
            lengths, values, weights = self.run_level(plan.host, n, lengths, values, weights, None)
        dense, ids, valid = self.run_dense(plan.dense, np.asarray(batch.dense, np.float32), n)
        if plan.dense.num_ids:  # ids made from dense features join level 0 as extra keys
            lengths = np.concatenate([lengths, valid.ravel().astype(np.int32)])
            values = np.concatenate([values, ids.ravel()[valid.ravel()]])
            if weights is not None:
                weights = np.concatenate([weights, np.ones(int(valid.sum()), np.float32)])
        derived = np.zeros((plan.levels[-1].num_derived if plan.levels else 0, n), np.float32)
        for level in plan.levels:
            if not level.identity:
                lengths, values, weights = self.run_level(level, n, lengths, values, weights, derived)
        if plan.derived is not None:
            self.run_dense(plan.derived, derived, n, dense)
        schema = plan.output_schema
        keys = tuple(f.name for f in schema.sparse)
        has_weights = any(f.kind == "scored" for f in schema.sparse)
        return Batch(
            n,
            tuple(f.name for f in schema.dense),
            dense,
            KeyedJagged(keys, lengths, values, weights if has_weights else None),
            batch.labels,
            batch.extras,
            batch.inverse,
            schema,
        )

    @staticmethod
    def run_dense(program: DenseProgram, x: np.ndarray, n: int, dense_out=None):
        if program.identity and dense_out is None:
            return x, None, None
        if dense_out is None:
            dense_out = np.empty((program.num_dense, n), np.float32)
        ids = np.empty((program.num_ids, n), np.int64)
        valid = np.empty((program.num_ids, n), np.bool_)
        if len(program.src) and n:
            _dense_pass(
                x, program.src, program.steps, program.fparams, program.iparams, program.boundaries,
                program.out_dense, program.out_id, dense_out, ids, valid,
            )  # fmt: skip
        return dense_out, ids, valid

    @staticmethod
    def run_level(level: SparseLevel, n: int, lengths, values, weights, derived):
        if derived is None:
            derived = np.zeros((0, n), np.float32)
        in_offsets = _offsets(lengths)
        out_lengths = np.zeros(level.num_outputs * n, np.int32)
        args = (level.kind, level.a, level.b, level.params, level.maps, level.map_params)
        if n:
            _level_lengths(*args, level.out, n, lengths, in_offsets, values, out_lengths, derived)
        out_offsets = _offsets(out_lengths)
        total = int(out_offsets[-1])
        out_values = np.empty(total, np.int64)
        out_weights = np.empty(total if level.has_weights else 0, np.float32)
        in_weights = weights if weights is not None else np.empty(0, np.float32)
        if n:
            _level_values(
                *args, level.weighted, level.out, n, lengths, in_offsets, values, in_weights,
                out_offsets, out_values, out_weights, level.has_weights,
            )  # fmt: skip
        return out_lengths, out_values, out_weights if level.has_weights else None


def _host_arrays(sparse: KeyedJagged, n: int):
    lengths = np.asarray(sparse.lengths, np.int32)
    values = np.asarray(sparse.values, np.int64)
    weights = None if sparse.weights is None else np.asarray(sparse.weights, np.float32)
    return lengths, values, weights


def _check_batch(plan: Plan, batch: Batch) -> None:
    """The batch holds what the plan was compiled for, with consistent offsets."""
    schema = plan.input_schema
    expected_dense = tuple(f.name for f in schema.dense)
    expected_sparse = tuple(f.name for f in schema.sparse)
    if batch.dense_keys != expected_dense or batch.sparse.keys != expected_sparse:
        raise DataError(
            f"batch features (dense {list(batch.dense_keys)}, sparse {list(batch.sparse.keys)}) differ "
            f"from the plan's (dense {list(expected_dense)}, sparse {list(expected_sparse)}); compile the "
            "pipeline for this batch's schema"
        )
    lengths = np.asarray(batch.sparse.lengths)
    if len(lengths) != len(expected_sparse) * batch.num_rows or (len(lengths) and lengths.min() < 0):
        raise DataError(f"batch lengths hold {len(lengths)} entries (or negative ones) for {len(expected_sparse)} keys x {batch.num_rows} rows")
    if int(lengths.sum()) != len(batch.sparse.values):
        raise DataError(
            f"batch lengths sum to {int(lengths.sum())} but there are {len(batch.sparse.values)} values; "
            "the batch is corrupt"
        )
