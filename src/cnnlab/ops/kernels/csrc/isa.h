/* The vector width and register blocking of the compiled loops, chosen from what the compiler is told the
 * CPU has (ops/kernels/compiled.py builds one variant per instruction set: -march=x86-64-v4, -march=x86-64-v3, or
 * the architecture's baseline, and loads the one this CPU can run).
 *
 * A block of accumulators must fit in the vector registers with the operands it multiplies, or the
 * compiler spills accumulators to memory on every multiply-add (the 64-byte blocking of AVX-512 run on
 * AVX2's sixteen 32-byte registers took 3x torch's time on LeNet):
 *
 *   variant    vector  registers  forward block      weight-gradient tile   planar block
 *   avx512     64 B    32         7 outputs x 2 vec  8 rows x 2 vec         2 slots x 12 channels
 *   avx2       32 B    16         6 outputs x 2 vec  6 rows x 2 vec         2 slots x 6 channels
 *   neon       16 B    32         7 outputs x 2 vec  8 rows x 2 vec         2 slots x 12 channels
 *   portable   16 B    16         6 outputs x 2 vec  6 rows x 2 vec         2 slots x 6 channels
 *
 * (accumulators + the operands loaded for them: 14 + 3 of 32, 12 + 3 of 16.) */
#if defined(__AVX512F__)
#define VEC_BYTES 64
#define MANY_REGISTERS 1
#define VARIANT_NAME "avx512"
#elif defined(__AVX2__) || defined(__AVX__)
#define VEC_BYTES 32
#define MANY_REGISTERS 0
#define VARIANT_NAME "avx2"
#elif defined(__ARM_NEON) || defined(__aarch64__)
#define VEC_BYTES 16
#define MANY_REGISTERS 1
#define VARIANT_NAME "neon"
#else
#define VEC_BYTES 16
#define MANY_REGISTERS 0
#define VARIANT_NAME "portable"
#endif

#if MANY_REGISTERS
#define FORWARD_ROWS 7      /* outputs per forward block (by 2 vectors of output channels) */
#define GRAD_ROWS 8         /* (tap, channel) rows per weight-gradient tile (by 2 vectors) */
#define PLANAR_WIDTH 12     /* output channels per planar block (by 2 slots of L outputs) */
#define DOT_CHANNELS 8      /* output channels up to which the dot-product form is used (2 outputs each) */
#define PLANAR_TILE_MAX 24  /* accumulators of a planar weight-gradient tile */
#else
#define FORWARD_ROWS 6
#define GRAD_ROWS 6
#define PLANAR_WIDTH 6
#define DOT_CHANNELS 6
#define PLANAR_TILE_MAX 12
#endif
