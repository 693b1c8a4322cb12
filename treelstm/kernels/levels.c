/* Native level loops of treelstm's fused Tree-LSTM kernels (see levels_impl.h).
 *
 * Built on first use by treelstm/kernels/build.py with the system C compiler
 * (cc -O3 -march=native), cached per source, compiler flags and CPU, and called through
 * ctypes on raw pointers of contiguous CPU tensors the Python side allocated and checked.
 * No torch headers: it compiles in about a second. Rows are split across OpenMP threads
 * where a level is large (PAR_MIN). The matmuls go to the BLAS torch itself
 * uses: its Fortran-interface sgemm_ / dgemm_, handed over by `treelstm_set_blas`.
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

int treelstm_levels_abi(void) { return 4; }

typedef void (*gemm_f32_t)(const char *, const char *, const int *, const int *, const int *,
                           const float *, const float *, const int *, const float *,
                           const int *, const float *, float *, const int *);
typedef void (*gemm_f64_t)(const char *, const char *, const int *, const int *, const int *,
                           const double *, const double *, const int *, const double *,
                           const int *, const double *, double *, const int *);
static gemm_f32_t sgemm_ptr;
static gemm_f64_t dgemm_ptr;

void treelstm_set_blas(void *sgemm, void *dgemm)
{
    sgemm_ptr = (gemm_f32_t)sgemm;
    dgemm_ptr = (gemm_f64_t)dgemm;
}

/* Levels with at most this many rows multiply in a direct loop instead of a BLAS call. */
#define SMALL_M 8
/* Row loops of at least this many elements run on the OpenMP threads (built with -fopenmp:
 * torch's own libgomp, so torch.set_num_threads applies; the pushes into the parents stay
 * serial: siblings add into one row). */
#define PAR_MIN 65536
#ifdef _OPENMP
#define PARALLEL_ROWS _Pragma("omp parallel for schedule(static) if (n * H >= PAR_MIN)")
#else
#define PARALLEL_ROWS
#endif

/* With -DTREELSTM_TIMING (TREELSTM_NATIVE_TIMING=1 at build time; benchmarks.profile_levels)
 * the loops add up where their time goes: [0] BLAS matmuls, [1] direct small matmuls, [2] the
 * whole loops; read and reset with treelstm_timing. Without it the macros are empty. */
#ifdef TREELSTM_TIMING
#include <time.h>
static double timing[3];
static inline double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}
#define TIC double tic_ = now_s()
#define TOC(k) (timing[k] += now_s() - tic_)
#else
#define TIC
#define TOC(k)
#endif

void treelstm_timing(double *out)
{
#ifdef TREELSTM_TIMING
    for (int k = 0; k < 3; k++) {
        out[k] = timing[k];
        timing[k] = 0;
    }
#else
    for (int k = 0; k < 3; k++)
        out[k] = -1;
#endif
}

#define T float
#define SUF f32
#define SIGM sigm_f32
#define TANH tanh_f32
#define BLAS_GEMM sgemm_ptr
#include "levels_impl.h"
#undef BLAS_GEMM
#undef T
#undef SUF
#undef SIGM
#undef TANH

#define T double
#define SUF f64
#define SIGM sigm_f64
#define TANH tanh
#define BLAS_GEMM dgemm_ptr
#include "levels_impl.h"
#undef BLAS_GEMM
#undef T
#undef SUF
#undef SIGM
#undef TANH
