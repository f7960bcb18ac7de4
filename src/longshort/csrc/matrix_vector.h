/* Matrix-vector products, shared by rnn_loops.c (the fused kernels' loops) and step_loops.c (the
 * compiled path's): for a step of up to a few rows, a call of the BLAS gemm costs more than the
 * arithmetic, and a plain dot product per output waits on its own adds. `longshort.native` builds
 * each C file with the headers of its folder in its cache key.
 *
 * For M (R, K) row-major, and the B rows of x and y, each row-major (x's ldx apart, y's ldy):
 *   rows_dot_<suffix>   y_b (R) += M x_b      four rows of M at once, four independent sums
 *   rows_axpy_<suffix>  y_b (K) += x_b^T M    four rows of M at once, added along y_b
 * reading each row of M once for all B rows (from L1 for the second and later).
 * matrix_vector_<suffix> is the product of a step, y (B, J) += x (B, I) A^T, with A stored either
 * way, on one thread or split between the threads of a parallel region; each thread then reads a
 * block of rows of A's memory (streamed from cache: splitting columns instead, each thread reading
 * a part of every row, was 5-6% slower for a custom LSTM cell's training step at B=1, H=256 and 512).
 * MATRIX_VECTOR(scalar, suffix) defines these for one type; it needs OpenMP (-fopenmp).
 * Beyond a few rows both files call torch's BLAS gemm instead: GEMM_FUNCTION(scalar, name) is its
 * type (Fortran convention: column-major, every argument by address). */
#ifndef LONGSHORT_MATRIX_VECTOR_H
#define LONGSHORT_MATRIX_VECTOR_H
#include <stdint.h>

#define GEMM_FUNCTION(scalar, name)                                                                    \
    typedef void (*name)(const char *, const char *, const int *, const int *, const int *, const scalar *, \
                         const scalar *, const int *, const scalar *, const int *, const scalar *, scalar *, \
                         const int *)

/* Where the thread `part` of `parts` starts in n outputs split between them (part = parts: n, the
 * end): evenly, rounded down to 16 elements, 64 bytes of float. */
static inline int64_t part_start(int64_t n, int64_t part, int64_t parts) {
    return part == parts ? n : (n * part / parts) & ~(int64_t)15;
}

#define MATRIX_VECTOR(scalar, suffix)                                                                  \
    static inline __attribute__((always_inline)) void rows_dot_##suffix(                               \
        int64_t B, int64_t R, int64_t K, const scalar *restrict M,                                     \
                                  const scalar *restrict x, scalar *restrict y, int64_t ldy) {         \
        int64_t r = 0;                                                                                 \
        for (; r + 4 <= R; r += 4) { /* four rows at once: four independent sums keep the FMAs busy */ \
            const scalar *restrict m0 = M + r * K, *restrict m1 = m0 + K;                              \
            const scalar *restrict m2 = m1 + K, *restrict m3 = m2 + K;                                 \
            for (int64_t b = 0; b < B; b++) { /* the four rows stay in L1 for every b */               \
                const scalar *restrict x_b = x + b * K;                                                \
                scalar s0 = 0, s1 = 0, s2 = 0, s3 = 0;                                                 \
                _Pragma("omp simd reduction(+ : s0, s1, s2, s3)") for (int64_t k = 0; k < K; k++) {    \
                    s0 += m0[k] * x_b[k], s1 += m1[k] * x_b[k], s2 += m2[k] * x_b[k], s3 += m3[k] * x_b[k];\
                }                                                                                      \
                scalar *restrict y_b = y + b * ldy + r;                                                \
                y_b[0] += s0, y_b[1] += s1, y_b[2] += s2, y_b[3] += s3;                                \
            }                                                                                          \
        }                                                                                              \
        for (; r < R; r++) {                                                                           \
            const scalar *restrict row = M + r * K;                                                    \
            for (int64_t b = 0; b < B; b++) {                                                          \
                const scalar *restrict x_b = x + b * K;                                                \
                scalar sum = 0;                                                                        \
                _Pragma("omp simd reduction(+ : sum)") for (int64_t k = 0; k < K; k++) sum += row[k] * x_b[k];\
                y[b * ldy + r] += sum;                                                                 \
            }                                                                                          \
        }                                                                                              \
    }                                                                                                  \
                                                                                                       \
    static inline __attribute__((always_inline)) void rows_axpy_##suffix(                              \
        int64_t B, int64_t R, int64_t K, const scalar *restrict M,                                     \
                                   const scalar *restrict x, int64_t ldx, scalar *restrict y) {        \
        int64_t r = 0;                                                                                 \
        for (; r + 4 <= R; r += 4) { /* four rows at once: y_b loaded and stored once for four FMAs */ \
            const scalar *restrict m0 = M + r * K, *restrict m1 = m0 + K;                              \
            const scalar *restrict m2 = m1 + K, *restrict m3 = m2 + K;                                 \
            for (int64_t b = 0; b < B; b++) {                                                          \
                const scalar *x_b = x + b * ldx + r, x0 = x_b[0], x1 = x_b[1], x2 = x_b[2], x3 = x_b[3]; \
                scalar *restrict y_b = y + b * K;                                                      \
                for (int64_t k = 0; k < K; k++) y_b[k] += x0 * m0[k] + x1 * m1[k] + x2 * m2[k] + x3 * m3[k]; \
            }                                                                                          \
        }                                                                                              \
        for (; r < R; r++) {                                                                           \
            const scalar *restrict row = M + r * K;                                                    \
            for (int64_t b = 0; b < B; b++) {                                                          \
                const scalar x_r = x[b * ldx + r];                                                     \
                scalar *restrict y_b = y + b * K;                                                      \
                for (int64_t k = 0; k < K; k++) y_b[k] += x_r * row[k];                                \
            }                                                                                          \
        }                                                                                              \
    }                                                                                                  \
                                                                                                       \
    /* y (B, J) += x (B, I) A^T, for A (J, I) stored row-major (a_rows) or as A^T (I, J) row-major.    \
     * With parts > 1, called by each thread of a parallel region (its number `part` of `parts`),     \
     * each computes: with a_rows a part of y's outputs, rows [j0, j1) of A (no barrier); otherwise   \
     * the sums over a block of A^T's rows [i0, i1), into partial sums of its own (on its stack, B J  \
     * elements), which the threads then add into y one after another in thread order (`ordered`,     \
     * ending in a barrier): the same result every run. (OpenMP's `reduction` adds the threads'       \
     * copies in the order they finish, which changed gradients in the last bits from run to run.) */ \
    static inline __attribute__((always_inline)) void matrix_vector_##suffix(                          \
        int64_t B, int64_t J, int64_t I, const scalar *a, int64_t a_rows, const scalar *x, scalar *y,  \
        int64_t part, int64_t parts) {                                                                 \
        if (a_rows) {                                                                                  \
            const int64_t j0 = part_start(J, part, parts), j1 = part_start(J, part + 1, parts);        \
            rows_dot_##suffix(B, j1 - j0, I, a + j0 * I, x, y + j0, J);                                \
        } else if (parts == 1) {                                                                       \
            rows_axpy_##suffix(B, I, J, a, x, I, y);                                                   \
        } else {                                                                                       \
            const int64_t i0 = part_start(I, part, parts), i1 = part_start(I, part + 1, parts);        \
            scalar partial[B * J];                                                                     \
            for (int64_t k = 0; k < B * J; k++) partial[k] = 0;                                        \
            rows_axpy_##suffix(B, i1 - i0, J, a + i0 * J, x + i0, I, partial);                         \
            _Pragma("omp for ordered schedule(static, 1)")                                             \
            for (int64_t p = 0; p < parts; p++) {                                                      \
                _Pragma("omp ordered")                                                                 \
                for (int64_t k = 0; k < B * J; k++) y[k] += partial[k];                                \
            }                                                                                          \
        }                                                                                              \
    }

#endif
