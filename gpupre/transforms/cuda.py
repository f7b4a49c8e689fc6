"""The CUDA executor: a `Plan`'s device stage as a few fused kernels from kernels/, through CuPy.

One batch costs, whatever the number of features::

    dense_pass      every dense program (plan.dense)                     1 launch
    per sparse level:
      level_lengths every app's output lengths (and the input lengths    1 launch
                    the first time, so one scan yields both offsets)
      scan          CUB's inclusive scan, in place                       SCAN_LAUNCHES
      level_values  every app's output ids and weights                   1 launch
    dense_pass      the programs over OverlapCount outputs (plan.derived) 1 launch

Between the scan and the values pass of each level the host reads the level's total (one small
device-to-host copy and a sync) to size the output. Buffers come from torch's caching allocator,
kernels run on torch's current stream, and the results are torch tensors (no copies).
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import numpy as np

from ..batch import Batch
from ..errors import BackendUnavailable, DataError, KernelError
from ..schema import SCORED
from .plan import S_INTERSECT, S_OVERLAP, S_UNION, DenseProgram, Plan, SparseLevel, check_total, cross_too_long, output_batch

__all__ = ["KERNELS", "SCAN_LAUNCHES", "CudaExecutor"]

log = logging.getLogger("gpupre")

KERNELS = Path(__file__).resolve().parents[2] / "kernels"
THREADS = 256  # threads per block; also the rows of a sparse tile (ROWS in sparse.cu)
MAX_GRID_Y = 65_535
MAX_SCAN = 2**31 - 1
DENSE_ROWS_PER_THREAD = 8  # as kernels/dense.cu
SCAN_LAUNCHES = 2  # CUB's DeviceScan: a tile-state init kernel and the single-pass scan
SET_KINDS = (S_INTERSECT, S_UNION, S_OVERLAP)
ERR_NEGATIVE_LENGTH, ERR_TOO_LONG = 1, 2
POISON = False  # tests: fill every output with garbage first, so that unwritten elements show

_modules: dict = {}  # device index -> {kernel name: cupy function}


def available() -> bool:
    """A CUDA GPU is visible to torch and CuPy is installed."""
    try:
        import cupy  # noqa: F401
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def torch_device(device: str):
    """device ("cuda" or "cuda:N") as a torch.device with its index, checked against the GPUs torch sees.

    Raises:
        BackendUnavailable: torch sees no CUDA GPU, or not that many.
    """
    import torch

    if not torch.cuda.is_available():
        raise BackendUnavailable(
            f"device={device!r}: no CUDA GPU is visible to torch (torch.cuda.is_available() is False); "
            "use device='cpu' (or 'auto', which falls back to it)"
        )
    found = torch.device(device)
    if found.index is None:
        found = torch.device("cuda", torch.cuda.current_device())
    if found.index >= torch.cuda.device_count():
        raise BackendUnavailable(f"device={device!r}: only {torch.cuda.device_count()} CUDA devices are visible")
    return found


class CudaExecutor:
    """Runs a `Plan` on one CUDA device; host batches go through the host stage first."""

    name = "cuda"

    def __init__(self, device: str = "cuda"):
        import torch

        if torch.cuda.is_available():  # else torch_device says so
            try:
                import cupy  # noqa: F401
            except ImportError as e:
                raise BackendUnavailable(
                    f"device={device!r} needs CuPy to launch its kernels ({e}); install it with "
                    "`pip install 'gpupre[gpu]'` (cupy-cuda13x; cupy-cuda12x for CUDA 12 drivers)"
                ) from e
        self.__setstate__({"device": torch_device(device)})

    def __getstate__(self) -> dict:
        """Only the device: a copy (in a loader's worker, which runs the host stage only) holds
        no GPU memory, and uploads its own tables if it ever runs."""
        return {"device": self.device}

    def __setstate__(self, state: dict) -> None:
        self.device = state["device"]
        self._tables: dict = {}  # id(stage table) -> device copies, uploaded once per plan
        self._status = None
        self._pinned = None

    # -- the interface every executor has ------------------------------------------------------
    def launches(self, plan: Plan) -> int:
        count = 0 if plan.dense.identity else 1
        known = False  # the input offsets of the next level are known
        for index, level in enumerate(plan.levels):
            if self._skips(plan, index):
                continue
            if not known and _has_set_ops(level):
                count += 1 + SCAN_LAUNCHES
            count += 2 + SCAN_LAUNCHES
            known = True
        return count + (1 if plan.derived is not None else 0)

    def run(self, plan: Plan, batch: Batch, host_stage: bool = True) -> Batch:
        """The plan on `batch`; a host batch runs its host stage on the CPU, then moves here.

        Syncs with the device once per sparse level, to size that level's output.
        """
        import torch

        host_level = plan.host if host_stage else None
        if not _on_cuda(batch):
            if host_level is not None:
                batch, host_level = plan.run_host(batch), None
            batch = batch.to(self.device, non_blocking=False)
        with torch.cuda.device(self.device):
            return self._run_device(plan, batch, host_level)

    # -- the device stage ----------------------------------------------------------------------
    def _run_device(self, plan: Plan, batch: Batch, host_level) -> Batch:
        import cupy
        import torch

        n = batch.num_rows
        sparse = batch.sparse
        lengths = sparse.lengths.to(torch.int32).contiguous()
        values = sparse.values.to(torch.int64).contiguous()
        weights = None if sparse.weights is None else sparse.weights.to(torch.float32).contiguous()
        x = batch.dense.to(torch.float32).contiguous()
        stream = torch.cuda.current_stream(self.device)
        with cupy.cuda.Device(self.device.index), _cupy_stream(cupy, stream):
            offsets = None  # (scan buffer, shift, base): the input offsets, once known
            if host_level is not None and n:
                lengths, values, weights, offsets = self._level(host_level, n, lengths, values, weights, None, None, offsets)
            dense, ids, valid = self._dense(plan.dense, x, n)
            num_derived = plan.levels[-1].num_derived if plan.levels else 0
            derived = self._empty((num_derived, n), torch.float32)
            for index, level in enumerate(plan.levels):
                if not n or not len(level.kind):  # no rows, or no list features left: all empty
                    lengths, values, weights = lengths[:0], values[:0], None if weights is None else weights[:0]
                elif not self._skips(plan, index):
                    lengths, values, weights, offsets = self._level(level, n, lengths, values, weights, ids, valid, offsets, derived)
            if plan.derived is not None:
                self._dense(plan.derived, derived, n, dense)
        if weights is None and any(f.kind == SCORED for f in plan.output_schema.sparse):  # no rows
            weights = torch.empty(0, dtype=torch.float32, device=self.device)
        return output_batch(plan.output_schema, batch, dense, lengths, values, weights)

    @staticmethod
    def _skips(plan: Plan, index: int) -> bool:
        # level 0 also turns the ids made by the dense pass into lists, even when it copies
        level = plan.levels[index]
        return len(level.kind) == 0 or (level.identity and not (index == 0 and plan.dense.num_ids))

    def _dense(self, program: DenseProgram, x, n: int, dense_out=None):
        import torch

        if program.identity and dense_out is None:
            return x, None, None
        if dense_out is None:
            dense_out = self._empty((program.num_dense, n), torch.float32)
        ids = self._empty((program.num_ids, n), torch.int64)
        valid = self._empty((program.num_ids, n), torch.int32)
        if len(program.src) and n:
            t = self._table(program)
            vec4 = n % 4 == 0 and x.data_ptr() % 16 == 0 and dense_out.data_ptr() % 16 == 0
            grid = (_blocks(n, THREADS * DENSE_ROWS_PER_THREAD), len(program.src))
            self._launch(
                "dense_pass", grid,
                x.data_ptr(), n, program.steps.shape[1], int(vec4),
                t["src"], t["steps"], t["fparams"], t["iparams"], t["boundaries"], t["out_dense"], t["out_id"],
                dense_out.data_ptr(), ids.data_ptr(), valid.data_ptr(),
            )  # fmt: skip
        return dense_out, ids, valid

    def _level(self, level: SparseLevel, n, lengths, values, weights, ids, valid, offsets, derived=None):
        """One sparse level: lengths pass, scan, (sync) values pass. Returns the outputs and offsets."""
        import torch

        apps, keys_out = len(level.kind), level.num_outputs
        num_keys = len(lengths) // n
        t = self._table(level)
        common = [
            n, t["kind"], t["a"], t["b"], t["params"], t["maps"], t["map_params"], t["weighted"], t["out"],
            lengths.data_ptr(), 0, 0, values.data_ptr(), 0 if weights is None else weights.data_ptr(), num_keys,
            0 if ids is None else ids.data_ptr(), 0 if valid is None else valid.data_ptr(),
        ]  # fmt: skip
        status = self._status_buffer()
        derived_ptr = 0 if derived is None else derived.data_ptr()
        checks = []  # (scan buffer, index, what it must equal)
        if offsets is None and t["set_ops"]:  # set ops read the input ids in the lengths pass
            scan_in = self._empty((1 + len(lengths),), torch.int64)
            self._launch("level_lengths", (_blocks(len(lengths), THREADS), 1), *common, 0, 0,
                         scan_in.data_ptr(), 0, len(lengths), 0, status.data_ptr())  # fmt: skip
            self._scan(scan_in)
            offsets = (scan_in, 0, 0)
            # checked before the lengths pass reads rows at these offsets
            read = self._read_sync([(status.data_ptr(), 4), (scan_in.data_ptr() + 8 * len(lengths), 1)])
            self._raise_on_status(read[:4])
            check_total(read[4], len(values))
        copy = len(lengths) if offsets is None else 0
        scan = self._empty((1 + copy + keys_out * n,), torch.int64)
        if offsets is None:
            offsets = (scan, 0, 0)
            checks.append((scan, copy, len(values)))
        in_scan, in_shift, in_base = offsets
        common[10] = in_scan.data_ptr() + 8 * in_shift
        common[11] = in_base
        out_lengths = self._empty((keys_out * n,), torch.int32)
        grid = (_blocks(n, THREADS), apps + (1 if copy else 0))
        self._launch("level_lengths", grid, *common, apps, out_lengths.data_ptr(), scan.data_ptr(), copy, copy,
                     derived_ptr, status.data_ptr())  # fmt: skip
        self._scan(scan)
        cells = [(status.data_ptr(), 4)] + [(s.data_ptr() + 8 * i, 1) for s, i, _ in checks]
        read = self._read_sync(cells + [(scan.data_ptr() + 8 * (len(scan) - 1), 1)])
        self._raise_on_status(read[:4])
        for (_, _, expected), got in zip(checks, read[4:-1]):
            check_total(got, expected)
        out_base = read[-2] if copy else 0  # the input total precedes the output lengths in `scan`
        total = read[-1] - out_base
        out_values = self._empty((total,), torch.int64)
        out_weights = self._empty((total,), torch.float32) if level.has_weights else None
        self._launch("level_values", (_blocks(n, THREADS), apps), *common, scan.data_ptr() + 8 * copy, out_base,
                     out_values.data_ptr(), 0 if out_weights is None else out_weights.data_ptr())  # fmt: skip
        return out_lengths, out_values, out_weights, (scan, copy, out_base)

    def _raise_on_status(self, status):
        code, key, row, value = status
        if code == 0:
            return
        self._status.zero_()
        if code == ERR_NEGATIVE_LENGTH:
            raise DataError(f"batch lengths: input key {key} row {row} has length {value}; lengths must be >= 0")
        if code == ERR_TOO_LONG:
            raise cross_too_long(value, f"app {key}, row {row}")
        raise KernelError(f"a sparse kernel reported unknown error code {code} (key {key}, row {row}, value {value})")

    # -- plumbing --------------------------------------------------------------------------------
    def _table(self, stage) -> dict:
        """Device pointers to a stage's tables: all of them in one buffer, uploaded once."""
        key = id(stage)
        if key not in self._tables:
            import torch

            arrays = {name: np.ascontiguousarray(getattr(stage, name)) for name in _TABLE_FIELDS[type(stage)]}
            at, layout = 0, {}
            for name, a in arrays.items():
                layout[name] = at
                at += -(-a.nbytes // 16) * 16
            host = np.zeros(max(at, 16), np.uint8)
            for name, a in arrays.items():
                host[layout[name] : layout[name] + a.nbytes] = a.view(np.uint8).ravel()
            buffer = torch.from_numpy(host).to(self.device)
            base = buffer.data_ptr()
            table = {"_buffer": buffer, "_stage": stage, **{k: base + v for k, v in layout.items()}}
            table["set_ops"] = isinstance(stage, SparseLevel) and _has_set_ops(stage)
            self._tables[key] = table
        return self._tables[key]

    def _launch(self, name: str, grid, *args):
        if grid[1] > MAX_GRID_Y:  # one row of blocks per dense program or sparse app
            raise KernelError(
                f"kernel {name}: {grid[1]:,} programs or apps in one stage, more than CUDA's {MAX_GRID_Y:,} "
                "blocks in y; split the pipeline's features across two pipelines"
            )
        function = _kernel(self.device.index, name)
        try:
            function(grid, (THREADS,), args)
        except Exception as e:  # a CUDA error: name the kernel and the launch
            raise KernelError(f"kernel {name} (grid {grid}) failed: {e}") from e

    def _scan(self, buffer):
        """In-place inclusive prefix sum of an int64 device buffer with CUB."""
        if buffer.numel() > MAX_SCAN:  # CuPy's scan takes its size as a C int
            raise DataError(
                f"a sparse level of {buffer.numel() - 1:,} lengths (keys x rows) is more than one scan takes "
                f"({MAX_SCAN - 1:,}); use smaller batches"
            )
        import cupy
        from cupy.cuda import cub

        memory = cupy.cuda.UnownedMemory(buffer.data_ptr(), buffer.numel() * 8, buffer, self.device.index)
        array = cupy.ndarray((buffer.numel(),), cupy.int64, cupy.cuda.MemoryPointer(memory, 0))
        if cub.cub_scan(array, cub.CUPY_CUB_CUMSUM) is None:
            raise BackendUnavailable("this CuPy build cannot scan int64 with CUB; reinstall cupy")

    def _read_sync(self, cells) -> list[int]:
        """int64 device memory at (address, count) cells, copied to pinned memory. Syncs."""
        import cupy
        import torch
        from cupy.cuda import runtime

        if self._pinned is None:
            self._pinned = torch.empty(64, dtype=torch.int64, pin_memory=True)
        stream = cupy.cuda.get_current_stream().ptr
        at = 0
        for address, count in cells:
            runtime.memcpyAsync(self._pinned.data_ptr() + 8 * at, address, 8 * count, runtime.memcpyDeviceToHost, stream)
            at += count
        runtime.streamSynchronize(stream)
        return self._pinned[:at].tolist()

    def _status_buffer(self):
        import torch

        if self._status is None:
            self._status = torch.zeros(4, dtype=torch.int64, device=self.device)
        return self._status

    def _empty(self, shape, dtype):
        import torch

        t = torch.empty(shape, dtype=dtype, device=self.device)
        if POISON and t.numel():
            t.fill_(float("nan") if dtype.is_floating_point else 0x5A5A5A5A)
        return t


_TABLE_FIELDS = {
    DenseProgram: ("src", "steps", "fparams", "iparams", "boundaries", "out_dense", "out_id"),
    SparseLevel: ("kind", "a", "b", "params", "maps", "map_params", "weighted", "out"),
}


def _has_set_ops(level: SparseLevel) -> bool:
    return bool(np.isin(level.kind, SET_KINDS).any())


def _blocks(count: int, per_block: int) -> int:
    return max(1, -(-count // per_block))


def _on_cuda(batch: Batch) -> bool:
    values = batch.sparse.values
    return getattr(values, "is_cuda", False) or getattr(batch.dense, "is_cuda", False)


def _cupy_stream(cupy, stream):
    """torch's stream as CuPy's current stream (no new stream, no sync)."""
    if hasattr(stream, "__cuda_stream__") and hasattr(cupy.cuda.Stream, "from_external"):
        return cupy.cuda.Stream.from_external(stream)
    return cupy.cuda.ExternalStream(stream.cuda_stream, stream.device.index)


def _kernel(device_index: int, name: str):
    """A kernel of kernels/, compiled once per device (CuPy also caches the binary on disk)."""
    functions = _modules.get(device_index)
    if functions is None:
        import cupy

        functions = {}
        with cupy.cuda.Device(device_index):
            for source, names in (("dense.cu", ("dense_pass",)), ("sparse.cu", ("level_lengths", "level_values"))):
                module = _compile(cupy, source)
                functions.update({k: module.get_function(k) for k in names})
        _modules[device_index] = functions
    return functions[name]


def kernel_code(source: str) -> str:
    """The code CuPy compiles for kernels/`source`. CuPy caches binaries on disk by their code, and
    the headers it includes are not in it: a digest of them is, so that an edited header compiles anew."""
    path = KERNELS / source
    if not path.exists():
        raise BackendUnavailable(f"the kernel sources are missing: {path} not found; reinstall gpupre from its source tree")
    headers = hashlib.sha256(b"".join(h.read_bytes() for h in sorted(KERNELS.glob("*.cuh")))).hexdigest()
    return f'// headers {headers}\n#line 1 "{path}"\n' + path.read_text()


def _compile(cupy, source: str):
    code = kernel_code(source)
    try:
        # CuPy adds -ftz=true; the kernels keep subnormals anyway (ieee.cuh), as the CPU does
        module = cupy.RawModule(code=code, options=("-std=c++17", f"-I{KERNELS}"))
        module.compile()
    except cupy.cuda.compiler.CompileException as e:
        raise KernelError(f"{source} did not compile:\n{e}") from e
    log.debug("compiled %s for device %s", source, cupy.cuda.Device().id)
    return module


if os.environ.get("GPUPRE_POISON"):
    POISON = True
