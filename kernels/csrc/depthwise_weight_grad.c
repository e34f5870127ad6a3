/*
 * Weight and bias gradients of a stride-1 depthwise k x k convolution with zero padding
 * r = k / 2 (odd k), float32 channels_last tensors:
 *
 *   dW[ky, kx, c] = sum over b, y, x of dy[b, y, x, c] * x[b, y + ky - r, x + kx - r, c]
 *   db[c]         = sum over b, y, x of dy[b, y, x, c]
 *
 * A row of a channels_last map is flat: pixel x, channel c sits at x * C + c, so a horizontal
 * tap shift is a shift of the flat row by C floats per pixel, and every tap is the product of
 * two flat rows, vectorised over the flat index whatever C is (AnyIR's 19 or 37 channels
 * included). The B * H output rows are split into one contiguous band per thread; each band
 * is walked in column tiles (so the per-position sums stay in L2) and groups of ROW_GROUP
 * rows. Per group the input rows it reads are copied into a zero-padded window (r pixels of
 * zeros each side, zero rows outside the image); per LANES flat positions the k sums of one
 * kernel row stay in registers over the group's rows and are then added to float sums per
 * (tap, flat position), folded into double sums per (tap, channel) every FOLD_GROUPS groups
 * and at the end of a tile. Bands are added in order (deterministic for a thread count).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"


#define ROW_GROUP 8
#define FOLD_GROUPS 16
#define TILE_FLOATS 2560        /* flat positions per column tile: (k * k + 1) sums of each */
static inline void add_to(float *target, lanes_t value)
{
    store_lanes(target, load_lanes(target) + value);
}

/* Adds the group's products to flat (k * k + 1, span): flat[ky * k + kx][i] += sum over the
 * group's rows of dy_row[i] * window_row[i + kx * channels] (window row = output row + ky),
 * flat[k * k][i] += the sum of dy_row[i]. Inlined with constant k (3, 5, 7: the k sums in
 * registers) or with k at run time (any other odd k). */
static inline __attribute__((always_inline)) void group_sums(
    const float *const *dy_rows, int group_rows, const float *window, int64_t window_stride,
    float *flat, int64_t span, int64_t channels, const int k)
{
    const int64_t taps = (int64_t)k * k;
    int64_t i = 0;
    for (; i + LANES <= span; i += LANES) {
        for (int ky = 0; ky < k; ++ky) {
            lanes_t acc[15];
            lanes_t bias_acc = (lanes_t){0};
            #pragma GCC unroll 15
            for (int kx = 0; kx < k; ++kx)
                acc[kx] = (lanes_t){0};
            for (int j = 0; j < group_rows; ++j) {
                const lanes_t g = load_lanes(dy_rows[j] + i);
                const float *in = window + (j + ky) * window_stride + i;
                #pragma GCC unroll 15
                for (int kx = 0; kx < k; ++kx)
                    acc[kx] += g * load_lanes(in + kx * channels);
                bias_acc += g;
            }
            #pragma GCC unroll 15
            for (int kx = 0; kx < k; ++kx)
                add_to(flat + (ky * k + kx) * span + i, acc[kx]);
            if (ky == 0)
                add_to(flat + taps * span + i, bias_acc);
        }
    }
    for (; i < span; ++i) {                                 /* fewer than LANES positions left */
        for (int ky = 0; ky < k; ++ky) {
            for (int j = 0; j < group_rows; ++j) {
                const float g = dy_rows[j][i];
                const float *in = window + (j + ky) * window_stride + i;
                for (int kx = 0; kx < k; ++kx)
                    flat[(ky * k + kx) * span + i] += g * in[kx * channels];
                if (ky == 0)
                    flat[taps * span + i] += g;
            }
        }
    }
}

/* sum[t * C + c] += the flat sums of (tap t, channel c) over the tile's pixels; flat zeroed. */
static void fold(float *flat, double *sum, int64_t taps_and_bias, int64_t tile_pixels,
                 int64_t channels)
{
    const int64_t span = tile_pixels * channels;
    for (int64_t t = 0; t < taps_and_bias; ++t) {
        for (int64_t p = 0; p < tile_pixels; ++p) {
            const float *restrict f = flat + t * span + p * channels;
            double *restrict s = sum + t * channels;
            #pragma omp simd
            for (int64_t c = 0; c < channels; ++c)
                s[c] += (double)f[c];
        }
    }
    memset(flat, 0, (size_t)(taps_and_bias * span) * sizeof(float));
}

/*
 * input, grad_output: (B, H, W, C) float32, contiguous (channels_last)
 * grad_weight: (k * k, C), tap-major (row ky * k + kx), written
 * grad_bias: (C,) written, or NULL
 * Returns 0, or 1 when a work buffer cannot be allocated.
 */
int depthwise_weight_grad(
    const float *input,        /* x, (B, H, W, C) */
    const float *grad_output,  /* dy, (B, H, W, C) */
    float *grad_weight,        /* (k * k, C), tap-major, written */
    float *grad_bias,          /* (C,) written, or NULL */
    int64_t batch,             /* B */
    int64_t height,            /* H */
    int64_t width,             /* W */
    int64_t channels,          /* C */
    int64_t kernel_size,       /* k, odd, <= 15 */
    int num_threads)           /* OpenMP threads (torch.get_num_threads()) */
{
    const int k = (int)kernel_size, r = k / 2;
    const int64_t taps = (int64_t)k * k, rows = batch * height, row_floats = width * channels;
    const int bands = num_threads < 1 ? 1 : (rows < num_threads ? (int)(rows ? rows : 1)
                                                                : num_threads);
    int64_t tile_width = TILE_FLOATS / channels;
    tile_width = tile_width < 1 ? 1 : (tile_width > width ? width : tile_width);
    const int64_t window_stride = (tile_width + 2 * r) * channels;
    const int64_t window_floats = (ROW_GROUP + 2 * r) * window_stride;
    const int64_t flat_floats = (taps + 1) * tile_width * channels;
    float *windows = malloc((size_t)(bands * window_floats) * sizeof(float));
    float *flats = calloc((size_t)(bands * flat_floats), sizeof(float));
    double *sums = calloc((size_t)(bands * (taps + 1) * channels), sizeof(double));
    if (!windows || !flats || !sums) {
        free(windows);
        free(flats);
        free(sums);
        return 1;
    }
    #pragma omp parallel num_threads(bands)
    {
        const int team = omp_get_num_threads();
        for (int band = omp_get_thread_num(); band < bands; band += team) {
            float *window = windows + band * window_floats;
            float *flat = flats + band * flat_floats;
            double *sum = sums + band * (taps + 1) * channels;
            const int64_t first = block_start(rows, bands, band);
            const int64_t last = block_start(rows, bands, band + 1);
            for (int64_t x0 = 0; x0 < width; x0 += tile_width) {
                const int64_t x1 = x0 + tile_width < width ? x0 + tile_width : width;
                const int64_t span = (x1 - x0) * channels;
                /* window columns: pixels x0 - r .. x1 + r - 1, zeros outside the image */
                const int64_t lo = x0 - r < 0 ? 0 : x0 - r, hi = x1 + r > width ? width : x1 + r;
                int groups = 0;
                for (int64_t row = first; row < last;) {
                    const int64_t image = row / height, y0 = row % height;
                    int64_t y1 = y0 + ROW_GROUP;
                    y1 = y1 > height ? height : y1;
                    y1 = y1 > y0 + (last - row) ? y0 + (last - row) : y1;
                    const int group_rows = (int)(y1 - y0);
                    const float *image_in = input + image * height * row_floats;
                    const float *image_dy = grad_output + image * height * row_floats;
                    for (int j = 0; j < group_rows + 2 * r; ++j) {
                        float *w_row = window + j * window_stride;
                        const int64_t yy = y0 - r + j;
                        memset(w_row, 0, (size_t)window_stride * sizeof(float));
                        if (yy >= 0 && yy < height)
                            memcpy(w_row + (lo - (x0 - r)) * channels,
                                   image_in + yy * row_floats + lo * channels,
                                   (size_t)((hi - lo) * channels) * sizeof(float));
                    }
                    const float *dy_rows[ROW_GROUP];
                    for (int j = 0; j < group_rows; ++j)
                        dy_rows[j] = image_dy + (y0 + j) * row_floats + x0 * channels;
                    switch (k) {
                    case 3:
                        group_sums(dy_rows, group_rows, window, window_stride, flat, span,
                                   channels, 3);
                        break;
                    case 5:
                        group_sums(dy_rows, group_rows, window, window_stride, flat, span,
                                   channels, 5);
                        break;
                    case 7:
                        group_sums(dy_rows, group_rows, window, window_stride, flat, span,
                                   channels, 7);
                        break;
                    default:
                        group_sums(dy_rows, group_rows, window, window_stride, flat, span,
                                   channels, k);
                    }
                    row += group_rows;
                    if (++groups == FOLD_GROUPS) {
                        fold(flat, sum, taps + 1, x1 - x0, channels);
                        groups = 0;
                    }
                }
                fold(flat, sum, taps + 1, x1 - x0, channels);
            }
        }
    }
    for (int64_t i = 0; i < (taps + 1) * channels; ++i) {
        double total = 0.0;
        for (int band = 0; band < bands; ++band)
            total += sums[band * (taps + 1) * channels + i];
        if (i < taps * channels)
            grad_weight[i] = (float)total;
        else if (grad_bias)
            grad_bias[i - taps * channels] = (float)total;
    }
    free(windows);
    free(flats);
    free(sums);
    return 0;
}
