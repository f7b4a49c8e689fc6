"""`gpupre audit`: the report, the plot and the pruned pipeline from the command line."""

import os
import sys

import pytest
import torch

import gpupre as gp
from gpupre.cli import main


def test_gpupre_audit_prints_the_report_and_writes_the_pruned_pipeline(trained, tmp_path, monkeypatch, capsys):
    torch.save(trained.model.state_dict(), tmp_path / "model.pt")
    keys = list(trained.model.keys)
    (tmp_path / "my_model.py").write_text(
        "import torch\nfrom bench.dlrm import DLRM\n\n\n"
        f"def load():\n    model = DLRM({len(trained.dense)}, {keys!r}, 1000, dim=8)\n"
        f"    model.load_state_dict(torch.load({str(tmp_path / 'model.pt')!r}))\n    return model\n"
    )
    trained.pipeline.save(tmp_path / "pipeline.json")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [str(tmp_path), *sys.path])
    code = main(["audit", trained.held_out.paths[0], "--model", "my_model:load", "--pipeline", "pipeline.json",
                 "--repeats", "3", "--plot", "audit.png", "--json", "audit.json", "--threshold", "0.002",
                 "--pruned-pipeline", "pruned.json"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    ranked = [line.split("|")[2].strip() for line in out.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert set(ranked[:3]) <= trained.planted and len(ranked) == len(trained.dense + trained.sparse) + 1
    assert "keep " in out and (tmp_path / "audit.png").exists() and (tmp_path / "audit.json").exists()
    assert set(gp.Pipeline.load(tmp_path / "pruned.json").output_schema().names) < set(ranked)


def test_a_model_that_cannot_be_loaded_is_an_error_naming_it(trained, capsys):
    assert main(["audit", trained.held_out.paths[0], "--model", "no_such_module:load"]) == 2
    assert "no_such_module" in capsys.readouterr().err
    assert main(["audit", trained.held_out.paths[0], "--model", "os:sep"]) == 2
    assert "--model 'os:sep' names a str, not a function" in capsys.readouterr().err


def test_an_output_path_in_a_missing_directory_fails_before_the_audit_runs(synth_file, capsys):
    """The model is not even loaded: the error is the path, not the audit's minutes later."""
    assert main(["audit", synth_file, "--model", "no_such_module:load", "--json", "/nonexistent/a.json"]) == 2
    err = capsys.readouterr().err
    assert "--json path /nonexistent/a.json: its directory /nonexistent does not exist" in err


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc, a directory that takes no files (even as root)")
@pytest.mark.parametrize("option", ["--json", "--plot"])
def test_an_output_path_in_a_directory_that_takes_no_files_fails_before_the_audit_runs(synth_file, capsys, option):
    assert main(["audit", synth_file, "--model", "no_such_module:load", option, "/proc/audit.png"]) == 2
    assert f"{option} path /proc/audit.png: its directory /proc takes no new files" in capsys.readouterr().err


@pytest.mark.parametrize("name, words", [("audit.xyz", "ends in .xyz"), ("audit", "has no extension")])
def test_a_plot_path_without_a_plot_format_fails_before_the_audit_runs(synth_file, tmp_path, capsys, name, words):
    plot = tmp_path / name
    assert main(["audit", synth_file, "--model", "no_such_module:load", "--plot", str(plot)]) == 2
    assert f"--plot path {plot} {words}; a plot is written in the format its extension names" in capsys.readouterr().err


@pytest.mark.parametrize("options, words", [
    (["--threshold", "0", "--pruned-pipeline", "p.json"], "--pruned-pipeline needs --pipeline"),
    (["--budget-bytes", "-5"], "budget_bytes=-5"),
    (["--threshold", "nan"], "threshold=nan"),
])  # fmt: skip
def test_prune_options_are_checked_before_the_audit_runs(synth_file, tmp_path, monkeypatch, capsys, options, words):
    monkeypatch.chdir(tmp_path)
    assert main(["audit", synth_file, "--model", "no_such_module:load", *options]) == 2  # the model is never loaded
    assert words in capsys.readouterr().err


def test_a_dataset_with_two_labels_is_audited_on_the_one_label_names(tmp_path, monkeypatch, capsys):
    import numpy as np
    import pyarrow as pa

    rng = np.random.default_rng(0)
    price = rng.normal(size=400).astype(np.float32)
    click, like = (price > 0).astype(np.float32), rng.integers(0, 2, 400).astype(np.float32)
    schema = gp.Schema((gp.Feature("price", "dense"), gp.Feature("noise", "dense")), ("click", "like"))
    table = pa.table({"price": price, "noise": rng.normal(size=400).astype(np.float32), "click": click, "like": like})
    gp.storage.write_table(table, tmp_path / "two.parquet", schema)
    (tmp_path / "two_label_model.py").write_text("def load():\n    return lambda batch: 8 * batch.dense[0]\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [str(tmp_path), *sys.path])
    audit = ["audit", "two.parquet", "--model", "two_label_model:load", "--repeats", "2"]
    assert main(audit) == 2
    assert "has labels ['click', 'like']; the audit scores one: pass --label NAME" in capsys.readouterr().err
    assert main([*audit, "--label", "click"]) == 0
    ranked = [line.split("|")[2].strip() for line in capsys.readouterr().out.splitlines() if line.startswith("| 1 ")]
    assert ranked == ["price"]  # click is price > 0


def test_a_model_that_fails_on_the_batches_is_an_error_naming_their_features(synth_file, tmp_path, monkeypatch, capsys):
    (tmp_path / "four_dense_model.py").write_text(
        "import torch\n\n\ndef load():\n    linear = torch.nn.Linear(4, 1)\n    return lambda batch: linear(batch.dense.T)\n"
    )
    monkeypatch.setattr(sys, "path", [str(tmp_path), *sys.path])
    audit = ["audit", synth_file, "--model", "four_dense_model:load", "--features", "dense_000,dense_001"]
    assert main(audit) == 2
    err = capsys.readouterr().err
    assert err.startswith("gpupre audit: error: model(batch) raised RuntimeError: mat1 and mat2 shapes cannot be multiplied")
    assert "the batch had dense features ['dense_000', 'dense_001']" in err and "--features and --pipeline" in err
