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
 * order. Pixels are split into one contiguous block per thread, walked PIXEL_BLOCK pixels at a
 * time: every per-channel formula runs over the block's (pixels x C) values as one flat array
 * (full-width vectors whatever C is; per pixel, C = 14 or 28 in AnyIR, the loops were mostly
 * scalar tails), and the pairing k / 2 is flat too: in a row-major (P, 2C) array, element m
 * pairs with element m / 2 of the (P, C) one. Only copying the two C-channel halves between
 * the (P, 2C) rows and the flat block arrays is per pixel.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"

#define PIXEL_BLOCK 64


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
    const int64_t block_floats = PIXEL_BLOCK * channels;
    float *work = malloc((size_t)(blocks * 2 * block_floats) * sizeof(float));
    if (!work)
        return 1;
    #pragma omp parallel num_threads(blocks)
    {
        const int team = omp_get_num_threads();
        for (int block = omp_get_thread_num(); block < blocks; block += team) {
            float *restrict first = work + block * 2 * block_floats;   /* lam (a + s(g)) */
            float *restrict second = first + block_floats;             /* lam (g + s(a)) */
            const int64_t end = block_start(pixels, blocks, block + 1);
            for (int64_t p0 = block_start(pixels, blocks, block); p0 < end; p0 += PIXEL_BLOCK) {
                const int64_t count = end - p0 < PIXEL_BLOCK ? end - p0 : PIXEL_BLOCK;
                const int64_t n = count * channels;
                const float *restrict a = attention + p0 * channels;
                const float *restrict g = gated + p0 * channels;
                float *restrict out = output + p0 * 2 * channels;
                #pragma omp simd
                for (int64_t i = 0; i < n; ++i) {
                    first[i] = lam * (a[i] + sigmoid(g[i]));
                    second[i] = lam * (g[i] + sigmoid(a[i]));
                }
                for (int64_t q = 0; q < count; ++q) {
                    memcpy(out + q * 2 * channels, first + q * channels,
                           (size_t)channels * sizeof(float));
                    memcpy(out + q * 2 * channels + channels, second + q * channels,
                           (size_t)channels * sizeof(float));
                }
                #pragma omp simd
                for (int64_t i = 0; i < n; ++i) {           /* out[m] += (1 - lam) (a + g)[m / 2] */
                    const float s = (1.0f - lam) * (a[i] + g[i]);
                    out[2 * i] += s;
                    out[2 * i + 1] += s;
                }
            }
        }
    }
    free(work);
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
    const int64_t block_floats = PIXEL_BLOCK * channels;
    double *partials = calloc((size_t)blocks, sizeof(double));
    float *work = malloc((size_t)(blocks * 2 * block_floats) * sizeof(float));
    if (!partials || !work) {
        free(partials);
        free(work);
        return 1;
    }
    #pragma omp parallel num_threads(blocks)
    {
        const int team = omp_get_num_threads();
        for (int block = omp_get_thread_num(); block < blocks; block += team) {
            float *restrict d1 = work + block * 2 * block_floats;      /* D's first halves */
            float *restrict d2 = d1 + block_floats;                    /* D's second halves */
            double total = 0.0;
            const int64_t end = block_start(pixels, blocks, block + 1);
            for (int64_t p0 = block_start(pixels, blocks, block); p0 < end; p0 += PIXEL_BLOCK) {
                const int64_t count = end - p0 < PIXEL_BLOCK ? end - p0 : PIXEL_BLOCK;
                const int64_t n = count * channels;
                const float *restrict a = attention + p0 * channels;
                const float *restrict g = gated + p0 * channels;
                const float *restrict d = grad_output + p0 * 2 * channels;
                float *restrict da = grad_attention + p0 * channels;
                float *restrict dg = grad_gated + p0 * channels;
                for (int64_t q = 0; q < count; ++q) {
                    memcpy(d1 + q * channels, d + q * 2 * channels,
                           (size_t)channels * sizeof(float));
                    memcpy(d2 + q * channels, d + q * 2 * channels + channels,
                           (size_t)channels * sizeof(float));
                }
                float block_total = 0.0f;
                #pragma omp simd reduction(+ : block_total)
                for (int64_t i = 0; i < n; ++i) {
                    const float sa = sigmoid(a[i]), sg = sigmoid(g[i]);
                    const float dp = d[2 * i] + d[2 * i + 1];      /* Dp, paired flat */
                    da[i] = lam * (d1[i] + d2[i] * sa * (1.0f - sa)) + (1.0f - lam) * dp;
                    dg[i] = lam * (d2[i] + d1[i] * sg * (1.0f - sg)) + (1.0f - lam) * dp;
                    block_total += d1[i] * (a[i] + sg) + d2[i] * (g[i] + sa) - dp * (a[i] + g[i]);
                }
                total += (double)block_total;
            }
            partials[block] = total;
        }
    }
    double sum = 0.0;
    for (int block = 0; block < blocks; ++block)
        sum += partials[block];
    *grad_lam = sum;
    free(partials);
    free(work);
    return 0;
}
