// The sparse passes of one plan level: every app (one output list feature, or one OverlapCount)
// of every feature in one launch each. blockIdx.y picks the app, blockIdx.x a tile of ROWS rows.
//
//   level_lengths  the length of each output row (a thread per row; a warp per row for set ops)
//                  -> out_lengths, and into scan[1 + shift + key * n + row] for the prefix sum
//   (the caller's library scan turns scan into offsets)
//   level_values   the ids (and weights) of each output row (a thread per output id; a thread
//                  per input id for SortByScore; a warp per row for set ops)
//
// Inputs are the previous level's outputs in KeyedJaggedTensor layout (key-major). At level 0,
// keys >= num_keys are the ids made by the dense pass: one per row, present where ids_valid is 1.
// Kernels report bad input (a negative length) through `status`: {code, key, row, value}.
#include "hash.cuh"
#include "ieee.cuh"
#include "plan.cuh"

#define ROWS 256
#define FULL_MASK 0xffffffffu
#define ERR_NEGATIVE_LENGTH 1
#define ERR_TOO_LONG 2

// The input lists of a level.
struct Lists {
    const int* lengths;
    const i64* offsets;  // where each (key, row) starts in values, plus base
    i64 base;
    const i64* values;
    const float* weights;  // null when the level's input carries none
    i64 num_keys;          // keys at and above this are ids made by the dense pass
    const i64* ids;        // [keys - num_keys, n]
    const int* valid;      // [keys - num_keys, n]
    i64 n;

    __device__ int length(int key, i64 row) const {
        return key < num_keys ? lengths[key * n + row] : valid[(key - num_keys) * n + row];
    }
    // the row's ids, and where they start in values (for weights); length through `len`
    __device__ const i64* row(int key, i64 row, int& len, i64& start) const {
        if (key < num_keys) {
            len = lengths[key * n + row];
            start = offsets[key * n + row] - base;
            return values + start;
        }
        len = valid[(key - num_keys) * n + row];
        start = -1;
        return ids + (key - num_keys) * n + row;
    }
};

// An app's elementwise maps (Hash, Modulo) on an input or its output.
struct Maps {
    const int* codes;
    const i64* params;
    __device__ i64 operator()(i64 v) const {
        for (int j = 0; j < MAX_MAPS; j++) {
            const int code = codes[j];
            if (code == M_HASH) v = sigrid_hash(v, params[2 * j + 1], params[2 * j]);
            else if (code == M_MODULO) v = floor_mod(v, params[2 * j]);
            else break;
        }
        return v;
    }
};

__device__ __forceinline__ void report(i64* status, i64 code, i64 key, i64 row, i64 value) {
    if (atomicCAS(reinterpret_cast<u64*>(status), 0ULL, (u64)code) == 0ULL) {
        status[1] = key;
        status[2] = row;
        status[3] = value;
    }
}

// element q of the concatenation of rows a and b, mapped
__device__ __forceinline__ i64 element(i64 q, const i64* va, int la, const Maps& fa, const i64* vb, const Maps& fb) {
    return q < la ? fa(va[q]) : fb(vb[q - la]);
}

__device__ __forceinline__ bool contains(const i64* vb, int lb, const Maps& fb, i64 v) {
    for (int q = 0; q < lb; q++)
        if (fb(vb[q]) == v) return true;
    return false;
}

// Set ops, a warp per row: visit the candidates of the row 32 at a time in order, keeping
// Intersect: the first occurrences in a that b contains; Union: the first occurrences in a ++ b;
// OverlapCount: the ids of a (repeats included) that b contains. Writes the kept ids from `dst`
// when out is not null; returns how many were kept (on every lane).
__device__ i64 set_row(int kind, const i64* va, int la, const Maps& fa, const i64* vb, int lb, const Maps& fb,
                       const Maps& post, i64* out, float* out_weights, i64 dst) {
    const int lane = threadIdx.x & 31;
    const i64 total = kind == S_UNION ? (i64)la + lb : la;
    i64 kept = 0;
    for (i64 c = 0; c < total; c += 32) {
        const i64 q = c + lane;
        bool keep = false;
        i64 v = 0;
        if (q < total) {
            v = element(q, va, la, fa, vb, fb);
            keep = true;
            if (kind != S_OVERLAP)
                for (i64 p = 0; p < q && keep; p++) keep = element(p, va, la, fa, vb, fb) != v;
            if (keep && kind != S_UNION) keep = contains(vb, lb, fb, v);
        }
        const unsigned mask = __ballot_sync(FULL_MASK, keep);
        if (keep && out) {
            const i64 at = dst + kept + __popc(mask & ((1u << lane) - 1u));
            out[at] = post(v);
            if (out_weights) out_weights[at] = 1.0f;
        }
        kept += __popc(mask);
    }
    return kept;
}

#define LEVEL_ARGS                                                                                  \
    i64 n, const int *__restrict__ kind, const int *__restrict__ key_a, const int *__restrict__ key_b, \
        const i64 *__restrict__ params, const int *__restrict__ maps, const i64 *__restrict__ map_params, \
        const unsigned char *__restrict__ weighted, const int *__restrict__ out,                        \
        const int *__restrict__ in_lengths, const i64 *__restrict__ in_offsets, i64 in_base,            \
        const i64 *__restrict__ in_values, const float *__restrict__ in_weights, i64 num_keys,          \
        const i64 *__restrict__ ids, const int *__restrict__ ids_valid

#define LEVEL_SETUP                                                                                 \
    const int app = blockIdx.y;                                                                     \
    const Lists in{in_lengths, in_offsets, in_base, in_values, in_weights, num_keys, ids, ids_valid, n}; \
    const Maps pre_a{maps + (app * 3 + 0) * MAX_MAPS, map_params + (app * 3 + 0) * MAX_MAPS * 2};     \
    const Maps pre_b{maps + (app * 3 + 1) * MAX_MAPS, map_params + (app * 3 + 1) * MAX_MAPS * 2};     \
    const Maps post{maps + (app * 3 + 2) * MAX_MAPS, map_params + (app * 3 + 2) * MAX_MAPS * 2};      \
    const int k = kind[app], a = key_a[app], b = key_b[app], o = out[app];                          \
    const i64 p0 = params[3 * app], p1 = params[3 * app + 1];                                        \
    const i64 r0 = (i64)blockIdx.x * ROWS, r1 = min(n, r0 + ROWS);

// Lengths of every output row. With copy > 0, blocks of the extra app index copy that many input
// lengths to scan[1:] first, so that one scan yields the input offsets and the output offsets.
extern "C" __global__ void level_lengths(LEVEL_ARGS, i64 num_apps, int* __restrict__ out_lengths,
                                         i64* __restrict__ scan, i64 shift, i64 copy,
                                         float* __restrict__ derived, i64* __restrict__ status) {
    if (blockIdx.x == 0 && blockIdx.y == 0 && threadIdx.x == 0) scan[0] = 0;
    if (blockIdx.y == num_apps) {
        for (i64 e = (i64)blockIdx.x * blockDim.x + threadIdx.x; e < copy; e += (i64)gridDim.x * blockDim.x) {
            const int len = in_lengths[e];
            if (len < 0) report(status, ERR_NEGATIVE_LENGTH, e / n, e % n, len);
            scan[1 + e] = len;
        }
        return;
    }
    LEVEL_SETUP
    (void)pre_a; (void)post; (void)p1;
    if (k == S_INTERSECT || k == S_UNION || k == S_OVERLAP) {
        for (i64 r = r0 + threadIdx.x / 32; r < r1; r += blockDim.x / 32) {
            int la, lb;
            i64 sa, sb;
            const i64* va = in.row(a, r, la, sa);
            const i64* vb = in.row(b, r, lb, sb);
            const i64 count = set_row(k, va, max(la, 0), pre_a, vb, max(lb, 0), pre_b, post, nullptr, nullptr, 0);
            if ((threadIdx.x & 31) == 0) {
                if (la < 0 || lb < 0) report(status, ERR_NEGATIVE_LENGTH, la < 0 ? a : b, r, min(la, lb));
                if (k == S_OVERLAP) {
                    derived[o * n + r] = (float)count;
                } else {
                    out_lengths[o * n + r] = (int)count;
                    scan[1 + shift + o * n + r] = count;
                }
            }
        }
        return;
    }
    const i64 r = r0 + threadIdx.x;
    if (r >= r1) return;
    const int la = in.length(a, r);
    if (la < 0) report(status, ERR_NEGATIVE_LENGTH, a, r, la);
    i64 len = la;
    if (k == S_TRUNCATE) len = min((i64)la, p0);
    else if (k == S_SORT) len = p1 < 0 ? la : min((i64)la, p1);
    else if (k == S_NGRAM) len = max((i64)la - p0 + 1, (i64)0);
    else if (k == S_CROSS) {
        const int lb = in.length(b, r);
        if (lb < 0) report(status, ERR_NEGATIVE_LENGTH, b, r, lb);
        len = (i64)la * lb;
        if (len > 0x7FFFFFFF) report(status, ERR_TOO_LONG, app, r, len);
    }
    len = max(len, (i64)0);
    out_lengths[o * n + r] = (int)len;
    scan[1 + shift + o * n + r] = len;
}

// x precedes y in score order: NaN last, ties keep their order (strict)
__device__ __forceinline__ bool before(float x, float y, bool descending) {
    if (isnan(x)) return false;
    if (isnan(y)) return true;
    return descending ? greater(x, y) : less(x, y);
}

// the tile row holding element e: the last t with offsets[t] <= e (offsets ascending, e < offsets[rows])
__device__ __forceinline__ int tile_row(const i64* offsets, int rows, i64 e) {
    int lo = 0, hi = rows;
    while (hi - lo > 1) {
        const int mid = (lo + hi) / 2;
        if (offsets[mid] <= e) lo = mid;
        else hi = mid;
    }
    return lo;
}

// Ids (and weights, when out_weights is not null) of every output row.
extern "C" __global__ void level_values(LEVEL_ARGS, const i64* __restrict__ out_offsets, i64 out_base,
                                        i64* __restrict__ out_values, float* __restrict__ out_weights) {
    LEVEL_SETUP
    if (k == S_OVERLAP || r0 >= n) return;
    const int rows = (int)(r1 - r0);
    __shared__ i64 s_out[ROWS + 1];  // this tile's output offsets
    __shared__ i64 s_in[ROWS + 1];   // and input offsets of key a (SortByScore)
    for (int t = threadIdx.x; t <= rows; t += blockDim.x) {
        s_out[t] = out_offsets[o * n + r0 + t] - out_base;
        if (k == S_SORT) s_in[t] = in_offsets[a * n + r0 + t] - in_base;
    }
    __syncthreads();
    const i64 begin = s_out[0], end = s_out[rows];
    const bool keep_weights = out_weights != nullptr && weighted[app];

    if (k == S_INTERSECT || k == S_UNION) {
        for (int t = threadIdx.x / 32; t < rows; t += blockDim.x / 32) {
            int la, lb;
            i64 sa, sb;
            const i64* va = in.row(a, r0 + t, la, sa);
            const i64* vb = in.row(b, r0 + t, lb, sb);
            set_row(k, va, la, pre_a, vb, lb, pre_b, post, out_values, out_weights, s_out[t]);
        }
        return;
    }
    if (k == S_SORT) {  // each input id finds its rank in its row and goes there if within top_k
        const bool descending = p0 != 0;
        for (i64 e = s_in[0] + threadIdx.x; e < s_in[rows]; e += blockDim.x) {
            const int t = tile_row(s_in, rows, e);
            const i64 start = s_in[t], len = s_in[t + 1] - start, i = e - start;
            const float score = in_weights[e];
            i64 rank = 0;
            for (i64 q = 0; q < len; q++) {
                const float other = in_weights[start + q];
                rank += before(other, score, descending) || (q < i && !before(score, other, descending));
            }
            if (rank < s_out[t + 1] - s_out[t]) {
                const i64 at = s_out[t] + rank;
                out_values[at] = post(pre_a(in_values[e]));
                if (out_weights) out_weights[at] = keep_weights ? score : 1.0f;
            }
        }
        return;
    }
    if (k == S_COPY && a < num_keys) {  // a tile of rows of one key is one contiguous range
        const i64 src = in_offsets[a * n + r0] - in_base - begin;
        for (i64 e = begin + threadIdx.x; e < end; e += blockDim.x) {
            out_values[e] = post(pre_a(in_values[src + e]));
            if (out_weights) out_weights[e] = keep_weights ? in_weights[src + e] : 1.0f;
        }
        return;
    }
    for (i64 e = begin + threadIdx.x; e < end; e += blockDim.x) {  // a thread per output id
        const int t = tile_row(s_out, rows, e);
        const i64 r = r0 + t, j = e - s_out[t];
        int la;
        i64 sa;
        const i64* va = in.row(a, r, la, sa);
        i64 v, from = sa + j;  // from: where the weight comes from
        if (k == S_COPY) {
            v = pre_a(va[j]);
        } else if (k == S_TRUNCATE) {
            const i64 skip = p1 != 0 ? la - (s_out[t + 1] - s_out[t]) : 0;  // keep="last": the tail
            v = pre_a(va[skip + j]);
            from = sa + skip + j;
        } else if (k == S_NGRAM) {
            u64 h = (u64)pre_a(va[j]);
            for (i64 m = 1; m < p0; m++) h = hash_128_to_64(h, (u64)pre_a(va[j + m]));
            v = sigrid_hash((i64)h, params[3 * app + 2], p1);
        } else {  // S_CROSS: pair (x, y) of the row, row-major
            int lb;
            i64 sb;
            const i64* vb = in.row(b, r, lb, sb);
            v = sigrid_hash(cross_id(pre_a(va[j / lb]), pre_b(vb[j % lb])), p1, p0);
        }
        out_values[e] = post(v);
        if (out_weights) out_weights[e] = keep_weights && sa >= 0 ? in_weights[from] : 1.0f;
    }
}
