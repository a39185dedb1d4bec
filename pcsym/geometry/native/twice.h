/* Include BODY once per instruction set (see simd.h); the includer defines BODY. */
#define SUFFIX _base
#define TARGET
#define vf v4
#define VW 4
#include BODY
#undef SUFFIX
#undef TARGET
#undef vf
#undef VW

#ifdef HAVE_AVX2
#define SUFFIX _avx2
#define TARGET __attribute__((target("avx2,fma")))
#define vf v8
#define VW 8
#include BODY
#undef SUFFIX
#undef TARGET
#undef vf
#undef VW
#endif
#undef BODY
