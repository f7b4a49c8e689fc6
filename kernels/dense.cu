// The dense pass: one program per output over the columns of a feature-major matrix, every
// program of the plan in one launch (blockIdx.y picks the program, blockIdx.x a tile of rows).
//
// A program is a row of the plan's tables (see DenseProgram in gpupre/transforms/plan.py):
// float steps (fill, log1p, clamp, normalize, minmax) and optionally a last step that makes an id
// (bucketize, hash, modulo, cast). Each thread runs the program over 8 rows: two groups of 4
// consecutive rows, blockDim * 4 rows apart so that each load and store of the warp is coalesced,
// each group loaded and stored as one 16-byte vector when the row length allows it. Eight rows a
// thread spread the per-thread and per-step work over more rows than four (measured: 0.58 -> 0.68
// of a device-to-device copy's bandwidth at 100 and 500 features, the kernel being issue-bound).
#include "hash.cuh"
#include "ieee.cuh"
#include "plan.cuh"

#define DENSE_ROWS_PER_THREAD 8  // as two groups of 4 (one 16-byte vector each)
#define GROUPS (DENSE_ROWS_PER_THREAD / 4)

// One float step over a thread's rows. The switch is taken once per step (the code is the same for
// the whole block) and each case is a straight loop over the rows, with no branch per row.
__device__ __forceinline__ void dense_step(int code, float (&y)[DENSE_ROWS_PER_THREAD], float a, float b) {
    switch (code) {
        case D_FILL:
#pragma unroll
            for (int j = 0; j < DENSE_ROWS_PER_THREAD; j++) y[j] = isnan(y[j]) ? a : y[j];
            break;
        case D_LOG1P:  // negatives count as 0; NaN passes through log1p32
#pragma unroll
            for (int j = 0; j < DENSE_ROWS_PER_THREAD; j++) y[j] = log1p32(less(y[j], 0.0f) ? 0.0f : y[j]);
            break;
        case D_CLAMP:  // NaN stays NaN
#pragma unroll
            for (int j = 0; j < DENSE_ROWS_PER_THREAD; j++) y[j] = less(y[j], a) ? a : (greater(y[j], b) ? b : y[j]);
            break;
        case D_NORMALIZE:
            if (equal(b, 0.0f)) {
#pragma unroll
                for (int j = 0; j < DENSE_ROWS_PER_THREAD; j++) y[j] = sub_rn(y[j], a);
            } else {
#pragma unroll
                for (int j = 0; j < DENSE_ROWS_PER_THREAD; j++) y[j] = div_rn_z(sub_rn(y[j], a), b);
            }
            break;
        case D_MINMAX:
            if (equal(b, a)) {
#pragma unroll
                for (int j = 0; j < DENSE_ROWS_PER_THREAD; j++) y[j] = isnan(y[j]) ? y[j] : 0.0f;
            } else {
                const float range = sub_rn(b, a);
#pragma unroll
                for (int j = 0; j < DENSE_ROWS_PER_THREAD; j++) y[j] = div_rn_z(sub_rn(y[j], a), range);
            }
            break;
        default:
            break;
    }
}

// the bucket of v: the number of boundaries below v (right: at or below); NaN: count + 1
__device__ __forceinline__ i64 bucket(float v, const float* bounds, i64 count, bool right) {
    if (isnan(v)) return count + 1;
    i64 lo = 0, hi = count;
    while (lo < hi) {
        i64 mid = (lo + hi) / 2;
        float b = bounds[mid];
        if (less(b, v) || (right && equal(b, v))) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}

extern "C" __global__ void dense_pass(
    const float* __restrict__ x, i64 n, i64 num_steps, i64 vec4,
    const int* __restrict__ src, const int* __restrict__ steps, const float* __restrict__ fparams,
    const i64* __restrict__ iparams, const float* __restrict__ boundaries,
    const int* __restrict__ out_dense, const int* __restrict__ out_id,
    float* __restrict__ dense_out, i64* __restrict__ ids_out, int* __restrict__ ids_valid) {
    const int p = blockIdx.y;
    const i64 block0 = (i64)blockIdx.x * blockDim.x * DENSE_ROWS_PER_THREAD + (i64)threadIdx.x * 4;
    if (block0 >= n) return;
    const float* in = x + (i64)src[p] * n;
    float y[DENSE_ROWS_PER_THREAD];
    const i64 stride = (i64)blockDim.x * 4;
    auto first = [&](int g) { return block0 + g * stride; };  // a group's first row
    auto count = [&](int g) { return max((i64)0, min((i64)4, n - first(g))); };  // its rows in the batch
#pragma unroll
    for (int g = 0; g < GROUPS; g++) {
        if (vec4 && count(g) == 4) {
            float4 v = *reinterpret_cast<const float4*>(in + first(g));
            y[4 * g] = v.x; y[4 * g + 1] = v.y; y[4 * g + 2] = v.z; y[4 * g + 3] = v.w;
        } else {
#pragma unroll
            for (int j = 0; j < 4; j++) y[4 * g + j] = j < count(g) ? in[first(g) + j] : 0.0f;
        }
    }
    int id_step = -1;
    for (i64 s = 0; s < num_steps; s++) {
        const i64 at = (i64)p * num_steps + s;
        const int code = steps[at];
        if (code == D_END) break;
        if (code >= D_BUCKETIZE) {
            id_step = (int)at;
            break;
        }
        dense_step(code, y, fparams[2 * at], fparams[2 * at + 1]);
    }
    if (out_dense[p] >= 0) {
        float* o = dense_out + (i64)out_dense[p] * n;
#pragma unroll
        for (int g = 0; g < GROUPS; g++) {
            if (vec4 && count(g) == 4) {
                *reinterpret_cast<float4*>(o + first(g)) = make_float4(y[4 * g], y[4 * g + 1], y[4 * g + 2], y[4 * g + 3]);
            } else {
#pragma unroll
                for (int j = 0; j < 4; j++)
                    if (j < count(g)) o[first(g) + j] = y[4 * g + j];
            }
        }
    }
    if (id_step < 0) return;
    const int code = steps[id_step];
    const i64 p0 = iparams[3 * id_step], p1 = iparams[3 * id_step + 1], p2 = iparams[3 * id_step + 2];
    const i64 row = (i64)out_id[p] * n;
#pragma unroll
    for (int k = 0; k < DENSE_ROWS_PER_THREAD; k++) {
        const int g = k / 4, j = k % 4;
        const float v = y[k];
        const bool valid = code == D_BUCKETIZE || !isnan(v);
        i64 made = 0;
        if (code == D_BUCKETIZE) made = bucket(v, boundaries + p0, p1, p2 != 0);
        else if (valid && code == D_HASH) made = sigrid_hash(float_to_id(v), p1, p0);
        else if (valid && code == D_MODULO) made = floor_mod(float_to_id(v), p0);
        else if (valid) made = float_to_id(v);
        if (j < count(g)) {
            ids_out[row + first(g) + j] = made;
            ids_valid[row + first(g) + j] = valid;
        }
    }
}
