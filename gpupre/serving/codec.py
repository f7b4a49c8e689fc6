"""Compact, schema-aware bytes for one item's (or one user's) features, and the row gather before it.

The schema is known to writer and reader, so a row carries no names and no types::

    dense    float32 [D]               the row's dense features, in schema order
    lengths  uint32  [K]               ids per sparse feature
    values   int64   [sum(lengths)]    the ids, feature after feature
    weights  float32 [sum(lengths)]    only when the schema has a scored feature

`gather_rows` takes the rows to log out of a batch: from CUDA tensors it gathers on the GPU and
copies only those rows to pinned host memory; from numpy (or CPU tensors) it does the same work on
the host. Both give the same arrays, so the same bytes.
"""

from __future__ import annotations

import struct

import numba
import numpy as np

from .._checks import ensure_instance
from ..batch import Batch, KeyedJagged, offsets_of, tensor_rows
from ..errors import ConfigError, DataError, SchemaError
from ..schema import SCORED, Schema

__all__ = ["FeatureCodec", "encode_rows", "gather_rows"]


def ensure_schemas(owner: str, item_schema, user_schema) -> None:
    """Raises a ConfigError naming `owner`'s argument unless the schemas are gp.Schemas (user_schema: or None)."""
    ensure_instance(item_schema, Schema, f"{owner} item_schema", "a gp.Schema of the items' features")
    ensure_instance(user_schema, (Schema, type(None)), f"{owner} user_schema",
                    "a gp.Schema of the user's (and context) features, or None")  # fmt: skip


class FeatureCodec:
    """Encodes rows of a `Batch` with `schema`'s features to bytes, and bytes back to a `Batch`."""

    def __init__(self, schema: Schema):
        if schema.images:
            raise SchemaError(
                f"image feature {schema.images[0].name!r}: the serving side logs id and float features, "
                "not images; log the image's id and join the bytes from the content store when writing training data"
            )
        self.schema = schema
        self.num_dense, self.num_sparse = len(schema.dense), len(schema.sparse)
        self.weighted = any(f.kind == SCORED for f in schema.sparse)
        self._head = 4 * (self.num_dense + self.num_sparse)
        self._counts = struct.Struct(f"<{self.num_sparse}I")
        self._dense_keys = tuple(f.name for f in schema.dense)
        self._sparse_keys = tuple(f.name for f in schema.sparse)

    def check_batch(self, batch: Batch) -> None:
        """Raise if `batch` (numpy or torch, on any device) does not hold this schema's features.

        Reads names and shapes only (no data, no device sync), so a batch is checked where it
        enters, before any of its rows is encoded.

        Raises:
            DataError: other features or another order, scores the schema does not declare (or
                missing), or arrays whose shapes do not fit the batch's rows.
        """
        if tuple(batch.dense_keys) != self._dense_keys or tuple(batch.sparse.keys) != self._sparse_keys:
            raise DataError(
                f"features {list(batch.dense_keys) + list(batch.sparse.keys)} do not match the logger's schema "
                f"{list(self.schema.names)}; pass batches with the schema's features in its order"
            )
        sparse = batch.sparse
        if self.weighted != (sparse.weights is not None):
            scored = [f.name for f in self.schema.sparse if f.kind == SCORED]
            raise DataError(
                f"the logger's schema has scored features {scored} but the batch has no scores (sparse.weights is None); "
                "pass the scores as the KeyedJagged's weights" if self.weighted else
                "the batch has scores (sparse.weights) but the logger's schema has no scored feature, so they would be "
                "dropped; declare the scored features with kind 'scored' or drop the weights"
            )  # fmt: skip
        n = batch.num_rows
        dense, lengths = tuple(batch.dense.shape), tuple(sparse.lengths.shape)
        values = tuple(sparse.values.shape)
        weights = (0,) if sparse.weights is None else tuple(sparse.weights.shape)
        if dense != (self.num_dense, n) or lengths != (self.num_sparse * n,) or (
            self.weighted and weights != values
        ):
            raise DataError(
                f"a batch of {n} rows has dense {dense}, lengths {lengths}, values {values} and weights {weights}; "
                f"expected dense ({self.num_dense}, {n}), lengths ({self.num_sparse * n},) "
                "and weights as long as values: build the Batch with Batch.from_arrow or check its arrays"
            )

    def encode(self, batch: Batch, rows=None) -> list[bytes]:
        """One bytes object per row of a host batch (rows `rows` of it, in that order; default all).

        Raises:
            ConfigError: `rows` are not integers, or hold a row outside the batch (as `Batch.take`).
            DataError: the batch does not hold the schema's features (`check_batch`), or its sparse
                lengths do not describe its values.
        """
        self.check_batch(batch)
        sparse, n = batch.sparse, batch.num_rows
        rows = np.arange(n) if rows is None else np.asarray(rows)
        if rows.size and rows.dtype.kind not in "iu":  # a cast would log a mask's rows 0 and 1
            raise ConfigError(f"rows to log must be integers, got {rows.dtype}; for a mask pass np.flatnonzero(mask)")
        rows = rows.astype(np.int64, copy=False).reshape(-1)
        # The arrays go to the kernel as they are when they have its types (the usual case): this
        # runs once per logged request and page, so its fixed cost is most of a small page's.
        dense = np.ascontiguousarray(batch.dense, np.float32)
        lengths = np.ascontiguousarray(sparse.lengths, np.int32)
        values = np.ascontiguousarray(sparse.values, np.int64)
        weights = _NO_WEIGHTS if sparse.weights is None else np.ascontiguousarray(sparse.weights, np.float32)
        data, ends, status = _encode(dense, lengths, values, weights, rows, self.num_sparse, n)
        if status == _ROW_OUTSIDE:
            bad = int(rows[(rows < 0) | (rows >= n)][0])
            raise ConfigError(f"row {bad} to log is outside the batch of {n} rows; pass rows in [0, {n})")
        if status == _BAD_LENGTHS:
            raise DataError(
                f"the batch's sparse lengths (sum {int(np.sum(sparse.lengths))}, least {int(np.min(sparse.lengths))}) "
                f"do not describe its {len(values)} values; lengths must be >= 0 and add up to the values"
            )
        data, ends = data.tobytes(), ends.tolist()
        return [data[ends[r] : ends[r + 1]] for r in range(len(rows))]

    def check(self, data: bytes) -> str:
        """Why `data` is not one row of this schema's bytes (its size does not add up), or ""."""
        if len(data) < self._head:
            return f"{len(data)} bytes, fewer than the {self._head} of a row's header"
        count = sum(self._counts.unpack_from(data, 4 * self.num_dense))  # struct: 8x faster than numpy here
        if len(data) != self._head + count * (12 if self.weighted else 8):
            return f"{len(data)} bytes, not what its {count} ids need; it is corrupt"
        return ""

    def decode(self, rows: list[bytes]) -> Batch:
        """The host `Batch` of encoded rows, in order.

        Raises:
            DataError: a row's size does not add up (`check`).
        """
        n, keys = len(rows), self.num_sparse
        sizes = np.fromiter(map(len, rows), np.int64, n)
        data = np.frombuffer(b"".join(rows), np.uint8)
        misaligned = np.flatnonzero(sizes % 4)  # every row is whole 4-byte words
        bad = int(misaligned[0]) if len(misaligned) else -1
        if bad < 0:
            dense, lengths, values, weights, bad = _decode(
                data.view(np.uint32), offsets_of(sizes // 4), self.num_dense, keys, 3 if self.weighted else 2
            )
        if bad >= 0:
            raise DataError(f"logged row {bad} has {self.check(rows[bad])}")
        sparse = KeyedJagged(self._sparse_keys, lengths, values.view(np.int64), weights.view(np.float32) if self.weighted else None)
        return Batch(n, self._dense_keys, dense.view(np.float32), sparse, schema=self.schema)


_NO_WEIGHTS = np.empty(0, np.float32)
_ROW_OUTSIDE, _BAD_LENGTHS = 1, 2  # what _encode found wrong


@numba.njit(cache=True)
def _encode(dense, lengths, values, weights, rows, keys: int, n: int):
    """(bytes of rows `rows` one after the other, where each row ends): one pass, no temporaries.

    dense float32 [D, N], lengths int32 [KN] (key-major), values int64 [V], weights float32 [V]
    (empty: unweighted); every number is copied in its native byte order. The third result is 0,
    or what is wrong (no bytes then): a row outside [0, n), or lengths that are negative or do not
    add up to the values.
    """
    for r in rows:
        if r < 0 or r >= n:
            return np.empty(0, np.uint8), np.zeros(1, np.int64), _ROW_OUTSIDE
    starts = np.zeros(keys * n + 1, np.int64)
    for j in range(keys * n):
        if lengths[j] < 0:
            return np.empty(0, np.uint8), np.zeros(1, np.int64), _BAD_LENGTHS
        starts[j + 1] = starts[j] + lengths[j]
    if starts[-1] != len(values):
        return np.empty(0, np.uint8), np.zeros(1, np.int64), _BAD_LENGTHS
    # Every field is a whole number of 4-byte words: copied word by word (slice copies of a few
    # bytes each cost 4x as much), in its native byte order.
    dense_words, lengths_words = dense.view(np.uint32), lengths.view(np.uint32)
    value_words, weight_words = values.view(np.uint32), weights.view(np.uint32)
    per_id = 3 if len(weights) else 2
    head = dense.shape[0] + keys
    ends = np.zeros(len(rows) + 1, np.int64)
    for i in range(len(rows)):
        count = 0
        for k in range(keys):
            count += lengths[k * n + rows[i]]
        ends[i + 1] = ends[i] + head + per_id * count
    out = np.empty(ends[-1], np.uint32)
    for i in range(len(rows)):
        r, at = rows[i], ends[i]
        for f in range(dense.shape[0]):
            out[at + f] = dense_words[f, r]
        at += dense.shape[0]
        for k in range(keys):
            out[at + k] = lengths_words[k * n + r]
        at += keys
        for k in range(keys):
            lo, length = starts[k * n + r], lengths[k * n + r]
            for j in range(2 * length):
                out[at + j] = value_words[2 * lo + j]
            at += 2 * length
        if per_id == 3:
            for k in range(keys):
                lo, length = starts[k * n + r], lengths[k * n + r]
                for j in range(length):
                    out[at + j] = weight_words[lo + j]
                at += length
    return out.view(np.uint8), 4 * ends, 0


def encode_rows(codec: FeatureCodec, batch: Batch, rows) -> list[bytes]:
    """codec's bytes of rows `rows` of `batch`, wherever its arrays live (see `gather_rows`)."""
    if isinstance(batch.dense, np.ndarray):
        return codec.encode(batch, rows)
    return codec.encode(gather_rows(batch, rows))


def gather_rows(batch: Batch, rows) -> Batch:
    """Rows `rows` of `batch` as a host (numpy) batch of its features.

    A batch of torch tensors is gathered where it lives; from a GPU only the gathered rows are
    copied, through pinned memory (one sync). Labels and extras are not carried.
    """
    if isinstance(batch.dense, np.ndarray):
        features = Batch(batch.num_rows, batch.dense_keys, batch.dense, batch.sparse, schema=batch.schema)
        return features.take(rows)
    import torch

    device = batch.dense.device
    index = tensor_rows(rows, batch.num_rows, device)  # checked before indexing, as take() checks
    keys, n = len(batch.sparse.keys), batch.num_rows
    lengths = batch.sparse.lengths.view(keys, n).long()
    starts = (torch.cumsum(lengths.ravel(), 0) - lengths.ravel()).view(keys, n)
    taken, first = lengths[:, index].ravel(), starts[:, index].ravel()
    shift = torch.repeat_interleave(first - (torch.cumsum(taken, 0) - taken), taken)
    order = shift + torch.arange(len(shift), device=device)
    weights = None if batch.sparse.weights is None else batch.sparse.weights[order]
    parts = [batch.dense[:, index], taken.int(), batch.sparse.values[order], weights]
    pinned = device.type == "cuda"
    host = [None if t is None else torch.empty(t.shape, dtype=t.dtype, pin_memory=pinned).copy_(t, non_blocking=pinned)
            for t in parts]  # fmt: skip
    if pinned:
        torch.cuda.current_stream(device).synchronize()  # the host copies are read right after
    dense, lengths_out, values, weights = [None if t is None else t.numpy() for t in host]
    sparse = KeyedJagged(batch.sparse.keys, lengths_out, values, weights)
    return Batch(len(index), batch.dense_keys, dense, sparse, schema=batch.schema)


@numba.njit(cache=True)
def _decode(words, ends, num_dense: int, keys: int, per_id: int):
    """(dense uint32 [D, N], lengths int32 [KN] key-major, values uint32 [2V], weights uint32 [V]
    (empty when per_id is 2), -1) of N rows of `_encode`'s words, row r in words[ends[r]:ends[r + 1]];
    the last is the first row whose size does not add up (nothing else is meaningful then)."""
    n, head = len(ends) - 1, num_dense + keys
    dense = np.empty((num_dense, n), np.uint32)
    lengths = np.empty(keys * n, np.int32)
    for r in range(n):
        at, count = ends[r], 0
        if ends[r + 1] - at < head:
            return dense, lengths, np.empty(0, np.uint32), np.empty(0, np.uint32), r
        for k in range(keys):
            count += np.int64(words[at + num_dense + k])
        if ends[r + 1] - at != head + per_id * count:
            return dense, lengths, np.empty(0, np.uint32), np.empty(0, np.uint32), r
        for f in range(num_dense):
            dense[f, r] = words[at + f]
        for k in range(keys):
            lengths[k * n + r] = words[at + num_dense + k]
    starts = np.zeros(keys * n + 1, np.int64)
    for j in range(keys * n):
        starts[j + 1] = starts[j] + lengths[j]
    total = starts[-1]
    values = np.empty(2 * total, np.uint32)
    weights = np.empty(total if per_id == 3 else 0, np.uint32)
    for r in range(n):
        ids = ends[r] + head  # the row's ids, feature after feature; then its scores
        count = (ends[r + 1] - ids) // per_id
        scores = ids + 2 * count
        for k in range(keys):
            lo, length = starts[k * n + r], lengths[k * n + r]
            for j in range(2 * length):
                values[2 * lo + j] = words[ids + j]
            ids += 2 * length
            if per_id == 3:
                for j in range(length):
                    weights[lo + j] = words[scores + j]
                scores += length
    return dense, lengths, values, weights, -1
