"""Joined requests to write de-dup and tabular tables from, for the reader, loader and serving tests."""

import numpy as np

from gpupre.serving import FeatureCodec, JoinedRequest
from gpupre.serving.simulate import synthetic_features


def joined_requests(requests: int = 60, seed: int = 0, start: float = 1_767_225_600.0):
    """(item schema, user schema, JoinedRequests): 1 to 12 impressions a request, over two hours;
    item ids are unique per impression (request * 100 + rank), so they identify rows."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, 13, requests)
    items = synthetic_features(int(counts.sum()), 3, 2, 3, "item", rng)
    users = synthetic_features(requests, 2, 3, 6, "user", rng)
    items.dense[0, ::7] = np.nan  # missing values travel as nulls
    item_bytes, user_bytes = FeatureCodec(items.schema).encode(items), FeatureCodec(users.schema).encode(users)
    out, at = [], 0
    for r, n in enumerate(counts):
        labels = rng.integers(0, 2, (n, 2)).astype(np.float32)
        ids = np.arange(n, dtype=np.int64) + 100 * r
        out.append(JoinedRequest(r, start + r * 7200 / requests, user_bytes[r], ids, item_bytes[at : at + n], labels))
        at += n
    return items.schema, users.schema, out
