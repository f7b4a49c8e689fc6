"""Synthetic recommendation data with the shape of real ranking traffic, and a known truth.

Rows come in requests of `items_per_request` items: user and context features are the same for
every item of a request, item features differ. Ids are Zipf-distributed (a few very hot ids, a long
tail); id-list lengths are long-tailed (many empty lists, some lists of thousands); dense values
are log-normal with missing values. The label depends on a known set of "planted" features, which
the file records in its metadata (`gpupre.synth`) so that audits can be checked against it.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa
from tqdm.auto import tqdm

from .._checks import is_integer, is_real
from ..batch import offsets_of
from ..errors import ConfigError
from ..schema import DENSE, SCORE_SUFFIX, SCORED, SPARSE, Feature, Schema
from .flatten import _ranges, flat_to_map
from .write import HiddenParquetWriter, TableWriter

__all__ = ["SYNTH_KEY", "SynthSpec", "synth_schema", "synthesize", "write_criteo_text"]

SYNTH_KEY = b"gpupre.synth"
_GROUPS = ("user", "item", "item", "context", "user")  # cycled: 40% user, 40% item, 20% context


@dataclass(frozen=True)
class SynthSpec:
    """What `synthesize` generates. Defaults: 500 features, a few KB per row."""

    rows: int = 100_000
    num_dense: int = 200
    num_sparse: int = 250
    num_scored: int = 50
    items_per_request: int = 10
    list_fraction: float = 0.4  # of the sparse features: id lists; the rest hold one id
    mean_list_length: float = 8.0
    max_list_length: int = 5_000
    vocab_size: int = 10_000_000
    zipf_a: float = 1.2
    missing_rate: float = 0.1
    num_planted: int = 8
    row_group_rows: int = 16_380
    num_files: int = 1
    seed: int = 0

    def __post_init__(self):
        for name in ("rows", "items_per_request", "max_list_length", "vocab_size", "row_group_rows", "num_files"):
            if not is_integer(getattr(self, name)) or getattr(self, name) <= 0:
                raise ConfigError(f"SynthSpec.{name}={getattr(self, name)!r} must be a positive integer")
        for name in ("num_dense", "num_sparse", "num_scored", "num_planted", "seed"):
            if not is_integer(getattr(self, name)) or getattr(self, name) < 0:
                raise ConfigError(f"SynthSpec.{name}={getattr(self, name)!r} must be an integer >= 0")
        for name in ("list_fraction", "mean_list_length", "zipf_a", "missing_rate"):
            if not is_real(getattr(self, name)):
                raise ConfigError(f"SynthSpec.{name}={getattr(self, name)!r} must be a number")
        if not self.mean_list_length > 0:
            raise ConfigError(f"SynthSpec.mean_list_length={self.mean_list_length!r} must be > 0")
        if self.num_files > -(-self.rows // self.items_per_request):  # a file holds whole requests
            raise ConfigError(
                f"SynthSpec.num_files={self.num_files} is more than its {-(-self.rows // self.items_per_request)} "
                f"requests of {self.items_per_request} rows, so some files would be empty; ask for fewer files or more rows"
            )
        if self.num_planted > self.num_dense + self.num_sparse + self.num_scored:
            raise ConfigError(f"SynthSpec.num_planted={self.num_planted} exceeds the number of features")
        if not (0 <= self.missing_rate < 1 and 0 <= self.list_fraction <= 1 and self.zipf_a > 1):
            raise ConfigError("SynthSpec needs 0 <= missing_rate < 1, 0 <= list_fraction <= 1, zipf_a > 1")

    @property
    def chunk_rows(self) -> int:
        """Rows per row group: row_group_rows rounded down to whole requests."""
        k = self.items_per_request
        return max(k, self.row_group_rows // k * k)


def synth_schema(spec: SynthSpec) -> Schema:
    """The schema of `spec`'s data: dense_000.., sparse_000.., scored_000.., label, ids."""
    features = []
    for kind, count in ((DENSE, spec.num_dense), (SPARSE, spec.num_sparse), (SCORED, spec.num_scored)):
        for i in range(count):
            features.append(Feature(f"{kind}_{i:03d}", kind, _GROUPS[i % len(_GROUPS)]))
    return Schema(tuple(features), ("label",), ("request_id", "row_id"))


def planted_features(spec: SynthSpec) -> tuple[str, ...]:
    """The features the label depends on (deterministic for a seed)."""
    names = synth_schema(spec).names
    rng = np.random.default_rng([spec.seed, 7])
    return tuple(sorted(rng.choice(names, spec.num_planted, replace=False).tolist()))


def synthesize(path, spec: SynthSpec | None = None, layout: str = "flat", progress: bool = True) -> Schema:
    """Write `spec`'s data to `path` (a file; a directory when spec.num_files > 1).

    Args:
        layout: "flat" (one column per feature) or "map" (the legacy map layout, same data).
    Returns the flattened schema.
    """
    spec = SynthSpec() if spec is None else spec
    if not isinstance(spec, SynthSpec):
        raise ConfigError(f"spec must be a SynthSpec (or None), got {type(spec).__name__}: SynthSpec(**{spec!r})?")
    if layout not in ("flat", "map"):
        raise ConfigError(f"{layout=} must be 'flat' or 'map'")
    schema = synth_schema(spec)
    planted = planted_features(spec)
    meta = {SYNTH_KEY: json.dumps({"spec": asdict(spec), "planted": planted}).encode()}
    if spec.num_files == 1:
        paths = [path]
    else:
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"{path}: cannot be the directory of {spec.num_files} files ({e}); pass another path") from e
        paths = [os.path.join(path, f"part-{i:05d}.parquet") for i in range(spec.num_files)]
        others = _other_parquet_files(path, paths)
        if others:
            raise ConfigError(
                f"{path} holds {len(others)} Parquet files besides the {spec.num_files} it would write (such as "
                f"{others[0]}, from an earlier run with more files?), which gp.Dataset({str(path)!r}) would read "
                "with them; remove them or pass a new directory"
            )
    k, files = spec.items_per_request, spec.num_files  # files split whole requests, as _generate assumes
    requests = -(-spec.rows // k)
    bounds = [min(spec.rows, (i * requests // files) * k) for i in range(files + 1)]
    weights = _planted_weights(spec, planted)
    chunk = 0
    with tqdm(total=spec.rows, desc=f"synthesizing {layout}", unit="rows", disable=not progress) as bar:
        for i, file_path in enumerate(paths):
            start, stop = bounds[i], bounds[i + 1]
            with _writer(file_path, schema, spec, layout, meta) as writer:
                for lo in range(start, stop, spec.chunk_rows):
                    table = _generate(spec, schema, weights, lo, min(stop, lo + spec.chunk_rows), chunk)
                    if layout == "flat":
                        writer.write(table)
                    else:
                        table = flat_to_map(table, schema)[0]
                        writer.write_table(table.replace_schema_metadata(writer.schema.metadata))
                    bar.update(table.num_rows)
                    chunk += 1
    return schema


def _other_parquet_files(directory, paths) -> list[str]:
    """The files under `directory` that gp.Dataset(directory) would read, other than `paths`."""
    from ..reader.dataset import PARQUET_SUFFIXES, _hidden  # storage writes what the reader reads

    mine = {os.path.abspath(p) for p in paths}
    found = (os.path.join(folder, name) for folder, _, names in os.walk(directory) for name in names)
    return sorted(
        f for f in found
        if f.endswith(PARQUET_SUFFIXES) and not _hidden(f, os.fspath(directory)) and os.path.abspath(f) not in mine
    )


def _writer(path, schema, spec, layout, meta):
    if layout == "flat":
        extra_types = {"request_id": pa.int64(), "row_id": pa.int64()}
        return TableWriter(path, schema, extra_types, spec.chunk_rows, metadata=meta)
    empty = _generate(spec, schema, _planted_weights(spec, ()), 0, 0, 0)
    arrow_schema = flat_to_map(empty, schema)[0].schema
    return HiddenParquetWriter(path, arrow_schema.with_metadata({**arrow_schema.metadata, **meta}), compression="zstd")


def _planted_weights(spec, planted):
    rng = np.random.default_rng([spec.seed, 11])
    return {name: float(rng.choice([-1, 1]) * rng.uniform(0.6, 1.2)) for name in planted}


def _generate(spec: SynthSpec, schema: Schema, weights: dict, lo: int, hi: int, chunk: int) -> pa.Table:
    """Rows [lo, hi) as a flattened table (lo is a request boundary)."""
    rng = np.random.default_rng([spec.seed, chunk, 1])
    k = spec.items_per_request
    n = hi - lo
    num_requests = -(-n // k)
    columns: dict[str, pa.Array] = {}
    logit = np.full(n, -1.0)
    for index, f in enumerate(schema.features):
        shared = f.group != "item"  # user and context features are per request
        units = num_requests if shared else n
        frng = np.random.default_rng([spec.seed, chunk, 2, index])
        present = frng.random(units) >= spec.missing_rate * frng.uniform(0, 2)
        if f.kind == DENSE:
            values = frng.lognormal(0.0, 1.0, units) * 10 ** frng.uniform(0, 3)
            if index % 2:
                values = np.floor(values)  # count-like features
            values = np.where(present, values, np.nan).astype(np.float32)
            if shared:
                values = np.repeat(values, k)[:n]
            columns[f.name] = pa.array(values, from_pandas=True)
            if f.name in weights:
                logs = np.log1p(values)
                signal = np.nan_to_num((logs - np.nanmean(logs)) / (np.nanstd(logs) + 1e-6))
        else:
            is_list = f.kind == SCORED or index % 10 < spec.list_fraction * 10
            if is_list:
                sigma = 1.5
                mu = np.log(spec.mean_list_length) - sigma**2 / 2
                lengths = np.minimum(np.ceil(frng.lognormal(mu, sigma, units)), spec.max_list_length)
            else:
                lengths = np.ones(units)
            lengths = np.where(present, lengths, 0).astype(np.int32)
            total = int(lengths.sum())
            ids = ((frng.zipf(spec.zipf_a, total) % spec.vocab_size) * 2_654_435_761 + index) % spec.vocab_size
            if shared:
                lengths, ids = _repeat_lists(lengths, ids, k, n)
            offsets = offsets_of(lengths, np.int32)
            columns[f.name] = pa.ListArray.from_arrays(pa.array(offsets), pa.array(ids, pa.int64()))
            if f.kind == SCORED:
                scores = np.random.default_rng([spec.seed, chunk, 3, index]).random(len(ids), np.float32)
                columns[f.name + SCORE_SUFFIX] = pa.ListArray.from_arrays(pa.array(offsets), pa.array(scores))
            if f.name in weights:  # the parity of the first id pushes the label up or down
                nonempty = lengths > 0
                first = np.zeros(n, np.int64)
                first[nonempty] = ids[offsets[:-1][nonempty]]
                signal = np.where(nonempty, (first // 7) % 2 * 2.0 - 1.0, 0.0)
        if f.name in weights:
            logit += weights[f.name] * signal
    label = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.float32)
    columns["label"] = pa.array(label)
    rows = np.arange(lo, hi, dtype=np.int64)
    columns["request_id"] = pa.array(rows // k)
    columns["row_id"] = pa.array(rows)
    return pa.table(columns)


def _repeat_lists(lengths, ids, k, n):
    """Each request's list repeated for its k rows, cut to n rows."""
    starts = offsets_of(lengths)[:-1]
    row_lengths = np.repeat(lengths, k)[:n]
    row_starts = np.repeat(starts, k)[:n]
    return row_lengths, ids[_ranges(row_starts, row_lengths)]


def write_criteo_text(path, rows: int = 1000, seed: int = 0, header: bool = True) -> None:
    """Write Criteo display-ads text: label, I1..I13 counts, C1..C26 8-digit hex ids.

    With header=True, comma-separated with a header line (the Kaggle sample format); else
    tab-separated without one (the original release). Empty fields are missing values.
    """
    rng = np.random.default_rng(seed)
    sep = "," if header else "\t"
    labels = (rng.random(rows) < 0.25).astype(int)
    counts = np.floor(rng.lognormal(1.0, 1.5, (rows, 13))).astype(int) - (rng.random((rows, 13)) < 0.02)
    dense_missing = rng.random((rows, 13)) < 0.2
    ids = (rng.zipf(1.3, (rows, 26)) * 2_654_435_761) % (1 << 32)
    sparse_missing = rng.random((rows, 26)) < 0.05
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as out:
        if header:
            out.write(sep.join(["label"] + [f"I{i}" for i in range(1, 14)] + [f"C{i}" for i in range(1, 27)]) + "\n")
        for r in range(rows):
            dense = ["" if dense_missing[r, j] else str(counts[r, j]) for j in range(13)]
            sparse = ["" if sparse_missing[r, j] else f"{ids[r, j]:08x}" for j in range(26)]
            out.write(sep.join([str(labels[r])] + dense + sparse) + "\n")
