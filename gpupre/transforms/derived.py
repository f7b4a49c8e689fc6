"""`materialize`: store the outputs of expensive transforms as columns of a new flattened dataset.

A derived feature is stored with its provenance (`Feature.derived`: the chain of fitted ops that
made it), so a pipeline compiled for the new dataset reads the column instead of running that
chain, and need not read the chain's inputs at all (`Pipeline.features_to_read`).
"""

from __future__ import annotations

import os
from dataclasses import replace

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from ..batch import Batch
from ..errors import ConfigError, DataError, SchemaError
from ..reader import Dataset
from ..schema import METADATA_KEY, Schema, infer_kind
from ..storage.flatten import read_row_group
from ..storage.write import DEFAULT_ROW_GROUP_ROWS, TableWriter
from .images import IMAGE_OPS
from .ops import Op
from .pipeline import Pipeline, output_schema, provenance

__all__ = ["materialize"]


def materialize(dataset: Dataset, ops, out, row_group_rows: int | None = None, progress=True) -> Dataset:
    """Write `dataset` again to the directory `out`, plus one column per output of `ops`.

    Every stored column of the source files is kept (not only the projection; labels and extras
    too), one file per source file. Each op must write a new feature name (`out=`); its column is
    stored with its provenance, and a pipeline holding the same fitted ops, compiled for the new
    dataset, reads it instead of computing it. Files appear under their final names only when all
    are written, so an interrupted run leaves no dataset that looks complete.

    Args:
        dataset: a `gp.Dataset` of flattened files (not a de-dup table).
        ops: a fitted `gp.Pipeline`, or a list of fitted ops; they run with the CPU executor.
        out: a directory that does not exist or is empty.
        row_group_rows: rows per row group; None keeps the source's row groups.
        progress: show a progress bar.

    Returns:
        `gp.Dataset(out)`.

    Raises:
        ConfigError: an op is unfitted or writes in place or over an existing column; `out` is
            not empty; `dataset` is a de-dup table.
        SchemaError: the source files disagree on their columns.
        DataError: a source file cannot be opened, or one of its row groups read (names the file
            and row group); `out` is left empty.
    """
    ops = _ensure_ops(ops)
    out = _ensure_arguments(dataset, out, row_group_rows)
    arrow_schemas = [dataset._metadata[p].schema.to_arrow_schema() for p in dataset.paths]
    source = _source_schema(arrow_schemas[0], dataset)
    for path, arrow_schema in zip(dataset.paths[1:], arrow_schemas[1:]):
        if _source_schema(arrow_schema, dataset) != source:
            raise SchemaError(
                f"{path}: its columns differ from those of {dataset.paths[0]}; materialize keeps every "
                "column, so every file must have the same: rewrite them with gp.storage.write_table"
            )
    inputs, derived = _derived_features(ops, source)
    schema = Schema(source.features + derived, source.labels, source.extras)
    extra_types = {name: arrow_schemas[0].field(name).type for name in schema.extras}
    os.makedirs(out, exist_ok=True)
    names = [f"part-{i:05d}.parquet" for i in range(len(dataset.paths))]
    temporary = [os.path.join(out, f".{name}.tmp") for name in names]  # invisible to gp.Dataset
    bar = tqdm(total=dataset.num_rows, desc="materializing", unit="rows", disable=not progress)
    try:
        for path, tmp in zip(dataset.paths, temporary):
            with _open_input_file(dataset, path) as f, TableWriter(
                tmp, schema, extra_types, row_group_rows or DEFAULT_ROW_GROUP_ROWS
            ) as writer:
                pf = pq.ParquetFile(f, metadata=dataset._metadata[path])
                for rg in range(pf.metadata.num_row_groups):
                    table = read_row_group(pf, rg, path)
                    made = ops(Batch.from_arrow(table, inputs, source=f"{path} row group {rg}")).to_arrow()
                    for column in (c for f in derived for c in f.columns):
                        table = table.append_column(column, made.column(column))
                    if row_group_rows is None:  # one row group out per row group in
                        writer.row_group_rows = table.num_rows
                    writer.write(table)
                    bar.update(table.num_rows)
    except BaseException:
        for tmp in temporary:
            if os.path.exists(tmp):
                os.remove(tmp)
        raise
    finally:
        bar.close()
    for name, tmp in zip(names, temporary):
        os.replace(tmp, os.path.join(out, name))
    return Dataset(out)


def _open_input_file(dataset: Dataset, path: str):
    try:
        return dataset.filesystem.open_input_file(path)
    except (OSError, pa.ArrowException) as e:
        raise DataError(
            f"{path} cannot be opened ({e}); it was moved or removed after gp.Dataset listed it: "
            "open the dataset again"
        ) from e


def _ensure_arguments(dataset, out, row_group_rows) -> str:
    """`out` as an absolute path, after checking every argument but the ops."""
    if row_group_rows is not None and (
        isinstance(row_group_rows, bool) or not isinstance(row_group_rows, int) or row_group_rows <= 0
    ):
        raise ConfigError(
            f"{row_group_rows=} must be a positive integer, or None to keep the source's row groups"
        )
    if not isinstance(dataset, Dataset):
        raise ConfigError(
            f"dataset must be a gp.Dataset, got {type(dataset).__name__}; wrap paths in gp.Dataset(path)"
        )
    if dataset._dedup is not None:
        raise ConfigError(
            f"{dataset.paths[0]} is a de-dup table; materialize writes flattened tables only: "
            "write the requests with gp.serving.TabularWriter and materialize that"
        )
    out = os.path.abspath(os.fspath(out))
    dataset.check_outside(out, pafs.LocalFileSystem(), "materialize")
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        raise ConfigError(
            f"{out=} exists and is not an empty directory; remove it or choose another directory"
        )
    return out


def _ensure_ops(ops) -> Pipeline:
    pipeline = ops if isinstance(ops, Pipeline) else Pipeline([ops] if isinstance(ops, Op) else ops)
    if not pipeline.ops:
        raise ConfigError("materialize got no ops; pass a fitted gp.Pipeline or a list of fitted ops")
    unfitted = [str(op) for op in pipeline.ops if not op.fitted]
    if unfitted:
        raise ConfigError(
            f"materialize stores fitted outputs, but {unfitted} are unfitted; "
            "call pipeline.fit(dataset) first"
        )
    images = [str(op) for op in pipeline.ops if isinstance(op, IMAGE_OPS)]
    if images:
        raise ConfigError(
            f"materialize stores id and float features, not images ({images}); image ops draw anew "
            "each epoch, so leave them in the training pipeline"
        )
    return Pipeline(pipeline.ops)


def _source_schema(arrow_schema: pa.Schema, dataset: Dataset) -> Schema:
    """The stored schema of a source file, with every other column of the file as an extra."""
    if METADATA_KEY in (arrow_schema.metadata or {}):
        schema = Schema.from_arrow(arrow_schema)
    else:
        extras, labels = dataset.schema.extras, dataset.schema.labels
        names = arrow_schema.names
        features = [f.name for f in arrow_schema if f.name not in extras + labels and _inferable(f, names)]
        schema = Schema.from_arrow(arrow_schema, columns=features, extras=extras, labels=labels)
    known = set(schema.column_names())
    return replace(schema, extras=schema.extras + tuple(n for n in arrow_schema.names if n not in known))


def _inferable(fld: pa.Field, names) -> bool:
    try:
        return bool(infer_kind(fld, names, ""))
    except SchemaError:
        return False


def _derived_features(pipeline: Pipeline, source: Schema) -> tuple[Schema, tuple]:
    """(the source features the ops read, the features they make, each with its provenance)."""
    made = output_schema(pipeline.ops, source)  # names a missing input or a kind an op does not take
    existing, written, read, derived = set(source.column_names()), set(), [], []
    for op, chain in provenance(pipeline.ops):
        ((inputs, out),) = op.applications()
        if out in inputs:
            raise ConfigError(
                f"{op} writes {out!r} in place; give it out='<new name>' so that the stored column has "
                "its own name and the source feature stays as it was"
            )
        if out in existing or out in written:
            who = "the dataset has" if out in existing else "an earlier op writes"
            raise ConfigError(f"{op} writes {out!r}, which {who} already; give it another out= name")
        read += [name for name in inputs if name not in written and name not in read]
        written.add(out)
        derived.append(replace(made[out], derived=chain))
    return Schema(source.select(read).features), tuple(derived)
