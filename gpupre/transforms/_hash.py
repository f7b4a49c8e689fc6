"""folly's twang_mix64 and hash_128_to_64, and TorchArrow's sigrid_hash, for numba kernels.

All arithmetic is mod 2**64 on uint64; ids are int64 reinterpreted bit for bit. The CUDA twins
live in kernels/hash.cuh and must stay bit-identical.

The cached kernels of cpu.py inline these functions, and numba keys its cache on cpu.py alone:
after editing this file, touch cpu.py (or clear __pycache__) so that the kernels recompile.
"""

import numba
import numpy as np

_K_MUL = np.uint64(0x9DDFEA08EB382D69)
_INT64_MAX_AS_FLOAT = 9.223372036854775807e18


@numba.njit(inline="always")
def twang_mix64(key):
    key = (~key) + (key << np.uint64(21))
    key = key ^ (key >> np.uint64(24))
    key = key + (key << np.uint64(3)) + (key << np.uint64(8))
    key = key ^ (key >> np.uint64(14))
    key = key + (key << np.uint64(2)) + (key << np.uint64(4))
    key = key ^ (key >> np.uint64(28))
    key = key + (key << np.uint64(31))
    return key


@numba.njit(inline="always")
def hash_128_to_64(upper, lower):
    a = (lower ^ upper) * _K_MUL
    a ^= a >> np.uint64(47)
    b = (upper ^ a) * _K_MUL
    b ^= b >> np.uint64(47)
    return b * _K_MUL


@numba.njit(inline="always")
def sigrid_hash(x, salt, num_buckets):
    """int64 id -> [0, num_buckets): hash_128_to_64(salt, twang_mix64(x)) as int64, floor-mod."""
    if num_buckets == 1:
        return np.int64(0)
    h = hash_128_to_64(np.uint64(salt), twang_mix64(np.uint64(x)))
    return np.int64(h) % np.int64(num_buckets)  # numba's % is Python's floor-mod


@numba.njit(inline="always")
def cross_id(a, b):
    """The id of the pair (a, b), in argument order (never symmetric)."""
    return np.int64(hash_128_to_64(np.uint64(a), np.uint64(b)))


@numba.njit(inline="always")
def float_to_id(x):
    """A dense value as an id: truncated toward zero, saturated at the int64 range (NaN: caller)."""
    if x >= _INT64_MAX_AS_FLOAT:
        return np.int64(9223372036854775807)
    if x <= -_INT64_MAX_AS_FLOAT:
        return np.int64(-9223372036854775807 - 1)
    return np.int64(x)
