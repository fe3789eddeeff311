/* The batch-norm kernels for one element type T, named NAME(...): included by batch_norm.c once per type. */

/* training statistics of x (m, c): mean and biased variance per channel; 0 on success, -1 if out of memory */
static int NAME(batch_norm_statistics)(const T *x, int64_t m, int64_t c, T *mean_out, T *var_out, int threads) {
    const int64_t rows = block_rows(c, sizeof(T)), blocks = (m + rows - 1) / rows;
    double *mean = malloc(sizeof(double) * blocks * c), *m2 = malloc(sizeof(double) * blocks * c);
    if (!mean || !m2) {
        free(mean);
        free(m2);
        return -1;
    }
    int failed = 0;
    #pragma omp parallel num_threads(threads)
    {
        T *acc = malloc(sizeof(T) * c), *mu = malloc(sizeof(T) * c);  /* a block's sums, in T: at most 1024 values */
        #pragma omp for schedule(static)
        for (int64_t b = 0; b < blocks; b++) {
            const int64_t start = b * rows, count = (start + rows <= m ? rows : m - start);
            if (!acc || !mu) {
                failed = 1;
                continue;
            }
            for (int64_t ch = 0; ch < c; ch++) acc[ch] = 0;
            for (int64_t r = start; r < start + count; r++)
                for (int64_t ch = 0; ch < c; ch++) acc[ch] += x[r * c + ch];
            for (int64_t ch = 0; ch < c; ch++) {
                mu[ch] = acc[ch] / (T)count;
                acc[ch] = 0;
            }
            for (int64_t r = start; r < start + count; r++)  /* the block again, from cache */
                for (int64_t ch = 0; ch < c; ch++) {
                    const T d = x[r * c + ch] - mu[ch];
                    acc[ch] += d * d;
                }
            for (int64_t ch = 0; ch < c; ch++) {
                mean[b * c + ch] = (double)mu[ch];
                m2[b * c + ch] = (double)acc[ch];
            }
        }
        free(acc);
        free(mu);
    }
    if (failed) {
        free(mean);
        free(m2);
        return -1;
    }
    for (int64_t b = 1; b < blocks; b++)  /* in block order: the same answer for any thread count */
        merge(mean, m2, b * rows, mean + b * c, m2 + b * c, (b * rows + rows <= m ? rows : m - b * rows), c);
    for (int64_t ch = 0; ch < c; ch++) {
        mean_out[ch] = (T)mean[ch];
        var_out[ch] = (T)(m2[ch] / (double)m);
    }
    free(mean);
    free(m2);
    return 0;
}

/* y = x * scale + shift per channel, x and y (m, c) */
void NAME(batch_norm_normalise)(const T *x, T *y, int64_t m, int64_t c, const T *scale, const T *shift, int threads) {
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t r = 0; r < m; r++)
        for (int64_t ch = 0; ch < c; ch++) y[r * c + ch] = x[r * c + ch] * scale[ch] + shift[ch];
}

/* per channel sum(dy) and sum(dy * (x - mean)), both (m, c): blocks summed in T, blocks in double; 0 on success, -1 if out of memory */
static int NAME(batch_norm_gradient_sums)(const T *dy, const T *x, int64_t m, int64_t c, const T *mean, double *sum_dy,
                                   double *sum_dy_xmu, int threads) {
    const int64_t rows = block_rows(c, sizeof(T)), blocks = (m + rows - 1) / rows;
    double *part = malloc(sizeof(double) * blocks * c * 2);
    if (!part) return -1;
    int failed = 0;
    #pragma omp parallel num_threads(threads)
    {
        T *s = malloc(sizeof(T) * c), *d = malloc(sizeof(T) * c);  /* a block's sums, in T: at most 1024 values */
        #pragma omp for schedule(static)
        for (int64_t b = 0; b < blocks; b++) {
            const int64_t start = b * rows, stop = (start + rows <= m ? start + rows : m);
            if (!s || !d) {
                failed = 1;
                continue;
            }
            for (int64_t ch = 0; ch < c; ch++) s[ch] = d[ch] = 0;
            for (int64_t r = start; r < stop; r++)
                for (int64_t ch = 0; ch < c; ch++) {
                    s[ch] += dy[r * c + ch];
                    d[ch] += dy[r * c + ch] * (x[r * c + ch] - mean[ch]);
                }
            for (int64_t ch = 0; ch < c; ch++) {
                part[2 * b * c + ch] = (double)s[ch];
                part[2 * b * c + c + ch] = (double)d[ch];
            }
        }
        free(s);
        free(d);
    }
    if (failed) {
        free(part);
        return -1;
    }
    for (int64_t ch = 0; ch < c; ch++) sum_dy[ch] = sum_dy_xmu[ch] = 0.0;
    for (int64_t b = 0; b < blocks; b++)
        for (int64_t ch = 0; ch < c; ch++) {
            sum_dy[ch] += part[2 * b * c + ch];
            sum_dy_xmu[ch] += part[2 * b * c + c + ch];
        }
    free(part);
    return 0;
}

/* dx = dy * a + x * k1 + k0 per channel (training: a = scale, k1 = -scale * invstd * dot / m,
 * k0 = -scale * sum(dy) / m - k1 * mean; inference: k1 = k0 = 0), all (m, c) */
void NAME(batch_norm_input_gradient)(const T *dy, const T *x, T *dx, int64_t m, int64_t c, const T *a, const T *k1,
                                     const T *k0, int threads) {
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t r = 0; r < m; r++)
        for (int64_t ch = 0; ch < c; ch++) dx[r * c + ch] = dy[r * c + ch] * a[ch] + x[r * c + ch] * k1[ch] + k0[ch];
}

/* The per-channel vectors around the passes, in one call instead of a handful of tensor operations:
 * invstd = 1 / sqrt(var + eps), scale = invstd * weight, shift = bias - mean * scale (weight, bias may be NULL) */
static void NAME(batch_norm_coefficients)(const T *mean, const T *var, const T *weight, const T *bias, double eps, int64_t c,
                                   T *invstd, T *scale, T *shift) {
    for (int64_t ch = 0; ch < c; ch++) {
        invstd[ch] = (T)(1.0 / sqrt((double)var[ch] + eps));
        scale[ch] = weight ? invstd[ch] * weight[ch] : invstd[ch];
        shift[ch] = (bias ? bias[ch] : (T)0) - mean[ch] * scale[ch];
    }
}

/* running = running + momentum * (statistic - running), the variance's statistic unbiased (m / (m - 1)) */
static void NAME(batch_norm_update_running)(T *running_mean, T *running_var, const T *mean, const T *var, int64_t m,
                                     double momentum, int64_t c) {
    const double unbias = (double)m / (double)(m - 1);
    for (int64_t ch = 0; ch < c; ch++) {
        if (running_mean) running_mean[ch] = (T)((double)running_mean[ch] + momentum * ((double)mean[ch] - (double)running_mean[ch]));
        if (running_var)
            running_var[ch] = (T)((double)running_var[ch] + momentum * ((double)var[ch] * unbias - (double)running_var[ch]));
    }
}

/* From sum(dy) and sum(dy * (x - mean)) (double): grad_weight = sum(dy * x_hat), grad_bias = sum(dy), and the
 * input gradient's dx = dy * scale + x * k1 + k0 (training: k1 = -scale * invstd * grad_weight / m,
 * k0 = -scale * sum(dy) / m - k1 * mean; inference: k1 = k0 = 0) */
static void NAME(batch_norm_gradient_coefficients)(const double *sum_dy, const double *sum_dy_xmu, const T *mean,
                                            const T *invstd, const T *scale, int64_t m, int training, int64_t c,
                                            T *grad_weight, T *grad_bias, T *k1, T *k0) {
    for (int64_t ch = 0; ch < c; ch++) {
        const T dot = (T)sum_dy_xmu[ch] * invstd[ch], total = (T)sum_dy[ch];
        grad_weight[ch] = dot;
        grad_bias[ch] = total;
        k1[ch] = training ? -(scale[ch] * invstd[ch] * dot) / (T)m : (T)0;
        k0[ch] = training ? -(scale[ch] * total) / (T)m - k1[ch] * mean[ch] : (T)0;
    }
}

/* The forward pass's per-channel work in one call. v (5, c) holds mean, var, invstd, scale, shift: in
 * training the statistics are computed into v[0], v[1] and the running estimates updated (either may be
 * NULL: none, or left to the caller); in inference v[0], v[1] come filled with the running estimates.
 * Then the coefficients. 0 on success, -1 if out of memory. */
int NAME(batch_norm_prepare)(const T *x, int64_t m, int64_t c, int training, T *running_mean, T *running_var,
                             double momentum, const T *weight, const T *bias, double eps, T *v, int threads) {
    if (training) {
        if (NAME(batch_norm_statistics)(x, m, c, v, v + c, threads)) return -1;
        NAME(batch_norm_update_running)(running_mean, running_var, v, v + c, m, momentum, c);
    }
    NAME(batch_norm_coefficients)(v, v + c, weight, bias, eps, c, v + 2 * c, v + 3 * c, v + 4 * c);
    return 0;
}

/* The backward pass's per-channel work in one call: out (4, c) = grad_weight, grad_bias, k1, k0 from dy, x
 * and the forward's v (5, c); without need_sums (inference, no parameter gradient) the sums count as 0.
 * 0 on success, -1 if out of memory. */
int NAME(batch_norm_backward_prepare)(const T *dy, const T *x, int64_t m, int64_t c, const T *v, int training,
                                      int need_sums, T *out, int threads) {
    double *sums = calloc(2 * c, sizeof(double));  /* sum(dy), sum(dy * (x - mean)) */
    if (!sums) return -1;
    if (need_sums && NAME(batch_norm_gradient_sums)(dy, x, m, c, v, sums, sums + c, threads)) {
        free(sums);
        return -1;
    }
    NAME(batch_norm_gradient_coefficients)(sums, sums + c, v, v + 2 * c, v + 3 * c, m, training, c, out, out + c,
                                           out + 2 * c, out + 3 * c);
    free(sums);
    return 0;
}
