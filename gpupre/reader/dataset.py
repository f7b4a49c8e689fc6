"""`Dataset`: flattened Parquet files, read a work unit at a time with feature projection."""

from __future__ import annotations

import json
import os
from dataclasses import replace

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from .._checks import ensure_integer
from ..batch import Batch, list_parts, one_array
from ..errors import ConfigError, DataError, SchemaError
from ..schema import DEDUP_METADATA_KEY, METADATA_KEY, REQUEST_GROUPS, Schema, is_number_type, score_owner, unknown_message
from .units import WorkUnit, row_keys, shard

__all__ = ["Dataset"]

PARQUET_SUFFIXES = (".parquet", ".parq", ".pq")


class Dataset:
    """A set of flattened Parquet files, read with projection.

    Args:
        path: a file, a directory (every Parquet file under it, recursively), or a list of files;
            a URI (s3://...) picks its filesystem.
        features: the projection, a list of feature names; None reads every feature, but for
            the columns named as `label` or `passthrough`, which are read as those instead.
        filesystem: any `pyarrow.fs.FileSystem` (default: from the URI, or local). This and the
            arguments after it are keyword-only.
        label: label column(s); None uses the stored schema's (a plain file's `label` column);
            () reads none.
        passthrough: columns delivered untouched in `Batch.extras` (row ids, timestamps).
        expand: for de-dup tables (written by `gp.serving.DedupWriter`, one row per request):
            deliver plain batches of one row per impression instead of de-duplicated ones.
        cache_options: how the column chunks of a projection are coalesced into read requests
            (a `pyarrow.CacheOptions`; default pyarrow's: ranges at most 8 KiB apart merge). For
            an object store, `pyarrow.CacheOptions.from_network_metrics(ttfb_ms, mib_per_s)`
            merges ranges whose gap costs less to read than a request; a dataset rewritten by
            `gp.storage.reorder` keeps co-read features adjacent so that merging over-reads little.
        access_log: records the rows read per projection (`gp.storage.AccessLog`), the workload
            that `gp.storage.reorder` orders columns for.

    Reading de-dup tables, a batch has one row per impression (item features, labels, and the
    pass-through columns of that level, such as `item_id`) and `batch.requests`, the user and
    context features (and pass-through columns such as `request_id`) once per request, with
    `batch.inverse` mapping rows to requests; `batch.expand()` gives the plain batch. `num_rows` and work units count impressions.

    Raises:
        ConfigError: a path or a column name is not a string (or os.PathLike path), `filesystem`
            is not a pyarrow filesystem, a URI pyarrow cannot open, or a
            file is in `path` twice (listed twice, or also inside a listed directory).
        DataError: a path does not exist, a file is not readable Parquet, a row group is empty.
        SchemaError: a projected feature does not exist, has an unsupported type, or files
            disagree on the type of a projected column or on whether they have it.
    """

    def __init__(self, path, features=None, *, filesystem=None, label=None, passthrough=(), expand: bool = False,
                 cache_options: pa.CacheOptions | None = None, access_log=None):  # fmt: skip
        if not isinstance(expand, (bool, np.bool_)):
            raise ConfigError(f"Dataset expand={expand!r} must be True or False")
        if cache_options is not None and not isinstance(cache_options, pa.CacheOptions):
            raise ConfigError(f"cache_options must be a pyarrow.CacheOptions, got {type(cache_options).__name__}")
        features = None if features is None else list(_ensure_names(features, "features"))
        if twice := _repeated(features or ()):
            raise ConfigError(f"Dataset features= names {twice!r} twice; name each feature once")
        labels = None if label is None else _ensure_names(label, "label")
        passthrough = () if passthrough is None else _ensure_names(passthrough, "passthrough")
        self.filesystem, self.paths, self.directories = _resolve(path, filesystem)
        self.cache_options, self.access_log = cache_options, access_log
        self._fragments: dict = {}
        self._footers = None  # read by _metadata
        self._row_counts = {p: [md.row_group(g).num_rows for g in range(md.num_row_groups)] for p, md in self._metadata.items()}
        arrow_schemas = {p: md.schema.to_arrow_schema() for p, md in self._metadata.items()}
        first = self.paths[0]
        arrow_schema = arrow_schemas[first]
        not_features = (labels or ()) + passthrough
        _check_no_file_has_more(arrow_schemas, features, not_features)
        for name in not_features:
            if arrow_schema.get_field_index(name) < 0:
                raise SchemaError(unknown_message(f"{first}: column", name, arrow_schema.names))
        if twice := _repeated(not_features):
            raise SchemaError(
                f"{first}: column {twice!r} is named twice in label={labels!r} and passthrough={passthrough!r}; "
                "name each column once, as a label or as a pass-through column"
            )
        both = [n for n in features or () if n in not_features]
        if both:
            role = "a label" if both[0] in (labels or ()) else "a pass-through column"
            raise SchemaError(
                f"{first}: column {both[0]!r} is asked for as a feature and as {role}; a column is one or "
                "the other: leave it out of features= or out of label= / passthrough="
            )
        if labels is None:
            stored = Schema.from_arrow(arrow_schema, first, columns=()).labels  # the file's own label
            if clash := [n for n in passthrough if n in stored]:
                raise SchemaError(
                    f"{first}: column {clash[0]!r} is the file's label and is asked for as a pass-through column; "
                    f"a column is one or the other: pass label=() (or another label column) to pass it through"
                )
        full = Schema.from_arrow(arrow_schema, first, columns=features, extras=passthrough, labels=labels)
        labels = full.labels if labels is None else labels
        for name in labels:
            t = arrow_schema.field(name).type
            if DEDUP_METADATA_KEY in (arrow_schema.metadata or {}) and pa.types.is_list(t):
                t = t.value_type  # a de-dup table holds a request's labels as a list, one per item
            if not is_number_type(t):
                raise SchemaError(
                    f"{first}: label {name!r} must be a number column (integer, float or bool), found "
                    f"{arrow_schema.field(name).type}; pass a numeric column as label="
                )
        if features is not None:
            known = full.names if METADATA_KEY in (arrow_schema.metadata or {}) else _feature_columns(arrow_schema)
            for name in features:
                if name not in known:
                    raise SchemaError(unknown_message(f"{first}: projected feature", name, known))
        if features is None:  # every feature but the columns asked for as label or pass-through
            features = [name for name in full.names if name not in not_features]
        projected = full.select(features)
        dedup = (arrow_schema.metadata or {}).get(DEDUP_METADATA_KEY)
        self._dedup = None if dedup is None else json.loads(dedup)
        self.expand = bool(expand)
        self.dedup = self._dedup is not None and not self.expand  # batches carry requests and inverse
        features = projected.features
        if self._dedup is not None:  # request features first, as expand() orders them
            features = tuple(f for f in features if f.group in REQUEST_GROUPS) + tuple(
                f for f in features if f.group not in REQUEST_GROUPS
            )
        self.schema = Schema(features, labels, passthrough)
        self.full_schema = full
        self.columns = self.schema.column_names()
        if self._dedup is not None and self.schema.images:
            raise SchemaError(
                f"{first}: image feature {self.schema.images[0].name!r} is in a de-dup table, which "
                "holds no image features; project it out, or write the images to a plain table"
            )
        if self._dedup is not None:
            self._parts = _dedup_parts(self.schema, full, self._dedup, arrow_schema)
            if self._parts[2] not in self.columns:  # the column that counts impressions
                self.columns.append(self._parts[2])
        expected = {c: arrow_schema.field(c).type for c in self.columns}
        self._arrow_extras = frozenset(name for name in passthrough if self._may_hold_nulls(name))
        self._units = []
        for p in self.paths:
            self._check_file(p, arrow_schemas[p], expected)
        self._unit_set = frozenset(self._units)

    def check_outside(self, out: str, filesystem, what: str) -> None:
        """Raise a ConfigError if `out` (a directory on `filesystem`) is inside a directory this
        dataset was opened with: a later `gp.Dataset` of that directory would read both. On a local
        disk the paths are compared with their links resolved."""
        if filesystem.type_name != self.filesystem.type_name:
            return
        resolve = os.path.realpath if filesystem.type_name == "local" else str
        for directory in self.directories:
            if (resolve(out).rstrip("/") + "/").startswith(resolve(directory).rstrip("/") + "/"):
                raise ConfigError(
                    f"{what} would write {out} inside {directory}, a directory of the source dataset, so "
                    "that gp.Dataset of it would read both; write to a directory outside it"
                )

    def _may_hold_nulls(self, name: str) -> bool:
        """Whether some row group holds a null in the top-level column `name`: by the files'
        statistics, or, in a file without them, by reading the column once."""
        for path, md in self._metadata.items():
            leaf = next((i for i in range(md.num_columns) if md.schema.column(i).path == name), None)
            for rg in range(md.num_row_groups):
                stats = None if leaf is None else md.row_group(rg).column(leaf).statistics
                if stats is None or not stats.has_null_count:
                    if pq.read_table(path, columns=[name], filesystem=self.filesystem).column(name).null_count:
                        return True
                    break  # the whole file is read: on to the next
                if stats.null_count:
                    return True
        return False

    def _check_file(self, path: str, arrow_schema: pa.Schema, expected: dict) -> None:
        md = self._metadata[path]
        for column, dtype in expected.items():
            index = arrow_schema.get_field_index(column)
            if index < 0:
                raise SchemaError(
                    f"{path}: column {column!r} is missing but {self.paths[0]} has it; every file of a "
                    "dataset needs the projected columns (drop the file or the feature)"
                )
            if arrow_schema.field(index).type != dtype:
                raise SchemaError(
                    f"{path}: column {column!r} has type {arrow_schema.field(index).type} but "
                    f"{self.paths[0]} has {dtype}; rewrite the file with gp.storage.write_table"
                )
        impressions = None
        if self._dedup is not None:
            dedup = json.loads((arrow_schema.metadata or {}).get(DEDUP_METADATA_KEY, b"{}"))
            impressions = dedup.get("impressions")
            if not isinstance(impressions, list) or len(impressions) != md.num_row_groups:
                raise DataError(
                    f"{path}: its de-dup metadata does not give the impressions of its {md.num_row_groups} "
                    f"row groups but {self.paths[0]} is a de-dup table; rewrite it with gp.serving.DedupWriter"
                )
        for rg in range(md.num_row_groups):
            rows = md.row_group(rg).num_rows if impressions is None else int(impressions[rg])
            if rows:  # an empty row group (pyarrow writes one for an empty table) has nothing to read
                self._units.append(WorkUnit(path, rg, rows))

    # -- public -------------------------------------------------------------------------------
    @property
    def num_rows(self) -> int:
        return sum(u.num_rows for u in self._units)

    def units(self, rank: int = 0, world_size: int = 1, worker: int = 0, num_workers: int = 1, seed=None):
        """Work units [WorkUnit(path, row_group, num_rows)]; all of them by default, else one share."""
        if (rank, world_size, worker, num_workers, seed) == (0, 1, 0, 1, None):
            return list(self._units)
        return shard(self._units, rank, world_size, worker, num_workers, seed)

    def read(self, unit: WorkUnit) -> Batch:
        """One unit as a host `Batch`, reading only the projected columns.

        Raises:
            DataError: the row group cannot be decoded (names the file and row group).
            ConfigError: `unit` is not one of this dataset's work units.
        """
        return self._keyed(self._batch(self.read_arrow(unit), str(unit)), unit, 0)

    def read_slabs(self, unit: WorkUnit, rows: int):
        """One unit as host `Batch`es of up to `rows` rows each, decoding only one at a time.

        Raises:
            DataError: the row group cannot be decoded (names the file and row group).
            ConfigError: `unit` is not one of this dataset's work units, or `rows` is not an integer >= 1.
        """
        self._ensure_unit(unit)
        rows = ensure_integer(rows, "read_slabs rows")  # pyarrow would blame the file for a bad one, or round it
        if self._dedup is not None:  # rows of the file are requests: about `rows` impressions a slab
            rows = max(1, rows * self._row_counts[unit.path][unit.row_group] // unit.num_rows)
        try:
            parts = self._fragment(unit).to_batches(columns=self.columns, batch_size=rows, **self._scan_options())
            start = 0
            for index, part in enumerate(parts):
                if index == 0:  # not after the last: a consumer with all the unit's rows need not resume us
                    self._record(unit)
                yield self._keyed(self._batch(part, str(unit)), unit, start)
                start += part.num_rows
        except (OSError, pa.ArrowException) as e:
            raise DataError(f"{unit}: cannot be read ({e}); the file is corrupt or was changed") from e

    def _batch(self, table, source: str) -> Batch:
        if self._dedup is None:
            return Batch.from_arrow(table, self.schema, source=source, arrow_extras=self._arrow_extras)
        batch = _dedup_batch(table, self.schema, *self._parts, source)
        return batch.expand() if self.expand else batch

    def _keyed(self, batch: Batch, unit: WorkUnit, start: int) -> Batch:
        """Batches of image features carry row keys, from which random image ops draw."""
        if not self.schema.images:
            return batch
        return replace(batch, row_keys=row_keys(unit, start, batch.num_rows))

    def read_arrow(self, unit: WorkUnit) -> pa.Table:
        """One unit's projected columns as an Arrow table."""
        self._ensure_unit(unit)
        try:
            table = self._fragment(unit).to_table(columns=self.columns, **self._scan_options())
        except (OSError, pa.ArrowException) as e:
            raise DataError(f"{unit}: cannot be read ({e}); the file is corrupt or was changed") from e
        self._record(unit)
        return table

    def _record(self, unit: WorkUnit) -> None:
        if self.access_log is not None:
            self.access_log.record(self.columns, unit.num_rows)

    def _fragment(self, unit: WorkUnit):
        """The unit's row group as a pyarrow fragment, whose reads coalesce per `cache_options`.

        The footer is read once per file and process; each later unit first looks the file up
        (a HEAD request on an object store) to check that it is still the file of that footer.
        """
        try:
            info = self.filesystem.get_file_info(unit.path)
        except (OSError, pa.ArrowException) as e:
            raise DataError(f"{unit}: cannot be looked up ({e}); check that its store is up") from e
        if info.type == pafs.FileType.NotFound:
            raise DataError(f"{unit}: the file was deleted after the Dataset was opened; open a new Dataset (and loader)")
        whole = self._fragments.get(unit.path)
        if whole is None or whole[0] is not self.filesystem:
            fragment = pds.ParquetFileFormat().make_fragment(unit.path, filesystem=self.filesystem)
            self._check_row_groups(unit, fragment.metadata)
            whole = self._fragments[unit.path] = (self.filesystem, fragment, _stamp(info))
        elif _stamp(info) != whole[2]:  # replaced since: the cached footer is another file's layout
            said = [f"{'of unknown size' if size is None else f'{size:,} bytes'}, modified "
                    f"{'at an unknown time' if ns is None else np.datetime64(ns, 'ns')}"
                    for size, ns in (whole[2], _stamp(info))]  # fmt: skip
            raise DataError(
                f"{unit}: the file was {said[0]} when this process first read it, and is {said[1]} now; it was "
                "changed: open a new Dataset (and loader) over it"
            )
        return whole[1].subset(row_group_ids=[unit.row_group])

    def _ensure_unit(self, unit) -> None:
        if not (isinstance(unit, WorkUnit) and unit in self._unit_set):
            raise ConfigError(
                f"{unit!r} is not a work unit of this dataset ({len(self.paths)} files, {len(self._units)} units); "
                "read the units that its units() gives"
            )

    def _check_row_groups(self, unit: WorkUnit, now: pq.FileMetaData) -> None:
        """The file still has the row groups (and rows in each) it had when the dataset was opened:
        the work units, the loader's steps and its resume points all count them."""
        before = self._row_counts[unit.path]
        after = [now.row_group(g).num_rows for g in range(now.num_row_groups)]
        if before != after:
            raise DataError(
                f"{unit}: the file had {len(before)} row groups of {sum(before):,} rows when the Dataset was opened, and "
                f"has {len(after)} of {sum(after):,} rows now; it was changed: open a new Dataset (and loader) over it"
            )

    def _scan_options(self) -> dict:
        # With decoding threads calling into a filesystem written in Python (a counting or caching
        # wrapper), the interpreter often aborted at exit (apache/arrow#34314); decoding on this
        # thread (pre-buffering still reads in the background) made every run here exit cleanly.
        return {
            "fragment_scan_options": pds.ParquetFragmentScanOptions(pre_buffer=True, cache_options=self.cache_options),
            "use_threads": not isinstance(self.filesystem, pafs.PyFileSystem),
        }

    def __getstate__(self):  # the footers are large (column statistics): a copy reads them again if it needs them
        return {**self.__dict__, "_fragments": {}, "_footers": None}

    @property
    def _metadata(self) -> dict:
        """{path: pq.FileMetaData} of the files."""
        if self._footers is None:
            self._footers = {p: _open_metadata(self.filesystem, p) for p in self.paths}
        return self._footers

    def with_columns(self, label=None, passthrough=None, features=None) -> "Dataset":
        """The same files with another projection, label or pass-through columns (None keeps them).
        Columns named as the new label or pass-through columns leave the kept projection.

        Raises:
            ConfigError: a label or pass-through column is not named as a string.
            SchemaError: a named column does not exist.
        """
        label = self.schema.labels if label is None else _ensure_names(label, "label")  # read once: a generator too
        passthrough = self.schema.extras if passthrough is None else _ensure_names(passthrough, "passthrough")
        if features is None:
            features = [name for name in self.schema.names if name not in {*label, *passthrough}]
        return Dataset(
            self.paths,
            features=features,
            filesystem=self.filesystem,
            label=label,
            passthrough=passthrough,
            expand=self.expand,
            cache_options=self.cache_options,
            access_log=self.access_log,
        )

    def bytes_per_column(self) -> dict[str, tuple[int, int]]:
        """{top-level column: (compressed, uncompressed) bytes} over all files."""
        totals: dict[str, list[int]] = {}
        for md in self._metadata.values():
            owners = _leaf_owners(md.schema.to_arrow_schema())
            for rg in range(md.num_row_groups):
                group = md.row_group(rg)
                for leaf in range(group.num_columns):
                    chunk = group.column(leaf)
                    t = totals.setdefault(owners[leaf], [0, 0])
                    t[0] += chunk.total_compressed_size
                    t[1] += chunk.total_uncompressed_size
        return {k: (v[0], v[1]) for k, v in totals.items()}

    def __repr__(self) -> str:
        return (
            f"Dataset({len(self.paths)} files, {len(self._units)} units, {self.num_rows} rows, "
            f"{len(self.schema)} of {len(self.full_schema)} features projected)"
        )


def _ensure_names(value, what: str) -> tuple[str, ...]:
    """Column names given as one name or any iterable of them (a list, a generator, a numpy array),
    read once."""
    if isinstance(value, str):
        return (value,)
    try:
        names = tuple(value)
    except TypeError:
        raise ConfigError(
            f"Dataset {what}={value!r} must be a column name or a list of them, such as {what}=['a', 'b']"
        ) from None
    for name in names:
        if not isinstance(name, str):
            raise ConfigError(f"Dataset {what} holds {name!r}, which is no column name; name the columns as strings")
    return tuple(str(name) for name in names)  # numpy's str_ as plain str


def _resolve(path, filesystem):
    if isinstance(path, (str, os.PathLike)):
        paths = [path]
    else:
        try:
            paths = list(path)
        except TypeError:
            paths = [path]  # named below
    if not paths:
        raise DataError("Dataset got an empty list of paths; pass a file, a directory or a list of files")
    for p in paths:
        if not isinstance(p, (str, os.PathLike)):
            raise ConfigError(
                f"Dataset path {p!r} is not a path; pass a file, a directory or a list of files, as str or os.PathLike"
            )
    paths = [os.fspath(p) for p in paths]
    if filesystem is not None and not isinstance(filesystem, pafs.FileSystem):
        raise ConfigError(
            f"filesystem={filesystem!r} is not a pyarrow.fs.FileSystem; pass one, such as "
            "pyarrow.fs.S3FileSystem(...), or give the path as a URI (s3://bucket/path) and no filesystem"
        )
    if filesystem is None:
        if "://" in paths[0]:
            try:
                filesystem, _ = pafs.FileSystem.from_uri(paths[0])
                paths = [pafs.FileSystem.from_uri(p)[1] for p in paths]
            except (OSError, pa.ArrowException) as e:
                raise ConfigError(
                    f"{paths[0]} is not a URI pyarrow can open ({e}); fix the URI, or pass the path "
                    "without its scheme and filesystem=pyarrow.fs.S3FileSystem(...)"
                ) from e
        else:
            filesystem = pafs.LocalFileSystem()
            paths = [os.path.abspath(p) for p in paths]
    try:
        infos = filesystem.get_file_info(paths)
    except (OSError, pa.ArrowException) as e:
        raise DataError(f"cannot look up {paths[0]} ({e}); check the path, and that its store is up") from e
    files, directories = [], []
    for p, info in zip(paths, infos):
        if info.type == pafs.FileType.NotFound:
            raise DataError(f"{p} does not exist; check the dataset path")
        if info.type == pafs.FileType.Directory:
            found = filesystem.get_file_info(pafs.FileSelector(p, recursive=True))
            inside = sorted(
                i.path
                for i in found
                if i.type == pafs.FileType.File
                and i.base_name.endswith(PARQUET_SUFFIXES)
                and not _hidden(i.path, p)
            )
            if not inside:
                raise DataError(f"{p} holds no Parquet files (*{', *'.join(PARQUET_SUFFIXES)})")
            files.extend(inside)
            directories.append(p)
        else:
            files.append(p)
    seen: set[str] = set()
    for p in files:
        if p in seen:  # each of its units would be read twice an epoch
            raise ConfigError(
                f"{p} is in the dataset twice (listed twice, or listed and inside a listed directory), so its "
                "rows would be read twice an epoch; list each file once"
            )
        seen.add(p)
    return filesystem, files, tuple(directories)


def _repeated(names) -> str | None:
    """The first of `names` named again, or None."""
    seen = set()
    for name in names:
        if name in seen:
            return name
        seen.add(name)
    return None


def _hidden(path: str, directory: str) -> bool:
    """Whether a file found under `directory` is hidden (its name, or a directory's between them,
    starts with "_" or "."), as pyarrow, Spark and Hive take it: marker files, a job's `_temporary/`
    output, notebooks' `.ipynb_checkpoints/` copies."""
    base = directory.rstrip("/") + "/"
    if base == "/":  # the root of its filesystem (a SubTreeFileSystem's, say): every part counts
        relative = path
    else:
        relative = path[len(base) :] if path.startswith(base) else path.rsplit("/", 1)[-1]
    return any(part.startswith(("_", ".")) for part in relative.split("/"))


def _stamp(info: pafs.FileInfo) -> tuple:
    """(size, modification time in ns; None where the store keeps none): what tells a replaced file."""
    return info.size, info.mtime_ns


def _check_no_file_has_more(arrow_schemas: dict, features, not_features) -> None:
    """A SchemaError when a later file has a column the first lacks that the dataset would read
    (one of `features` or its score, or of `not_features`; any with features None): the
    projection comes from the first file, which would drop it.
    The opposite, a later file missing a read column, `Dataset._check_file` names."""
    first, *rest = arrow_schemas
    have = set(arrow_schemas[first].names)
    read = lambda n: features is None or n in features or n in not_features or score_owner(n, features)  # noqa: E731
    for path in rest:
        extra = [n for n in arrow_schemas[path].names if n not in have and read(n)]
        if extra:
            raise SchemaError(
                f"{first}: column {extra[0]!r} is missing but {path} has it; every file of a dataset needs "
                "the columns it reads: add it to every file, drop the files that have it, or project it out "
                "with features=[...]"
            )


def _open_metadata(filesystem, path: str) -> pq.FileMetaData:
    try:
        with filesystem.open_input_file(path) as f:
            return pq.ParquetFile(f).metadata
    except (OSError, pa.ArrowException) as e:
        raise DataError(
            f"{path} is not a readable Parquet file ({e}); it may be truncated or of another "
            "format: rewrite it, or remove it from the dataset"
        ) from e


def _dedup_parts(schema: Schema, stored: Schema, dedup: dict, arrow_schema: pa.Schema):
    """(request schema, item schema, the column whose list lengths count impressions).

    A pass-through column is per impression when the writer says so (`item_id`), or when it is a
    label or a column of an item feature of the `stored` schema (a second label, a feature passed
    through)."""
    item_extras = {*dedup.get("item_extras", ()), *stored.labels,
                   *Schema(tuple(f for f in stored if f.group not in REQUEST_GROUPS)).column_names()}  # fmt: skip
    request_schema = Schema(tuple(f for f in schema if f.group in REQUEST_GROUPS), (),
                            tuple(e for e in schema.extras if e not in item_extras))  # fmt: skip
    item_schema = Schema(tuple(f for f in schema if f.group not in REQUEST_GROUPS), schema.labels,
                         tuple(e for e in schema.extras if e in item_extras))  # fmt: skip
    per_impression = item_schema.column_names() or sorted(item_extras)
    counter = per_impression[0] if per_impression else "item_id"
    if arrow_schema.get_field_index(counter) < 0:
        raise SchemaError(f"de-dup table has no column {counter!r}; rewrite it with gp.serving.DedupWriter")
    return request_schema, item_schema, counter


def _dedup_batch(table, schema: Schema, request_schema: Schema, item_schema: Schema, counter: str, source: str) -> Batch:
    """A de-duplicated host batch from rows of a de-dup table (one row per request)."""
    counts, values = _per_impression(table, counter, source)
    flat = {counter: values}  # sizes the batch even with no item column
    for name in item_schema.column_names():
        lengths, flat[name] = _per_impression(table, name, source)
        if not np.array_equal(lengths, counts):
            row = int(np.flatnonzero(lengths != counts)[0])
            raise DataError(
                f"{source}: de-dup column {name!r} has {lengths[row]} elements in request row {row} but "
                f"{counter!r} has {counts[row]}; every per-impression column needs one element per impression"
            )
    items = Batch.from_arrow(pa.table(flat), item_schema, source=source)
    requests = Batch.from_arrow(table, request_schema, source=source)
    inverse = np.repeat(np.arange(len(counts), dtype=np.int32), counts)
    return replace(items, inverse=inverse, requests=requests, schema=schema)


def _per_impression(table, name: str, source: str):
    """(elements per request, the elements) of a per-impression column of a de-dup table."""
    column = one_array(table.column(name))
    if not (pa.types.is_list(column.type) or pa.types.is_large_list(column.type)):
        raise SchemaError(f"{source}: de-dup column {name!r} must be a list per request, found {column.type}")
    return list_parts(column)


def _feature_columns(arrow_schema: pa.Schema) -> list[str]:
    """The columns of a plain file that can be features (score columns belong to their ids)."""
    names = set(arrow_schema.names)
    return [n for n in arrow_schema.names if score_owner(n, names) is None]


def _leaf_owners(arrow_schema: pa.Schema) -> list[str]:
    """The top-level column that owns each Parquet leaf column, in leaf order."""
    owners = []
    for fld in arrow_schema:
        owners.extend([fld.name] * _count_leaves(fld.type))
    return owners


def _count_leaves(t: pa.DataType) -> int:
    if pa.types.is_map(t):
        return _count_leaves(t.key_type) + _count_leaves(t.item_type)
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return _count_leaves(t.value_type)
    if pa.types.is_struct(t):
        return sum(_count_leaves(t.field(i).type) for i in range(t.num_fields))
    return 1



