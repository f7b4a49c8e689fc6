"""The gpupre command: synth, import, flatten, inspect, and clean errors."""

import os
import subprocess
import sys

import numpy as np
import pytest

import gpupre as gp
from gpupre.cli import main


def test_synth_then_inspect(tmp_path, capsys):
    path = tmp_path / "s.parquet"
    assert main(["synth", str(path), "--rows", "300", "--dense", "2", "--sparse", "2", "--scored", "1", "--row-group-rows", "100"]) == 0
    assert gp.Dataset(path).num_rows == 300
    capsys.readouterr()
    assert main(["inspect", str(path)]) == 0
    text = capsys.readouterr().out
    assert "300 rows, 3 row groups" in text
    for name, kind in (("dense_000", "dense"), ("sparse_001", "sparse"), ("scored_000", "scored")):
        line = next(line for line in text.splitlines() if line.startswith(name))
        assert kind in line and int(line.split()[3].replace(",", "")) > 0  # compressed bytes


def test_inspect_with_a_projection_lists_only_those_features(tmp_path, capsys):
    path = tmp_path / "s.parquet"
    main(["synth", str(path), "--rows", "100", "--dense", "3", "--sparse", "1", "--scored", "0"])
    capsys.readouterr()
    main(["inspect", str(path), "--features", "dense_002,sparse_000"])
    rows = [line.split()[0] for line in capsys.readouterr().out.splitlines()[4:-1]]
    assert rows == ["dense_002", "sparse_000"]


def test_import_criteo_and_flatten(tmp_path, capsys):
    text = tmp_path / "c.tsv"
    gp.storage.write_criteo_text(text, rows=50, header=False)
    assert main(["import", "criteo", str(text), str(tmp_path / "c.parquet")]) == 0
    assert "39 features" in capsys.readouterr().out
    maps = tmp_path / "m.parquet"
    main(["synth", str(maps), "--rows", "60", "--dense", "2", "--sparse", "2", "--scored", "1", "--layout", "map"])
    assert main(["flatten", str(maps), str(tmp_path / "f.parquet"), "--features", "dense_001,scored_000"]) == 0
    ds = gp.Dataset(tmp_path / "f.parquet")
    assert ds.schema.names == ("dense_001", "scored_000")
    assert np.isfinite(ds.read(ds.units()[0]).dense).any()


def test_errors_exit_2_with_the_message(tmp_path, capsys):
    assert main(["inspect", str(tmp_path / "missing.parquet")]) == 2
    assert "missing.parquet does not exist" in capsys.readouterr().err
    bad = tmp_path / "bad.parquet"
    bad.write_text("not parquet")
    assert main(["flatten", str(bad), str(tmp_path / "out.parquet")]) == 2
    assert "bad.parquet" in capsys.readouterr().err


def test_import_errors_exit_2_with_one_line_naming_the_problem(tmp_path, capsys):
    assert main(["import", "criteo", str(tmp_path / "nope.txt"), str(tmp_path / "x.parquet")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "gpupre import: error: cannot read" in err and "nope.txt" in err
    text = tmp_path / "c.csv"
    gp.storage.write_criteo_text(text, rows=5, header=True)
    assert main(["import", "taobao", str(text), str(tmp_path / "x.parquet")]) == 2
    assert "use gp.storage.import_criteo (command line: gpupre import criteo)" in capsys.readouterr().err
    movielens = tmp_path / "m.csv"
    movielens.write_text(",".join(gp.storage.importers.MOVIELENS_COLUMNS) + "\n" + "1,2,5,978300760,Heat,Action,M,25,4,90210\n")
    assert main(["import", "criteo", str(movielens), str(tmp_path / "x.parquet")]) == 2
    assert "use gp.storage.import_movielens (command line: gpupre import movielens)" in capsys.readouterr().err
    assert main(["import", "criteo", str(text), str(tmp_path)]) == 2
    assert "is a directory; pass the path of a Parquet file to write" in capsys.readouterr().err


def test_inspect_of_a_map_layout_file_names_the_flatten_command(tmp_path, capsys):
    maps = tmp_path / "m.parquet"
    main(["synth", str(maps), "--rows", "20", "--dense", "1", "--sparse", "1", "--layout", "map"])
    capsys.readouterr()
    assert main(["inspect", str(maps)]) == 2
    assert "the map layout" in capsys.readouterr().err
    with pytest.raises(gp.SchemaError, match=r"gp.storage.flatten\(path, out\), or `gpupre flatten PATH OUT`"):
        gp.Dataset(maps)


def test_python_dash_m_gpupre_is_the_command(tmp_path):
    done = subprocess.run([sys.executable, "-m", "gpupre", "synth", str(tmp_path / "s.parquet"), "--rows", "100"],
                          capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(gp.__file__)))  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert gp.Dataset(tmp_path / "s.parquet").num_rows == 100
