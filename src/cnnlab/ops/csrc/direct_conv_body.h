/* The direct convolution's kernels for one element type T, named NAME(...): included by direct_conv.c once per type. */

typedef T NAME(vec) __attribute__((vector_size(64), aligned(sizeof(T))));
#define VEC NAME(vec)
#define L ((int64_t)(64 / sizeof(T)))  /* lanes in a vector */

/* Stores the V vectors acc of output position q (flat in the padded grid) if its window fits, the
 * first `lanes` of them: the last group of output channels may hold fewer than L*V. */
static inline void NAME(put)(T *ys, const conv_shape *s, int64_t q, int64_t o0, int64_t lanes, const VEC *acc) {
    const int64_t w = q % s->in[2], h = q / s->in[2] % s->in[1], d = q / (s->in[2] * s->in[1]);
    if (w >= s->out[2] || h >= s->out[1] || d >= s->out[0])
        return;
    memcpy(ys + ((d * s->out[1] + h) * s->out[2] + w) * s->o + o0, acc, lanes * sizeof(T));
}

/* One block: output positions q0..q0+R-1 of one sample, output channels o0..o0+L*V-1.
 * The accumulators are named variables (a<row><vector>), not an array, so that they live in registers. */
#define ACC1(r) VEC a##r##0 = b[0];
#define ACC2(r) VEC a##r##0 = b[0], a##r##1 = b[1];
#define ACC4(r) VEC a##r##0 = b[0], a##r##1 = b[1], a##r##2 = b[2], a##r##3 = b[3];
#define FMA1(r) { const T v = x[(r) * c]; a##r##0 += v * wv[0]; }
#define FMA2(r) { const T v = x[(r) * c]; a##r##0 += v * wv[0]; a##r##1 += v * wv[1]; }
#define FMA4(r) { const T v = x[(r) * c]; a##r##0 += v * wv[0]; a##r##1 += v * wv[1]; a##r##2 += v * wv[2]; a##r##3 += v * wv[3]; }
#define PUT1(r) { const VEC out[1] = {a##r##0}; NAME(put)(ys, s, q0 + (r), o0, lanes, out); }
#define PUT2(r) { const VEC out[2] = {a##r##0, a##r##1}; NAME(put)(ys, s, q0 + (r), o0, lanes, out); }
#define PUT4(r) { const VEC out[4] = {a##r##0, a##r##1, a##r##2, a##r##3}; NAME(put)(ys, s, q0 + (r), o0, lanes, out); }

#define FORWARD_BLOCK(R, V)                                                                                 \
static void NAME(block_##R##x##V)(const T *xs, const T *w, const T *bias, T *ys, const conv_shape *s,      \
                                  const int64_t *off, int64_t q0, int64_t o0) {                            \
    const int64_t c = s->c, lanes = s->o - o0 < L * V ? s->o - o0 : L * V;                                 \
    VEC b[V];                                                                                              \
    for (int v = 0; v < V; v++)                                                                            \
        b[v] = bias ? *(const VEC *)(bias + o0 + L * v) : (VEC){0};                                        \
    ROWS##R(ACC##V)                                                                                        \
    for (int64_t t = 0; t < s->taps; t++) {                                                                \
        const T *x = xs + (q0 + off[t]) * c, *wt = w + t * c * L * V;                                      \
        for (int64_t ci = 0; ci < c; ci++, x++, wt += L * V) {                                             \
            VEC wv[V];                                                                                     \
            for (int v = 0; v < V; v++)                                                                    \
                wv[v] = *(const VEC *)(wt + L * v);                                                        \
            ROWS##R(FMA##V)                                                                                \
        }                                                                                                  \
    }                                                                                                      \
    ROWS##R(PUT##V)                                                                                        \
}

/* rows x vectors: 14 x 1, 12 x 2 and 6 x 4 keep 14-24 accumulators and the V weights in the 32 vector
 * registers of AVX-512 */
FORWARD_BLOCK(14, 1)
FORWARD_BLOCK(12, 2)
FORWARD_BLOCK(6, 4)

/* y (N, *S_out, O) = the cross-correlation of xp (N, *S_pad, C) with w packed for V vectors per group */
void NAME(conv_forward)(const T *xp, const T *w, const T *bias, T *y, const conv_shape *s, const int64_t *off,
                        int vectors, int threads) {
    const int64_t rows = vectors == 1 ? 14 : vectors == 2 ? 12 : 6, group = L * vectors;
    const int64_t plane_in = s->in[0] * s->in[1] * s->in[2], plane_out = s->out[0] * s->out[1] * s->out[2];
    const int64_t last = ((s->out[0] - 1) * s->in[1] + s->out[1] - 1) * s->in[2] + s->out[2];  /* past the last valid q */
    const int64_t blocks = (last + rows - 1) / rows, groups = (s->o + group - 1) / group;
    #pragma omp parallel for collapse(2) num_threads(threads) schedule(static)
    for (int64_t n = 0; n < s->n; n++)
        for (int64_t b = 0; b < blocks; b++) {
            const T *xs = xp + n * plane_in * s->c;
            T *ys = y + n * plane_out * s->o;
            for (int64_t g = 0; g < groups; g++) {
                const T *wg = w + g * s->taps * s->c * group;
                if (vectors == 1)
                    NAME(block_14x1)(xs, wg, bias, ys, s, off, b * rows, g * group);
                else if (vectors == 2)
                    NAME(block_12x2)(xs, wg, bias, ys, s, off, b * rows, g * group);
                else
                    NAME(block_6x4)(xs, wg, bias, ys, s, off, b * rows, g * group);
            }
        }
}

/* One sample n's share of the weight gradient, added into gw (taps, C rounded up to 8, O rounded up to L*V),
 * 8 input channels by V output vectors at a time: gw[t, c, o] += xp[q + off[t], c] * gy[q, o]. */
#define WACC1(r) VEC a##r##0 = *(VEC *)(gw_r + (r) * op);
#define WACC2(r) VEC a##r##0 = *(VEC *)(gw_r + (r) * op), a##r##1 = *(VEC *)(gw_r + (r) * op + L);
#define WFMA1(r) { const T v = x[ow * c + (r)]; a##r##0 += v * g[0]; }
#define WFMA2(r) { const T v = x[ow * c + (r)]; a##r##0 += v * g[0]; a##r##1 += v * g[1]; }
#define WPUT1(r) *(VEC *)(gw_r + (r) * op) = a##r##0;
#define WPUT2(r) *(VEC *)(gw_r + (r) * op) = a##r##0; *(VEC *)(gw_r + (r) * op + L) = a##r##1;

#define WEIGHT_BLOCK(V)                                                                                       \
static void NAME(weight_block_##V)(const T *xp, const T *gp, T *gw, const conv_shape *s, int64_t x_off,     \
                                   int64_t n, int64_t c0, int64_t o0, int64_t op) {            \
    const int64_t c = s->c, o = s->o;                                                                        \
    const int64_t plane_in = s->in[0] * s->in[1] * s->in[2], plane_g = s->g_in[0] * s->g_in[1] * s->g_in[2]; \
    T *gw_r = gw + c0 * op + o0;                                                                             \
    ROWS8(WACC##V)                                                                                           \
    for (int64_t od = 0; od < s->out[0]; od++)                                                               \
            for (int64_t oh = 0; oh < s->out[1]; oh++) {                                                     \
                const T *x = xp + (n * plane_in + (od * s->in[1] + oh) * s->in[2] + x_off) * c + c0;         \
                const T *gy = gp + (n * plane_g + ((od + s->g_lo[0]) * s->g_in[1] + oh + s->g_lo[1]) * s->g_in[2] \
                                    + s->g_lo[2]) * o + o0;                                                  \
                for (int64_t ow = 0; ow < s->out[2]; ow++) {                                                 \
                    VEC g[V];                                                                                \
                    for (int v = 0; v < V; v++)                                                              \
                        g[v] = *(const VEC *)(gy + ow * o + L * v);                                          \
                    ROWS8(WFMA##V)                                                                           \
                }                                                                                            \
            }                                                                                                \
    ROWS8(WPUT##V)                                                                                           \
}

WEIGHT_BLOCK(1)
WEIGHT_BLOCK(2)

/* gw (taps, C rounded up to 8, O rounded up to L*vectors) = sum over samples and valid positions of
 * xp[q + off[t]] (x) gy[q]; gp is the padded output gradient (s->g_in, starting at s->g_lo). */
int NAME(conv_weight_grad)(const T *xp, const T *gp, T *gw, const conv_shape *s, const int64_t *off,
                            int vectors, int threads) {
    const int64_t cp = (s->c + 7) / 8 * 8, op = (s->o + L * vectors - 1) / (L * vectors) * (L * vectors);
    const int64_t size = s->taps * cp * op, parts = s->n < 8 ? s->n : 8;
    T *partial = calloc(parts * size, sizeof(T));
    if (!partial)
        return -1;
    #pragma omp parallel for num_threads(threads) schedule(dynamic)
    for (int64_t p = 0; p < parts; p++) {
        const int64_t n0 = s->n * p / parts, n1 = s->n * (p + 1) / parts;
        T *mine = partial + p * size;
        for (int64_t n = n0; n < n1; n++)  /* a sample at a time: its values stay in cache for every tap */
            for (int64_t t = 0; t < s->taps; t++)
                for (int64_t c0 = 0; c0 < cp; c0 += 8)
                    for (int64_t o0 = 0; o0 < op; o0 += L * vectors) {
                        if (vectors == 1)
                            NAME(weight_block_1)(xp, gp, mine + t * cp * op, s, off[t], n, c0, o0, op);
                        else
                            NAME(weight_block_2)(xp, gp, mine + t * cp * op, s, off[t], n, c0, o0, op);
                    }
    }
    memcpy(gw, partial, size * sizeof(T));
    for (int64_t p = 1; p < parts; p++)
        for (int64_t i = 0; i < size; i++)
            gw[i] += partial[p * size + i];
    free(partial);
    return 0;
}

#undef VEC
#undef L
