"""Importers for public recommendation datasets: text in, flattened Parquet out, streaming.

Each keeps the source's meaning: numeric columns stay dense, ids become sparse features with one
id per row (missing -> empty list), separated id lists become list features, and free-text
categories become stable hashed ids (`strings_to_ids`).
"""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
from tqdm.auto import tqdm

from ..batch import one_array
from .._checks import ensure_integer, ensure_path
from ..errors import ConfigError, DataError
from ..schema import DENSE, GROUPS, SPARSE, Feature, Schema
from ._convert import hex_to_ids, split_to_ids, strings_to_ids
from .write import DEFAULT_ROW_GROUP_ROWS, TableWriter, ensure_not_source

__all__ = ["Column", "CRITEO_COLUMNS", "import_criteo", "import_csv", "import_movielens", "import_taobao"]

# how a source column is read: its arrow type in the text, and what it becomes
_READ_TYPES = {
    "label": pa.float64(),
    "dense": pa.float64(),
    "id": pa.int64(),
    "hex": pa.string(),
    "name": pa.string(),
    "ids": pa.string(),
    "names": pa.string(),
    "time": pa.string(),
}


@dataclass(frozen=True)
class Column:
    """What one text column becomes.

    role: "label"; "dense" (a number); "id" (an integer id); "hex" (a hexadecimal id); "name" (a
    string hashed to an id); "ids" / "names" (a `separator`-separated list of integer ids or of
    names); "time" (epoch seconds or a date-time, kept as int64 seconds in extras); "extra" (kept
    as it is).
    """

    role: str
    group: str | None = None
    separator: str | None = None
    arrow_type: pa.DataType = pa.string()  # for role "extra"

    def __post_init__(self):
        if self.role not in (*_READ_TYPES, "extra"):
            raise ConfigError(f"Column role {self.role!r} is not one of {sorted((*_READ_TYPES, 'extra'))}")
        if self.role in ("ids", "names") and not self.separator:
            raise ConfigError(f"Column role {self.role!r} needs a separator")
        if self.separator is not None and not (isinstance(self.separator, str) and self.separator):
            raise ConfigError(f"Column separator={self.separator!r} must be a non-empty string, such as '|' or '^'")
        if self.group is not None and self.group not in GROUPS:
            raise ConfigError(f"Column group={self.group!r} must be one of {GROUPS} or None")

    @property
    def kind(self):
        return DENSE if self.role == "dense" else SPARSE


def import_csv(
    src,
    dst,
    columns: dict[str, Column],
    delimiter: str = ",",
    column_names=None,
    row_group_rows: int = DEFAULT_ROW_GROUP_ROWS,
    block_size: int = 16 << 20,
    progress: bool = True,
) -> Schema:
    """Stream a delimited text file into a flattened Parquet file.

    Args:
        columns: every column to keep, by name; other columns are not read.
        column_names: the names of the columns when the file has no header line.
    Returns the schema written.
    Raises:
        DataError: the file cannot be read, lacks one of `columns`, or cannot be parsed (names the
            file and what was wrong).
        ConfigError: `dst` is a directory or `src` itself, or `columns` is not a dict of `Column`s.
    """
    _ensure_columns(columns)
    ensure_path(src, "src", "the path of a text file")
    if not (isinstance(delimiter, str) and len(delimiter) == 1):
        raise ConfigError(f"delimiter={delimiter!r} must be one character, such as ',' or '\\t'")
    ensure_integer(block_size, "block_size")
    ensure_not_source(src, ensure_path(dst, "dst", "the path of the Parquet file to write"), "text file")
    features = tuple(
        Feature(name, c.kind, c.group) for name, c in columns.items() if c.role not in ("label", "time", "extra")
    )
    labels = tuple(name for name, c in columns.items() if c.role == "label")
    extras = tuple(name for name, c in columns.items() if c.role in ("time", "extra"))
    schema = Schema(features, labels, extras)
    extra_types = {n: pa.int64() if columns[n].role == "time" else columns[n].arrow_type for n in extras}
    found = _header(src, delimiter, column_names)
    if repeated := [name for name in columns if found.count(name) > 1]:
        raise DataError(
            f"{src}: column {repeated[0]!r} appears {found.count(repeated[0])} times in its "
            f"{'column_names' if column_names else 'header line'}, and only its first would be read; give each "
            "column its own name (a repeated column holds a list: join its values into one column)"
        )
    read_types = {n: _READ_TYPES.get(c.role, c.arrow_type) for n, c in columns.items()}
    with _open_source(src) as f:
        try:
            reader = pacsv.open_csv(
                f,
                read_options=pacsv.ReadOptions(block_size=block_size, column_names=column_names),
                parse_options=pacsv.ParseOptions(delimiter=delimiter),
                convert_options=pacsv.ConvertOptions(
                    column_types=read_types, include_columns=list(columns), strings_can_be_null=False
                ),  # numbers take Arrow's null markers ("", "NA", "NULL", ...); in text only "" is missing (_convert)
            )
            with TableWriter(dst, schema, extra_types, row_group_rows) as writer, tqdm(
                total=os.fstat(f.fileno()).st_size,
                desc=f"importing {os.path.basename(src)}",
                unit="B",
                unit_scale=True,
                disable=not progress,
            ) as bar:
                row = 0
                for block in reader:
                    table = pa.Table.from_batches([block])
                    writer.write(_convert(table, columns, str(src), row))
                    row += table.num_rows
                    bar.update(f.tell() - bar.n)
        except pa.ArrowKeyError:  # raised only for an include_columns name the file lacks
            raise _missing_columns(src, columns, delimiter, column_names) from None
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            raise DataError(f"{src}: cannot parse as {', '.join(columns)} text: {e}; fix the file") from e
    return schema


def _ensure_columns(columns) -> None:
    if not (isinstance(columns, dict) and columns and all(isinstance(c, Column) for c in columns.values())):
        raise ConfigError(
            "columns must map each column name to a gp.storage.Column giving its role, such as "
            f"{{'label': Column('label'), 'price': Column('dense')}}; got {type(columns).__name__} "
            f"{str(columns)[:80]}"
        )


# how compressed files begin (Criteo's days come as .gz)
_NOT_TEXT = (
    (b"\x1f\x8b", "gzip-compressed"),
    (b"\x28\xb5\x2f\xfd", "zstd-compressed"),
    (b"\xfd7zXZ\x00", "xz-compressed"),
    (b"PK\x03\x04", "a zip archive"),
)


def _open_source(src):
    """`open(src, "rb")`, with a DataError naming the path when it is missing, unreadable, not
    text, or a pipe: the importers read a file more than once (its first line, then all of it), and
    a pipe's second read would start where the first stopped, without the rows that read took."""
    try:
        f = open(src, "rb")
    except OSError as e:
        raise DataError(f"cannot read {src}: {e.strerror}; pass the path of an existing text file") from e
    if not f.seekable():
        f.close()
        raise DataError(f"{src} is a pipe, which the importer cannot read twice (its first line, then its rows); "
                        "save it to a file and pass that file")  # fmt: skip
    start = f.peek(8)[:8]
    what = next((what for magic, what in _NOT_TEXT if start.startswith(magic)), None)
    if what is None and start[:3] == b"BZh" and start[3:4].isdigit():
        what = "bzip2-compressed"
    if what is None and start[:4] == b"PAR1" and _ends_with(f, b"PAR1"):  # a header "PAR1_x,..." is text
        what = "a Parquet file"
    if what is not None:
        f.close()
        fix = "read it with gp.Dataset" if what == "a Parquet file" else "decompress it first (gunzip, zstd -d, ...)"
        raise DataError(f"{src} is {what}, not delimited text; {fix}")
    return f


def _ends_with(f, tail: bytes) -> bool:
    """Whether the file object `f` ends with `tail`; `f` is left at its start."""
    try:
        f.seek(-len(tail), os.SEEK_END)
        found = f.read(len(tail))
        f.seek(0)
    except OSError:  # shorter than tail, or not seekable
        return False
    return found == tail


def _first_line(src) -> str:
    """The file's first line, without the byte-order mark of Windows tools; lines may end in
    LF, CRLF or CR alone."""
    with _open_source(src) as f:
        head = f.readline(1 << 20)  # bounded: a file whose lines end in CR alone is one line to readline
    return re.split("\r\n?|\n", head.decode("utf-8-sig", "replace"), maxsplit=1)[0]


def _fields(src, line: str, delimiter: str) -> list[str]:
    """The fields of a line of `src`, quotes removed."""
    try:
        return next(csv.reader([line], delimiter=delimiter), [])
    except csv.Error as e:
        raise DataError(f"{src}: cannot read its first line as {delimiter!r}-separated text ({e}); fix the file") from e


def _header(src, delimiter: str, column_names) -> list[str]:
    """The column names: `column_names`, or the file's header line."""
    if column_names:
        return list(column_names)
    return _fields(src, _first_line(src), delimiter)


def _missing_columns(src, columns, delimiter: str, column_names) -> DataError:
    """The error for `columns` absent from `src`: which are missing, which it has, which importer fits."""
    found = _header(src, delimiter, column_names)
    missing = [name for name in columns if name not in found]
    shown = ", ".join(found[:12]) + (f", ... ({len(found)} in all)" if len(found) > 12 else "")
    fits = [name for name, wanted in _IMPORTER_COLUMNS.items() if set(wanted) <= set(found)]
    fix = (
        f"it is {fits[0]} data: use gp.storage.import_{fits[0]} (command line: gpupre import {fits[0]})"
        if fits
        else "name only columns the file has, or pass column_names= if it has no header line"
    )
    return DataError(f"{src} has no column {', '.join(missing)} (its columns: {shown}); {fix}")


def _convert(table: pa.Table, columns: dict[str, Column], source: str, first_row: int) -> pa.Table:
    out = {}
    for name, c in columns.items():
        col = one_array(table.column(name))
        if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):  # a title "NA" is text
            col = pc.if_else(pc.equal(col, ""), pa.scalar(None, col.type), col)
        if c.role == "hex":
            col = hex_to_ids(col, name, source, first_row)
        elif c.role == "name":
            col = strings_to_ids(col)
        elif c.role in ("ids", "names"):
            try:
                col = split_to_ids(col, c.separator, numeric=c.role == "ids")
            except pa.ArrowInvalid as e:
                raise DataError(f"{source} rows {first_row}+: column {name!r} holds a non-integer id: {e}") from e
        elif c.role == "time":
            col = _seconds(col, name, source, first_row)
        elif c.role == "label" and col.null_count:
            row = first_row + int(np.flatnonzero(~col.is_valid().to_numpy(zero_copy_only=False))[0])
            raise DataError(f"{source} row {row}: label {name!r} is empty; every row needs a label (drop the row or fill it)")
        out[name] = col
    return pa.table(out)


def _seconds(col: pa.Array, name: str, source: str, first_row: int) -> pa.Array:
    """Timestamps as int64 epoch seconds, from integers ("1494028800") or dates ("2017-05-06 00:00:00")."""
    try:
        return col.cast(pa.int64())
    except pa.ArrowInvalid:
        pass
    try:
        return col.cast(pa.timestamp("s")).cast(pa.int64())
    except pa.ArrowInvalid as e:
        raise DataError(
            f"{source} rows {first_row}+: column {name!r} is neither epoch seconds nor a date-time ({e})"
        ) from e


CRITEO_COLUMNS = {
    "label": Column("label"),
    **{f"I{i}": Column("dense") for i in range(1, 14)},
    **{f"C{i}": Column("hex") for i in range(1, 27)},
}


def import_criteo(src, dst, row_group_rows: int = DEFAULT_ROW_GROUP_ROWS, progress: bool = True) -> Schema:
    """Criteo display-ads text (label, I1..I13 counts, C1..C26 hex ids) -> flattened dataset.

    Reads the original tab-separated files (no header) and files with a header line naming these
    columns, in any order. I columns become dense features (empty -> missing); C columns sparse features whose id
    is the hex string read as a base-16 integer (empty -> empty list).
    """
    first = _first_line(src)
    delimiter = "\t" if "\t" in first else ","
    fields = {field.strip() for field in _fields(src, first, delimiter)}  # "label" quoted too
    header = not fields.isdisjoint(CRITEO_COLUMNS)  # data holds no such field
    if not header and any(fields >= set(other) for other in _IMPORTER_COLUMNS.values()):
        raise _missing_columns(src, CRITEO_COLUMNS, delimiter, None)  # another importer's file
    names = None if header else list(CRITEO_COLUMNS)
    return import_csv(src, dst, CRITEO_COLUMNS, delimiter, names, row_group_rows, progress=progress)


TAOBAO_COLUMNS = {
    "clk": Column("label"),
    "time_stamp": Column("time"),
    "userid": Column("id", "user"),
    "adgroup_id": Column("id", "item"),
    "pid": Column("name", "context"),
    "cate_id": Column("id", "item"),
    "campaign_id": Column("id", "item"),
    "customer": Column("id", "item"),
    "brand": Column("id", "item"),
    "price": Column("dense", "item"),
    **{
        name: Column("id", "user")
        for name in (
            "cms_segid",
            "cms_group_id",
            "final_gender_code",
            "age_level",
            "pvalue_level",
            "shopping_level",
            "occupation",
            "new_user_class_level",
        )
    },
    "click_sequence": Column("ids", "user", "^"),
}


def import_taobao(src, dst, row_group_rows: int = DEFAULT_ROW_GROUP_ROWS, progress: bool = True) -> Schema:
    """Taobao ad-click CSV (clk, ids, user profile, price, ^-separated click_sequence) -> flattened."""
    return import_csv(src, dst, TAOBAO_COLUMNS, ",", None, row_group_rows, progress=progress)


MOVIELENS_COLUMNS = {
    "user_id": Column("id", "user"),
    "movie_id": Column("id", "item"),
    "rating": Column("label"),
    "timestamp": Column("extra", arrow_type=pa.int64()),
    "title": Column("extra"),
    "genres": Column("names", "item", "|"),
    "gender": Column("name", "user"),
    "age": Column("id", "user"),
    "occupation": Column("id", "user"),
    "zip": Column("name", "user"),
}


def import_movielens(src, dst, row_group_rows: int = DEFAULT_ROW_GROUP_ROWS, progress: bool = True) -> Schema:
    """MovieLens CSV (user_id, movie_id, rating, timestamp, title, genres a|b, gender, age, ...).

    The rating is the label; genres become a list of hashed genre ids; gender and zip hashed ids.
    """
    return import_csv(src, dst, MOVIELENS_COLUMNS, ",", None, row_group_rows, progress=progress)


# the importers by format name, for naming the one that fits a file given to another
_IMPORTER_COLUMNS = {"criteo": CRITEO_COLUMNS, "movielens": MOVIELENS_COLUMNS, "taobao": TAOBAO_COLUMNS}
