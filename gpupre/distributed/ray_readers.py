"""`RayReaders`: the loader's readers as Ray actors, a disaggregated tier that scales on its own.

    readers = gp.distributed.RayReaders(dataset, num_readers=4, max_readers=16)
    loader = gp.DataLoader(readers, batch_size=4096, pipeline=pipeline)   # same Batches, same state

Each reader is an actor that reads whole work units with projection and runs the plan's host
stage (the whole plan when training on the CPU), as the loader's worker processes do. A unit's
slabs come back as one object through Ray's object store, so a unit is delivered whole or not at
all: when a reader dies, a new one takes its place and reads the units it had not delivered
again, from the loader's cursor, and no row is lost or delivered twice. The client (the
`DataLoader`) takes units in order, rebatches, transfers and runs the device stage as it does
with its own workers; `state_dict()` is the same.

Autoscaling: the client measures how long it waits for each unit. When it waits for more than
`scale_up_wait` of its time over the last `window` units, a reader is added (up to
`max_readers`); when every one of those units was ready before it was asked for, a reader is
retired (down to `min_readers`). Each decision is logged (logger "gpupre.distributed") and kept
in `stats()["decisions"]`.
"""

from __future__ import annotations

import collections
import logging
import time

from ..errors import BackendUnavailable, ConfigError
from ..reader import Dataset

__all__ = ["RayReaders"]

log = logging.getLogger("gpupre.distributed")


class _Reader:
    """The actor: reads units and returns their slabs (host Batches) with their reading stats."""

    def __init__(self, dataset, stage, read_batch_size: int):
        import numba

        from ..storage.iostats import CountingFileSystem

        numba.set_num_threads(1)  # a reader is one CPU of the tier
        self.counting = CountingFileSystem(dataset.filesystem)
        dataset.filesystem = self.counting
        self.dataset, self.stage, self.read_batch_size = dataset, stage, read_batch_size

    def read(self, task):
        from ..loader._worker import read_unit

        slabs, stats = [], {"read_s": 0.0, "host_s": 0.0}
        for batch, s in read_unit(self.dataset, self.stage, task, self.read_batch_size):
            slabs.append(batch)
            for name, value in s.items():
                stats[name] += value
        stats["bytes_read"] = self.counting.bytes_read
        self.counting.reset()
        return slabs, stats

    def ping(self) -> bool:
        return True


class RayReaders:
    """A source for `gp.DataLoader`: its units read by Ray actors.

    Args:
        dataset: the `gp.Dataset` (projection, label and pass-through columns as read).
        num_readers: readers at the start.
        min_readers, max_readers: the range autoscaling keeps to (default: num_readers, fixed).
        num_cpus: CPUs each reader reserves in the Ray cluster.
        prefetch: units in flight per reader.
        scale_up_wait, window: see the module docstring.
        address: the Ray cluster to join (None: the running one, or a local one started here).

    Raises:
        BackendUnavailable: Ray is not installed (`pip install 'gpupre[ray]'`).
        ConfigError: the reader counts are out of order.
    """

    is_slab_source = True  # what gp.DataLoader looks for

    def __init__(self, dataset: Dataset, num_readers: int = 2, min_readers: int | None = None,
                 max_readers: int | None = None, num_cpus: float = 1.0, prefetch: int = 2,
                 scale_up_wait: float = 0.2, window: int = 8, address: str | None = None):  # fmt: skip
        if not isinstance(dataset, Dataset):
            raise ConfigError(f"RayReaders needs a gp.Dataset, got {type(dataset).__name__}")
        low = num_readers if min_readers is None else min_readers
        high = num_readers if max_readers is None else max_readers
        if not (isinstance(num_readers, int) and 1 <= low <= num_readers <= high):
            raise ConfigError(
                f"readers must satisfy 1 <= min_readers ({low}) <= num_readers ({num_readers}) <= max_readers ({high})"
            )
        try:
            import ray  # noqa: F401
        except ImportError as e:
            raise BackendUnavailable("RayReaders needs Ray: pip install 'gpupre[ray]'") from e
        self.dataset, self.num_readers, self.min_readers, self.max_readers = dataset, num_readers, low, high
        self.num_cpus, self.prefetch, self.scale_up_wait, self.window = num_cpus, prefetch, scale_up_wait, window
        self.address = address
        self._actors: list = []
        self._config = None  # (stage, read_batch_size) the actors were made for
        self._decisions: list[dict] = []
        self._replaced = 0
        self._waits = collections.deque(maxlen=window)  # (waited s, elapsed s) per unit

    # -- actors ----------------------------------------------------------------------------------
    def _ensure(self, stage, read_batch_size: int) -> None:
        import ray

        if not ray.is_initialized():
            ray.init(address=self.address, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
        if self._config != (stage, read_batch_size):
            self.close()
            self._config = (stage, read_batch_size)
        while len(self._actors) < self.num_readers:
            self._actors.append(self._new_actor())

    def _new_actor(self):
        import ray

        stage, read_batch_size = self._config
        cls = ray.remote(num_cpus=self.num_cpus, max_restarts=0)(_Reader)
        return cls.remote(self.dataset, stage, read_batch_size)

    def readers(self) -> list:
        """The live reader actors (to inspect, or to kill in a test)."""
        return list(self._actors)

    def close(self) -> None:
        """Stop the readers (they start again on the next iteration)."""
        import ray

        for actor in self._actors:
            ray.kill(actor)
        self._actors = []

    def stats(self) -> dict:
        return {"readers": len(self._actors), "replaced": self._replaced, "decisions": list(self._decisions)}

    # -- the slabs ---------------------------------------------------------------------------------
    def slabs(self, tasks, stage, read_batch_size: int, stats: dict):
        """(task index, the unit's slabs or an error message) in task order.

        A unit whose reader died is read again by a new reader; a unit that cannot be read
        gives its error message (the loader raises or skips it).
        """
        import ray
        from ray.exceptions import RayActorError, RayTaskError

        self._ensure(stage, read_batch_size)
        pending = collections.deque(enumerate(tasks))
        flight: collections.deque = collections.deque()  # (index, task, actor, ref), in task order
        load = collections.Counter()

        def submit():
            while pending and len(flight) < len(self._actors) * self.prefetch:
                index, task = pending.popleft()
                actor = min(self._actors, key=lambda a: load[a])
                load[actor] += 1
                flight.append((index, task, actor, actor.read.remote(task)))

        submit()
        try:
            while flight:
                index, task, actor, ref = flight[0]
                start = time.perf_counter()
                ready = bool(ray.wait([ref], timeout=0)[0])
                try:
                    slabs, unit_stats = ray.get(ref)
                except RayActorError:  # the reader died: a new one reads the unit again
                    self._replace(actor, load)
                    new = min(self._actors, key=lambda a: load[a])
                    load[new] += 1
                    flight[0] = (index, task, new, new.read.remote(task))
                    continue
                except RayTaskError as e:
                    flight.popleft()
                    load[actor] -= 1
                    cause = e.cause if getattr(e, "cause", None) is not None else e
                    yield index, f"{type(cause).__name__}: {cause}"
                    submit()
                    continue
                waited = time.perf_counter() - start
                flight.popleft()
                load[actor] -= 1
                for name, value in unit_stats.items():
                    stats[name] = stats.get(name, 0) + value
                yield index, slabs
                self._autoscale(waited, ready, load)
                submit()
        finally:
            for _, _, actor, ref in flight:  # left early: let the readers finish, drop the results
                if actor is not None:
                    load[actor] -= 1

    def _replace(self, dead, load) -> None:
        """A new reader in place of a dead one (once, whichever of its units noticed first)."""
        load.pop(dead, None)
        if dead in self._actors:
            self._actors.remove(dead)
            self._actors.append(self._new_actor())
            self._replaced += 1
            log.warning("a reader died; replaced it (%d replaced so far)", self._replaced)

    def _autoscale(self, waited: float, ready: bool, load) -> None:
        now = time.perf_counter()
        self._waits.append((waited, ready, now))
        if len(self._waits) < self.window:
            return
        span = now - self._waits[0][2] or 1e-9
        share = sum(w for w, _, _ in self._waits) / span
        if share > self.scale_up_wait and len(self._actors) < self.max_readers:
            self._actors.append(self._new_actor())
            self._decide("up", share)
        elif all(r for _, r, _ in self._waits) and len(self._actors) > self.min_readers:
            idle = min(self._actors, key=lambda a: load[a])
            self._actors.remove(idle)  # no new units; it finishes the ones it holds, then goes
            self._retire(idle, load)
            self._decide("down", share)

    def _retire(self, actor, load) -> None:
        """An actor given no new units goes now if it holds none, else when its last result is taken."""
        import ray

        if load[actor] == 0:
            ray.kill(actor)

    def _decide(self, direction: str, share: float) -> None:
        decision = {"time": time.time(), "direction": direction, "readers": len(self._actors),
                    "wait_share": round(share, 3)}  # fmt: skip
        self._decisions.append(decision)
        self._waits.clear()
        log.info("readers scaled %s to %d (the client waited %.0f%% of its time)", direction, len(self._actors),
                 100 * share)  # fmt: skip
