"""`Batch`: the one column-major in-memory batch type, on the host (numpy) or a device (torch)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .errors import BackendUnavailable, ConfigError, DataError, SchemaError
from .schema import SCORE_SUFFIX, SCORED, Schema, is_number_type, unknown_message

__all__ = ["Batch", "KeyedJagged", "offsets_of"]


@dataclass
class KeyedJagged:
    """Sparse features of a batch, in torchrec's KeyedJaggedTensor layout.

    For F keys and N rows::

        keys     [F]                   feature names
        lengths  int32   [F * N]       rows 0..N-1 of key 0, then rows 0..N-1 of key 1, ...
        values   int64   [sum(lengths)] the ids, in the same key-major order
        weights  float32 [sum(lengths)] or None: scores of scored features, 1.0 for the ids
                                        of unscored ones; None when no key is scored

    Key-major order means one kernel launch can walk every feature: key k's rows are
    lengths[k*N:(k+1)*N] and its values start at sum(lengths[:k*N]).
    """

    keys: tuple[str, ...]
    lengths: object
    values: object
    weights: object = None

    def feature(self, name: str):
        """(lengths, values, weights) of one key, as views on the arrays' own device; weights is
        None when unweighted."""
        if name not in self.keys:
            raise SchemaError(unknown_message("sparse feature", name, self.keys))
        k = self.keys.index(name)
        n = len(self.lengths) // len(self.keys)
        lo = int(self.lengths[: k * n].sum())
        hi = lo + int(self.lengths[k * n : (k + 1) * n].sum())
        weights = None if self.weights is None else self.weights[lo:hi]
        return self.lengths[k * n : (k + 1) * n], self.values[lo:hi], weights

    def permute(self, order) -> KeyedJagged:
        """The keys in `order` (indices into keys), their rows and values moved with them."""
        keys = len(self.keys)
        lengths = self.lengths.reshape(keys, len(self.lengths) // keys)
        _, index = _jagged_take(lengths.sum(1), 1, keys, order)  # each key is one "row" of its values
        weights = None if self.weights is None else self.weights[index]
        return KeyedJagged(tuple(self.keys[k] for k in order), lengths[order].reshape(-1), self.values[index], weights)


@dataclass
class Batch:
    """A batch of rows, column-major and contiguous per kind.

    Layout, for N rows::

        dense_keys  [F_dense]        names of the dense features
        dense       float32 [F_dense, N]  feature-major; NaN = missing. A model takes dense.T
        sparse      KeyedJagged      sparse and scored features (see its docstring)
        labels      float32 [N], [L, N] for L labels, or None
        extras      {name: array}    pass-through columns (row ids, timestamps), untouched
        inverse     int32 [N] or None  de-duplicated batches: row -> request index
        requests    Batch of R rows, or None  de-duplicated batches: the user and context
                    features, once per request (row i belongs to request inverse[i])
        schema      the Schema of the features (kinds and groups), or None
        images      {name: column}   image features: the encoded bytes as an Arrow binary array
                    (host), or after an image op uint8/float32 [N, C, H, W] pixels
        row_keys    int64 [N] or None   a stable key per row (file, row group, row; epoch in the
                    loader) from which random image ops draw, so a row's crop does not depend
                    on batching, workers or resume; set by readers of image features

    A de-duplicated batch (from de-dup tables) holds the item features, labels and extras of its
    N rows, and the user and context features of its R requests in `requests`; `expand()`
    gathers them into a plain batch of N rows with every feature.

    Arrays are numpy on the host and torch tensors after `to_torch()` / `to(device)`. Host
    batches built by `from_arrow` may be read-only views of Arrow buffers: copy before writing.
    """

    num_rows: int
    dense_keys: tuple[str, ...]
    dense: object
    sparse: KeyedJagged
    labels: object = None
    extras: dict = field(default_factory=dict)
    inverse: object = None
    requests: Batch | None = None
    schema: Schema | None = field(default=None, repr=False, compare=False)  # kinds of the keys
    images: dict = field(default_factory=dict)
    row_keys: object = None

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_arrow(cls, table: pa.Table | pa.RecordBatch, schema: Schema, source: str = "<table>", arrow_extras=()):
        """Build a host batch from a flattened Arrow table holding `schema`'s columns.

        Extras (pass-through columns) of numbers without nulls become numpy arrays, others stay
        Arrow arrays, as do those named in `arrow_extras` (a dataset names the columns that
        may hold nulls somewhere, so that a column has one type in every batch).

        Each Arrow buffer is viewed, not converted. A kind with a single feature and no nulls
        is not copied at all; otherwise the one copy is the gather into the contiguous layout.

        Raises:
            SchemaError: a column is missing or its type does not fit the feature's kind.
            DataError: a null id inside a list, or a scored feature whose ids and scores differ
                in length; the message names `source`, the feature and the row.
        """
        n = table.num_rows
        columns = {name: _column(table, name, source) for name in schema.column_names()}

        dense_features = schema.dense
        if len(dense_features) == 1 and columns[dense_features[0].name].null_count == 0:
            dense = _float32(columns[dense_features[0].name], dense_features[0].name, source)[None]
        else:
            dense = np.empty((len(dense_features), n), np.float32)
            for i, f in enumerate(dense_features):
                dense[i] = _float32(columns[f.name], f.name, source)

        parts, scores = sparse_parts(columns, schema.sparse, source)
        sparse = KeyedJagged(tuple(f.name for f in schema.sparse), *_pack(parts, scores, n))

        labels = None
        if schema.labels:
            rows = [_float32(columns[name], name, source) for name in schema.labels]
            labels = rows[0] if len(rows) == 1 else np.stack(rows)
        extras = {name: _extra(columns[name], name in arrow_extras) for name in schema.extras}
        images = {f.name: _image(columns[f.name], f.name, source) for f in schema.images}
        return cls(n, tuple(f.name for f in dense_features), dense, sparse, labels, extras, schema=schema, images=images)

    def to_arrow(self) -> pa.Table:
        """A host batch as a flattened Arrow table (the inverse of `from_arrow`; NaN -> null).

        Columns: features (a scored feature with its `.score` column), then labels (named by
        the schema), then images, then extras. A de-duplicated batch is expanded first. Decoded
        images become fixed-shape tensor columns, which `from_arrow` does not read back.
        """
        b = self.expand()
        n, keys = b.num_rows, len(b.sparse.keys)
        scored = {f.name for f in b.schema.sparse if f.kind == SCORED} if b.schema is not None else set()
        columns = {}
        for i, name in enumerate(b.dense_keys):
            x = np.asarray(b.dense[i], np.float32)
            columns[name] = pa.array(x, mask=np.isnan(x))
        bounds = offsets_of(b.sparse.lengths)
        for k, name in enumerate(b.sparse.keys):
            o = bounds[k * n : (k + 1) * n + 1]
            lo, hi, local = int(o[0]), int(o[-1]), pa.array((o - o[0]).astype(np.int32))
            columns[name] = pa.ListArray.from_arrays(local, pa.array(np.asarray(b.sparse.values[lo:hi], np.int64)))
            if name in scored:
                scores = pa.array(np.asarray(b.sparse.weights[lo:hi], np.float32))
                columns[name + SCORE_SUFFIX] = pa.ListArray.from_arrays(local, scores)
        if b.labels is not None:
            names = b.schema.labels if b.schema is not None else ()
            rows = np.atleast_2d(np.asarray(b.labels, np.float32))  # [L, N]
            if len(names) != len(rows):
                names = ("label",) if len(rows) == 1 else tuple(f"label_{i}" for i in range(len(rows)))
            columns.update({name: pa.array(row) for name, row in zip(names, rows)})
        for name, column in b.images.items():  # encoded bytes, or pixels as fixed-shape tensors
            columns[name] = column if isinstance(column, pa.Array) else pa.FixedShapeTensorArray.from_numpy_ndarray(np.asarray(column))
        for name, column in b.extras.items():
            columns[name] = column if isinstance(column, pa.Array) else pa.array(np.asarray(column))
        return pa.table(columns)

    # -- rows (host batches) --------------------------------------------------------------------
    def take(self, index) -> Batch:
        """Rows `index` (integers, any order) as a new batch, on the batch's own device.

        A de-duplicated batch keeps the requests its rows use, in order of first use.

        On a GPU, a torch `index` costs one sync (see `tensor_rows`).

        Raises:
            ConfigError: `index` is not integers (a mask: pass its nonzero positions), or holds a
                row outside [0, num_rows).
        """
        numpy = isinstance(self.dense, np.ndarray)
        if numpy:
            index = host_rows(index, self.num_rows)
        else:
            import torch

            index = tensor_rows(index, self.num_rows, self.dense.device)
        lengths, gather = _jagged_take(self.sparse.lengths, len(self.sparse.keys), self.num_rows, index)
        weights = None if self.sparse.weights is None else self.sparse.weights[gather]
        sparse = KeyedJagged(self.sparse.keys, lengths, self.sparse.values[gather], weights)
        inverse, requests = self.inverse, self.requests
        if requests is None:
            inverse = None if inverse is None else inverse[index]
        else:
            picked = inverse[index]
            used, inverse = _first_use(picked if numpy else picked.cpu().numpy())  # a sync on a GPU
            requests = requests.take(used)
            inverse = inverse if numpy else torch.as_tensor(inverse, device=index.device)
        return replace(
            self,
            num_rows=len(index),
            dense=self.dense[:, index],
            sparse=sparse,
            labels=None if self.labels is None else self.labels[..., index],
            extras={k: _take_column(v, index) for k, v in self.extras.items()},
            inverse=inverse,
            requests=requests,
            images={k: _take_column(v, index) for k, v in self.images.items()},
            row_keys=None if self.row_keys is None else self.row_keys[index],
        )

    def rows(self, start: int, stop: int) -> Batch:
        """Rows [start, stop) of a host batch."""
        return self.take(np.arange(start, stop))

    @classmethod
    def concat(cls, batches: list[Batch]) -> Batch:
        """Batches with the same features on one device, one after the other (key-major order kept).

        Host batches give a host batch, torch batches one on their device; on a GPU, sizing each
        key's values costs one sync.

        Raises:
            ConfigError: no batches, or batches that differ in their features, in which parts
                (labels, extras, scores, ...) they have, in the size or dtype of their decoded
                images, or in their device.
        """
        batches = list(batches)
        if not batches:
            raise ConfigError("Batch.concat got no batches; pass a non-empty list of batches")
        first = batches[0]
        _check_alike(batches)
        if len(batches) == 1:
            return first
        keys = len(first.sparse.keys)
        lengths = [b.sparse.lengths.reshape(keys, b.num_rows) for b in batches]
        # where each key's values start in each batch, as Python ints: on a GPU the one sync
        counts = _stack([ln.sum(1) for ln in lengths]).tolist()
        bounds = [list(itertools.accumulate(c, initial=0)) for c in counts]
        pieces = [[], []]  # values, weights: key k of every batch, then key k + 1 ...
        for k in range(keys):
            for b, o in zip(batches, bounds):
                pieces[0].append(b.sparse.values[o[k] : o[k + 1]])
                if first.sparse.weights is not None:
                    pieces[1].append(b.sparse.weights[o[k] : o[k + 1]])
        weights = _cat(pieces[1]) if first.sparse.weights is not None else None
        values = _cat(pieces[0]) if pieces[0] else first.sparse.values[:0]
        return replace(
            first,
            num_rows=sum(b.num_rows for b in batches),
            dense=_cat([b.dense for b in batches], axis=1),
            sparse=KeyedJagged(first.sparse.keys, _cat(lengths, axis=1).reshape(-1), values, weights),
            labels=None if first.labels is None else _cat([b.labels for b in batches], axis=-1),
            extras={k: _concat_column([b.extras[k] for b in batches]) for k in first.extras},
            inverse=None if first.inverse is None else _concat_inverse(batches),
            requests=None if first.requests is None else Batch.concat([b.requests for b in batches]),
            images={k: _concat_column([b.images[k] for b in batches]) for k in first.images},
            row_keys=None if first.row_keys is None else _cat([b.row_keys for b in batches]),
        )

    # -- conversion ---------------------------------------------------------------------------
    def map_arrays(self, fn) -> Batch:
        """A new batch with `fn` applied to every numeric array (dense, sparse, labels, ...)."""

        def apply(x):
            return fn(x) if _is_array(x) else x

        sparse = KeyedJagged(
            self.sparse.keys,
            apply(self.sparse.lengths),
            apply(self.sparse.values),
            apply(self.sparse.weights),
        )
        return replace(
            self,
            dense=apply(self.dense),
            sparse=sparse,
            labels=apply(self.labels),
            extras={k: apply(v) for k, v in self.extras.items()},
            inverse=apply(self.inverse),
            requests=None if self.requests is None else self.requests.map_arrays(fn),
            images={k: apply(v) for k, v in self.images.items()},  # encoded (Arrow) images stay on the host
            row_keys=apply(self.row_keys),
        )

    def expand(self) -> Batch:
        """A plain batch of N rows with every feature: request features gathered by `inverse`.

        Runs where the arrays are (numpy, or torch on any device, where the jagged gather
        syncs once to size its output); a batch that is not
        de-duplicated is returned as it is. Features come in the batch schema's order (a plan's
        outputs in its output schema's, as from a plain plan), else requests, then items.
        """
        if self.requests is None:
            return self
        users = self.requests.take(self.inverse)
        a, b = users.sparse, self.sparse
        weights = None
        if a.weights is not None or b.weights is not None:
            weights = _cat([_ones_like(x.values) if x.weights is None else x.weights for x in (a, b)])
        dense_keys, dense = users.dense_keys + self.dense_keys, _cat([users.dense, self.dense])
        sparse = KeyedJagged(a.keys + b.keys, _cat([a.lengths, b.lengths]), _cat([a.values, b.values]), weights)
        if self.schema is not None:
            order = _order(dense_keys, [f.name for f in self.schema.dense])
            if order is not None:
                dense_keys, dense = tuple(dense_keys[i] for i in order), dense[order]
            order = _order(sparse.keys, [f.name for f in self.schema.sparse])
            if order is not None:
                sparse = sparse.permute(order)
        return replace(
            self,
            dense_keys=dense_keys,
            dense=dense,
            sparse=sparse,
            extras={**users.extras, **self.extras},
            inverse=None,
            requests=None,
        )

    def to_torch(self) -> Batch:
        """The same batch as torch tensors sharing memory with this one (DLPack, no copies)."""
        import torch

        return self.map_arrays(lambda x: x if isinstance(x, torch.Tensor) else torch.from_dlpack(x))

    def to(self, device, non_blocking: bool = False) -> Batch:
        """Copy to `device` (torchrec's Pipelineable interface)."""
        return self.to_torch().map_arrays(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> Batch:
        """Page-locked copies of the tensors, which copy to a GPU asynchronously.

        Raises:
            BackendUnavailable: torch sees no CUDA GPU, whose driver pinned memory needs.
        """
        import torch

        if not torch.cuda.is_available():
            raise BackendUnavailable(
                "Batch.pin_memory needs a CUDA GPU visible to torch (torch.cuda.is_available() is False); "
                "pin batches only on a GPU machine"
            )
        return self.to_torch().map_arrays(lambda t: t.pin_memory())

    def record_stream(self, stream) -> None:
        """Mark every tensor as in use on `stream`, so the caching allocator keeps it alive."""
        self.map_arrays(lambda t: t.record_stream(stream))

    def to_torchrec(self):
        """The sparse part as a torchrec `KeyedJaggedTensor` (no copies of values).

        Raises:
            ConfigError: a de-duplicated batch, whose sparse part lacks the request features.
        """
        if self.requests is not None:
            raise ConfigError(
                "to_torchrec() on a de-duplicated batch would leave out its request features "
                f"{list(self.requests.sparse.keys)}; call batch.expand().to_torchrec() for every feature per row, "
                "or batch.requests.to_torchrec() with batch.inverse to keep them once per request"
            )
        try:
            from torchrec.sparse.jagged_tensor import KeyedJaggedTensor
        except ImportError as e:
            raise BackendUnavailable(
                f"to_torchrec() needs torchrec ({e}); install it with `pip install torchrec`"
            ) from e
        t = self.to_torch().sparse
        # the stride is given, not inferred from len(lengths) // len(keys): a batch without sparse
        # features still has num_rows rows
        return KeyedJaggedTensor(keys=list(t.keys), values=t.values, lengths=t.lengths, weights=t.weights, stride=self.num_rows)

    def __repr__(self) -> str:
        return (
            f"Batch(num_rows={self.num_rows}, dense={len(self.dense_keys)}, "
            f"sparse={len(self.sparse.keys)}, values={len(self.sparse.values)}, "
            f"labels={None if self.labels is None else tuple(self.labels.shape)}, "
            f"extras={list(self.extras)}, images={list(self.images)}, requests={None if self.requests is None else self.requests.num_rows})"
        )


def _column(table, name: str, source: str) -> pa.Array:
    index = table.schema.get_field_index(name)
    if index < 0:
        raise SchemaError(f"{source}: column {name!r} is missing; the schema names it")
    return one_array(table.column(index))


def one_array(col) -> pa.Array:
    """A column as one Array, without copying when it already is one chunk."""
    if not isinstance(col, pa.ChunkedArray):
        return col
    if col.num_chunks == 1:
        return col.chunk(0)
    if pa.types.is_binary(col.type):  # images: the chunks' bytes together may pass 32-bit offsets
        col = col.cast(pa.large_binary())
    return col.combine_chunks()


def _float32(arr: pa.Array, name: str, source: str) -> np.ndarray:
    t = arr.type
    if not is_number_type(t):
        raise SchemaError(
            f"{source}: {name!r} must be a number column (dense feature or label), found {t}; "
            "declare it with another kind or leave it out of the projection"
        )
    if arr.null_count and not pa.types.is_floating(t):
        arr = arr.cast(pa.float32())  # so that nulls become NaN
    return arr.to_numpy(zero_copy_only=False).astype(np.float32, copy=False)


def sparse_parts(columns, features, source: str):
    """([(lengths, ids)] of each sparse or scored feature, {its index: scores} of the scored ones),
    viewed from the Arrow `columns` {name: array} (the arrays are the columns' own where they can be).

    Raises:
        SchemaError: a column's type does not fit its kind.
        DataError: a null id or score inside a list, or a row whose ids and scores differ in number.
    """
    parts, scores = [], {}
    for i, f in enumerate(features):
        lengths, ids = _ids(columns[f.name], f.name, source)
        parts.append((lengths, ids))
        if f.kind == SCORED:
            score_name = f.name + SCORE_SUFFIX
            score_lengths, scores[i] = _scores(columns[score_name], score_name, source)
            if not np.array_equal(lengths, score_lengths):
                row = int(np.flatnonzero(lengths != score_lengths)[0])
                raise DataError(
                    f"{source}: scored feature {f.name!r} row {row} has {lengths[row]} ids but "
                    f"{score_lengths[row]} scores; every id needs exactly one score"
                )
    return parts, scores


def _ids(arr: pa.Array, name: str, source: str):
    """(lengths int32 [N], values int64) of an id-list column or a scalar id column."""
    t = arr.type
    if pa.types.is_integer(t):
        if arr.null_count:  # a missing scalar id is an empty list
            lengths = arr.is_valid().to_numpy(zero_copy_only=False).astype(np.int32)
            arr = arr.drop_null()
        else:
            lengths = np.ones(len(arr), np.int32)
        return lengths, arr.to_numpy().astype(np.int64, copy=False)
    if not (pa.types.is_list(t) or pa.types.is_large_list(t)) or not pa.types.is_integer(t.value_type):
        raise SchemaError(
            f"{source}: sparse feature {name!r} must be list<int64> (or an integer column), found "
            f"{t}; hash strings to ids before writing (gp.storage importers do this)"
        )
    lengths, flat = list_parts(arr)
    if flat.null_count:
        raise DataError(
            f"{source}: sparse feature {name!r} holds {flat.null_count} null ids inside its lists; "
            "drop them or replace them with a real id before writing"
        )
    return lengths, flat.to_numpy().astype(np.int64, copy=False)


def _scores(arr: pa.Array, name: str, source: str):
    t = arr.type
    if not (pa.types.is_list(t) or pa.types.is_large_list(t)) or not pa.types.is_floating(t.value_type):
        raise SchemaError(f"{source}: score column {name!r} must be list<float32>, found {t}")
    lengths, flat = list_parts(arr)
    if flat.null_count:
        raise DataError(
            f"{source}: score column {name!r} holds {flat.null_count} null scores inside its lists; "
            "every id needs a score: replace them with a real score (or NaN, which ranks last) before writing"
        )
    return lengths, flat.to_numpy(zero_copy_only=False).astype(np.float32, copy=False)


def list_parts(arr: pa.Array):
    """(lengths int32 [N], the flattened values) of a list column; a null list is empty."""
    if arr.null_count:  # a null list counts as empty, whatever its offsets say
        lengths = pc.fill_null(pc.list_value_length(arr), 0).to_numpy()
        return lengths.astype(np.int32, copy=False), pc.list_flatten(arr)
    offsets = arr.offsets.to_numpy()  # a slice of the list's offsets; its values are a slice of the child
    return np.diff(offsets).astype(np.int32, copy=False), arr.values.slice(offsets[0], offsets[-1] - offsets[0])


def _image(arr: pa.Array, name: str, source: str) -> pa.Array:
    """An image column as it is read: binary, one encoded image per row, none missing."""
    if not (pa.types.is_binary(arr.type) or pa.types.is_large_binary(arr.type)):
        raise SchemaError(
            f"{source}: image feature {name!r} must be a binary column of encoded JPEG or PNG bytes, "
            f"found {arr.type}; write the files' bytes, not decoded pixels or paths"
        )
    if arr.null_count:
        row = int(np.flatnonzero(~arr.is_valid().to_numpy(zero_copy_only=False))[0])
        raise DataError(
            f"{source}: image feature {name!r} is null in row {row} ({arr.null_count} null rows); "
            "every row needs an image: write a placeholder image for rows without one, or filter them out"
        )
    return arr


def binary_parts(column: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(int64 offsets from 0, the bytes) of a binary column (any slice of it)."""
    _, offset_buffer, data_buffer = column.buffers()
    wide = np.int64 if pa.types.is_large_binary(column.type) else np.int32
    offsets = np.frombuffer(offset_buffer, wide)[column.offset : column.offset + len(column) + 1].astype(np.int64)
    data = np.frombuffer(data_buffer, np.uint8) if data_buffer is not None else np.empty(0, np.uint8)
    return offsets - offsets[0], data[offsets[0] : offsets[-1]]


def binary_array(offsets: np.ndarray, data: np.ndarray) -> pa.Array:
    """The large_binary column of `binary_parts`, viewing the arrays (no copy)."""
    return pa.Array.from_buffers(pa.large_binary(), len(offsets) - 1, [None, pa.py_buffer(offsets), pa.py_buffer(data)])


def _extra(arr: pa.Array, arrow: bool = False):
    if not arrow and is_number_type(arr.type) and arr.null_count == 0:
        return arr.to_numpy(zero_copy_only=False)
    return arr


def _pack(parts, scores: dict, n: int):
    """Key-major (lengths, values, weights) of features [(lengths, ids)], each written once into
    its place; weights (when any feature is scored) are the scores, 1 for the other features."""
    if len(parts) == 1 and not scores:  # nothing to gather: the arrays as read
        return parts[0][0], parts[0][1], None
    lengths = np.empty(len(parts) * n, np.int32)
    values = np.empty(sum(len(ids) for _, ids in parts), np.int64)
    weights = np.empty(len(values), np.float32) if scores else None
    at = 0
    for k, (ln, ids) in enumerate(parts):
        lengths[k * n : (k + 1) * n] = ln
        values[at : at + len(ids)] = ids
        if weights is not None:
            weights[at : at + len(ids)] = scores.get(k, 1.0)
        at += len(ids)
    return lengths, values, weights


def host_rows(index, n: int) -> np.ndarray:
    """`index` as int64 rows of a batch of n rows.

    Raises:
        ConfigError: `index` is not integers (a mask: pass its nonzero positions), or holds a row
            outside [0, n).
    """
    if type(index).__name__ == "Tensor" and hasattr(index, "cpu"):  # a torch index, on any device
        index = index.detach().cpu().numpy()
    raw = np.asarray(index)
    if raw.size and raw.dtype.kind not in "iu":
        raise ConfigError(f"take: rows must be integers, got {raw.dtype}; for a mask pass np.flatnonzero(mask)")
    index = raw.astype(np.int64).reshape(-1)
    if len(index) and (index.min() < 0 or index.max() >= n):
        bad = int(index[(index < 0) | (index >= n)][0])
        raise ConfigError(f"take: row {bad} is outside the batch of {n} rows; pass rows in [0, {n})")
    return index


def tensor_rows(index, n: int, device):
    """`index` as an int64 torch tensor on `device` of rows of a batch of n rows.

    The rows are checked before anything is indexed with them: on a GPU, a row outside the batch
    would be a device-side assert, which ends the process's CUDA context. A list or numpy `index`
    is checked on the host for free; a torch one is checked where it lives, which on a GPU is one
    sync (its min and max).

    Raises:
        ConfigError: as `host_rows`.
    """
    import torch

    if not isinstance(index, torch.Tensor):
        return torch.as_tensor(host_rows(index, n), device=device)
    if index.numel() and (index.dtype == torch.bool or index.is_floating_point() or index.is_complex()):
        raise ConfigError(f"take: rows must be integers, got {index.dtype}; for a mask pass mask.nonzero().ravel()")
    index = index.reshape(-1).long()
    if index.numel():
        low, high = torch.stack(torch.aminmax(index)).tolist()  # on a GPU, the one sync
        if low < 0 or high >= n:
            host_rows(index.cpu().numpy(), n)  # raises, naming the first row outside
    return index.to(device)


def offsets_of(lengths, dtype=np.int64) -> np.ndarray:
    """[0, l0, l0 + l1, ...]: where each jagged row of `lengths` starts, and the total last."""
    out = np.zeros(len(lengths) + 1, dtype)
    np.cumsum(np.asarray(lengths), out=out[1:])
    return out


def _segments(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Indices of the concatenated ranges [starts[i], starts[i] + lengths[i])."""
    lengths = np.asarray(lengths, np.int64)
    total = int(lengths.sum())
    shift = np.repeat(np.asarray(starts, np.int64) - offsets_of(lengths)[:-1], lengths)
    return shift + np.arange(total, dtype=np.int64)


def _jagged_take(lengths, keys: int, n: int, index):
    """(lengths of rows `index` of every key, the indices of their values), key-major."""
    if isinstance(lengths, np.ndarray):
        starts = offsets_of(lengths)[:-1].reshape(keys, n)[:, index].ravel()
        taken = lengths.reshape(keys, n)[:, index].ravel()
        return taken, _segments(starts, taken)
    import torch

    wide = lengths.view(keys, n).long()
    starts = (torch.cumsum(wide.ravel(), 0) - wide.ravel()).view(keys, n)[:, index].ravel()
    taken = wide[:, index].ravel()
    shift = torch.repeat_interleave(starts - (torch.cumsum(taken, 0) - taken), taken)
    return taken.to(lengths.dtype), shift + torch.arange(len(shift), device=shift.device)


def _order(keys, names):
    """Indices that put `keys` in the order of `names`; None when they are in it, or differ."""
    keys, names = tuple(keys), tuple(names)
    if keys == names or sorted(keys) != sorted(names):
        return None
    position = {key: i for i, key in enumerate(keys)}
    return [position[name] for name in names]


def _first_use(inverse: np.ndarray):
    """(the distinct requests of `inverse` in order of first use, inverse renumbered to them)."""
    used, first, renumbered = np.unique(inverse, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    rank = np.empty(len(order), np.int32)
    rank[order] = np.arange(len(order), dtype=np.int32)
    return used[order], rank[renumbered.ravel()]


def _check_alike(batches) -> None:
    """A ConfigError naming the first part in which a batch differs from the first batch: concat
    would otherwise file one batch's ids under another's feature names, or fail deep inside."""
    first = _parts(batches[0])
    for i, b in enumerate(batches[1:], 1):
        for name, value in _parts(b).items():
            if value != first[name]:
                fix = ("move them to one device first (batch.to(device)), or concatenate host batches before "
                       "moving them") if name == "device" else "concatenate batches of one schema, from one reader or pipeline"  # fmt: skip
                raise ConfigError(
                    f"Batch.concat: batch {i} has {name}={value!r} but batch 0 has {name}={first[name]!r}; {fix}"
                )


def _parts(b: Batch) -> dict:
    labels = 0 if b.labels is None else 1 if b.labels.ndim == 1 else b.labels.shape[0]
    return {
        "device": "host (numpy)" if isinstance(b.dense, np.ndarray) else str(b.dense.device),
        "dense_keys": tuple(b.dense_keys),
        "sparse_keys": tuple(b.sparse.keys),
        "scored": b.sparse.weights is not None,
        "num_labels": labels,
        "extras": sorted(b.extras),
        "images": sorted((name, _image_kind(column)) for name, column in b.images.items()),
        "inverse": b.inverse is not None,
        "requests": b.requests is not None,
        "row_keys": b.row_keys is not None,
    }


def _image_kind(column) -> str:
    """'encoded', or the dtype and shape of one decoded image: batches of other sizes, or uint8
    beside normalized float32 pixels, do not concatenate into one tensor."""
    if isinstance(column, pa.Array):
        return "encoded"
    return f"{str(column.dtype).removeprefix('torch.')} {list(column.shape[1:])}"


def _concat_inverse(batches):
    """The inverses of batches one after the other, renumbered to their concatenated requests."""
    if batches[0].requests is None:
        return _cat([b.inverse for b in batches])
    starts = offsets_of([b.requests.num_rows for b in batches])
    inverse = _cat([b.inverse + int(s) for b, s in zip(batches, starts)])
    return inverse.astype(np.int32) if isinstance(inverse, np.ndarray) else inverse.int()


def _cat(parts, axis: int = 0):
    if isinstance(parts[0], np.ndarray):
        return np.concatenate(parts, axis=axis)
    import torch

    return torch.cat(parts, dim=axis)


def _stack(parts):
    if isinstance(parts[0], np.ndarray):
        return np.stack(parts)
    import torch

    return torch.stack(parts)


def _ones_like(values):
    if isinstance(values, np.ndarray):
        return np.ones(len(values), np.float32)
    import torch

    return torch.ones(len(values), dtype=torch.float32, device=values.device)


def _take_column(column, index):
    if isinstance(column, pa.Array):  # Arrow columns stay on the host, whatever the batch's device
        return column.take(pa.array(index.cpu().numpy() if hasattr(index, "cpu") else np.asarray(index)))
    return column[index]


def _concat_column(columns):
    if not any(isinstance(c, pa.Array) for c in columns):
        return _cat(columns)  # numpy, or torch tensors on one device
    # a column with nulls in some parts is Arrow there (see _extra): Arrow for the whole, on the host
    return pa.concat_arrays([c if isinstance(c, pa.Array) else pa.array(c.cpu().numpy() if hasattr(c, "cpu") else c)
                             for c in columns])  # fmt: skip


def _is_array(x) -> bool:
    if isinstance(x, np.ndarray):
        return True
    return type(x).__module__.startswith("torch") and hasattr(x, "dtype")
