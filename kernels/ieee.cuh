// Float32 operations with plain IEEE semantics whatever the compiler's settings: no flush of
// subnormals to zero (CuPy compiles with -ftz=true) and no contraction into fused multiply-adds.
// The CPU executors compute exactly these operations, so results agree bit for bit. On the device
// each is one PTX instruction without .ftz; on the host (tests) the plain operator.
#pragma once

#ifdef __CUDA_ARCH__
#define IEEE_BINARY(name, instruction)                                                          \
    __host__ __device__ __forceinline__ float name(float a, float b) {                          \
        float r;                                                                                \
        asm(instruction ".rn.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));                      \
        return r;                                                                               \
    }
#define IEEE_COMPARE(name, test, op)                                                            \
    __host__ __device__ __forceinline__ bool name(float a, float b) {                           \
        unsigned r;                                                                             \
        asm("{ .reg .pred p; setp." test ".f32 p, %1, %2; selp.u32 %0, 1, 0, p; }" : "=r"(r) : "f"(a), "f"(b)); \
        return r != 0;                                                                          \
    }
#else
#define IEEE_BINARY(name, instruction) /* host: instruction unused */                            \
    __host__ __device__ __forceinline__ float name(float a, float b) { return ieee_host_##name(a, b); }
#define IEEE_COMPARE(name, test, op) \
    __host__ __device__ __forceinline__ bool name(float a, float b) { return a op b; }
__host__ __device__ __forceinline__ float ieee_host_add_rn(float a, float b) { return a + b; }
__host__ __device__ __forceinline__ float ieee_host_sub_rn(float a, float b) { return a - b; }
__host__ __device__ __forceinline__ float ieee_host_mul_rn(float a, float b) { return a * b; }
__host__ __device__ __forceinline__ float ieee_host_div_rn(float a, float b) { return a / b; }
#endif

IEEE_BINARY(add_rn, "add")
IEEE_BINARY(sub_rn, "sub")
IEEE_BINARY(mul_rn, "mul")
IEEE_BINARY(div_rn, "div")
IEEE_COMPARE(less, "lt", <)
IEEE_COMPARE(greater, "gt", >)
IEEE_COMPARE(equal, "eq", ==)

__host__ __device__ __forceinline__ int float_bits(float x) {
#ifdef __CUDA_ARCH__
    return __float_as_int(x);
#else
    union { float f; int i; } u = {x};
    return u.i;
#endif
}

__host__ __device__ __forceinline__ float bits_float(int i) {
#ifdef __CUDA_ARCH__
    return __int_as_float(i);
#else
    union { int i; float f; } u = {i};
    return u.f;
#endif
}

// a / b, the same as div_rn for every a and b. A zero dividend would send the lane's whole warp through the
// division's slow path (FCHK flags it), so it is divided as 1 / 1 and its signed zero selected.
__host__ __device__ __forceinline__ float div_rn_z(float a, float b) {
    const bool zero = equal(a, 0.0f) & equal(b, b) & !equal(b, 0.0f);
    const float q = div_rn(zero ? 1.0f : a, zero ? 1.0f : b);
    return zero ? bits_float((float_bits(a) ^ float_bits(b)) & 0x80000000) : q;
}

// log(1 + x) for float32 x >= 0 (NaN and inf pass through): the operations of log1p32 in
// gpupre/transforms/_log1p.py, one for one (see there). Without branches: both reductions of the
// mantissa are computed and one is selected, and the special cases are selected at the end.
__host__ __device__ __forceinline__ float log1p32(float x) {
    const float u = add_rn(1.0f, x);
    const int bits = float_bits(u);  // u >= 1, normal: frexp by its bits, m in [0.5, 1)
    const float m = bits_float((bits & 0x007fffff) | 0x3f000000);
    const bool low = less(m, 0.70710677f);
    const int e = ((bits >> 23) & 0xff) - 126 - (low ? 1 : 0);
    const float t = low ? sub_rn(add_rn(m, m), 1.0f) : sub_rn(m, 1.0f);
    const float z = mul_rn(t, t);
    const float c[9] = {7.0376836292e-2f, -1.1514610310e-1f, 1.1676998740e-1f, -1.2420140846e-1f, 1.4249322787e-1f,
                        -1.6668057665e-1f, 2.0000714765e-1f, -2.4999993993e-1f, 3.3333331174e-1f};
    float p = mul_rn(c[0], t);
#pragma unroll
    for (int k = 1; k < 9; k++) p = mul_rn(add_rn(p, c[k]), t);
    p = mul_rn(p, z);
    const float fe = (float)e;
    p = add_rn(p, mul_rn(-2.12194440e-4f, fe));
    p = sub_rn(p, mul_rn(0.5f, z));
    float r = add_rn(t, p);
    r = add_rn(r, mul_rn(0.693359375f, fe));
    const bool passes = (x != x) | (float_bits(x) == 0x7f800000) | equal(u, 1.0f);  // NaN, +inf, tiny x
    const float lost = sub_rn(x, sub_rn(u, 1.0f));  // what rounding took from u; 0 where 1 + x is exact
    r = add_rn(r, div_rn_z(passes ? 0.0f : lost, passes ? 1.0f : u));
    return passes ? x : r;
}
