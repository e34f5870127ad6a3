/*
 * GDFN's depthwise 3x3 convolution + GELU gate, fused, for float32 channels_last CPU tensors.
 *
 *   z = depthwise_conv3x3(p, weight) + bias          p, z: (B, H, W, 2C) in memory
 *   y = gelu(z[..., :C]) * z[..., C:]                y: (B, H, W, C), exact (erf) GELU
 *
 * Forward reads p once and writes y: z never reaches memory. The backward recomputes z: for
 * each output row it keeps the gate gradient g = [dy * z2 * gelu'(z1) | dy * gelu(z1)] of
 * three consecutive rows in a thread-local ring, writes the input gradient
 * dp = depthwise_conv3x3_transposed(g) and sums the weight and bias gradients (g times the
 * shifted input). The B * H rows are split into one contiguous band per thread, each band
 * walked in column tiles so the ring and the input rows it reads stay in L2; rows and columns
 * beside a band or tile are recomputed. Weight/bias gradients: float sums per 16 channels in
 * registers within a tile, double sums per band, bands added in order (deterministic for a
 * given thread count). The input gradient of either backward (this one and the plain 3x3's
 * below) goes out with non-temporal stores when the caller asks (tensors of at least
 * STREAM_MIN_BYTES, kernels/dwconv3x3.py, which outgrow the caches before the 1x1
 * convolution's backward reads them).
 *
 * GELU's erf is Abramowitz & Stegun 7.1.26 with a Cephes-style expf, the formulation of
 * ATen's vectorised CPU erf (absolute error <= 1.5e-7), written in plain arithmetic so the
 * compiler vectorises the channel loops ("omp simd"). Built at first use by
 * irblocks/kernels/_cpu_build.py with the system C compiler and linked against the OpenMP
 * runtime torch already loaded (one thread pool).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"


#define SQRT1_2 0.70710678118654752f
#define INV_SQRT_2PI 0.39894228040143268f

/* Phi(x) and phi(x) = exp(-x^2 / 2) / sqrt(2 pi) sharing one exp (erf's exp(-u^2), u = x / sqrt 2,
 * is exp(-x^2 / 2)). */
static inline float normal_cdf_pdf(float x, float *pdf)
{
    float u = x * SQRT1_2;
    float a = __builtin_fabsf(u);
    float t = 1.0f / (1.0f + 0.3275911f * a);
    float r = 1.061405429f;
    r = r * t - 1.453152027f;
    r = r * t + 1.421413741f;
    r = r * t - 0.284496736f;
    r = r * t + 0.254829592f;
    float gauss = exp_nonpositive(-a * a);
    float erf_abs = 1.0f - r * t * gauss;
    *pdf = gauss * INV_SQRT_2PI;
    return 0.5f + 0.5f * (u < 0.0f ? -erf_abs : erf_abs);
}

/* Pointers to the nine input pixels around (y, x); taps outside the image read zeros. */
static inline void taps(const float *base, const float *zeros, int64_t y, int64_t x,
                        int64_t height, int64_t width, int64_t channels,
                        const float *tap[9])
{
    for (int ky = 0; ky < 3; ++ky) {
        for (int kx = 0; kx < 3; ++kx) {
            int64_t yy = y + ky - 1, xx = x + kx - 1;
            int inside = yy >= 0 && yy < height && xx >= 0 && xx < width;
            tap[ky * 3 + kx] = inside ? base + (yy * width + xx) * channels : zeros;
        }
    }
}

/* z = depthwise 3x3 at one pixel for channel c (weight: (9, 2C), tap-major); the tap
 * pointers are copied to locals first so the compiler sees nine independent streams. */
#define TAP_LOCALS(tap)                                                                      \
    const float *restrict t0 = tap[0], *restrict t1 = tap[1], *restrict t2 = tap[2];        \
    const float *restrict t3 = tap[3], *restrict t4 = tap[4], *restrict t5 = tap[5];        \
    const float *restrict t6 = tap[6], *restrict t7 = tap[7], *restrict t8 = tap[8]
#define CONV9(weight, stride, c)                                                          \
    (t0[c] * weight[c] + t1[c] * weight[stride + c] + t2[c] * weight[2 * stride + c]   \
     + t3[c] * weight[3 * stride + c] + t4[c] * weight[4 * stride + c]                 \
     + t5[c] * weight[5 * stride + c] + t6[c] * weight[6 * stride + c]                 \
     + t7[c] * weight[7 * stride + c] + t8[c] * weight[8 * stride + c])

/* Adds to image_sum[0 .. summed) the sums of squares over a row's width pixels of its first
 * summed channels (row: (width, channels), just written, in L2): sixteen channels at a time
 * in a register across the row (float), then added to the double sums. */
static void add_row_sumsq(const float *row, int64_t width, int64_t channels, int64_t summed,
                          double *image_sum)
{
    for (int64_t block = 0; block < summed; block += LANES) {
        const int64_t c0 = block_begin(block, summed);
        if (summed < LANES || (block > 0 && c0 != block)) {    /* scalar: a partial block */
            for (int64_t c = block; c < summed; ++c) {
                float total = 0.0f;
                for (int64_t x = 0; x < width; ++x)
                    total += row[x * channels + c] * row[x * channels + c];
                image_sum[c] += (double)total;
            }
            break;
        }
        lanes_t total = (lanes_t){0};
        for (int64_t x = 0; x < width; ++x) {
            const lanes_t v = load_lanes(row + x * channels + c0);
            total += v * v;
        }
        for (int j = 0; j < LANES; ++j)
            image_sum[c0 + j] += (double)total[j];
    }
}

/* Depthwise 3x3 of input (B, H, W, channels) + bias, then either written as is (gate 0, output
 * (B, H, W, channels)) or gated, gelu(z1) * z2 over the two halves (gate 1, output
 * (B, H, W, channels / 2)). Ungated, with sumsq_channels > 0, also the sums of squares of the
 * output's first sumsq_channels channels over each image's pixels into sumsq
 * (B, sumsq_channels): float sums per row, double sums per thread and image, threads added in
 * order (deterministic for a given thread count). Rows split over the threads. */
static int depthwise_forward(const float *input, const float *weight, int64_t weight_stride,
                             const float *bias, float *output, float *sumsq,
                             int64_t sumsq_channels, int64_t batch, int64_t height,
                             int64_t width, int64_t channels, int gate, int num_threads)
{
    const int64_t half = channels / 2, out_channels = gate ? half : channels;
    const int threads = num_threads < 1 ? 1 : num_threads;
    const int64_t summed = gate || !sumsq ? 0 : sumsq_channels;
    float *zeros = calloc((size_t)channels, sizeof(float));
    float *no_bias = calloc((size_t)channels, sizeof(float));
    /* per thread: a double sum per image (none without sums: calloc(0) may return NULL) */
    double *image_sums = summed ? calloc((size_t)(threads * batch * summed), sizeof(double))
                                : NULL;
    if (!zeros || !no_bias || (summed && !image_sums)) {
        free(zeros);
        free(no_bias);
        free(image_sums);
        return 1;
    }
    const float *shift = bias ? bias : no_bias;
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t row = 0; row < batch * height; ++row) {
        const int64_t image = row / height, y = row % height;
        const float *base = input + image * height * width * channels;
        for (int64_t x = 0; x < width; ++x) {
            const float *tap[9];
            taps(base, zeros, y, x, height, width, channels, tap);
            TAP_LOCALS(tap);
            float *restrict out = output + (row * width + x) * out_channels;
            prefetch_pixel(y + 2 < height ? base + ((y + 2) * width + x) * channels : NULL,
                           channels, 1);
            if (gate) {
                /* full vectors only: the last block overlaps the one before it (same values
                 * written twice); a scalar remainder of GELUs cost as much as the vectors */
                for (int64_t block = 0; block < half; block += LANES) {
                    const int64_t c0 = block_begin(block, half);
                    const int64_t count = half < LANES ? half : LANES;
                    #pragma omp simd
                    for (int64_t j = 0; j < count; ++j) {
                        const int64_t c = c0 + j;
                        float z1 = shift[c] + CONV9(weight, weight_stride, c);
                        float z2 = shift[half + c] + CONV9(weight, weight_stride, half + c);
                        float unused_pdf;   /* the compiler drops its computation */
                        out[c] = z1 * normal_cdf_pdf(z1, &unused_pdf) * z2;
                    }
                }
            } else {
                for (int64_t block = 0; block < channels; block += LANES) {
                    const int64_t c0 = block_begin(block, channels);
                    const int64_t count = channels < LANES ? channels : LANES;
                    #pragma omp simd
                    for (int64_t j = 0; j < count; ++j)
                        out[c0 + j] = shift[c0 + j] + CONV9(weight, weight_stride, c0 + j);
                }
            }
        }
        if (summed)
            add_row_sumsq(output + row * width * out_channels, width, out_channels, summed,
                          image_sums + (omp_get_thread_num() * batch + image) * summed);
    }
    for (int64_t i = 0; i < batch * summed; ++i) {
        double total = 0.0;
        for (int thread = 0; thread < threads; ++thread)
            total += image_sums[thread * batch * summed + i];
        sumsq[i] = (float)total;
    }
    free(zeros);
    free(no_bias);
    free(image_sums);
    return 0;
}

/*
 * input:  (B, H, W, 2C) float32, contiguous
 * weight: (9, weight_stride) float32, weight[(ky * 3 + kx) * weight_stride + c] = conv weight
 *         (c, 0, ky, kx) for c < 2C; weight_stride >= 2C (the caller pads it to an odd number
 *         of 64-byte lines so the nine rows fall in different L1 sets; unpadded, 2C = 320
 *         measured 3.9 instead of 2.6 ns per element of p in the backward, one thread)
 * bias:   (2C,) float32 or NULL
 * output: (B, H, W, C) float32, contiguous
 * Returns 0, or 1 when a work buffer cannot be allocated.
 */
int dwconv_gelu_gate_forward(
    const float *input,      /* p, (B, H, W, 2C) */
    const float *weight,     /* (9, weight_stride), tap-major, see above */
    int64_t weight_stride,   /* row stride of weight, >= 2C */
    const float *bias,       /* (2C,) or NULL */
    float *output,           /* y, (B, H, W, C), written */
    int64_t batch,           /* B */
    int64_t height,          /* H */
    int64_t width,           /* W */
    int64_t channels,        /* C, channels of each half */
    int num_threads)         /* OpenMP threads (torch.get_num_threads()) */
{
    return depthwise_forward(input, weight, weight_stride, bias, output, NULL, 0, batch, height,
                             width, 2 * channels, 1, num_threads);
}

/* Columns per backward tile: the ring of three gate-gradient rows and the four input rows
 * they read stay in L2 (2C = 510: 3 x 34 x 510 x 4 B = 208 KB + 285 KB) where whole rows
 * (1.8 MB at W = 128) spilled. */
#define TILE_WIDTH 32
#define PIXEL_CHUNK 8

/* Gate gradient g = [dy z2 gelu'(z1) | dy gelu(z1)] of row y, columns [x0, x1), into
 * ring_row (x1 - x0, 2C). */
static void gate_gradient_row(const float *base, const float *grad_base, const float *weight,
                              int64_t weight_stride, const float *shift, const float *zeros,
                              float *ring_row,
                              int64_t y, int64_t x0, int64_t x1, int64_t height, int64_t width,
                              int64_t channels)
{
    const int64_t channels2 = 2 * channels;
    for (int64_t x = x0; x < x1; ++x) {
        const float *tap[9];
        taps(base, zeros, y, x, height, width, channels2, tap);
        TAP_LOCALS(tap);
        const float *restrict dy = grad_base + (y * width + x) * channels;
        float *restrict g = ring_row + (x - x0) * channels2;
        if (y + 2 < height) {             /* the input and dy of the row read next */
            prefetch_pixel(base + ((y + 2) * width + x) * channels2, channels2, 1);
            prefetch_pixel(dy + width * channels, channels, 1);
        }
        for (int64_t block = 0; block < channels; block += LANES) {   /* as in the forward */
            const int64_t c0 = block_begin(block, channels);
            const int64_t count = channels < LANES ? channels : LANES;
            #pragma omp simd
            for (int64_t j = 0; j < count; ++j) {
                const int64_t c = c0 + j;
                float z1 = shift[c] + CONV9(weight, weight_stride, c);
                float z2 = shift[channels + c] + CONV9(weight, weight_stride, channels + c);
                float pdf;
                float cdf = normal_cdf_pdf(z1, &pdf);
                g[c] = dy[c] * z2 * (cdf + z1 * pdf);
                g[channels + c] = dy[c] * z1 * cdf;
            }
        }
    }
}

/* partial[t][block .. block + LANES) += acc[t] for the nine taps and the bias (t = 9). */
static inline __attribute__((always_inline)) void add_sums(float *partial, const lanes_t acc[10],
                                                           int64_t channels2, int64_t block)
{
    #pragma GCC unroll 10
    for (int t = 0; t < 10; ++t)
        store_lanes(partial + t * channels2 + block,
                    load_lanes(partial + t * channels2 + block) + acc[t]);
}

/* Adds to partial (10, 2C) the sums over pixels [x0, x1) of a row of g(y, x) * input(y + ky - 1,
 * x + kx - 1) (taps 0-8) and of g (9: the bias) for the LANES channels from `block` on, g
 * multiplied by `mask` (1 or 0 per lane: the last block of a row whose width is not a multiple
 * of LANES overlaps the previous one and counts only its new lanes). chunk_taps[x - x0] holds
 * the nine input pointers of pixel x, found once per pixel chunk for all channel blocks
 * (finding them per block cost 2-4% of the gate's forward + backward). GCC vector type: the
 * ten sums stay in registers (a float[10][16] array was kept on the stack, one load and
 * store per FMA). */
static inline __attribute__((always_inline)) void weight_sums_block(
    const float *const chunk_taps[][9], const float *g_row, int64_t g_x0, float *partial,
    int64_t x0, int64_t x1, int64_t channels2, int64_t block, lanes_t mask)
{
    lanes_t acc[10];
    #pragma GCC unroll 10
    for (int t = 0; t < 10; ++t)
        acc[t] = (lanes_t){0};
    for (int64_t x = x0; x < x1; ++x) {
        const float *const *tap = chunk_taps[x - x0];
        const lanes_t g = load_lanes(g_row + (x - g_x0) * channels2 + block) * mask;
        #pragma GCC unroll 9
        for (int t = 0; t < 9; ++t)
            acc[t] += g * load_lanes(tap[t] + block);
        acc[9] += g;
    }
    add_sums(partial, acc, channels2, block);
}

/* weight_sums_block for the interior columns [x0, x1) of a row (1 <= x0, x1 <= W - 1: every
 * tap column inside the image): the taps of row ky + 1 are rows[ky] + column * steps[ky]
 * (steps 0 and rows the zero row when that image row is outside), so the loop walks three
 * pointers instead of loading nine per pixel, and the ten sums stay in registers across the
 * whole run (gate backward 5-12% faster in cache, one thread; whole training step ~1%). */
static inline __attribute__((always_inline)) void weight_sums_run(
    const float *const rows[3], const int64_t steps[3], const float *g_row, int64_t g_x0,
    float *partial, int64_t x0, int64_t x1, int64_t channels2, int64_t block, lanes_t mask)
{
    lanes_t acc[10];
    #pragma GCC unroll 10
    for (int t = 0; t < 10; ++t)
        acc[t] = (lanes_t){0};
    const int64_t s0 = steps[0], s1 = steps[1], s2 = steps[2];
    const float *r0 = rows[0] + (x0 - 1) * s0 + block;
    const float *r1 = rows[1] + (x0 - 1) * s1 + block;
    const float *r2 = rows[2] + (x0 - 1) * s2 + block;
    const float *gp = g_row + (x0 - g_x0) * channels2 + block;
    for (int64_t x = x0; x < x1; ++x) {
        const lanes_t g = load_lanes(gp) * mask;
        acc[0] += g * load_lanes(r0);
        acc[1] += g * load_lanes(r0 + s0);
        acc[2] += g * load_lanes(r0 + 2 * s0);
        acc[3] += g * load_lanes(r1);
        acc[4] += g * load_lanes(r1 + s1);
        acc[5] += g * load_lanes(r1 + 2 * s1);
        acc[6] += g * load_lanes(r2);
        acc[7] += g * load_lanes(r2 + s2);
        acc[8] += g * load_lanes(r2 + 2 * s2);
        acc[9] += g;
        r0 += s0;
        r1 += s1;
        r2 += s2;
        gp += channels2;
    }
    add_sums(partial, acc, channels2, block);
}

/* Adds to partial (10, 2C) the weight and bias sums of row y, columns [x0, x1), through the
 * per-chunk pointer tables (any column, any channel count). */
static void weight_sums_chunks(const float *base, const float *g_row, int64_t g_x0,
                               const float *zeros, float *partial, int64_t y, int64_t x0,
                               int64_t x1, int64_t height, int64_t width, int64_t channels2)
{
    const lanes_t ones = (lanes_t){0} + 1.0f;
    const lanes_t last_mask = tail_mask(channels2);   /* lanes of the overlapping last block */
    const int64_t fresh = channels2 % LANES;
    for (int64_t chunk = x0; chunk < x1; chunk += PIXEL_CHUNK) {
        const int64_t chunk_end = chunk + PIXEL_CHUNK < x1 ? chunk + PIXEL_CHUNK : x1;
        const float *chunk_taps[PIXEL_CHUNK][9];
        for (int64_t x = chunk; x < chunk_end; ++x)
            taps(base, zeros, y, x, height, width, channels2, chunk_taps[x - chunk]);
        int64_t block = 0;
        for (; block + LANES <= channels2; block += LANES)
            weight_sums_block(chunk_taps, g_row, g_x0, partial, chunk, chunk_end, channels2,
                              block, ones);
        if (fresh && channels2 >= LANES) {
            weight_sums_block(chunk_taps, g_row, g_x0, partial, chunk, chunk_end, channels2,
                              channels2 - LANES, last_mask);
            continue;
        }
        for (int64_t c = block; c < channels2; ++c) {        /* fewer than LANES channels */
            float acc[10] = {0};
            for (int64_t x = chunk; x < chunk_end; ++x) {
                const float *const *tap = chunk_taps[x - chunk];
                const float g = g_row[(x - g_x0) * channels2 + c];
                for (int t = 0; t < 9; ++t)
                    acc[t] += g * tap[t][c];
                acc[9] += g;
            }
            for (int t = 0; t < 10; ++t)
                partial[t * channels2 + c] += acc[t];
        }
    }
}

/* Adds to sum (10, 2C) the sums over columns [x0, x1) of row y of g(y, x) * input(y + ky - 1,
 * x + kx - 1) (taps 0-8) and of g (9: the bias). g_row holds columns from g_x0 on. Sixteen
 * channels at a time with the ten sums in registers (ten loads and FMAs per pixel): float
 * within the tile, double across tiles. Interior columns run along three row pointers
 * (weight_sums_run); the image's first and last column, and fewer than LANES channels, take
 * the pointer tables (weight_sums_chunks). */
static void weight_gradient_tile(const float *base, const float *g_row, int64_t g_x0,
                                 const float *zeros, float *partial, double *sum, int64_t y,
                                 int64_t x0, int64_t x1, int64_t height, int64_t width,
                                 int64_t channels2)
{
    memset(partial, 0, (size_t)(10 * channels2) * sizeof(float));
    const int64_t inner0 = x0 > 1 ? x0 : 1, inner1 = x1 < width - 1 ? x1 : width - 1;
    if (channels2 < LANES || inner0 >= inner1) {
        weight_sums_chunks(base, g_row, g_x0, zeros, partial, y, x0, x1, height, width,
                           channels2);
    } else {
        const float *rows[3];
        int64_t steps[3];
        for (int ky = 0; ky < 3; ++ky) {
            const int64_t yy = y + ky - 1;
            const int inside = yy >= 0 && yy < height;
            rows[ky] = inside ? base + yy * width * channels2 : zeros;
            steps[ky] = inside ? channels2 : 0;
        }
        const lanes_t ones = (lanes_t){0} + 1.0f;
        int64_t block = 0;
        for (; block + LANES <= channels2; block += LANES)
            weight_sums_run(rows, steps, g_row, g_x0, partial, inner0, inner1, channels2, block,
                            ones);
        if (channels2 % LANES)
            weight_sums_run(rows, steps, g_row, g_x0, partial, inner0, inner1, channels2,
                            channels2 - LANES, tail_mask(channels2));
        weight_sums_chunks(base, g_row, g_x0, zeros, partial, y, x0, inner0, height, width,
                           channels2);
        weight_sums_chunks(base, g_row, g_x0, zeros, partial, y, inner1, x1, height, width,
                           channels2);
    }
    #pragma omp simd
    for (int64_t i = 0; i < 10 * channels2; ++i)
        sum[i] += (double)partial[i];
}

/* Input gradient of row y, columns [x0, x1): the transposed convolution of g (taps mirrored).
 * g_rows[k] holds row y + k - 1 (NULL outside the image) from column g_x0 to g_x1.
 * ahead[0], ahead[1]: rows (column 0 first) whose pixel x is prefetched into L2 with pixel x,
 * or NULL. stream: written with non-temporal stores (stream_lanes) where the row is 64-byte
 * aligned and LANES divides the channels, else plain stores. */
static void input_gradient_tile(const float *const g_rows[3], int64_t g_x0, int64_t g_x1,
                                const float *weight, int64_t weight_stride, const float *zeros,
                                float *grad_row, const float *const ahead[2],
                                int64_t x0, int64_t x1, int64_t channels2, int stream)
{
    stream = stream && channels2 % LANES == 0 && ((uintptr_t)grad_row & 63) == 0;
    for (int64_t x = x0; x < x1; ++x) {
        for (int k = 0; k < 2; ++k)
            prefetch_pixel(ahead[k] ? ahead[k] + x * channels2 : NULL, channels2, 0);
        const float *tap[9];
        for (int ky = 0; ky < 3; ++ky) {
            for (int kx = 0; kx < 3; ++kx) {
                const float *g_row = g_rows[2 - ky];
                int64_t xx = x + 1 - kx;
                int inside = g_row && xx >= g_x0 && xx < g_x1;
                tap[ky * 3 + kx] = inside ? g_row + (xx - g_x0) * channels2 : zeros;
            }
        }
        TAP_LOCALS(tap);
        float *restrict dp = grad_row + x * channels2;
        if (stream) {
            for (int64_t c0 = 0; c0 < channels2; c0 += LANES) {
                lanes_t value;
                #pragma omp simd
                for (int64_t j = 0; j < LANES; ++j)
                    value[j] = CONV9(weight, weight_stride, c0 + j);
                stream_lanes(dp + c0, value);
            }
            continue;
        }
        for (int64_t block = 0; block < channels2; block += LANES) {   /* full vectors */
            const int64_t c0 = block_begin(block, channels2);
            const int64_t count = channels2 < LANES ? channels2 : LANES;
            #pragma omp simd
            for (int64_t j = 0; j < count; ++j)
                dp[c0 + j] = CONV9(weight, weight_stride, c0 + j);
        }
    }
}

/*
 * input, weight, bias: as in the forward; grad_output: (B, H, W, C)
 * grad_input: (B, H, W, 2C), written; grad_weight: (9, 2C), grad_bias: (2C,) or NULL,
 * overwritten. Returns 0, or 1 when a work buffer cannot be allocated.
 *
 * Work split: the B * H rows in one contiguous band per thread; each band is walked column
 * tile by column tile, rows in order, with a ring of the gate gradient of rows y - 1, y, y + 1
 * (tile plus one column each side). Rows and columns beside a band or tile are recomputed.
 */
int dwconv_gelu_gate_backward(
    const float *input,        /* p, (B, H, W, 2C) */
    const float *weight,       /* (9, weight_stride), tap-major */
    int64_t weight_stride,     /* row stride of weight, >= 2C */
    const float *bias,         /* (2C,) or NULL */
    const float *grad_output,  /* dy, (B, H, W, C) */
    float *grad_input,         /* dp, (B, H, W, 2C), written */
    float *grad_weight,        /* (9, 2C), tap-major, written */
    float *grad_bias,          /* (2C,) written, or NULL */
    int64_t batch,             /* B */
    int64_t height,            /* H */
    int64_t width,             /* W */
    int64_t channels,          /* C, channels of each half */
    int stream,                /* 1: grad_input written with non-temporal stores */
    int num_threads)           /* OpenMP threads (torch.get_num_threads()) */
{
    const int64_t channels2 = 2 * channels, rows = batch * height;
    const int bands = num_threads < 1 ? 1 : (rows < num_threads ? (int)(rows ? rows : 1)
                                                                : num_threads);
    const int64_t ring_row_size = (TILE_WIDTH + 2) * channels2;
    float *zeros = calloc((size_t)channels2, sizeof(float));
    float *no_bias = calloc((size_t)channels2, sizeof(float));
    float *rings = malloc((size_t)(bands * 3 * ring_row_size) * sizeof(float));
    double *sums = calloc((size_t)(bands * 10 * channels2), sizeof(double));
    float *partials = malloc((size_t)(bands * 10 * channels2) * sizeof(float));
    if (!zeros || !no_bias || !rings || !sums || !partials) {
        free(zeros);
        free(no_bias);
        free(rings);
        free(sums);
        free(partials);
        return 1;
    }
    const float *shift = bias ? bias : no_bias;
    #pragma omp parallel num_threads(bands)
    {
        /* one band per planned thread; a smaller team than planned takes several bands */
        const int team = omp_get_num_threads();
        for (int band = omp_get_thread_num(); band < bands; band += team) {
            float *ring = rings + band * 3 * ring_row_size;
            double *sum = sums + band * 10 * channels2;   /* 9 taps + bias */
            float *partial = partials + band * 10 * channels2;
            const int64_t first = block_start(rows, bands, band);
            const int64_t last = block_start(rows, bands, band + 1);
            for (int64_t x0 = 0; x0 < width; x0 += TILE_WIDTH) {
                const int64_t x1 = x0 + TILE_WIDTH < width ? x0 + TILE_WIDTH : width;
                const int64_t g_x0 = x0 > 0 ? x0 - 1 : 0, g_x1 = x1 < width ? x1 + 1 : width;
                int64_t tag[3] = {-1, -1, -1};   /* which image row each ring slot holds */
                for (int64_t row = first; row < last; ++row) {
                    const int64_t image = row / height, y = row % height;
                    const float *base = input + image * height * width * channels2;
                    const float *grad_base = grad_output + image * height * width * channels;
                    const float *g_rows[3];
                    for (int k = 0; k < 3; ++k) {      /* gate-gradient rows y - 1, y, y + 1 */
                        const int64_t yy = y + k - 1;
                        if (yy < 0 || yy >= height) {
                            g_rows[k] = NULL;
                            continue;
                        }
                        float *slot = ring + (yy % 3) * ring_row_size;
                        if (tag[yy % 3] != image * height + yy) {
                            gate_gradient_row(base, grad_base, weight, weight_stride, shift,
                                              zeros, slot, yy, g_x0, g_x1, height, width,
                                              channels);
                            tag[yy % 3] = image * height + yy;
                        }
                        g_rows[k] = slot;
                    }
                    weight_gradient_tile(base, g_rows[1], g_x0, zeros, partial, sum, y, x0, x1,
                                         height, width, channels2);
                    const float *const no_rows[2] = {NULL, NULL};   /* gate_gradient_row's */
                    input_gradient_tile(g_rows, g_x0, g_x1, weight, weight_stride, zeros,
                                        grad_input + row * width * channels2, no_rows, x0, x1,
                                        channels2, stream);
                }
            }
        }
        stream_fence();
    }
    for (int64_t i = 0; i < 10 * channels2; ++i) {
        double total = 0.0;
        for (int band = 0; band < bands; ++band)
            total += sums[band * 10 * channels2 + i];
        if (i < 9 * channels2)
            grad_weight[i] = (float)total;
        else if (grad_bias)
            grad_bias[i - 9 * channels2] = (float)total;
    }
    free(zeros);
    free(no_bias);
    free(rings);
    free(sums);
    free(partials);
    return 0;
}

/*
 * Plain depthwise 3x3 convolution (zero padding 1), same layouts: input, output (B, H, W, C);
 * optionally the sums of squares over each image's pixels of the output's first S channels
 * (MDTA's q and k: their L2 norms over H * W), per row while the row just written is in L2.
 */
int dwconv3x3_forward(
    const float *input,        /* x, (B, H, W, C) */
    const float *weight,       /* (9, weight_stride), tap-major */
    int64_t weight_stride,     /* row stride of weight, >= C */
    const float *bias,         /* (C,) or NULL */
    float *output,             /* (B, H, W, C), written */
    float *sumsq,              /* (B, S), written, or NULL */
    int64_t sumsq_channels,    /* S, 0 <= S <= C (the caller checks; unused without sumsq) */
    int64_t batch,             /* B */
    int64_t height,            /* H */
    int64_t width,             /* W */
    int64_t channels,          /* C */
    int num_threads)           /* OpenMP threads (torch.get_num_threads()) */
{
    return depthwise_forward(input, weight, weight_stride, bias, output, sumsq, sumsq_channels,
                             batch, height, width, channels, 0, num_threads);
}

int dwconv3x3_backward(
    const float *input,        /* x, (B, H, W, C) */
    const float *weight,       /* (9, weight_stride), tap-major */
    int64_t weight_stride,     /* row stride of weight, >= C */
    const float *grad_output,  /* dy, (B, H, W, C) */
    float *grad_input,         /* dx, (B, H, W, C), written, or NULL */
    float *grad_weight,        /* (9, C), tap-major, written, or NULL */
    float *grad_bias,          /* (C,) written, or NULL */
    int64_t batch,             /* B */
    int64_t height,            /* H */
    int64_t width,             /* W */
    int64_t channels,          /* C */
    int stream,                /* 1: grad_input written with non-temporal stores */
    int num_threads)           /* OpenMP threads (torch.get_num_threads()) */
{
    const int64_t rows = batch * height;
    const int bands = num_threads < 1 ? 1 : (rows < num_threads ? (int)(rows ? rows : 1)
                                                                : num_threads);
    const int sums_needed = grad_weight || grad_bias;
    float *zeros = calloc((size_t)channels, sizeof(float));
    double *sums = calloc((size_t)(bands * 10 * channels), sizeof(double));
    float *partials = malloc((size_t)(bands * 10 * channels) * sizeof(float));
    if (!zeros || !sums || !partials) {
        free(zeros);
        free(sums);
        free(partials);
        return 1;
    }
    #pragma omp parallel num_threads(bands)
    {
        const int team = omp_get_num_threads();
        for (int band = omp_get_thread_num(); band < bands; band += team) {
            double *sum = sums + band * 10 * channels;
            float *partial = partials + band * 10 * channels;
            const int64_t first = block_start(rows, bands, band);
            const int64_t last = block_start(rows, bands, band + 1);
            for (int64_t row = first; row < last; ++row) {
                const int64_t image = row / height, y = row % height;
                const float *base = input + image * height * width * channels;
                const float *grad_base = grad_output + image * height * width * channels;
                if (sums_needed)
                    weight_gradient_tile(base, grad_base + y * width * channels, 0, zeros,
                                         partial, sum, y, 0, width, height, width, channels);
                if (grad_input) {
                    const float *g_rows[3];
                    for (int k = 0; k < 3; ++k) {
                        const int64_t yy = y + k - 1;
                        g_rows[k] = yy < 0 || yy >= height ? NULL
                                                           : grad_base + yy * width * channels;
                    }
                    /* x and dy two rows down: the next row's sums and taps read them */
                    const int below = y + 2 < height;
                    const float *const ahead[2] = {
                        below ? base + (y + 2) * width * channels : NULL,
                        below ? grad_base + (y + 2) * width * channels : NULL};
                    input_gradient_tile(g_rows, 0, width, weight, weight_stride, zeros,
                                        grad_input + row * width * channels, ahead, 0, width,
                                        channels, stream);
                }
            }
        }
        stream_fence();
    }
    for (int64_t i = 0; i < 10 * channels; ++i) {
        double total = 0.0;
        for (int band = 0; band < bands; ++band)
            total += sums[band * 10 * channels + i];
        if (i < 9 * channels && grad_weight)
            grad_weight[i] = (float)total;
        else if (i >= 9 * channels && grad_bias)
            grad_bias[i - 9 * channels] = (float)total;
    }
    free(zeros);
    free(sums);
    free(partials);
    return 0;
}
