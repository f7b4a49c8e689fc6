"""A small DLRM-style model (embedding bags, a bottom and a top MLP, dot interactions) that trains
on `Batch`es from `gp.DataLoader`: the demo's model and the benchmarks'."""

from __future__ import annotations

import torch
from torch import nn


def mlp(sizes: list[int]) -> nn.Sequential:
    layers = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


class DLRM(nn.Module):
    """Dense features through a bottom MLP, one embedding bag per sparse feature (sum of its ids'
    embeddings), pairwise dot products of all of them, and a top MLP to one logit."""

    def __init__(self, num_dense: int, sparse_keys: list[str], num_embeddings: int, dim: int = 16):
        super().__init__()
        self.keys = list(sparse_keys)
        self.bottom = mlp([num_dense, 64, dim])
        self.num_embeddings = num_embeddings
        # every feature's table as one block of rows of a single bag (one call for all features),
        # with sparse gradients: a step updates only the rows its ids touch
        self.tables = nn.EmbeddingBag(num_embeddings * len(self.keys), dim, mode="sum", sparse=True)
        count = len(self.keys) + 1
        self.top = mlp([dim + count * (count - 1) // 2, 64, 1])

    def forward(self, batch) -> torch.Tensor:
        """Logits [N] of a batch: dense [D, N] and sparse lengths/values in key-major order.

        A de-duplicated batch's request features are looked up once per request and their
        pooled embeddings gathered onto the rows (its keys: the requests', then the items').
        """
        if batch.requests is None:
            dense, bags = batch.dense, self._bags(batch.sparse, batch.num_rows, 0)
        else:
            requests, inverse = batch.requests, batch.inverse.long()
            dense = torch.cat([requests.dense[:, inverse], batch.dense])
            first = self._bags(requests.sparse, requests.num_rows, 0)[:, inverse]
            bags = torch.cat([first, self._bags(batch.sparse, batch.num_rows, len(requests.sparse.keys))])
        x = self.bottom(dense.T)
        t = torch.cat([x.unsqueeze(1), bags.transpose(0, 1)], dim=1)  # [N, F + 1, dim]
        dots = torch.bmm(t, t.transpose(1, 2))
        i, j = torch.triu_indices(t.shape[1], t.shape[1], offset=1)
        return self.top(torch.cat([x, dots[:, i, j]], dim=1)).squeeze(1)

    def _bags(self, sparse, n: int, first_key: int) -> torch.Tensor:
        """Pooled embeddings [keys, n, dim] of keys first_key, first_key + 1, ... of the model."""
        keys = len(sparse.keys)
        lengths = sparse.lengths.long()
        offsets = torch.zeros(len(lengths), dtype=torch.long, device=lengths.device)
        torch.cumsum(lengths[:-1], 0, out=offsets[1:])
        per_key = lengths.view(keys, n).sum(1)
        key_of_id = torch.repeat_interleave(torch.arange(first_key, first_key + keys, device=lengths.device), per_key)
        ids = sparse.values % self.num_embeddings + key_of_id * self.num_embeddings
        return self.tables(ids, offsets).view(keys, n, -1)


def train(loader, model: DLRM, steps: int, lr: float = 0.05) -> dict:
    """Train for `steps` batches (over as many epochs as that takes); losses and throughput."""
    import time

    torch.sparse.check_sparse_tensor_invariants.disable()  # said explicitly: the ids come checked
    optimizer = torch.optim.Adagrad(model.parameters(), lr=lr)
    loss_fn = nn.BCEWithLogitsLoss()
    losses, rows, start = [], 0, time.perf_counter()
    while len(losses) < steps:
        for batch in loader:
            loss = loss_fn(model(batch), batch.labels.float())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            rows += batch.num_rows
            if len(losses) == steps:
                break
    seconds = time.perf_counter() - start
    return {"steps": steps, "rows": rows, "seconds": seconds, "rows_per_s": rows / seconds, "losses": losses}
