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
import itertools
import logging
import math
import time
import weakref

from .._checks import ensure_integer, is_real
from ..errors import BackendUnavailable, ConfigError, DataError, describe
from ..reader import Dataset

__all__ = ["RayReaders"]

log = logging.getLogger("gpupre.distributed")

_RELEASE_S = 2.0  # the longest wait for the CPUs of killed actors to be free again
_MIN_CPUS = 0.0001  # Ray refuses a finer share of a CPU


def _ensure_number(name: str, value, low: float, high: float | None, meaning: str) -> float:
    """`value` as a float in (low, high), exclusive; high None: no upper bound."""
    if not (is_real(value) and low < value and (high is None or value < high)):
        bounds = f"{low} < {name}" + ("" if high is None else f" < {high}")
        raise ConfigError(f"RayReaders {name}={value!r} must be a number with {bounds}: {meaning}")
    return float(value)


def _session():
    """The Ray session this process is connected to, or None: actors live no longer than it (a
    handle of one made before `ray.shutdown()` cannot be used or killed in the next one)."""
    import ray

    if not ray.is_initialized():
        return None
    context = ray.get_runtime_context()
    return context.get_job_id(), context.get_node_id()


def _free_cpus(wanted: float) -> float:
    """The CPUs of the Ray cluster not reserved now, waiting a moment for `wanted` of them: those of
    readers just killed (a closed or dropped loader's) come back about 0.1 s after the kill."""
    import ray

    wanted = min(wanted, ray.cluster_resources().get("CPU", 0))
    deadline = time.monotonic() + _RELEASE_S
    while True:
        free = ray.available_resources().get("CPU", 0)
        if free >= wanted or time.monotonic() > deadline:
            return free
        time.sleep(0.05)


class _Reader:
    """The actor: reads units and returns their slabs (host Batches) with their reading stats."""

    def __init__(self, dataset, stage, read_batch_size: int):
        import numba

        from ..storage.iostats import CountingFileSystem

        numba.set_num_threads(1)  # a reader is one CPU of the tier
        self.counting = CountingFileSystem(dataset.filesystem)
        dataset.filesystem = self.counting
        self.dataset, self.stage, self.read_batch_size = dataset, stage, read_batch_size

    def ping(self) -> bool:
        return True

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


class RayReaders:
    """A source for `gp.DataLoader`: its units read by Ray actors. One loader per `RayReaders`.

    Args:
        dataset: the `gp.Dataset` to read (the loader's label and pass-through choice applies).
        num_readers: readers at the start.
        min_readers, max_readers: the range autoscaling keeps to (default: num_readers, fixed).
        num_cpus: CPUs each reader reserves in the Ray cluster.
        prefetch: units in flight per reader.
        scale_up_wait, window: see the module docstring.
        address: the Ray cluster to join (None: the running one, or a local one started here).
        retries: times a unit is read again after its reader died, before it counts as a bad
            unit (a unit that crashes every reader would otherwise replace readers forever).

    Raises:
        BackendUnavailable: Ray is not installed (`pip install 'gpupre[ray]'`).
        ConfigError: the reader counts are out of order, or another argument out of range.
    """

    is_slab_source = True  # what gp.DataLoader looks for

    def __init__(self, dataset: Dataset, num_readers: int = 2, min_readers: int | None = None,
                 max_readers: int | None = None, num_cpus: float = 1.0, prefetch: int = 2,
                 scale_up_wait: float = 0.2, window: int = 8, address: str | None = None, retries: int = 2):  # fmt: skip
        if not isinstance(dataset, Dataset):
            raise ConfigError(
                f"RayReaders needs a gp.Dataset, got {type(dataset).__name__}; wrap paths in gp.Dataset(path)"
            )
        num_readers = ensure_integer(num_readers, "RayReaders num_readers")
        low = num_readers if min_readers is None else ensure_integer(min_readers, "RayReaders min_readers")
        high = num_readers if max_readers is None else ensure_integer(max_readers, "RayReaders max_readers")
        if not low <= num_readers <= high:
            raise ConfigError(
                f"readers must satisfy 1 <= min_readers ({low}) <= num_readers ({num_readers}) <= "
                f"max_readers ({high}); change the one out of order"
            )
        num_cpus = _ensure_number("num_cpus", num_cpus, 0, None, "the CPUs each reader reserves, such as 1")
        if not _MIN_CPUS <= num_cpus < math.inf:
            raise ConfigError(
                f"RayReaders num_cpus={num_cpus!r} must be a finite number of CPUs >= {_MIN_CPUS} (the finest "
                "share Ray reserves), such as 1 or 0.5"
            )
        scale_up_wait = _ensure_number("scale_up_wait", scale_up_wait, 0, 1, "a share of time, such as 0.2")
        prefetch = ensure_integer(prefetch, "RayReaders prefetch")
        window = ensure_integer(window, "RayReaders window", 2)
        retries = ensure_integer(retries, "RayReaders retries", 0)
        if address is not None and not isinstance(address, str):
            raise ConfigError(
                f"RayReaders address={address!r} must be a str naming the Ray cluster to join, such as "
                "'ray://head:10001' or 'auto', or None (the running cluster, or a local one started here)"
            )
        try:
            import ray  # noqa: F401
        except ImportError as e:
            raise BackendUnavailable("RayReaders needs Ray: pip install 'gpupre[ray]'") from e
        self.dataset, self.min_readers, self.max_readers = dataset, low, high
        self.num_cpus, self.prefetch, self.scale_up_wait, self.window = num_cpus, prefetch, scale_up_wait, window
        self.address, self.retries = address, retries
        self.target = num_readers  # what autoscaling last decided; kept from epoch to epoch
        self._owner = None  # a weak reference to the loader reading from it
        self._actors: list = []
        self._retiring: set = set()  # given no new units; killed when their last one is taken
        self._starting: dict = {}  # actor -> its first ping, until a unit's wait has waited for it
        self._config = None  # (dataset, stage, read_batch_size) the actors were made for
        self._session = None  # the Ray session the actors were made in
        self._decisions: list[dict] = []
        self._replaced = 0
        self._waits = collections.deque(maxlen=window)  # (when the wait began, seconds, ready) per unit

    @property
    def owner(self):
        """The DataLoader reading from these readers, or None. Held weakly: a loader dropped without
        close() frees them, and its actors with them (they would hold the cluster's CPUs until the
        garbage collector found the loader)."""
        return None if self._owner is None else self._owner()

    @owner.setter
    def owner(self, loader) -> None:
        self._owner = None if loader is None else weakref.ref(loader)

    # -- actors ----------------------------------------------------------------------------------
    def _ensure(self, dataset, stage, read_batch_size: int, timeout: float) -> None:
        import ray
        from ray.exceptions import RayActorError

        if not ray.is_initialized():
            try:
                ray.init(address=self.address, include_dashboard=False, log_to_driver=False,
                         logging_level=logging.WARNING)  # fmt: skip
            except (ConnectionError, RuntimeError, ValueError) as e:  # ValueError: a ray:// address without ray[client]
                raise BackendUnavailable(f"cannot start or join the Ray cluster {self.address!r}: {e}") from e
        session = _session()
        if self._session != session:  # Ray was shut down since: its actors went with it
            self._forget()
            self._session = session
        config = (dataset, stage, read_batch_size)
        if self._config is None or any(a is not b for a, b in zip(self._config, config)):
            self.close()
            self._config = config
        missing = max(0, self.min_readers - len(self._actors))
        free = _free_cpus(max(missing, self.target - len(self._actors)) * self.num_cpus)
        if missing * self.num_cpus > free:
            total = ray.cluster_resources().get("CPU", 0)
            raise ConfigError(
                f"{missing} readers of {self.num_cpus:g} CPUs do not fit in the {free:g} CPUs free of the "
                f"Ray cluster's {total:g} (the readers of other loaders, or other actors, hold the rest); "
                "close the loaders no longer in use (loader.close()), lower num_cpus or min_readers, or give "
                "Ray more CPUs"
            )
        wanted, self.target = self.target, max(self.min_readers, min(self.target, len(self._actors) + int(free // self.num_cpus)))
        if self.target < wanted:
            log.warning("starting %d readers, not %d: the Ray cluster has %g CPUs free for readers of %g CPUs; "
                        "autoscaling adds more as CPUs free up", self.target, wanted, free, self.num_cpus)  # fmt: skip
        while len(self._actors) < self.target:
            self._actors.append(self._new_actor())
        # one that died idle is no unit's fault; one that does not answer is busy with a unit of an
        # epoch left early: alive, but stuck in it when it takes longer than the timeout
        if starting := [self._starting.pop(a) for a in self._actors if a in self._starting]:
            ray.wait(starting, num_returns=len(starting), timeout=60)  # start-up is no unit's time
        pings = {a.ping.remote(): a for a in self._actors}
        answered, busy = ray.wait(list(pings), num_returns=len(pings), timeout=min(timeout or 60, 60))
        for ref in answered:
            try:
                ray.get(ref)
            except RayActorError:
                self._replace(pings[ref], collections.Counter())
        if timeout:
            for ref in busy:
                log.warning("a reader still busy after %g s (timeout=) with a unit of an earlier loop; "
                            "replacing it", timeout)  # fmt: skip
                self._replace(pings[ref], collections.Counter())

    def _new_actor(self):
        import ray

        dataset, stage, read_batch_size = self._config
        cls = ray.remote(num_cpus=self.num_cpus, max_restarts=0)(_Reader)
        actor = cls.remote(dataset, stage, read_batch_size)
        self._starting[actor] = actor.ping.remote()
        return actor

    def readers(self) -> list:
        """The live reader actors (to inspect, or to kill in a test)."""
        return list(self._actors)

    def close(self) -> None:
        """Stop the readers (they start again on the next iteration)."""
        if not (self._actors or self._retiring):
            return
        import ray

        if self._session == _session():  # else they ended with the session they were made in
            for actor in [*self._actors, *self._retiring]:
                ray.kill(actor)
        self._forget()

    def _forget(self) -> None:
        self._actors, self._retiring, self._starting = [], set(), {}

    def stats(self) -> dict:
        return {"readers": len(self._actors), "replaced": self._replaced, "decisions": list(self._decisions)}

    # -- the slabs ---------------------------------------------------------------------------------
    def slabs(self, tasks, dataset, stage, read_batch_size: int, stats: dict, timeout: float = 0):
        """(task index, the unit's slabs or an error message) in task order.

        A unit whose reader died while reading it is read again by a new reader (up to `retries`
        times); the units queued behind it on that reader go to the others, with no try counted.
        A unit that cannot be read gives its error message (the loader raises or skips it).
        A unit whose result takes more than `timeout` seconds (0: no limit) to come, once the
        client waits for it and its reader has started, is a `DataError` and the readers are closed.
        """
        import ray
        from ray.exceptions import GetTimeoutError, ObjectLostError, RayActorError, RayError, RayTaskError

        self._ensure(dataset, stage, read_batch_size, timeout)
        pending = collections.deque(enumerate(tasks))
        # [index, task, actor, ref, tries, submitted (a count), failure or None], in task order
        flight: collections.deque = collections.deque()
        load = collections.Counter()
        submitted = itertools.count()

        def least_loaded():
            if not self._actors:
                raise ConfigError("the readers were closed while a loader was iterating them; iterate again")
            actor = min(self._actors, key=lambda a: load[a])
            load[actor] += 1
            return actor

        def submit():
            while pending and len(flight) < len(self._actors) * self.prefetch:
                index, task = pending.popleft()
                actor = least_loaded()
                flight.append([index, task, actor, actor.read.remote(task), 0, next(submitted), None])

        def resubmit(entry, tries):
            new = least_loaded()
            entry[2:6] = [new, new.read.remote(entry[1]), tries, next(submitted)]

        def reader_died(dead, error):
            """An actor runs its units one at a time, in the order given: the one it died in is
            the first given to it that has no result; the later ones never ran."""
            self._replace(dead, load)
            looking = True  # for the unit it died in
            for entry in sorted((e for e in flight if e[2] is dead and e[6] is None), key=lambda e: e[5]):
                if looking:
                    try:
                        ray.get(entry[3])
                        continue  # read before the death: its result is kept
                    except (RayActorError, ObjectLostError):
                        pass
                    except RayTaskError:
                        continue  # failed by itself: reported in its turn
                    looking = False
                    if entry[4] >= self.retries:
                        entry[6] = f"its reader died {entry[4] + 1} times while reading it ({type(error).__name__})"
                        continue
                    resubmit(entry, entry[4] + 1)
                else:
                    resubmit(entry, entry[4])

        def done(actor):
            load[actor] -= 1
            if actor in self._retiring and load[actor] <= 0:
                self._retiring.discard(actor)
                ray.kill(actor)

        submit()
        try:
            while flight:
                entry = flight[0]
                index, task, actor, ref, tries, _, failure = entry
                if failure is not None:
                    flight.popleft()
                    yield index, failure
                    submit()
                    continue
                start = time.perf_counter()
                ready = bool(ray.wait([ref], timeout=0)[0])
                if (started := self._starting.pop(actor, None)) is not None and timeout:
                    ray.wait([started], timeout=60)  # a new reader's start-up is not the unit's time
                try:
                    slabs, unit_stats = ray.get(ref, timeout=timeout or None)
                except GetTimeoutError:
                    self.close()  # the stuck reader with the others: the next iteration starts new ones
                    raise DataError(
                        f"{task[1]}: its reader sent nothing in {timeout:g} s (timeout=); check the store (a stalled "
                        "filesystem?) and the decoders, or pass a longer timeout"
                    ) from None
                except RayActorError as e:  # the reader is gone
                    reader_died(actor, e)
                    continue
                except ObjectLostError:  # its result is gone: read it again
                    done(actor)
                    if tries >= self.retries:
                        flight.popleft()
                        yield index, f"its result was lost {tries + 1} times"
                        submit()
                        continue
                    resubmit(entry, tries + 1)
                    continue
                except RayTaskError as e:
                    flight.popleft()
                    done(actor)
                    cause = e.cause if getattr(e, "cause", None) is not None else e
                    yield index, describe(cause)
                    submit()
                    continue
                except RayError as e:
                    raise DataError(f"{task[1]}: the Ray cluster failed while reading it ({type(e).__name__}: {e})") from e
                waited = time.perf_counter() - start
                flight.popleft()
                done(actor)
                for name, value in unit_stats.items():
                    stats[name] = stats.get(name, 0) + value
                yield index, slabs
                self._autoscale(start, waited, ready, load)
                submit()
        finally:  # left early: results still in flight are dropped
            for entry in flight:
                if entry[6] is None:
                    ray.cancel(entry[3])
                done(entry[2])

    def _replace(self, dead, load) -> None:
        """A new reader in place of a dead one (once, whichever of its units noticed first)."""
        import ray

        load.pop(dead, None)
        self._retiring.discard(dead)
        self._starting.pop(dead, None)
        if dead in self._actors:
            ray.kill(dead)  # it may only be unreachable: make sure it is gone
            self._actors.remove(dead)
            self._actors.append(self._new_actor())
            self._replaced += 1
            log.warning("a reader died; replaced it (%d replaced so far)", self._replaced)

    def _autoscale(self, began: float, waited: float, ready: bool, load) -> None:
        import ray

        self._waits.append((began, waited, ready))
        if len(self._waits) < self.window:
            return
        share = sum(w for _, w, _ in self._waits) / max(time.perf_counter() - self._waits[0][0], 1e-9)
        room = ray.available_resources().get("CPU", 0) >= self.num_cpus
        if share > self.scale_up_wait and len(self._actors) < self.max_readers and room:
            self._actors.append(self._new_actor())
            self._decide("up", share)
        elif all(r for _, _, r in self._waits) and len(self._actors) > self.min_readers:
            idle = min(self._actors, key=lambda a: load[a])
            self._actors.remove(idle)  # no new units; it goes when its last one is taken
            self._starting.pop(idle, None)
            if load[idle] > 0:
                self._retiring.add(idle)
            else:
                ray.kill(idle)
            self._decide("down", share)

    def _decide(self, direction: str, share: float) -> None:
        self.target = len(self._actors)
        decision = {"time": time.time(), "direction": direction, "readers": len(self._actors),
                    "wait_share": round(share, 3)}  # fmt: skip
        self._decisions.append(decision)
        self._waits.clear()
        log.info("readers scaled %s to %d (the client waited %.0f%% of its time)", direction, len(self._actors),
                 100 * share)  # fmt: skip
