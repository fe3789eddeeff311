/* Includes BODY (a file of kernels written for an element type T, named NAME(...)) once per type:
 * T = float with names ending _f32, T = double with names ending _f64. */
#define T float
#define NAME(base) base##_f32
#include BODY
#undef T
#undef NAME

#define T double
#define NAME(base) base##_f64
#include BODY
#undef T
#undef NAME
