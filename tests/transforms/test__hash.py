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
BUCKETS = st.one_of(st.integers(1, INT64_MAX), st.sampled_from([1, 2, 3, 100, 2**31 - 1, 2**32, 2**32 + 1, 2**62, INT64_MAX]))
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
    return _hash.sigrid_hash(x, salt, _hash.divisor(num_buckets))


@numba.njit
def _floor_mod_all(x, n):
    div = _hash.divisor(n)
    out = np.empty_like(x)
    for i in range(len(x)):
        out[i] = _hash.floor_mod(x[i], div)
    return out


@numba.njit
def _cross(a, b):
    return _hash.cross_id(a, b)


@numba.njit
def _float_to_id(x):
    return _hash.float_to_id(x)


def _int64(x: int) -> int:
    return ref.as_int64(x)


@settings(max_examples=400)
@given(INT64, INT64)
def test_mixers_match_the_reference(x, y):
    assert int(_twang(x)) == ref.twang_mix64(x & MASK)
    assert int(_hash_128_to_64(x, y)) == ref.hash_128_to_64(x & MASK, y & MASK)
    assert int(_cross(x, y)) == _int64(ref.hash_128_to_64(x & MASK, y & MASK))


@settings(max_examples=400)
@given(INT64, INT64, BUCKETS)
def test_sigrid_hash_matches_the_reference(x, salt, num_buckets):
    got = int(_sigrid(x, salt, num_buckets))
    assert got == ref.sigrid_hash(x, salt, num_buckets)
    assert 0 <= got < num_buckets


@settings(max_examples=400)
@given(INT64, BUCKETS)
def test_floor_mod_is_pythons_modulo(x, n):
    assert int(_floor_mod_all(np.array([x], np.int64), n)[0]) == x % n


def test_floor_mod_over_many_ids_and_divisors():
    """The reciprocal is exact for every divisor size: each bit length, its powers of two and
    their neighbours, and random divisors, over random ids, the int64 extremes, and the ids where
    an estimate one too big shows: remainders of n - 1 and 0 at the top of the uint64 range."""
    rng = np.random.default_rng(0)
    spread = np.concatenate([rng.integers(INT64_MIN, INT64_MAX, 20_000, dtype=np.int64, endpoint=True),
                             np.array([INT64_MIN, INT64_MIN + 1, -1, 0, 1, INT64_MAX - 1, INT64_MAX], np.int64)])  # fmt: skip
    divisors = {INT64_MAX, *map(int, rng.integers(1, INT64_MAX, 50, dtype=np.int64))}
    for bits in range(63):
        divisors |= {max(1, 2**bits - 1), 2**bits, 2**bits + 1, 3 * 2**bits if bits < 61 else 5}
    for n in sorted(divisors):
        edges = {q * n + e for top in (2**64 - 1, 2**63 - 1) for q in range(top // n - 3, top // n + 1) for e in (-1, 0, 1)}
        edges = np.array([_int64(u) for u in edges if 0 <= u < 2**64], np.int64)
        x = np.concatenate([spread, edges])
        np.testing.assert_array_equal(_floor_mod_all(x, n), x % n, err_msg=f"divisor {n}")


@given(INT64, INT64)
def test_sigrid_hash_with_one_bucket_is_zero(x, salt):
    assert _sigrid(x, salt, 1) == 0 == ref.sigrid_hash(x, salt, 1)


def test_torcharrow_vectors():
    assert [int(_sigrid(v, 0, 100)) for v in (1, 2, 3)] == [60, 54, 54]
    assert [ref.sigrid_hash(v, 0, 100) for v in (1, 2, 3)] == [60, 54, 54]


def test_cross_id_is_ordered():
    assert _cross(1, 2) != _cross(2, 1)


@settings(max_examples=400)
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
