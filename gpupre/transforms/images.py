"""Image ops: content features (encoded JPEG or PNG bytes) decoded and augmented by DALI.

An image feature's ops form a chain that runs as one DALI graph per batch::

    encoded bytes -> decode (the random window only) -> resize to `size` -> mirror -> normalize
                                                                        -> uint8 or float32 [N, 3, H, W]

Every chain starts with the op that fixes its size (`Resize` or `RandomResizedCrop`), so that the
rows stack into one tensor; `RandomFlip` and `NormalizeImage` may follow once each (they commute).

Random ops draw from the row's key (`Batch.row_keys`: file, row group and row; the loader mixes
in its seed and the epoch), the output feature's name, the op's `seed` and a stream per draw,
never from a generator that advances: a row gets the same crop whatever the batching, the number
of workers, a resume, or the device, and two views of one image (out=) get different crops.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np

from .._checks import is_integer, is_real
from ..errors import ConfigError
from ..reader.units import mix64, salted
from ..schema import IMAGE
from .ops import OPS, Op, _int64

__all__ = ["ImageChain", "NormalizeImage", "RandomFlip", "RandomResizedCrop", "Resize", "image_chains"]


def _numbers(value, count: int, what: str, op: str, form: str, convert=float) -> tuple:
    """`value` as a tuple of `count` numbers (converted by `convert`), or a ConfigError naming `form`."""
    try:
        numbers = tuple(convert(v) for v in value)
    except (TypeError, ValueError, OverflowError) as e:
        raise ConfigError(f"{op}: {what}={value!r} must be {form}") from e
    if len(numbers) != count:
        raise ConfigError(f"{op}: {what}={value!r} must be {form}")
    return numbers


def _size(value, op: str) -> tuple[int, int]:
    form = "a positive int or (height, width) of positive ints"
    if is_integer(value):
        value = (value, value)
    elif not isinstance(value, (list, tuple)) or not all(is_integer(s) for s in value):
        raise ConfigError(f"{op}: size={value!r} must be {form}")
    size = _numbers(value, 2, "size", op, form, int)
    if min(size) <= 0:
        raise ConfigError(f"{op}: size={value!r} must be {form}")
    return size


def _range(value, what: str, op: str, lo: float, hi: float) -> tuple[float, float]:
    """(low, high) with lo < low <= high <= hi, both finite."""
    form = f"finite (low, high) with {lo} < low <= high" + ("" if math.isinf(hi) else f" <= {hi}")
    pair = _numbers(value, 2, what, op, form)
    if not (lo < pair[0] <= pair[1] <= hi and math.isfinite(pair[1])):
        raise ConfigError(f"{op}: {what}={value!r} must be {form}")
    return pair


@dataclass(frozen=True)
class Resize(Op):
    """Decode the whole image and resize it to `size` (height, width): bilinear, antialiased
    when it shrinks. The deterministic twin of `RandomResizedCrop`, for evaluation."""

    size: tuple[int, int] = (224, 224)
    accepts = (IMAGE,)

    def validate(self):
        object.__setattr__(self, "size", _size(self.size, "Resize"))


@dataclass(frozen=True)
class RandomResizedCrop(Op):
    """Decode a random window of the image and resize it to `size` (height, width).

    The window covers a fraction of the image's area drawn uniformly from `scale`, with an
    aspect ratio (width / height) drawn log-uniformly from `ratio`; a side longer than the
    image's is cut to it, and the window's place is uniform over the positions that fit.
    """

    size: tuple[int, int] = (224, 224)
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    seed: int = 0
    accepts = (IMAGE,)

    def validate(self):
        object.__setattr__(self, "size", _size(self.size, "RandomResizedCrop"))
        object.__setattr__(self, "scale", _range(self.scale, "scale", "RandomResizedCrop", 0.0, 1.0))
        object.__setattr__(self, "ratio", _range(self.ratio, "ratio", "RandomResizedCrop", 0.0, math.inf))
        _int64(self.seed, "seed", "RandomResizedCrop")

    def windows(self, keys: np.ndarray) -> np.ndarray:
        """float32 [N, 4] per row: (area fraction, aspect ratio, x and y in [0, 1)) of its window."""
        u = [uniform(keys, self.seed, stream) for stream in range(4)]
        area = self.scale[0] + u[0] * (self.scale[1] - self.scale[0])
        log_lo, log_hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        ratio = np.exp(log_lo + u[1] * (log_hi - log_lo))
        return np.stack([area, ratio, u[2], u[3]], axis=1).astype(np.float32)


@dataclass(frozen=True)
class RandomFlip(Op):
    """Mirror the image left to right with `probability`."""

    probability: float = 0.5
    seed: int = 0
    accepts = (IMAGE,)

    def validate(self):
        if not isinstance(self.probability, (int, float)) or not 0.0 <= self.probability <= 1.0:
            raise ConfigError(f"RandomFlip: probability={self.probability!r} must be in [0, 1]")
        _int64(self.seed, "seed", "RandomFlip")

    def flips(self, keys: np.ndarray) -> np.ndarray:
        """int32 [N]: 1 where the row is mirrored."""
        return (uniform(keys, self.seed, FLIP_STREAM) < self.probability).astype(np.int32)


@dataclass(frozen=True)
class NormalizeImage(Op):
    """Pixels as float32: (x / 255 - mean) / std per channel (R, G, B), as torchvision does after
    ToTensor. Without it an image arrives as uint8 pixels."""

    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    accepts = (IMAGE,)

    def validate(self):
        for what in ("mean", "std"):
            value, form = getattr(self, what), "three finite numbers (R, G, B), or one for all three"
            triple = _numbers((value,) * 3 if is_real(value) else value, 3, what, "NormalizeImage", form)
            if not all(math.isfinite(v) for v in triple):
                raise ConfigError(f"NormalizeImage: {what}={value!r} must be {form}")
            object.__setattr__(self, what, triple)
        if min(self.std) <= 0:
            raise ConfigError(f"NormalizeImage: std={self.std!r} must be positive")


IMAGE_OPS = (Resize, RandomResizedCrop, RandomFlip, NormalizeImage)
OPS.update({cls.__name__: cls for cls in IMAGE_OPS})  # pipelines load them from JSON like any op
FLIP_STREAM = 4  # RandomResizedCrop draws streams 0-3; a distinct stream keeps a flip independent of the crop


def uniform(keys: np.ndarray, seed: int, stream: int) -> np.ndarray:
    """float64 [N] in [0, 1): draw `stream` of op seed `seed` for rows with `keys`."""
    salt = mix64(np.array([(seed * 0x9E3779B97F4A7C15 + stream) & (2**64 - 1)], np.uint64))[0]
    return (salted(keys, salt) >> np.uint64(11)).astype(np.float64) * 2.0**-53


@dataclass
class ImageChain:
    """The image ops that make output feature `out` from input image feature `source`."""

    source: str
    out: str
    sizing: Resize | RandomResizedCrop | None = None
    flip: RandomFlip | None = None
    normalize: NormalizeImage | None = None

    def keys(self, row_keys: np.ndarray) -> np.ndarray:
        """The row keys this chain's random ops draw from: salted by its output's name."""
        salt = int.from_bytes(hashlib.blake2b(self.out.encode(), digest_size=8).digest(), "little")
        return salted(row_keys, salt).view(np.int64)

    def add(self, op: Op) -> None:
        if isinstance(op, (Resize, RandomResizedCrop)):
            if self.sizing is not None or self.flip is not None or self.normalize is not None:
                raise ConfigError(
                    f"{op}: image feature {self.source!r} has image ops before it; Resize or "
                    "RandomResizedCrop comes first and once per output image (for a second view of "
                    f"{self.source!r}, put the op with out= before the ops on {self.source!r})"
                )
            self.sizing = op
            return
        slot = "flip" if isinstance(op, RandomFlip) else "normalize"
        if getattr(self, slot) is not None:
            raise ConfigError(f"{op}: image feature {self.out!r} already has a {type(op).__name__}; give one")
        setattr(self, slot, op)


def image_chains(ops) -> list[ImageChain]:
    """The chains of the image ops among `ops`, one per output image feature, in order.

    Raises:
        ConfigError: a chain lacks an op that sizes it, or repeats one.
    """
    chains: dict[str, ImageChain] = {}
    for op in ops:
        if not isinstance(op, IMAGE_OPS):
            continue
        for (name,), out in op.applications():
            chain = chains.get(name) or ImageChain(name, name)
            if out != name:
                chain = ImageChain(chain.source, out, chain.sizing, chain.flip, chain.normalize)
            chain.add(op)
            chains[out] = chain
    for chain in chains.values():
        if chain.sizing is None:
            raise ConfigError(
                f"image feature {chain.out!r} has image ops but no Resize or RandomResizedCrop; images of "
                "different sizes cannot stack into one tensor, so start its ops with one of them"
            )
    return list(chains.values())
