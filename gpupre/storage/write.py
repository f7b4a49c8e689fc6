"""Writing flattened tables: one Parquet column per feature, the schema in the file's metadata."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .._checks import is_integer
from ..batch import offsets_of, one_array, sparse_parts
from ..errors import ConfigError, SchemaError
from ..schema import METADATA_KEY, Schema

__all__ = ["DEFAULT_ROW_GROUP_ROWS", "TableWriter", "to_flat_table", "write_table"]

DEFAULT_ROW_GROUP_ROWS = 65_536
_PARQUET_CODECS = ("none", "snappy", "gzip", "brotli", "lz4", "lz4_raw", "zstd")  # what pyarrow can write


def to_flat_table(table: pa.Table, schema: Schema) -> pa.Table:
    """`table` with `schema`'s columns in the canonical flattened types, schema in the metadata.

    dense -> float32; sparse -> list<int64> (an integer column becomes lists of one id, null ->
    empty list); scored -> list<int64> ids and list<float32> scores; labels -> float32.

    Raises:
        SchemaError: a column is missing or cannot be stored as its kind.
        DataError: a null id or score inside a list, or a row of a scored feature whose ids and
            scores differ in number: a file the reader would refuse.
    """
    target = schema.to_arrow({name: _get(table, name).type for name in schema.extras})
    arrays = [_canonical(_get(table, fld.name), fld.type, fld.name) for fld in target]
    sparse_parts(dict(zip(target.names, arrays)), schema.sparse, "the table")  # what the reader would refuse
    return pa.Table.from_arrays(arrays, schema=target)


def ensure_not_source(src, dst, what: str) -> None:
    """A ConfigError when `dst` is the existing file `src` (`what`), which writing `dst` would replace."""
    if os.path.isfile(dst) and os.path.isfile(src) and os.path.samefile(src, dst):
        raise ConfigError(f"dst={os.fspath(dst)!r} is the source {what}, which writing it would replace; pass another path")


def _get(table: pa.Table, name: str) -> pa.Array:
    if table.schema.get_field_index(name) < 0:
        raise SchemaError(
            f"column {name!r} named by the schema is not in the table "
            f"(columns: {table.column_names[:8]}{'...' if table.num_columns > 8 else ''})"
        )
    return one_array(table.column(name))


def _canonical(arr: pa.Array, target: pa.DataType, name: str) -> pa.Array:
    if arr.type == target:
        return arr
    try:
        if pa.types.is_list(target) and pa.types.is_integer(arr.type):
            valid = arr.is_valid().to_numpy(zero_copy_only=False)
            offsets = offsets_of(valid, np.int32)
            return pa.ListArray.from_arrays(pa.array(offsets), arr.drop_null().cast(pa.int64()))
        return arr.cast(target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        fix = "convert it or declare another kind in the schema"
        if pa.types.is_unsigned_integer(arr.type):  # ids of 64 bits: wrapped, as the importers' hex ids are
            fix = "to keep 64-bit ids, wrap them to int64: pyarrow.compute.cast(column, pyarrow.int64(), safe=False)"
        raise SchemaError(f"column {name!r} of type {arr.type} cannot be stored as {target} ({e}); {fix}") from e


class HiddenParquetWriter:
    """A Parquet file written under a hidden temporary name beside `path` (which `gp.Dataset`
    ignores) and renamed to `path` by `close()`, so `path` never holds a partial file: when the
    `with` block raises, or on `abort()`, the temporary file is removed and whatever was at `path`
    stays. `options` go to `pyarrow.parquet.ParquetWriter`.

    Raises:
        ConfigError: `path` is no path, is a directory, or cannot be written.
    """

    def __init__(self, path, arrow_schema: pa.Schema, **options):
        if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
            raise ConfigError(f"path={path!r} must be the path of a Parquet file to write")
        if os.path.isdir(path):
            example = os.path.join(str(path), "part-0.parquet")
            raise ConfigError(f"{path} is a directory; pass the path of a Parquet file to write, such as {example}")
        self.path, self.schema = os.fspath(path), arrow_schema
        directory, name = os.path.split(os.path.abspath(self.path))
        self._tmp = os.path.join(directory, f".{name}.tmp")
        try:
            os.makedirs(directory, exist_ok=True)
            self._writer = pq.ParquetWriter(self._tmp, arrow_schema, **options)
        except OSError as e:
            raise ConfigError(f"{self.path}: cannot write there ({e}); pass a path in a writable directory") from e

    def write_table(self, table: pa.Table, **options) -> None:
        self._writer.write_table(table, **options)

    def close(self) -> None:
        if self._writer is None:
            return
        self._writer.close()
        self._writer = None
        try:
            os.replace(self._tmp, self.path)
        except OSError as e:
            os.remove(self._tmp)
            raise ConfigError(f"{self.path}: cannot put the written file there ({e}); pass another path") from e

    def abort(self) -> None:
        """Stop without writing anything to `path`."""
        if self._writer is None:
            return
        self._writer.close()
        self._writer = None
        os.remove(self._tmp)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        if exc_type is None:
            self.close()
        else:
            self.abort()


class TableWriter:
    """Streams tables into one flattened Parquet file with row groups of exactly `row_group_rows`.

    Buffers what it is given until a whole row group is ready, so that streaming writers produce
    the same file as one big write. Use as a context manager; `close()` writes the last group.
    The file is a `HiddenParquetWriter`'s: `path` never holds a partial file.
    """

    def __init__(
        self,
        path,
        schema: Schema,
        extra_types: dict | None = None,
        row_group_rows: int = DEFAULT_ROW_GROUP_ROWS,
        compression: str = "zstd",
        write_statistics: bool = True,
        write_page_index: bool = False,
        metadata: dict | None = None,
    ):
        if not is_integer(row_group_rows) or row_group_rows <= 0:
            raise ConfigError(f"{row_group_rows=} must be a positive integer")
        row_group_rows = int(row_group_rows)
        if compression is not None and str(compression).lower() not in _PARQUET_CODECS:
            raise ConfigError(
                f"{compression=} is not a Parquet codec; pass one of {', '.join(_PARQUET_CODECS)}"
            )
        self.schema = schema
        self.row_group_rows = row_group_rows
        self.rows_written = 0
        arrow_schema = schema.to_arrow(extra_types)
        if metadata:
            arrow_schema = arrow_schema.with_metadata({**arrow_schema.metadata, **metadata})
        self._arrow_schema = arrow_schema
        self._file = HiddenParquetWriter(path, arrow_schema, compression=compression,
                                         write_statistics=write_statistics, write_page_index=write_page_index)  # fmt: skip
        self.path = self._file.path
        self._pending: list[pa.Table] = []
        self._pending_rows = 0

    def write(self, table: pa.Table) -> None:
        """Add `table`'s rows (any column types its features can be cast from).

        Raises:
            ConfigError: `table` is not a pyarrow Table.
            SchemaError: a column the schema names is missing or cannot take its kind, or an
                extra column's type is not the one this writer was made with (`extra_types`).
            DataError: a null id or score inside a list, or a scored row with unequal ids and scores.
        """
        if not isinstance(table, pa.Table):
            raise ConfigError(
                f"{self.path}: TableWriter.write takes a pyarrow Table, got {type(table).__name__}; wrap columns "
                "with pyarrow.table(...)"
            )
        table = to_flat_table(table, self.schema).replace_schema_metadata(self._arrow_schema.metadata)
        for found in table.schema:
            expected = self._arrow_schema.field(found.name).type
            if found.type != expected:  # only extras can differ: features and labels are cast above
                raise SchemaError(
                    f"{self.path}: column {found.name!r} has type {found.type}, but the writer was made for "
                    f"{expected} (extra columns without an entry in extra_types are int64); pass "
                    f"extra_types={{{found.name!r}: {found.type}}} to TableWriter, or cast the column"
                )
        self._pending.append(table)
        self._pending_rows += table.num_rows
        while self._pending_rows >= self.row_group_rows:
            self._flush(self.row_group_rows)

    def _flush(self, rows: int) -> None:
        merged = pa.concat_tables(self._pending)
        self._file.write_table(merged.slice(0, rows), row_group_size=rows)
        rest = merged.slice(rows)
        self._pending = [rest] if rest.num_rows else []
        self._pending_rows = rest.num_rows
        self.rows_written += rows

    def close(self) -> None:
        try:
            if self._pending_rows:
                self._flush(self._pending_rows)
        except BaseException:  # the last row group did not reach the file: leave no partial file behind
            self._file.abort()
            raise
        self._file.close()

    def abort(self) -> None:
        """Stop without writing anything to `path`."""
        self._file.abort()

    __enter__, __exit__ = HiddenParquetWriter.__enter__, HiddenParquetWriter.__exit__


def write_table(
    table: pa.Table,
    path,
    schema: Schema | None = None,
    row_group_rows: int = DEFAULT_ROW_GROUP_ROWS,
    compression: str = "zstd",
    write_statistics: bool = True,
    write_page_index: bool = False,
) -> Schema:
    """Write `table` as a flattened Parquet file and return the schema that was stored.

    Args:
        schema: kinds and groups of the features; None infers them from the column types
            (see `gpupre.schema`).
        row_group_rows: rows per row group, the unit of parallel reading.
        compression, write_statistics, write_page_index: passed to Parquet.
    Raises:
        ConfigError: `table` is not a pyarrow Table, `path` is a directory, or `row_group_rows` or
            `compression` is invalid.
        SchemaError: a column the schema names is missing or cannot be stored as its kind.
        DataError: a null id or score inside a list, or a scored row with unequal ids and scores;
            nothing is written.
    """
    if not isinstance(table, pa.Table):
        raise ConfigError(
            f"table must be a pyarrow Table, got {type(table).__name__}; wrap columns with pyarrow.table(...)"
        )
    if schema is None:
        schema = _schema_of(table)
    elif not isinstance(schema, Schema):
        raise ConfigError(f"schema must be a gp.Schema or None (to infer it), got {type(schema).__name__}")
    with TableWriter(
        path,
        schema,
        {name: table.schema.field(name).type for name in schema.extras if name in table.column_names},  # missing: a SchemaError on write
        row_group_rows,
        compression,
        write_statistics,
        write_page_index,
    ) as writer:
        writer.write(table)
    return schema



def _schema_of(table: pa.Table) -> Schema:
    """The schema a table read from a gpupre file still carries in its metadata, if its columns
    are still those; otherwise one inferred from the column types."""
    stored = table.schema.metadata or {}
    if METADATA_KEY in stored:
        schema = Schema.from_json(stored[METADATA_KEY])
        if set(schema.column_names()) != set(table.column_names):
            raise SchemaError(
                f"the table carries the gpupre schema of the file it was read from, but its columns changed "
                f"(added {sorted(set(table.column_names) - set(schema.column_names()))}, dropped "
                f"{sorted(set(schema.column_names()) - set(table.column_names))}); pass schema= to say what the "
                "columns are, or drop the old one with table.replace_schema_metadata() to infer it again"
            )
        return schema
    return Schema.from_arrow(table.schema)
