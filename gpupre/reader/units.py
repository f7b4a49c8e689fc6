"""Work units (one Parquet row group each) and their deterministic assignment to shares."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError

__all__ = ["WorkUnit", "shard"]


@dataclass(frozen=True, order=True)
class WorkUnit:
    """The unit of reading: one row group of one file."""

    path: str
    row_group: int
    num_rows: int

    def __str__(self) -> str:
        return f"{self.path} row group {self.row_group}"


def shard(
    units,
    rank: int = 0,
    world_size: int = 1,
    worker: int = 0,
    num_workers: int = 1,
    seed: int | None = None,
) -> list[WorkUnit]:
    """The units of one (rank, worker) share, the same on every call with the same arguments.

    Units are ordered by (path, row group), shuffled when `seed` is given, dealt round-robin to
    ranks, and each rank's units round-robin to its workers. Shares are disjoint and together
    cover every unit.
    """
    for name, index, count in (("rank", rank, world_size), ("worker", worker, num_workers)):
        if not (isinstance(count, int) and count > 0 and isinstance(index, int) and 0 <= index < count):
            raise ConfigError(f"{name}={index} must be in [0, {count}) with a positive count")
    ordered = sorted(units)
    if seed is not None:
        ordered = [ordered[i] for i in np.random.default_rng(seed).permutation(len(ordered))]
    return ordered[rank::world_size][worker::num_workers]
