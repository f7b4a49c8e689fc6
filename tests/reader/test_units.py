"""Work units and their deterministic shares across ranks and workers."""

import pytest

import gpupre as gp
from gpupre.reader import WorkUnit, shard

UNITS = [WorkUnit(f"/data/part-{f}.parquet", g, 100 + g) for f in (2, 0, 1) for g in range(5)]  # 15, unsorted


def shares(units, world_size, num_workers, seed=None):
    return {
        (rank, worker): shard(units, rank, world_size, worker, num_workers, seed)
        for rank in range(world_size)
        for worker in range(num_workers)
    }


def assert_partition(parts, units):
    flat = [u for part in parts.values() for u in part]
    assert sorted(flat) == sorted(units)  # every unit exactly once


@pytest.mark.parametrize("world_size, num_workers", [(1, 1), (1, 4), (2, 3), (4, 2), (3, 5), (16, 1)])
@pytest.mark.parametrize("seed", [None, 7])
def test_shares_partition_the_units(world_size, num_workers, seed):
    parts = shares(UNITS, world_size, num_workers, seed)
    assert_partition(parts, UNITS)
    assert parts == shares(list(reversed(UNITS)), world_size, num_workers, seed)  # input order is irrelevant
    sizes = [sum(len(parts[r, w]) for w in range(num_workers)) for r in range(world_size)]
    assert max(sizes) - min(sizes) <= 1  # ranks get balanced shares


def test_unshuffled_shares_follow_path_and_row_group_order():
    assert shard(UNITS) == sorted(UNITS)
    assert [(u.path[-9:], u.row_group) for u in shard(UNITS, 1, 2, 0, 2)] == [
        ("0.parquet", 1),
        ("1.parquet", 0),
        ("1.parquet", 4),
        ("2.parquet", 3),
    ]


def test_a_seeded_shuffle_differs_from_the_unshuffled_order_and_between_seeds():
    assert shard(UNITS, seed=3) == shard(UNITS, seed=3)
    assert sorted(shard(UNITS, seed=3)) == sorted(UNITS)
    assert shard(UNITS, seed=3) != shard(UNITS)
    assert shard(UNITS, seed=3) != shard(UNITS, seed=4)


@pytest.mark.parametrize(
    "args", [(0, 0, 0, 1), (2, 2, 0, 1), (-1, 2, 0, 1), (0, 1, 1, 1), (0, 1, 0, 0), (0, 1.0, 0, 1)]
)
def test_bad_rank_or_worker_is_a_config_error(args):
    with pytest.raises(gp.ConfigError, match="must be in"):
        shard(UNITS, *args)


@pytest.mark.parametrize("seed", [-1, "7", 1.5, (3, -2), (), True])
def test_a_bad_seed_is_a_config_error(seed):
    with pytest.raises(gp.ConfigError, match=r"seed=.* must be None, an integer >= 0 or a tuple of them"):
        shard(UNITS, seed=seed)


def test_numpy_integers_are_ranks_and_seeds():
    import numpy as np

    assert shard(UNITS, np.int64(1), np.int64(2), seed=np.int64(3)) == shard(UNITS, 1, 2, seed=3)
    assert shard(UNITS, seed=(np.int64(3), 1)) == shard(UNITS, seed=(3, 1))


def test_dataset_units_and_shares(synth_dir):
    ds = gp.Dataset(synth_dir)
    units = ds.units()
    assert len(units) == 12 and all(isinstance(u, WorkUnit) for u in units)
    assert sum(u.num_rows for u in units) == ds.num_rows == 600
    parts = {(r, w): ds.units(r, 2, w, 3, seed=11) for r in range(2) for w in range(3)}
    assert_partition(parts, units)
    assert parts[1, 2] == shard(units, 1, 2, 2, 3, 11)
    rows = sum(ds.read(u).num_rows for part in parts.values() for u in part)
    assert rows == 600


def test_work_unit_names_its_file_and_row_group():
    unit = WorkUnit("/data/a.parquet", 3, 10)
    assert str(unit) == "/data/a.parquet row group 3"
    assert unit == WorkUnit("/data/a.parquet", 3, 10) and len({unit, WorkUnit("/data/a.parquet", 3, 10)}) == 1
