"""The traffic simulator: it drives the loggers and the joiner and leaves a dataset gp.Dataset reads."""

import os

import numpy as np
import pytest

import gpupre as gp
from gpupre.serving import simulate


def test_simulated_traffic_becomes_a_readable_dedup_dataset(tmp_path):
    report = simulate(tmp_path, requests=300, duration_s=1800, progress=False)
    joiner = report["joiner"]
    ds = gp.Dataset(tmp_path, passthrough=("request_id", "item_id"))
    assert ds.dedup and ds.num_rows == joiner["joined"] == report["writer"]["rows"]
    assert joiner["duplicates"] > 0 and joiner["late"] > 0 and joiner["unknown"] == 0
    assert joiner["events"] == joiner["joined"] + joiner["duplicates"] + joiner["late"]
    logged = report["logger"]["items_logged"]
    assert report["items_seen"] <= logged < 0.2 * report["ranked_items"]  # lazy: pages, not lists
    b = ds.read(ds.units()[0])
    assert b.labels.shape == (b.num_rows,) and set(np.unique(b.labels)) <= {0.0, 1.0}
    assert 0 < b.labels.mean() < 0.8


def test_eager_tabular_simulation_writes_the_same_impressions(tmp_path):
    lazy = simulate(tmp_path / "lazy", requests=120, progress=False, seed=3)
    eager = simulate(tmp_path / "eager", requests=120, progress=False, seed=3, logger="eager", layout="tabular")
    assert eager["logger"]["items_logged"] == 120 * 100 and lazy["joiner"] == eager["joiner"]
    a, b = (gp.Dataset(p, passthrough=("request_id", "item_id"), expand=True) for p in (tmp_path / "lazy", tmp_path / "eager"))
    ids = [sorted(zip(*(np.concatenate([d.read(u).extras[c] for u in d.units()]).tolist() for c in ("request_id", "item_id"))))
           for d in (a, b)]  # fmt: skip
    assert ids[0] == ids[1]


def test_buffers_stay_bounded_under_a_long_load(tmp_path):
    """Four times the requests at the same rate: the logger's and joiner's buffers do not grow."""
    short = simulate(tmp_path / "short", requests=400, duration_s=1600, ttl_s=600, window_s=60, progress=False)
    long = simulate(tmp_path / "long", requests=1600, duration_s=6400, ttl_s=600, window_s=60, progress=False)
    for side in ("logger", "joiner"):
        assert long["peak_buffered_requests"][side] <= 1.25 * short["peak_buffered_requests"][side] + 5
    assert long["peak_buffered_requests"]["logger"] <= 160  # TTL of 600 s at one request per 4 s
    assert long["logger"]["expired"] > 0


def test_bad_arguments_are_config_errors(tmp_path):
    with pytest.raises(gp.ConfigError, match="logger='fast'"):
        simulate(tmp_path, logger="fast")
    with pytest.raises(gp.ConfigError, match="items=200"):
        simulate(tmp_path, items=200, catalog=100)


@pytest.mark.parametrize("kw,words", [
    ({"requests": True}, "integers requests=True"),
    ({"duration_s": -10}, "duration_s=-10 must be"),
    ({"duplicate_rate": -1}, r"duplicate_rate=-1 must be .* in \[0, 1\]"),
    ({"late_rate": 2}, r"late_rate=2 must be .* in \[0, 1\]"),
    ({"late_rate": True}, r"late_rate=True must be .* in \[0, 1\]"),
    ({"scroll": lambda rng, head, page, size: np.full(size, 7.5)}, "scroll returned float64 of shape"),
    ({"scroll": lambda rng, head, page, size: 5}, r"scroll returned int64 of shape \(\)"),
    ({"duration_s": 1e12}, r"duration_s=1000000000000.0 must be .* before the year 10000"),
    ({"seed": -1}, "seed=-1 must be an integer >= 0"),
    ({"scroll": None}, "scroll=None must be a function"),
], ids=["bool-requests", "negative-duration", "duplicate-rate", "late-rate", "bool-rate", "float-scroll", "scalar-scroll",
        "duration-past-9999", "negative-seed", "no-scroll"])  # fmt: skip
def test_bad_counts_rates_and_scroll_functions_are_config_errors(tmp_path, kw, words):
    with pytest.raises(gp.ConfigError, match=words):
        simulate(tmp_path, **{"requests": 20, "progress": False, **kw})


def test_a_path_that_is_no_path_is_a_config_error():
    with pytest.raises(gp.ConfigError, match="path=5 must be the path of a new or empty directory"):
        simulate(5, requests=20, progress=False)


def test_numpy_integer_counts_are_accepted(tmp_path):
    report = simulate(tmp_path, requests=np.int64(20), items=np.int64(10), progress=False)
    assert report["requests"] == 20 and report["ranked_items"] == 200


@pytest.mark.parametrize("kw", [{"ttl_s": -1}, {"window_s": -1}])
def test_a_failed_run_closes_what_it_opened(tmp_path, kw):
    import threading

    def loggers():  # the threads of other tests' objects may end meanwhile: only loggers' count
        return [t for t in threading.enumerate() if t.name == "gpupre-lazy-logger"]

    before = loggers()
    for run in range(3):
        with pytest.raises(gp.ConfigError, match="ttl_s|window_s"):
            simulate(tmp_path / str(run), **{"requests": 20, "progress": False, **kw})
    assert loggers() == before  # no lazy logger's thread left behind
    kv = str(tmp_path)
    assert not any(os.path.realpath(f"/proc/self/fd/{fd}").startswith(kv) for fd in os.listdir("/proc/self/fd"))


def test_a_path_that_holds_anything_is_refused(tmp_path):
    """A second run on the same path would write the first run's requests again."""
    simulate(tmp_path / "run", requests=20, duration_s=600, progress=False)
    files = sorted(p for p in (tmp_path / "run").rglob("*"))
    with pytest.raises(gp.ConfigError, match="is a directory that is not empty .* pass a new or empty directory"):
        simulate(tmp_path / "run", requests=20, duration_s=600, progress=False)
    assert sorted(p for p in (tmp_path / "run").rglob("*")) == files  # nothing written
    (tmp_path / "file").write_text("x")
    with pytest.raises(gp.ConfigError, match="is a file; .* pass a new or empty directory"):
        simulate(tmp_path / "file", requests=20, progress=False)
    (tmp_path / "empty").mkdir()
    assert simulate(tmp_path / "empty", requests=20, progress=False)["requests"] == 20
