"""The numba executor: a `Plan`'s fused stages on the host's cores (the CPU fallback).

Each stage is one parallel loop over (program or app) x row, like the CUDA kernels it mirrors; the
prefix sum between the lengths and values passes of a sparse level is a parallel scan.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import prange

from ..batch import Batch, KeyedJagged
from ._hash import cross_id, divisor, float_to_id, floor_mod, hash_128_to_64, sigrid_hash
from ._log1p import log1p32_block
from .plan import (
    D_BUCKETIZE,
    D_CLAMP,
    D_FILL,
    D_HASH,
    D_LOG1P,
    D_MINMAX,
    D_MODULO,
    D_NORMALIZE,
    M_HASH,
    M_MODULO,
    S_COPY,
    S_CROSS,
    S_INTERSECT,
    S_NGRAM,
    S_OVERLAP,
    S_SORT,
    S_TRUNCATE,
    DenseProgram,
    Plan,
    SparseLevel,
    output_batch,
    stage_launches,
)

__all__ = ["CpuExecutor"]

BLOCK = 2048  # rows per parallel tile: big enough to amortize scheduling, small enough for L2
SCAN_CHUNK = 1 << 16  # lengths per chunk of the parallel prefix sum


# -- dense ---------------------------------------------------------------------------------------
@numba.njit(inline="always")
def _bucket(v, boundaries, offset, count, right):
    """Boundaries below v (right: <= v), NaN -> count + 1: a branch-free binary search, as the
    comparisons of random values mispredict half the time."""
    if math.isnan(v):
        return np.int64(count + 1)
    if count == 0:
        return np.int64(0)
    base, n = 0, count
    while n > 1:
        half = n // 2
        b = boundaries[offset + base + half]
        base += half * ((b < v) | (right & (b == v)))
        n -= half
    b = boundaries[offset + base]
    return np.int64(base + ((b < v) | (right & (b == v))))


@numba.njit(parallel=True, cache=True)
def _dense_pass(x, src, steps, fparams, iparams, boundaries, out_dense, out_id, dense_out, ids_out, ids_valid):
    """Each (program, block of rows) tile runs the program one step at a time over the block."""
    n = x.shape[1]
    blocks = (n + BLOCK - 1) // BLOCK
    for t in prange(len(src) * blocks):
        p, lo = t // blocks, (t % blocks) * BLOCK
        hi = min(n, lo + BLOCK)
        y = dense_out[out_dense[p], lo:hi] if out_dense[p] >= 0 else np.empty(hi - lo, np.float32)
        y[:] = x[src[p], lo:hi]
        for s in range(steps.shape[1]):
            code = steps[p, s]
            a, b = fparams[p, s, 0], fparams[p, s, 1]
            if code == 0:
                break
            if code == D_FILL:
                for r in range(len(y)):
                    if math.isnan(y[r]):
                        y[r] = a
            elif code == D_LOG1P:
                log1p32_block(y)
            elif code == D_CLAMP:
                for r in range(len(y)):
                    if y[r] < a:
                        y[r] = a
                    if y[r] > b:
                        y[r] = b
            elif code == D_NORMALIZE:
                for r in range(len(y)):
                    y[r] = y[r] - a if b == 0 else np.float32(y[r] - a) / b
            elif code == D_MINMAX:
                for r in range(len(y)):
                    if b == a:
                        y[r] = y[r] if math.isnan(y[r]) else np.float32(0)
                    else:
                        y[r] = np.float32(y[r] - a) / np.float32(b - a)
            else:  # a terminal id step: write the ids of the block and stop
                row = out_id[p]
                div = divisor(iparams[p, s, 0] if code == D_HASH or code == D_MODULO else 1)
                for r in range(len(y)):
                    v = y[r]
                    valid = code == D_BUCKETIZE or not math.isnan(v)
                    made = np.int64(0)
                    if code == D_BUCKETIZE:
                        made = _bucket(v, boundaries, iparams[p, s, 0], iparams[p, s, 1], iparams[p, s, 2] != 0)
                    elif valid and code == D_HASH:
                        made = sigrid_hash(float_to_id(v), iparams[p, s, 1], div)
                    elif valid and code == D_MODULO:
                        made = floor_mod(float_to_id(v), div)
                    elif valid:
                        made = float_to_id(v)
                    ids_out[row, lo + r] = made
                    ids_valid[row, lo + r] = valid
                break


# -- sparse --------------------------------------------------------------------------------------
# A mapping is the Hash / Modulo steps on the ids of one slot of a sparse app, as a [MAX_MAPS, 7]
# table: code (M_END stops), salt, then the divisor() of num_buckets or n.
@numba.njit(cache=True)
def _mappings(maps, map_params):
    """The mapping tables of every app and slot of a level, once per run."""
    out = np.zeros(maps.shape + (7,), np.int64)
    for i in range(maps.shape[0]):
        for slot in range(maps.shape[1]):
            for j in range(maps.shape[2]):
                if maps[i, slot, j] == M_HASH or maps[i, slot, j] == M_MODULO:
                    out[i, slot, j, 0], out[i, slot, j, 1] = maps[i, slot, j], map_params[i, slot, j, 1]
                    div = divisor(map_params[i, slot, j, 0])
                    for k in range(5):
                        out[i, slot, j, 2 + k] = np.int64(div[k])
    return out


@numba.njit(inline="always")
def _divisor_at(mapping, j):
    """Step j's divisor as a tuple of scalars, read from the table."""
    return (np.uint64(mapping[j, 2]), np.uint64(mapping[j, 3]), np.uint64(mapping[j, 4]),
            np.uint64(mapping[j, 5]), np.uint64(mapping[j, 6]))  # fmt: skip


@numba.njit(inline="always")
def _map(v, mapping):
    for j in range(mapping.shape[0]):
        code = mapping[j, 0]
        if code == 0:
            break
        div = _divisor_at(mapping, j)
        v = sigrid_hash(v, mapping[j, 1], div) if code == M_HASH else floor_mod(v, div)
    return v


@numba.njit(inline="always")
def _map_all(values, mapping):
    """values[:] = mapping(values), a step at a time: each loop keeps its constants in registers
    and vectorizes (all steps per id, read from the table, ran 2.5x slower; indexing a
    range of the whole array rather than a view from 0, 2x slower)."""
    for j in range(mapping.shape[0]):
        code = mapping[j, 0]
        if code == 0:
            break
        salt = mapping[j, 1]
        div = _divisor_at(mapping, j)
        if code == M_HASH:
            for e in range(len(values)):
                values[e] = sigrid_hash(values[e], salt, div)
        else:
            for e in range(len(values)):
                values[e] = floor_mod(values[e], div)


@numba.njit(inline="always")
def _copy(source, lo, hi, dest, at):
    for j in range(hi - lo):  # a loop: numba's slice assignment costs more for short rows
        dest[at + j] = source[lo + j]


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
def _row(values, start, length, mapping):
    out = np.empty(length, np.int64)
    for j in range(length):
        out[j] = _map(values[start + j], mapping)
    return out


@numba.njit(inline="always")
def _before(x, y, descending):
    """Score x ranks strictly before score y: NaN last, ties keep their order (strict)."""
    if math.isnan(x):
        return False
    if math.isnan(y):
        return True
    return x > y if descending else x < y


@numba.njit(cache=True)
def _top_order(scores, descending, count, out):
    """out[:count] = positions of the `count` best scores, stable, NaN last.

    Insertion into a sorted prefix: O(len * count) with no allocation, for small count; a merge
    sort of the whole row otherwise.
    """
    if count == 0:
        return
    if count > 32:
        finite = np.flatnonzero(~np.isnan(scores))
        keys = scores[finite]
        order = finite[np.argsort(-keys if descending else keys, kind="mergesort")]
        nans = np.flatnonzero(np.isnan(scores))
        m = min(len(order), count)
        out[:m] = order[:m]
        out[m:count] = nans[: count - m]
        return
    filled = 0
    for i in range(len(scores)):
        if filled == count and not _before(scores[i], scores[out[count - 1]], descending):
            continue
        j = filled if filled < count else count - 1
        while j > 0 and _before(scores[i], scores[out[j - 1]], descending):
            if j < count:
                out[j] = out[j - 1]
            j -= 1
        if filled < count:
            filled += 1
        out[j] = i


@numba.njit(parallel=True, cache=True)
def _level_lengths(kind, a, b, params, mappings, out, n, in_lengths, in_offsets, in_values, out_lengths, derived):
    blocks = (n + BLOCK - 1) // BLOCK
    for t in prange(len(kind) * blocks):
        i, lo = t // blocks, (t % blocks) * BLOCK
        hi = min(n, lo + BLOCK)
        k = kind[i]
        ia, o = a[i] * n, out[i] * n
        if k == S_COPY:
            out_lengths[o + lo : o + hi] = in_lengths[ia + lo : ia + hi]
            continue
        for r in range(lo, hi):
            la = in_lengths[ia + r]
            if k == S_TRUNCATE:
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
                    va = _row(in_values, in_offsets[ia + r], la, mappings[i, 0])
                    vb = _row(in_values, in_offsets[b[i] * n + r], lb, mappings[i, 1])
                    result = _set_op(k, va, vb)
                    if k == S_OVERLAP:
                        derived[out[i], r] = np.float32(result[0])
                        continue
                    length = len(result)
            out_lengths[o + r] = length


@numba.njit(parallel=True, cache=True)
def _level_values(
    kind, a, b, params, mappings, weighted, out, n,
    in_lengths, in_offsets, in_values, in_weights, out_offsets, out_values, out_weights, has_out_weights,
):  # fmt: skip
    blocks = (n + BLOCK - 1) // BLOCK
    for t in prange(len(kind) * blocks):
        i, lo = t // blocks, (t % blocks) * BLOCK
        hi = min(n, lo + BLOCK)
        k = kind[i]
        if k == S_OVERLAP:
            continue
        ia, o = a[i] * n, out[i] * n
        pre, post = mappings[i, 0], mappings[i, 2]
        div = divisor(params[i, 1] if k == S_NGRAM else params[i, 0] if k == S_CROSS else 1)
        order = np.empty(64, np.int64)  # scratch for SortByScore, reused by the rows of this tile
        if k == S_COPY:  # key-major layout: a block of rows is one contiguous range of values
            src, dst, end = in_offsets[ia + lo], out_offsets[o + lo], in_offsets[ia + hi]
            _copy(in_values, src, end, out_values, dst)
            if has_out_weights:
                if weighted[i]:
                    out_weights[dst : dst + end - src] = in_weights[src:end]
                else:
                    out_weights[dst : dst + end - src] = np.float32(1)
            made = out_values[dst : dst + end - src]
            _map_all(made, pre)  # maps act on each id alone, so they may follow the move
            _map_all(made, post)
            continue
        for r in range(lo, hi):
            dst = out_offsets[o + r]
            length = out_offsets[o + r + 1] - dst
            sa, la = in_offsets[ia + r], in_lengths[ia + r]
            if k == S_TRUNCATE:
                src = sa + la - length if params[i, 1] != 0 else sa  # keep="last" takes the tail
                _copy(in_values, src, src + length, out_values, dst)
                if has_out_weights:
                    for j in range(length):
                        out_weights[dst + j] = in_weights[src + j] if weighted[i] else np.float32(1)
                continue
            if k == S_SORT:
                if len(order) < length:
                    order = np.empty(max(length, 2 * len(order)), np.int64)
                _top_order(in_weights[sa : sa + la], params[i, 0] != 0, length, order)
                for j in range(length):
                    out_values[dst + j] = in_values[sa + order[j]]
                    if has_out_weights:
                        out_weights[dst + j] = in_weights[sa + order[j]] if weighted[i] else np.float32(1)
                continue
            if k == S_NGRAM:
                for j in range(length):
                    h = np.uint64(_map(in_values[sa + j], pre))
                    for m in range(1, params[i, 0]):
                        h = hash_128_to_64(h, np.uint64(_map(in_values[sa + j + m], pre)))
                    out_values[dst + j] = sigrid_hash(np.int64(h), params[i, 2], div)
            elif k == S_CROSS:
                sb, lb = in_offsets[b[i] * n + r], in_lengths[b[i] * n + r]
                pre_b = mappings[i, 1]
                for x in range(la):
                    u = _map(in_values[sa + x], pre)
                    for y in range(lb):
                        w = _map(in_values[sb + y], pre_b)
                        out_values[dst + x * lb + y] = sigrid_hash(cross_id(u, w), params[i, 1], div)
            else:
                va = _row(in_values, sa, la, pre)
                lb = in_lengths[b[i] * n + r]
                vb = _row(in_values, in_offsets[b[i] * n + r], lb, mappings[i, 1])
                result = _set_op(k, va, vb)
                for j in range(length):
                    out_values[dst + j] = result[j]
            if has_out_weights:  # ids made by these ops carry no scores
                out_weights[dst : dst + length] = np.float32(1)
        # The tile's outputs are one range; truncate and sort moved their ids unmapped, and as maps
        # act on each id alone they apply here as well as before the move.
        made = out_values[out_offsets[o + lo] : out_offsets[o + hi]]
        if k == S_TRUNCATE or k == S_SORT:
            _map_all(made, pre)
        _map_all(made, post)


@numba.njit(parallel=True, cache=True)
def _offsets(lengths):
    """offsets_of(lengths) as a parallel scan: a sum per chunk, then each chunk from its start."""
    n = len(lengths)
    chunks = (n + SCAN_CHUNK - 1) // SCAN_CHUNK
    starts = np.zeros(chunks + 1, np.int64)
    for c in prange(chunks):
        total = np.int64(0)
        for i in range(c * SCAN_CHUNK, min(n, (c + 1) * SCAN_CHUNK)):
            total += lengths[i]
        starts[c + 1] = total
    for c in range(chunks):
        starts[c + 1] += starts[c]
    out = np.empty(n + 1, np.int64)
    out[0] = 0
    for c in prange(chunks):
        total = starts[c]
        for i in range(c * SCAN_CHUNK, min(n, (c + 1) * SCAN_CHUNK)):
            total += lengths[i]
            out[i + 1] = total
    return out


class CpuExecutor:
    """Runs a `Plan` with numba on the host's cores."""

    name = "cpu"

    def launches(self, plan: Plan) -> int:
        return stage_launches(plan)

    def run(self, plan: Plan, batch: Batch, host_stage: bool = True) -> Batch:
        n = batch.num_rows
        sparse = batch.sparse
        lengths, values, weights = _host_arrays(sparse)
        if plan.host is not None and host_stage:
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
        return output_batch(plan.output_schema, batch, dense, lengths, values, weights)

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
        args = (level.kind, level.a, level.b, level.params, _mappings(level.maps, level.map_params))
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


def _host_arrays(sparse: KeyedJagged):
    lengths = np.asarray(sparse.lengths, np.int32)
    values = np.asarray(sparse.values, np.int64)
    weights = None if sparse.weights is None else np.asarray(sparse.weights, np.float32)
    return lengths, values, weights
