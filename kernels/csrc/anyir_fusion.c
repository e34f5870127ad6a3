/*
 * AnyIR's spatial-frequency fusion for float32 channels_last CPU tensors (see
 * kernels/anyir_fusion.py for the formula): per pixel, a and g hold C channels and
 *
 *   F_s = [a + sigmoid(g) | g + sigmoid(a)]               (2C)
 *   out[k] = lam * F_s[k] + (1 - lam) * (a + g)[k / 2]     k < 2C
 *
 * Forward reads a and g once and writes out. Backward, with D = dout, D1 / D2 its halves and
 * Dp[j] = D[2j] + D[2j + 1]:
 *
 *   da = lam * (D1 + D2 * sigmoid'(a)) + (1 - lam) * Dp
 *   dg = lam * (D2 + D1 * sigmoid'(g)) + (1 - lam) * Dp
 *   dlam = sum(D1 * (a + sigmoid(g)) + D2 * (g + sigmoid(a)) - Dp * (a + g))
 *
 * one pass reading a, g and D, writing da and dg; dlam in double per thread, threads added in
 * order. Pixels are split into one contiguous block per thread.
 */
#include <stdint.h>
#include <stdlib.h>

#include "common.h"


int anyir_fusion_forward(
    const float *attention,  /* a, (P, C), P = B * H * W pixels */
    const float *gated,      /* g, (P, C) */
    float lam,               /* the learned mixing weight */
    float *output,           /* (P, 2C), written */
    int64_t pixels,          /* P */
    int64_t channels,        /* C */
    int num_threads)         /* OpenMP threads (torch.get_num_threads()) */
{
    const int blocks = num_threads < 1 ? 1 : num_threads;
    float *pair_sums = malloc((size_t)(blocks * 2 * channels) * sizeof(float));
    if (!pair_sums)
        return 1;
    #pragma omp parallel num_threads(blocks)
    {
        const int team = omp_get_num_threads();
        for (int block = omp_get_thread_num(); block < blocks; block += team) {
            float *restrict doubled = pair_sums + block * 2 * channels;   /* (a + g)[k / 2] */
            for (int64_t p = block_start(pixels, blocks, block);
                 p < block_start(pixels, blocks, block + 1); ++p) {
                const float *restrict a = attention + p * channels;
                const float *restrict g = gated + p * channels;
                float *restrict out = output + p * 2 * channels;
                #pragma omp simd
                for (int64_t j = 0; j < channels; ++j) {
                    const float s = (1.0f - lam) * (a[j] + g[j]);
                    doubled[2 * j] = s;
                    doubled[2 * j + 1] = s;
                }
                #pragma omp simd
                for (int64_t k = 0; k < channels; ++k)
                    out[k] = lam * (a[k] + sigmoid(g[k])) + doubled[k];
                #pragma omp simd
                for (int64_t k = 0; k < channels; ++k)
                    out[channels + k] = lam * (g[k] + sigmoid(a[k])) + doubled[channels + k];
            }
        }
    }
    free(pair_sums);
    return 0;
}

int anyir_fusion_backward(
    const float *attention,    /* a, (P, C) */
    const float *gated,        /* g, (P, C) */
    float lam,                 /* the learned mixing weight */
    const float *grad_output,  /* D, (P, 2C) */
    float *grad_attention,     /* da, (P, C), written */
    float *grad_gated,         /* dg, (P, C), written */
    double *grad_lam,          /* dlam, one double, written */
    int64_t pixels,            /* P */
    int64_t channels,          /* C */
    int num_threads)           /* OpenMP threads (torch.get_num_threads()) */
{
    const int blocks = num_threads < 1 ? 1 : num_threads;
    double *partials = calloc((size_t)blocks, sizeof(double));
    float *pair_sums = malloc((size_t)(blocks * channels) * sizeof(float));
    if (!partials || !pair_sums) {
        free(partials);
        free(pair_sums);
        return 1;
    }
    #pragma omp parallel num_threads(blocks)
    {
        const int team = omp_get_num_threads();
        for (int block = omp_get_thread_num(); block < blocks; block += team) {
            float *restrict pair_sum = pair_sums + block * channels;       /* Dp */
            double total = 0.0;
            for (int64_t p = block_start(pixels, blocks, block);
                 p < block_start(pixels, blocks, block + 1); ++p) {
                const float *restrict a = attention + p * channels;
                const float *restrict g = gated + p * channels;
                const float *restrict d = grad_output + p * 2 * channels;
                float *restrict da = grad_attention + p * channels;
                float *restrict dg = grad_gated + p * channels;
                #pragma omp simd
                for (int64_t j = 0; j < channels; ++j)
                    pair_sum[j] = d[2 * j] + d[2 * j + 1];
                float pixel_total = 0.0f;
                #pragma omp simd reduction(+ : pixel_total)
                for (int64_t j = 0; j < channels; ++j) {
                    const float sa = sigmoid(a[j]), sg = sigmoid(g[j]);
                    const float d1 = d[j], d2 = d[channels + j], dp = pair_sum[j];
                    da[j] = lam * (d1 + d2 * sa * (1.0f - sa)) + (1.0f - lam) * dp;
                    dg[j] = lam * (d2 + d1 * sg * (1.0f - sg)) + (1.0f - lam) * dp;
                    pixel_total += d1 * (a[j] + sg) + d2 * (g[j] + sa) - dp * (a[j] + g[j]);
                }
                total += (double)pixel_total;
            }
            partials[block] = total;
        }
    }
    double sum = 0.0;
    for (int block = 0; block < blocks; ++block)
        sum += partials[block];
    *grad_lam = sum;
    free(partials);
    free(pair_sums);
    return 0;
}
