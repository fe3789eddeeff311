/* The max pooling kernels for one element type T, named NAME(...): included by max_pool.c once per type. */

/* best, arg = the first window element v at pos (arg may be NULL: inference needs no winners) */
static void NAME(start)(T *best, int32_t *arg, const T *v, int32_t pos, int64_t c) {
    for (int64_t ch = 0; ch < c; ch++) best[ch] = v[ch];
    if (arg)
        for (int64_t ch = 0; ch < c; ch++) arg[ch] = pos;
}

/* a later window element v at pos wins where it is larger or NaN */
static void NAME(take)(T *best, int32_t *arg, const T *v, int32_t pos, int64_t c) {
    if (arg) {
        for (int64_t ch = 0; ch < c; ch++) {
            const int wins = (v[ch] > best[ch]) | (v[ch] != v[ch]);
            best[ch] = wins ? v[ch] : best[ch];
            arg[ch] = wins ? pos : arg[ch];
        }
    } else {
        for (int64_t ch = 0; ch < c; ch++) {
            const int wins = (v[ch] > best[ch]) | (v[ch] != v[ch]);
            best[ch] = wins ? v[ch] : best[ch];
        }
    }
}

/* x (N, D, H, W, C) -> y (N, Do, Ho, Wo, C) and, unless idx is NULL, the winners idx (same shape) */
void NAME(max_pool_forward)(const T *x, T *y, int32_t *idx, const geometry *g, int threads) {
    const int64_t c = g->c, in_plane = g->in[0] * g->in[1] * g->in[2];
    const int64_t rows = g->n * g->out[0] * g->out[1];
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t row = 0; row < rows; row++) {  /* one (sample, depth, height) row of outputs */
        const int64_t b = row / (g->out[0] * g->out[1]), od = row / g->out[1] % g->out[0], oh = row % g->out[1];
        const T *sample = x + b * in_plane * c;
        for (int64_t ow = 0; ow < g->out[2]; ow++) {
            const int64_t o = (row * g->out[2] + ow) * c;
            T *best = y + o;
            int32_t *arg = idx ? idx + o : NULL;
            int started = 0;
            for (int64_t kd = 0; kd < g->k[0]; kd++) {
                const int64_t id = od * g->s[0] - g->p[0] + kd * g->d[0];
                if (id < 0 || id >= g->in[0]) continue;
                for (int64_t kh = 0; kh < g->k[1]; kh++) {
                    const int64_t ih = oh * g->s[1] - g->p[1] + kh * g->d[1];
                    if (ih < 0 || ih >= g->in[1]) continue;
                    for (int64_t kw = 0; kw < g->k[2]; kw++) {
                        const int64_t iw = ow * g->s[2] - g->p[2] + kw * g->d[2];
                        if (iw < 0 || iw >= g->in[2]) continue;
                        const int32_t pos = (int32_t)((id * g->in[1] + ih) * g->in[2] + iw);
                        if (started) {
                            NAME(take)(best, arg, sample + pos * c, pos, c);
                        } else {
                            NAME(start)(best, arg, sample + pos * c, pos, c);
                            started = 1;
                        }
                    }
                }
            }
            if (!started) {  /* padding only */
                for (int64_t ch = 0; ch < c; ch++) best[ch] = -INFINITY;
                if (arg)
                    for (int64_t ch = 0; ch < c; ch++) arg[ch] = -1;
            }
        }
    }
}

/* grad_y and idx (N, Do, Ho, Wo, C) -> grad_x (N, D, H, W, C): each gradient added where its window's winner was */
void NAME(max_pool_backward)(const T *grad_y, const int32_t *idx, T *grad_x, const geometry *g, int threads) {
    const int64_t c = g->c, in_plane = g->in[0] * g->in[1] * g->in[2], out_plane = g->out[0] * g->out[1] * g->out[2];
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t b = 0; b < g->n; b++) {
        T *dst = grad_x + b * in_plane * c;
        const T *src = grad_y + b * out_plane * c;
        const int32_t *arg = idx + b * out_plane * c;
        memset(dst, 0, sizeof(T) * in_plane * c);
        for (int64_t o = 0; o < out_plane * c; o += c)
            for (int64_t ch = 0; ch < c; ch++)
                if (arg[o + ch] >= 0) dst[arg[o + ch] * c + ch] += src[o + ch];
    }
}
