"""One buffer per batch: slabs in shared memory, and the staging buffer the client rebatches into.

A worker packs a host `Batch` into one shared-memory segment and the client maps it: the arrays,
then the batch's description (its layout, keys and Arrow columns, pickled) at the segment's end.
Only the segment's name and where its description lies travel through the result queue, so every
message fits in one atomic pipe write: a worker killed while writing a longer one would leave half
a message that the client's next read waits on for ever. The arrays are never pickled. The client unlinks a
segment as soon as it maps it (the mapping outlives the name), so a name that is left is a slab in
transit. Workers name their segments with their loader's prefix: once its workers have stopped
and their queue is drained, the loader unlinks every name left with it, the slabs of a worker that
died before their messages went out (or while it wrote them).

The client gathers the rows of a batch from its slabs straight into one staging buffer (pinned
when the batch goes to a GPU): one copy on the host, then one host-to-device transfer for the
whole batch, after which the same layout gives device views. Encoded images stay on the host
(DALI's decoders read them there): staged batches keep them out of that buffer.
"""

from __future__ import annotations

import os
import pickle
from multiprocessing import resource_tracker, shared_memory

import numpy as np
import pyarrow as pa

from ..batch import Batch, KeyedJagged, binary_array, binary_parts, offsets_of

ALIGN = 64
SHM_DIR = "/dev/shm"  # where Linux lists the POSIX shared-memory segments


def to_shared(batch: Batch, name: str | None = None) -> dict:
    """Pack `batch` into a new shared-memory segment (named `name`, or at random); returns what
    `Slab` maps it from: {"shm": name, "description": (offset, size)}."""
    arrays, description = _arrays(batch, "")
    if batch.requests is not None:  # de-duplicated: the request rows travel in the same segment
        more, description["requests"] = _arrays(batch.requests, "requests.")
        arrays.update(more)
    arrays = {key: np.ascontiguousarray(a) for key, a in arrays.items()}
    description["layout"], size = _layout({key: (a.dtype, a.shape) for key, a in arrays.items()})
    header = pickle.dumps(description, pickle.HIGHEST_PROTOCOL)
    shm = shared_memory.SharedMemory(name=name, create=True, size=size + len(header))
    _untrack(shm)  # the client owns it from now on
    for (key, _, _, offset), a in zip(description["layout"], arrays.values()):
        shm.buf[offset : offset + a.nbytes] = a.view(np.uint8).reshape(-1)
    shm.buf[size : size + len(header)] = header
    shm.close()
    return {"shm": shm.name, "description": (size, len(header))}


def _arrays(batch: Batch, prefix: str) -> tuple[dict, dict]:
    """({prefixed name: array} of a batch, its description less the arrays)."""
    arrays = {"dense": batch.dense, "lengths": batch.sparse.lengths, "values": batch.sparse.values}
    for name, value in (("weights", batch.sparse.weights), ("labels", batch.labels), ("inverse", batch.inverse)):
        if value is not None:
            arrays[name] = value
    if batch.row_keys is not None:
        arrays["row_keys"] = batch.row_keys
    others = {}
    for name, column in batch.extras.items():
        if isinstance(column, np.ndarray):
            arrays["extra:" + name] = column
        else:
            others[name] = column  # Arrow columns (strings...) are small; they travel pickled
    encoded = []
    for name, column in batch.images.items():
        if isinstance(column, pa.Array):  # encoded bytes are large: they travel in the segment too
            arrays["image_offsets:" + name], arrays["image:" + name] = binary_parts(column)
            encoded.append(name)
        else:
            arrays["image:" + name] = column
    description = {"num_rows": batch.num_rows, "others": others, "dense_keys": batch.dense_keys, "keys": batch.sparse.keys,
                   "encoded": encoded}  # fmt: skip
    return {prefix + key: a for key, a in arrays.items()}, description


class Slab:
    """A slab mapped from shared memory, as a host `Batch` of views; `release()` frees it."""

    def __init__(self, where: dict, schema):
        self.shm = shared_memory.SharedMemory(name=where["shm"])
        self.shm.unlink()  # the mapping stays until release(): no name is left should this process die
        at, size = where["description"]
        description = pickle.loads(bytes(self.shm.buf[at : at + size]))  # a copy: nothing of it keeps the mapping
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
        except BufferError:  # a view is still alive somewhere; the mapping goes with it, or with the process
            pass


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
    (for one asynchronous copy to a GPU). De-duplicated slabs bring the requests their rows use,
    into the same buffer, and the inverse is renumbered to them.
    """
    import torch

    batches = [s.batch if isinstance(s, Slab) else s for s, _, _ in pieces]
    offsets = [s.offsets() if isinstance(s, Slab) else None for s, _, _ in pieces]
    parts = [_Part("", pieces, batches, offsets)]
    if batches[0].requests is not None:
        used = [(int(b.inverse[start:stop].min()), int(b.inverse[start:stop].max()) + 1)
                for b, (_, start, stop) in zip(batches, pieces)]  # fmt: skip
        requests = [b.requests for b in batches]
        parts.append(_Part("requests.", [(r, lo, hi) for r, (lo, hi) in zip(requests, used)], requests, [None] * len(used)))
    shapes = {}
    for part in parts:
        shapes.update(part.shapes())
    layout, size = _layout(shapes)
    buffer = torch.empty(size, dtype=torch.uint8, pin_memory=pin)
    host = buffer.numpy()
    out = {key: np.ndarray(shape, np.dtype(dtype), buffer=host, offset=offset) for key, dtype, shape, offset in layout}
    for part in parts:
        part.fill(out)
    if len(parts) == 2:  # rows point at the requests as gathered: each piece's first one moves to its place
        at, first = 0, 0
        for b, (_, start, stop), (lo, hi) in zip(batches, pieces, used):
            out["inverse"][at : at + stop - start] = b.inverse[start:stop] - lo + first
            at, first = at + stop - start, first + hi - lo
    description = parts[0].description()
    if len(parts) == 2:
        description["requests"] = parts[1].description()
    return Staged(buffer, [(k, np.dtype(d).str, s, o) for k, d, s, o in layout], description, schema)


class _Part:
    """The rows of one batch kind (the batch itself, or its requests) that a staged batch gathers."""

    def __init__(self, prefix: str, pieces, batches, offsets):
        self.prefix, self.pieces, self.batches = prefix, pieces, batches
        first = batches[0]
        self.keys = len(first.sparse.keys)
        self.n = sum(stop - start for _, start, stop in pieces)
        # values of key k, piece p: bounds[p][k] .. bounds[p][k] + counts[k, p], stored k-major
        self.bounds, self.counts = [], np.zeros((self.keys, len(pieces)), np.int64)
        for p, ((_, start, stop), b, o) in enumerate(zip(pieces, batches, offsets)):
            o = offsets_of(b.sparse.lengths) if o is None else o
            rows, keys = b.num_rows, np.arange(self.keys) * b.num_rows
            lo, hi = o[keys + start], o[keys + stop]
            self.bounds.append(lo)
            self.counts[:, p] = hi - lo
        self.others, self.host_images = {}, {}

    def shapes(self) -> dict:
        first, n, total = self.batches[0], self.n, int(self.counts.sum())
        shapes = {"dense": (np.float32, (len(first.dense_keys), n)), "lengths": (np.int32, (self.keys, n)),
                  "values": (np.int64, (total,))}  # fmt: skip
        if first.sparse.weights is not None:
            shapes["weights"] = (np.float32, (total,))
        if first.labels is not None:
            shapes["labels"] = (np.float32, np.shape(first.labels)[:-1] + (n,))
        if first.inverse is not None:
            shapes["inverse"] = (np.int32, (n,))
        if first.row_keys is not None:
            shapes["row_keys"] = (np.int64, (n,))
        for name, column in first.extras.items():
            columns = [b.extras[name] for b in self.batches]
            if all(isinstance(c, np.ndarray) for c in columns):
                shapes["extra:" + name] = (column.dtype, (n,))
            else:  # Arrow columns (strings, or numbers with nulls in some slab) stay Arrow
                self.others[name] = pa.concat_arrays([pa.array(c[start:stop]) if isinstance(c, np.ndarray) else c.slice(start, stop - start)
                                                      for c, (_, start, stop) in zip(columns, self.pieces)])  # fmt: skip
        for name, column in first.images.items():
            if isinstance(column, pa.Array):  # encoded: host bytes for DALI, not part of the transfer
                self.host_images[name] = pa.concat_arrays([b.images[name].slice(start, stop - start)
                                                           for b, (_, start, stop) in zip(self.batches, self.pieces)])  # fmt: skip
            else:
                shapes["image:" + name] = (column.dtype, (n, *column.shape[1:]))
        return {self.prefix + key: value for key, value in shapes.items()}

    def fill(self, out: dict) -> None:
        out = {key[len(self.prefix) :]: a for key, a in out.items() if key.startswith(self.prefix)}
        at = 0
        for (_, start, stop), b in zip(self.pieces, self.batches):
            rows = slice(at, at + stop - start)
            out["dense"][:, rows] = b.dense[:, start:stop]
            out["lengths"][:, rows] = b.sparse.lengths.reshape(self.keys, b.num_rows)[:, start:stop]
            if "labels" in out:
                out["labels"][..., rows] = b.labels[..., start:stop]
            if "inverse" in out:  # renumbered by stage() when the requests are gathered too
                out["inverse"][rows] = b.inverse[start:stop]
            if "row_keys" in out:
                out["row_keys"][rows] = b.row_keys[start:stop]
            for key in (k for k in out if k.startswith("extra:")):
                out[key][rows] = b.extras[key[6:]][start:stop]
            for key in (k for k in out if k.startswith("image:")):
                out[key][rows] = b.images[key[6:]][start:stop]
            at += stop - start
        where = offsets_of(self.counts.ravel())  # k-major: key 0 of every piece, then key 1 ...
        for k in range(self.keys):
            for p, b in enumerate(self.batches):
                lo, count, dst = int(self.bounds[p][k]), int(self.counts[k, p]), int(where[k * len(self.pieces) + p])
                out["values"][dst : dst + count] = b.sparse.values[lo : lo + count]
                if "weights" in out:
                    out["weights"][dst : dst + count] = b.sparse.weights[lo : lo + count]

    def description(self) -> dict:
        first = self.batches[0]
        return {"num_rows": self.n, "others": self.others, "dense_keys": first.dense_keys, "keys": first.sparse.keys,
                "host_images": self.host_images}  # fmt: skip


def _layout(shapes: dict) -> tuple[list, int]:
    """[(key, dtype, shape, offset)] of arrays packed one after the other, each ALIGN-aligned."""
    layout, at = [], 0
    for key, (dtype, shape) in shapes.items():
        dtype = np.dtype(dtype)
        layout.append((key, dtype.str, tuple(shape), at))
        at += -(-int(np.prod(shape)) * dtype.itemsize // ALIGN) * ALIGN
    return layout, max(at, ALIGN)


def _batch(views: dict, description: dict, schema, prefix: str = "") -> Batch:
    """The batch that `views` hold; a de-duplicated one's requests are the views under "requests."."""
    requests = None
    if not prefix and "requests" in description:
        requests = _batch(views, description["requests"], None, "requests.")
    if prefix:
        views = {key[len(prefix) :]: v for key, v in views.items() if key.startswith(prefix)}
    else:
        views = {key: v for key, v in views.items() if not key.startswith("requests.")}
    extras = {k[6:]: v for k, v in views.items() if k.startswith("extra:")}
    extras.update(description["others"])
    images = {k[6:]: v for k, v in views.items() if k.startswith("image:")}
    for name in description.get("encoded", ()):
        images[name] = binary_array(views["image_offsets:" + name], images[name])
    images.update(description.get("host_images", {}))
    lengths = views["lengths"].reshape(-1)
    return Batch(
        description["num_rows"],
        tuple(description["dense_keys"]),
        views["dense"],
        KeyedJagged(tuple(description["keys"]), lengths, views["values"], views.get("weights")),
        views.get("labels"),
        extras,
        views.get("inverse"),
        requests,
        schema,
        images,
        views.get("row_keys"),
    )


def _untrack(shm) -> None:
    """Keep Python's resource tracker from unlinking the segment when this process exits."""
    try:
        resource_tracker.unregister(shm._name, "shared_memory")
    except Exception:  # noqa: BLE001 - the tracker is an implementation detail; it may not know it
        pass


def unlink_all(prefix: str) -> None:
    """Unlink every segment whose name starts with `prefix` (where the system lists them: Linux).

    Only for names no process will map: those of workers that have stopped, their queue drained.
    """
    try:
        names = os.listdir(SHM_DIR)
    except OSError:
        return
    for name in names:
        if name.startswith(prefix):
            try:
                os.unlink(os.path.join(SHM_DIR, name))
            except FileNotFoundError:
                pass
