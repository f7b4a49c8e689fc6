// folly's twang_mix64 and hash_128_to_64, TorchArrow's sigrid_hash, and the float -> id cast.
// Bit-identical twins of gpupre/transforms/_hash.py: all arithmetic is mod 2**64 on uint64, and
// ids are int64 reinterpreted bit for bit.
#pragma once

typedef long long i64;
typedef unsigned long long u64;

__host__ __device__ __forceinline__ u64 twang_mix64(u64 key) {
    key = (~key) + (key << 21);
    key = key ^ (key >> 24);
    key = key + (key << 3) + (key << 8);
    key = key ^ (key >> 14);
    key = key + (key << 2) + (key << 4);
    key = key ^ (key >> 28);
    key = key + (key << 31);
    return key;
}

__host__ __device__ __forceinline__ u64 hash_128_to_64(u64 upper, u64 lower) {
    const u64 mul = 0x9DDFEA08EB382D69ULL;
    u64 a = (lower ^ upper) * mul;
    a ^= a >> 47;
    u64 b = (upper ^ a) * mul;
    b ^= b >> 47;
    return b * mul;
}

// x mod m for m > 0, in [0, m) (Python's and numba's floor-mod)
__host__ __device__ __forceinline__ i64 floor_mod(i64 x, i64 m) {
    i64 r = x % m;
    return r < 0 ? r + m : r;
}

__host__ __device__ __forceinline__ i64 sigrid_hash(i64 x, i64 salt, i64 num_buckets) {
    if (num_buckets == 1) return 0;
    return floor_mod((i64)hash_128_to_64((u64)salt, twang_mix64((u64)x)), num_buckets);
}

// the id of the pair (a, b), in argument order (never symmetric)
__host__ __device__ __forceinline__ i64 cross_id(i64 a, i64 b) { return (i64)hash_128_to_64((u64)a, (u64)b); }

// a dense value as an id: truncated toward zero, saturated at the int64 range (NaN: the caller's)
__host__ __device__ __forceinline__ i64 float_to_id(float x) {
    double d = (double)x;
    if (d >= 9.223372036854775807e18) return 0x7FFFFFFFFFFFFFFFLL;
    if (d <= -9.223372036854775807e18) return (i64)0x8000000000000000ULL;
    return (i64)d;
}
