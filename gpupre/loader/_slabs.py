"""Slabs in shared memory: a worker packs a host `Batch` into one segment, the client maps it.

Only a small description travels through the result queue; the arrays are never pickled. The
client unlinks a segment once every row of its slab is in a delivered batch.
"""

from __future__ import annotations

from multiprocessing import resource_tracker, shared_memory

import numpy as np

from ..batch import Batch, KeyedJagged

ALIGN = 64


def to_shared(batch: Batch) -> dict:
    """Pack `batch` into a new shared-memory segment; returns its description."""
    arrays = {"dense": batch.dense, "lengths": batch.sparse.lengths, "values": batch.sparse.values}
    for name, value in (("weights", batch.sparse.weights), ("labels", batch.labels), ("inverse", batch.inverse)):
        if value is not None:
            arrays[name] = value
    others = {}
    for name, column in batch.extras.items():
        if isinstance(column, np.ndarray):
            arrays["extra:" + name] = column
        else:
            others[name] = column  # Arrow columns (strings...) are small; they travel pickled
    layout, at = [], 0
    for key, a in arrays.items():
        a = np.ascontiguousarray(a)
        arrays[key] = a
        layout.append((key, a.dtype.str, a.shape, at))
        at += -(-a.nbytes // ALIGN) * ALIGN
    shm = shared_memory.SharedMemory(create=True, size=max(at, ALIGN))
    _untrack(shm)  # the client owns it from now on
    for (key, _, _, offset), a in zip(layout, arrays.values()):
        shm.buf[offset : offset + a.nbytes] = a.view(np.uint8).reshape(-1)
    description = {"shm": shm.name, "layout": layout, "num_rows": batch.num_rows, "others": others,
                   "dense_keys": batch.dense_keys, "keys": batch.sparse.keys}  # fmt: skip
    shm.close()
    return description


class Slab:
    """A slab mapped from shared memory, as a host `Batch` of views; `release()` frees it."""

    def __init__(self, description: dict, schema):
        # attaching registers it with this process's resource tracker: it is unlinked by
        # release(), or at exit should this process die first
        self.shm = shared_memory.SharedMemory(name=description["shm"])
        views = {
            key: np.ndarray(shape, np.dtype(dtype), buffer=self.shm.buf, offset=offset)
            for key, dtype, shape, offset in description["layout"]
        }
        extras = {k[6:]: v for k, v in views.items() if k.startswith("extra:")}
        extras.update(description["others"])
        self.batch = Batch(
            description["num_rows"],
            tuple(description["dense_keys"]),
            views["dense"],
            KeyedJagged(tuple(description["keys"]), views["lengths"], views["values"], views.get("weights")),
            views.get("labels"),
            extras,
            views.get("inverse"),
            schema,
        )
        self.num_rows = description["num_rows"]

    def release(self) -> None:
        self.batch = None
        try:
            self.shm.close()
        except BufferError:  # a view is still alive somewhere; the segment goes with the process
            return
        self.shm.unlink()


def _untrack(shm) -> None:
    """Keep Python's resource tracker from unlinking the segment when this process exits."""
    try:
        resource_tracker.unregister(shm._name, "shared_memory")
    except Exception:  # noqa: BLE001 - the tracker is an implementation detail; it may not know it
        pass
