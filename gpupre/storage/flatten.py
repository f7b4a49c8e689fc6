"""The legacy map layout and its conversion to the flattened layout.

Map layout: three map columns hold every feature of a row, keyed by an integer feature id::

    float_features           map<int32, float>                 dense features
    id_list_features         map<int32, list<int64>>           sparse features
    id_score_list_features   map<int32, map<int64, float>>     scored features (id -> score)

plus any plain columns (label, request ids). Reading one feature from it means decoding every
map of the row: that cost is what flattening removes. A key absent from a row's map is a
missing dense value or an empty list.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from ..batch import _ids, _scores, offsets_of, one_array
from .._checks import ensure_path, is_integer
from ..errors import ConfigError, DataError, SchemaError
from ..schema import DENSE, SCORE_SUFFIX, SCORED, SPARSE, Feature, Schema
from .write import DEFAULT_ROW_GROUP_ROWS, TableWriter, ensure_not_source

__all__ = ["MAP_COLUMNS", "MapLayout", "flat_to_map", "flatten", "map_to_flat"]

MAP_COLUMNS = {
    DENSE: "float_features",
    SPARSE: "id_list_features",
    SCORED: "id_score_list_features",
}
MAP_TYPES = {
    DENSE: pa.map_(pa.int32(), pa.float32()),
    SPARSE: pa.map_(pa.int32(), pa.list_(pa.int64())),
    SCORED: pa.map_(pa.int32(), pa.map_(pa.int64(), pa.float32())),
}
LAYOUT_KEY = b"gpupre.map_layout"
DEFAULT_NAMES = {DENSE: "float_{}", SPARSE: "id_list_{}", SCORED: "id_score_list_{}"}


@dataclass(frozen=True)
class MapLayout:
    """Which map key holds which feature, and the plain columns beside the maps."""

    schema: Schema  # the flattened schema the maps hold
    keys: tuple[int, ...]  # keys[i] is the map key of schema.features[i]

    def to_json(self) -> str:
        return json.dumps({"schema": json.loads(self.schema.to_json()), "keys": list(self.keys)})

    @classmethod
    def from_json(cls, text) -> MapLayout:
        data = json.loads(text)
        return cls(Schema.from_json(json.dumps(data["schema"])), tuple(data["keys"]))

    def __post_init__(self):
        keys, n = self.keys, len(self.schema.features)
        ok = len(keys) == n and all(is_integer(k) and -(2**31) <= k < 2**31 for k in keys)
        if not ok or len({(f.kind, k) for f, k in zip(self.schema.features, keys)}) != n:  # a map per kind
            raise ConfigError(
                f"map keys {list(keys)[:10]} must be {n} int32 keys, one per feature of the schema in its order, "
                "distinct among the features of a kind (or None, to number them 0, 1, 2, ...)"
            )
        object.__setattr__(self, "keys", tuple(int(k) for k in keys))  # numpy integers do not go to JSON

    def key_of(self) -> dict[str, int]:
        return dict(zip(self.schema.names, self.keys))

    @classmethod
    def of_file(cls, path, progress: bool = True) -> MapLayout:
        """The layout stored in a map file's metadata, or one found by scanning its keys.

        A legacy file without gpupre metadata is scanned once for its keys (a full decode of the
        maps); features are named `float_<key>`, `id_list_<key>` and `id_score_list_<key>`.
        """
        pf = open_parquet(path)
        metadata = pf.schema_arrow.metadata or {}
        if LAYOUT_KEY in metadata:
            return cls.from_json(metadata[LAYOUT_KEY])
        kinds = [k for k, col in MAP_COLUMNS.items() if col in pf.schema_arrow.names]
        if not kinds:
            raise SchemaError(
                f"{path}: no map column ({', '.join(MAP_COLUMNS.values())}) found; it is not in "
                "the map layout (a flattened file needs no flattening)"
            )
        for kind in kinds:
            _check_map_column(kind, pf.schema_arrow.field(MAP_COLUMNS[kind]).type, str(path))
        found = {kind: set() for kind in kinds}
        bar = tqdm(total=pf.metadata.num_rows, desc="scanning map keys", unit="rows", disable=not progress)
        for i in range(pf.num_row_groups):
            table = read_row_group(pf, i, path, columns=[MAP_COLUMNS[k] for k in kinds])
            for kind in kinds:
                maps = one_array(table.column(MAP_COLUMNS[kind]))
                offsets = maps.offsets.to_numpy()
                keys = maps.keys.slice(offsets[0], offsets[-1] - offsets[0])
                found[kind].update(pc.unique(keys).to_pylist())
            bar.update(table.num_rows)
        bar.close()
        features, keys = [], []
        for kind in kinds:
            for key in sorted(found[kind]):
                features.append(Feature(DEFAULT_NAMES[kind].format(key), kind))
                keys.append(key)
        plain = [n for n in pf.schema_arrow.names if n not in MAP_COLUMNS.values()]
        labels = tuple(n for n in plain if n == "label")
        extras = tuple(n for n in plain if n != "label")
        return cls(Schema(tuple(features), labels, extras), tuple(keys))


def _check_columns(table: pa.Table, needed, source: str) -> None:
    missing = sorted(set(needed) - set(table.column_names))
    if missing:
        raise SchemaError(f"{source}: the table has no column {missing[0]!r} (it has {table.column_names}); pass a table with every column of the layout")


def open_parquet(path) -> pq.ParquetFile:
    """`pq.ParquetFile(path)`, with a DataError naming the file when it cannot be opened."""
    try:
        return pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as e:
        raise DataError(f"{path} cannot be opened as Parquet ({e}); check the path and the file") from e


def read_row_group(pf: pq.ParquetFile, i: int, path, columns=None) -> pa.Table:
    """`pf.read_row_group(i, columns)`, with a DataError naming the file and row group when it
    cannot be decoded."""
    try:
        return pf.read_row_group(i, columns=columns)
    except (OSError, pa.ArrowException) as e:
        raise DataError(
            f"{path} row group {i} cannot be read ({e}); the file is corrupt or was changed: write it again "
            "from its source"
        ) from e


def map_to_flat(table: pa.Table, layout: MapLayout, features=None, source: str = "<table>") -> pa.Table:
    """Extract features (names; None = all) from a map-layout table into flattened columns.

    Every map of every row is decoded; only the asked-for keys are kept. The plain columns of the
    layout (labels, extras) are passed through.

    Raises:
        DataError: a row holds the same key twice, or a list a null id or score.
    """
    schema = layout.schema if features is None else layout.schema.select(features)
    _check_columns(table, [MAP_COLUMNS[f.kind] for f in schema.features] + list(schema.labels + schema.extras), source)
    key_of = layout.key_of()
    columns: dict[str, pa.Array] = {}
    for kind in (DENSE, SPARSE, SCORED):
        wanted = [f.name for f in schema.features if f.kind == kind]
        if not wanted:
            continue
        arr = one_array(table.column(MAP_COLUMNS[kind]))
        _check_map_column(kind, arr.type, source)
        columns.update(_extract(arr, kind, wanted, [key_of[n] for n in wanted], source))
    for name in schema.labels + schema.extras:
        columns[name] = one_array(table.column(name))
    return pa.Table.from_arrays(
        [columns[c] for c in schema.column_names()],
        names=schema.column_names(),
        metadata=schema.to_arrow().metadata,
    )


def _check_map_column(kind: str, t: pa.DataType, source: str) -> None:
    """A SchemaError unless `t` is a map whose values `kind`'s map column holds (any number widths)."""
    def number(x):
        return pa.types.is_integer(x) or pa.types.is_floating(x)

    items = t.item_type if pa.types.is_map(t) else None
    if kind == DENSE:
        ok = items is not None and number(items)
    elif kind == SPARSE:
        ok = items is not None and pa.types.is_list(items) and pa.types.is_integer(items.value_type)
    else:
        ok = items is not None and pa.types.is_map(items) and pa.types.is_integer(items.key_type)
        ok = ok and number(items.item_type)
    if not ok:
        raise SchemaError(
            f"{source}: map column {MAP_COLUMNS[kind]!r} has type {t}, but the map layout holds "
            f"{MAP_TYPES[kind]} there (numeric values); convert the column's values, or rename it"
        )


def _extract(arr: pa.MapArray, kind: str, names, keys, source):
    n = len(arr)
    offsets = arr.offsets.to_numpy()
    counts = np.diff(offsets)
    if arr.null_count:  # a null map holds no features, whatever its offsets say
        counts = np.where(arr.is_valid().to_numpy(zero_copy_only=False), counts, 0)
    entries = _ranges(offsets[:-1], counts)  # indexes into the (unsliced) key and item children
    rows = np.repeat(np.arange(n), counts)
    # slot of each entry's key among the wanted keys (-1: not wanted), by hash lookup
    slots = pc.index_in(arr.keys, value_set=pa.array(keys, arr.type.key_type))
    slots = pc.fill_null(slots, -1).to_numpy()[entries]
    hit = slots >= 0
    slot = slots[hit]
    rows, entries = rows[hit], entries[hit]
    if len(slot) and np.bincount(slot * n + rows, minlength=len(keys) * n).max() > 1:
        dup = np.flatnonzero(np.bincount(slot * n + rows) > 1)[0]
        raise DataError(
            f"{source}: row {dup % n} holds map key {keys[dup // n]} ({names[dup // n]!r}) twice "
            f"in {MAP_COLUMNS[kind]!r}; a map key must appear once per row"
        )

    if kind == DENSE:
        out = np.full((len(keys), n), np.nan, np.float32)
        out[slot, rows] = arr.items.to_numpy(zero_copy_only=False)[entries]
        return {name: pa.array(out[i], from_pandas=True) for i, name in enumerate(names)}

    # Gather all wanted entries at once, grouped by feature and in row order within a feature:
    # the result is already in key-major (KeyedJaggedTensor) order.
    group = np.argsort(slot, kind="stable")
    picked = arr.items.take(pa.array(entries[group]))
    item_offsets = picked.offsets.to_numpy()
    per_feature = np.bincount(slot, minlength=len(keys))
    starts = offsets_of(per_feature)
    if kind == SPARSE:
        ids, scores = picked.flatten(), None
    else:
        ids, scores = picked.keys, picked.items
    out = {}
    for i, name in enumerate(names):
        a, b = starts[i], starts[i + 1]
        lengths = np.zeros(n, np.int32)
        lengths[rows[group[a:b]]] = np.diff(item_offsets[a : b + 1])
        list_offsets = pa.array(offsets_of(lengths, np.int32))
        v0, v1 = int(item_offsets[a]), int(item_offsets[b])
        where = f"{name!r} (key {keys[i]} of {MAP_COLUMNS[kind]!r})"
        out[name] = _list(ids.slice(v0, v1 - v0), list_offsets, f"{source}: sparse feature {where}",
                          "null ids inside its lists; every list element needs an id: drop them or replace them in the source")  # fmt: skip
        if scores is not None:
            out[name + SCORE_SUFFIX] = _list(scores.slice(v0, v1 - v0), list_offsets, f"{source}: scored feature {where}",
                                             "null scores; every id needs a score: replace them in the source with a real "
                                             "score (or NaN, which ranks last)")  # fmt: skip
    return out


def _list(values: pa.Array, offsets: pa.Array, what: str, nulls: str) -> pa.ListArray:
    """The list column of `values` at `offsets`; a null element is a DataError now, naming `what`
    (the reader refuses them, where their source is no longer known)."""
    if values.null_count:
        raise DataError(f"{what} holds {values.null_count} {nulls}")
    return pa.ListArray.from_arrays(offsets, values)


def _ranges(starts, counts):
    """Concatenation of arange(s, s + c) for each (s, c), vectorized."""
    counts = np.asarray(counts, np.int64)
    total = int(counts.sum())
    if total == 0:
        return np.empty(0, np.int64)
    ends = np.cumsum(counts)
    shift = np.repeat(np.asarray(starts, np.int64) - (ends - counts), counts)
    return np.arange(total, dtype=np.int64) + shift


def flat_to_map(table: pa.Table, schema: Schema, keys=None) -> tuple[pa.Table, MapLayout]:
    """Pack a flattened table into the map layout (the inverse of `map_to_flat`).

    Args:
        keys: map key of each feature in schema order; None numbers them 0, 1, 2, ...
    A missing dense value and an empty list both become an absent key; an integer column of a
    sparse feature is a list of one id per row (null: empty), as the reader takes it.

    Raises:
        DataError: a null id or score inside a list (names the feature).
    """
    try:
        keys = tuple(range(len(schema.features))) if keys is None else tuple(keys)
    except TypeError as e:
        raise ConfigError(f"keys={keys!r} must be a list of int32 map keys, one per feature") from e
    layout = MapLayout(schema, keys)
    _check_columns(table, schema.column_names(), "<table>")
    n = table.num_rows
    arrays, fields = [], []
    for kind in (DENSE, SPARSE, SCORED):
        feats = [(f, k) for f, k in zip(schema.features, keys) if f.kind == kind]
        if not feats:
            continue
        fkeys = np.array([k for _, k in feats], np.int32)
        if kind == DENSE:
            matrix = np.stack(
                [one_array(table.column(f.name)).to_numpy(zero_copy_only=False) for f, _ in feats]
            ).astype(np.float32)
            present = ~np.isnan(matrix.T)  # [N, F], row-major: entries grouped by row
            map_offsets = offsets_of(present.sum(1), np.int32)
            entry_keys = np.broadcast_to(fkeys, (n, len(feats)))[present]
            arrays.append(
                pa.MapArray.from_arrays(pa.array(map_offsets), pa.array(entry_keys), pa.array(matrix.T[present]))
            )
        else:
            arrays.append(_lists_to_map(table, feats, fkeys, n, kind))
        fields.append(pa.field(MAP_COLUMNS[kind], MAP_TYPES[kind]))
    for name in schema.labels + schema.extras:
        arrays.append(one_array(table.column(name)))
        fields.append(table.schema.field(name))
    metadata = {LAYOUT_KEY: layout.to_json().encode()}
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields, metadata=metadata)), layout


def _lists_to_map(table, feats, fkeys, n, kind):
    lengths, ids, scores = [], [], []
    for f, _ in feats:  # checked and normalised as the reader does: an integer column is lists of one id
        f_lengths, f_ids = _ids(one_array(table.column(f.name)), f.name, "<table>")
        lengths.append(f_lengths)
        ids.append(f_ids)
        if kind == SCORED:
            name = f.name + SCORE_SUFFIX
            scores.append(_scores(one_array(table.column(name)), name, "<table>")[1])
    lengths = np.stack(lengths)  # [F, N]
    value_start = offsets_of(lengths.ravel())[:-1].reshape(lengths.shape)  # (f, r)'s ids in concat(ids)
    present = lengths.T > 0  # [N, F]: entries in row-major order
    entry_len = lengths.T[present]
    entry_start = value_start.T[present]
    gather = _ranges(entry_start, entry_len)
    all_ids = np.concatenate(ids)[gather]
    item_offsets = pa.array(offsets_of(entry_len, np.int32))
    if kind == SPARSE:
        items = pa.ListArray.from_arrays(item_offsets, pa.array(all_ids, pa.int64()))
    else:
        all_scores = np.concatenate(scores).astype(np.float32)[gather]
        items = pa.MapArray.from_arrays(item_offsets, pa.array(all_ids, pa.int64()), pa.array(all_scores))
    map_offsets = pa.array(offsets_of(present.sum(1), np.int32))
    entry_keys = pa.array(np.broadcast_to(fkeys, (n, len(fkeys)))[present])
    return pa.MapArray.from_arrays(map_offsets, entry_keys, items)


def flatten(
    src,
    dst,
    features=None,
    row_group_rows: int | None = None,
    progress: bool = True,
) -> Schema:
    """Convert a map-layout Parquet file to a flattened one, a row group at a time.

    Args:
        features: names of the features to keep (None: all).
        row_group_rows: rows per output row group (None: as in the source).
    Returns the schema written.

    Raises:
        DataError: a row group cannot be read, or holds what `map_to_flat` refuses (names the row
            group); nothing is written to `dst`.
        ConfigError: `src` is no path, or `dst` is `src` itself.
    """
    ensure_path(src, "src", "the path of a map-layout Parquet file")
    ensure_not_source(src, ensure_path(dst, "dst", "the path of the Parquet file to write"), "map-layout file")
    layout = MapLayout.of_file(src, progress=progress)
    schema = layout.schema if features is None else layout.schema.select(features)
    pf = open_parquet(src)
    extra_types = {n: pf.schema_arrow.field(n).type for n in schema.extras}
    if row_group_rows is None:  # as in the source, unless it has no rows to go by
        first = pf.metadata.row_group(0).num_rows if pf.num_row_groups else 0
        row_group_rows = first or DEFAULT_ROW_GROUP_ROWS
    with TableWriter(dst, schema, extra_types, row_group_rows) as writer, tqdm(
        total=pf.metadata.num_rows, desc=f"flattening {src}", unit="rows", disable=not progress
    ) as bar:
        for i in range(pf.num_row_groups):
            table = read_row_group(pf, i, src)
            writer.write(map_to_flat(table, layout, schema.names, source=f"{src} row group {i}"))
            bar.update(table.num_rows)
    return schema
