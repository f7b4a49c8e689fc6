"""log(1 + x) in float32, the same IEEE operations in every executor, so results agree bit for bit.

Libraries' log1pf differ in their last bit (glibc, numpy, CUDA), and a one-ulp difference moves a
value across a Bucketize boundary. This one is a fixed sequence of float32 operations without fused
multiply-adds: log(u) of u = fl(1 + x) by frexp and a minimax polynomial (the one of Cephes' logf),
plus the correction (x - (u - 1)) / u for the rounding of u. Error within 2 ulp of log1p.
The CUDA twin is log1p32 in kernels/ieee.cuh.
"""

import math

import numba
import numpy as np

f32 = np.float32
SQRT_HALF = f32(0.70710677)
POLY = tuple(
    f32(c)
    for c in (7.0376836292e-2, -1.1514610310e-1, 1.1676998740e-1, -1.2420140846e-1, 1.4249322787e-1,
              -1.6668057665e-1, 2.0000714765e-1, -2.4999993993e-1, 3.3333331174e-1)
)  # fmt: skip
C0, C1, C2, C3, C4, C5, C6, C7, C8 = POLY
LN2_HI, LN2_LO, HALF = f32(0.693359375), f32(-2.12194440e-4), f32(0.5)


@numba.njit(inline="always")
def _log1p_tail(x, u, m, e):
    """log1p32 of x from u = fl(1 + x) = m * 2**e with m in [0.5, 1)."""
    if m < SQRT_HALF:
        e -= 1
        t = (m + m) - f32(1)
    else:
        t = m - f32(1)
    z = t * t
    p = ((((((((C0 * t + C1) * t + C2) * t + C3) * t + C4) * t + C5) * t + C6) * t + C7) * t + C8) * t * z
    fe = f32(e)
    p = p + LN2_LO * fe
    p = p - HALF * z
    r = t + p
    r = r + LN2_HI * fe
    return r + (x - (u - f32(1))) / u


@numba.njit(inline="always")
def log1p32(x):
    """log1p of a float32 x >= 0 (NaN and inf pass through)."""
    if math.isnan(x) or math.isinf(x):
        return x
    u = f32(1) + x
    if u == f32(1):
        return x
    m, e = math.frexp(u)  # exact: m in [0.5, 1)
    return _log1p_tail(x, u, f32(m), e)


@numba.njit(inline="always")
def log1p32_block(y):
    """y[:] = log1p32(max(y, 0)) in place, NaN kept: the same operations as log1p32, with frexp done
    by bit operations on the block (u = 1 + y >= 1 is normal), which lets the loops vectorize."""
    n = len(y)
    u = np.empty(n, f32)
    for r in range(n):
        if y[r] < f32(0):
            y[r] = f32(0)
        u[r] = f32(1) + y[r]
    bits = u.view(np.int32)
    mantissa = np.empty(n, np.int32)
    for r in range(n):  # the exponent field set to 126: the mantissa as a float in [0.5, 1)
        mantissa[r] = (bits[r] & np.int32(0x807FFFFF)) | np.int32(126 << 23)
    m = mantissa.view(f32)
    for r in range(n):
        x = y[r]
        if not (math.isnan(x) or math.isinf(x) or u[r] == f32(1)):
            y[r] = _log1p_tail(x, u[r], m[r], ((bits[r] >> 23) & 0xFF) - 126)


def log1p32_array(x: np.ndarray) -> np.ndarray:
    """log1p32 over a float32 array (x >= 0, NaN, inf), with numpy's float32 operations."""
    x = np.asarray(x, f32)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        u = f32(1) + x
        m, e = np.frexp(u)
        small = m < SQRT_HALF
        e = np.where(small, e - 1, e)
        t = np.where(small, (m + m) - f32(1), m - f32(1)).astype(f32)
        z = t * t
        p = C0 * t
        for c in POLY[1:]:
            p = (p + c) * t
        p = p * z
        fe = e.astype(f32)
        p = p + LN2_LO * fe
        p = p - HALF * z
        r = t + p
        r = r + LN2_HI * fe
        r = r + (x - (u - f32(1))) / u
    return np.where((u == f32(1)) | ~np.isfinite(x), x, r).astype(f32)
