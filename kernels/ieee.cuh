// Float32 arithmetic and comparisons that keep subnormal numbers, whatever the compiler's
// flush-to-zero setting (CuPy compiles with -ftz=true): the CPU executors keep them, and results
// must agree bit for bit. Each is one PTX instruction without the .ftz modifier.
#pragma once

__device__ __forceinline__ float sub_rn(float a, float b) {
    float r;
    asm("sub.rn.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
    return r;
}

__device__ __forceinline__ float div_rn(float a, float b) {
    float r;
    asm("div.rn.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
    return r;
}

#define IEEE_COMPARE(name, op)                                                                   \
    __device__ __forceinline__ bool name(float a, float b) {                                     \
        unsigned r;                                                                              \
        asm("{ .reg .pred p; setp." op ".f32 p, %1, %2; selp.u32 %0, 1, 0, p; }" : "=r"(r) : "f"(a), "f"(b)); \
        return r != 0;                                                                           \
    }
IEEE_COMPARE(less, "lt")
IEEE_COMPARE(greater, "gt")
IEEE_COMPARE(equal, "eq")

__device__ __forceinline__ double widen(float a) {
    double r;
    asm("cvt.f64.f32 %0, %1;" : "=d"(r) : "f"(a));
    return r;
}

__device__ __forceinline__ float narrow(double a) {
    float r;
    asm("cvt.rn.f32.f64 %0, %1;" : "=f"(r) : "d"(a));
    return r;
}
