"""The README's examples run as written, on small inputs made here for what they name."""

import pathlib
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import gpupre as gp

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def example(first: str) -> str:
    """The README's python block holding `first` (exactly one)."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    found = [b for b in blocks if first in b]
    assert len(found) == 1, f"{len(found)} README python blocks hold {first!r}"
    return found[0]


def run(code: str, scope: dict) -> dict:
    exec(compile(code, str(README), "exec"), scope)
    return scope


def criteo_text(path, rows: int, rng) -> None:
    """Criteo display-ads lines: label, 13 counts (some empty), 26 hex ids (some empty)."""
    lines = []
    for _ in range(rows):
        counts = ["" if rng.random() < 0.1 else str(rng.integers(0, 1000)) for _ in range(13)]
        ids = ["" if rng.random() < 0.1 else f"{rng.integers(0, 2**32):08x}" for _ in range(26)]
        lines.append("\t".join([str(rng.integers(0, 2)), *counts, *ids]))
    pathlib.Path(path).write_text("\n".join(lines) + "\n")


def test_reading_example(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    criteo_text("train.txt", 300, np.random.default_rng(0))
    small = gp.storage.SynthSpec(rows=400, num_dense=4, num_sparse=6, num_scored=1, num_planted=2, row_group_rows=100)
    legacy = gp.storage.synthesize("legacy-map.parquet", small, layout="map", progress=False)
    code = example("gp.storage.synthesize(")
    assert "SynthSpec(rows=100_000)" in code  # 500 features of 100,000 rows take 400 MB: made smaller here
    scope = run(code.replace("SynthSpec(rows=100_000)", "SynthSpec(rows=2_000)"), {})
    assert scope["ds"].schema.names == ("I1", "C1", "C2")
    assert scope["b"].num_rows == 300 and scope["b"].dense.shape == (1, 300)
    assert len(scope["synth"].read(scope["synth"].units()[0]).extras["row_id"]) > 0
    assert gp.Dataset("flat/").schema.names == legacy.names


def test_transforms_and_loader_examples(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(1)
    n = 2_000
    table = pa.table({
        "I1": pa.array(np.where(rng.random(n) < 0.1, np.nan, rng.integers(0, 100, n)).astype(np.float32)),
        "C1": rng.integers(0, 50, n), "C2": rng.integers(0, 30, n),
        "history": pa.array([list(rng.integers(0, 10**6, rng.integers(0, 40))) for _ in range(n)], pa.list_(pa.int64())),
        "label": rng.integers(0, 2, n).astype(np.float32), "row_id": np.arange(n),
    })  # fmt: skip
    pq.write_table(table, "data.parquet", row_group_size=500)
    ds = gp.Dataset("data.parquet", features=["I1", "C1", "C2", "history"], passthrough="row_id")
    scope = run(example("plan = pipe.compile("), {"gp": gp, "ds": ds, "dense": ["I1"], "sparse": ["C1", "C2"], "lists": ["history"]})
    out = scope["out"]
    assert set(out.schema.names) == {"I1", "I1_bucket", "C1", "C2", "history", "C1_x_C2"}
    assert out.num_rows == 500 and int(out.sparse.lengths.max()) <= 20
    assert pathlib.Path("pipeline.json").exists()

    seen = []

    def model(dense, kjt):
        seen.append((dense.shape, kjt.keys()))

    scope.update(model=model)
    scope = run(example("loader.state_dict()"), scope)
    assert [(tuple(shape), keys) for shape, keys in seen] == [((n, 1), [f.name for f in out.schema.sparse])]
    assert scope["loader"].stats()["rows"] == n


def test_serving_example(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    scope = run(example("logger = LazyLogger("), {})
    scope = run(example("joiner = LabelJoiner("), scope)
    full = scope["full"]
    assert scope["b"].num_rows == 2 and full.num_rows == 2
    assert full.labels.tolist() == [0.0, 1.0]
    assert scope["store"].get_many(["i/42/1014"])[0] is not None
