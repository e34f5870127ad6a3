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
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"

/* Pixels whose weight/bias gradient terms are summed in float before going to double. */
#define PIXEL_CHUNK 64

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
    const float inverse = 1.0f / (float)channels;
    #pragma omp parallel for num_threads(num_threads) schedule(static)
    for (int64_t p = 0; p < pixels; ++p) {
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
        if (bias) {
            #pragma omp simd
            for (int64_t c = 0; c < channels; ++c)
                y[c] = (x[c] - shift) * r * weight[c] + bias[c];
        } else {
            #pragma omp simd
            for (int64_t c = 0; c < channels; ++c)
                y[c] = (x[c] - shift) * r * weight[c];
        }
        mean[p] = mu;
        rstd[p] = r;
    }
    return 0;
}

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
    const float inverse = 1.0f / (float)channels;
    float *chunk_sums = malloc((size_t)(blocks * 2 * channels) * sizeof(float));
    double *sums = calloc((size_t)(blocks * 2 * channels), sizeof(double));
    if (!chunk_sums || !sums) {
        free(chunk_sums);
        free(sums);
        return 1;
    }
    #pragma omp parallel num_threads(blocks)
    {
        const int team = omp_get_num_threads();
        for (int block = omp_get_thread_num(); block < blocks; block += team) {
            float *restrict dw_chunk = chunk_sums + block * 2 * channels;
            float *restrict db_chunk = dw_chunk + channels;
            double *restrict dw_sum = sums + block * 2 * channels;   /* then db's sums */
            const int64_t first = block_start(pixels, blocks, block);
            const int64_t last = block_start(pixels, blocks, block + 1);
            for (int64_t chunk = first; chunk < last; chunk += PIXEL_CHUNK) {
                const int64_t chunk_end = chunk + PIXEL_CHUNK < last ? chunk + PIXEL_CHUNK : last;
                memset(dw_chunk, 0, (size_t)(2 * channels) * sizeof(float));
                for (int64_t p = chunk; p < chunk_end; ++p) {
                    const float *restrict x = input + p * channels;
                    const float *restrict dy = grad_output + p * channels;
                    const float mu = mean[p], r = rstd[p], shift = center ? mu : 0.0f;
                    float u_sum = 0.0f, ux_sum = 0.0f;
                    #pragma omp simd reduction(+ : u_sum, ux_sum)
                    for (int64_t c = 0; c < channels; ++c) {
                        const float u = dy[c] * weight[c];
                        u_sum += u;
                        ux_sum += u * (x[c] - shift);
                    }
                    #pragma omp simd
                    for (int64_t c = 0; c < channels; ++c) {
                        dw_chunk[c] += dy[c] * (x[c] - shift) * r;
                        db_chunk[c] += dy[c];
                    }
                    if (!grad_input)
                        continue;
                    float *restrict dx = grad_input + p * channels;
                    if (center) {
                        /* dx = r * (u - mean(u) - xhat * mean(u * xhat)), xhat = (x - mu) r */
                        const float a = u_sum * inverse, b = ux_sum * inverse * r * r;
                        #pragma omp simd
                        for (int64_t c = 0; c < channels; ++c)
                            dx[c] = r * (dy[c] * weight[c] - a - (x[c] - mu) * b);
                    } else {
                        /* dx = r * u - r^3 * (x - mu) * mean(u * x) */
                        const float b = ux_sum * inverse * r * r * r;
                        #pragma omp simd
                        for (int64_t c = 0; c < channels; ++c)
                            dx[c] = r * dy[c] * weight[c] - (x[c] - mu) * b;
                    }
                }
                #pragma omp simd
                for (int64_t c = 0; c < 2 * channels; ++c)       /* dw and db */
                    dw_sum[c] += (double)dw_chunk[c];
            }
        }
    }
    for (int64_t c = 0; c < channels; ++c) {
        double dw_total = 0.0, db_total = 0.0;
        for (int block = 0; block < blocks; ++block) {
            dw_total += sums[block * 2 * channels + c];
            db_total += sums[block * 2 * channels + channels + c];
        }
        if (grad_weight)
            grad_weight[c] = (float)dw_total;
        if (grad_bias)
            grad_bias[c] = (float)db_total;
    }
    free(chunk_sums);
    free(sums);
    return 0;
}
