"""The worker process: reads work units with projection, runs the host stage, emits slabs.

Messages to the client (through the result queue), in order per unit:
    ("start", worker, position)
    ("slab", position, index, description, stats)    one per slab of up to read_batch_size rows
    ("done", position, slabs sent)  or  ("error", position, message, slabs sent)
"""

from __future__ import annotations

import time
import traceback
from dataclasses import replace

import numpy as np


def shuffle_rng(seed: int, epoch: int, position: int, slab: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, position, slab])


def read_unit(dataset, stage, task, read_batch_size: int):
    """The slabs of one task (key, unit, skip, shuffle): (host batch, stats) pairs.

    stage: None, a plan's host stage (a SparseLevel: the device stage runs in the client), or a
    whole Plan (CPU training: every stage runs here, in parallel over the workers).

    shuffle is None or (seed, epoch, position): rows are permuted within each slab, the same way
    on every run, and `skip` counts rows in that order (so a resumed unit skips exactly the rows
    already delivered).
    """
    from ..batch import KeyedJagged
    from ..transforms.cpu import CpuExecutor, _host_arrays
    from ..transforms.plan import Plan

    _, unit, skip, shuffle = task
    stats = {"read_s": 0.0, "host_s": 0.0}  # of the slab just yielded (and any skipped before it)
    start = time.perf_counter()
    for index, batch in enumerate(dataset.read_slabs(unit, read_batch_size)):
        stats["read_s"] += time.perf_counter() - start
        if shuffle is not None:
            batch = batch.take(shuffle_rng(*shuffle, index).permutation(batch.num_rows))
        if skip >= batch.num_rows:
            skip -= batch.num_rows
            start = time.perf_counter()
            continue
        if skip:
            batch, skip = batch.rows(skip, batch.num_rows), 0
        t = time.perf_counter()
        if isinstance(stage, Plan):
            batch = stage.run(batch)
        elif stage is not None and batch.num_rows:
            lengths, values, weights = CpuExecutor.run_level(stage, batch.num_rows, *_host_arrays(batch.sparse), None)
            batch = replace(batch, sparse=KeyedJagged(batch.sparse.keys, lengths, values, weights))
        stats["host_s"] += time.perf_counter() - t
        yield batch, stats
        stats = {"read_s": 0.0, "host_s": 0.0}
        start = time.perf_counter()


def main(dataset, stage, read_batch_size: int, tasks, results, worker: int, threads: int, generation) -> None:
    """Worker loop: one task at a time until the None sentinel."""
    import numba

    from ..storage.iostats import CountingFileSystem
    from ._slabs import to_shared

    numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))  # share the cores
    counting = CountingFileSystem(dataset.filesystem)
    dataset.filesystem = counting
    while True:
        task = tasks.get()
        if task is None:
            return
        position = task[0]
        if position[0] != generation.value:  # from an iteration the client has left
            continue
        results.put(("start", worker, position))
        sent = 0
        try:
            for batch, stats in read_unit(dataset, stage, task, read_batch_size):
                stats["bytes_read"] = counting.bytes_read
                counting.reset()
                results.put(("slab", position, sent, to_shared(batch), stats))
                sent += 1
                if position[0] != generation.value:
                    break
            results.put(("done", position, sent))
        except Exception as e:  # noqa: BLE001 - every failure goes to the client, named
            results.put(("error", position, f"{type(e).__name__}: {e}\n{traceback.format_exc()}", sent))
