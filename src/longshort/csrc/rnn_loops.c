/* The fused kernels' loops over time, forward and backward, in C: LSTM, GRU, SimpleRNN and the
 * LSTM variants (peephole, layer norm, zoneout).
 *
 * `longshort.fused_lstm`, `fused_gru`, `fused_simple_rnn` and `fused_lstm_variants` hold the same
 * loops with torch ops, which run where this file cannot be compiled; the derivations of the
 * backwards, in the symbols used below, open those files, and the tests check that the two
 * versions agree. Done
 * with torch ops, a step is a recurrent matmul and a few small ops (the LSTM's: seven forward,
 * four backward), each dispatched from Python; at small batches that costs more than the
 * arithmetic. Here a whole loop is one call: each step is one call of the BLAS gemm that torch
 * itself uses (the caller passes its address: MKL's sgemm_ / dgemm_, Fortran convention), or at
 * batches up to SMALL_BATCH matrix-vector products of this file's own, and one pass over
 * the batch.
 *
 * The LSTM first (the others' equations are with their loops, further down).
 *
 * Layouts, all row-major and contiguous: z, dz (B, 4H) in gate order i, f, g, o; every state
 * and state gradient (B, H); step_mask (B) bytes, 1 at a real step, or NULL (all real). The
 * loops take them for all steps: z_all, dz_all (T, B, 4H), h_all, c_all (T + 1, B, H) (row t + 1
 * is the state after step t), masks (T, B), recurrent_mask (B, H) or NULL.
 *
 * Forward, per unit:   i, f, o = sigmoid(z_i, z_f, z_o),  g = tanh(z_g)   (written over z)
 *                      c = f * c_prev + i * g,  h = o * tanh(c)           (tanh(c) kept)
 * At a masked step the carried state is the previous one: c = c_prev, h = h_prev.
 *
 * Backward, per unit, from dh = dL/dh_t (its output's and the later steps' share) and
 * dc = dL/dc_t (overwritten by dL/dc_{t-1}):
 *      dc   = dc + dh * o * (1 - tanh(c)^2)
 *      dz_i = dc * g * i * (1 - i)          dz_f = dc * c_prev * f * (1 - f)
 *      dz_g = dc * i * (1 - g^2)            dz_o = dh * tanh(c) * o * (1 - o)
 *      dc_prev = dc * f
 * then dh_prev += r (dz W_hh), r the recurrent dropout mask (1 without). At a masked step
 * dz = 0, and dh (added onto dh_prev) and dc pass to the previous step unchanged.
 *
 * Built by `longshort.native` with -O2 -ftree-vectorize -fvect-cost-model=dynamic (-O3's vectorizer,
 * as fast here and quicker to compile) -march=native -fno-math-errno -fopenmp (the last for the
 * threads that split a batch, below, and the `omp simd reduction` pragmas, which let a sum be
 * vectorised; the OpenMP runtime is the libgomp torch has loaded already). glibc's libmvec holds
 * vector versions of exp and tanh; declared below, the compiler calls them 8 or 16 lanes at a
 * time. (-ffast-math would declare them too, but would also let the compiler assume no NaN or
 * infinity, and longshort's guards need a NaN to come out as a NaN.)
 */
#include <math.h>
#include <omp.h>
#include <stddef.h>
#include <stdint.h>

#include "matrix_vector.h"

#if !(defined(__x86_64__) && defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 35)))
#error "needs glibc >= 2.35 on x86-64 for vector exp and tanh (libmvec); without them torch's own ops are faster"
#endif

float expf(float) __attribute__((simd("notinbranch")));
float tanhf(float) __attribute__((simd("notinbranch")));
double exp(double) __attribute__((simd("notinbranch")));
double tanh(double) __attribute__((simd("notinbranch")));

#define LSTM_STEPS(scalar, suffix, EXP, TANH)                                                          \
    static void lstm_forward_step_##suffix(int64_t b0, int64_t b1, int64_t H, scalar *restrict z,      \
                                    const scalar *restrict c_prev, const scalar *restrict h_prev,      \
                                    scalar *restrict c, scalar *restrict h, scalar *restrict tanh_c,   \
                                    const uint8_t *restrict step_mask) {                               \
        for (int64_t b = b0; b < b1; b++) {                                                            \
            scalar *restrict z_i = z + b * 4 * H, *restrict z_f = z_i + H;                             \
            scalar *restrict z_g = z_i + 2 * H, *restrict z_o = z_i + 3 * H;                           \
            const scalar *restrict c_prev_b = c_prev + b * H, *restrict h_prev_b = h_prev + b * H;     \
            scalar *restrict c_b = c + b * H, *restrict h_b = h + b * H, *restrict tanh_c_b = tanh_c + b * H; \
            if (step_mask && !step_mask[b]) { /* a padding step: the state carries over */             \
                for (int64_t j = 0; j < H; j++) {                                                      \
                    c_b[j] = c_prev_b[j];                                                              \
                    h_b[j] = h_prev_b[j];                                                              \
                }                                                                                      \
                continue;                                                                              \
            }                                                                                          \
            for (int64_t j = 0; j < H; j++) {                                                          \
                scalar i = 1 / (1 + EXP(-z_i[j])), f = 1 / (1 + EXP(-z_f[j]));                         \
                scalar g = TANH(z_g[j]), o = 1 / (1 + EXP(-z_o[j]));                                   \
                scalar c_j = f * c_prev_b[j] + i * g, tanh_c_j = TANH(c_j);                            \
                z_i[j] = i, z_f[j] = f, z_g[j] = g, z_o[j] = o;                                        \
                c_b[j] = c_j, tanh_c_b[j] = tanh_c_j, h_b[j] = o * tanh_c_j;                           \
            }                                                                                          \
        }                                                                                              \
    }                                                                                                  \
                                                                                                       \
    static void lstm_backward_step_##suffix(int64_t b0, int64_t b1, int64_t H, const scalar *restrict gates, \
                                     const scalar *restrict c_prev, const scalar *restrict tanh_c,     \
                                     const scalar *restrict dh, scalar *restrict dh_prev,              \
                                     scalar *restrict dc, scalar *restrict dz,                         \
                                     const uint8_t *restrict step_mask) {                              \
        for (int64_t b = b0; b < b1; b++) {                                                            \
            const scalar *restrict i = gates + b * 4 * H, *restrict f = i + H;                         \
            const scalar *restrict g = i + 2 * H, *restrict o = i + 3 * H;                             \
            scalar *restrict dz_i = dz + b * 4 * H, *restrict dz_f = dz_i + H;                         \
            scalar *restrict dz_g = dz_i + 2 * H, *restrict dz_o = dz_i + 3 * H;                       \
            const scalar *restrict c_prev_b = c_prev + b * H, *restrict tanh_c_b = tanh_c + b * H;     \
            const scalar *restrict dh_b = dh + b * H;                                                  \
            scalar *restrict dh_prev_b = dh_prev + b * H, *restrict dc_b = dc + b * H;                 \
            if (step_mask && !step_mask[b]) { /* a padding step: no gradient, dh and dc pass on */     \
                for (int64_t j = 0; j < H; j++) {                                                      \
                    dz_i[j] = 0, dz_f[j] = 0, dz_g[j] = 0, dz_o[j] = 0;                                \
                    dh_prev_b[j] += dh_b[j];                                                           \
                }                                                                                      \
                continue;                                                                              \
            }                                                                                          \
            for (int64_t j = 0; j < H; j++) {                                                          \
                scalar dc_j = dc_b[j] + dh_b[j] * o[j] * (1 - tanh_c_b[j] * tanh_c_b[j]);              \
                dz_i[j] = dc_j * g[j] * i[j] * (1 - i[j]);                                             \
                dz_f[j] = dc_j * c_prev_b[j] * f[j] * (1 - f[j]);                                      \
                dz_g[j] = dc_j * i[j] * (1 - g[j] * g[j]);                                             \
                dz_o[j] = dh_b[j] * tanh_c_b[j] * o[j] * (1 - o[j]);                                   \
                dc_b[j] = dc_j * f[j];                                                                 \
            }                                                                                          \
        }                                                                                              \
    }

/* The loops. A step's recurrent matmul goes through the BLAS gemm whose address the caller
 * passes. gemm computes C = alpha op(A) op(B) + beta C on column-major matrices, which is how it
 * reads our row-major ones transposed. So z (B, G) += h (B, K) W^T, for W_hh (G, K), is to gemm
 * z^T (G, B) += W h^T, and dh (B, K) += dz (B, G) W is dh^T (K, B) += W^T dz^T. `w` holds W_hh
 * row-major, which gemm reads as W^T, or, with `w_transposed`, W^T (K, G) row-major, which gemm
 * reads as W.
 *
 * At batches up to SMALL_BATCH these are matrix-vector products, which rows_dot and rows_axpy
 * (matrix_vector.h) do on one core, reading each row of the weight once for all the batch's rows
 * (from L1 for the second and third): at B=1 in about half the time of gemm's call on two (LSTM,
 * H=256); a whole training step at H=256 took 9.7 ms instead of 12.5 at B=2 and 13.4 instead of
 * 18.8 at B=3 (GRU 8.0 / 9.9 and 10.7 / 13.6); at B=4 the two loops took 11.3 ms this way and
 * 10.2 calling gemm, so from B=4 on they call gemm. There, with a large weight, the threads may
 * split each product between them (Threads, below). SMALL_BATCH comes from longshort.native (-D),
 * which lays the weight out for these products (`forward_weight`). */
#ifndef SMALL_BATCH
#define SMALL_BATCH 3
#endif
#define MATMULS(scalar, suffix)                                                                        \
    GEMM_FUNCTION(scalar, gemm_##suffix);                                                              \
                                                                                                       \
    MATRIX_VECTOR(scalar, suffix)                                                                      \
                                                                                                       \
    /* y^T (J, n) += A x^T, i.e. y (n, J) += x (n, I) A^T, through gemm: A (J, I) stored row-major     \
     * (a_rows, which gemm reads as A^T: 'T') or as A^T row-major (read as A: 'N'), its rows lda       \
     * apart as gemm counts them; x's rows I apart, y's ldy. */                                         \
    static void gemm_product_##suffix(gemm_##suffix gemm, int64_t n, int64_t J, int64_t I, const scalar *a, \
                                      int64_t lda, int64_t a_rows, const scalar *x, scalar *y, int64_t ldy) { \
        const char transa = a_rows ? 'T' : 'N', transb = 'N';                                          \
        const int m = J, rows = n, k = I, lda_ = lda, ldb = I, ldc = ldy;                              \
        const scalar one = 1;                                                                          \
        gemm(&transa, &transb, &m, &rows, &k, &one, a, &lda_, x, &ldb, &one, y, &ldc);                 \
    }                                                                                                  \
                                                                                                       \
    /* y (B, J) += x (B, I) A^T in the rows [b0, b1) of the batch, A (J, I) stored row-major          \
     * (a_rows) or as A^T (I, J) row-major: the step's product, both ways. Split in `parts` (see       \
     * Threads below): this thread's part of it for all B rows, after the gate math of every           \
     * thread's rows and before; up to SMALL_BATCH rows by matrix_vector, beyond by gemm on the       \
     * outputs [j0, j1), rows j0.. of A. */                                                           \
    static void add_product_##suffix(gemm_##suffix gemm, int64_t B, int64_t b0, int64_t b1, int64_t J, int64_t I, \
                                     const scalar *a, int64_t a_rows, const scalar *x, scalar *y, int64_t parts) { \
        const int64_t lda = a_rows ? I : J;                                                            \
        if (parts > 1) {                                                                               \
            const int64_t part = omp_get_thread_num();                                                 \
            _Pragma("omp barrier") /* x is written, every row */                                       \
            if (B <= SMALL_BATCH) {                                                                    \
                matrix_vector_##suffix(B, J, I, a, a_rows, x, y, part, parts);                         \
            } else {                                                                                   \
                const int64_t j0 = part_start(J, part, parts), j1 = part_start(J, part + 1, parts);    \
                gemm_product_##suffix(gemm, B, j1 - j0, I, a + j0 * (a_rows ? I : 1), lda, a_rows, x, y + j0, J); \
            }                                                                                          \
            _Pragma("omp barrier") /* all of y is */                                                   \
            return;                                                                                    \
        }                                                                                              \
        const int64_t n = b1 - b0; /* the rows b0.. on their own */                                    \
        const scalar *x_rows = x + b0 * I;                                                             \
        scalar *y_rows = y + b0 * J;                                                                   \
        if (n == 1) { /* the same as below, compiled for one row */                                    \
            matrix_vector_##suffix(1, J, I, a, a_rows, x_rows, y_rows, 0, 1);                          \
        } else if (n <= SMALL_BATCH) {                                                                 \
            matrix_vector_##suffix(n, J, I, a, a_rows, x_rows, y_rows, 0, 1);                          \
        } else {                                                                                       \
            gemm_product_##suffix(gemm, n, J, I, a, lda, a_rows, x_rows, y_rows, J);                   \
        }                                                                                              \
    }                                                                                                  \
                                                                                                       \
    /* z (B, G) += (r h) (B, K) W_hh^T in the rows [b0, b1) of the batch, r the recurrent dropout      \
     * mask (B, K) or NULL; buffer (B, K). */                                                          \
    static void add_recurrent_share_##suffix(gemm_##suffix gemm, int64_t B, int64_t b0, int64_t b1, int64_t K, \
                                             int64_t G, const scalar *h, const scalar *w, int64_t w_transposed, \
                                             const scalar *r, scalar *buffer, scalar *z, int64_t parts) { \
        if (r) {                                                                                       \
            for (int64_t j = b0 * K; j < b1 * K; j++) buffer[j] = h[j] * r[j];                         \
            h = buffer;                                                                                \
        }                                                                                              \
        add_product_##suffix(gemm, B, b0, b1, G, K, w, !w_transposed, h, z, parts); /* A = W */        \
    }                                                                                                  \
                                                                                                       \
    /* dh (B, K) += r (dz (B, G) W_hh) in the rows [b0, b1), r the recurrent dropout mask or NULL;     \
     * buffer (B, K). */                                                                               \
    static void add_recurrent_gradient_##suffix(gemm_##suffix gemm, int64_t B, int64_t b0, int64_t b1, int64_t K, \
                                                int64_t G, const scalar *dz, const scalar *w, int64_t w_transposed, \
                                                const scalar *r, scalar *buffer, scalar *dh, int64_t parts) { \
        scalar *out = dh;                                                                              \
        if (r) {                                                                                       \
            for (int64_t j = b0 * K; j < b1 * K; j++) buffer[j] = 0;                                   \
            out = buffer;                                                                              \
        }                                                                                              \
        add_product_##suffix(gemm, B, b0, b1, K, G, w, w_transposed, dz, out, parts); /* A = W^T */    \
        if (r)                                                                                         \
            for (int64_t j = b0 * K; j < b1 * K; j++) dh[j] += buffer[j] * r[j];                       \
    }

/* Threads. The rows of a batch never meet in a recurrence: a row's step reads only that row's
 * state. So every loop runs on `threads` threads (one, the caller, where it passes 1), each taking
 * an even share of the rows, [b0, b1), through all the steps, with no wait between steps; a
 * thread's matmuls go through gemm on its own rows. (MKL's gemm, called inside a parallel region,
 * starts no threads of its own; called from one thread, it splits a step's small matmul between
 * threads and back at every step.) At B=32, H=64 the gemm of a step on 16 rows took 6.2 us on one
 * thread, against 11.6 us for all 32 rows on two.
 *
 * Where the caller passes `split` (longshort.native.splits_products: a large weight and few rows,
 * or more than SMALL_BATCH a thread up to native.SPLIT_BATCH; the same decision lays the weight
 * out), the threads also split each step's recurrent product instead of each doing its own rows'
 * (`parts`, the number of threads; 1 where they do not): each computes a part of it for all rows
 * (matrix_vector, matrix_vector.h, up to SMALL_BATCH rows; gemm on a block of the outputs beyond),
 * between two barriers, and the gate math of its own rows, [b0, b1) as above, between the
 * products. A product of a few rows streams the weight from cache, and two threads each streaming
 * half of it take about 0.6x the time; a batch of one could not use the second thread otherwise.
 * From B=8 to 32 a thread's gemm on its own rows streams the whole weight too, and splitting took
 * a training step 0.78-0.94x the time (native.SPLIT_BATCH has the figures). */
/* Calls `rows` (a call naming b0, b1 and parts) for the rows [b0, b1) of a batch of B on each of
 * `threads` threads, which split the products where `split` is set: on the caller alone, with no
 * parallel region, where threads is 1 (inside one, even of one thread, MKL's gemm would start
 * threads of its own at every call). */
#define SHARE_OUT(threads, split, B, rows)                                                             \
    if ((threads) > 1) {                                                                               \
        _Pragma("omp parallel num_threads(threads)") {                                                 \
            const int64_t thread = omp_get_thread_num(), team = omp_get_num_threads();                 \
            const int64_t parts = (split) ? team : 1;                                                  \
            const int64_t b0 = (B) * thread / team, b1 = (B) * (thread + 1) / team;                    \
            rows;                                                                                      \
        }                                                                                              \
    } else {                                                                                           \
        const int64_t b0 = 0, b1 = (B), parts = 1;                                                     \
        rows;                                                                                          \
    }

/* LSTM (fused_lstm.py). z_all (T, B, 4H) holds p_t and becomes the activated gates; h_all, c_all
 * (T + 1, B, H); tanh_c_all (T, B, H). Backward: dh_outs (T + 1, B, H), row t + 1 holding dL/dy_t
 * and getting the recurrent share of step t + 1 (row 0 ends as dL/dh_0); dc holds dL/dc_T and ends
 * as dL/dc_0; buffer (B, H). */
#define LSTM_LOOPS(scalar, suffix)                                                                     \
    static void lstm_forward_rows_##suffix(int64_t T, int64_t B, int64_t H, scalar *z_all, scalar *h_all, \
                                           scalar *c_all, scalar *tanh_c_all, const uint8_t *masks,    \
                                           const scalar *recurrent_mask, scalar *buffer, const scalar *w, \
                                           int64_t w_transposed, void *gemm, int64_t b0, int64_t b1, int64_t parts) { \
        for (int64_t t = 0; t < T; t++) {                                                              \
            scalar *z = z_all + t * B * 4 * H, *h_prev = h_all + t * B * H;                            \
            add_recurrent_share_##suffix((gemm_##suffix)gemm, B, b0, b1, H, 4 * H, h_prev, w, w_transposed, \
                                         recurrent_mask, buffer, z, parts);                            \
            lstm_forward_step_##suffix(b0, b1, H, z, c_all + t * B * H, h_prev, c_all + (t + 1) * B * H, \
                                       h_prev + B * H, tanh_c_all + t * B * H, masks ? masks + t * B : NULL); \
        }                                                                                              \
    }                                                                                                  \
                                                                                                       \
    void lstm_forward_loop_##suffix(int64_t T, int64_t B, int64_t H, scalar *z_all, scalar *h_all,     \
                                    scalar *c_all, scalar *tanh_c_all, const uint8_t *masks,           \
                                    const scalar *recurrent_mask, scalar *buffer, const scalar *w,     \
                                    int64_t w_transposed, void *gemm, int64_t threads, int64_t split) { \
        SHARE_OUT(threads, split, B, lstm_forward_rows_##suffix(T, B, H, z_all, h_all, c_all, tanh_c_all, \
                                                       masks, recurrent_mask, buffer, w,               \
                                                       w_transposed, gemm, b0, b1, parts));            \
    }                                                                                                  \
                                                                                                       \
    static void lstm_backward_rows_##suffix(int64_t T, int64_t B, int64_t H, const scalar *z_all,      \
                                            const scalar *c_all, const scalar *tanh_c_all, scalar *dh_outs, \
                                            scalar *dc, scalar *dz_all, const uint8_t *masks,          \
                                            const scalar *recurrent_mask, scalar *buffer, const scalar *w, \
                                            int64_t w_transposed, void *gemm, int64_t b0, int64_t b1, int64_t parts) { \
        for (int64_t t = T - 1; t >= 0; t--) {                                                         \
            scalar *dz = dz_all + t * B * 4 * H, *dh_prev = dh_outs + t * B * H;                       \
            lstm_backward_step_##suffix(b0, b1, H, z_all + t * B * 4 * H, c_all + t * B * H,           \
                                        tanh_c_all + t * B * H, dh_prev + B * H, dh_prev, dc, dz,      \
                                        masks ? masks + t * B : NULL);                                 \
            add_recurrent_gradient_##suffix((gemm_##suffix)gemm, B, b0, b1, H, 4 * H, dz, w, w_transposed, \
                                            recurrent_mask, buffer, dh_prev, parts);                   \
        }                                                                                              \
    }                                                                                                  \
                                                                                                       \
    void lstm_backward_loop_##suffix(int64_t T, int64_t B, int64_t H, const scalar *z_all,            \
                                     const scalar *c_all, const scalar *tanh_c_all, scalar *dh_outs,  \
                                     scalar *dc, scalar *dz_all, const uint8_t *masks,                \
                                     const scalar *recurrent_mask, scalar *buffer, const scalar *w,   \
                                     int64_t w_transposed, void *gemm, int64_t threads, int64_t split) { \
        SHARE_OUT(threads, split, B, lstm_backward_rows_##suffix(T, B, H, z_all, c_all, tanh_c_all,    \
                                                        dh_outs, dc, dz_all, masks,                    \
                                                        recurrent_mask, buffer, w, w_transposed,       \
                                                        gemm, b0, b1, parts));                         \
    }

/* torch.lerp's formula, start + weight (end - start), computed from the nearer end so that it is
 * exact at weight 0 and 1: the GRU's h = lerp(n, h_prev, z) and zoneout's mix of the new state
 * with the previous one. */
#define LERP(scalar, suffix)                                                                           \
    static inline scalar lerp_##suffix(scalar start, scalar end, scalar weight) {                      \
        return weight < (scalar)0.5 ? start + weight * (end - start) : end - (end - start) * (1 - weight); \
    }

/* GRU (fused_gru.py). rzq_all (T, B, 3H) holds p_r + b_hr, p_z + b_hz, b_hn and becomes r, z,
 * q_n; n_all (T, B, H) holds p_n and becomes n; h_all (T + 1, B, H). Per unit, after
 * rzq += (r_drop h_prev) W_hh^T:
 *      r, z = sigmoid(rzq_r, rzq_z),  n = tanh(n + r q_n),  h = lerp(n, h_prev, z)
 * with torch.lerp's formula, exact at z = 1 (how a masked step keeps h_prev: fused_gru.py sets
 * z to +inf there). Backward: dh_all (T + 1, B, H) as dh_outs above; per step, per unit
 *      da_n = dh (1 - z) (1 - n^2),  dq_n = da_n r,  da_r = dq_n q_n (1 - r),
 *      da_z = dh (h_prev - n) z (1 - z),  dh_prev += dh z + r_drop (dq W_hh)
 * into dq_all (T, B, 3H), dq = (da_r, da_z, dq_n), and da_n_all (T, B, H). */
#define GRU_LOOPS(scalar, suffix, EXP, TANH)                                                           \
    static void gru_forward_rows_##suffix(int64_t T, int64_t B, int64_t H, scalar *rzq_all, scalar *n_all, \
                                          scalar *h_all, const scalar *recurrent_mask, scalar *buffer, \
                                          const scalar *w, int64_t w_transposed, void *gemm, int64_t b0, int64_t b1, int64_t parts) { \
        for (int64_t t = 0; t < T; t++) {                                                              \
            scalar *rzq = rzq_all + t * B * 3 * H, *n = n_all + t * B * H, *h_prev = h_all + t * B * H; \
            add_recurrent_share_##suffix((gemm_##suffix)gemm, B, b0, b1, H, 3 * H, h_prev, w, w_transposed, \
                                         recurrent_mask, buffer, rzq, parts);                          \
            for (int64_t b = b0; b < b1; b++) {                                                        \
                scalar *restrict r_b = rzq + b * 3 * H, *restrict z_b = r_b + H;                       \
                const scalar *restrict q_n = r_b + 2 * H, *restrict h_prev_b = h_prev + b * H;         \
                scalar *restrict n_b = n + b * H, *restrict h_b = h_prev + (B + b) * H;                \
                /* three simple loops, each vectorised (r and z side by side are one loop) */          \
                for (int64_t j = 0; j < 2 * H; j++) r_b[j] = 1 / (1 + EXP(-r_b[j]));                   \
                for (int64_t j = 0; j < H; j++) n_b[j] = TANH(n_b[j] + r_b[j] * q_n[j]);               \
                for (int64_t j = 0; j < H; j++) h_b[j] = lerp_##suffix(n_b[j], h_prev_b[j], z_b[j]);   \
            }                                                                                          \
        }                                                                                              \
    }                                                                                                  \
                                                                                                       \
    void gru_forward_loop_##suffix(int64_t T, int64_t B, int64_t H, scalar *rzq_all, scalar *n_all,    \
                                   scalar *h_all, const scalar *recurrent_mask, scalar *buffer,        \
                                   const scalar *w, int64_t w_transposed, void *gemm, int64_t threads, int64_t split) { \
        SHARE_OUT(threads, split, B, gru_forward_rows_##suffix(T, B, H, rzq_all, n_all, h_all,         \
                                                      recurrent_mask, buffer, w, w_transposed,         \
                                                      gemm, b0, b1, parts));                           \
    }                                                                                                  \
                                                                                                       \
    static void gru_backward_rows_##suffix(int64_t T, int64_t B, int64_t H, const scalar *rzq_all,     \
                                           const scalar *n_all, const scalar *h_all, scalar *dq_all,   \
                                           scalar *da_n_all, scalar *dh_all, const scalar *recurrent_mask, \
                                           scalar *buffer, const scalar *w, int64_t w_transposed, void *gemm, int64_t b0, int64_t b1, int64_t parts) { \
        for (int64_t t = T - 1; t >= 0; t--) {                                                         \
            scalar *dq = dq_all + t * B * 3 * H, *dh_prev = dh_all + t * B * H;                        \
            for (int64_t b = b0; b < b1; b++) {                                                        \
                const int64_t row = t * B + b;                                                         \
                const scalar *restrict r = rzq_all + row * 3 * H, *restrict z = r + H, *restrict q_n = r + 2 * H; \
                const scalar *restrict n = n_all + row * H, *restrict h_prev = h_all + row * H;        \
                const scalar *restrict dh = dh_prev + (B + b) * H;                                     \
                scalar *restrict da_r = dq + b * 3 * H, *restrict da_z = da_r + H, *restrict dq_n = da_r + 2 * H; \
                scalar *restrict da_n = da_n_all + row * H, *restrict dh_prev_b = dh_prev + b * H;     \
                for (int64_t j = 0; j < H; j++) {                                                      \
                    da_n[j] = dh[j] * (1 - z[j]) * (1 - n[j] * n[j]);                                  \
                    dq_n[j] = da_n[j] * r[j];                                                          \
                    da_r[j] = dq_n[j] * q_n[j] * (1 - r[j]);                                           \
                    da_z[j] = dh[j] * (h_prev[j] - n[j]) * z[j] * (1 - z[j]);                          \
                    dh_prev_b[j] += dh[j] * z[j];                                                      \
                }                                                                                      \
            }                                                                                          \
            add_recurrent_gradient_##suffix((gemm_##suffix)gemm, B, b0, b1, H, 3 * H, dq, w, w_transposed, \
                                            recurrent_mask, buffer, dh_prev, parts);                   \
        }                                                                                              \
    }                                                                                                  \
                                                                                                       \
    void gru_backward_loop_##suffix(int64_t T, int64_t B, int64_t H, const scalar *rzq_all,           \
                                    const scalar *n_all, const scalar *h_all, scalar *dq_all,         \
                                    scalar *da_n_all, scalar *dh_all, const scalar *recurrent_mask,   \
                                    scalar *buffer, const scalar *w, int64_t w_transposed, void *gemm, int64_t threads, int64_t split) { \
        SHARE_OUT(threads, split, B, gru_backward_rows_##suffix(T, B, H, rzq_all, n_all, h_all, dq_all, \
                                                       da_n_all, dh_all, recurrent_mask, buffer, w,    \
                                                       w_transposed, gemm, b0, b1, parts));            \
    }

/* SimpleRNN (fused_simple_rnn.py). h_all (T + 1, B, H): rows 1.. hold p_t and become h_t,
 *      h = act(p_t + (r_drop h_prev) W_hh^T),  act tanh, or relu (NaN stays NaN)
 * and h = h_prev at a masked step. Backward: da_all (T, B, H) holds act'(a) m and becomes da;
 * dh_all (T + 1, B, H) as dh_outs above; per step
 *      da *= dh,  dh_prev += r_drop (da W_hh),  and dh_prev += dh at a masked step. */
#define SIMPLE_RNN_LOOPS(scalar, suffix, TANH)                                                         \
    static void simple_rnn_forward_rows_##suffix(int64_t T, int64_t B, int64_t H, scalar *h_all,       \
                                                 const uint8_t *masks, int64_t relu,                   \
                                                 const scalar *recurrent_mask, scalar *buffer,         \
                                                 const scalar *w, int64_t w_transposed, void *gemm, int64_t b0, int64_t b1, int64_t parts) { \
        for (int64_t t = 0; t < T; t++) {                                                              \
            scalar *h_prev = h_all + t * B * H, *h = h_prev + B * H;                                   \
            add_recurrent_share_##suffix((gemm_##suffix)gemm, B, b0, b1, H, H, h_prev, w, w_transposed,   \
                                         recurrent_mask, buffer, h, parts);                            \
            for (int64_t b = b0; b < b1; b++) {                                                        \
                scalar *restrict h_b = h + b * H;                                                      \
                const scalar *restrict h_prev_b = h_prev + b * H;                                      \
                if (masks && !masks[t * B + b])                                                        \
                    for (int64_t j = 0; j < H; j++) h_b[j] = h_prev_b[j];                              \
                else if (relu)                                                                         \
                    for (int64_t j = 0; j < H; j++) h_b[j] = h_b[j] < 0 ? 0 : h_b[j];                  \
                else                                                                                   \
                    for (int64_t j = 0; j < H; j++) h_b[j] = TANH(h_b[j]);                             \
            }                                                                                          \
        }                                                                                              \
    }                                                                                                  \
                                                                                                       \
    void simple_rnn_forward_loop_##suffix(int64_t T, int64_t B, int64_t H, scalar *h_all,              \
                                          const uint8_t *masks, int64_t relu,                          \
                                          const scalar *recurrent_mask, scalar *buffer,                \
                                          const scalar *w, int64_t w_transposed, void *gemm, int64_t threads, int64_t split) { \
        SHARE_OUT(threads, split, B, simple_rnn_forward_rows_##suffix(T, B, H, h_all, masks, relu,     \
                                                             recurrent_mask, buffer, w,                \
                                                             w_transposed, gemm, b0, b1, parts));      \
    }                                                                                                  \
                                                                                                       \
    static void simple_rnn_backward_rows_##suffix(int64_t T, int64_t B, int64_t H, scalar *da_all,     \
                                                  scalar *dh_all, const uint8_t *masks,                \
                                                  const scalar *recurrent_mask, scalar *buffer,        \
                                                  const scalar *w, int64_t w_transposed, void *gemm, int64_t b0, int64_t b1, int64_t parts) { \
        for (int64_t t = T - 1; t >= 0; t--) {                                                         \
            scalar *da = da_all + t * B * H, *dh_prev = dh_all + t * B * H, *dh = dh_prev + B * H;     \
            for (int64_t j = b0 * H; j < b1 * H; j++) da[j] *= dh[j];                                  \
            add_recurrent_gradient_##suffix((gemm_##suffix)gemm, B, b0, b1, H, H, da, w, w_transposed,    \
                                            recurrent_mask, buffer, dh_prev, parts);                   \
            for (int64_t b = b0; masks && b < b1; b++)                                                 \
                if (!masks[t * B + b])                                                                 \
                    for (int64_t j = 0; j < H; j++) dh_prev[b * H + j] += dh[b * H + j];               \
        }                                                                                              \
    }                                                                                                  \
                                                                                                       \
    void simple_rnn_backward_loop_##suffix(int64_t T, int64_t B, int64_t H, scalar *da_all,           \
                                           scalar *dh_all, const uint8_t *masks,                      \
                                           const scalar *recurrent_mask, scalar *buffer,              \
                                           const scalar *w, int64_t w_transposed, void *gemm, int64_t threads, int64_t split) { \
        SHARE_OUT(threads, split, B, simple_rnn_backward_rows_##suffix(T, B, H, da_all, dh_all, masks, \
                                                              recurrent_mask, buffer, w,               \
                                                              w_transposed, gemm, b0, b1, parts));     \
    }

/* The LSTM variants (fused_lstm_variants.py): peephole connections, layer norm (LN) and zoneout,
 * in any combination, with the equations of its docstring. Forward: z_all (T, B, 4H) holds p_t and
 * becomes the activated gates; h_all, c_all (T + 1, B, H) the carried states; c_new_all (T, B, H)
 * c before zoneout (without zoneout of c, c_all + B H itself, which the carry then writes over);
 * tanh_n_all (T, B, H); with LN, qhat_all (T, B, 4H) and rsig_q_all (T, B) are kept, q (B, 4H) is
 * a buffer. w_cif (2, H), w_co (H) or NULL; gain_hh (4H), gain_c, shift_c (H) or NULL; hold_h,
 * hold_c (T, B, width) bytes, 1 where the state keeps its previous value (zoneout mask or padding
 * step), width H or 1, or NULL; params = {rate_h, rate_c, eps}, a rate of 0 being none. */
/* The two loops' parameters, which their rows functions share (those take b0, b1 after them, the
 * loops `threads`). */
#define VARIANT_FORWARD_PARAMETERS(scalar)                                                             \
    int64_t T, int64_t B, int64_t H, scalar *z_all, scalar *h_all, scalar *c_all, scalar *c_new_all,   \
    scalar *tanh_n_all, scalar *qhat_all, scalar *rsig_q_all, scalar *q, const scalar *w_cif,          \
    const scalar *w_co, const scalar *gain_hh, const scalar *gain_c, const scalar *shift_c,            \
    const uint8_t *hold_h, int64_t hold_h_width, const uint8_t *hold_c, int64_t hold_c_width,          \
    const scalar *params, const scalar *recurrent_mask, scalar *buffer, const scalar *w,               \
    int64_t w_transposed, void *gemm

#define VARIANT_BACKWARD_PARAMETERS(scalar)                                                            \
    int64_t T, int64_t B, int64_t H, scalar *dz_all, scalar *dq_all, scalar *dh_outs, scalar *dc,      \
    scalar *scratch, const scalar *dz_o_per_dh, const scalar *dc_per_dh,                               \
    const scalar *dz_ifg_per_dc, const scalar *dc_prev_per_dc, const scalar *c_sums_per_dh,            \
    const scalar *chat, const scalar *qhat_all, const scalar *rsig_q_all, const scalar *gain_hh,       \
    const scalar *u_h, const scalar *v_h, int64_t h_width, const scalar *u_c, const scalar *v_c,       \
    int64_t c_width, const scalar *recurrent_mask, scalar *buffer, const scalar *w,                    \
    int64_t w_transposed, void *gemm

#define VARIANT_LOOPS(scalar, suffix, EXP, TANH, SQRT)                                                  \
    static scalar row_mean_##suffix(const scalar *restrict x, int64_t N) {                                      \
        scalar sum = 0;                                                                                \
        _Pragma("omp simd reduction(+ : sum)") for (int64_t k = 0; k < N; k++) sum += x[k];            \
        return sum / N;                                                                                \
    }                                                                                                  \
    /* 1 / sqrt(biased variance + eps), as layer_norm's rsig */                                       \
    static scalar row_rsig_##suffix(const scalar *restrict x, int64_t N, scalar mean, scalar eps) {            \
        scalar sum = 0;                                                                                \
        _Pragma("omp simd reduction(+ : sum)") for (int64_t k = 0; k < N; k++) sum += (x[k] - mean) * (x[k] - mean); \
        return 1 / SQRT(sum / N + eps);                                                                \
    }                                                                                                  \
    /* x *= share, and y += share x, for a share of width H (one per unit) or 1 (one per row): two     \
     * loops each, so that both are vectorised (an index j * step is not) */                           \
    static void scale_##suffix(int64_t H, scalar *restrict x, const scalar *restrict share, int64_t width) { \
        if (width == 1)                                                                                \
            for (int64_t j = 0; j < H; j++) x[j] *= share[0];                                          \
        else                                                                                           \
            for (int64_t j = 0; j < H; j++) x[j] *= share[j];                                          \
    }                                                                                                  \
    static void add_scaled_##suffix(int64_t H, scalar *restrict y, const scalar *restrict x,           \
                                    const scalar *restrict share, int64_t width) {                     \
        if (width == 1)                                                                                \
            for (int64_t j = 0; j < H; j++) y[j] += share[0] * x[j];                                   \
        else                                                                                           \
            for (int64_t j = 0; j < H; j++) y[j] += share[j] * x[j];                                   \
    }                                                                                                  \
    /* the carried state: prev where held, else new (zoned out against prev at a rate) */              \
    static void carry_##suffix(int64_t H, const scalar *new_, const scalar *restrict prev, scalar *out, \
                               const uint8_t *restrict hold, int64_t width, scalar rate) {                      \
        for (int64_t j = 0; j < H; j++) {                                                              \
            scalar x = new_[j], p = prev[j];                                                           \
            if (rate != 0) x = lerp_##suffix(x, p, rate);                                              \
            out[j] = hold && hold[width == 1 ? 0 : j] ? p : x;                                         \
        }                                                                                              \
    }                                                                                                  \
                                                                                                       \
    static void lstm_variant_forward_rows_##suffix(VARIANT_FORWARD_PARAMETERS(scalar), int64_t b0, int64_t b1, int64_t parts) { \
        const scalar rate_h = params[0], rate_c = params[1], eps = params[2];                          \
        for (int64_t t = 0; t < T; t++) {                                                              \
            scalar *z = z_all + t * B * 4 * H, *h_prev = h_all + t * B * H, *c_prev = c_all + t * B * H; \
            scalar *c_new = c_new_all + t * B * H, *tanh_n = tanh_n_all + t * B * H;                   \
            if (gain_hh) { /* z += gain_hh q^, q^ = LN(q), q = (r h_prev) W_hh^T */                    \
                for (int64_t k = b0 * 4 * H; k < b1 * 4 * H; k++) q[k] = 0;                            \
                add_recurrent_share_##suffix((gemm_##suffix)gemm, B, b0, b1, H, 4 * H, h_prev, w, w_transposed, \
                                             recurrent_mask, buffer, q, parts);                        \
                for (int64_t b = b0; b < b1; b++) {                                                    \
                    const scalar *restrict q_b = q + b * 4 * H;                                        \
                    scalar *restrict qhat = qhat_all + (t * B + b) * 4 * H, *restrict z_b = z + b * 4 * H; \
                    scalar mean = row_mean_##suffix(q_b, 4 * H), rsig = row_rsig_##suffix(q_b, 4 * H, mean, eps); \
                    for (int64_t k = 0; k < 4 * H; k++) {                                              \
                        qhat[k] = (q_b[k] - mean) * rsig;                                              \
                        z_b[k] += gain_hh[k] * qhat[k];                                                \
                    }                                                                                  \
                    rsig_q_all[t * B + b] = rsig;                                                      \
                }                                                                                      \
            } else {                                                                                   \
                add_recurrent_share_##suffix((gemm_##suffix)gemm, B, b0, b1, H, 4 * H, h_prev, w, w_transposed, \
                                             recurrent_mask, buffer, z, parts);                        \
            }                                                                                          \
            for (int64_t b = b0; b < b1; b++) {                                                        \
                scalar *restrict i = z + b * 4 * H, *restrict f = i + H, *restrict g = i + 2 * H;      \
                scalar *restrict o = i + 3 * H, *restrict tanh_n_b = tanh_n + b * H;                   \
                const scalar *c_prev_b = c_prev + b * H, *h_prev_b = h_prev + b * H;                   \
                scalar *c_new_b = c_new + b * H;                                                       \
                if (w_cif)                                                                             \
                    for (int64_t j = 0; j < H; j++) i[j] += w_cif[j] * c_prev_b[j], f[j] += w_cif[H + j] * c_prev_b[j]; \
                for (int64_t j = 0; j < 2 * H; j++) i[j] = 1 / (1 + EXP(-i[j])); /* i and f */         \
                for (int64_t j = 0; j < H; j++) g[j] = TANH(g[j]);                                     \
                for (int64_t j = 0; j < H; j++) c_new_b[j] = f[j] * c_prev_b[j] + i[j] * g[j];         \
                if (w_co)                                                                              \
                    for (int64_t j = 0; j < H; j++) o[j] += w_co[j] * c_new_b[j];                      \
                for (int64_t j = 0; j < H; j++) o[j] = 1 / (1 + EXP(-o[j]));                           \
                if (gain_c) { /* n = gain_c c^ + shift_c, c^ = LN(c_new) */                            \
                    scalar mean = row_mean_##suffix(c_new_b, H), rsig = row_rsig_##suffix(c_new_b, H, mean, eps); \
                    for (int64_t j = 0; j < H; j++) tanh_n_b[j] = gain_c[j] * (c_new_b[j] - mean) * rsig + shift_c[j]; \
                } else {                                                                               \
                    for (int64_t j = 0; j < H; j++) tanh_n_b[j] = c_new_b[j];                          \
                }                                                                                      \
                for (int64_t j = 0; j < H; j++) tanh_n_b[j] = TANH(tanh_n_b[j]);                       \
                scalar *h_b = h_prev + (B + b) * H, *c_b = c_prev + (B + b) * H;                       \
                for (int64_t j = 0; j < H; j++) h_b[j] = o[j] * tanh_n_b[j]; /* h_new, then carried */ \
                carry_##suffix(H, h_b, h_prev_b, h_b, hold_h ? hold_h + (t * B + b) * hold_h_width : NULL, \
                               hold_h_width, rate_h);                                                  \
                carry_##suffix(H, c_new_b, c_prev_b, c_b, hold_c ? hold_c + (t * B + b) * hold_c_width : NULL, \
                               hold_c_width, rate_c);                                                  \
            }                                                                                          \
        }                                                                                              \
    }                                                                                                  \
                                                                                                       \
    void lstm_variant_forward_loop_##suffix(VARIANT_FORWARD_PARAMETERS(scalar), int64_t threads, int64_t split) { \
        SHARE_OUT(threads, split, B, lstm_variant_forward_rows_##suffix(T, B, H, z_all, h_all, c_all,  \
                                                               c_new_all, tanh_n_all, qhat_all,        \
                                                               rsig_q_all, q, w_cif, w_co,             \
                                                               gain_hh, gain_c, shift_c, hold_h,       \
                                                               hold_h_width, hold_c,                   \
                                                               hold_c_width, params,                   \
                                                               recurrent_mask, buffer, w,              \
                                                               w_transposed, gemm, b0, b1, parts));    \
    }                                                                                                  \
                                                                                                       \
    /* Backward: dz_all (T, B, 4H) becomes dz; dq_all (T, B, 4H) dq with LN (else dz_all itself);    \
     * dh_outs (T + 1, B, H) as the LSTM's; dc (B, H) holds dL/dc_T and ends as dL/dc_0; scratch   \
     * (B, 3H). The factors that do not depend on dh, dc come computed for all steps (T, B, H):    \
     * dz_o_per_dh, dc_per_dh, dz_ifg_per_dc (T, B, 3, H), dc_prev_per_dc; with LN c_sums_per_dh    \
     * (T, B, 2, H) ([d; d c^] / dh), chat (T, B, H), qhat_all, rsig_q_all; u_h, v_h (T, B, h_width) \
     * and u_c, v_c (T, B, c_width), width H or 1, the shares of the new and previous value in each  \
     * carried state, or NULL (u = 1). */                                                            \
    static void lstm_variant_backward_rows_##suffix(VARIANT_BACKWARD_PARAMETERS(scalar), int64_t b0, int64_t b1, int64_t parts) { \
        for (int64_t t = T - 1; t >= 0; t--) {                                                         \
            scalar *dz = dz_all + t * B * 4 * H, *dq = dq_all + t * B * 4 * H;                         \
            scalar *dh_out = dh_outs + (t + 1) * B * H, *dh_prev = dh_outs + t * B * H;                \
            for (int64_t b = b0; b < b1; b++) {                                                        \
                const int64_t at = (t * B + b) * H; /* row b of step t in a (T, B, H) factor */        \
                scalar *restrict dh = scratch + b * 3 * H, *restrict dc_b = dh + H, *restrict dc_next = dh + 2 * H; \
                scalar *restrict dz_b = dz + b * 4 * H, *restrict dc_state = dc + b * H;               \
                const scalar *restrict dz_o_per_dh_b = dz_o_per_dh + at, *restrict dc_per_dh_b = dc_per_dh + at; \
                for (int64_t j = 0; j < H; j++) dh[j] = dh_out[b * H + j], dc_b[j] = dc_state[j];      \
                if (u_h) scale_##suffix(H, dh, u_h + (t * B + b) * h_width, h_width); /* dh = u_h dh_out */ \
                if (u_c) scale_##suffix(H, dc_b, u_c + (t * B + b) * c_width, c_width); /* u_c dc_state */ \
                for (int64_t j = 0; j < H; j++) {                                                      \
                    dz_b[3 * H + j] = dh[j] * dz_o_per_dh_b[j];                                        \
                    dc_b[j] += dh[j] * dc_per_dh_b[j];                                                 \
                }                                                                                      \
                if (c_sums_per_dh) { /* LN_c's mean terms: dc -= [mean d, mean d c^] [1; c^] */        \
                    const scalar *restrict d = c_sums_per_dh + (t * B + b) * 2 * H, *restrict d_chat = d + H; \
                    scalar s0 = 0, s1 = 0;                                                             \
                    _Pragma("omp simd reduction(+ : s0, s1)") for (int64_t j = 0; j < H; j++) s0 += dh[j] * d[j], s1 += dh[j] * d_chat[j]; \
                    for (int64_t j = 0; j < H; j++) dc_b[j] -= (s0 + s1 * chat[at + j]) / H;           \
                }                                                                                      \
                const scalar *restrict per_dc = dz_ifg_per_dc + (t * B + b) * 3 * H;                   \
                for (int64_t gate = 0; gate < 3; gate++) /* i, f, g */                                 \
                    for (int64_t j = 0; j < H; j++) dz_b[gate * H + j] = per_dc[gate * H + j] * dc_b[j]; \
                if (gain_hh) { /* dq = (dq^ - q^ mean(dq^ q^)) / s_q, dq^ = dz gain_hh */              \
                    const scalar *restrict qhat = qhat_all + (t * B + b) * 4 * H;                      \
                    scalar *restrict dq_b = dq + b * 4 * H, sum = 0, rsig = rsig_q_all[t * B + b];     \
                    _Pragma("omp simd reduction(+ : sum)") for (int64_t k = 0; k < 4 * H; k++) dq_b[k] = dz_b[k] * gain_hh[k], sum += dq_b[k] * qhat[k]; \
                    for (int64_t k = 0; k < 4 * H; k++) dq_b[k] = (dq_b[k] - sum / (4 * H) * qhat[k]) * rsig; \
                }                                                                                      \
                const scalar *restrict dc_prev_per_dc_b = dc_prev_per_dc + at;                         \
                for (int64_t j = 0; j < H; j++) dc_next[j] = dc_b[j] * dc_prev_per_dc_b[j];            \
                if (v_c) add_scaled_##suffix(H, dc_next, dc_state, v_c + (t * B + b) * c_width, c_width); \
            }                                                                                          \
            add_recurrent_gradient_##suffix((gemm_##suffix)gemm, B, b0, b1, H, 4 * H, dq, w, w_transposed, \
                                            recurrent_mask, buffer, dh_prev, parts);                   \
            for (int64_t b = b0; b < b1; b++) {                                                        \
                if (v_h) add_scaled_##suffix(H, dh_prev + b * H, dh_out + b * H, v_h + (t * B + b) * h_width, h_width); \
                for (int64_t j = 0; j < H; j++) dc[b * H + j] = scratch[b * 3 * H + 2 * H + j];        \
            }                                                                                          \
        }                                                                                              \
    }                                                                                                  \
                                                                                                       \
    void lstm_variant_backward_loop_##suffix(VARIANT_BACKWARD_PARAMETERS(scalar), int64_t threads, int64_t split) { \
        SHARE_OUT(threads, split, B, lstm_variant_backward_rows_##suffix(T, B, H, dz_all, dq_all, dh_outs, \
                                                                dc, scratch, dz_o_per_dh,              \
                                                                dc_per_dh, dz_ifg_per_dc,              \
                                                                dc_prev_per_dc, c_sums_per_dh,         \
                                                                chat, qhat_all, rsig_q_all,            \
                                                                gain_hh, u_h, v_h, h_width, u_c,       \
                                                                v_c, c_width, recurrent_mask,          \
                                                                buffer, w, w_transposed, gemm,         \
                                                                b0, b1, parts));                       \
    }

LSTM_STEPS(float, f32, expf, tanhf)
LSTM_STEPS(double, f64, exp, tanh)
MATMULS(float, f32)
MATMULS(double, f64)
LSTM_LOOPS(float, f32)
LSTM_LOOPS(double, f64)
LERP(float, f32)
LERP(double, f64)
GRU_LOOPS(float, f32, expf, tanhf)
GRU_LOOPS(double, f64, exp, tanh)
SIMPLE_RNN_LOOPS(float, f32, tanhf)
SIMPLE_RNN_LOOPS(double, f64, tanh)
VARIANT_LOOPS(float, f32, expf, tanhf, sqrtf)
VARIANT_LOOPS(double, f64, exp, tanh, sqrt)
