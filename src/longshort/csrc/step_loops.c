/* The compiled path's loops over time (`longshort.compiled_loops`), in C, for any step.
 *
 * TorchInductor compiles a step's forward and backward into kernels (functions `kernel` of
 * shared libraries it builds) and matmuls (calls of torch's BLAS), called in order by a Python
 * wrapper. `compiled_loops` records one call of that wrapper and writes it down as a program:
 * the calls of one step, in order, each argument an address that moves by a fixed number of
 * bytes a step. The two loops here run that program T times, forward from t = 0 and backward
 * from t = T - 1, calling the same kernels Inductor built (their addresses, from its libraries)
 * and torch's own gemm. Nothing here is built per step or per cell: a new cell costs no compile
 * beyond Inductor's own.
 *
 * The program, int64 words, call after call:
 *   kernel: KERNEL, n, address of the kernel, then n (slot, byte offset) pairs, one per argument
 *   gemm:   GEMM, dtype (0 float32, 1 float64), M, N, K,
 *           a (slot, offset), a transposed, lda, b (slot, offset), b transposed, ldb,
 *           out (slot, offset), ldc, bias (slot, offset; slot -1: no bias), bias strides (row, column),
 *           alpha and beta (the bits of a double)
 * An argument's address at step t is base[slot] + t * stride[slot] + offset.
 *
 * A matmul out (M, N) = beta bias + alpha a (M, K) b (K, N), all row-major (a, b maybe stored
 * transposed), goes to the BLAS gemm (column-major, Fortran convention) as
 * out^T (N, M) = alpha b^T a^T + beta out^T, in which a row-major b is read as b^T as it is ('N').
 * Up to SMALL_ROWS rows (M), with a, b and out each contiguous, it is this file's own
 * matrix-vector products instead (matrix_vector.h; a large one split between the threads):
 * a gemm call costs more than the arithmetic there. `longshort.compiled` then keeps the step's small matmuls as matmuls,
 * instead of tracing them as a multiply and a sum, which Inductor compiles into one dot product
 * per output with a single accumulator, waiting on its adds. From there up to STEP_SPLIT_ROWS
 * rows, a large product (N K >= STEP_SPLIT_PRODUCT) is split between the threads too, each a gemm
 * on a block of the outputs for all rows, as rnn_loops.c does: called from one thread, MKL's gemm
 * splits it itself, slower. A custom LSTM cell's training step, side by side: 0.90-0.95x the time
 * at B=5-8, H=128, 0.89-0.96x at B=8-16, H=256, 0.91x at B=12, H=512; no faster at B=16, H=128 or
 * at B=32, where it came out 0.93-1.07x.
 *
 * Masks (mask (T, B) bytes, NULL for none): at a padding row the state is carried over, and
 * in the backward its cotangent passes back unchanged, the step's own share zeroed.
 *
 * Every kernel parameter is a pointer (`compiled_loops` refuses a kernel with any other), so a
 * kernel is called through a function type of its number of parameters, all `void*`.
 */
#include <omp.h>
#include <stdint.h>
#include <string.h>

#include "matrix_vector.h"

/* SMALL_ROWS: longshort.compiled.MATRIX_VECTOR_ROWS; STEP_SPLIT_PRODUCT: from N K of this many on,
 * up to STEP_SPLIT_ROWS rows, a product is split between the threads (a 128-unit LSTM's 512 x 128
 * is; a 64-unit one's, split, trained a custom cell 4-12% slower than on one thread at B=1 and 4). */
enum { KERNEL = 0, GEMM = 1, MAX_ARGUMENTS = 32, SMALL_ROWS = 4, STEP_SPLIT_ROWS = 16, STEP_SPLIT_PRODUCT = 1 << 16 };

GEMM_FUNCTION(float, sgemm_function);
GEMM_FUNCTION(double, dgemm_function);

static char* at(char* const* base, const int64_t* stride, int64_t t, const int64_t* slot_offset) {
    return base[slot_offset[0]] + t * stride[slot_offset[0]] + slot_offset[1];
}

static double as_double(int64_t bits) {
    double value;
    memcpy(&value, &bits, sizeof value);
    return value;
}

#define MATMUL(scalar, gemm_type)                                                                      \
    MATRIX_VECTOR(scalar, scalar)                                                                      \
    /* c (M, N) = a (M, K) b (K, N), M <= SMALL_ROWS, all contiguous, b stored as b^T (N, K) if        \
     * `transposed`; from STEP_SPLIT_PRODUCT on split between OpenMP's threads, as Inductor's kernels are. */\
    static void small_matmul_##scalar(int M, int N, int K, const scalar* a, const scalar* b, int transposed, \
                                      scalar* c) {                                                     \
        for (int i = 0; i < M * N; i++) c[i] = 0;                                                      \
        if ((int64_t)N * K >= STEP_SPLIT_PRODUCT && omp_get_max_threads() > 1) {                            \
            _Pragma("omp parallel") /* c += a b */                                                     \
            matrix_vector_##scalar(M, N, K, b, transposed, a, c, omp_get_thread_num(), omp_get_num_threads()); \
        } else {                                                                                       \
            matrix_vector_##scalar(M, N, K, b, transposed, a, c, 0, 1);                                \
        }                                                                                              \
    }                                                                                                  \
    /* The columns [j0, j1) of c (M, N) = alpha a b + scale_c c: of out^T, the rows j0.. of b^T. */    \
    static void gemm_columns_##scalar(void* gemm, int j0, int j1, int M, int K, scalar alpha, const scalar* a, \
                                      char op_a, int lda, const scalar* b, char op_b, int ldb, scalar scale_c, \
                                      scalar* c, int ldc) {                                            \
        const int n = j1 - j0;                                                                         \
        const scalar* b_columns = b + (op_b == 'N' ? (int64_t)j0 : (int64_t)j0 * ldb);                 \
        ((gemm_type)gemm)(&op_b, &op_a, &n, &M, &K, &alpha, b_columns, &ldb, a, &lda, &scale_c, c + j0, &ldc); \
    }                                                                                                  \
    static void matmul_##scalar(void* gemm, int M, int N, int K, scalar alpha, const scalar* a, char op_a, \
                                int lda, const scalar* b, char op_b, int ldb, scalar beta, scalar* c, int ldc, \
                                const scalar* bias, int64_t bias_row, int64_t bias_column) {           \
        if (M <= SMALL_ROWS && op_a == 'N' && lda == K && ldc == N && ldb == (op_b == 'N' ? N : K)) {  \
            small_matmul_##scalar(M, N, K, a, b, op_b == 'T', c);                                      \
            for (int i = 0; i < M; i++)                                                                \
                for (int j = 0; j < N; j++)                                                            \
                    c[i * N + j] = alpha * c[i * N + j] + (bias ? beta * bias[i * bias_row + j * bias_column] : 0); \
            return;                                                                                    \
        }                                                                                              \
        if (bias)                                                                                      \
            for (int i = 0; i < M; i++)                                                                \
                for (int j = 0; j < N; j++) c[i * ldc + j] = bias[i * bias_row + j * bias_column];     \
        const scalar scale_c = bias ? beta : (scalar)0;                                                \
        if (M <= STEP_SPLIT_ROWS && (int64_t)N * K >= STEP_SPLIT_PRODUCT && omp_get_max_threads() > 1) { \
            _Pragma("omp parallel") /* each thread the outputs [j0, j1) of every row */                \
            {                                                                                          \
                const int part = omp_get_thread_num(), parts = omp_get_num_threads();                  \
                gemm_columns_##scalar(gemm, part_start(N, part, parts), part_start(N, part + 1, parts), M, K, alpha, \
                                      a, op_a, lda, b, op_b, ldb, scale_c, c, ldc);                    \
            }                                                                                          \
        } else {                                                                                       \
            gemm_columns_##scalar(gemm, 0, N, M, K, alpha, a, op_a, lda, b, op_b, ldb, scale_c, c, ldc); \
        }                                                                                              \
    }
MATMUL(float, sgemm_function)
MATMUL(double, dgemm_function)

static void call_kernel(void* f, int64_t n, void** a) {
    typedef void* p;
    switch (n) {
        case 1: ((void (*)(p))f)(a[0]); break;
        case 2: ((void (*)(p, p))f)(a[0], a[1]); break;
        case 3: ((void (*)(p, p, p))f)(a[0], a[1], a[2]); break;
        case 4: ((void (*)(p, p, p, p))f)(a[0], a[1], a[2], a[3]); break;
        case 5: ((void (*)(p, p, p, p, p))f)(a[0], a[1], a[2], a[3], a[4]); break;
        case 6: ((void (*)(p, p, p, p, p, p))f)(a[0], a[1], a[2], a[3], a[4], a[5]); break;
        case 7: ((void (*)(p, p, p, p, p, p, p))f)(a[0], a[1], a[2], a[3], a[4], a[5], a[6]); break;
        case 8: ((void (*)(p, p, p, p, p, p, p, p))f)(a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]); break;
#define P8 p, p, p, p, p, p, p, p
#define A8(k) a[k], a[k + 1], a[k + 2], a[k + 3], a[k + 4], a[k + 5], a[k + 6], a[k + 7]
        case 9: ((void (*)(P8, p))f)(A8(0), a[8]); break;
        case 10: ((void (*)(P8, p, p))f)(A8(0), a[8], a[9]); break;
        case 11: ((void (*)(P8, p, p, p))f)(A8(0), a[8], a[9], a[10]); break;
        case 12: ((void (*)(P8, p, p, p, p))f)(A8(0), a[8], a[9], a[10], a[11]); break;
        case 13: ((void (*)(P8, p, p, p, p, p))f)(A8(0), a[8], a[9], a[10], a[11], a[12]); break;
        case 14: ((void (*)(P8, p, p, p, p, p, p))f)(A8(0), a[8], a[9], a[10], a[11], a[12], a[13]); break;
        case 15: ((void (*)(P8, p, p, p, p, p, p, p))f)(A8(0), a[8], a[9], a[10], a[11], a[12], a[13], a[14]); break;
        case 16: ((void (*)(P8, P8))f)(A8(0), A8(8)); break;
        case 17: ((void (*)(P8, P8, p))f)(A8(0), A8(8), a[16]); break;
        case 18: ((void (*)(P8, P8, p, p))f)(A8(0), A8(8), a[16], a[17]); break;
        case 19: ((void (*)(P8, P8, p, p, p))f)(A8(0), A8(8), a[16], a[17], a[18]); break;
        case 20: ((void (*)(P8, P8, p, p, p, p))f)(A8(0), A8(8), a[16], a[17], a[18], a[19]); break;
        case 21: ((void (*)(P8, P8, p, p, p, p, p))f)(A8(0), A8(8), a[16], a[17], a[18], a[19], a[20]); break;
        case 22: ((void (*)(P8, P8, p, p, p, p, p, p))f)(A8(0), A8(8), a[16], a[17], a[18], a[19], a[20], a[21]); break;
        case 23: ((void (*)(P8, P8, p, p, p, p, p, p, p))f)(A8(0), A8(8), a[16], a[17], a[18], a[19], a[20], a[21], a[22]); break;
        case 24: ((void (*)(P8, P8, P8))f)(A8(0), A8(8), A8(16)); break;
        case 25: ((void (*)(P8, P8, P8, p))f)(A8(0), A8(8), A8(16), a[24]); break;
        case 26: ((void (*)(P8, P8, P8, p, p))f)(A8(0), A8(8), A8(16), a[24], a[25]); break;
        case 27: ((void (*)(P8, P8, P8, p, p, p))f)(A8(0), A8(8), A8(16), a[24], a[25], a[26]); break;
        case 28: ((void (*)(P8, P8, P8, p, p, p, p))f)(A8(0), A8(8), A8(16), a[24], a[25], a[26], a[27]); break;
        case 29: ((void (*)(P8, P8, P8, p, p, p, p, p))f)(A8(0), A8(8), A8(16), a[24], a[25], a[26], a[27], a[28]); break;
        case 30: ((void (*)(P8, P8, P8, p, p, p, p, p, p))f)(A8(0), A8(8), A8(16), a[24], a[25], a[26], a[27], a[28], a[29]); break;
        case 31: ((void (*)(P8, P8, P8, p, p, p, p, p, p, p))f)(A8(0), A8(8), A8(16), a[24], a[25], a[26], a[27], a[28], a[29], a[30]); break;
        case 32: ((void (*)(P8, P8, P8, P8))f)(A8(0), A8(8), A8(16), A8(24)); break;
#undef P8
#undef A8
    }
}

/* Step t of the program. */
static void run_step(const int64_t* program, int64_t length, int64_t t, char* const* base, const int64_t* stride,
                     void* const* gemm) {
    void* arguments[MAX_ARGUMENTS];
    for (int64_t k = 0; k < length;) {
        const int64_t* call = program + k;
        if (call[0] == KERNEL) {
            const int64_t n = call[1];
            for (int64_t j = 0; j < n; j++) arguments[j] = at(base, stride, t, call + 3 + 2 * j);
            call_kernel((void*)(intptr_t)call[2], n, arguments);
            k += 3 + 2 * n;
        } else { /* GEMM */
            const int M = (int)call[2], N = (int)call[3], K = (int)call[4];
            char* a = at(base, stride, t, call + 5);
            char* b = at(base, stride, t, call + 9);
            char* out = at(base, stride, t, call + 13);
            char* bias = call[16] < 0 ? NULL : at(base, stride, t, call + 16);
            const char op_a = call[7] ? 'T' : 'N', op_b = call[11] ? 'T' : 'N';
            const double alpha = as_double(call[20]), beta = as_double(call[21]);
            if (call[1] == 0)
                matmul_float(gemm[0], M, N, K, (float)alpha, (const float*)a, op_a, (int)call[8], (const float*)b, op_b,
                             (int)call[12], (float)beta, (float*)out, (int)call[15], (const float*)bias, call[18], call[19]);
            else
                matmul_double(gemm[1], M, N, K, alpha, (const double*)a, op_a, (int)call[8], (const double*)b, op_b,
                              (int)call[12], beta, (double*)out, (int)call[15], (const double*)bias, call[18], call[19]);
            k += 22;
        }
    }
}

/* Padding rows (mask_t[b] == 0), `row` bytes each: copied from `from` to `to`, or zeroed in `to` (from NULL). */
static void padding_rows(const uint8_t* mask_t, int64_t B, int64_t row, char* to, const char* from) {
    for (int64_t b = 0; b < B; b++)
        if (!mask_t[b]) {
            if (from) memcpy(to + b * row, from + b * row, row);
            else memset(to + b * row, 0, row);
        }
}

/* The state's leaves: state[l] + t * state_stride[l] is leaf l at the start of step t (its
 * (T + 1) rows of state_bytes[l] bytes each); gemm = {sgemm, dgemm}. */
void forward_steps(const int64_t* program, int64_t length, int64_t T, char* const* base, const int64_t* stride,
                   const uint8_t* mask, int64_t B, int64_t leaves, char* const* state, const int64_t* state_stride,
                   const int64_t* state_bytes, void* const* gemm) {
    for (int64_t t = 0; t < T; t++) {
        run_step(program, length, t, base, stride, gemm);
        for (int64_t l = 0; mask && l < leaves; l++) { /* a padding row keeps the state it had */
            char* before = state[l] + t * state_stride[l];
            padding_rows(mask + t * B, B, state_bytes[l] / B, before + state_stride[l], before);
        }
    }
}

/* cotangent[l] + t * cotangent_stride[l]: the cotangent of leaf l at the start of step t, written
 * by step t; row T holds the final state's. passed[l]: a row of scratch per leaf. */
void backward_steps(const int64_t* program, int64_t length, int64_t T, char* const* base, const int64_t* stride,
                    const uint8_t* mask, int64_t B, int64_t leaves, char* const* cotangent,
                    const int64_t* cotangent_stride, const int64_t* cotangent_bytes, void* const* gemm,
                    char* const* passed) {
    for (int64_t t = T - 1; t >= 0; t--) {
        for (int64_t l = 0; mask && l < leaves; l++) { /* a padding row's cotangent skips the step */
            char* after = cotangent[l] + (t + 1) * cotangent_stride[l];
            padding_rows(mask + t * B, B, cotangent_bytes[l] / B, passed[l], after);
            padding_rows(mask + t * B, B, cotangent_bytes[l] / B, after, NULL);
        }
        run_step(program, length, t, base, stride, gemm);
        for (int64_t l = 0; mask && l < leaves; l++)
            padding_rows(mask + t * B, B, cotangent_bytes[l] / B, cotangent[l] + t * cotangent_stride[l], passed[l]);
    }
}
