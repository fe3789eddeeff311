/* Cross-correlation in 1-3 spatial dimensions, channels-last, any stride: forward, and the weight
 * gradient; the input gradient is the forward loop run on the output gradient (ops/compiled_conv.py).
 *
 * The textbook sum (D2L 7.4) over a padded input xp (N, *S_pad, C), flattened per sample so that
 * every kernel tap t is a fixed offset off[t] in positions:
 *
 *     y[q, o] = bias[o] + sum over taps t and channels c of  xp[s*q + off[t], c] * w[t, c, o]
 *
 * The loops keep a block of up to R consecutive outputs (across rows and samples) by V vectors of
 * output channels in registers (R*V accumulators), and for each tap and input channel load V weight vectors
 * once and broadcast R input values: R*V fused multiply-adds per R+V loads, the register blocking every fast
 * convolution uses. Written with GCC's vector extension at the width of the instruction set it is built for
 * (isa.h: 64-byte vectors and R = 7 on AVX-512, 32 bytes and R = 6 on AVX2, 16 bytes on NEON and the
 * portable build), so the blocks fit the registers of the CPU that runs them.
 *
 * The weight gradient sums the other way: a block of up to GRAD_ROWS (tap, input channel) rows (channels of
 * one tap; for layers of few channels, several taps) by V vectors of output channels, over every output
 * position: gw[t, c, o] += xp[s*q + off[t], c] * gy[q, o].
 * Each tile of the result belongs to one thread and takes the samples in order: the result does not
 * depend on the thread count.
 *
 * w comes packed by the caller as (O/(L*V) groups, taps, C, L*V) with zeros past O, and the bias padded
 * alike; every block reads only inside the buffers it is given.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "isa.h"

typedef struct {
    int64_t n, c, o, taps;
    int64_t in[3];    /* the padded input's spatial sizes (1-D and 2-D: leading 1s) */
    int64_t out[3];   /* the output's */
    int64_t stride[3];
    int64_t g_in[3];  /* the weight gradient only: the padded output gradient's sizes ... */
    int64_t g_lo[3];  /* ... and where the output gradient starts inside it, */
    int64_t g_size;   /* ... and its number of values */
    int64_t y_cf;     /* the forward loops: write y channels-first, (N, O, *S_out), instead of (N, *S_out, O) */
    int64_t y_in[3];  /* the forward loops: the spatial sizes of the buffer y lies in (out[] for a y of its own) ... */
    int64_t y_step[3];  /* ... the step between outputs along each of its axes, and where the first one is: */
    int64_t y_first[3]; /* output (od, oh, ow) goes to (od * step + first, ...) (a phase of a strided input gradient) */
} conv_shape;

#define ROWS1(F) F(0)
#define ROWS2(F) ROWS1(F) F(1)
#define ROWS3(F) ROWS2(F) F(2)
#define ROWS4(F) ROWS3(F) F(3)
#define ROWS5(F) ROWS4(F) F(4)
#define ROWS6(F) ROWS5(F) F(5)
#define ROWS7(F) ROWS6(F) F(6)
#define ROWS8(F) ROWS7(F) F(7)

#define CHUNK 32  /* blocks of FORWARD_ROWS outputs that share one group's weights in cache (conv_forward) */
#define CHUNK_POSITIONS 512  /* output positions whose values the weight gradient's tiles share in cache */
#define PLANAR_CHUNKS 16  /* parts of the batch the planar weight gradient sums apart, then adds in order */

/* What the Python side must know of this build's blocking (ops/compiled_conv.py): the variant's name, and
 * its vector bytes, forward rows, weight-gradient rows, planar width and dot-product channels. */
const char *conv_variant(void) { return VARIANT_NAME; }
void conv_config(int64_t *out) {
    out[0] = VEC_BYTES, out[1] = FORWARD_ROWS, out[2] = GRAD_ROWS, out[3] = PLANAR_WIDTH, out[4] = DOT_CHANNELS;
}

#define BODY "direct_conv_body.h"
#include "instantiate.h"

/* Layers of few input channels: lanes over output positions instead (planar_conv_body.h). */
#undef BODY
#define BODY "planar_conv_body.h"
#include "instantiate.h"
