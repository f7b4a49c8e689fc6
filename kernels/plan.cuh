// The plan's opcodes, as in gpupre/transforms/plan.py (a test keeps the two equal).
#pragma once

// dense program steps
#define D_END 0
#define D_FILL 1
#define D_LOG1P 2
#define D_CLAMP 3
#define D_NORMALIZE 4
#define D_MINMAX 5
#define D_BUCKETIZE 6
#define D_HASH 7
#define D_MODULO 8
#define D_TO_ID 9

// sparse app kinds
#define S_COPY 0
#define S_TRUNCATE 1
#define S_SORT 2
#define S_NGRAM 3
#define S_CROSS 4
#define S_INTERSECT 5
#define S_UNION 6
#define S_OVERLAP 7

// elementwise id maps
#define M_END 0
#define M_HASH 1
#define M_MODULO 2

#define MAX_MAPS 4
