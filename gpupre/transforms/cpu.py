"""The numba executor: a `Plan`'s fused stages on the host's cores (the CPU fallback).

Each stage is one parallel loop over (program or app) x row, like the CUDA kernels it mirrors; the
prefix sum between the lengths and values passes of a sparse level is a parallel scan.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import threading
import time

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
    S_UNION,
    MAX_ROW_IDS,
    DenseProgram,
    Plan,
    SparseLevel,
    cross_too_long,
    output_batch,
    stage_launches,
)

__all__ = ["CpuExecutor", "warm_up"]

log = logging.getLogger("gpupre")

BLOCK = 2048  # rows per parallel tile: big enough to amortize scheduling, small enough for L2
MIN_BLOCK = 256  # the fewest, in a batch too small to give every thread a block of BLOCK
_turns = threading.Lock()


def _new_turns() -> None:  # a child forked while a thread of its parent held the lock would wait for ever
    global _turns
    _turns = threading.Lock()


os.register_at_fork(after_in_child=_new_turns)


def _launching():
    """Held while a thread runs parallel kernels where numba's threading layer is `workqueue`
    (chosen where neither OpenMP nor TBB is installed): that layer aborts the process when two
    threads launch at once. Until the first launch picks a layer, launches take turns as well."""
    try:
        shared = numba.threading_layer() != "workqueue"
    except ValueError:  # no parallel kernel has run in this process yet
        shared = False
    return contextlib.nullcontext() if shared else _turns


def block_rows(n: int, threads: int) -> int:
    """Rows per tile for a batch of n rows: BLOCK, or fewer (a multiple of 64, at least
    MIN_BLOCK) when that gives every thread a block of rows; with fewer blocks than threads, the
    threads without rows would idle while others took whole features."""
    per_thread = -(-n // max(threads, 1))
    return max(MIN_BLOCK, min(BLOCK, -(-per_thread // 64) * 64))


@numba.njit(inline="always")
def _schedule(units, n, rows, threads):
    """How a prange over units (programs or apps) x blocks of n rows orders its tiles: numba
    splits a prange into one contiguous part per thread, so the tiles go by ranges of rows (one per
    thread, sizes within a block of each other), then unit, then block. Each thread gets a share of
    every unit, so that a few heavy units (long lists, crosses) do not all fall to one thread, and
    runs of blocks of one unit, for locality. Returns (tiles, ranges, per): the count of tiles
    (some empty), of ranges, and of tiles per unit in a range."""
    blocks = (n + rows - 1) // rows
    ranges = max(1, min(threads, blocks))
    per = (blocks + ranges - 1) // ranges
    return ranges * units * per, ranges, per


@numba.njit(inline="always")
def _tile(t, units, n, rows, ranges, per):
    """Tile t's (unit, block, first row, end row) for blocks of `rows` rows; an empty tile, which
    the loop skips, has no rows."""
    blocks = (n + rows - 1) // rows
    r, rest = t // (units * per), t % (units * per)
    block = r * blocks // ranges + rest % per
    if block >= (r + 1) * blocks // ranges:
        return rest // per, blocks, n, n
    return rest // per, block, block * rows, min(n, (block + 1) * rows)


# -- dense ---------------------------------------------------------------------------------------
LINEAR_BUCKETS = 128  # up to this many boundaries, Bucketize counts them one by one


@numba.njit(inline="always")
def _bucket_block(y, boundaries, offset, count, right, ids):
    """ids[r] = the boundaries below y[r] (right: <= y[r]), NaN -> count + 1, for a block of rows.
    Each loop runs over the rows, so it vectorizes: up to LINEAR_BUCKETS boundaries are counted one
    at a time (at 15, 6x faster than a binary search per row), more by a binary search that takes
    all rows a step at a time (1.3x faster than per row at 1,000)."""
    n = len(y)
    at = np.zeros(n, np.int32)
    if count <= LINEAR_BUCKETS:
        for j in range(count):
            b = boundaries[offset + j]
            if right:
                for r in range(n):
                    at[r] += b <= y[r]
            else:
                for r in range(n):
                    at[r] += b < y[r]
    else:
        m = count
        while m > 1:
            half = m // 2
            for r in range(n):
                b = boundaries[offset + at[r] + half]
                at[r] += half * ((b < y[r]) | (right & (b == y[r])))
            m -= half
        for r in range(n):
            b = boundaries[offset + at[r]]
            at[r] += (b < y[r]) | (right & (b == y[r]))
    for r in range(n):
        ids[r] = count + 1 if math.isnan(y[r]) else at[r]


@numba.njit(parallel=True, cache=True)
def _dense_pass(x, src, steps, fparams, iparams, boundaries, out_dense, out_id, dense_out, ids_out, ids_valid, rows, threads):
    """Each (program, block of rows) tile runs the program one step at a time over the block."""
    n = x.shape[1]
    tiles, ranges, per = _schedule(len(src), n, rows, threads)
    for t in prange(tiles):
        p, _, lo, hi = _tile(t, len(src), n, rows, ranges, per)
        if lo == hi:
            continue
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
                ids, ok = ids_out[out_id[p], lo:hi], ids_valid[out_id[p], lo:hi]
                if code == D_BUCKETIZE:
                    _bucket_block(y, boundaries, iparams[p, s, 0], iparams[p, s, 1], iparams[p, s, 2] != 0, ids)
                    ok[:] = True
                    break
                div = divisor(iparams[p, s, 0] if code == D_HASH or code == D_MODULO else 1)
                for r in range(len(y)):
                    v = y[r]
                    ok[r] = not math.isnan(v)
                    made = np.int64(0)
                    if ok[r] and code == D_HASH:
                        made = sigrid_hash(float_to_id(v), iparams[p, s, 1], div)
                    elif ok[r] and code == D_MODULO:
                        made = floor_mod(float_to_id(v), div)
                    elif ok[r]:
                        made = float_to_id(v)
                    ids[r] = made
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


@numba.njit
def _map(v, mapping):
    """mapping's steps applied to one id. A call, not inlined: inlining its hashes at each call site
    made the first compile 6 s slower and ran no faster."""
    for j in range(mapping.shape[0]):
        code = mapping[j, 0]
        if code == 0:
            break
        div = _divisor_at(mapping, j)
        v = sigrid_hash(v, mapping[j, 1], div) if code == M_HASH else floor_mod(v, div)
    return v


@numba.njit(inline="always")
def _hash_all(values, salt, div):
    for e in range(len(values)):
        values[e] = sigrid_hash(values[e], salt, div)


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
            _hash_all(values, salt, div)
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


# A level's input keys are the batch's keys, then (level 0) the ids the dense pass made: key
# K + j is ids[j], a list of one id where valid[j] and of none elsewhere, read in place. Offsets
# are kept per tile of `rows` rows of a key ([keys * blocks + 1], key-major like the values) and run
# on through the rows of a tile, so no pass writes or reads an offset per row.
@numba.njit(inline="always")
def _source(k, num_keys, values, ids):
    """The array holding key k's ids."""
    return values if k < num_keys else ids[k - num_keys]


@numba.njit(inline="always")
def _length(k, r, n, num_keys, lengths, valid):
    return lengths[k * n + r] if k < num_keys else np.int32(valid[k - num_keys, r])


@numba.njit(inline="always")
def _start(k, block, lo, num_keys, tiles, blocks):
    """Where the ids of row lo (the tile's first) start in _source(k): ids[j] has one slot a row."""
    return tiles[k * blocks + block] if k < num_keys else lo


@numba.njit(inline="always")
def _advance(k, length, num_keys):
    return length if k < num_keys else 1


@numba.njit(parallel=True, cache=True)
def _tile_offsets(lengths, n, rows):
    """The offset of each tile's first id: a sum per tile, then a (short) prefix sum of those."""
    blocks = (n + rows - 1) // rows
    tiles = np.zeros(len(lengths) // n * blocks + 1, np.int64)
    for t in prange(len(tiles) - 1):
        k, lo = t // blocks, (t % blocks) * rows
        total = np.int64(0)
        for r in range(k * n + lo, k * n + min(n, lo + rows)):
            total += lengths[r]
        tiles[t + 1] = total
    _running_sum(tiles)
    return tiles


@numba.njit(cache=True)
def _running_sum(tiles):
    for t in range(1, len(tiles)):
        tiles[t] += tiles[t - 1]


@numba.njit(parallel=True, cache=True)
def _level_lengths(
    kind, a, b, params, mappings, out, n, in_lengths, in_tiles, in_values, ids, valid, out_lengths, out_tiles, derived, status,
    rows, threads,
):  # fmt: skip
    """Output lengths of every app; out_tiles[t + 1] gets the sum of output tile t. A Cross row of
    more than 2**31 - 1 ids gets none, and status (ids, app, row) says so."""
    blocks = (n + rows - 1) // rows
    num_keys = len(in_lengths) // n
    tiles, ranges, per = _schedule(len(kind), n, rows, threads)
    for t in prange(tiles):
        i, block, lo, hi = _tile(t, len(kind), n, rows, ranges, per)
        if lo == hi:
            continue
        k, ka, kb = kind[i], a[i], b[i]
        o = out[i] * n
        total = np.int64(0)
        if k == S_COPY and ka < num_keys:
            out_lengths[o + lo : o + hi] = in_lengths[ka * n + lo : ka * n + hi]
            total = in_tiles[ka * blocks + block + 1] - in_tiles[ka * blocks + block]
        elif k == S_OVERLAP or k == S_INTERSECT or k == S_UNION:
            source_a, source_b = _source(ka, num_keys, in_values, ids), _source(kb, num_keys, in_values, ids)
            sa, sb = _start(ka, block, lo, num_keys, in_tiles, blocks), _start(kb, block, lo, num_keys, in_tiles, blocks)
            for r in range(lo, hi):
                la, lb = _length(ka, r, n, num_keys, in_lengths, valid), _length(kb, r, n, num_keys, in_lengths, valid)
                result = _set_op(k, _row(source_a, sa, la, mappings[i, 0]), _row(source_b, sb, lb, mappings[i, 1]))
                sa, sb = sa + _advance(ka, la, num_keys), sb + _advance(kb, lb, num_keys)
                if k == S_OVERLAP:
                    derived[out[i], r] = np.float32(result[0])
                else:
                    out_lengths[o + r] = len(result)
                    total += len(result)
        else:
            for r in range(lo, hi):
                la = _length(ka, r, n, num_keys, in_lengths, valid)
                if k == S_COPY:
                    length = la
                elif k == S_TRUNCATE:
                    length = min(la, params[i, 0])
                elif k == S_SORT:
                    length = la if params[i, 1] < 0 else min(la, params[i, 1])
                elif k == S_NGRAM:
                    length = max(la - params[i, 0] + 1, 0)
                else:  # S_CROSS
                    length = np.int64(la) * _length(kb, r, n, num_keys, in_lengths, valid)
                    if length > MAX_ROW_IDS:
                        status[0], status[1], status[2] = length, i, r
                        length = 0
                out_lengths[o + r] = length
                total += length
        if k != S_OVERLAP:  # its out is a derived column, not an output key
            out_tiles[out[i] * blocks + block + 1] = total


@numba.njit(parallel=True, cache=True)
def _level_values(
    kind, a, b, params, mappings, weighted, out, n,
    in_lengths, in_tiles, in_values, ids, valid, in_weights, out_lengths, out_tiles, out_values, out_weights, has_out_weights, rows, threads,
):  # fmt: skip
    blocks = (n + rows - 1) // rows
    num_keys = len(in_lengths) // n
    tiles, ranges, per = _schedule(len(kind), n, rows, threads)
    for t in prange(tiles):
        i, block, lo, hi = _tile(t, len(kind), n, rows, ranges, per)
        if lo == hi:
            continue
        k, ka, kb = kind[i], a[i], b[i]
        if k == S_OVERLAP:
            continue
        o = out[i] * n
        first, last = out_tiles[out[i] * blocks + block], out_tiles[out[i] * blocks + block + 1]
        pre, pre_b, post = mappings[i, 0], mappings[i, 1], mappings[i, 2]
        div = divisor(params[i, 1] if k == S_NGRAM else params[i, 0] if k == S_CROSS else 1)
        source, source_b = _source(ka, num_keys, in_values, ids), _source(kb, num_keys, in_values, ids)
        sa, dst = _start(ka, block, lo, num_keys, in_tiles, blocks), first
        sb = _start(kb, block, lo, num_keys, in_tiles, blocks) if kb >= 0 else 0
        order = np.empty(64, np.int64)  # scratch for SortByScore, reused by the rows of this tile
        if k == S_COPY and ka < num_keys:  # key-major layout: a block of rows is one contiguous range
            _copy(in_values, sa, sa + last - first, out_values, first)
            if has_out_weights:
                if weighted[i]:
                    out_weights[first:last] = in_weights[sa : sa + last - first]
                else:
                    out_weights[first:last] = np.float32(1)
        elif k == S_COPY:  # ids made by the dense pass: the valid ones
            for r in range(lo, hi):
                if valid[ka - num_keys, r]:
                    out_values[dst] = source[r]
                    dst += 1
            if has_out_weights:
                out_weights[first:last] = np.float32(1)
        else:
            for r in range(lo, hi):
                length, la = out_lengths[o + r], _length(ka, r, n, num_keys, in_lengths, valid)
                at, row = dst, sa  # the row's first output slot and first input id
                dst, sa = dst + length, sa + _advance(ka, la, num_keys)
                if k == S_TRUNCATE:
                    src = row + la - length if params[i, 1] != 0 else row  # keep="last" takes the tail
                    _copy(source, src, src + length, out_values, at)
                    if has_out_weights:
                        for j in range(length):
                            out_weights[at + j] = in_weights[src + j] if weighted[i] else np.float32(1)
                    continue
                if k == S_SORT:
                    if len(order) < length:
                        order = np.empty(max(length, 2 * len(order)), np.int64)
                    _top_order(in_weights[row : row + la], params[i, 0] != 0, length, order)
                    for j in range(length):
                        out_values[at + j] = source[row + order[j]]
                        if has_out_weights:
                            out_weights[at + j] = in_weights[row + order[j]] if weighted[i] else np.float32(1)
                    continue
                if has_out_weights:  # ids made by the other ops carry no scores
                    out_weights[at : at + length] = np.float32(1)
                if k == S_NGRAM:
                    for j in range(length):
                        h = np.uint64(_map(source[row + j], pre))
                        for m in range(1, params[i, 0]):
                            h = hash_128_to_64(h, np.uint64(_map(source[row + j + m], pre)))
                        out_values[at + j] = np.int64(h)
                    continue
                lb, row_b = _length(kb, r, n, num_keys, in_lengths, valid), sb
                sb += _advance(kb, lb, num_keys)
                if k == S_CROSS:
                    for x in range(la):
                        u = _map(source[row + x], pre)
                        for y in range(lb):
                            w = _map(source_b[row_b + y], pre_b)
                            out_values[at + x * lb + y] = cross_id(u, w)
                else:
                    result = _set_op(k, _row(source, row, la, pre), _row(source_b, row_b, lb, pre_b))
                    out_values[at : at + length] = result
        # The tile's outputs are one range; copy, truncate and sort moved their ids unmapped, and
        # as maps act on each id alone they apply here as well as before the move. NGram and Cross
        # left their pair hashes: their sigrid_hash runs here too, a loop that vectorizes.
        made = out_values[first:last]
        if k == S_COPY or k == S_TRUNCATE or k == S_SORT:
            _map_all(made, pre)
        elif k == S_NGRAM or k == S_CROSS:
            _hash_all(made, params[i, 2] if k == S_NGRAM else params[i, 1], div)
        _map_all(made, post)


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
        dense, ids, valid = self.run_dense(plan.dense, _kernel_array(batch.dense, np.float32), n)
        derived = np.zeros((plan.levels[-1].num_derived if plan.levels else 0, n), np.float32)
        for index, level in enumerate(plan.levels):
            # ids made by the dense pass join level 0 as extra input keys, which it runs even when it copies
            made = (ids, valid) if index == 0 and plan.dense.num_ids else (None, None)
            if not level.identity or made[0] is not None:
                lengths, values, weights = self.run_level(level, n, lengths, values, weights, derived, *made)
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
            threads = numba.get_num_threads()
            with _launching():
                _dense_pass(
                    x, program.src, program.steps, program.fparams, program.iparams, program.boundaries,
                    program.out_dense, program.out_id, dense_out, ids, valid, block_rows(n, threads), threads,
                )  # fmt: skip
        return dense_out, ids, valid

    @staticmethod
    def run_level(level: SparseLevel, n: int, lengths, values, weights, derived, ids=None, valid=None):
        """One sparse level; ids, valid: the ids the dense pass made ([num_ids, n]), which follow
        the batch's keys as input keys."""
        out_lengths = np.zeros(level.num_outputs * n, np.int32)
        out_weights = np.empty(0, np.float32)
        if not n:
            return out_lengths, np.empty(0, np.int64), out_weights if level.has_weights else None
        if derived is None:
            derived = np.zeros((0, n), np.float32)
        if ids is None:
            ids, valid = np.empty((0, n), np.int64), np.empty((0, n), np.bool_)
        threads = numba.get_num_threads()
        rows = block_rows(n, threads)
        with _launching():
            in_tiles = _tile_offsets(lengths, n, rows)
            out_tiles = np.zeros(level.num_outputs * -(-n // rows) + 1, np.int64)
            args = (level.kind, level.a, level.b, level.params, _mappings(level.maps, level.map_params))
            status = np.zeros(3, np.int64)
            _level_lengths(*args, level.out, n, lengths, in_tiles, values, ids, valid, out_lengths, out_tiles, derived, status,
                           rows, threads)  # fmt: skip
            if status[0]:
                raise cross_too_long(int(status[0]), f"app {status[1]}, row {status[2]}")
            _running_sum(out_tiles)
            total = int(out_tiles[-1])
            out_values = np.empty(total, np.int64)
            if level.has_weights:
                out_weights = np.empty(total, np.float32)
            in_weights = weights if weights is not None else np.empty(0, np.float32)
            _level_values(
                *args, level.weighted, level.out, n, lengths, in_tiles, values, ids, valid, in_weights,
                out_lengths, out_tiles, out_values, out_weights, level.has_weights, rows, threads,
            )  # fmt: skip
        return out_lengths, out_values, out_weights if level.has_weights else None


def _host_arrays(sparse: KeyedJagged):
    lengths = _kernel_array(sparse.lengths, np.int32)
    values = _kernel_array(sparse.values, np.int64)
    weights = None if sparse.weights is None else _kernel_array(sparse.weights, np.float32)
    return lengths, values, weights


def _kernel_array(x, dtype) -> np.ndarray:
    """x as a C-contiguous, writable array of dtype. numba compiles a kernel anew for each layout
    and read-only flag of its arguments, so every call passes one kind: a read-only input (a
    single feature viewed in its Arrow buffer) or a strided one is copied."""
    x = np.ascontiguousarray(x, dtype)
    return x if x.flags.writeable else x.copy()


@functools.cache
def warm_up() -> None:
    """Compiles the kernels, or loads them from numba's cache, once per process.

    Every plan runs the same kernels with the same argument types, so a one-row batch through a
    small plan readies them all. The loader calls this before it starts worker processes: on a
    machine's first run, the workers then load what the client compiled, rather than each
    compiling the same code at once (the first batch came after 40 s with 2 workers on 2 cores,
    91 s with 4)."""
    import pyarrow as pa

    from ..schema import Feature, Schema
    from .ops import Bucketize, Hash
    from .pipeline import Pipeline

    start = time.perf_counter()
    schema = Schema((Feature("x", "dense"), Feature("ids", "sparse")))
    table = pa.table({"x": pa.array([1.0], pa.float32()), "ids": pa.array([[1, 2]], pa.list_(pa.int64()))})
    plan = Pipeline([Bucketize("x", (0.0,), out="bucket"), Hash("ids", 10)]).compile(schema, "cpu")
    plan.run(Batch.from_arrow(table, schema))
    compiled = sum(sum(k.stats.cache_misses.values()) for k in (_dense_pass, _level_lengths, _level_values))
    if compiled:
        log.info("gpupre: compiled the CPU kernels in %.0f s (numba caches them for later runs)",
                 time.perf_counter() - start)  # fmt: skip
