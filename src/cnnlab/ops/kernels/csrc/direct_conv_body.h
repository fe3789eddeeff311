/* The direct convolution's kernels for one element type T, named NAME(...): included by direct_conv.c once per type. */

typedef T NAME(vec) __attribute__((vector_size(VEC_BYTES), aligned(sizeof(T))));
typedef IT NAME(ivec) __attribute__((vector_size(VEC_BYTES)));  /* lane indices for shuffles */
#define VEC NAME(vec)
#define IVEC NAME(ivec)
#define L ((int64_t)(VEC_BYTES / sizeof(T)))  /* lanes in a vector */

/* One block: R outputs (consecutive in y, at y), output r's window starting at xs[r] (tap t off[t] * C
 * further), by the output channels o0..o0+L*V-1 of a group whose packed weights start at w (`lanes` of
 * them stored: the last group may hold fewer). The accumulators are named variables (a<row><vector>),
 * not an array, so that they live in registers; so are the R input pointers. */
#define ACC1(r) VEC a##r##0 = b[0];
#define ACC2(r) VEC a##r##0 = b[0], a##r##1 = b[1];
#define TAP(r) const T *x##r = xs[r] + off[t] * c;
#define FMA1(r) { const T v = x##r[ci]; a##r##0 += v * wv[0]; }
#define FMA2(r) { const T v = x##r[ci]; a##r##0 += v * wv[0]; a##r##1 += v * wv[1]; }
#define PUT1(r) { const VEC out[1] = {a##r##0}; NAME(put)(y + ys[r] + o0 * ostride, out, lanes, ostride); }
#define PUT2(r) { const VEC out[2] = {a##r##0, a##r##1}; NAME(put)(y + ys[r] + o0 * ostride, out, lanes, ostride); }

/* One output's `lanes` channels from out to y, consecutive (channels-last) or ostride apart (channels-first). */
static inline void NAME(put)(T *y, const VEC *out, int64_t lanes, int64_t ostride) {
    if (ostride == 1) {
        memcpy(y, out, lanes * sizeof(T));
    } else {
        T values[2 * L];
        memcpy(values, out, lanes * sizeof(T));
        for (int64_t l = 0; l < lanes; l++)
            y[l * ostride] = values[l];
    }
}

/* Where output q's channel 0 goes in y, and how far apart its channels are: (N, *S_y, O) or, where s->y_cf,
 * (N, O, *S_y), S_y = s->y_in, output (n, od, oh, ow) at spatial position (od * step + first, ...). */
static inline int64_t NAME(y_at)(const conv_shape *s, int64_t n, int64_t od, int64_t oh, int64_t ow) {
    const int64_t positions = s->y_in[0] * s->y_in[1] * s->y_in[2];
    const int64_t at = ((od * s->y_step[0] + s->y_first[0]) * s->y_in[1] + oh * s->y_step[1] + s->y_first[1]) * s->y_in[2]
                       + ow * s->y_step[2] + s->y_first[2];
    return s->y_cf ? n * s->o * positions + at : (n * positions + at) * s->o;
}
static inline int64_t NAME(y_stride)(const conv_shape *s) {
    return s->y_cf ? s->y_in[0] * s->y_in[1] * s->y_in[2] : 1;
}

#define FORWARD_BLOCK(R, V)                                                                                 \
static void NAME(block_##R##x##V)(const T *const *xs, const T *w, const T *bias, const conv_shape *s,      \
                                  const int64_t *off, T *y, const int64_t *ys, int64_t ostride, int64_t o0, \
                                  int64_t lanes) {                                                         \
    const int64_t c = s->c;                                                                                \
    VEC b[V];                                                                                              \
    for (int v = 0; v < V; v++)                                                                            \
        b[v] = bias ? *(const VEC *)(bias + o0 + L * v) : (VEC){0};                                        \
    ROWS##R(ACC##V)                                                                                        \
    for (int64_t t = 0; t < s->taps; t++) {                                                                \
        ROWS##R(TAP)                                                                                       \
        const T *wt = w + t * c * L * V;                                                                   \
        for (int64_t ci = 0; ci < c; ci++, wt += L * V) {                                                  \
            VEC wv[V];                                                                                     \
            for (int v = 0; v < V; v++)                                                                    \
                wv[v] = *(const VEC *)(wt + L * v);                                                        \
            ROWS##R(FMA##V)                                                                                \
        }                                                                                                  \
    }                                                                                                      \
    ROWS##R(PUT##V)                                                                                        \
}

/* Blocks of FORWARD_ROWS outputs by 1 or 2 vectors, and of fewer for the batch's last outputs. On
 * AVX-512, 7 x 2 measured fastest of 1-14 outputs by 1, 2 or 4 vectors on six zoo layers (forward, 2
 * threads; 0.65-1.07 of torch's time, blocks of 12 x 2 1.09-1.82); on AVX2's 16 registers, 6 x 2 (isa.h). */
#define BLOCKS(V) FORWARD_BLOCK(1, V) FORWARD_BLOCK(2, V) FORWARD_BLOCK(3, V) FORWARD_BLOCK(4, V) \
                  FORWARD_BLOCK(5, V) FORWARD_BLOCK(6, V) FORWARD_BLOCK(7, V)
BLOCKS(1)
BLOCKS(2)

typedef void (*NAME(block_fn))(const T *const *, const T *, const T *, const conv_shape *, const int64_t *, T *,
                               const int64_t *, int64_t, int64_t, int64_t);
static const NAME(block_fn) NAME(blocks)[2][8] = {
    {NULL, NAME(block_1x1), NAME(block_2x1), NAME(block_3x1), NAME(block_4x1), NAME(block_5x1), NAME(block_6x1), NAME(block_7x1)},
    {NULL, NAME(block_1x2), NAME(block_2x2), NAME(block_3x2), NAME(block_4x2), NAME(block_5x2), NAME(block_6x2), NAME(block_7x2)},
};

/* y (N, *S_out, O), or (N, O, *S_out) where s->y_cf, = the cross-correlation of xp (N, *S_pad, C) with w,
 * at the strides s->stride, FORWARD_ROWS outputs at a time (consecutive: along a row, and on into the next row,
 * plane and sample).
 * Output channels go in groups of 2*L, the last of L where no more remain (w packed group after group as
 * (taps, C, width), zeros past O; the bias padded alike). */
void NAME(conv_forward)(const T *xp, const T *w, const T *bias, T *y, const conv_shape *s, const int64_t *off,
                        int threads) {
    const int64_t c = s->c, plane_in = s->in[0] * s->in[1] * s->in[2];
    const int64_t outputs = s->n * s->out[0] * s->out[1] * s->out[2], blocks = (outputs + FORWARD_ROWS - 1) / FORWARD_ROWS;
    const int64_t chunks = (blocks + CHUNK - 1) / CHUNK, groups = (s->o + 2 * L - 1) / (2 * L);
    /* A chunk of blocks for one group of output channels at a time, so that the group's weights (taps * C *
     * 2L values: 590 KB for 512 float32 channels) are read from cache by every block of the chunk. */
    #pragma omp parallel for collapse(2) num_threads(threads) schedule(static)
    for (int64_t chunk = 0; chunk < chunks; chunk++)
        for (int64_t g = 0; g < groups; g++) {
            const int64_t o0 = g * 2 * L, vectors = s->o - o0 > L ? 2 : 1;
            const int64_t lanes = s->o - o0 < L * vectors ? s->o - o0 : L * vectors;
            for (int64_t b = chunk * CHUNK; b < blocks && b < (chunk + 1) * CHUNK; b++) {
                const int64_t first = b * FORWARD_ROWS, count = outputs - first < FORWARD_ROWS ? outputs - first : FORWARD_ROWS;
                const T *xs[7];
                int64_t ys[7];
                for (int64_t r = 0; r < count; r++) {  /* output (n, od, oh, ow) reads from its window's first position */
                    int64_t q = first + r;
                    const int64_t ow = q % s->out[2], oh = (q /= s->out[2]) % s->out[1], od = (q /= s->out[1]) % s->out[0];
                    const int64_t n = q / s->out[0];
                    ys[r] = NAME(y_at)(s, n, od, oh, ow);
                    xs[r] = xp + (n * plane_in + ((od * s->stride[0]) * s->in[1] + oh * s->stride[1]) * s->in[2]
                                  + ow * s->stride[2]) * c;
                }
                NAME(blocks)[vectors - 1][count](xs, w + o0 * s->taps * c, bias, s, off, y, ys, NAME(y_stride)(s), o0, lanes);
            }
        }
}

/* The same correlation for layers with at most 8 output channels and input channels in whole vectors
 * (an input gradient into a narrow layer: LeNet's 16 -> 6): each output channel a dot product over the
 * input channels, a vector of them at a time, so that no lane is spent on channels that do not exist.
 * Two outputs by J output channels per block (2J accumulators), their lanes added at the end. w packed
 * as (taps, O, C). */
/* out[i] (i < 8) = the sum of v[i]'s lanes. With 8 or 16 lanes, in log2(L) steps rather than 8 * L scalar
 * additions: a step takes two vectors of groups of s lanes to one of groups of s/2 (the first vector's
 * groups, then the second's), each the sum of its group's two halves: lane m adds lanes g*s + m%h and
 * g*s + h + m%h of the pair (g = m/h, h = s/2; lanes L.. are the second vector's). Narrower vectors (2 or 4
 * lanes: float64 on AVX2, the 16-byte builds) add their lanes one by one, in order. */
#define HALVE(a, b, ...) ({ const IVEC lo_ = {__VA_ARGS__}, hi_ = lo_ + HALF_; \
                           __builtin_shuffle(a, b, lo_) + __builtin_shuffle(a, b, hi_); })
static inline void NAME(sums8)(const VEC v[8], T out[8]) {
#if VEC_BYTES / TSIZE == 16
    VEC w[4], x[2], y;
    #define HALF_ 8
    for (int i = 0; i < 4; i++) w[i] = HALVE(v[2 * i], v[2 * i + 1], 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23);
    #undef HALF_
    #define HALF_ 4
    for (int i = 0; i < 2; i++) x[i] = HALVE(w[2 * i], w[2 * i + 1], 0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27);
    #undef HALF_
    #define HALF_ 2
    y = HALVE(x[0], x[1], 0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, 28, 29);
    #undef HALF_
    #define HALF_ 1
    const VEC r = HALVE(y, y, 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    #undef HALF_
    memcpy(out, &r, 8 * sizeof(T));
#elif VEC_BYTES / TSIZE == 8
    VEC w[4], x[2];
    #define HALF_ 4
    for (int i = 0; i < 4; i++) w[i] = HALVE(v[2 * i], v[2 * i + 1], 0, 1, 2, 3, 8, 9, 10, 11);
    #undef HALF_
    #define HALF_ 2
    for (int i = 0; i < 2; i++) x[i] = HALVE(w[2 * i], w[2 * i + 1], 0, 1, 4, 5, 8, 9, 12, 13);
    #undef HALF_
    #define HALF_ 1
    const VEC r = HALVE(x[0], x[1], 0, 2, 4, 6, 8, 10, 12, 14);
    #undef HALF_
    memcpy(out, &r, 8 * sizeof(T));
#else
    for (int i = 0; i < 8; i++) {
        T lanes[L];
        memcpy(lanes, &v[i], sizeof lanes);
        out[i] = 0;
        for (int64_t l = 0; l < L; l++)
            out[i] += lanes[l];
    }
#endif
}

#define DACC(j) VEC a0##j = {0}, a1##j = {0};
#define DFMA(j) { const VEC wj = *(const VEC *)(wt + (j) * c + v); a0##j += x0 * wj; a1##j += x1 * wj; }
#define DSET(j) r0[j] = a0##j; r1[j] = a1##j;
#define JS1(F) F(0)
#define JS2(F) JS1(F) F(1)
#define JS3(F) JS2(F) F(2)
#define JS4(F) JS3(F) F(3)
#define JS5(F) JS4(F) F(4)
#define JS6(F) JS5(F) F(5)
#define JS7(F) JS6(F) F(6)
#define JS8(F) JS7(F) F(7)

#define DOT_BLOCK(J)                                                                                        \
static void NAME(dot_block_##J)(const T *x0p, const T *x1p, int64_t count, const T *w, const T *bias,      \
                                const conv_shape *s, const int64_t *off, T *y0p, T *y1p, int64_t ostride) { \
    const int64_t c = s->c;                                                                                \
    JS##J(DACC)                                                                                             \
    for (int64_t t = 0; t < s->taps; t++) {                                                                \
        const T *xa = x0p + off[t] * c, *xb = x1p + off[t] * c, *wt = w + t * s->o * c;                   \
        for (int64_t v = 0; v < c; v += L) {                                                               \
            const VEC x0 = *(const VEC *)(xa + v), x1 = *(const VEC *)(xb + v);                            \
            JS##J(DFMA)                                                                                     \
        }                                                                                                  \
    }                                                                                                      \
    VEC r0[8] = {{0}}, r1[8] = {{0}};                                                                       \
    JS##J(DSET)                                                                                             \
    T y0[8], y1[8];                                                                                         \
    NAME(sums8)(r0, y0);                                                                                    \
    NAME(sums8)(r1, y1);                                                                                    \
    for (int64_t j = 0; j < J; j++) {                                                                      \
        y0p[j * ostride] = y0[j] + (bias ? bias[j] : 0);                                                   \
        if (count > 1)                                                                                     \
            y1p[j * ostride] = y1[j] + (bias ? bias[j] : 0);                                               \
    }                                                                                                      \
}
DOT_BLOCK(1) DOT_BLOCK(2) DOT_BLOCK(3) DOT_BLOCK(4) DOT_BLOCK(5) DOT_BLOCK(6) DOT_BLOCK(7) DOT_BLOCK(8)

typedef void (*NAME(dot_fn))(const T *, const T *, int64_t, const T *, const T *, const conv_shape *, const int64_t *, T *,
                             T *, int64_t);
static const NAME(dot_fn) NAME(dot_blocks)[9] = {NULL, NAME(dot_block_1), NAME(dot_block_2), NAME(dot_block_3),
    NAME(dot_block_4), NAME(dot_block_5), NAME(dot_block_6), NAME(dot_block_7), NAME(dot_block_8)};

/* y (N, *S_out, O), or (N, O, *S_out) where s->y_cf, for O <= 8 and C a multiple of L: conv_forward's sum as
 * dot products (above) */
void NAME(conv_forward_dot)(const T *xp, const T *w, const T *bias, T *y, const conv_shape *s, const int64_t *off,
                            int threads) {
    const int64_t c = s->c, plane_in = s->in[0] * s->in[1] * s->in[2];
    const int64_t outputs = s->n * s->out[0] * s->out[1] * s->out[2], blocks = (outputs + 1) / 2;
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t b = 0; b < blocks; b++) {
        const int64_t first = b * 2, count = outputs - first < 2 ? 1 : 2;
        const T *xs[2];
        int64_t ys[2];
        for (int64_t r = 0; r < 2; r++) {  /* a block of one output reads its window twice */
            int64_t q = first + (r < count ? r : 0);
            const int64_t ow = q % s->out[2], oh = (q /= s->out[2]) % s->out[1], od = (q /= s->out[1]) % s->out[0];
            const int64_t n = q / s->out[0];
            xs[r] = xp + (n * plane_in + ((od * s->stride[0]) * s->in[1] + oh * s->stride[1]) * s->in[2]
                          + ow * s->stride[2]) * c;
            ys[r] = NAME(y_at)(s, n, od, oh, ow);
        }
        NAME(dot_blocks)[s->o](xs[0], xs[1], count, w, bias, s, off, y + ys[0], y + ys[1], NAME(y_stride)(s));
    }
}

/* A chunk of output rows' share of the weight gradient, added into R (1-GRAD_ROWS) consecutive rows of gw (taps *
 * C, op) by V output vectors: gw[t, c, o] += xp[q + off[t], c] * gy[q, o]. Row r is the pair (t, c) whose
 * input value sits roff[r] values past an output's window start: up to 8 channels of one tap, or, for
 * layers of few channels, several taps' (a one-channel layer: 8 taps). Reads stay inside both buffers:
 * the last group of output channels, if only `lanes` wide, is copied to a zeroed vector first. */
#define WACC1(r) VEC a##r##0 = *(VEC *)(gw_r + (r) * op);
#define WACC2(r) VEC a##r##0 = *(VEC *)(gw_r + (r) * op), a##r##1 = *(VEC *)(gw_r + (r) * op + L);
#define WPTR(r) const T *x##r = x + roff[r];
#define WLINE(r) x##r = x + roff[r];
#define WREAD_ROWS(r) x[ow * step + (r)]  /* rows of consecutive channels of one tap: one pointer */
#define WREAD_SPREAD(r) x##r[ow * step]   /* rows anywhere: a pointer each */
#define WFMA1(r) { const T v = WREAD(r); a##r##0 += v * g[0]; }
#define WFMA2(r) { const T v = WREAD(r); a##r##0 += v * g[0]; a##r##1 += v * g[1]; }
#define WPUT1(r) *(VEC *)(gw_r + (r) * op) = a##r##0;
#define WPUT2(r) *(VEC *)(gw_r + (r) * op) = a##r##0; *(VEC *)(gw_r + (r) * op + L) = a##r##1;
#define NOTHING(r)

#define WEIGHT_BLOCK(R, V, KIND, PTR, LINE)                                                                   \
static void NAME(weight_##KIND##_##R##x##V)(const T *xp, const T *gp, T *gw_r, const conv_shape *s,         \
                                            const int64_t *roff, int64_t l0, int64_t l1, int64_t o0, int64_t op) { \
    const int64_t c = s->c, o = s->o, step = s->stride[2] * c, lanes = o - o0 < L * V ? o - o0 : L * V;      \
    const int64_t plane_in = s->in[0] * s->in[1] * s->in[2], plane_g = s->g_in[0] * s->g_in[1] * s->g_in[2]; \
    const T *x = xp;                                                                                         \
    ROWS##R(WACC##V)                                                                                         \
    ROWS##R(PTR)                                                                                             \
    int64_t n = l0 / (s->out[0] * s->out[1]), od = l0 / s->out[1] % s->out[0], oh = l0 % s->out[1];         \
    for (int64_t line = l0; line < l1; line++) {  /* an output row: (n, od, oh), counted, not divided */    \
            if (line > l0 && ++oh == s->out[1]) {                                                            \
                oh = 0;                                                                                      \
                if (++od == s->out[0])                                                                       \
                    od = 0, n++;                                                                             \
            }                                                                                                \
            x = xp + (n * plane_in + (od * s->stride[0] * s->in[1] + oh * s->stride[1]) * s->in[2]) * c;     \
            LINE(R)                                                                                          \
            const T *gy = gp + (n * plane_g + ((od + s->g_lo[0]) * s->g_in[1] + oh + s->g_lo[1]) * s->g_in[2] \
                                + s->g_lo[2]) * o + o0;                                                      \
            for (int64_t ow = 0; ow < s->out[2]; ow++) {                                                     \
                VEC g[V];                                                                                    \
                if (lanes == L * V || gy + ow * o + L * V <= gp + s->g_size) {  /* past O: the next position's */ \
                    for (int v = 0; v < V; v++)                                                              \
                        g[v] = *(const VEC *)(gy + ow * o + L * v);                                          \
                } else {                                                                                     \
                    T part[L * V];                                                                           \
                    memset(part, 0, sizeof part);                                                            \
                    memcpy(part, gy + ow * o, lanes * sizeof(T));                                            \
                    for (int v = 0; v < V; v++)                                                              \
                        g[v] = *(const VEC *)(part + L * v);                                                 \
                }                                                                                            \
                ROWS##R(WFMA##V)                                                                             \
            }                                                                                                \
        }                                                                                                    \
    ROWS##R(WPUT##V)                                                                                         \
}

/* rows of one tap's consecutive channels (x advanced to the first), and rows anywhere (8.5-25% slower on
 * layers of 8+ channels, which never need them) */
#define WREAD WREAD_ROWS
#define WEIGHT_ROWS(R, V) WEIGHT_BLOCK(R, V, rows, NOTHING, WSHIFT)
#define WSHIFT(R) x += roff[0];
#define WEIGHT_BLOCKS(V) WEIGHT_ROWS(1, V) WEIGHT_ROWS(2, V) WEIGHT_ROWS(3, V) WEIGHT_ROWS(4, V) \
                         WEIGHT_ROWS(5, V) WEIGHT_ROWS(6, V) WEIGHT_ROWS(7, V) WEIGHT_ROWS(8, V)
WEIGHT_BLOCKS(1)
WEIGHT_BLOCKS(2)
#undef WREAD
#define WREAD WREAD_SPREAD
#define WLINES(R) ROWS##R(WLINE)
#define WEIGHT_SPREAD(R, V) WEIGHT_BLOCK(R, V, spread, WPTR, WLINES)
#define SPREAD_BLOCKS(V) WEIGHT_SPREAD(1, V) WEIGHT_SPREAD(2, V) WEIGHT_SPREAD(3, V) WEIGHT_SPREAD(4, V) \
                         WEIGHT_SPREAD(5, V) WEIGHT_SPREAD(6, V) WEIGHT_SPREAD(7, V) WEIGHT_SPREAD(8, V)
SPREAD_BLOCKS(1)
SPREAD_BLOCKS(2)
#undef WREAD

typedef void (*NAME(weight_block_fn))(const T *, const T *, T *, const conv_shape *, const int64_t *, int64_t, int64_t,
                                      int64_t, int64_t);
#define WEIGHT_TABLE(KIND) {                                                                                   \
    {NULL, NAME(weight_##KIND##_1x1), NAME(weight_##KIND##_2x1), NAME(weight_##KIND##_3x1), NAME(weight_##KIND##_4x1), \
     NAME(weight_##KIND##_5x1), NAME(weight_##KIND##_6x1), NAME(weight_##KIND##_7x1), NAME(weight_##KIND##_8x1)},      \
    {NULL, NAME(weight_##KIND##_1x2), NAME(weight_##KIND##_2x2), NAME(weight_##KIND##_3x2), NAME(weight_##KIND##_4x2), \
     NAME(weight_##KIND##_5x2), NAME(weight_##KIND##_6x2), NAME(weight_##KIND##_7x2), NAME(weight_##KIND##_8x2)}}
static const NAME(weight_block_fn) NAME(weight_blocks)[2][2][9] = {WEIGHT_TABLE(rows), WEIGHT_TABLE(spread)};

/* The width of the weight gradient's rows: O in groups of 2*L channels, the last of L where no more remain. */
static int64_t NAME(padded_width)(int64_t o) {
    const int64_t last = (o - 1) / (2 * L) * (2 * L);
    return last + (o - last > L ? 2 * L : L);
}

/* gw (taps, C, padded_width(O)), zeros on entry, += the sum over samples and valid positions of
 * xp[q + off[t]] (x) gy[q]; gp is the padded output gradient (s->g_in, starting at s->g_lo). Each tile of
 * gw (GRAD_ROWS consecutive (tap, channel) rows, a group of output channels) belongs to one thread, which adds the
 * output rows to it a chunk at a time, in order: no partial sums to merge, and the same bits for any thread
 * count. The chunks (output rows, about CHUNK_POSITIONS positions) keep their values in cache while
 * every tile reads them. */
void NAME(conv_weight_grad)(const T *xp, const T *gp, T *gw, const conv_shape *s, const int64_t *off, int threads) {
    const int64_t op = NAME(padded_width)(s->o), lines = s->n * s->out[0] * s->out[1], rows = s->taps * s->c;
    const int64_t per_chunk = s->out[2] >= CHUNK_POSITIONS ? 1 : CHUNK_POSITIONS / s->out[2];  /* output rows */
    const int64_t rb = (rows + GRAD_ROWS - 1) / GRAD_ROWS, groups = (s->o + 2 * L - 1) / (2 * L), tiles = rb * groups;
    #pragma omp parallel num_threads(threads)
    for (int64_t l = 0; l < lines; l += per_chunk) {
        const int64_t l1 = l + per_chunk < lines ? l + per_chunk : lines;
        #pragma omp for schedule(static) nowait
        for (int64_t tile = 0; tile < tiles; tile++) {  /* the same tiles go to the same thread for every chunk */
            const int64_t i0 = tile / groups * GRAD_ROWS, o0 = tile % groups * 2 * L;
            const int64_t count = rows - i0 < GRAD_ROWS ? rows - i0 : GRAD_ROWS;
            int64_t roff[8];
            for (int64_t r = 0; r < count; r++)  /* row i0 + r: tap (i0 + r) / C, channel (i0 + r) % C */
                roff[r] = off[(i0 + r) / s->c] * s->c + (i0 + r) % s->c;
            const int spread = i0 % s->c + count > s->c;  /* rows of more than one tap */
            NAME(weight_blocks)[spread][s->o - o0 > L ? 1 : 0][count](xp, gp, gw + i0 * op + o0, s, roff, l, l1, o0, op);
        }
    }
}

#undef VEC
#undef IVEC
#undef L
