/* Batch normalisation over a (M, C) matrix (channels-last images, (N, C) features), forward and
 * backward, reading the values once per pass (D2L 8.5; the formulas are in ops/norm.py).
 *
 *     statistics   each block of rows: its mean and sum of squared deviations, two passes over
 *                  the block while it is in cache; blocks combined in order (Chan, Golub and
 *                  LeVeque's pairwise update): exact in double, whatever the channel's offset
 *     normalise    y = x * scale + shift, scale = weight / sqrt(var + eps), shift = bias - mean * scale
 *     backward     per channel sum(dy) and sum(dy * (x - mean)) in one pass, then
 *                  dx = scale * (dy - sum(dy) / m - x_hat * sum(dy * x_hat) / m) in a second
 *
 * A block's sums (at most 1024 rows) accumulate in the values' own type, blocks are combined in
 * double. Blocks are fixed by the shape alone (not by the thread count) and combined in block order,
 * so the results do not depend on how many threads ran.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* rows per block: about 32 KB of values, 16-1024 rows */
static int64_t block_rows(int64_t c, int64_t size) {
    int64_t rows = 32768 / (c * size);
    return rows < 16 ? 16 : rows > 1024 ? 1024 : rows;
}

/* merge (n_b, mean_b, m2_b) into (n_a, mean_a, m2_a), channel by channel */
static void merge(double *mean_a, double *m2_a, int64_t n_a, const double *mean_b, const double *m2_b, int64_t n_b,
                  int64_t c) {
    const double n = (double)(n_a + n_b), wb = (double)n_b / n, cross = (double)n_a * (double)n_b / n;
    for (int64_t ch = 0; ch < c; ch++) {
        const double delta = mean_b[ch] - mean_a[ch];
        mean_a[ch] += delta * wb;
        m2_a[ch] += m2_b[ch] + delta * delta * cross;
    }
}

#define BODY "batch_norm_body.h"
#include "instantiate.h"
