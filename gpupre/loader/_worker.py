"""The worker process: reads work units with projection, runs the host stage, emits slabs.

Messages to the client (through the result queue), in order per unit:
    ("slab", position, index, where, stats)    one per slab of up to read_batch_size rows (`to_shared`)
    ("done", position, slabs sent)  or  ("error", position, message, traceback, slabs sent)
Each fits in one atomic write to the queue's pipe (PIPE_BUF bytes, the error's text clipped):
a worker killed in the middle of a longer one would leave the client waiting for its rest.
The unit a worker is reading is also in shared memory (`current`), written before it starts: a
queued message is lost when its process dies, and the client names the unit a crash was in.
`progress` counts the slabs each worker has read, those it skips on resume too: the client's
timeout runs only while none comes.
"""

from __future__ import annotations

import itertools
import os
import pickle
import time
import traceback
from dataclasses import replace

import numpy as np

from ..errors import describe
from ..reader.units import rekey


def shuffle_rng(seed: int, epoch: int, position: int, slab: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, position, slab])


def shuffled_rows(batch, rng: np.random.Generator) -> np.ndarray:
    """A random order of the rows; in a de-duplicated batch whole requests move, their rows together."""
    if batch.requests is None:
        return rng.permutation(batch.num_rows)
    from ..batch import _segments, offsets_of

    counts = np.bincount(np.asarray(batch.inverse), minlength=batch.requests.num_rows)
    order = rng.permutation(len(counts))
    return _segments(offsets_of(counts)[:-1][order], counts[order])


def read_unit(dataset, stage, task, read_batch_size: int, tick=None):
    """The slabs of one task (key, unit, skip, shuffle, (seed, epoch)): (host batch, stats) pairs.

    stage: None, or (plan, whole): with whole, every stage of the plan runs here (CPU training:
    in parallel over the workers); else only its host stage (the device stage runs in the client).

    shuffle is None or (seed, epoch, position): rows are permuted within each slab, the same way
    on every run, and `skip` counts rows in that order (so a resumed unit skips exactly the rows
    already delivered). Row keys (batches of image features) take in the seed and epoch, so
    that random image ops draw anew each epoch. tick: called for every slab read, skipped or not.
    """
    _, unit, skip, shuffle, (seed, epoch) = task
    stats = {"read_s": 0.0, "host_s": 0.0}  # of the slab just yielded (and any skipped before it)
    start = time.perf_counter()
    for index, batch in enumerate(dataset.read_slabs(unit, read_batch_size)):
        stats["read_s"] += time.perf_counter() - start
        if tick is not None:
            tick()
        if batch.row_keys is not None:
            batch = replace(batch, row_keys=rekey(batch.row_keys, seed, epoch))
        if shuffle is not None:
            batch = batch.take(shuffled_rows(batch, shuffle_rng(*shuffle, index)))
        if skip >= batch.num_rows:
            skip -= batch.num_rows
            start = time.perf_counter()
            continue
        if skip:
            batch, skip = batch.rows(skip, batch.num_rows), 0
        t = time.perf_counter()
        if stage is not None:
            plan, whole = stage
            batch = plan.run(batch) if whole else plan.run_host(batch)
        stats["host_s"] += time.perf_counter() - t
        yield batch, stats
        stats = {"read_s": 0.0, "host_s": 0.0}
        start = time.perf_counter()


NOT_STARTED, BETWEEN_UNITS = -2, -1  # current[2 * worker + 1] when the worker reads no unit


def main(setup, read_batch_size: int, tasks, results, worker: int, threads: int, generation, current, progress,
         names: str) -> None:
    """Worker loop: takes its (dataset, stage) from `setup` (pickled), then one task at a time until the None
    sentinel; current[2 * worker : 2 * worker + 2]
    holds the (generation, position) key of the unit being read. Its slabs' segments are named
    `names` (the loader's prefix), this process's id and a count."""
    import numba

    from ..storage.iostats import CountingFileSystem
    from ._slabs import to_shared

    numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))  # share the cores
    dataset, stage = pickle.loads(setup.get())
    counting = CountingFileSystem(dataset.filesystem)
    dataset.filesystem = counting
    names, count = f"{names}{os.getpid()}_", itertools.count()  # the process id: a replacement's names differ

    def tick():
        progress[worker] += 1

    while True:
        task = tasks.get()
        if task is None:
            return
        position = task[0]
        if position[0] != generation.value:  # from an iteration the client has left
            continue
        current[2 * worker], current[2 * worker + 1] = position
        sent = 0
        try:
            for batch, stats in read_unit(dataset, stage, task, read_batch_size, tick):
                stats["bytes_read"] = counting.bytes_read
                counting.reset()
                results.put(("slab", position, sent, to_shared(batch, f"{names}{next(count)}"), stats))
                sent += 1
                if position[0] != generation.value:
                    break
            results.put(("done", position, sent))
        except Exception as e:  # noqa: BLE001 - every failure goes to the client, named
            trace = _clipped(traceback.format_exc(), 2_000, keep_end=True)  # the innermost calls
            results.put(("error", position, _clipped(describe(e), 1_500), trace, sent))
        current[2 * worker + 1] = BETWEEN_UNITS


def _clipped(text: str, size: int, keep_end: bool = False) -> str:
    """`text` in at most `size` bytes of UTF-8, its start (or end)."""
    data = text.encode()
    if len(data) <= size:
        return text
    return (data[-size:] if keep_end else data[:size]).decode(errors="ignore")
