"""The float32 log1p: the numba and numpy versions agree bit for bit and stay within 2 ulp."""

import numba
import numpy as np
import pytest

from gpupre.transforms._log1p import log1p32, log1p32_array, log1p32_block


@numba.njit
def _numba(x):
    out = np.empty_like(x)
    for i in range(len(x)):
        out[i] = log1p32(x[i])
    return out


def _inputs():
    rng = np.random.default_rng(0)
    scaled = rng.random(200_000) * 10.0 ** rng.integers(-45, 39, 200_000)
    special = [0.0, 1e-45, 1e-39, 2.0**-24, 2.0**-23, 0.4142135, 1.0, 2.0, 3.4e38, np.inf, np.nan]
    return np.concatenate([scaled, special]).astype(np.float32)


def test_numba_and_numpy_agree_bit_for_bit():
    x = _inputs()
    np.testing.assert_array_equal(_numba(x).view(np.int32), log1p32_array(x).view(np.int32))


@numba.njit
def _numba_block(x):
    out = x.copy()
    for lo in range(0, len(out), 1000):  # blocks, as the dense pass runs it
        log1p32_block(out[lo : lo + 1000])
    return out


def test_the_block_version_equals_the_scalar_one_bit_for_bit():
    stride = np.arange(0, 0x7F800001, 4099, dtype=np.int64).astype(np.int32).view(np.float32)  # non-negative float32s
    x = np.concatenate([_inputs(), stride, np.float32([-0.0, -1.0, -np.inf])])
    want = _numba(np.where(x < 0, np.float32(0), x))  # -0.0 stays -0.0, as max(-0.0, 0) in numba
    np.testing.assert_array_equal(_numba_block(x).view(np.int32), want.view(np.int32))


def test_within_two_ulp_of_log1p():
    x = _inputs()
    x = x[np.isfinite(x)]
    exact = np.log1p(x.astype(np.float64))
    got = log1p32_array(x).astype(np.float64)
    ulp = np.spacing(np.maximum(np.abs(exact), np.finfo(np.float32).tiny).astype(np.float32)).astype(np.float64)
    assert np.max(np.abs(got - exact) / ulp) <= 2.0


@pytest.mark.parametrize("x", [np.nan, np.inf, 0.0, 1e-45])
def test_special_values_pass_through(x):
    got = log1p32_array(np.float32([x]))[0]
    assert (np.isnan(got) and np.isnan(x)) or got == np.float32(x)
