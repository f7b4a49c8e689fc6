"""Feature reordering: put the columns that jobs read together next to each other.

A job reads a projection; pyarrow coalesces the projected column chunks of a row group into range
requests, merging two ranges when the gap between them is at most `hole_size_limit` bytes (the
gap is read and thrown away). On the order in which features happen to be written, a projection
is scattered: its reads are either many small requests or large ones full of features nobody
asked for. `column_order` finds an order in which every job's columns are (nearly) contiguous,
given the workload; `reorder` rewrites a dataset in it. Rows, row groups and values are unchanged.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import statistics
import time
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from tqdm import tqdm

from .._checks import ensure_integer, ensure_path, is_real
from .._sqlite import connect
from ..errors import ConfigError, DataError, SchemaError
from ..schema import METADATA_KEY, Schema, infer_kind, score_owner
from .flatten import read_row_group

__all__ = ["AccessLog", "Workload", "column_order", "measured_cache_options", "reorder"]


@dataclass
class Workload:
    """The projections of the jobs that read a dataset, each with a weight (how much it reads)."""

    jobs: dict[str, tuple[tuple[str, ...], float]] = field(default_factory=dict)

    def add(self, name: str, columns, weight: float = 1.0) -> Workload:
        """Add a job that reads `columns` (feature or column names; a gp.Dataset: its projection)."""
        columns = getattr(columns, "columns", columns)
        try:
            columns = (columns,) if isinstance(columns, str) else tuple(dict.fromkeys(() if columns is None else columns))
        except TypeError:  # neither a name nor a list of them
            raise ConfigError(f"job {name!r} reads {columns!r}; give it a column name or a list of names") from None
        if not columns:
            raise ConfigError(f"job {name!r} reads no columns; give it the names of what it projects")
        if not all(isinstance(c, str) for c in columns):
            raise ConfigError(f"job {name!r} reads {list(columns)!r}; columns are named by strings")
        if not (is_real(weight) and 0 < weight < math.inf):
            raise ConfigError(f"job {name!r}: weight={weight!r} must be a positive number (say, rows read)")
        self.jobs[str(name)] = (columns, float(weight))
        return self

    def to_json(self) -> str:
        return json.dumps({n: {"columns": list(c), "weight": w} for n, (c, w) in self.jobs.items()}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> Workload:
        """The workload `to_json` wrote.

        Raises:
            DataError: `text` is not such JSON.
        """
        workload = cls()
        try:
            for name, job in json.loads(text).items():
                workload.add(name, job["columns"], job["weight"])
        except (ValueError, KeyError, TypeError, AttributeError) as e:  # a JSONDecodeError is a ValueError
            raise DataError(
                f"{str(text)[:60]!r} is not a Workload's JSON ({type(e).__name__}: {e}); pass what "
                'Workload.to_json() wrote: {"job": {"columns": [...], "weight": 1.0}}'
            ) from e
        return workload


class AccessLog:
    """Access statistics recorded by the reader: rows read per projection, in a SQLite file.

    Give it to `gp.Dataset(..., access_log=AccessLog(path))`; every work unit read adds its rows to
    its projection. Safe for concurrent readers (loader workers, several jobs on one machine).
    `workload()` turns the record into a `Workload`, one job per distinct projection.
    """

    def __init__(self, path):
        self.path = ensure_path(path, "AccessLog path", "the path of a SQLite file, such as 'stats/access.sqlite'")
        if os.path.isdir(self.path):
            raise ConfigError(
                f"AccessLog path {self.path} is a directory; pass the path of a SQLite file in it, such as "
                f"{os.path.join(self.path, 'access.sqlite')}"
            )
        self._db = None

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            try:
                os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
                db = connect(self.path, isolation_level=None)
                db.execute("CREATE TABLE IF NOT EXISTS reads (projection TEXT PRIMARY KEY, rows INTEGER, units INTEGER)")
            except (OSError, sqlite3.Error) as e:
                raise DataError(
                    f"cannot open the access log {self.path} ({type(e).__name__}: {e}); pass a path in a "
                    "writable directory, to a SQLite file or none yet (if it is locked: another process has "
                    "held it for a minute; stop that process)"
                ) from e
            self._db = db
        return self._db

    def record(self, columns, rows: int) -> None:
        self._connection().execute(
            "INSERT INTO reads VALUES (?, ?, 1) ON CONFLICT(projection) "
            "DO UPDATE SET rows = rows + excluded.rows, units = units + 1",
            (json.dumps(sorted(columns)), int(rows)),
        )

    def workload(self) -> Workload:
        workload = Workload()
        for i, (projection, rows) in enumerate(self._connection().execute("SELECT projection, rows FROM reads ORDER BY rowid")):
            workload.add(f"projection-{i}", json.loads(projection), rows)
        return workload

    def __getstate__(self):
        return {"path": self.path, "_db": None}


def measured_cache_options(filesystem, path: str, probes: int = 5, probe_bytes: int = 32 << 20) -> pa.CacheOptions:
    """`pyarrow.CacheOptions.from_network_metrics` on the measured time to first byte and bandwidth
    of `filesystem` (medians of `probes` reads of one byte and of `probe_bytes` from `path`): gaps
    that cost less to read than a request are read through.

    Raises:
        ConfigError: `filesystem` is not a `pyarrow.fs.FileSystem`.
        DataError: `path` cannot be read.
    """
    ensure_integer(probes, "probes")
    ensure_integer(probe_bytes, "probe_bytes")
    if not isinstance(filesystem, pafs.FileSystem):
        raise ConfigError(
            f"filesystem must be a pyarrow.fs.FileSystem, got {type(filesystem).__name__}; pass the store's, "
            "such as pyarrow.fs.S3FileSystem(...) or LocalObjectStore.filesystem()"
        )
    small, large = [], []
    try:
        with filesystem.open_input_file(path) as f:
            size = min(probe_bytes, f.size())
            for _ in range(probes):
                start = time.perf_counter()
                f.read_at(1, 0)
                small.append(time.perf_counter() - start)
                start = time.perf_counter()
                f.read_at(size, 0)
                large.append(time.perf_counter() - start)
    except (OSError, pa.ArrowException) as e:
        raise DataError(f"{path}: cannot be read to measure the store ({e}); pass a file on it") from e
    ttfb = statistics.median(small)
    mib_s = size / (1 << 20) / max(1e-6, statistics.median(large) - ttfb)
    return pa.CacheOptions.from_network_metrics(max(1, round(ttfb * 1e3)), max(1, round(mib_s)))


def column_order(sizes: dict[str, int], workload: Workload, request_bytes: int = 1 << 20) -> list[str]:
    """An order of the columns in `sizes` ({column: bytes per row group}) for `workload`.

    Columns are grouped by the set of jobs that read them; the groups are ordered to minimise
    sum over jobs of weight * (bytes read + request_bytes * requests) when ranges at most
    `request_bytes` apart are merged (`request_bytes` is what a request costs in bytes, the
    `hole_size_limit` of `pyarrow.CacheOptions.from_network_metrics`). A scored feature's score
    column stays next to its ids; columns no job reads go last; inside a group the given order holds.
    """
    blocks: dict[str, list[str]] = {}
    for name in sizes:
        blocks.setdefault(score_owner(name, sizes) or name, []).append(name)
    owner_of = {c: b for b, columns in blocks.items() for c in columns}
    readers: dict[str, int] = {b: 0 for b in blocks}
    weights = []
    for j, (job, (columns, weight)) in enumerate(workload.jobs.items()):
        unknown = [c for c in columns if c not in owner_of]
        if unknown:
            raise ConfigError(f"job {job!r} reads {unknown[0]!r}, which the dataset does not have; fix the workload")
        for c in columns:
            readers[owner_of[c]] |= 1 << j
        weights.append(weight)
    groups: dict[int, list[str]] = {}
    for block, mask in readers.items():
        groups.setdefault(mask, []).extend(blocks[block])
    cold = groups.pop(0, [])
    masks = list(groups)
    size = {m: sum(sizes[c] for c in groups[m]) for m in masks}
    order = _search(masks, size, weights, request_bytes)
    return [c for m in order for c in groups[m]] + cold


def _search(masks, size, weights, request_bytes):
    """Greedy chain by shared readers, then moves of one group while the cost falls."""
    def cost(order):
        total = 0.0
        for j, w in enumerate(weights):
            bit, read, requests, gap, open_ = 1 << j, 0, 0, 0, False
            for m in order:
                if m & bit:
                    if open_ and gap <= request_bytes:
                        read += gap
                    else:
                        requests += 1
                    read += size[m]
                    gap, open_ = 0, True
                else:
                    gap += size[m]
            total += w * (read + request_bytes * requests)
        return total

    def weight(mask):
        return sum(w for j, w in enumerate(weights) if mask >> j & 1)

    rest = sorted(masks, key=lambda m: (-weight(m) * size[m], m))
    order = [rest.pop(0)] if rest else []
    while rest:
        last = order[-1]
        best = max(rest, key=lambda m: (weight(m & last) - weight(m ^ last), size[m]))
        rest.remove(best)
        order.append(best)
    best_cost = cost(order)
    for _ in range(20 if len(order) ** 3 * max(1, len(weights)) <= 20_000_000 else 0):  # seconds, not minutes
        improved = False
        for m in list(order):
            base = [x for x in order if x != m]
            for i in range(len(base) + 1):
                candidate = base[:i] + [m] + base[i:]
                c = cost(candidate)
                if c < best_cost - 1e-9:
                    order, best_cost, improved = candidate, c, True
        if not improved:
            break
    return order


def reorder(source, out, workload: Workload, request_bytes: int = 1 << 20, filesystem=None, progress: bool = True):
    """Rewrite a dataset with its columns in `column_order` for `workload`; returns the new
    dataset, read with the source's projection, labels and pass-through columns.

    Args:
        source: a gp.Dataset (every stored column is rewritten, not only its projection) or a path.
        out: the directory to write; each file keeps its name, row groups, rows, metadata and
            each column's codec and dictionary encoding. On failure it is left empty.
        request_bytes: the cost of one read request in bytes (see `column_order`).
        filesystem: where `out` is (default: local, or from an s3:// URI).

    Raises:
        ConfigError: `out` is a file or already holds files, `workload` is not a Workload, has no
            jobs, or names unknown columns.
    """
    from ..reader.dataset import PARQUET_SUFFIXES, Dataset  # storage writes what the reader reads

    if isinstance(request_bytes, bool) or not (isinstance(request_bytes, int) and request_bytes >= 0):
        raise ConfigError(f"{request_bytes=} must be a number of bytes >= 0 (what a request costs), such as 1 << 20")
    if not isinstance(workload, Workload):
        raise ConfigError(
            f"workload must be a gp.storage.Workload, got {type(workload).__name__}; build one with "
            "Workload().add(name, columns, weight), or take AccessLog(path).workload()"
        )
    if not workload.jobs:
        raise ConfigError(
            "workload has no jobs, so there is no order to rewrite the dataset in; add the jobs that "
            "read it, or train with an AccessLog first (an AccessLog that recorded no reads is empty)"
        )
    dataset = source if isinstance(source, Dataset) else Dataset(source)
    out = os.fspath(out)
    if "://" in out:
        filesystem, out = pafs.FileSystem.from_uri(out)
    elif filesystem is None or isinstance(filesystem, pafs.LocalFileSystem):
        filesystem, out = filesystem or pafs.LocalFileSystem(), os.path.abspath(out)
    try:
        is_file = filesystem.get_file_info(out).type == pafs.FileType.File
        not_empty = not is_file and filesystem.get_file_info(pafs.FileSelector(out, allow_not_found=True))
    except OSError as e:
        raise DataError(f"{out}: cannot look there ({e}); check that the bucket or directory exists and can be written") from e
    dataset.check_outside(out, filesystem, "reorder")
    if is_file:
        raise ConfigError(f"{out} is a file; reorder writes a new dataset, give it a new or empty directory")
    if not_empty:
        raise ConfigError(f"{out} is not empty; reorder writes a new dataset, give it an empty directory")
    groups = sum(md.num_row_groups for md in dataset._metadata.values())
    sizes = {c: b[0] // max(1, groups) for c, b in dataset.bytes_per_column().items()}
    order = column_order(sizes, workload, request_bytes)
    names = _relative_names(dataset.paths, PARQUET_SUFFIXES)
    try:
        for path, name in tqdm(list(zip(dataset.paths, names)), desc="reordering", unit="file", disable=not progress):
            _rewrite(dataset, path, filesystem, f"{out}/{name}", order)
    except BaseException:  # out was empty: leave it so, not half a dataset
        filesystem.delete_dir_contents(out, missing_dir_ok=True)
        raise
    return Dataset(out, features=list(dataset.schema.names), filesystem=filesystem, label=dataset.schema.labels,
                   passthrough=dataset.schema.extras)  # fmt: skip


def _rewrite(dataset, path: str, filesystem, target: str, order: list[str]) -> None:
    md = dataset._metadata[path]
    schema = md.schema.to_arrow_schema()
    schema = schema.with_metadata(_stored_schema(schema, path, dataset.schema))
    order = [c for c in order if c in schema.names]  # the order covers every file's columns; files differ
    fields = [schema.field(c) for c in order]
    arrow_schema = pa.schema(fields, metadata=schema.metadata)
    compression, dictionary = _encodings(md)
    temporary = f"{target}.tmp"
    try:
        filesystem.create_dir(os.path.dirname(target), recursive=True)
        with dataset.filesystem.open_input_file(path) as f, filesystem.open_output_stream(temporary) as sink:
            source = pq.ParquetFile(f, metadata=md)
            with pq.ParquetWriter(sink, arrow_schema, compression=compression, use_dictionary=dictionary) as writer:
                for rg in range(md.num_row_groups):
                    table = read_row_group(source, rg, path).select(order)
                    writer.write_table(table.replace_schema_metadata(schema.metadata), row_group_size=table.num_rows)
        filesystem.move(temporary, target)
    except (OSError, pa.ArrowException) as e:
        raise DataError(f"{path}: cannot be rewritten to {target} ({e}); check both locations") from e


def _stored_schema(arrow_schema: pa.Schema, path: str, read_as: Schema) -> dict:
    """The file's metadata with the gpupre schema it is read with, in its own column order.

    A plain file's features are inferred in column order: without the schema stored, its rewritten
    copy would deliver them in the new order. Columns of no feature kind (strings) stay unnamed.
    """
    metadata = arrow_schema.metadata or {}
    if METADATA_KEY in metadata:
        return metadata
    names = set(arrow_schema.names)

    def has_kind(fld) -> bool:
        try:
            return score_owner(fld.name, names) is not None or bool(infer_kind(fld, names, path))
        except SchemaError:
            return False

    columns = [fld.name for fld in arrow_schema if has_kind(fld)]
    schema = Schema.from_arrow(arrow_schema, path, columns, read_as.extras, read_as.labels)
    return {**metadata, METADATA_KEY: schema.to_json().encode()}


def _encodings(md: pq.FileMetaData) -> tuple:
    """Each column chunk's codec, and the columns that use a dictionary, as the first row group has them."""
    if not md.num_row_groups:
        return "zstd", True
    chunks = [md.row_group(0).column(i) for i in range(md.num_columns)]
    codec = {c.path_in_schema: c.compression.lower().replace("uncompressed", "none") for c in chunks}
    dictionary = [c.path_in_schema for c in chunks if {"PLAIN_DICTIONARY", "RLE_DICTIONARY"} & set(c.encodings)]
    return codec, dictionary


def _relative_names(paths: list[str], suffixes: tuple[str, ...]) -> list[str]:
    """Each file's path under the dataset's root, with a Parquet suffix so that the copy is found.

    Raises:
        ConfigError: two files would be rewritten under one name (a file listed twice, or `x` beside `x.parquet`).
    """
    root = os.path.commonpath([os.path.dirname(p) for p in paths])
    names = [os.path.relpath(p, root) for p in paths]
    names = [n if n.endswith(suffixes) else n + ".parquet" for n in names]
    first: dict[str, str] = {}
    for path, name in zip(paths, names):
        if name in first:
            raise ConfigError(
                f"{first[name]} and {path} would both be rewritten as {name}, one over the other; list each "
                "file of the dataset once, and rename a file whose name differs from another's only by .parquet"
            )
        first[name] = path
    return names
