"""Synthetic data: deterministic, request-shaped, Zipf ids, long-tailed lists, planted features."""

import json

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

import gpupre as gp
from gpupre.storage import SynthSpec, synthesize
from gpupre.storage.synth import SYNTH_KEY


def test_same_seed_same_data_other_seed_other_data(synth_spec, synth_file, tmp_path):
    synthesize(tmp_path / "again.parquet", synth_spec, progress=False)
    assert pq.read_table(tmp_path / "again.parquet").equals(pq.read_table(synth_file), check_metadata=True)
    other = SynthSpec(**{**synth_spec.__dict__, "seed": 1})
    synthesize(tmp_path / "other.parquet", other, progress=False)
    a, b = pq.read_table(tmp_path / "other.parquet"), pq.read_table(synth_file)
    assert not a.column("sparse_004").equals(b.column("sparse_004"))
    assert not a.column("dense_001").equals(b.column("dense_001"))


def test_schema_rows_and_row_groups(synth_spec, synth_file):
    ds = gp.Dataset(synth_file)
    kinds = [f.kind for f in ds.schema]
    assert kinds == ["dense"] * 6 + ["sparse"] * 8 + ["scored"] * 2
    assert {f.group for f in ds.schema} == {"user", "item", "context"}
    assert ds.schema.labels == ("label",) and ds.full_schema.extras == ("request_id", "row_id")
    assert ds.num_rows == 600 and [u.num_rows for u in ds.units()] == [200, 200, 200]
    rows = pq.read_table(synth_file, columns=["row_id", "request_id"])
    np.testing.assert_array_equal(rows.column("row_id"), np.arange(600))
    np.testing.assert_array_equal(rows.column("request_id"), np.arange(600) // synth_spec.items_per_request)


def test_row_groups_hold_whole_requests(tmp_path):
    spec = SynthSpec(rows=95, num_dense=1, num_sparse=1, num_scored=0, num_planted=1, row_group_rows=25)
    synthesize(tmp_path / "s.parquet", spec, progress=False)
    md = pq.ParquetFile(tmp_path / "s.parquet").metadata
    assert [md.row_group(i).num_rows for i in range(md.num_row_groups)] == [20, 20, 20, 20, 15]


def test_several_files_split_the_rows(synth_dir):
    ds = gp.Dataset(synth_dir, passthrough="row_id")
    assert [p.rsplit("/", 1)[1] for p in ds.paths] == [f"part-0000{i}.parquet" for i in range(3)]
    assert ds.num_rows == 600 and len(ds.units()) == 12
    row_ids = np.concatenate([ds.read(u).extras["row_id"] for u in ds.units()])
    np.testing.assert_array_equal(row_ids, np.arange(600))


def test_user_and_context_features_are_shared_within_a_request(synth_file):
    ds = gp.Dataset(synth_file)
    table = pq.read_table(synth_file)
    request = table.column("request_id").to_numpy()
    starts = np.flatnonzero(np.diff(request, prepend=-1))
    for f in ds.schema:
        values = table.column(f.name).to_pylist()
        per_request = [values[s : s + 10] for s in starts]
        constant = [all(v == chunk[0] or v != v for v in chunk) for chunk in per_request]  # v != v: NaN
        if f.group == "item":
            assert not all(constant), f.name
        else:
            assert all(constant), f.name


def test_zipf_ids_and_long_tailed_lists(tmp_path):
    spec = SynthSpec(rows=4000, num_dense=0, num_sparse=1, num_scored=1, num_planted=1, row_group_rows=4000)
    synthesize(tmp_path / "s.parquet", spec, progress=False)
    table = pq.read_table(tmp_path / "s.parquet")
    for name in ("sparse_000", "scored_000"):
        column = table.column(name)
        lengths = pc.list_value_length(column).to_numpy()
        assert (lengths == 0).any() and lengths.max() > 100, name
        _, counts = np.unique(pc.list_flatten(column).to_numpy(), return_counts=True)
        assert counts.max() > 20 * np.median(counts), name
    scores = pc.list_flatten(table.column("scored_000.score")).to_numpy()
    assert len(scores) == pc.list_flatten(table.column("scored_000")).to_numpy().size
    assert 0 <= scores.min() and scores.max() < 1


def test_missing_dense_values_and_labels(synth_file):
    table = pq.read_table(synth_file)
    assert table.column("dense_001").null_count > 0
    assert all(table.column(f"dense_00{i}").null_count < 300 for i in range(6))
    labels = table.column("label").to_numpy()
    assert set(np.unique(labels)) == {0.0, 1.0}


def test_planted_features_are_recorded(synth_spec, synth_file):
    meta = json.loads(pq.read_schema(synth_file).metadata[SYNTH_KEY])
    planted = meta["planted"]
    assert len(planted) == synth_spec.num_planted == len(set(planted))
    assert set(planted) <= set(gp.Dataset(synth_file).schema.names)
    assert meta["spec"]["rows"] == 600 and meta["spec"]["seed"] == 0


def test_planted_features_move_the_label(tmp_path):
    """A single planted dense feature: the label rate rises (or falls) with its value."""
    spec = SynthSpec(rows=6000, num_dense=1, num_sparse=0, num_scored=0, num_planted=1, items_per_request=1)
    synthesize(tmp_path / "s.parquet", spec, progress=False)
    table = pq.read_table(tmp_path / "s.parquet")
    x = table.column("dense_000").to_numpy(zero_copy_only=False)
    y = table.column("label").to_numpy()
    present = ~np.isnan(x)
    high = x[present] > np.median(x[present])
    assert abs(y[present][high].mean() - y[present][~high].mean()) > 0.1


@pytest.mark.parametrize(
    "kwargs",
    [
        {"rows": 0},
        {"num_dense": -1},
        {"num_planted": 600},
        {"missing_rate": 1.0},
        {"zipf_a": 1.0},
        {"items_per_request": 0},
        {"rows": 100.5},
        {"num_dense": 1.5},
        {"mean_list_length": 0},
        {"seed": -1},
    ],
)
def test_bad_spec_is_a_config_error(kwargs):
    with pytest.raises(gp.ConfigError):
        SynthSpec(**kwargs)


def test_more_files_than_requests_is_a_config_error_not_empty_files():
    with pytest.raises(gp.ConfigError, match="num_files=5 is more than its 3 requests of 10 rows"):
        SynthSpec(rows=30, items_per_request=10, num_files=5)
    assert SynthSpec(rows=30, items_per_request=10, num_files=3).num_files == 3


def test_bad_layout_is_a_config_error(tmp_path):
    with pytest.raises(gp.ConfigError, match="layout"):
        synthesize(tmp_path / "s.parquet", SynthSpec(rows=10), layout="rows", progress=False)


def test_write_criteo_text_format(tmp_path):
    gp.storage.write_criteo_text(tmp_path / "c.tsv", rows=50, seed=3, header=False)
    lines = (tmp_path / "c.tsv").read_text().splitlines()
    assert len(lines) == 50
    fields = [line.split("\t") for line in lines]
    assert {len(f) for f in fields} == {40}
    assert {f[0] for f in fields} <= {"0", "1"}
    hex_ids = [v for f in fields for v in f[14:] if v]
    assert all(len(v) == 8 and int(v, 16) >= 0 for v in hex_ids)
    assert any(v == "" for f in fields for v in f[1:14])


def test_a_spec_must_be_a_synth_spec(tmp_path):
    with pytest.raises(gp.ConfigError, match="SynthSpec"):
        synthesize(tmp_path / "s.parquet", {"rows": 10}, progress=False)


@pytest.mark.parametrize("rows, files", [(25, 2), (40, 3), (100, 9)])
def test_files_split_whole_requests(tmp_path, rows, files):
    spec = SynthSpec(rows=rows, num_dense=2, num_sparse=2, num_scored=0, num_planted=1, items_per_request=10, num_files=files)
    synthesize(tmp_path / "d", spec, progress=False)
    tables = [pq.read_table(f) for f in sorted((tmp_path / "d").iterdir())]
    requests = [set(t.column("request_id").to_pylist()) for t in tables]
    assert sum(map(len, requests)) == len(set().union(*requests)) and sum(t.num_rows for t in tables) == rows


def test_an_interrupted_map_synthesis_leaves_no_file(tmp_path, monkeypatch):
    from gpupre.storage import synth

    calls = []

    def failing(*args):
        calls.append(1)
        if len(calls) > 1:
            raise KeyboardInterrupt
        return real(*args)

    real = synth._generate
    monkeypatch.setattr(synth, "_generate", failing)
    path = tmp_path / "m.parquet"
    with pytest.raises(KeyboardInterrupt):
        synthesize(path, SynthSpec(rows=100, row_group_rows=10, num_dense=2, num_sparse=2, num_scored=0, num_planted=1),
                   layout="map", progress=False)  # fmt: skip
    assert list(tmp_path.iterdir()) == []


def test_synthesizing_fewer_files_into_a_directory_of_an_earlier_run_is_refused(tmp_path):
    spec = SynthSpec(rows=40, num_dense=2, num_sparse=1, num_scored=0, num_planted=1, items_per_request=10, num_files=3)
    synthesize(tmp_path / "d", spec, progress=False)
    synthesize(tmp_path / "d", spec, progress=False)  # the same files again
    with pytest.raises(gp.ConfigError, match=r"holds 1 Parquet files besides the 2 it would write .*part-00002\.parquet"):
        synthesize(tmp_path / "d", SynthSpec(**{**spec.__dict__, "num_files": 2, "seed": 1}), progress=False)
    assert gp.Dataset(tmp_path / "d").num_rows == 40
