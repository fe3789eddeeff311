/* Max pooling over channels-last maps, forward and backward: one pass over memory each.
 *
 * The loops of the textbook definition (D2L 7.5), written out in C because their tensor form,
 * one pass per kernel offset (ops/pool.py), reads and writes the whole map 2-3 times per offset:
 *
 *     for each output position and channel:
 *         the first element of its window inside the input wins, then each later one that is
 *         larger or NaN (torch's rule: the first maximum in scan order, or the last NaN)
 *     backward: each output's gradient is added to the input position that won
 *
 * Maps are channels-last and contiguous, (N, D, H, W, C); 1-D and 2-D pooling pass D = H = 1
 * and D = 1. The geometry comes as 20 integers: n, c, in[3], out[3], kernel[3], stride[3],
 * pad[3] (the leading pad of each axis) and dilation[3]. A window holding padding only (possible
 * with dilation) gives -inf and winner -1, which the backward pass skips. Winners are flat
 * positions in the input plane, (d * H + h) * W + w, as torch's return_indices reports them.
 *
 * Built by ops/kernels/compiled.py with OpenMP where the compiler has it: the forward pass splits the
 * output rows among threads, the backward pass the samples (a sample's gradient is written by
 * one thread only, so overlapping windows need no atomics).
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

typedef struct {
    int64_t n, c, in[3], out[3], k[3], s[3], p[3], d[3];
} geometry;

#define BODY "max_pool_body.h"
#include "instantiate.h"
