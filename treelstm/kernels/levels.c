/* Native element-wise kernels of treelstm's fused level loop (see levels_impl.h).
 *
 * Built on first use by treelstm/kernels/native.py with the system C compiler
 * (cc -O3 -march=native), cached per source, compiler flags and CPU, and called through
 * ctypes on raw pointers of contiguous CPU tensors the Python side allocated and checked.
 * No torch headers: it compiles in about a second.
 *
 * float: sigmoid and tanh from one exp, written so that gcc vectorises the loops that call
 * them (Cephes-style range reduction and polynomial, about 2 ulp; tanh uses its odd
 * polynomial near 0, where tanh = (e-1)/(e+1) would cancel). double: libm.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

static inline float exp_f32(float x)
{
    x = x > 88.0f ? 88.0f : x;
    x = x < -87.0f ? -87.0f : x;
    float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f; /* round to nearest */
    float r = x - n * 0.693359375f;
    r = r + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    int32_t e = ((int32_t)n + 127) << 23;
    float s;
    memcpy(&s, &e, sizeof s);
    return p * s;
}

static inline float sigm_f32(float x) { return 1.0f / (1.0f + exp_f32(-x)); }

static inline float tanh_f32(float x)
{
    float z = x * x;
    float p = -5.70498872745e-3f;
    p = p * z + 2.06390887954e-2f;
    p = p * z - 5.37397155531e-2f;
    p = p * z + 1.33314422036e-1f;
    p = p * z - 3.33332819422e-1f;
    p = p * z * x + x;
    float a = fabsf(x);
    a = a > 9.0f ? 9.0f : a;
    float q = 1.0f - 2.0f / (exp_f32(2.0f * a) + 1.0f);
    q = x < 0.0f ? -q : q;
    return fabsf(x) < 0.625f ? p : q;
}

static inline double sigm_f64(double x) { return 1.0 / (1.0 + exp(-x)); }

int treelstm_levels_abi(void) { return 2; }

#define T float
#define SUF f32
#define SIGM sigm_f32
#define TANH tanh_f32
#include "levels_impl.h"
#undef T
#undef SUF
#undef SIGM
#undef TANH

#define T double
#define SUF f64
#define SIGM sigm_f64
#define TANH tanh
#include "levels_impl.h"
#undef T
#undef SUF
#undef SIGM
#undef TANH
