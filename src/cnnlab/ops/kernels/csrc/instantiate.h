/* Includes BODY (a file of kernels written for an element type T, named NAME(...)) once per type:
 * T = float with names ending _f32, T = double with names ending _f64 (IT: an integer type of T's size, TSIZE: that size). */
#define T float
#define IT int32_t  /* an integer of T's size */
#define TSIZE 4
#define NAME(base) base##_f32
#include BODY
#undef T
#undef IT
#undef TSIZE
#undef NAME

#define T double
#define IT int64_t
#define TSIZE 8
#define NAME(base) base##_f64
#include BODY
#undef T
#undef IT
#undef TSIZE
#undef NAME
