"""The numba hash twins (_hash.py) are bit-identical to the Python-int reference."""

import math

import numba
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from gpupre.transforms import _hash
from gpupre.transforms import reference as ref

MASK = (1 << 64) - 1
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
INT64 = st.one_of(st.integers(INT64_MIN, INT64_MAX), st.sampled_from([INT64_MIN, INT64_MAX, -1, 0, 1]))
BUCKETS = st.one_of(st.integers(1, 2**62), st.sampled_from([1, 2, 100, 2**62]))
FINITE_OR_INF = st.floats(allow_nan=False)


# The twins take uint64 and inline into kernels; these wrappers give them int64 ids. Not cached:
# numba's cache would not see a change to _hash.py, and the test would check stale code.
@numba.njit
def _twang(x):
    return _hash.twang_mix64(np.uint64(x))


@numba.njit
def _hash_128_to_64(upper, lower):
    return _hash.hash_128_to_64(np.uint64(upper), np.uint64(lower))


@numba.njit
def _sigrid(x, salt, num_buckets):
    return _hash.sigrid_hash(x, salt, num_buckets)


@numba.njit
def _cross(a, b):
    return _hash.cross_id(a, b)


@numba.njit
def _float_to_id(x):
    return _hash.float_to_id(x)


def _int64(x: int) -> int:
    return ref.as_int64(x)


@settings(max_examples=400, deadline=None)
@given(INT64, INT64)
def test_mixers_match_the_reference(x, y):
    assert int(_twang(x)) == ref.twang_mix64(x & MASK)
    assert int(_hash_128_to_64(x, y)) == ref.hash_128_to_64(x & MASK, y & MASK)
    assert int(_cross(x, y)) == _int64(ref.hash_128_to_64(x & MASK, y & MASK))


@settings(max_examples=400, deadline=None)
@given(INT64, INT64, BUCKETS)
def test_sigrid_hash_matches_the_reference(x, salt, num_buckets):
    got = int(_sigrid(x, salt, num_buckets))
    assert got == ref.sigrid_hash(x, salt, num_buckets)
    assert 0 <= got < num_buckets


@given(INT64, INT64)
def test_sigrid_hash_with_one_bucket_is_zero(x, salt):
    assert _sigrid(x, salt, 1) == 0 == ref.sigrid_hash(x, salt, 1)


def test_torcharrow_vectors():
    assert [int(_sigrid(v, 0, 100)) for v in (1, 2, 3)] == [60, 54, 54]
    assert [ref.sigrid_hash(v, 0, 100) for v in (1, 2, 3)] == [60, 54, 54]


def test_cross_id_is_ordered():
    assert _cross(1, 2) != _cross(2, 1)


@settings(max_examples=400, deadline=None)
@given(FINITE_OR_INF)
def test_float_to_id_matches_the_reference_in_float64_and_float32(x):
    assert int(_float_to_id(x)) == ref.float_to_id(x)
    with np.errstate(over="ignore"):
        x32 = np.float32(x)  # beyond float32's range: +-inf
    assert int(_float_to_id(x32)) == ref.float_to_id(float(x32))


def test_float_to_id_truncates_toward_zero_and_saturates():
    cases = {
        1.9: 1,
        -1.9: -1,
        -0.5: 0,
        -0.0: 0,
        2.0**62: 2**62,
        math.nextafter(2.0**63, 0): 2**63 - 1024,  # the largest double below 2**63 is exact
        2.0**63: INT64_MAX,
        1e19: INT64_MAX,
        math.inf: INT64_MAX,
        -(2.0**63): INT64_MIN,
        -1e300: INT64_MIN,
        -math.inf: INT64_MIN,
    }
    assert {x: int(_float_to_id(x)) for x in cases} == cases
    assert {x: ref.float_to_id(x) for x in cases} == cases
    # float32, as the dense pass calls it: 2**63 - 2**39 is the largest float32 below 2**63
    assert int(_float_to_id(np.float32(np.nextafter(np.float32(2.0**63), np.float32(0))))) == 2**63 - 2**39
    assert int(_float_to_id(np.float32(3e38))) == INT64_MAX
    assert int(_float_to_id(np.float32(-3e38))) == INT64_MIN
