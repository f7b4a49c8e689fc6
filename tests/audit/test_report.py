"""audit() reports, their costs and plot; prune() drops features so that the loader reads less."""

import numpy as np
import pytest

import gpupre as gp
from gpupre.audit import AuditReport, audit, prune
from gpupre.storage import CountingFileSystem


@pytest.fixture(scope="module")
def report(trained):
    return audit(trained.model, trained.held_out_batches(), dataset=trained.train, pipeline=trained.pipeline,
                 dense_weight=trained.model.bottom[0].weight, embedding=trained.embedding, progress=False)  # fmt: skip


def test_the_report_ranks_every_model_feature_with_its_sources_and_costs(report, trained):
    assert sorted(report.names) == sorted(trained.dense + trained.sparse + ["dense_000_bucket"])
    importance = [f.importance for f in report.features]
    assert importance == sorted(importance, reverse=True)
    assert set(report.names[:4]) == trained.planted
    bucket = report["dense_000_bucket"]
    assert bucket.sources == ("dense_000",) and bucket.stored_bytes == report["dense_000"].stored_bytes > 0
    sizes = trained.train.bytes_per_column()
    assert report["sparse_003"].stored_bytes == sizes["sparse_003"][0]
    assert report["sparse_003"].bytes_per_row == pytest.approx(sizes["sparse_003"][0] / trained.train.num_rows)
    assert all(f.low <= f.importance <= f.high and f.weight > 0 for f in report.features)
    assert report.rows == trained.held_out.num_rows and report.baseline > 0
    table = report.to_markdown()
    assert table.count("\n| ") == len(report.features) + 1 and "sparse_003" in table
    with pytest.raises(gp.SchemaError, match="audited feature 'sparse_03' does not exist.*did you mean 'sparse_003'"):
        report["sparse_03"]


def test_the_report_round_trips_and_plots(report, tmp_path):
    report.save(tmp_path / "r.json")
    assert AuditReport.load(tmp_path / "r.json") == report
    report.plot(tmp_path / "r.png")
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_prune_by_threshold_keeps_what_helps_and_the_loader_reads_less(report, trained):
    pruned = prune(report, trained.pipeline, threshold=0.002)
    assert set(pruned.features) <= trained.planted and len(pruned.features) >= 3  # one planted feature is weak
    assert all(report[f].low > 0.002 for f in pruned.features) and all(report[f].low <= 0.002 for f in pruned.dropped)
    assert sorted(pruned.features + pruned.dropped) == sorted(report.names)
    assert pruned.read == [n for n in trained.train.schema.names if n in pruned.features]
    outputs = pruned.pipeline.output_schema(trained.train.schema.select(pruned.read)).names
    assert sorted(outputs) == sorted(pruned.features)
    fs_all, fs_pruned = CountingFileSystem(), CountingFileSystem()
    full = gp.Dataset(trained.held_out.paths, filesystem=fs_all)
    small = pruned.dataset(gp.Dataset(trained.held_out.paths, filesystem=fs_pruned))
    rows = [sum(b.num_rows for b in gp.DataLoader(ds, 4096, p, device="cpu", num_workers=0))
            for ds, p in ((full, trained.pipeline), (small, pruned.pipeline))]  # fmt: skip
    assert rows == [trained.held_out.num_rows] * 2
    assert fs_pruned.bytes_read < 0.5 * fs_all.bytes_read
    assert pruned.stored_bytes == sum(report[n].stored_bytes for n in pruned.features)


def test_prune_by_budget_takes_the_most_important_that_fit(report, trained):
    first, second = report.features[:2]
    pruned = prune(report, trained.pipeline, budget_bytes=first.stored_bytes + second.stored_bytes)
    assert pruned.features[:2] == [first.name, second.name]
    assert pruned.stored_bytes <= first.stored_bytes + second.stored_bytes
    assert len(prune(report, trained.pipeline, budget_bytes=0).features) == 0


def test_a_kept_feature_keeps_the_ops_it_needs_and_only_those(report, trained):
    pruned = prune(report, trained.pipeline, threshold=1e9, keep=["dense_000_bucket", "sparse_002"])
    assert sorted(pruned.features) == ["dense_000_bucket", "sparse_002"]
    assert pruned.read == ["dense_000", "sparse_002"]
    names = [type(op).__name__ for op in pruned.pipeline.ops]
    assert names == ["FillMissing", "Log1p", "Normalize", "Bucketize", "Hash"]
    assert all(op.features in (("dense_000",), ("sparse_002",)) for op in pruned.pipeline.ops)


def test_bad_arguments_are_config_errors(report, trained):
    with pytest.raises(gp.ConfigError, match="either threshold"):
        prune(report, trained.pipeline)
    with pytest.raises(gp.ConfigError, match="either threshold"):
        prune(report, trained.pipeline, threshold=0, budget_bytes=1)
    with pytest.raises(gp.ConfigError, match="nope"):
        prune(report, trained.pipeline, threshold=0, keep=["nope"])
    with pytest.raises(gp.ConfigError, match="at least one held-out batch"):
        audit(trained.model, [])
    unlabelled = trained.held_out_batches()[0]
    unlabelled.labels = None
    with pytest.raises(gp.ConfigError, match="labelled"):
        audit(trained.model, [unlabelled])
    with pytest.raises(gp.ConfigError, match="gp.Batch"):
        audit(trained.model, [np.zeros(3)])


def test_prune_counts_a_shared_source_once_and_at_its_own_size():
    from gpupre.audit import FeatureScore
    from gpupre.schema import DENSE, SPARSE

    schema = gp.Schema((gp.Feature("d0", DENSE), gp.Feature("s0", SPARSE), gp.Feature("s1", SPARSE)), ("label",))
    pipe = gp.Pipeline([gp.Cross("s0", "s1", 100, out="c")], input_schema=schema)
    scores = [FeatureScore("c", 3.0, 2.0, 4.0, None, ("s0", "s1"), 1010, 0.0),
              FeatureScore("d0", 2.0, 1.0, 3.0, None, ("d0",), 100, 0.0),
              FeatureScore("s1", 1.0, 0.5, 1.5, None, ("s1",), 10, 0.0),
              FeatureScore("s0", 0.5, 0.1, 0.9, None, ("s0",), 1000, 0.0)]  # fmt: skip
    report = AuditReport(scores, "logloss", 0.5, 3, 10, 1110, {"s0": 1000, "s1": 10, "d0": 100})
    pruned = prune(report, pipe, budget_bytes=150)  # the cross does not fit; d0 and s1 do
    assert pruned.features == ["d0", "s1"] and pruned.stored_bytes == 110 and not pruned.pipeline.ops
    pruned = prune(report, pipe, budget_bytes=1110)  # the cross's sources count once
    assert pruned.features == ["c", "d0", "s1", "s0"] and pruned.stored_bytes == 1110
    pruned = prune(report, pipe, threshold=10.0, keep="s1")
    assert (pruned.features, pruned.read, pruned.stored_bytes) == (["s1"], ["s1"], 10)


@pytest.mark.parametrize(
    ("call", "words"),
    [(lambda r, t: audit(t.model, t.held_out_batches(), max_batches=-1, progress=False), "max_batches=-1"),
     (lambda r, t: audit(t.model, t.held_out_batches(), dataset="train", progress=False),
      "dataset must be a gp.Dataset .*got str 'train'"),
     (lambda r, t: audit(t.model, t.held_out_batches(), pipeline="pipeline.json", progress=False),
      "pipeline must be a gp.Pipeline or None, got str"),
     (lambda r, t: prune(r, threshold="0"), "threshold='0' must be a number"),
     (lambda r, t: prune(r, budget_bytes=-5), "budget_bytes=-5"),
     (lambda r, t: prune({"a": 1}, threshold=0), "got dict"),
     (lambda r, t: r.save("/nonexistent/a.json"), "AuditReport path /nonexistent/a.json: its directory /nonexistent does not"),
     (lambda r, t: r.plot("/nonexistent/a.png"), "plot path /nonexistent/a.png: its directory /nonexistent does not"),
     (lambda r, t: audit(5, t.held_out_batches(), progress=False), "model must be callable.*got int 5"),
     (lambda r, t: audit(t.model, 5, progress=False), "batches must be a gp.DataLoader .* got int"),
     (lambda r, t: audit(t.model, t.held_out_batches(), seed="x", progress=False), "seed='x' must be an integer"),
     (lambda r, t: prune(r, "pipeline.json", threshold=0), "pipeline must be a gp.Pipeline or None, got str"),
     (lambda r, t: prune(r, threshold=0, keep=5), r"keep=5 must be a feature name or a list of names")],
)  # fmt: skip
def test_arguments_of_the_wrong_type_or_place_are_config_errors(report, trained, call, words):
    with pytest.raises(gp.ConfigError, match=words):
        call(report, trained)


def test_a_model_that_returns_an_array_is_audited_like_one_that_returns_a_tensor(trained):
    batches = trained.held_out_batches()[:1]
    model = lambda b: b.dense[1]  # noqa: E731
    tensor = audit(model, batches, repeats=2, progress=False)
    array = audit(lambda b: model(b).numpy(), batches, repeats=2, progress=False)
    assert array == tensor


def test_arguments_are_checked_before_the_model_runs_and_numpy_integers_are_integers(report, trained):
    calls = []

    def model(b):
        calls.append(1)
        return trained.model(b)

    batches = trained.held_out_batches()
    for options, words in [({"dense_weight": "abc"}, "dense_weight must be a tensor"), ({"embedding": 5}, "embedding must be"),
                           ({"max_batches": 1.5}, "max_batches=1.5")]:  # fmt: skip
        with pytest.raises(gp.ConfigError, match=words):
            audit(model, batches, progress=False, **options)
    assert not calls
    one = audit(trained.model, batches, max_batches=np.int64(1), repeats=np.int64(2), seed=np.int64(0), progress=False)
    assert one.rows == batches[0].num_rows and one.repeats == 2
    budget = report.features[0].stored_bytes
    assert prune(report, budget_bytes=np.int64(budget)) == prune(report, budget_bytes=budget)


def _two_feature_report(dataset_bytes=130):
    from gpupre.audit import FeatureScore

    scores = [FeatureScore("a", 3.0, 2.0, 4.0, None, ("a",), 80, 0.0),
              FeatureScore("k", 1.0, 0.5, 1.5, None, ("k",), 50, 0.0)]  # fmt: skip
    sizes = {"a": 80, "k": 50} if dataset_bytes else {"a": 0, "k": 0}
    return AuditReport(scores, "logloss", 0.5, 3, 10, dataset_bytes, sizes)


def test_prune_by_budget_charges_the_kept_features_first():
    report = _two_feature_report()
    pruned = prune(report, budget_bytes=100, keep=["k"])
    assert (pruned.features, pruned.dropped, pruned.stored_bytes) == (["k"], ["a"], 50)
    assert prune(report, budget_bytes=130, keep="k").features == ["a", "k"]  # the report's order
    with pytest.raises(gp.ConfigError, match=r"keep=\['a', 'k'\] alone reads 130 stored bytes, over budget_bytes=100"):
        prune(report, budget_bytes=100, keep=["a", "k"])


def test_prune_by_budget_needs_a_report_with_storage_costs():
    report = _two_feature_report(dataset_bytes=0)  # as audit() without dataset= makes it
    with pytest.raises(gp.ConfigError, match=r"no storage costs .* audit with dataset="):
        prune(report, budget_bytes=0)
    assert prune(report, threshold=1.0).features == ["a"]


def test_the_plot_is_written_in_the_format_its_extension_names(report, tmp_path):
    report.plot(tmp_path / "r.pdf")
    assert (tmp_path / "r.pdf").read_bytes()[:5] == b"%PDF-"
    report.plot(tmp_path / "r.SVG")
    assert b"<svg" in (tmp_path / "r.SVG").read_bytes()[:500]
    for name, words in [("r.xyz", "ends in .xyz"), ("plot", "has no extension")]:
        with pytest.raises(gp.ConfigError, match=rf"{words}; .* one of .png, .pdf, .svg"):
            report.plot(tmp_path / name)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.SVG", "r.pdf"]
