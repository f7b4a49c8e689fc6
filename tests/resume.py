"""The one resume check for everything with state (loaders, reader tiers)."""

import numpy as np


def epoch_ids(batches, column="row_id"):
    columns = [b.extras[column] for b in batches]
    return [int(i) for c in columns for i in np.asarray(c.cpu() if hasattr(c, "cpu") else c)]


def interrupted(loader_factory, midpoint: int, column: str = "row_id"):
    """(ids of one uninterrupted epoch, ids of its first `midpoint` batches, ids delivered after
    restoring the state taken then in a fresh loader, the number of batches after it)."""
    whole = epoch_ids(list(loader_factory()), column)
    first = loader_factory()
    it = iter(first)
    head = [next(it) for _ in range(midpoint)]
    state = first.state_dict()
    del it
    first.close()
    second = loader_factory()
    second.load_state_dict(state)
    rest = list(second)
    second.close()
    return whole, epoch_ids(head, column), epoch_ids(rest, column), len(rest)


def check_resume(loader_factory, midpoint: int, column: str = "row_id"):
    """An epoch interrupted after `midpoint` batches and resumed in a fresh loader delivers every
    row of one uninterrupted epoch exactly once. Returns (first part ids, rest ids)."""
    whole, a, b, _ = interrupted(loader_factory, midpoint, column)
    assert not set(a) & set(b), "rows delivered twice across the resume"
    assert sorted(a + b) == sorted(whole), "rows lost or added across the resume"
    return a, b
