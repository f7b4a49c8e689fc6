"""`DataLoader`: worker processes read and shrink slabs; the client rebatches and runs the plan."""

from __future__ import annotations

import atexit
import collections
import copy
import itertools
import logging
import math
import multiprocessing as mp
import os
import queue
import secrets
import time
import weakref
from multiprocessing.reduction import ForkingPickler

import numpy as np

from .._checks import ensure_integer, is_integer, is_real
from ..batch import Batch
from ..errors import ConfigError, DataError, RemoteTraceback, describe
from ..reader import Dataset
from ..storage.iostats import CountingFileSystem
from ..transforms.pipeline import Pipeline
from ..transforms.plan import resolve_device
from ._slabs import Slab, Staged, stage, unlink_all
from ._worker import BETWEEN_UNITS, NOT_STARTED, read_unit
from ._worker import main as worker_main

__all__ = ["DataLoader"]

log = logging.getLogger("gpupre")

STATE_VERSION = 4  # 3: shuffled unit orders seeded by (seed, epoch); 4: batch_size, drop_last and on_bad_unit kept
CURSOR = ("epoch", "delivered", "steps")  # where an epoch stands; the rest of a state is how the loader was built
RETRIES = 2  # times a unit is read again after a local worker died in it (RayReaders' default `retries`)


class DataLoader:
    """Iterates ready-to-train `Batch`es of a `Dataset`, in place of torch's DataLoader.

    Worker processes read work units (row groups) with projection in slabs of read_batch_size
    rows, run the pipeline's host stage, and hand the slabs over in shared memory. The client
    takes slabs in a fixed order, cuts them into batches of batch_size rows (client-side
    rebatching), and runs the device stage: on the GPU (the batch copied once, pinned) or with
    numba on the host. Batches hold torch tensors: `batch.dense` is [D, N] (a model takes
    `batch.dense.T`), `batch.sparse` the KeyedJaggedTensor layout (`batch.to_torchrec()`).

    Args:
        dataset: a `gp.Dataset` (its projection, label and pass-through columns are read), or a
            reader tier over one (`gp.distributed.RayReaders`), which then reads in place of
            the worker processes.
        batch_size: rows per batch.
        pipeline: a fitted `gp.Pipeline`, or None to deliver the features as read.
        device: "cpu", "cuda", "cuda:N" or "auto".
        shuffle, seed: shuffle the order of units and the rows within each slab, per epoch.
        drop_last: drop the last, partial batch.
        num_workers: worker processes (0: read in this process).
        read_batch_size: rows per slab (bounds a worker's memory); default min(batch_size, 8192).
        prefetch: units read ahead per worker; on a GPU also the batches transferred ahead.
        rank, world_size: this trainer's disjoint share; every rank gets the same number of steps.
        label: the label column(s) delivered as `batch.labels` (() for none); None keeps the
            dataset's.
        passthrough: columns delivered untouched in `batch.extras` (row ids, timestamps); None
            keeps the dataset's.
        on_bad_unit: "raise" (a unit that cannot be read stops the epoch with a `DataError`
            naming it) or "skip" (it is left out and listed in `stats()["skipped_units"]`). A
            worker process that dies while reading a unit (a crash in a decoder, not a Python
            error) is replaced, with the others, and the unit read again from where its delivered
            rows end, up to 2 more times (as RayReaders' default `retries`); a unit that kills its
            worker 3 times is a bad unit. With
            world_size > 1, a rank that skipped rows reads on into its share and then again from
            its start, so that it still takes as many steps as the other ranks (trainers that
            synchronize every step would wait forever otherwise); `stats()["rows_repeated"]`
            counts the rows it delivered twice, as torch's DistributedSampler pads a share.
        timeout: seconds without progress (no slab read by a worker process; no unit's result
            from a Ray reader) before the epoch stops with a `DataError` naming the units being
            read (a stalled store, a hung decoder); 0, as in torch, waits for ever. Start-up
            does not count. Needs workers or readers: with num_workers=0 the read runs here.

    Raises:
        ConfigError: an argument is out of range.
        SchemaError: a label or pass-through column does not exist.
    """

    def __init__(self, dataset: Dataset, batch_size: int, pipeline=None, device: str = "auto", shuffle: bool = False,
                 seed: int = 0, drop_last: bool = False, num_workers: int | None = None,
                 read_batch_size: int | None = None, prefetch: int = 2, rank: int = 0, world_size: int = 1,
                 label=None, passthrough=None, on_bad_unit: str = "raise", timeout: float = 0):  # fmt: skip
        self._source = None  # a reader tier elsewhere (gp.distributed.RayReaders) instead of local workers
        if getattr(dataset, "is_slab_source", False):
            if dataset.owner is not None:
                raise ConfigError("these readers already serve another DataLoader; give each loader its own")
            self._source, dataset = dataset, dataset.dataset  # claimed at the end, once all is valid
        if not isinstance(dataset, Dataset):
            raise ConfigError(f"dataset must be a gp.Dataset, got {type(dataset).__name__}; wrap paths in gp.Dataset(path)")
        self.batch_size = ensure_integer(batch_size, "batch_size")
        self.read_batch_size = ensure_integer(min(batch_size, 8192) if read_batch_size is None else read_batch_size,
                                              "read_batch_size")  # fmt: skip
        self.num_workers = min(4, os.cpu_count() or 1) if num_workers is None else ensure_integer(num_workers, "num_workers", 0)
        self.prefetch = ensure_integer(prefetch, "prefetch")
        if not (is_integer(world_size) and world_size > 0 and is_integer(rank) and 0 <= rank < world_size):
            raise ConfigError(f"rank={rank!r} must be in [0, world_size={world_size!r}) with world_size >= 1")
        for name, value in (("shuffle", shuffle), ("drop_last", drop_last)):
            if not isinstance(value, (bool, np.bool_)):  # bool("false") is True: a string from a config would shuffle
                raise ConfigError(f"{name}={value!r} must be True or False")
        if on_bad_unit not in ("raise", "skip"):
            raise ConfigError(f"on_bad_unit={on_bad_unit!r} must be 'raise' or 'skip'")
        if not (is_real(timeout) and 0 <= timeout < math.inf):
            raise ConfigError(f"timeout={timeout!r} must be a number of seconds >= 0 (0 waits for ever)")
        if timeout and self._source is None and self.num_workers == 0:
            raise ConfigError("timeout needs worker processes, as reads with num_workers=0 run in this process; "
                              "pass num_workers >= 1, or leave timeout at 0")  # fmt: skip
        self.timeout = float(timeout)
        if pipeline is not None and not isinstance(pipeline, Pipeline):
            raise ConfigError(
                f"pipeline must be a gp.Pipeline or None, got {type(pipeline).__name__}; wrap the ops: "
                "gp.Pipeline([...]).fit(dataset)"
            )
        if label is not None or passthrough is not None:
            dataset = dataset.with_columns(label, passthrough)
        self.dataset, self.shuffle, self.drop_last = dataset, bool(shuffle), bool(drop_last)
        self.seed = ensure_integer(seed, "seed", 0)
        self._local = copy.copy(dataset)  # in-process reads (num_workers=0), counted
        self._local.filesystem = CountingFileSystem(dataset.filesystem)
        self.rank, self.world_size, self.on_bad_unit = int(rank), int(world_size), on_bad_unit
        self.device = resolve_device(device)
        if self.device.startswith("cuda"):
            from ..transforms.cuda import torch_device

            torch_device(self.device)  # a GPU is there, with pipeline or without
        self.plan = None if pipeline is None else pipeline.compile(dataset.schema, self.device, True, dataset.dedup)
        # on the CPU the whole plan runs in the workers, in parallel (it works row by row, so per
        # slab is the same as per batch); with a GPU they run its host stage only
        on_cpu = not self.device.startswith("cuda")
        self._stage = None if self.plan is None else (self.plan, on_cpu)
        self._slab_schema = self.plan.output_schema if (self.plan and on_cpu) else dataset.schema
        self._streams = None if on_cpu else _streams(self.device)  # (copy, compute)
        self._ahead = 0 if on_cpu else self.prefetch - 1  # batches on the device beyond the delivered one
        self.epoch, self.delivered = 0, 0  # rows of this epoch already handed to the consumer, and gaps
        self.steps = 0  # batches of this epoch already handed to the consumer
        self._workers, self._generation = [], 0
        self._shm_prefix = f"gpupre_{secrets.token_hex(4)}_"  # of its workers' slab segments
        self._stats = _new_stats()
        if self._source is not None:
            self._source.owner = self
        if self._source is None and (units := len(self._units(0, rank))) < self.num_workers:
            log.warning(
                "gp.DataLoader: rank %d's share has %d work units (row groups) for num_workers=%d, so only %d "
                "workers read and the rest stay idle; write the data in smaller row groups "
                "(gp.storage.write_table(..., row_group_rows=...)) or use fewer workers",
                rank, units, self.num_workers, units,
            )  # fmt: skip

    # -- shares and steps ------------------------------------------------------------------------
    def _units(self, epoch: int, rank: int):
        seed = (self.seed, epoch) if self.shuffle else None  # seed + epoch would give seed 1's epoch 0 again as seed 0's epoch 1
        return self.dataset.units(rank, self.world_size, seed=seed)

    def _rows_this_epoch(self, epoch: int) -> tuple[int, int]:
        """(steps, rows this rank delivers): every rank takes the same number of steps."""
        rows = [sum(u.num_rows for u in self._units(epoch, r)) for r in range(self.world_size)]
        if min(rows) == 0 < max(rows):
            raise ConfigError(
                f"{rows.count(0)} of world_size={self.world_size} ranks get no rows of epoch {epoch} "
                f"({len(self.dataset.units())} work units, row groups, to share), so every rank would stop at once; "
                "write the data in more row groups (gp.storage.write_table(..., row_group_rows=...)) or use fewer ranks"
            )
        per_rank = [r // self.batch_size if self.drop_last else math.ceil(r / self.batch_size) for r in rows]
        steps = min(per_rank)
        if steps == 0 < max(rows):  # drop_last, and a rank's share (or the only rank's) is under one batch
            raise ConfigError(
                f"with drop_last, {per_rank.count(0)} of world_size={self.world_size} ranks get fewer than "
                f"batch_size={self.batch_size} rows of epoch {epoch} (the fewest: {min(rows)}), so every rank would "
                "take no step; use a smaller batch_size, drop_last=False, more row groups or fewer ranks"
            )
        return steps, min(rows[self.rank], steps * self.batch_size)

    @property
    def _pads(self) -> bool:
        """A rank that skips a unit repeats rows to take as many steps as the others (its cursor
        then runs on over repeated passes of its share)."""
        return self.world_size > 1 and self.on_bad_unit == "skip"

    def __len__(self) -> int:
        return self._rows_this_epoch(self.epoch)[0]

    # -- state -----------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Where the epoch stands: restoring it delivers every remaining row once, no row twice."""
        return {"version": STATE_VERSION, "epoch": self.epoch, "delivered": self.delivered, "steps": self.steps,
                "seed": self.seed, "batch_size": self.batch_size, "drop_last": self.drop_last, "on_bad_unit": self.on_bad_unit,
                "shuffle": self.shuffle, "rank": self.rank, "world_size": self.world_size,
                "read_batch_size": self.read_batch_size, "units": len(self.dataset.units())}  # fmt: skip

    def load_state_dict(self, state: dict) -> None:
        """Continue from `state` (taken by `state_dict()` of a loader over the same data and shares).

        Raises:
            ConfigError: the state is from a loader built otherwise (dataset, seed, shuffle, share,
                batch_size, drop_last, on_bad_unit), or its cursor is not one of that epoch.
        """
        if not isinstance(state, dict):
            raise ConfigError(f"load_state_dict takes the dict that state_dict() returned, got {type(state).__name__}")
        mine = self.state_dict()
        for key in (k for k in mine if k not in CURSOR):  # what the loader was built with, version first
            if state.get(key) != mine[key]:
                raise ConfigError(
                    f"state_dict {key}={state.get(key)!r} differs from this loader's {mine[key]!r}; "
                    "restore into a loader built with the same dataset and arguments"
                )
        epoch, delivered, steps = (ensure_integer(state.get(k), f"state_dict {k}", 0) for k in CURSOR)
        most, target = self._rows_this_epoch(epoch)
        for key, value, limit in (("steps", steps, most), ("delivered", delivered, None if self._pads else target)):
            if limit is not None and value > limit:
                raise ConfigError(
                    f"state_dict {key}={value} is more than epoch {epoch}'s {limit} {'steps' if key == 'steps' else 'rows'}; "
                    "restore the dict that state_dict() returned, unchanged"
                )
        if (epoch, delivered, steps) != (self.epoch, self.delivered, self.steps):
            self.epoch, self.delivered, self.steps = epoch, delivered, steps
            self._generation += 1  # a loop begun before goes no further: it would move this cursor from its own

    def stats(self) -> dict:
        """Rows/s, bytes read and staged (what goes to a GPU), the consumer's wait, time per stage (s)."""
        s = dict(self._stats)
        wall = s.pop("wall_s")
        s["rows_per_s"] = s["rows"] / wall if wall else 0.0
        s["skipped_units"] = list(s["skipped_units"])
        if self._source is not None:
            s["readers"] = self._source.stats()
        return s

    # -- iteration -------------------------------------------------------------------------------
    def __iter__(self):
        steps, target = self._rows_this_epoch(self.epoch)
        if 0 < steps <= self.steps:  # the epoch's last batch went out, but its iterator was not run to its end
            self.epoch, self.delivered, self.steps = self.epoch + 1, 0, 0
            _, target = self._rows_this_epoch(self.epoch)
        epoch, cursor = self.epoch, self.delivered
        units = self._units(epoch, self.rank)
        self._generation += 1
        generation = self._generation
        # rows still to deliver; without padding a skipped unit's rows count as delivered
        pad = self._pads
        remaining = target - min(target, self.steps * self.batch_size) if pad else target - cursor
        start = time.perf_counter()
        in_flight = collections.deque()  # (batch, cursor advance): staged and sent to the device
        try:
            slabs = self._passes(units, cursor, epoch, generation, pad)
            for staged, advance in self._rebatch(slabs, remaining, pad):
                in_flight.append((self._device_stage(staged), advance))
                if len(in_flight) > self._ahead:
                    yield self._deliver(*in_flight.popleft(), start, generation)
            while in_flight:
                yield self._deliver(*in_flight.popleft(), start, generation)
        finally:
            self._stats["wall_s"] = time.perf_counter() - start
        self._ensure_current(generation)  # else its end would end the epoch of the newer loop
        self._stats["rows_left_for_balance"] = max(0, sum(u.num_rows for u in units) - target)
        self.epoch, self.delivered, self.steps = epoch + 1, 0, 0

    def _passes(self, units, cursor: int, epoch: int, generation: int, pad: bool):
        """Slabs of the rank's share from `cursor` on; with `pad`, then of the share again, and again.

        The cursor counts rows and gaps over the passes: row r of pass p is at p * share + r, so
        a resumed epoch starts in the pass it left.
        """
        share = sum(u.num_rows for u in units)
        first, skip = divmod(cursor, share) if share else (0, 0)
        for number in itertools.count(first):
            if number > first and not pad:
                return
            if number > 0:
                yield _RESTART
            tasks, seen = [], 0
            for position, unit in enumerate(units):
                if seen + unit.num_rows > skip:
                    shuffle = (self.seed, epoch, position) if self.shuffle else None
                    key = (generation, number * len(units) + position)
                    tasks.append((key, unit, max(0, skip - seen), shuffle, (self.seed, epoch)))
                seen += unit.num_rows
            rows = 0
            for slab in self._slabs(tasks, generation):
                rows += getattr(slab, "num_rows", 0)
                yield slab
            if pad and rows == 0 and skip == 0:
                raise DataError(
                    f"rank {self.rank} of {self.world_size} has no readable rows left (skipped units: "
                    f"{self._stats['skipped_units']}), so it cannot take as many steps as the other ranks"
                )
            skip = 0

    def _ensure_current(self, generation: int) -> None:
        """Raise if a newer loop began, or load_state_dict moved the cursor, since this loop's start."""
        if self._generation != generation:
            raise ConfigError(
                "a newer iteration of this DataLoader started (or load_state_dict moved its cursor), so this "
                "one cannot go on; iterate one at a time"
            )

    def _deliver(self, batch: Batch, advance: int, start: float, generation: int) -> Batch:
        # checked here, not only where slabs are taken: a batch may come from slabs already held
        self._ensure_current(generation)
        if self._streams is not None:  # the consumer's stream waits for the batch's work
            import torch

            consumer = torch.cuda.current_stream(self.device)
            consumer.wait_stream(self._streams[1])
            batch.record_stream(consumer)
        self.delivered += advance  # rows delivered, plus rows of skipped units before them
        self.steps += 1
        self._stats["rows"] += batch.num_rows
        self._stats["batches"] += 1
        self._stats["wall_s"] = time.perf_counter() - start
        return batch

    def _device_stage(self, staged: Staged) -> Batch:
        """The batch on its device: one transfer on the copy stream, the plan on the compute stream."""
        t = time.perf_counter()
        if self._streams is None:
            batch = staged.batch()
        else:
            import torch

            copy, compute = self._streams
            with torch.cuda.stream(copy):
                buffer = staged.buffer.to(self.device, non_blocking=True)
            compute.wait_stream(copy)
            with torch.cuda.stream(compute):
                buffer.record_stream(compute)
                batch = staged.batch(buffer)
                if self.plan is not None:
                    batch = self.plan.run(batch, host_stage=False).to_torch()
        self._stats["device_s"] += time.perf_counter() - t
        return batch

    def _rebatch(self, slabs, remaining: int, pad: bool):
        """(staged batch, cursor advance) of batch_size rows (the last may be smaller), in order.

        The rows of a batch are gathered from their slabs straight into one staging buffer. A
        `_Gap` (the unread rows of a skipped unit) delivers nothing but moves the cursor, so
        that a resumed epoch does not read those rows again; without `pad` its rows also count
        against `remaining`.
        """
        pieces, filled, gap, held = [], 0, 0, []  # held: slabs with rows in pieces or still unread
        repeating = False
        if remaining <= 0:
            return
        try:
            for slab in slabs:
                if slab is _RESTART:
                    repeating = True
                    continue
                if isinstance(slab, _Gap):
                    rows = slab.rows if pad else min(slab.rows, remaining)
                    gap, remaining = gap + rows, remaining - (0 if pad else rows)
                    if remaining == 0:
                        break
                    continue
                held.append(slab)
                at = 0
                while at < slab.num_rows and remaining > 0:
                    take = min(slab.num_rows - at, self.batch_size - filled, remaining)
                    if repeating:
                        self._stats["rows_repeated"] += take
                    pieces.append((slab, at, at + take))
                    at, filled, remaining = at + take, filled + take, remaining - take
                    if filled == self.batch_size or (remaining == 0 and not self.drop_last):
                        yield self._gather(pieces), filled + gap
                        pieces, filled, gap = [], 0, 0
                        _release(held[:-1] if at < slab.num_rows else held)
                        held = held[-1:] if at < slab.num_rows else []
                if remaining == 0:
                    return
            if pieces and not self.drop_last:
                yield self._gather(pieces), filled + gap
        finally:  # also when the consumer stops early
            _release(held)

    def _gather(self, pieces) -> Staged:
        t = time.perf_counter()
        staged = stage(pieces, self._slab_schema, pin=self._streams is not None)
        self._stats["rebatch_s"] += time.perf_counter() - t
        self._stats["bytes_staged"] += staged.buffer.numel()  # what one batch's transfer moves
        return staged

    # -- the slab source -----------------------------------------------------------------------
    def _slabs(self, tasks, generation: int):
        """Host slabs of `tasks` in task order (workers may finish them in any order)."""
        if self._stage is not None and (self._stage[1] or self.plan.host is not None):
            from ..transforms.cpu import warm_up

            warm_up()  # the readers run numba kernels: compiled here once, not once per reader
        if self._source is not None:
            yield from self._from_source(tasks, generation)
            return
        if self.num_workers == 0:
            for task in tasks:
                yield from self._read_here(task)
            return
        yield from self._from_workers(tasks, generation)

    def _from_source(self, tasks, generation: int):
        wait = time.perf_counter()
        for index, slabs in self._source.slabs(tasks, self.dataset, self._stage, self.read_batch_size, self._stats,
                                               self.timeout):  # fmt: skip
            self._stats["wait_s"] += time.perf_counter() - wait
            self._ensure_current(generation)
            if isinstance(slabs, str):  # the unit could not be read: nothing of it was delivered
                _, unit, skip = tasks[index][:3]
                self._bad_unit(unit, slabs)
                yield _Gap(unit.num_rows - skip)
            else:
                yield from slabs
            wait = time.perf_counter()

    def _read_here(self, task):
        rows = 0
        try:
            wait = time.perf_counter()
            for batch, stats in read_unit(self._local, self._stage, task, self.read_batch_size):
                self._stats["wait_s"] += time.perf_counter() - wait
                for name, value in stats.items():
                    self._stats[name] += value
                self._stats["bytes_read"] += self._local.filesystem.bytes_read
                self._local.filesystem.reset()
                rows += batch.num_rows
                yield batch
                wait = time.perf_counter()
        except Exception as e:  # noqa: BLE001 - named, then raised or skipped
            self._bad_unit(task[1], describe(e))
            yield _Gap(task[1].num_rows - task[2] - rows)

    def _from_workers(self, tasks, generation: int):
        self._start_workers()
        self._current_generation.value = generation
        pending = list(reversed(tasks))
        done, slabs, gaps = {}, {}, {}
        order = [t[0] for t in tasks]
        units = {t[0]: t[1] for t in tasks}
        rows_of = {t[0]: t[1].num_rows - t[2] for t in tasks}
        deaths = collections.Counter()  # per unit: workers that died reading it
        next_at, next_slab, dispatched = 0, 0, 0
        window = self.num_workers * self.prefetch  # units read ahead of the one being delivered

        def dispatch():
            nonlocal dispatched
            while pending and dispatched < next_at + window:
                self._task_queue.put(pending.pop())
                dispatched += 1

        def restart(dead):
            """Replace the workers after deaths in units; the dispatched units not done are read
            again, the one being delivered from its first row not yet delivered. A unit whose
            every row came (its worker died after the last slab) is done: that death is not counted."""
            nonlocal next_slab
            self.close()  # all of them: a dead process may hold a queue's lock, so the queues go too
            unfinished = {key for key in order[next_at:dispatched] if key not in done}
            for key in unfinished & {key for _, _, key in dead}:
                received = [slab for (k, _), slab in slabs.items() if k == key]
                if sum(slab.num_rows for slab in received) == rows_of[key]:  # died after the last slab
                    done[key] = (next_slab if key == order[next_at] else 0) + len(received)
                    unfinished.discard(key)
            for at in [at for at in slabs if at[0] not in done]:
                slabs.pop(at).release()
            for index, code, key in (d for d in dead if d[2] in unfinished):  # else it died after its unit
                deaths[key] += 1
                if deaths[key] > RETRIES:
                    why = "a crash in reading or decoding, not a Python error; check memory and the file"
                    self._bad_unit(units[key], f"its worker died {deaths[key]} times while reading it "
                                               f"(last: worker {index}, exit code {code}), {why}")  # fmt: skip
                    gaps[key], done[key] = True, next_slab if key == order[next_at] else 0
            names = ", ".join(str(units.get(key, "a unit an earlier loop read ahead")) for _, _, key in dead)
            log.warning("gp.DataLoader: a worker died reading %s; replaced the workers "
                        "(a unit is read up to %d times)", names, RETRIES + 1)  # fmt: skip
            self._start_workers()
            self._current_generation.value = generation
            for at in range(next_at, dispatched):
                key, unit, skip, *rest = tasks[at]
                if key not in done:
                    if at == next_at:  # the rows it already delivered are skipped, as on resume
                        skip, next_slab = unit.num_rows - rows_of[key], 0
                    self._task_queue.put((key, unit, skip, *rest))

        dispatch()
        try:
            while next_at < len(order):
                self._ensure_current(generation)
                key = order[next_at]
                if (key, next_slab) in slabs:
                    slab = slabs.pop((key, next_slab))
                    rows_of[key] -= slab.num_rows
                    yield slab
                    next_slab += 1
                    continue
                if key in done:
                    if done.pop(key) != next_slab:
                        raise DataError(f"{units[key]}: a slab message was lost between the worker and the loader")
                    if key in gaps:
                        yield _Gap(rows_of[key])
                    next_at, next_slab = next_at + 1, 0
                    dispatch()
                    continue
                wait = time.perf_counter()
                message = self._receive(units)
                self._stats["wait_s"] += time.perf_counter() - wait
                kind, mkey = message[0], message[1]
                if kind == "died":
                    restart(message[1])
                    continue
                if mkey[0] != generation:  # left over from an earlier iteration
                    if kind == "slab":
                        Slab(message[3], self._slab_schema).release()
                    continue
                if kind == "slab":
                    slabs[(mkey, message[2])] = Slab(message[3], self._slab_schema)
                    for name, value in message[4].items():
                        self._stats[name] += value
                elif kind == "done":
                    done[mkey] = message[2]
                else:  # "error": the slabs sent before it still count
                    self._bad_unit(units[mkey], message[2], message[3])
                    gaps[mkey] = True
                    done[mkey] = message[4]
        finally:
            for slab in slabs.values():
                slab.release()

    def _receive(self, units: dict):
        """The next message, or ("died", [(worker, exit code, unit key)]) when workers died in units
        (of this loop, or read ahead by an earlier one that was left)."""
        waiting = (time.monotonic(), list(self._progress))
        while True:
            try:
                return self._result_queue.get(timeout=min(0.5, self.timeout or 0.5))
            except queue.Empty:
                if not self._workers:
                    raise ConfigError(
                        "this DataLoader was closed during an iteration, which cannot go on; iterate it again "
                        "(a new iteration restarts the workers and continues where the epoch stands)"
                    ) from None
                dead = [(index, process.exitcode, tuple(self._current[2 * index : 2 * index + 2]))
                        for index, process in enumerate(self._workers) if not process.is_alive()]  # fmt: skip
                for index, code, key in dead:
                    if key[1] < 0:  # before reading anything or between units: no unit to read again
                        self.close()
                        self._worker_died(index, code, key)
                if dead:
                    return ("died", dead)
                if self.timeout:
                    waiting = self._check_timeout(waiting, units)

    def _check_timeout(self, waiting: tuple, units: dict) -> tuple:
        """The wait, (since when, slabs read by then), which starts again whenever a worker reads
        a slab (one it skips on resume too) and while no worker has taken a unit (start-up); or a
        DataError naming what each worker reads once it has lasted `timeout` seconds."""
        keys = [tuple(self._current[2 * index : 2 * index + 2]) for index in range(self.num_workers)]
        read = list(self._progress)
        if read != waiting[1] or all(key[1] == NOT_STARTED for key in keys):
            return time.monotonic(), read
        if time.monotonic() - waiting[0] < self.timeout:
            return waiting
        doing = {NOT_STARTED: "was starting", BETWEEN_UNITS: "had no unit"}
        states = [f"worker {i} {doing[key[1]] if key[1] in doing else f'was reading {units.get(key, key)}'}"
                  for i, key in enumerate(keys)]  # fmt: skip
        for process, key in zip(self._workers, keys):
            if key[1] >= 0:  # stuck in its unit: stopped at once, not given close()'s 10 s to finish
                process.terminate()
        self.close()
        raise DataError(
            f"no data came from the loader's workers in {self.timeout:g} s (timeout=): {', '.join(states)}; check "
            "the store (a stalled filesystem?) and the decoders, or pass a longer timeout"
        )

    @staticmethod
    def _worker_died(index: int, code, key):
        """A worker died outside any unit of this iteration: no unit to read again or skip."""
        if key[1] == NOT_STARTED:
            raise DataError(
                f"loader worker {index} died (exit code {code}) before reading anything; workers are spawned, "
                "so a script must start its work under `if __name__ == '__main__':` (see the worker's error above)"
            )
        raise DataError(f"loader worker {index} died (exit code {code}) between units; check memory (see its error above)")

    def _bad_unit(self, unit, message: str, remote_traceback: str = "") -> None:
        """Skip the unit that could not be read, or raise (in an `except` block: chained to its error)."""
        message = f"{unit}: " + message.removeprefix(f"{unit}: ")  # said once, though the reader may say it too
        if self.on_bad_unit == "skip":
            self._stats["skipped_units"].append(message)
            return
        self.close()
        error = DataError(f"{message}; pass on_bad_unit='skip' to leave bad units out")
        if remote_traceback:
            raise error from RemoteTraceback(remote_traceback)
        raise error

    # -- workers -------------------------------------------------------------------------------
    def _start_workers(self) -> None:
        if self._workers and all(p.is_alive() for p in self._workers):
            return
        self.close()
        try:  # once for every worker, and here: a queue's feeder thread would only print the error, and the
            # workers would wait for ever
            setup_bytes = bytes(ForkingPickler.dumps((self.dataset, self._stage)))  # a memoryview does not pickle
        except Exception as e:  # noqa: BLE001 - any pickling failure, named
            raise ConfigError(
                f"the dataset and pipeline go to the worker processes pickled, and cannot be ({describe(e)}); "
                "pass a filesystem= (and ops) that pickle, or num_workers=0 to read in this process"
            ) from e
        context = mp.get_context("spawn")  # fork would copy numba's and torch's threads
        self._task_queue, self._result_queue = context.Queue(), context.Queue()
        # The dataset and pipeline go through a queue, not the process arguments: a spawned process
        # runs the script's main module before it reads its arguments, and the start of one with
        # more than a pipe's buffer of them waits for that, one worker after another (for ever,
        # when the script lacks its `__main__` guard and the worker fails there).
        setup = self._setup_queue = context.Queue()  # kept: a worker maps its locks only once it has started
        setup.cancel_join_thread()  # a worker that dies first leaves its copy unread
        self._current_generation = context.Value("q", 0, lock=False)  # workers skip older tasks
        self._current = context.Array("q", [0, NOT_STARTED] * self.num_workers, lock=False)  # the unit each reads
        self._progress = context.Array("q", self.num_workers, lock=False)  # slabs each has read
        threads = max(1, (os.cpu_count() or 1) // self.num_workers)
        for index in range(self.num_workers):
            process = context.Process(
                target=worker_main,
                args=(setup, self.read_batch_size, self._task_queue, self._result_queue, index, threads,
                      self._current_generation, self._current, self._progress, self._shm_prefix),
                daemon=True,
                name=f"gpupre-loader-{index}",
            )
            process.start()
            self._workers.append(process)
            setup.put(setup_bytes)
        _WITH_WORKERS.add(self)

    def close(self) -> None:
        """Stop the worker processes or readers (they start again on the next iteration)."""
        if self._source is not None:
            self._source.close()
        workers, self._workers = self._workers, []
        if not workers:
            return
        self._current_generation.value = -1  # queued tasks are skipped, not read
        for _ in workers:
            self._task_queue.put(None)
        deadline = time.monotonic() + 10
        while any(p.is_alive() for p in workers) and time.monotonic() < deadline:
            self._drain(timeout=0.1)  # a worker cannot exit while its messages are unread
        for process in workers:
            if process.is_alive():
                process.terminate()
            process.join(timeout=1)
            if process.is_alive():  # stopped, or ignoring SIGTERM
                process.kill()
                process.join(timeout=1)
        self._drain(timeout=0.0)
        unlink_all(self._shm_prefix)  # slabs whose messages died with their worker, or never went out

    def _drain(self, timeout: float) -> None:
        """Free the slabs left in the result queue."""
        while True:
            try:
                message = self._result_queue.get(timeout=timeout) if timeout else self._result_queue.get_nowait()
            except (queue.Empty, OSError, ValueError, EOFError):
                return
            if message[0] == "slab":
                Slab(message[3], self._slab_schema).release()

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


_WITH_WORKERS: weakref.WeakSet = weakref.WeakSet()


@atexit.register  # before multiprocessing's own exit handler kills the workers with slabs unread
def _close_at_exit() -> None:
    for loader in list(_WITH_WORKERS):
        loader.close()


def _streams(device: str):
    import torch

    return torch.cuda.Stream(device), torch.cuda.Stream(device)


def _release(slabs) -> None:
    for slab in slabs:
        if isinstance(slab, Slab):
            slab.release()


_RESTART = object()  # marks where the share starts again (a rank with skipped rows pads its steps)


class _Gap:
    """The rows of a skipped unit that were not delivered: the cursor moves past them."""

    def __init__(self, rows: int):
        self.rows = max(0, rows)


def _new_stats() -> dict:
    return {"rows": 0, "batches": 0, "bytes_read": 0, "bytes_staged": 0, "wait_s": 0.0, "read_s": 0.0, "host_s": 0.0,
            "rebatch_s": 0.0, "device_s": 0.0, "wall_s": 0.0, "skipped_units": [], "rows_left_for_balance": 0, "rows_repeated": 0}  # fmt: skip
