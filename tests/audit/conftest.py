"""A trained model over synthetic data whose labels depend on known ("planted") features."""

import numpy as np
import pytest
import torch

import gpupre as gp
from bench.dlrm import DLRM, train
from gpupre.storage.synth import planted_features

SPEC = gp.storage.SynthSpec(rows=40_000, num_dense=8, num_sparse=8, num_scored=0, num_planted=4, list_fraction=0.25,
                            vocab_size=300, items_per_request=1, row_group_rows=5_000, num_files=2, seed=3)  # fmt: skip


class Trained:
    """The model, its pipeline, the training and held-out datasets, and the planted features."""

    def __init__(self, root):
        gp.storage.synthesize(root, SPEC, progress=False)
        first, second = gp.Dataset(root).paths
        self.train, self.held_out = gp.Dataset(first), gp.Dataset(second)
        self.dense = [f.name for f in self.train.schema.dense]
        self.sparse = [f.name for f in self.train.schema.sparse]
        self.planted = set(planted_features(SPEC))
        ops = [gp.FillMissing(self.dense, 0.0), gp.Log1p(self.dense), gp.Normalize(self.dense),
               gp.Bucketize.fit("dense_000", 8, out="dense_000_bucket"), gp.Hash(self.sparse, 1000)]  # fmt: skip
        self.pipeline = gp.Pipeline(ops).fit(self.train, progress=False)
        torch.manual_seed(0)
        sparse_keys = [f.name for f in self.pipeline.output_schema(self.train.schema).sparse]
        self.model = DLRM(len(self.dense), sparse_keys, 1000, dim=8)
        loader = gp.DataLoader(self.train, 512, self.pipeline, device="cpu", num_workers=0, shuffle=True)
        self.losses = train(loader, self.model, steps=120)["losses"]

    def held_out_batches(self, batch_size=4096):
        return list(gp.DataLoader(self.held_out, batch_size, self.pipeline, device="cpu", num_workers=0))

    def embedding(self, name, ids):
        """The rows the model looks up for `name`'s ids (one block of its table per key)."""
        m = self.model.num_embeddings
        return self.model.tables.weight[torch.as_tensor(ids) % m + self.model.keys.index(name) * m]


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    t = Trained(str(tmp_path_factory.mktemp("audit") / "data"))
    assert np.mean(t.losses[-10:]) < t.losses[0]  # it learned something
    return t
