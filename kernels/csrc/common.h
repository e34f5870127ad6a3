/*
 * What the compiled CPU kernels share: OpenMP stand-ins for a build without OpenMP, the split
 * of rows or pixels into one contiguous block per thread, and elementwise float math written
 * in plain arithmetic so that GCC vectorises the loops that call it ("omp simd"; calls into
 * libm would not vectorise).
 */
#ifndef IRBLOCKS_COMMON_H
#define IRBLOCKS_COMMON_H

#include <stdint.h>
#include <string.h>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif
#ifdef _OPENMP
#include <omp.h>
#else
static inline int omp_get_thread_num(void) { return 0; }
static inline int omp_get_num_threads(void) { return 1; }
#endif

/* Sixteen floats as a GCC vector type (one AVX-512 register): sums meant to stay in registers
 * across a loop do when they are of this type (float arrays were kept on the stack). */
#define LANES 16
typedef float lanes_t __attribute__((vector_size(LANES * sizeof(float))));

static inline lanes_t load_lanes(const float *source)
{
    lanes_t value;
    memcpy(&value, source, sizeof value);
    return value;
}

static inline void store_lanes(float *target, lanes_t value)
{
    memcpy(target, &value, sizeof value);
}

/* Non-temporal store of one vector to a 64-byte aligned target: the line goes to memory
 * without being read first or kept in cache (AVX-512 one store, AVX two; elsewhere a plain
 * store). For outputs too large to stay in cache until their consumer reads them: GDFN's
 * gate backward and the depthwise 3x3 backward write their input gradient this way from
 * STREAM_MIN_BYTES (kernels/dwconv3x3.py) on. A thread that streamed calls stream_fence()
 * before its results are read. */
static inline void stream_lanes(float *target, lanes_t value)
{
#if defined(__AVX512F__)
    _mm512_stream_ps(target, (__m512)value);
#elif defined(__AVX__)
    __m256 half[2];
    memcpy(half, &value, sizeof value);
    _mm256_stream_ps(target, half[0]);
    _mm256_stream_ps(target + 8, half[1]);
#else
    store_lanes(target, value);
#endif
}

/* Orders this thread's earlier stream_lanes() stores before its later stores: non-temporal
 * stores are weakly ordered, so each thread fences before the parallel region ends rather
 * than relying on how the OpenMP runtime implements its barrier. */
static inline void stream_fence(void)
{
#if defined(__SSE__)
    _mm_sfence();
#endif
}

/* First channel of the LANES-wide block that starts at `block` in a loop over `channels`: the
 * block itself, or, for the last one, the LANES channels that end the row (overlapping the
 * previous block) so every block is a full vector; with fewer than LANES channels, 0. */
static inline int64_t block_begin(int64_t block, int64_t channels)
{
    if (channels < LANES)
        return 0;
    return block + LANES <= channels ? block : channels - LANES;
}

/* 1 for the lanes of the last block_begin() block of `channels` (>= LANES) that no earlier
 * block covers, 0 for the ones it shares with the block before it: sums over a row's channels
 * multiply that block by this mask. All ones when LANES divides `channels`. */
static inline lanes_t tail_mask(int64_t channels)
{
    const int64_t fresh = channels % LANES;
    lanes_t mask;
    for (int j = 0; j < LANES; ++j)
        mask[j] = fresh == 0 || j >= LANES - fresh ? 1.0f : 0.0f;
    return mask;
}

/* Sum of the LANES lanes (a tree of shuffles). */
static inline float lanes_sum(lanes_t v)
{
#if defined(__clang__) || __GNUC__ >= 12
    v += __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7);
    v += __builtin_shufflevector(v, v, 4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9, 10, 11);
    v += __builtin_shufflevector(v, v, 2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13);
    v += __builtin_shufflevector(v, v, 1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14);
    return v[0];
#else
    float total = 0.0f;
    for (int j = 0; j < LANES; ++j)
        total += v[j];
    return total;
#endif
}

/* Software prefetch of one pixel's `channels` floats (every 64-byte line) into all cache
 * levels (all_levels 1) or into L2 only (0); NULL: nothing. The depthwise 3x3 loops walk rows
 * of (W, C) pixels and ask for the pixel two rows below the one they read: the hardware
 * prefetcher, given nine interleaved tap streams, left them waiting on memory. Restormer's
 * whole training step, paired order-alternated rounds (2026-11-30): the forward and GDFN's
 * gate backward into all levels 0.970 / 0.978 / 1.007 against none; the plain 3x3
 * backward's two streams (input and dy) into L2 only 0.967 / 0.985, into all levels 1.031
 * (they evicted its L1 working set). Call with a constant all_levels: once inlined, the
 * branch folds (the prefetch's locality must be a compile-time constant). */
static inline __attribute__((always_inline)) void prefetch_pixel(const float *pixel,
                                                                 int64_t channels,
                                                                 int all_levels)
{
    if (!pixel)
        return;
    const char *bytes = (const char *)pixel;
    for (int64_t offset = 0; offset < channels * (int64_t)sizeof(float); offset += 64) {
        if (all_levels)
            __builtin_prefetch(bytes + offset, 0, 3);
        else
            __builtin_prefetch(bytes + offset, 0, 2);
    }
}

/* First item of block `block` when `items` are split into `blocks` contiguous blocks. */
static inline int64_t block_start(int64_t items, int blocks, int block)
{
    return items * block / blocks;
}

/* exp(x) for x <= 0 (Cody-Waite reduction by ln 2, Cephes expf polynomial); x < -87 gives
 * exp(-87) ~ 1.6e-38. The clamp compares the IEEE bit patterns as integers (for x <= 0 a
 * larger integer is a larger magnitude): a float compare-and-select there stops GCC 12 from
 * vectorising the loop. */
static inline float exp_nonpositive(float x)
{
    union { float value; int32_t bits; } clamped = {x};
    const int32_t minus_87 = (int32_t)0xC2AE0000;
    clamped.bits = clamped.bits > minus_87 ? minus_87 : clamped.bits;
    x = clamped.value;
    /* n = round(x / ln 2) (truncation of a non-positive value - 0.5; floorf would keep
     * the loop from vectorising) */
    int32_t k = (int32_t)(x * 1.44269504088896341f - 0.5f);
    float n = (float)k;
    float r = x - n * 0.693359375f + n * 2.12194440e-4f;
    float poly = 1.9875691500e-4f;
    poly = poly * r + 1.3981999507e-3f;
    poly = poly * r + 8.3334519073e-3f;
    poly = poly * r + 4.1665795894e-2f;
    poly = poly * r + 1.6666665459e-1f;
    poly = poly * r + 5.0000001201e-1f;
    float e = poly * r * r + r + 1.0f;
    union { int32_t bits; float value; } scale = {(k + 127) << 23};
    return e * scale.value;
}

/* Logistic sigmoid 1 / (1 + exp(-x)) from exp(-|x|) (no overflow for any x). */
static inline float sigmoid(float x)
{
    float e = exp_nonpositive(-__builtin_fabsf(x));
    float r = 1.0f / (1.0f + e);
    return x >= 0.0f ? r : e * r;
}

#endif
