/*
 * Channel LayerNorm for float32 channels_last CPU tensors: each of the P = B * H * W pixels
 * holds C contiguous channels (see kernels/layernorm.py for the three variants).
 *
 *   mean = sum(x) / C,  var = sum((x - mean)^2) / C,  rstd = 1 / sqrt(var + eps)
 *   centred (WithBias, Centered):  y = (x - mean) * rstd * w (+ b)
 *   BiasFree (Restormer):          y = x * rstd * w
 *
 * Forward: one pass per pixel (two sweeps over its C channels in cache), writes y and keeps
 * mean and rstd per pixel for the backward. Backward, with u = dy * w:
 *   centred:  dx = rstd * (u - mean(u) - xhat * mean(u * xhat)),  xhat = (x - mean) * rstd
 *   BiasFree: dx = rstd * u - rstd^3 * (x - mean) * mean(u * x)
 *   dw = sum over pixels of dy * xhat (centred) or dy * x * rstd (BiasFree),  db = sum dy
 * one pass reading x and dy, writing dx; dw and db in float per chunk of pixels, double per
 * thread, threads added in order (deterministic for a given thread count).
 *
 * Two code paths, same arithmetic. With LANES <= C <= 8 LANES (every block of the three
 * networks up to 128 channels) a pixel's channels are a fixed number of vectors
 * (block_begin() blocks; the last overlaps its neighbour when LANES does not divide C) and the
 * dw / db sums of a chunk stay in registers: one function body specialised per vector count.
 * Other channel counts take plain loops over the channels, the sums in a per-thread buffer.
 * Written this way because the plain loops on 28 or 56 channels spent most of their time in
 * the 12- and 8-channel remainders and in dw / db stores (1.1-1.9 ms per 2 x 56 x 128 x 128
 * backward, slower on 2 threads than on 1: the threads' buffers shared a cache line).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"

/* Pixels whose weight/bias gradient terms are summed in float before going to double. */
#define PIXEL_CHUNK 64
/* Channel vectors a pixel may have to take the register path (C <= 128). */
#define MAX_VECTORS 8
/* Doubles per cache line: each thread's dw / db sums start on their own lines. */
#define LINE_DOUBLES 8

/* Normalises pixels [first, last) of a row of `vectors` block_begin() vectors (C >= LANES). */
static inline __attribute__((always_inline)) void forward_vectors(
    const float *input, const float *weight, const float *bias, int center, float eps,
    float *output, float *mean, float *rstd, int64_t first, int64_t last, int64_t channels,
    const int vectors)
{
    const float inverse = 1.0f / (float)channels;
    const lanes_t last_mask = tail_mask(channels);
    int64_t offset[MAX_VECTORS];
    lanes_t w[MAX_VECTORS], b[MAX_VECTORS];
    #pragma GCC unroll 8
    for (int v = 0; v < vectors; ++v) {
        offset[v] = block_begin(v * LANES, channels);
        w[v] = load_lanes(weight + offset[v]);
        b[v] = bias ? load_lanes(bias + offset[v]) : (lanes_t){0};
    }
    for (int64_t p = first; p < last; ++p) {
        const float *x = input + p * channels;
        float *y = output + p * channels;
        lanes_t xv[MAX_VECTORS], sum = {0}, squares = {0};
        #pragma GCC unroll 8
        for (int v = 0; v < vectors; ++v) {
            xv[v] = load_lanes(x + offset[v]);
            sum += v == vectors - 1 ? xv[v] * last_mask : xv[v];
        }
        const float mu = lanes_sum(sum) * inverse;
        #pragma GCC unroll 8
        for (int v = 0; v < vectors; ++v) {
            const lanes_t d = xv[v] - mu;
            squares += v == vectors - 1 ? d * d * last_mask : d * d;
        }
        const float r = 1.0f / __builtin_sqrtf(lanes_sum(squares) * inverse + eps);
        const float shift = center ? mu : 0.0f;
        #pragma GCC unroll 8
        for (int v = 0; v < vectors; ++v)     /* the overlapping last block rewrites equal values */
            store_lanes(y + offset[v], (xv[v] - shift) * r * w[v] + b[v]);
        mean[p] = mu;
        rstd[p] = r;
    }
}

/* Any C: loops over the channels. */
static void forward_loops(const float *input, const float *weight, const float *bias,
                          int center, float eps, float *output, float *mean, float *rstd,
                          int64_t first, int64_t last, int64_t channels)
{
    const float inverse = 1.0f / (float)channels;
    for (int64_t p = first; p < last; ++p) {
        const float *restrict x = input + p * channels;
        float *restrict y = output + p * channels;
        float sum = 0.0f, squares = 0.0f;
        #pragma omp simd reduction(+ : sum)
        for (int64_t c = 0; c < channels; ++c)
            sum += x[c];
        const float mu = sum * inverse;
        #pragma omp simd reduction(+ : squares)
        for (int64_t c = 0; c < channels; ++c)
            squares += (x[c] - mu) * (x[c] - mu);
        const float r = 1.0f / __builtin_sqrtf(squares * inverse + eps);
        const float shift = center ? mu : 0.0f;
        #pragma omp simd
        for (int64_t c = 0; c < channels; ++c)
            y[c] = (x[c] - shift) * r * weight[c] + (bias ? bias[c] : 0.0f);
        mean[p] = mu;
        rstd[p] = r;
    }
}

/* One switch case per register-path vector count (1 to MAX_VECTORS). */
#define EACH_VECTOR_COUNT(CASE) \
    CASE(1);                    \
    CASE(2);                    \
    CASE(3);                    \
    CASE(4);                    \
    CASE(5);                    \
    CASE(6);                    \
    CASE(7);                    \
    CASE(8)

/* Vectors per pixel for the register path, or 0 for the loops. */
static int register_vectors(int64_t channels)
{
    if (channels < LANES || channels > MAX_VECTORS * LANES)
        return 0;
    return (int)((channels + LANES - 1) / LANES);
}

#define FORWARD_CASE(n)                                                                     \
    case n:                                                                                 \
        forward_vectors(input, weight, bias, center, eps, output, mean, rstd, first, last, \
                        channels, n);                                                      \
        break

int layer_norm_forward(
    const float *input,    /* x, (P, C) */
    const float *weight,   /* w, (C,) */
    const float *bias,     /* b, (C,) or NULL */
    int center,            /* 1: subtract the mean (WithBias, Centered); 0: BiasFree */
    float eps,             /* added to the variance */
    float *output,         /* y, (P, C), written */
    float *mean,           /* (P,), written */
    float *rstd,           /* (P,), written */
    int64_t pixels,        /* P */
    int64_t channels,      /* C */
    int num_threads)       /* OpenMP threads (torch.get_num_threads()) */
{
    const int blocks = num_threads < 1 ? 1 : num_threads;
    const int vectors = register_vectors(channels);
    #pragma omp parallel num_threads(blocks)
    {
        const int team = omp_get_num_threads();
        for (int block = omp_get_thread_num(); block < blocks; block += team) {
            const int64_t first = block_start(pixels, blocks, block);
            const int64_t last = block_start(pixels, blocks, block + 1);
            switch (vectors) {
                EACH_VECTOR_COUNT(FORWARD_CASE);
            default:
                forward_loops(input, weight, bias, center, eps, output, mean, rstd, first, last,
                              channels);
            }
        }
    }
    return 0;
}

/* Backward of pixels [first, last) (C >= LANES, `vectors` block_begin() vectors): writes dx
 * (when grad_input is not NULL) and adds the pixels' dw and db terms to sum (dw) and
 * sum + channels (db). The chunk's sums stay in registers; the overlapping lanes of the last
 * block are masked out of them. */
static inline __attribute__((always_inline)) void backward_vectors(
    const float *input, const float *weight, int center, const float *mean, const float *rstd,
    const float *grad_output, float *grad_input, double *sum, int64_t first, int64_t last,
    int64_t channels, const int vectors)
{
    const float inverse = 1.0f / (float)channels;
    const lanes_t last_mask = tail_mask(channels);
    int64_t offset[MAX_VECTORS];
    lanes_t w[MAX_VECTORS];
    #pragma GCC unroll 8
    for (int v = 0; v < vectors; ++v) {
        offset[v] = block_begin(v * LANES, channels);
        w[v] = load_lanes(weight + offset[v]);
    }
    for (int64_t chunk = first; chunk < last; chunk += PIXEL_CHUNK) {
        const int64_t chunk_end = chunk + PIXEL_CHUNK < last ? chunk + PIXEL_CHUNK : last;
        lanes_t dw[MAX_VECTORS], db[MAX_VECTORS];
        #pragma GCC unroll 8
        for (int v = 0; v < vectors; ++v)
            dw[v] = db[v] = (lanes_t){0};
        for (int64_t p = chunk; p < chunk_end; ++p) {
            const float *x = input + p * channels;
            const float *dy = grad_output + p * channels;
            const float mu = mean[p], r = rstd[p], shift = center ? mu : 0.0f;
            lanes_t u_sum = {0}, uxhat_sum = {0};
            #pragma GCC unroll 8
            for (int v = 0; v < vectors; ++v) {
                const lanes_t m = v == vectors - 1 ? last_mask : (lanes_t){0} + 1.0f;
                const lanes_t g = load_lanes(dy + offset[v]) * m;
                const lanes_t xhat = (load_lanes(x + offset[v]) - shift) * r;
                const lanes_t u = g * w[v];
                u_sum += u;
                uxhat_sum += u * xhat;
                dw[v] += g * xhat;
                db[v] += g;
            }
            if (!grad_input)
                continue;
            float *dx = grad_input + p * channels;
            const float a = lanes_sum(u_sum) * inverse;
            const float b = lanes_sum(uxhat_sum) * inverse;
            #pragma GCC unroll 8
            for (int v = 0; v < vectors; ++v) {       /* x and dy again, from L1 */
                const lanes_t xv = load_lanes(x + offset[v]);
                const lanes_t u = load_lanes(dy + offset[v]) * w[v];
                if (center)      /* r (u - mean(u) - xhat mean(u xhat)) */
                    store_lanes(dx + offset[v], r * (u - a - (xv - mu) * r * b));
                else             /* r u - r^3 (x - mu) mean(u x); here b = r mean(u x) */
                    store_lanes(dx + offset[v], r * u - (xv - mu) * (r * r * b));
            }
        }
        #pragma GCC unroll 8
        for (int v = 0; v < vectors; ++v) {
            for (int j = 0; j < LANES; ++j) {
                sum[offset[v] + j] += (double)dw[v][j];
                sum[channels + offset[v] + j] += (double)db[v][j];
            }
        }
    }
}

/* Any C: loops over the channels; the chunk's dw / db sums in `chunk_sums` (2C floats). */
static void backward_loops(const float *input, const float *weight, int center,
                           const float *mean, const float *rstd, const float *grad_output,
                           float *grad_input, double *sum, float *chunk_sums, int64_t first,
                           int64_t last, int64_t channels)
{
    const float inverse = 1.0f / (float)channels;
    float *restrict dw_chunk = chunk_sums;
    float *restrict db_chunk = chunk_sums + channels;
    for (int64_t chunk = first; chunk < last; chunk += PIXEL_CHUNK) {
        const int64_t chunk_end = chunk + PIXEL_CHUNK < last ? chunk + PIXEL_CHUNK : last;
        memset(chunk_sums, 0, (size_t)(2 * channels) * sizeof(float));
        for (int64_t p = chunk; p < chunk_end; ++p) {
            const float *restrict x = input + p * channels;
            const float *restrict dy = grad_output + p * channels;
            const float mu = mean[p], r = rstd[p], shift = center ? mu : 0.0f;
            float u_sum = 0.0f, uxhat_sum = 0.0f;
            #pragma omp simd reduction(+ : u_sum, uxhat_sum)
            for (int64_t c = 0; c < channels; ++c) {
                const float xhat = (x[c] - shift) * r, u = dy[c] * weight[c];
                u_sum += u;
                uxhat_sum += u * xhat;
                dw_chunk[c] += dy[c] * xhat;
                db_chunk[c] += dy[c];
            }
            if (!grad_input)
                continue;
            float *restrict dx = grad_input + p * channels;
            const float a = u_sum * inverse, b = uxhat_sum * inverse;
            if (center) {
                #pragma omp simd
                for (int64_t c = 0; c < channels; ++c)
                    dx[c] = r * (dy[c] * weight[c] - a - (x[c] - mu) * r * b);
            } else {
                #pragma omp simd
                for (int64_t c = 0; c < channels; ++c)
                    dx[c] = r * dy[c] * weight[c] - (x[c] - mu) * (r * r * b);
            }
        }
        #pragma omp simd
        for (int64_t c = 0; c < 2 * channels; ++c)       /* dw and db */
            sum[c] += (double)chunk_sums[c];
    }
}

#define BACKWARD_CASE(n)                                                                   \
    case n:                                                                                \
        backward_vectors(input, weight, center, mean, rstd, grad_output, grad_input, sum, \
                         first, last, channels, n);                                       \
        break

int layer_norm_backward(
    const float *input,        /* x, (P, C) */
    const float *weight,       /* w, (C,) */
    int center,                /* as in the forward */
    const float *mean,         /* (P,), from the forward */
    const float *rstd,         /* (P,), from the forward */
    const float *grad_output,  /* dy, (P, C) */
    float *grad_input,         /* dx, (P, C), written, or NULL */
    float *grad_weight,        /* dw, (C,), written, or NULL */
    float *grad_bias,          /* db, (C,), written, or NULL */
    int64_t pixels,            /* P */
    int64_t channels,          /* C */
    int num_threads)           /* OpenMP threads (torch.get_num_threads()) */
{
    const int blocks = num_threads < 1 ? 1 : num_threads;
    const int vectors = register_vectors(channels);
    /* per thread: dw then db sums, each thread's on their own cache lines */
    const int64_t stride = (2 * channels + LINE_DOUBLES - 1) / LINE_DOUBLES * LINE_DOUBLES;
    double *sums = aligned_alloc(64, (size_t)(blocks * stride) * sizeof(double));
    float *chunk_sums = aligned_alloc(64, (size_t)(blocks * 2 * stride) * sizeof(float));
    if (!sums || !chunk_sums) {
        free(sums);
        free(chunk_sums);
        return 1;
    }
    memset(sums, 0, (size_t)(blocks * stride) * sizeof(double));
    #pragma omp parallel num_threads(blocks)
    {
        const int team = omp_get_num_threads();
        for (int block = omp_get_thread_num(); block < blocks; block += team) {
            double *sum = sums + block * stride;
            const int64_t first = block_start(pixels, blocks, block);
            const int64_t last = block_start(pixels, blocks, block + 1);
            switch (vectors) {
                EACH_VECTOR_COUNT(BACKWARD_CASE);
            default:
                backward_loops(input, weight, center, mean, rstd, grad_output, grad_input, sum,
                               chunk_sums + block * 2 * stride, first, last, channels);
            }
        }
    }
    for (int64_t c = 0; c < channels; ++c) {
        double dw_total = 0.0, db_total = 0.0;
        for (int block = 0; block < blocks; ++block) {
            dw_total += sums[block * stride + c];
            db_total += sums[block * stride + channels + c];
        }
        if (grad_weight)
            grad_weight[c] = (float)dw_total;
        if (grad_bias)
            grad_bias[c] = (float)db_total;
    }
    free(sums);
    free(chunk_sums);
    return 0;
}
