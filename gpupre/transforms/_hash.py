"""folly's twang_mix64 and hash_128_to_64, and TorchArrow's sigrid_hash, for numba kernels.

All arithmetic is mod 2**64 on uint64; ids are int64 reinterpreted bit for bit. The CUDA twins
live in kernels/hash.cuh and must stay bit-identical.

Bucketing divides by a divisor that is fixed for a whole op, so it goes through `divisor(n)`, a
multiply-high reciprocal computed before the loop over ids (Granlund & Montgomery, "Division by invariant
integers using multiplication", 1994, fig. 4.1): exact for every int64, and 2.5x cheaper than the
hardware's 64-bit division, which was most of a hash's cost.

The cached kernels of cpu.py inline these functions, and numba keys its cache on cpu.py alone:
after editing this file, touch cpu.py (or clear __pycache__) so that the kernels recompile.
"""

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

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


@intrinsic
def _umulh(typingctx, a, b):
    """The high 64 bits of the 128-bit product of two uint64 (one x86 MUL)."""

    def codegen(context, builder, signature, args):
        wide = ir.IntType(128)
        product = builder.mul(builder.zext(args[0], wide), builder.zext(args[1], wide))
        return builder.trunc(builder.lshr(product, ir.Constant(wide, 64)), ir.IntType(64))

    return types.uint64(types.uint64, types.uint64), codegen


@numba.njit(cache=True)
def divisor(n):
    """(n, m, s1, s2, c) for floor_mod by the int64 n >= 1: u // n = (t + ((u - t) >> s1)) >> s2 with
    t = umulh(m, u), for every uint64 u; m = floor(2**64 * (2**l - n) / n) + 1, l = ceil(log2 n);
    c = 2**64 mod n corrects a negative id."""
    d = np.uint64(n)
    one = np.uint64(1)
    l = np.uint64(0)
    while (one << l) < d:
        l += one
    rem, m = (one << l) - d, np.uint64(0)  # rem < d: long division of rem * 2**64 by d
    for _ in range(64):
        m = (m << one) | np.uint64(rem >= d - rem)
        rem = rem + rem - d if rem >= d - rem else rem + rem
    return (d, m + one, min(l, one), max(l, one) - one, (np.uint64(0) - d) % d)


@numba.njit(inline="always")
def floor_mod(x, div):
    """x mod n for an int64 x, floor-mod (in [0, n)) like Python's %; div = divisor(n). Branch-free."""
    d, m, s1, s2, c = div[0], div[1], div[2], div[3], div[4]  # a tuple or an array row
    u = np.uint64(x)
    t = _umulh(m, u)
    r = np.int64(u - ((t + ((u - t) >> s1)) >> s2) * d) - (np.int64(c) & (x >> np.int64(63)))
    return r + (np.int64(d) & (r >> np.int64(63)))


@numba.njit(inline="always")
def sigrid_hash(x, salt, div):
    """int64 id -> [0, n): hash_128_to_64(salt, twang_mix64(x)) as int64, floor-mod n; div = divisor(n)."""
    return floor_mod(np.int64(hash_128_to_64(np.uint64(salt), twang_mix64(np.uint64(x)))), div)


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
