"""The `gpupre` command: import, synth, flatten, inspect, audit."""

from __future__ import annotations

import argparse
import sys

from . import storage
from .errors import ConfigError, GpupreError
from .reader import Dataset

IMPORTERS = {
    "criteo": storage.import_criteo,
    "taobao": storage.import_taobao,
    "movielens": storage.import_movielens,
}


def _import(args) -> None:
    schema = IMPORTERS[args.format](args.src, args.dst, row_group_rows=args.row_group_rows)
    print(f"wrote {args.dst}: {len(schema)} features, labels {list(schema.labels)}")


def _synth(args) -> None:
    spec = storage.SynthSpec(
        rows=args.rows,
        num_dense=args.dense,
        num_sparse=args.sparse,
        num_scored=args.scored,
        num_planted=min(args.planted, args.dense + args.sparse + args.scored),
        items_per_request=args.items_per_request,
        row_group_rows=args.row_group_rows,
        num_files=args.files,
        seed=args.seed,
    )
    schema = storage.synthesize(args.dst, spec, layout=args.layout)
    print(f"wrote {args.dst}: {spec.rows:,} rows, {len(schema)} features ({args.layout} layout)")


def _flatten(args) -> None:
    features = args.features.split(",") if args.features else None
    schema = storage.flatten(args.src, args.dst, features=features, row_group_rows=args.row_group_rows)
    print(f"wrote {args.dst}: {len(schema)} features")


def inspect_text(path, features=None) -> str:
    """A dataset's files, rows, row groups, and schema with bytes on disk per feature."""
    ds = Dataset(path, features=features)
    sizes = ds.bytes_per_column()
    rows = ds.num_rows
    lines = [
        f"{path}: {len(ds.paths)} file(s), {rows:,} rows, {len(ds.units())} row groups",
        f"labels: {', '.join(ds.schema.labels) or '-'}",
        "",
        f"{'feature':<32} {'kind':<7} {'group':<8} {'compressed':>12} {'raw':>12} {'bytes/row':>10}",
    ]
    for f in ds.schema:
        packed = sum(sizes.get(c, (0, 0))[0] for c in f.columns)
        raw = sum(sizes.get(c, (0, 0))[1] for c in f.columns)
        lines.append(
            f"{f.name:<32} {f.kind:<7} {f.group or '-':<8} {packed:>12,} {raw:>12,} {packed / max(rows, 1):>10.2f}"
        )
    total = sum(v[0] for v in sizes.values())
    lines.append(f"{'all columns':<49} {total:>12,}")
    return "\n".join(lines)


def _inspect(args) -> None:
    print(inspect_text(args.path, args.features.split(",") if args.features else None))


def _load_model(spec: str):
    """`module:function` -> function(): the trained model, importable from the working directory."""
    import importlib

    module, _, name = spec.partition(":")
    if not module or not name:
        raise ConfigError(f"--model {spec!r} must be 'module:function' (a function that returns the trained model)")
    if "" not in sys.path:
        sys.path.insert(0, "")
    try:
        load = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"--model {spec!r}: {e}; the module must be importable from the working directory") from e
    if not callable(load):
        raise ConfigError(f"--model {spec!r} names a {type(load).__name__}, not a function; name the function that "
                          "returns the trained model")  # fmt: skip
    return load()


def _audit(args) -> None:
    from .audit import audit, prune
    from .audit.report import check_plot_path, check_prune_args
    from ._jsonfile import ensure_output_path
    from .loader import DataLoader
    from .transforms import Pipeline

    if args.pruned_pipeline and args.threshold is None and args.budget_bytes is None:
        raise ConfigError("--pruned-pipeline needs --threshold or --budget-bytes (what to prune by)")
    if args.pruned_pipeline and not args.pipeline:
        raise ConfigError("--pruned-pipeline needs --pipeline (the pipeline to prune)")
    if args.threshold is not None or args.budget_bytes is not None:  # before the audit runs, not after
        check_prune_args(args.threshold, args.budget_bytes)
    for option in ("json", "pruned_pipeline"):  # before the audit runs, not after
        if getattr(args, option):
            ensure_output_path(getattr(args, option), "--" + option.replace("_", "-"))
    if args.plot:
        check_plot_path(args.plot, "--plot")
    pipeline = Pipeline.load(args.pipeline) if args.pipeline else None
    dataset = Dataset(args.path, features=args.features.split(",") if args.features else None, label=args.label)
    if len(dataset.schema.labels) != 1:
        raise ConfigError(
            f"{args.path} has labels {list(dataset.schema.labels)}; the audit scores one: pass --label NAME, "
            "the label the model predicts"
        )
    loader = DataLoader(dataset, args.batch_size, pipeline, device=args.device, num_workers=0)
    model = _load_model(args.model)
    if hasattr(model, "to"):
        model = model.to(loader.device)
    report = audit(model, loader, dataset, pipeline, repeats=args.repeats, metric=args.metric,
                   max_batches=args.max_batches)  # fmt: skip
    print(report.to_markdown())
    if args.json:
        report.save(args.json)
    if args.plot:
        report.plot(args.plot)
    if args.threshold is not None or args.budget_bytes is not None:
        pruned = prune(report, pipeline, threshold=args.threshold, budget_bytes=args.budget_bytes)
        print(f"\nkeep {len(pruned.features)} of {len(report.features)} features; read {len(pruned.read)} stored "
              f"features ({pruned.stored_bytes:,} bytes): {','.join(pruned.read)}")  # fmt: skip
        if args.pruned_pipeline and pruned.pipeline is not None:
            pruned.pipeline.save(args.pruned_pipeline)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gpupre", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("import", help="import a public dataset's text into a flattened dataset")
    p.add_argument("format", choices=sorted(IMPORTERS))
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--row-group-rows", type=int, default=storage.write.DEFAULT_ROW_GROUP_ROWS)
    p.set_defaults(run=_import)

    p = sub.add_parser("synth", help="generate synthetic recommendation data")
    p.add_argument("dst")
    defaults = storage.SynthSpec()
    p.add_argument("--rows", type=int, default=defaults.rows)
    p.add_argument("--dense", type=int, default=defaults.num_dense)
    p.add_argument("--sparse", type=int, default=defaults.num_sparse)
    p.add_argument("--scored", type=int, default=defaults.num_scored)
    p.add_argument("--planted", type=int, default=defaults.num_planted, help="features the label depends on")
    p.add_argument("--items-per-request", type=int, default=defaults.items_per_request)
    p.add_argument("--row-group-rows", type=int, default=defaults.row_group_rows)
    p.add_argument("--files", type=int, default=1)
    p.add_argument("--layout", choices=("flat", "map"), default="flat")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=_synth)

    p = sub.add_parser("flatten", help="convert a map-layout table to the flattened layout")
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--features", help="comma-separated names to keep (default: all)")
    p.add_argument("--row-group-rows", type=int, default=None)
    p.set_defaults(run=_flatten)

    p = sub.add_parser("inspect", help="schema, rows, row groups and bytes per feature")
    p.add_argument("path")
    p.add_argument("--features", help="comma-separated projection (default: all)")
    p.set_defaults(run=_inspect)

    p = sub.add_parser("audit", help="rank a trained model's features by importance next to their cost; prune")
    p.add_argument("path", help="held-out data (a dataset the model was not trained on)")
    p.add_argument("--model", required=True, help="module:function returning the trained model (model(batch) -> logits)")
    p.add_argument("--pipeline", help="the fitted pipeline's JSON (Pipeline.save)")
    p.add_argument("--features", help="comma-separated projection the model was trained on (default: all)")
    p.add_argument("--label", help="the label column the model predicts (default: the dataset's one label)")
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--max-batches", type=int, default=None)
    p.add_argument("--repeats", type=int, default=5, help="shuffles per feature")
    p.add_argument("--metric", choices=("logloss", "auc"), default="logloss")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", help="write the report here")
    p.add_argument("--plot", help="write the report's plot here, in the format its extension names (.png, .pdf, .svg)")
    prune_by = p.add_mutually_exclusive_group()
    prune_by.add_argument("--threshold", type=float, help="prune: keep features whose interval is above this")
    prune_by.add_argument("--budget-bytes", type=int, help="prune: keep the most important within these stored bytes")
    p.add_argument("--pruned-pipeline", help="prune: write the pipeline of the kept features here")
    p.set_defaults(run=_audit)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except GpupreError as e:
        print(f"gpupre {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
