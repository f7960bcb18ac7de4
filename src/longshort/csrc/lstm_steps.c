/* The fused LSTM's gate math of one step, forward and backward, in C.
 *
 * `longshort.fused_lstm` loops over time in Python. A step there is one recurrent matmul (torch)
 * and the gate math; done with torch ops, that math is seven small ops forward and four
 * backward, and at small batches their dispatch costs more than the matmul. Here it is one pass
 * over the batch. The matmuls stay in torch. The derivation of the backward, in the symbols used
 * below, opens fused_lstm.py; fused_lstm.py also holds the same math in torch ops, which runs
 * where this file cannot be compiled, and the tests check that the two agree.
 *
 * Layouts, all row-major and contiguous: z, dz (B, 4H) in gate order i, f, g, o; every state
 * and state gradient (B, H); step_mask (B) bytes, 1 at a real step, or NULL (all real).
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
 * dh_prev = dz W_hh follows in torch. At a masked step dz = 0, and dh (added onto dh_prev)
 * and dc pass to the previous step unchanged.
 *
 * Built by `longshort.native` with -O3 -march=native -fno-math-errno. glibc's libmvec holds
 * vector versions of exp and tanh; declared below, the compiler calls them 8 or 16 lanes at a
 * time. (-ffast-math would declare them too, but would also let the compiler assume no NaN or
 * infinity, and longshort's guards need a NaN to come out as a NaN.)
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>

#if !(defined(__x86_64__) && defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 35)))
#error "needs glibc >= 2.35 on x86-64 for vector exp and tanh (libmvec); without them torch's own ops are faster"
#endif

float expf(float) __attribute__((simd("notinbranch")));
float tanhf(float) __attribute__((simd("notinbranch")));
double exp(double) __attribute__((simd("notinbranch")));
double tanh(double) __attribute__((simd("notinbranch")));

#define LSTM_STEPS(scalar, suffix, EXP, TANH)                                                          \
    void lstm_forward_step_##suffix(int64_t B, int64_t H, scalar *restrict z,                          \
                                    const scalar *restrict c_prev, const scalar *restrict h_prev,      \
                                    scalar *restrict c, scalar *restrict h, scalar *restrict tanh_c,   \
                                    const uint8_t *restrict step_mask) {                               \
        for (int64_t b = 0; b < B; b++) {                                                              \
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
    void lstm_backward_step_##suffix(int64_t B, int64_t H, const scalar *restrict gates,               \
                                     const scalar *restrict c_prev, const scalar *restrict tanh_c,     \
                                     const scalar *restrict dh, scalar *restrict dh_prev,              \
                                     scalar *restrict dc, scalar *restrict dz,                         \
                                     const uint8_t *restrict step_mask) {                              \
        for (int64_t b = 0; b < B; b++) {                                                              \
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

LSTM_STEPS(float, f32, expf, tanhf)
LSTM_STEPS(double, f64, exp, tanh)
