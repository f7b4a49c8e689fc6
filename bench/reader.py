"""Reader benchmark: flattened + projection against the map layout.

Contenders, on the same synthetic data (>= 500 features), each reading every work unit into a
host `Batch`:
- flat-P%: the flattened dataset with a projection of P% of the features (P = 10, 25, 50, 100);
- map-P%: the legacy map layout, which must decode every map to extract the same P% features.
Reported: rows/s (median of repeats, first pass separately) and bytes read (counted).
"""

from __future__ import annotations

import os

import numpy as np
import pyarrow.parquet as pq

import gpupre as gp
from gpupre.storage import CountingFileSystem, MapLayout, SynthSpec, map_to_flat, synthesize

from .common import markdown_table, measure, save, targets_table

FRACTIONS = (0.10, 0.25, 0.50, 1.00)
DATA_DIR = os.path.join(os.path.dirname(__file__), "data")


def prepare(spec: SynthSpec, data_dir: str = DATA_DIR, progress: bool = True) -> tuple[str, str]:
    """The flat and map files of `spec`, generated once and reused while the spec is unchanged."""
    tag = f"r{spec.rows}-d{spec.num_dense}-s{spec.num_sparse}-w{spec.num_scored}-g{spec.row_group_rows}-{spec.seed}"
    flat, maps = (os.path.join(data_dir, f"synth-{tag}-{kind}.parquet") for kind in ("flat", "map"))
    if not os.path.exists(flat):
        synthesize(flat + ".tmp", spec, layout="flat", progress=progress)
        os.replace(flat + ".tmp", flat)
    if not os.path.exists(maps):
        synthesize(maps + ".tmp", spec, layout="map", progress=progress)
        os.replace(maps + ".tmp", maps)
    return flat, maps


class MapReader:
    """Reads the map layout the only way it can be read: whole maps, then the wanted keys."""

    def __init__(self, path: str, features, filesystem=None):
        self.filesystem = filesystem or CountingFileSystem()
        self.path = path
        stored = MapLayout.of_file(path, progress=False)
        # features and labels only, like the flat contender
        self.layout = MapLayout(gp.Schema(stored.schema.features, stored.schema.labels), stored.keys)
        self.schema = self.layout.schema.select(features)
        with self.filesystem.open_input_file(path) as f:
            self.metadata = pq.ParquetFile(f).metadata
        self.columns = [c for c in pq.ParquetFile(path).schema_arrow.names if c.endswith("_features")]
        self.columns += list(self.schema.labels)

    def read_all(self) -> int:
        rows = 0
        with self.filesystem.open_input_file(self.path) as f:
            pf = pq.ParquetFile(f, metadata=self.metadata)
            for rg in range(self.metadata.num_row_groups):
                table = pf.read_row_group(rg, columns=self.columns)
                flat = map_to_flat(table, self.layout, self.schema.names)
                rows += gp.Batch.from_arrow(flat, self.schema).num_rows
        return rows


def read_all(dataset: gp.Dataset) -> int:
    return sum(dataset.read(unit).num_rows for unit in dataset.units())


def run(
    rows: int = 32_760,
    repeats: int = 5,
    spec: SynthSpec | None = None,
    data_dir: str = DATA_DIR,
    progress: bool = True,
    save_results: bool = True,
) -> dict:
    spec = spec or SynthSpec(rows=rows, row_group_rows=8_190)
    flat_path, map_path = prepare(spec, data_dir, progress)
    names = list(gp.Dataset(flat_path).schema.names)
    order = np.random.default_rng(0).permutation(len(names))
    results = []
    for fraction in FRACTIONS:
        projection = [names[i] for i in sorted(order[: max(1, round(fraction * len(names)))])]
        counting = CountingFileSystem()
        flat = gp.Dataset(flat_path, features=projection, filesystem=counting)
        counting.reset()
        read_all(flat)  # one counted pass: what a projection reads
        flat_bytes, flat_requests = counting.bytes_read, counting.read_requests
        maps = MapReader(map_path, projection)
        maps.filesystem.reset()
        maps.read_all()
        map_bytes, map_requests = maps.filesystem.bytes_read, maps.filesystem.read_requests
        fast = gp.Dataset(flat_path, features=projection)  # timed on the native filesystem
        maps_fast = MapReader(map_path, projection, filesystem=fast.filesystem)
        for contender, fn, nbytes, requests in (
            ("flat", lambda: read_all(fast), flat_bytes, flat_requests),
            ("map", maps_fast.read_all, map_bytes, map_requests),
        ):
            t = measure(fn, repeats)
            results.append(
                {
                    "contender": f"{contender}-{round(fraction * 100)}%",
                    "layout": contender,
                    "projection": fraction,
                    "features": len(projection),
                    "rows": spec.rows,
                    "rows_per_s": spec.rows / t["median_s"],
                    "first_pass_s": t["first_s"],
                    "median_s": t["median_s"],
                    "bytes_read": nbytes,
                    "read_requests": requests,
                }
            )
    by = {r["contender"]: r for r in results}
    targets = [
        {
            "name": "flat 10% projection vs flat all features (rows/s)",
            "value": by["flat-10%"]["rows_per_s"] / by["flat-100%"]["rows_per_s"],
            "goal": 5.0,
        },
        {
            "name": "flat 25% projection vs map layout 25% (rows/s)",
            "value": by["flat-25%"]["rows_per_s"] / by["map-25%"]["rows_per_s"],
            "goal": 3.0,
        },
    ]
    for t in targets:
        t["met"] = t["value"] >= t["goal"]
    result = {
        "config": {
            "rows": spec.rows,
            "features": len(names),
            "dense": spec.num_dense,
            "sparse": spec.num_sparse,
            "scored": spec.num_scored,
            "row_group_rows": spec.chunk_rows,
            "repeats": repeats,
            "flat_file_bytes": os.path.getsize(flat_path),
            "map_file_bytes": os.path.getsize(map_path),
        },
        "results": results,
        "targets": targets,
    }
    if save_results:
        result["path"] = save("reader", result)
    return result


def report(result: dict) -> str:
    columns = [
        ("contender", "contender"),
        ("features", "features"),
        ("rows_per_s", "rows/s"),
        ("first_pass_s", "first pass s"),
        ("bytes_read", "bytes read"),
        ("read_requests", "requests"),
    ]
    cfg = result["config"]
    head = (
        f"reader: {cfg['rows']:,} rows x {cfg['features']} features "
        f"({cfg['dense']} dense, {cfg['sparse']} sparse, {cfg['scored']} scored), "
        f"median of {cfg['repeats']}"
    )
    return "\n\n".join([head, markdown_table(result["results"], columns), targets_table(result["targets"])])


def main(argv=None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m bench reader", description=__doc__)
    parser.add_argument("--rows", type=int, default=32_760)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    result = run(rows=args.rows, repeats=args.repeats)
    print(report(result))
    print(f"\nsaved {result['path']}")


if __name__ == "__main__":
    main()
