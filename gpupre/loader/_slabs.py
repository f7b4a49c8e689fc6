"""One buffer per batch: slabs in shared memory, and the staging buffer the client rebatches into.

A worker packs a host `Batch` into one shared-memory segment and the client maps it: only a small
description travels through the result queue; the arrays are never pickled. The client unlinks a
segment once every row of its slab is in a staged batch.

The client gathers the rows of a batch from its slabs straight into one staging buffer (pinned
when the batch goes to a GPU): one copy on the host, then one host-to-device transfer for the
whole batch, after which the same layout gives device views.
"""

from __future__ import annotations

from multiprocessing import resource_tracker, shared_memory

import numpy as np
import pyarrow as pa

from ..batch import Batch, KeyedJagged, offsets_of

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
    arrays = {key: np.ascontiguousarray(a) for key, a in arrays.items()}
    layout, size = _layout({key: (a.dtype, a.shape) for key, a in arrays.items()})
    shm = shared_memory.SharedMemory(create=True, size=size)
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
        self.batch = _batch(views, description, schema)
        self.num_rows = description["num_rows"]
        self._offsets = None

    def offsets(self) -> np.ndarray:
        """offsets_of(lengths) of the slab, computed once."""
        if self._offsets is None:
            self._offsets = offsets_of(self.batch.sparse.lengths)
        return self._offsets

    def release(self) -> None:
        self.batch = None
        try:
            self.shm.close()
        except BufferError:  # a view is still alive somewhere; the segment goes with the process
            return
        self.shm.unlink()


class Staged:
    """A batch gathered into one buffer (a torch uint8 tensor) with its layout.

    `batch(buffer)` views the buffer, or a device copy of it, as a `Batch` of torch tensors.
    """

    def __init__(self, buffer, layout, description: dict, schema):
        self.buffer, self.layout, self.description, self.schema = buffer, layout, description, schema
        self.num_rows = description["num_rows"]

    def batch(self, buffer=None) -> Batch:
        import torch

        buffer = self.buffer if buffer is None else buffer
        views = {}
        for key, dtype, shape, offset in self.layout:
            dtype = torch.from_numpy(np.empty(0, dtype)).dtype
            nbytes = int(np.prod(shape)) * dtype.itemsize
            views[key] = buffer[offset : offset + nbytes].view(dtype).view(shape)
        return _batch(views, self.description, self.schema)


def stage(pieces, schema, pin: bool = False) -> Staged:
    """Gather `pieces` [(slab, start, stop)], in order, into one buffer: rows [start, stop) of each.

    slab: a `Slab` or a host `Batch`; every piece has the same features. pin: page-locked memory
    (for one asynchronous copy to a GPU).
    """
    import torch

    batches = [s.batch if isinstance(s, Slab) else s for s, _, _ in pieces]
    first = batches[0]
    n = sum(stop - start for _, start, stop in pieces)
    keys = len(first.sparse.keys)
    # values of key k, piece p: bounds[p][k] .. bounds[p][k] + counts[k, p], stored k-major
    bounds, counts = [], np.zeros((keys, len(pieces)), np.int64)
    for p, ((slab, start, stop), b) in enumerate(zip(pieces, batches)):
        o = slab.offsets() if isinstance(slab, Slab) else offsets_of(b.sparse.lengths)
        rows = b.num_rows
        lo, hi = o[np.arange(keys) * rows + start], o[np.arange(keys) * rows + stop]
        bounds.append(lo)
        counts[:, p] = hi - lo
    total = int(counts.sum())
    shapes = {"dense": (np.float32, (len(first.dense_keys), n)), "lengths": (np.int32, (keys, n)),
              "values": (np.int64, (total,))}  # fmt: skip
    if first.sparse.weights is not None:
        shapes["weights"] = (np.float32, (total,))
    if first.labels is not None:
        shapes["labels"] = (np.float32, np.shape(first.labels)[:-1] + (n,))
    if first.inverse is not None:
        shapes["inverse"] = (np.int32, (n,))
    others = {}
    for name, column in first.extras.items():
        columns = [b.extras[name] for b in batches]
        if all(isinstance(c, np.ndarray) for c in columns):
            shapes["extra:" + name] = (column.dtype, (n,))
        else:  # Arrow columns (strings, or numbers with nulls in some slab) stay Arrow
            others[name] = pa.concat_arrays([pa.array(c[start:stop]) if isinstance(c, np.ndarray) else c.slice(start, stop - start)
                                             for c, (_, start, stop) in zip(columns, pieces)])  # fmt: skip
    layout, size = _layout(shapes)
    buffer = torch.empty(size, dtype=torch.uint8, pin_memory=pin)
    host = buffer.numpy()
    out = {key: np.ndarray(shape, np.dtype(dtype), buffer=host, offset=offset) for key, dtype, shape, offset in layout}
    at = 0
    for (_, start, stop), b in zip(pieces, batches):
        rows = slice(at, at + stop - start)
        out["dense"][:, rows] = b.dense[:, start:stop]
        out["lengths"][:, rows] = b.sparse.lengths.reshape(keys, b.num_rows)[:, start:stop]
        if "labels" in out:
            out["labels"][..., rows] = b.labels[..., start:stop]
        if "inverse" in out:
            out["inverse"][rows] = b.inverse[start:stop]
        for key in (k for k in out if k.startswith("extra:")):
            out[key][rows] = b.extras[key[6:]][start:stop]
        at += stop - start
    where = offsets_of(counts.ravel())  # k-major: key 0 of every piece, then key 1 ...
    for k in range(keys):
        for p, b in enumerate(batches):
            lo, count, dst = int(bounds[p][k]), int(counts[k, p]), int(where[k * len(pieces) + p])
            out["values"][dst : dst + count] = b.sparse.values[lo : lo + count]
            if "weights" in out:
                out["weights"][dst : dst + count] = b.sparse.weights[lo : lo + count]
    description = {"num_rows": n, "others": others, "dense_keys": first.dense_keys, "keys": first.sparse.keys}
    return Staged(buffer, [(k, np.dtype(d).str, s, o) for k, d, s, o in layout], description, schema)


def _layout(shapes: dict) -> tuple[list, int]:
    """[(key, dtype, shape, offset)] of arrays packed one after the other, each ALIGN-aligned."""
    layout, at = [], 0
    for key, (dtype, shape) in shapes.items():
        dtype = np.dtype(dtype)
        layout.append((key, dtype.str, tuple(shape), at))
        at += -(-int(np.prod(shape)) * dtype.itemsize // ALIGN) * ALIGN
    return layout, max(at, ALIGN)


def _batch(views: dict, description: dict, schema) -> Batch:
    extras = {k[6:]: v for k, v in views.items() if k.startswith("extra:")}
    extras.update(description["others"])
    lengths = views["lengths"].reshape(-1)
    return Batch(
        description["num_rows"],
        tuple(description["dense_keys"]),
        views["dense"],
        KeyedJagged(tuple(description["keys"]), lengths, views["values"], views.get("weights")),
        views.get("labels"),
        extras,
        views.get("inverse"),
        schema,
    )


def _untrack(shm) -> None:
    """Keep Python's resource tracker from unlinking the segment when this process exits."""
    try:
        resource_tracker.unregister(shm._name, "shared_memory")
    except Exception:  # noqa: BLE001 - the tracker is an implementation detail; it may not know it
        pass
