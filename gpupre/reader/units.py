"""Work units (one Parquet row group each) and their deterministic assignment to shares."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from .._checks import is_integer
from ..errors import ConfigError

__all__ = ["WorkUnit", "mix64", "rekey", "row_keys", "salted", "shard"]


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
    seed: int | tuple[int, ...] | None = None,
) -> list[WorkUnit]:
    """The units of one (rank, worker) share, the same on every call with the same arguments.

    Units are ordered by (path, row group), shuffled when `seed` (an int or a tuple of them, as
    numpy's `default_rng` takes) is given, dealt round-robin to ranks, and each rank's units
    round-robin to its workers. Shares are disjoint and together cover every unit.
    """
    for name, index, count in (("rank", rank, world_size), ("worker", worker, num_workers)):
        if not (is_integer(count) and count > 0 and is_integer(index) and 0 <= index < count):
            raise ConfigError(f"{name}={index!r} must be in [0, {count!r}) with a positive integer count")
    parts = seed if isinstance(seed, (tuple, list)) else (seed,)
    if seed is not None and not (parts and all(is_integer(p) and p >= 0 for p in parts)):
        raise ConfigError(f"seed={seed!r} must be None, an integer >= 0 or a tuple of them, such as seed=(seed, epoch)")
    ordered = sorted(units)
    if seed is not None:
        ordered = [ordered[i] for i in np.random.default_rng(seed).permutation(len(ordered))]
    return ordered[rank::world_size][worker::num_workers]


def mix64(x) -> np.ndarray:
    """splitmix64's finalizer over uint64 arrays (wrapping): a cheap, well-spread 64-bit hash."""
    x = np.asarray(x, np.uint64).copy()
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return x


def salted(keys, salt) -> np.ndarray:
    """mix64(keys ^ salt) as uint64: int64 row keys drawn apart by a 64-bit `salt`."""
    return mix64(np.asarray(keys, np.int64).view(np.uint64) ^ np.uint64(salt))


def row_keys(unit: WorkUnit, start: int, count: int) -> np.ndarray:
    """int64 keys of rows [start, start + count) of `unit`: a hash of (path, row group, row).

    The same row gets the same key in every process and run, whatever the batching.
    """
    digest = hashlib.blake2b(f"{unit.path}\0{unit.row_group}".encode(), digest_size=8).digest()
    rows = np.arange(start, start + count, dtype=np.uint64) + np.uint64(int.from_bytes(digest, "little"))
    return mix64(rows).view(np.int64)


def rekey(keys, seed: int, epoch: int) -> np.ndarray:
    """Row keys of one epoch of a loader with `seed`: random image ops draw anew each epoch."""
    salt = mix64(np.array([(seed & (2**64 - 1)) ^ (epoch * 0x9E3779B97F4A7C15 & (2**64 - 1))], np.uint64))[0]
    return salted(keys, salt).view(np.int64)
