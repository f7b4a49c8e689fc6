"""`DaliImages`: runs a plan's image chains with NVIDIA DALI, on the CPU or with the GPU decoder.

One DALI pipeline per chain, built on first use in each process and thread (pipelines are
neither picklable nor thread-safe). Per-row random parameters come in through external sources,
so DALI's own generators are never used; see `images.py`. On a GPU the encoded bytes stay on
the host and DALI's mixed decoder moves them (compressed) to the device, where the pixels land
in a torch tensor on the current stream.
"""

from __future__ import annotations

import os
import threading
from dataclasses import replace

import numpy as np
import pyarrow as pa

from ..batch import binary_parts
from ..errors import BackendUnavailable, DataError
from ..reader.units import mix64
from .images import ImageChain, RandomResizedCrop

__all__ = ["DaliImages", "require_dali"]

INSTALL = "pip install 'gpupre[dali]' (nvidia-dali-cuda130; it runs CPU pipelines without a GPU)"
MAX_BATCH = 256  # rows per DALI run: bounds DALI's buffers; a batch of more rows runs in pieces


def require_dali() -> None:
    """Raise BackendUnavailable, with the install command, when DALI cannot be imported."""
    try:
        import nvidia.dali  # noqa: F401
    except ImportError as e:
        raise BackendUnavailable(f"image ops need NVIDIA DALI ({e}); install it with {INSTALL}") from e


class DaliImages:
    """The image stage of a plan: every chain over a batch, pixels into `batch.images`."""

    def __init__(self, chains: list[ImageChain], device: str):
        require_dali()
        self.chains, self.device = chains, device
        self._pipes: dict = {}

    def __getstate__(self):
        return {**self.__dict__, "_pipes": {}}

    def run(self, batch):
        """`batch` with each chain's output image: uint8, or float32 when normalized, [N, 3, H, W].

        Raises:
            DataError: a row's bytes are not an image DALI can decode (names the feature and row).
        """
        keys = batch.row_keys
        if keys is None:  # a batch built by hand: rows are keyed by their position in it
            keys = mix64(np.arange(batch.num_rows, dtype=np.uint64)).view(np.int64)
        keys = keys.cpu().numpy() if hasattr(keys, "cpu") else np.asarray(keys)  # a sync on a GPU: the draws are host-side
        images, rows = dict(batch.images), {}
        for index, chain in enumerate(self.chains):
            if chain.source not in rows:  # views of one feature (out=) share its rows
                rows[chain.source] = _rows(batch.images[chain.source], chain.source, batch)
            images[chain.out] = self._chain(index, chain, rows[chain.source], keys, batch)
        return replace(batch, images=images)

    # -- one chain ------------------------------------------------------------------------------
    def _chain(self, index: int, chain: ImageChain, rows, keys, batch):
        keys, params = chain.keys(keys), {}
        if isinstance(chain.sizing, RandomResizedCrop):
            params["window"] = chain.sizing.windows(keys)
        if chain.flip is not None:
            params["mirror"] = chain.flip.flips(keys)
        out = self._empty(chain, batch)
        for lo in range(0, len(rows), MAX_BATCH):
            hi = min(lo + MAX_BATCH, len(rows))
            try:
                result = self._run(index, chain, rows, params, lo, hi)
            except RuntimeError as e:
                self._pipes.pop((index, threading.get_ident()), None)  # DALI leaves it unusable
                raise self._bad_row(index, chain, rows, params, lo, hi, batch) or e from None
            self._copy(result, out, lo, hi)
        return out

    def _run(self, index, chain, rows, params, lo: int, hi: int):
        """DALI's result for rows [lo, hi)."""
        pipe = self._pipe(index, chain)
        stream = None
        if self.device.startswith("cuda"):  # DALI works on its own stream; its outputs are made ready for ours
            import torch

            stream = torch.cuda.current_stream(self.device)
        (result,) = pipe.run(stream, encoded=rows[lo:hi], **{name: list(p[lo:hi]) for name, p in params.items()})
        return result

    def _bad_row(self, index, chain, rows, params, lo, hi, batch) -> DataError | None:
        """The DataError for the first row of [lo, hi) that fails alone; None if none does (then
        the failure was not the data's, and the caller raises DALI's own error)."""
        for row in range(lo, hi):
            try:
                self._run(index, chain, rows, params, row, row + 1)
            except RuntimeError as e:
                self._pipes.pop((index, threading.get_ident()), None)
                return DataError(
                    f"image feature {chain.source!r}: row {row} of the batch{_row_names(batch, row)} cannot be "
                    f"decoded ({_reason(e)}); its bytes are not a JPEG or PNG image: rewrite or drop that row"
                )
        return None

    def _empty(self, chain: ImageChain, batch):
        shape = (batch.num_rows, 3, *chain.sizing.size)
        if not self.device.startswith("cuda"):
            return np.empty(shape, np.float32 if chain.normalize else np.uint8)
        import torch

        return torch.empty(shape, dtype=torch.float32 if chain.normalize else torch.uint8, device=self.device)

    def _copy(self, result, out, lo: int, hi: int) -> None:
        if isinstance(out, np.ndarray):
            out[lo:hi] = result.as_array()
            return
        import torch
        from nvidia.dali.plugin.pytorch import feed_ndarray

        feed_ndarray(result, out[lo:hi], cuda_stream=torch.cuda.current_stream(out.device))

    # -- the DALI graph -------------------------------------------------------------------------
    def _pipe(self, index: int, chain: ImageChain):
        key = (index, threading.get_ident())
        pipe = self._pipes.get(key)
        if pipe is None:
            pipe = self._pipes[key] = _build(chain, self.device)
        return pipe


def _build(chain: ImageChain, device: str):
    import nvidia.dali.fn as fn
    import nvidia.dali.math as dmath
    import nvidia.dali.types as types
    from nvidia.dali import pipeline_def

    gpu = device.startswith("cuda")
    if gpu:
        import torch

        device_id = torch.device(device).index
        device_id = torch.cuda.current_device() if device_id is None else device_id
    else:
        device_id = None

    @pipeline_def(batch_size=MAX_BATCH, num_threads=_threads(), device_id=device_id, prefetch_queue_depth=1)
    def graph():
        encoded = fn.external_source(name="encoded", dtype=types.UINT8, ndim=1)
        decoder = "mixed" if gpu else "cpu"
        if isinstance(chain.sizing, RandomResizedCrop):
            window = fn.external_source(name="window", dtype=types.FLOAT, ndim=1)
            shape = fn.peek_image_shape(encoded, dtype=types.FLOAT)  # reads the header only
            height, width = shape[0], shape[1]
            area, ratio = window[0] * height * width, window[1]
            # fractions of the image's sides, at least one pixel: a tiny image's window would round to none
            w = dmath.max(dmath.min(dmath.sqrt(area * ratio), width), 1.0) / width
            h = dmath.max(dmath.min(dmath.sqrt(area / ratio), height), 1.0) / height
            anchor = fn.stack(window[3] * (1.0 - h), window[2] * (1.0 - w))
            image = fn.decoders.image_slice(
                encoded, anchor, fn.stack(h, w), device=decoder, output_type=types.RGB, axis_names="HW"
            )
        else:
            image = fn.decoders.image(encoded, device=decoder, output_type=types.RGB)
        image = fn.resize(image, size=list(chain.sizing.size))
        mirror = fn.external_source(name="mirror", dtype=types.INT32, ndim=0) if chain.flip is not None else 0
        norm = chain.normalize
        mean = [255.0 * m for m in norm.mean] if norm else [0.0] * 3
        std = [255.0 * s for s in norm.std] if norm else [1.0] * 3
        dtype = types.FLOAT if norm else types.UINT8
        return fn.crop_mirror_normalize(image, mirror=mirror, mean=mean, std=std, dtype=dtype, output_layout="CHW")

    pipe = graph()
    pipe.build()
    return pipe


def _threads() -> int:
    """DALI's CPU threads: this process's share of the cores (the loader sets numba's to it)."""
    try:
        import numba

        return max(1, numba.get_num_threads())
    except ImportError:
        return max(1, os.cpu_count() or 1)


def _rows(encoded, name: str, batch) -> list:
    """Each row's encoded bytes as a uint8 view; an empty row is a DataError naming it."""
    if not isinstance(encoded, pa.Array):
        raise DataError(
            f"image feature {name!r} holds decoded pixels already; image ops take the encoded bytes "
            "as read, so run each image feature's ops once"
        )
    offsets, data = binary_parts(encoded)
    lengths = np.diff(offsets)
    if len(lengths) and lengths.min() == 0:
        row = int(np.argmin(lengths))
        raise DataError(
            f"image feature {name!r}: row {row} of the batch{_row_names(batch, row)} holds no bytes; every row "
            "needs an encoded JPEG or PNG: write a placeholder image or drop that row"
        )
    return [data[offsets[i] : offsets[i + 1]] for i in range(len(lengths))]


def _row_names(batch, row: int) -> str:
    """' (row_id=7, ...)': the pass-through values that identify a row, if the batch has any."""
    values = []
    for name, column in batch.extras.items():
        value = column[row]
        value = value.as_py() if hasattr(value, "as_py") else value.item() if hasattr(value, "item") else value
        values.append(f"{name}={value!r}")
    return f" ({', '.join(values)})" if values else ""


def _reason(error: Exception) -> str:
    """The line of a DALI error that says what went wrong, without its pipeline traceback."""
    text = str(error)
    if "encountered:" in text:
        text = text.split("encountered:", 1)[1]
    lines = [line.strip() for line in text.splitlines() if line.strip() and "pipeline" not in line.lower()]
    return lines[0] if lines else type(error).__name__
