/* The convolution of a layer with few input channels (a network's first layer), lanes over output
 * positions, for one element type T, named NAME(...): included by direct_conv.c once per type.
 *
 * With one to a few input channels, a vector of output channels (direct_conv_body.h) is mostly empty
 * lanes or a handful of multiply-adds per load; here a vector holds L consecutive outputs of one row
 * instead, read from a channels-first padded input xp (N, C, *S_pad) at a fixed offset per tap:
 *
 *     y[n, o, q..q+L-1] = bias[o] + sum over c, t of  w[c, t, o] * xp[n, c, start(q) + off[t] .. + L-1]
 *
 * A slot is L outputs of one output row (the row's last slot may hold fewer: `count`); a block is two
 * slots by B output channels (2B accumulators, B <= PLANAR_WIDTH: 12 on AVX-512, 6 on AVX2), each vector of inputs loaded once for B
 * multiply-adds with broadcast weights. Rows must run at stride 1 along their own axis (s->stride[2]);
 * the other axes may have any stride. The weight gradient sums the other way, a tile of up to 8 output
 * channels by up to PLANAR_TILE_MAX/that many taps over every slot:
 *
 *     gw[o, c, t] = sum over n, q of  gy[n, o, q] * xp[n, c, start(q) + off[t]]
 *
 * with gy first copied a piece of samples at a time, channels-first with zeros past each row's end, and
 * the input's lanes past a row's end masked, so that every product added belongs to the true sum. The
 * batch is cut into at most PLANAR_CHUNKS chunks (by the batch size alone), each summed by one thread into
 * vectors of partial sums, which are added in chunk order: the same bits for any thread count.
 */

typedef T NAME(pvec) __attribute__((vector_size(VEC_BYTES), aligned(sizeof(T))));
typedef int64_t NAME(pmask) __attribute__((vector_size(VEC_BYTES)));
#define VEC NAME(pvec)
#define MASK NAME(pmask)
#define L ((int64_t)(VEC_BYTES / sizeof(T)))

/* A slot's first input position (channel 0, before the tap offset) and first output position in its
 * sample, and its sample; slots go row after row, L outputs at a time. */
static inline void NAME(planar_slot)(const conv_shape *s, int64_t k, int64_t *n, int64_t *x0, int64_t *q0,
                                     int64_t *count) {
    const int64_t per_row = (s->out[2] + L - 1) / L, per_sample = s->out[0] * s->out[1] * per_row;
    const int64_t r = k % per_sample, row = r / per_row, j = r % per_row;
    const int64_t od = row / s->out[1], oh = row % s->out[1];
    *n = k / per_sample;
    *x0 = (od * s->stride[0] * s->in[1] + oh * s->stride[1]) * s->in[2] + j * L;
    *q0 = row * s->out[2] + j * L;
    *count = s->out[2] - j * L < L ? s->out[2] - j * L : L;
}

#define OS1(F) F(0)
#define OS2(F) OS1(F) F(1)
#define OS3(F) OS2(F) F(2)
#define OS4(F) OS3(F) F(3)
#define OS5(F) OS4(F) F(4)
#define OS6(F) OS5(F) F(5)
#define OS7(F) OS6(F) F(6)
#define OS8(F) OS7(F) F(7)
#define OS9(F) OS8(F) F(8)
#define OS10(F) OS9(F) F(9)
#define OS11(F) OS10(F) F(10)
#define OS12(F) OS11(F) F(11)

#define PACC(o) VEC a##o = (VEC){0} + (bias ? bias[o] : 0), b##o = a##o;
#define PFMA(o) a##o += x0 * wt[o]; b##o += x1 * wt[o];
#define PPUT(o) out[0][o] = a##o; out[1][o] = b##o;

/* Two slots (inputs at xa and xb, channel planes `plane` apart) by the B output channels whose packed
 * weights (C, taps, B) start at w, into out[slot][channel]. */
#define PLANAR_BLOCK(B)                                                                                    \
static void NAME(planar_block_##B)(const T *xa, const T *xb, const T *w, const T *bias, const conv_shape *s, \
                                   const int64_t *off, int64_t plane, VEC out[2][12]) {                    \
    OS##B(PACC)                                                                                            \
    for (int64_t ci = 0; ci < s->c; ci++, xa += plane, xb += plane)                                        \
        for (int64_t t = 0; t < s->taps; t++) {                                                            \
            const VEC x0 = *(const VEC *)(xa + off[t]), x1 = *(const VEC *)(xb + off[t]);                  \
            const T *wt = w + (ci * s->taps + t) * B;                                                      \
            OS##B(PFMA)                                                                                    \
        }                                                                                                  \
    OS##B(PPUT)                                                                                            \
}
PLANAR_BLOCK(1) PLANAR_BLOCK(2) PLANAR_BLOCK(3) PLANAR_BLOCK(4) PLANAR_BLOCK(5) PLANAR_BLOCK(6)
PLANAR_BLOCK(7) PLANAR_BLOCK(8) PLANAR_BLOCK(9) PLANAR_BLOCK(10) PLANAR_BLOCK(11) PLANAR_BLOCK(12)

typedef void (*NAME(planar_block_fn))(const T *, const T *, const T *, const T *, const conv_shape *,
                                      const int64_t *, int64_t, VEC[2][12]);
static const NAME(planar_block_fn) NAME(planar_blocks)[13] = {NULL, NAME(planar_block_1), NAME(planar_block_2),
    NAME(planar_block_3), NAME(planar_block_4), NAME(planar_block_5), NAME(planar_block_6), NAME(planar_block_7),
    NAME(planar_block_8), NAME(planar_block_9), NAME(planar_block_10), NAME(planar_block_11), NAME(planar_block_12)};

/* y = the cross-correlation of xp (N, C, *S_pad; L values readable past its end) with w, packed by the
 * caller as (O/B groups, C, taps, B) with zeros past O, B = `width` (1-12) output channels a block, and
 * bias (O) or NULL. y is (N, O, *S_out), or (N, *S_out, O) where channels_last. */
void NAME(planar_forward)(const T *xp, const T *w, const T *bias, T *y, const conv_shape *s, const int64_t *off,
                          int64_t width, int channels_last, int threads) {
    const int64_t plane = s->in[0] * s->in[1] * s->in[2], positions = s->out[0] * s->out[1] * s->out[2];
    const int64_t per_row = (s->out[2] + L - 1) / L, slots = s->n * s->out[0] * s->out[1] * per_row;
    const int64_t groups = (s->o + width - 1) / width;
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t pair = 0; pair < (slots + 1) / 2; pair++) {
        int64_t n[2], x0[2], q0[2], count[2];
        const int two = 2 * pair + 1 < slots;
        for (int i = 0; i < 2; i++)  /* a lone last slot is computed twice, written once */
            NAME(planar_slot)(s, 2 * pair + (two ? i : 0), n + i, x0 + i, q0 + i, count + i);
        for (int64_t g = 0; g < groups; g++) {
            const int64_t o0 = g * width, valid = s->o - o0 < width ? s->o - o0 : width;
            VEC out[2][12];
            T bias_g[12];
            for (int64_t o = 0; o < width; o++)
                bias_g[o] = bias && o < valid ? bias[o0 + o] : 0;
            NAME(planar_blocks)[width](xp + n[0] * s->c * plane + x0[0], xp + n[1] * s->c * plane + x0[1],
                                       w + o0 * s->c * s->taps, bias ? bias_g : NULL, s, off, plane, out);
            for (int i = 0; i < 1 + two; i++) {
                if (!channels_last && count[i] == L) {  /* whole vectors (a constant size: one store each) */
                    for (int64_t o = 0; o < valid; o++)
                        memcpy(y + (n[i] * s->o + o0 + o) * positions + q0[i], &out[i][o], sizeof(VEC));
                } else if (!channels_last) {
                    for (int64_t o = 0; o < valid; o++)
                        memcpy(y + (n[i] * s->o + o0 + o) * positions + q0[i], &out[i][o], count[i] * sizeof(T));
                } else {
                    T lanes[12][L];
                    memcpy(lanes, out[i], sizeof lanes);
                    T *yq = y + (n[i] * positions + q0[i]) * s->o + o0;
                    for (int64_t l = 0; l < count[i]; l++)
                        for (int64_t o = 0; o < valid; o++)
                            yq[l * s->o + o] = lanes[o][l];
                }
            }
        }
    }
}

/* The weight gradient's tiles: U output channels by V taps (U * V <= PLANAR_TILE_MAX accumulators a<u>_<v>), over the
 * S slots of a piece: g (S, Upad, L) the piece's output gradient, xs[k] slot k's input (channel 0, tap 0),
 * m[k] its mask. Each accumulator is added at the end into part[(o * C + c) * taps + t], lane by lane. */
#define WTAP(v) const VEC x##v = (VEC)((MASK)(*(const VEC *)(xk + toff[v])) & mk);
#define WGV(u) const VEC g##u = *(const VEC *)(gk + (u) * L);
#define WACC(u, v) VEC a##u##_##v = {0};
#define WFMA(u, v) a##u##_##v += g##u * x##v;
#define WSUM(u, v) if ((u) < us && (v) < vs)                                                                \
                       part[((o0 + (u)) * s->c + ci) * s->taps + t0 + (v)] += a##u##_##v;
#define VS1(F, u) F(u, 0)
#define VS2(F, u) F(u, 0) F(u, 1)
#define VS3(F, u) F(u, 0) F(u, 1) F(u, 2)
#define VS4(F, u) VS3(F, u) F(u, 3)
#define VS6(F, u) VS4(F, u) F(u, 4) F(u, 5)
#define VS8(F, u) VS6(F, u) F(u, 6) F(u, 7)
#define TS1(F) F(0)
#define TS2(F) F(0) F(1)
#define TS3(F) F(0) F(1) F(2)
#define TS4(F) TS3(F) F(3)
#define TS6(F) TS4(F) F(4) F(5)
#define TS8(F) TS6(F) F(6) F(7)
#define US1(F, V) VS##V(F, 0)
#define US2(F, V) US1(F, V) VS##V(F, 1)
#define US3(F, V) US2(F, V) VS##V(F, 2)
#define US4(F, V) US3(F, V) VS##V(F, 3)
#define US6(F, V) US4(F, V) VS##V(F, 4) VS##V(F, 5)
#define US8(F, V) US6(F, V) VS##V(F, 6) VS##V(F, 7)
#define GS1(F) F(0)
#define GS2(F) GS1(F) F(1)
#define GS3(F) GS2(F) F(2)
#define GS4(F) GS3(F) F(3)
#define GS6(F) GS4(F) F(4) F(5)
#define GS8(F) GS6(F) F(6) F(7)

#define TILE(U, V)                                                                                            \
static void NAME(planar_tile_##U##x##V)(const T *g, const T *const *xs, const MASK *m, int64_t slots,          \
                                        const int64_t *toff, const conv_shape *s, int64_t upad, int64_t o0, int64_t us, \
                                        int64_t ci, int64_t t0, int64_t vs, VEC *part) {                      \
    const int64_t shift = ci * s->in[0] * s->in[1] * s->in[2];                                                \
    US##U(WACC, V)                                                                                             \
    for (int64_t k = 0; k < slots; k++) {                                                                      \
        const T *xk = xs[k] + shift, *gk = g + k * upad * L;                                                          \
        const MASK mk = m[k];                                                                                  \
        TS##V(WTAP)                                                                                            \
        GS##U(WGV)                                                                                             \
        US##U(WFMA, V)                                                                                         \
    }                                                                                                          \
    US##U(WSUM, V)                                                                                             \
}
typedef void (*NAME(planar_tile_fn))(const T *, const T *const *, const MASK *, int64_t, const int64_t *,
                                     const conv_shape *, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, VEC *);
#define TILE_KINDS 6
#if PLANAR_TILE_MAX >= 24
TILE(1, 8) TILE(2, 8) TILE(3, 8) TILE(4, 6) TILE(6, 4) TILE(8, 3)
static const int64_t NAME(tile_u)[TILE_KINDS] = {1, 2, 3, 4, 6, 8}, NAME(tile_v)[TILE_KINDS] = {8, 8, 8, 6, 4, 3};
static const NAME(planar_tile_fn) NAME(planar_tiles)[TILE_KINDS] = {NAME(planar_tile_1x8), NAME(planar_tile_2x8),
    NAME(planar_tile_3x8), NAME(planar_tile_4x6), NAME(planar_tile_6x4), NAME(planar_tile_8x3)};
#else  /* 16 registers: at most 12 accumulators */
TILE(1, 8) TILE(2, 6) TILE(3, 4) TILE(4, 3) TILE(6, 2) TILE(8, 1)
static const int64_t NAME(tile_u)[TILE_KINDS] = {1, 2, 3, 4, 6, 8}, NAME(tile_v)[TILE_KINDS] = {8, 6, 4, 3, 2, 1};
static const NAME(planar_tile_fn) NAME(planar_tiles)[TILE_KINDS] = {NAME(planar_tile_1x8), NAME(planar_tile_2x6),
    NAME(planar_tile_3x4), NAME(planar_tile_4x3), NAME(planar_tile_6x2), NAME(planar_tile_8x1)};
#endif

/* gw (O, C, taps) = the sum over samples and output positions of gy[n, o, q] * xp[n, c, start(q) + off[t]];
 * gy (N, O, *S_out), or (N, *S_out, O) where channels_last. The tile shape is the one that wastes the
 * fewest multiply-adds on channels past O and taps past the last. The batch is cut into at most
 * PLANAR_CHUNKS chunks (by N alone), each summed by one thread into vectors of partial sums, a piece of
 * samples at a time (the piece's gradient copy within ~128 KB); the chunks' vectors are added in order and
 * their lanes at the end. Returns 0, or 1 where memory ran out. */
int NAME(planar_weight_grad)(const T *xp, const T *gy, T *gw, const conv_shape *s, const int64_t *off,
                             int channels_last, int threads) {
    const int64_t plane = s->in[0] * s->in[1] * s->in[2], positions = s->out[0] * s->out[1] * s->out[2];
    const int64_t per_row = (s->out[2] + L - 1) / L, per_sample = s->out[0] * s->out[1] * per_row;
    int kind = 0;
    int64_t best = -1;
    for (int i = 0; i < TILE_KINDS; i++) {
        const int64_t u = NAME(tile_u)[i], v = NAME(tile_v)[i];
        const int64_t work = (s->o + u - 1) / u * u * ((s->taps + v - 1) / v * v);
        if (best < 0 || work < best)
            best = work, kind = i;
    }
    const int64_t U = NAME(tile_u)[kind], V = NAME(tile_v)[kind], upad = (s->o + U - 1) / U * U;
    const int64_t vpad = (s->taps + V - 1) / V * V;
    int64_t per_piece = 131072 / (int64_t)(upad * per_sample * L * sizeof(T));
    if (per_piece < 1)
        per_piece = 1;
    const int64_t chunks = s->n < PLANAR_CHUNKS ? s->n : PLANAR_CHUNKS, size = s->o * s->c * s->taps;
    VEC *parts = aligned_alloc(VEC_BYTES, (size_t)(chunks * size) * sizeof(VEC));
    int64_t *toff = malloc((size_t)vpad * sizeof(int64_t));
    if (parts == NULL || toff == NULL) {
        free(parts);
        free(toff);
        return 1;
    }
    memset(parts, 0, (size_t)(chunks * size) * sizeof(VEC));
    MASK masks[L + 1];
    for (int64_t count = 0; count <= L; count++)
        for (int64_t l = 0; l < L; l++)  /* all ones over a lane's bytes for the lanes below count */
            memset((unsigned char *)&masks[count] + l * sizeof(T), l < count ? 0xff : 0, sizeof(T));
    for (int64_t t = 0; t < vpad; t++)
        toff[t] = off[t < s->taps ? t : 0];  /* taps past the last read tap 0; their sums are dropped */
    int failed = 0;
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t chunk = 0; chunk < chunks; chunk++) {
        const int64_t first = s->n * chunk / chunks, last = s->n * (chunk + 1) / chunks;
        const int64_t slots_max = (per_piece < last - first ? per_piece : last - first) * per_sample;
        T *g = malloc((size_t)(upad * slots_max * L) * sizeof(T));
        const T **xs = malloc((size_t)slots_max * sizeof(T *));
        MASK *m = aligned_alloc(VEC_BYTES, (size_t)slots_max * sizeof(MASK));
        if (g == NULL || xs == NULL || m == NULL) {
            #pragma omp atomic write
            failed = 1;
        } else
            for (int64_t n0 = first; n0 < last; n0 += per_piece) {
                const int64_t slots = ((n0 + per_piece < last ? n0 + per_piece : last) - n0) * per_sample;
                for (int64_t k = 0; k < slots; k++) {  /* the piece's output gradient, channels-first, zeros past rows */
                    int64_t n, x0, q0, count;
                    NAME(planar_slot)(s, n0 * per_sample + k, &n, &x0, &q0, &count);
                    xs[k] = xp + n * s->c * plane + x0;
                    m[k] = masks[count];
                    T *to = g + k * upad * L;  /* slot k's vectors, channel after channel */
                    if (channels_last) {
                        const T *from = gy + (n * positions + q0) * s->o;
                        for (int64_t l = 0; l < count; l++)
                            for (int64_t o = 0; o < s->o; o++)
                                to[o * L + l] = from[l * s->o + o];
                    } else {  /* whole vectors, masked past the row's end (copied at the buffer's end) */
                        for (int64_t o = 0; o < s->o; o++) {
                            const T *from = gy + (n * s->o + o) * positions + q0;
                            VEC v = {0};
                            if (from + L <= gy + s->n * s->o * positions)
                                v = *(const VEC *)from;
                            else
                                memcpy(&v, from, count * sizeof(T));
                            *(VEC *)(to + o * L) = (VEC)((MASK)v & masks[count]);
                        }
                    }
                    for (int64_t o = channels_last ? 0 : s->o; o < upad; o++)  /* zeros past the row and past O */
                        for (int64_t l = o < s->o ? count : 0; l < L; l++)
                            to[o * L + l] = 0;
                }
                for (int64_t o0 = 0; o0 < upad; o0 += U)
                    for (int64_t ci = 0; ci < s->c; ci++)
                        for (int64_t t0 = 0; t0 < vpad; t0 += V)
                            NAME(planar_tiles)[kind](g + o0 * L, (const T *const *)xs, m, slots, toff + t0, s,
                                                     upad, o0, s->o - o0 < U ? s->o - o0 : U, ci, t0,
                                                     s->taps - t0 < V ? s->taps - t0 : V, parts + chunk * size);
            }
        free(g);
        free(xs);
        free(m);
    }
    if (!failed)
        for (int64_t i = 0; i < size; i++) {  /* the chunks' vectors in order, then their lanes */
            VEC sum = parts[i];
            for (int64_t chunk = 1; chunk < chunks; chunk++)
                sum += parts[chunk * size + i];
            T lanes[L], total = 0;
            memcpy(lanes, &sum, sizeof lanes);
            for (int64_t l = 0; l < L; l++)
                total += lanes[l];
            gw[i] = total;
        }
    free(parts);
    free(toff);
    return failed;
}

#undef VEC
#undef MASK
#undef L
